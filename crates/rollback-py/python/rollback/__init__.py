"""Run rollback plans from Python.

``rollback`` turns a written rollback procedure into a plan a machine runs:
fast, inside a time budget, verified, journaled and resumable. This package
is the engine of the ``rollback`` command (written in Rust) with a Python
front door::

    import rollback

    @rollback.step("team.flush_cache")
    def flush_cache(config, ctx):
        ...  # talk to the cache
        return {"flushed": 12}

    plan = rollback.Plan.load("plans/order-service.yaml")
    report = plan.run(reason="5xx spike after 2.4.1")

``Plan.run`` returns the report of a run that succeeded within its budget
and raises :class:`StepFailed`, :class:`VerificationFailed`,
:class:`BudgetExceeded` or :class:`PreflightFailed` (each carrying the
``report``) otherwise, so a failed rollback cannot pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import (
    BudgetExceeded,
    Cancelled,
    Diagnostic,
    InvalidInput,
    JournalError,
    PermissionDenied,
    Locked,
    NotResumable,
    PlanError,
    PlanUnreadable,
    PreflightFailed,
    RollbackError,
    RunFailed,
    RunNotFound,
    StepFailed,
    TransientError,
    VerificationFailed,
)
from ._native import (
    CheckReport,
    Plan,
    PreviewReport,
    RunReport,
    RunSummary,
    StepContext,
    StepReport,
    __version__,
    history,
    kinds,
    resume,
    show,
    unregister,
)
from ._native import register_step as _register_step
from ._native import register_verifier as _register_verifier

F = TypeVar("F", bound=Callable[..., Any])


def step(kind: str, *, preview: Callable[[dict[str, Any], StepContext], list[str] | None] | None = None) -> Callable[[F], F]:
    """Registers the decorated function as the step kind ``kind``.

    The function (plain or ``async``) is called as ``func(config, ctx)``:
    ``config`` is a dict of the plan entry's fields besides ``id``, ``kind``,
    ``after``, ``timeout``, ``retries`` and ``backoff``, with ``${...}``
    references resolved; ``ctx`` is a :class:`StepContext` (run id, step id,
    attempt, operator, outputs of earlier steps, plan variables). It returns
    a dict of outputs (later steps read them as ``${steps.ID.NAME}``) or
    ``None``. An exception fails the step and its traceback becomes the
    step's error; raise :class:`TransientError` to let ``retries:`` try again.

    ``preview(config, ctx)``, if given, returns the changes the step would
    make without making them (``rollback.Plan.preview``).

    Like every step, the function must be idempotent: a resumed run calls it
    again if it was interrupted.
    """

    def register(func: F) -> F:
        _register_step(kind, func, preview)
        return func

    return register


def verifier(kind: str) -> Callable[[F], F]:
    """Registers the decorated function as the check kind ``kind`` (usable
    under ``verify:`` and ``preflight:``).

    Called as ``func(config, ctx)`` (plain or ``async``), it must not change
    anything and returns ``True``/``False`` or a dict with ``passed`` and
    optionally ``observed`` and ``expected`` (strings shown in the report).
    An exception counts as a failed measurement.
    """

    def register(func: F) -> F:
        _register_verifier(kind, func)
        return func

    return register


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
