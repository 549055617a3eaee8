//! Reports as Python objects: `RunReport` (with its `StepReport`s and
//! `CheckReport`s), `PreviewReport`, `RunSummary`.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rollback_core::executor::PreviewReport as CorePreview;
use rollback_core::{CheckPhase, CheckReport as CoreCheck, RunSummary as CoreSummary};

use crate::convert::to_py;

/// How a run went: status, each step, each check, times against the budget.
#[pyclass(module = "rollback._native", frozen, name = "RunReport")]
pub struct RunReport {
    pub(crate) inner: rollback_core::RunReport,
}

#[pymethods]
impl RunReport {
    /// The run's id (`rollback show RUN_ID`).
    #[getter]
    fn run_id(&self) -> &str {
        &self.inner.run.run_id
    }

    /// The plan's name.
    #[getter]
    fn plan(&self) -> &str {
        &self.inner.run.plan
    }

    /// `succeeded`, `step_failed`, `verification_failed`, `budget_exceeded`,
    /// `preflight_failed`, `cancelled`; `None` when the journal ends mid-run.
    #[getter]
    fn status(&self) -> Option<&'static str> {
        self.inner.status.map(|s| s.as_str())
    }

    /// Whether the run succeeded within its budget.
    #[getter]
    fn ok(&self) -> bool {
        self.inner.status == Some(rollback_core::RunStatus::Succeeded)
            && !self.inner.budget_exceeded
    }

    /// Who ran it.
    #[getter]
    fn operator(&self) -> &str {
        &self.inner.run.operator
    }

    /// Why.
    #[getter]
    fn reason(&self) -> &str {
        &self.inner.run.reason
    }

    /// Whether the run was a drill.
    #[getter]
    fn drill(&self) -> bool {
        self.inner.run.drill
    }

    /// When it started (RFC 3339).
    #[getter]
    fn started_at(&self) -> &str {
        &self.inner.run.started_at
    }

    /// Time of the last segment in milliseconds (the whole run unless resumed).
    #[getter]
    fn duration_ms(&self) -> Option<u64> {
        self.inner.duration_ms
    }

    /// Time from the first start to the end, across resumptions.
    #[getter]
    fn elapsed_ms(&self) -> Option<u64> {
        self.inner.elapsed_ms
    }

    /// The plan's time budget in milliseconds.
    #[getter]
    fn budget_ms(&self) -> Option<u64> {
        self.inner.budget_ms
    }

    /// Whether the budget ran out.
    #[getter]
    fn budget_exceeded(&self) -> bool {
        self.inner.budget_exceeded
    }

    /// Whether completed steps were undone (`on_failure: compensate`).
    #[getter]
    fn compensated(&self) -> bool {
        self.inner.compensated
    }

    /// Whether a drill of this run passes: it succeeded within its budget.
    #[getter]
    fn drill_passed(&self) -> bool {
        self.inner.drill_passed()
    }

    /// The steps in plan order.
    #[getter]
    fn steps(&self) -> Vec<StepReport> {
        self.inner
            .steps
            .iter()
            .cloned()
            .map(|inner| StepReport { inner })
            .collect()
    }

    /// The checks (preflight and verify), in the order they finished.
    #[getter]
    fn checks(&self) -> Vec<CheckReport> {
        self.inner
            .checks
            .iter()
            .cloned()
            .map(|inner| CheckReport { inner })
            .collect()
    }

    /// The step with this id.
    fn step(&self, id: &str) -> PyResult<StepReport> {
        self.inner
            .steps
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .map(|inner| StepReport { inner })
            .ok_or_else(|| {
                pyo3::exceptions::PyKeyError::new_err(format!(
                    "no step `{id}` in run {}",
                    self.inner.run.run_id
                ))
            })
    }

    /// The whole report as plain data (the same document as `rollback show -o json`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner)
    }

    /// The drill report in Markdown.
    fn to_markdown(&self) -> String {
        self.inner.to_markdown()
    }

    /// Raises the exception for the run's status (`StepFailed`,
    /// `VerificationFailed`, `BudgetExceeded`, `PreflightFailed`, `Cancelled`,
    /// `RunFailed`), carrying this report; returns `None` when the run
    /// succeeded within its budget.
    fn raise_for_status(slf: &Bound<'_, Self>) -> PyResult<()> {
        match crate::errors::status_error(slf.py(), slf)? {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<RunReport {} plan={} status={} duration_ms={}>",
            self.inner.run.run_id,
            self.inner.run.plan,
            self.status().unwrap_or("unfinished"),
            self.inner
                .duration_ms
                .map(|d| d.to_string())
                .unwrap_or_else(|| "None".into())
        )
    }
}

/// One step of a run.
#[pyclass(module = "rollback._native", frozen, name = "StepReport")]
pub struct StepReport {
    inner: rollback_core::StepReport,
}

