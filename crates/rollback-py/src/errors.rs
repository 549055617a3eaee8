//! Engine errors and unsuccessful runs as the exceptions of `rollback._errors`
//! (one hierarchy under `rollback.RollbackError`, with structured attributes).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rollback_core::{Error, Outcome, RunStatus};

use crate::report::RunReport;

/// An instance of `rollback._errors.NAME(message, **kwargs)` as a `PyErr`.
fn raise(py: Python<'_>, name: &str, message: String, kwargs: &Bound<'_, PyDict>) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let class = py.import("rollback._errors")?.getattr(name)?;
        let instance = class.call((message.clone(),), Some(kwargs))?;
        Ok(PyErr::from_value(instance))
    };
    match build() {
        Ok(err) => err,
        // Only when the package is broken (the native module imported alone).
        Err(e) => PyRuntimeError::new_err(format!("{message} (and rollback._errors failed: {e})")),
    }
}

/// The exception for an engine error.
pub(crate) fn to_py_err(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    let kwargs = PyDict::new(py);
    let fill = || -> PyResult<&'static str> {
        Ok(match &error {
            Error::InvalidPlan { file, diagnostics } => {
                kwargs.set_item("file", file)?;
                let list = pyo3::types::PyList::empty(py);
                for d in diagnostics {
                    let item = PyDict::new(py);
                    item.set_item("file", file)?;
                    item.set_item("line", d.line)?;
                    item.set_item("column", d.column)?;
                    item.set_item("field", &d.field)?;
                    item.set_item("message", &d.message)?;
                    item.set_item("hint", d.hint.as_deref())?;
                    list.append(item)?;
                }
                kwargs.set_item("diagnostics", list)?;
                "PlanError"
            }
            Error::PlanUnreadable { path, .. } => {
                kwargs.set_item("path", path.display().to_string())?;
                "PlanUnreadable"
            }
            Error::Locked { plan, holder } => {
                kwargs.set_item("plan", plan)?;
                kwargs.set_item("operator", &holder.operator)?;
                kwargs.set_item("host", &holder.host)?;
                kwargs.set_item("pid", holder.pid)?;
                kwargs.set_item("since", &holder.since)?;
                kwargs.set_item("run_id", &holder.run_id)?;
                "Locked"
            }
            Error::Journal { path, .. } => {
                kwargs.set_item("path", path.display().to_string())?;
                "JournalError"
            }
            Error::RunNotFound { run_id, dir } => {
                kwargs.set_item("run_id", run_id)?;
                kwargs.set_item("runs_dir", dir.display().to_string())?;
                "RunNotFound"
            }
            Error::NotResumable { run_id, reason } => {
                kwargs.set_item("run_id", run_id)?;
                kwargs.set_item("reason", reason)?;
                "NotResumable"
            }
            Error::Permission { what, .. } => {
                kwargs.set_item("what", what)?;
                "PermissionDenied"
            }
            Error::InvalidInput { .. } => "InvalidInput",
            _ => "RollbackError",
        })
    };
    match fill() {
        Ok(name) => raise(py, name, message, &kwargs),
        Err(e) => e,
    }
}

/// A simple `InvalidInput` error (a bad argument from Python).
pub(crate) fn invalid_input(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "InvalidInput", message.into(), &PyDict::new(py))
}

/// The exception for a run that did not succeed, carrying its report; `None`
/// when it succeeded within its budget. `drill`: a drill that finished after
/// its budget fails as `BudgetExceeded`.
pub(crate) fn status_error(
    py: Python<'_>,
    report: &Bound<'_, RunReport>,
) -> PyResult<Option<PyErr>> {
    let r = &report.get().inner;
    let run_id = r.run.run_id.clone();
    let kwargs = PyDict::new(py);
    kwargs.set_item("run_id", &run_id)?;
    kwargs.set_item("report", report)?;
    kwargs.set_item("status", r.status.map(|s| s.as_str()))?;
    let see = format!("details: rollback.show(\"{run_id}\") or `rollback show {run_id}`");
    let (name, message) = match r.status {
        Some(RunStatus::Succeeded) if !r.budget_exceeded => return Ok(None),
        Some(RunStatus::Succeeded) | Some(RunStatus::BudgetExceeded) => {
            kwargs.set_item("budget_ms", r.budget_ms)?;
            kwargs.set_item("duration_ms", r.duration_ms)?;
            let budget = r.budget_ms.map(rollback_core::report::fmt_ms).unwrap_or_else(|| "-".into());
            let used = r.duration_ms.map(rollback_core::report::fmt_ms).unwrap_or_else(|| "-".into());
            (
                "BudgetExceeded",
                format!("run {run_id} of plan `{}` ran out of its {budget} budget (used {used}); {see}", r.run.plan),
            )
        }
        Some(RunStatus::StepFailed) => {
            let failed = r
                .steps
                .iter()
                .find(|s| matches!(s.outcome, Some(Outcome::Failed | Outcome::TimedOut | Outcome::Interrupted)))
                .or_else(|| r.steps.iter().find(|s| s.error.is_some()));
            let (step, kind, error) = match failed {
                Some(s) => (s.id.clone(), s.kind.clone(), s.error.clone().unwrap_or_default()),
                None => (String::new(), String::new(), String::new()),
            };
            kwargs.set_item("step", &step)?;
            kwargs.set_item("kind", &kind)?;
            kwargs.set_item("error", &error)?;
            let mut message = format!("step `{step}` ({kind}) failed in run {run_id}: {error}");
            if r.compensated {
                message.push_str("\ncompleted steps were undone (on_failure: compensate)");
            }
            message.push_str(&format!("\n{see}; continue with rollback.resume(\"{run_id}\") once fixed"));
            ("StepFailed", message)
        }
        Some(RunStatus::VerificationFailed) | Some(RunStatus::PreflightFailed) => {
            let failed: Vec<String> = r.checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect();
            let detail: Vec<String> = r
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{}: observed {}, expected {}", c.name, c.observed, c.expected))
                .collect();
            kwargs.set_item("checks", failed)?;
            if r.status == Some(RunStatus::PreflightFailed) {
                (
                    "PreflightFailed",
                    format!("preflight failed, nothing was changed (run {run_id}): {}; {see}", detail.join("; ")),
                )
            } else {
                (
                    "VerificationFailed",
                    format!("the steps ran but verification failed (run {run_id}): {}; {see}", detail.join("; ")),
                )
            }
        }
        Some(RunStatus::Cancelled) => (
            "Cancelled",
            format!("run {run_id} was cancelled; continue it with rollback.resume(\"{run_id}\")"),
        ),
        None => (
            "RunFailed",
            format!("run {run_id} has no end in its journal (the runner died); continue it with rollback.resume(\"{run_id}\")"),
        ),
    };
    Ok(Some(raise(py, name, message, &kwargs)))
}
