"""Type stubs of ``rollback``: run rollback plans from Python."""

from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import BudgetExceeded as BudgetExceeded
from ._errors import Cancelled as Cancelled
from ._errors import Diagnostic as Diagnostic
from ._errors import InvalidInput as InvalidInput
from ._errors import JournalError as JournalError
from ._errors import PermissionDenied as PermissionDenied
from ._errors import Locked as Locked
from ._errors import NotResumable as NotResumable
from ._errors import PlanError as PlanError
from ._errors import PlanUnreadable as PlanUnreadable
from ._errors import PreflightFailed as PreflightFailed
from ._errors import RollbackError as RollbackError
from ._errors import RunFailed as RunFailed
from ._errors import RunNotFound as RunNotFound
from ._errors import StepFailed as StepFailed
from ._errors import TransientError as TransientError
from ._errors import VerificationFailed as VerificationFailed
from ._native import CheckReport as CheckReport
from ._native import Plan as Plan
from ._native import PreviewReport as PreviewReport
from ._native import RunReport as RunReport
from ._native import RunSummary as RunSummary
from ._native import StepContext as StepContext
from ._native import StepReport as StepReport
from ._native import __version__ as __version__
from ._native import history as history
from ._native import kinds as kinds
from ._native import resume as resume
from ._native import show as show
from ._native import unregister as unregister

F = TypeVar("F", bound=Callable[..., Any])

def step(
    kind: str, *, preview: Callable[[dict[str, Any], StepContext], list[str] | None] | None = None
) -> Callable[[F], F]:
    """Registers the decorated function (plain or ``async``) as the step kind ``kind``."""

def verifier(kind: str) -> Callable[[F], F]:
    """Registers the decorated function (plain or ``async``) as the check kind ``kind``."""

__all__ = [
    "BudgetExceeded",
    "Cancelled",
    "CheckReport",
    "Diagnostic",
    "InvalidInput",
    "JournalError",
    "PermissionDenied",
    "Locked",
    "NotResumable",
    "Plan",
    "PlanError",
    "PlanUnreadable",
    "PreflightFailed",
    "PreviewReport",
    "RollbackError",
    "RunFailed",
    "RunNotFound",
    "RunReport",
    "RunSummary",
    "StepContext",
    "StepFailed",
    "StepReport",
    "TransientError",
    "VerificationFailed",
    "__version__",
    "history",
    "kinds",
    "resume",
    "show",
    "step",
    "unregister",
    "verifier",
]