#[pymethods]
impl StepReport {
    /// Step id.
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// Its kind.
    #[getter]
    fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// What it does.
    #[getter]
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// `succeeded`, `failed`, `timed_out`, `interrupted`, `skipped`; `None`
    /// when it never ran.
    #[getter]
    fn outcome(&self) -> Option<&'static str> {
        self.inner.outcome.map(|o| o.as_str())
    }

    /// Attempts made.
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// When it began, in milliseconds from the start of the run.
    #[getter]
    fn start_ms(&self) -> Option<u64> {
        self.inner.start_ms
    }

    /// How long it took in milliseconds.
    #[getter]
    fn duration_ms(&self) -> Option<u64> {
        self.inner.duration_ms
    }

    /// What it returned (secrets redacted).
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner.outputs)
    }

    /// Why it failed or was skipped (for a Python step: the traceback).
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }

    /// How its compensation ended, if it was undone.
    #[getter]
    fn undo(&self) -> Option<&'static str> {
        self.inner.undo.map(|o| o.as_str())
    }

    /// The step as plain data.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "<StepReport {} ({}) outcome={} duration_ms={:?}>",
            self.inner.id,
            self.inner.kind,
            self.outcome().unwrap_or("not run"),
            self.inner.duration_ms
        )
    }
}

/// One preflight or verification check of a run.
#[pyclass(module = "rollback._native", frozen, name = "CheckReport")]
pub struct CheckReport {
    inner: CoreCheck,
}

#[pymethods]
impl CheckReport {
    /// `preflight` or `verify`.
    #[getter]
    fn phase(&self) -> &'static str {
        match self.inner.phase {
            CheckPhase::Preflight => "preflight",
            CheckPhase::Verify => "verify",
        }
    }

    /// The check's name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its kind.
    #[getter]
    fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// Whether it passed.
    #[getter]
    fn passed(&self) -> bool {
        self.inner.passed
    }

    /// What was measured.
    #[getter]
    fn observed(&self) -> &str {
        &self.inner.observed
    }

    /// What was expected.
    #[getter]
    fn expected(&self) -> &str {
        &self.inner.expected
    }

    /// Measurements taken.
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Time spent measuring, in milliseconds.
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
    }

    /// The check as plain data.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "<CheckReport {} {} passed={}>",
            self.phase(),
            self.inner.name,
            if self.inner.passed { "True" } else { "False" }
        )
    }
}

/// A dry run: what each step would change. Nothing was changed or journaled.
#[pyclass(module = "rollback._native", frozen, name = "PreviewReport")]
pub struct PreviewReport {
    pub(crate) inner: CorePreview,
}

#[pymethods]
impl PreviewReport {
    /// The plan's name.
    #[getter]
    fn plan(&self) -> &str {
        &self.inner.plan
    }

    /// Whether every step could be previewed.
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok()
    }

    /// Each step's preview in plan order: dicts with `id`, `kind`, `after`,
    /// `summary`, `changes` (empty: nothing to change) and `error` (why the
    /// preview failed, else `None`).
    #[getter]
    fn steps<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .steps
            .iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("id", &s.id)?;
                d.set_item("kind", &s.kind)?;
                d.set_item("after", &s.after)?;
                match &s.preview {
                    Ok(p) => {
                        d.set_item("summary", &p.summary)?;
                        d.set_item("changes", &p.changes)?;
                        d.set_item("error", py.None())?;
                    }
                    Err(e) => {
                        d.set_item("summary", py.None())?;
                        d.set_item("changes", Vec::<String>::new())?;
                        d.set_item("error", e)?;
                    }
                }
                Ok(d)
            })
            .collect()
    }

    /// The preview as plain data (the same document as `rollback plan -o json`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "<PreviewReport {} steps={} ok={}>",
            self.inner.plan,
            self.inner.steps.len(),
            self.inner.ok()
        )
    }
}

/// One past run, as listed by `rollback.history()`.
#[pyclass(module = "rollback._native", frozen, name = "RunSummary")]
pub struct RunSummary {
    pub(crate) inner: CoreSummary,
}

#[pymethods]
impl RunSummary {
    /// Run id.
    #[getter]
    fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// Plan name.
    #[getter]
    fn plan(&self) -> &str {
        &self.inner.plan
    }

    /// When it started (RFC 3339).
    #[getter]
    fn started_at(&self) -> &str {
        &self.inner.started_at
    }

    /// Who ran it.
    #[getter]
    fn operator(&self) -> &str {
        &self.inner.operator
    }

    /// Why.
    #[getter]
    fn reason(&self) -> &str {
        &self.inner.reason
    }

    /// Whether it was a drill.
    #[getter]
    fn drill(&self) -> bool {
        self.inner.drill
    }

    /// How it ended; `None` while running or after a crash.
    #[getter]
    fn status(&self) -> Option<&'static str> {
        self.inner.status.map(|s| s.as_str())
    }

    /// Duration of its last segment in milliseconds.
    #[getter]
    fn duration_ms(&self) -> Option<u64> {
        self.inner.duration_ms
    }

    /// The plan's digest.
    #[getter]
    fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The summary as plain data.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "<RunSummary {} plan={} status={}>",
            self.inner.run_id,
            self.inner.plan,
            self.status().unwrap_or("unfinished")
        )
    }
}
