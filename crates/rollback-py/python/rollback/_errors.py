"""The exceptions of ``rollback``: one hierarchy under :class:`RollbackError`.

Each keeps its facts as attributes (step, kind, run id, diagnostics, the run's
report), not only in its message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from ._native import RunReport


class Diagnostic(TypedDict):
    """One mistake in a plan file, at its place."""

    file: str
    line: int
    column: int
    field: str
    message: str
    hint: str | None


class RollbackError(Exception):
    """Base class of every error raised by ``rollback``."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in fields.items():
            setattr(self, name, value)


class InvalidInput(RollbackError, ValueError):
    """A wrong argument (an empty reason, an unknown ``last`` run)."""


class PlanError(RollbackError):
    """The plan has mistakes; ``diagnostics`` lists each with file, line,
    column, field, message and hint."""

    file: str
    diagnostics: list[Diagnostic]

    def __init__(self, message: str, *, file: str, diagnostics: list[Diagnostic]) -> None:
        super().__init__(message, file=file, diagnostics=diagnostics)


class PlanUnreadable(PlanError):
    """The plan file cannot be read (``path``)."""

    path: str

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, file=path, diagnostics=[])
        self.path = path


class Locked(RollbackError):
    """Another run of the same plan holds its lock; the holder's facts are
    attributes: ``operator``, ``host``, ``pid``, ``since``, ``run_id``."""

    plan: str
    operator: str
    host: str
    pid: int
    since: str
    run_id: str

    def __init__(
        self, message: str, *, plan: str, operator: str, host: str, pid: int, since: str, run_id: str
    ) -> None:
        super().__init__(
            message, plan=plan, operator=operator, host=host, pid=pid, since=since, run_id=run_id
        )


class RunNotFound(RollbackError, LookupError):
    """No run with ``run_id`` in ``runs_dir``."""

    run_id: str
    runs_dir: str

    def __init__(self, message: str, *, run_id: str, runs_dir: str) -> None:
        super().__init__(message, run_id=run_id, runs_dir=runs_dir)


class NotResumable(RollbackError):
    """Run ``run_id`` cannot be resumed, for ``reason``."""

    run_id: str
    reason: str

    def __init__(self, message: str, *, run_id: str, reason: str) -> None:
        super().__init__(message, run_id=run_id, reason=reason)


class JournalError(RollbackError, OSError):
    """The journal at ``path`` could not be written or read."""

    path: str

    def __init__(self, message: str, *, path: str) -> None:
        RollbackError.__init__(self, message, path=path)


class PermissionDenied(RollbackError, PermissionError):
    """The account the engine runs as may not do something it needs (an API
    answered 403): ``what`` was being done; the message names the missing
    verb, resource and namespace and the rule that grants it."""

    what: str

    def __init__(self, message: str, *, what: str) -> None:
        RollbackError.__init__(self, message, what=what)


class TransientError(RollbackError):
    """Raise from a Python step to say another attempt may succeed: the
    step's ``retries:`` apply. Any other exception fails the step at once."""


class RunFailed(RollbackError):
    """A run ended without success; ``report`` is its full report.

    Base of :class:`StepFailed`, :class:`VerificationFailed`,
    :class:`BudgetExceeded`, :class:`PreflightFailed`, :class:`Cancelled`.
    """

    run_id: str
    status: str | None
    report: RunReport

    def __init__(self, message: str, *, run_id: str, status: str | None, report: RunReport, **fields: Any) -> None:
        super().__init__(message, run_id=run_id, status=status, report=report, **fields)


class StepFailed(RunFailed):
    """Step ``step`` of kind ``kind`` failed; ``error`` is its error text
    (for a Python step: the exception and its traceback)."""

    step: str
    kind: str
    error: str

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str | None,
        report: RunReport,
        step: str,
        kind: str,
        error: str,
    ) -> None:
        super().__init__(message, run_id=run_id, status=status, report=report, step=step, kind=kind, error=error)


class VerificationFailed(RunFailed):
    """The steps ran but the checks named in ``checks`` did not pass."""

    checks: list[str]

    def __init__(self, message: str, *, run_id: str, status: str | None, report: RunReport, checks: list[str]) -> None:
        super().__init__(message, run_id=run_id, status=status, report=report, checks=checks)


class PreflightFailed(RunFailed):
    """The preflight checks named in ``checks`` failed; nothing was changed."""

    checks: list[str]

    def __init__(self, message: str, *, run_id: str, status: str | None, report: RunReport, checks: list[str]) -> None:
        super().__init__(message, run_id=run_id, status=status, report=report, checks=checks)


class BudgetExceeded(RunFailed):
    """The run took longer than its ``budget_ms`` (``duration_ms`` used)."""

    budget_ms: int | None
    duration_ms: int | None

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str | None,
        report: RunReport,
        budget_ms: int | None,
        duration_ms: int | None,
    ) -> None:
        super().__init__(
            message, run_id=run_id, status=status, report=report, budget_ms=budget_ms, duration_ms=duration_ms
        )


class Cancelled(RunFailed):
    """The run was cancelled; ``rollback.resume(run_id)`` continues it."""


__all__ = [
    "BudgetExceeded",
    "Cancelled",
    "Diagnostic",
    "InvalidInput",
    "JournalError",
    "Locked",
    "NotResumable",
    "PermissionDenied",
    "PlanError",
    "PlanUnreadable",
    "PreflightFailed",
    "RollbackError",
    "RunFailed",
    "RunNotFound",
    "StepFailed",
    "TransientError",
    "VerificationFailed",
]
