//! `rollback.Plan` and the module functions `history`, `resume`, `show`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::prelude::*;
use rollback_core::approval::{Approver, NonInteractive, PresetApprovals};
use rollback_core::journal::default_state_dir;
use rollback_core::{Error, Executor, FileJournal, JournalStore, RunOptions};

use crate::errors::{invalid_input, status_error, to_py_err};
use crate::kinds::{registry, VarsCell};
use crate::report::{PreviewReport, RunReport, RunSummary};
use crate::run::{block_on, Watch};

/// A validated rollback plan, loaded from a file or text.
#[pyclass(module = "rollback._native", frozen, name = "Plan")]
pub struct Plan {
    inner: Arc<rollback_core::Plan>,
    /// Where the plan came from, for messages (`file` of diagnostics).
    file: String,
    /// The variable overrides given when loading (re-applied by `validate`).
    overrides: BTreeMap<String, String>,
}

fn load_text(
    text: &str,
    file: &str,
    path: Option<&Path>,
    overrides: &BTreeMap<String, String>,
) -> rollback_core::Result<rollback_core::Plan> {
    let vars = VarsCell::default();
    let mut plan = rollback_core::Plan::from_yaml(text, file, &registry(&vars), overrides)?;
    plan.source.path = path.map(Path::to_path_buf);
    *vars.lock().expect("vars") = plan.vars.clone();
    Ok(plan)
}

fn state_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(default_state_dir)
}

/// `yes` approves `confirm` steps; `approved_by` (role to name) gives the
/// plan's named-role approvals up front, as `--approved-by` does. Nothing can
/// be asked at a terminal from here, so a role not given is refused.
fn approver(yes: bool, approved_by: BTreeMap<String, String>) -> Arc<dyn Approver> {
    let fallback = Arc::new(NonInteractive { assume_yes: yes });
    if approved_by.is_empty() {
        return fallback;
    }
    Arc::new(PresetApprovals {
        approvals: approved_by,
        fallback,
    })
}

/// Checks `approved_by`: every role and name given, no blanks.
fn approvals(
    py: Python<'_>,
    approved_by: Option<BTreeMap<String, String>>,
) -> PyResult<BTreeMap<String, String>> {
    let given = approved_by.unwrap_or_default();
    if let Some((role, _)) = given
        .iter()
        .find(|(role, name)| role.trim().is_empty() || name.trim().is_empty())
    {
        return Err(invalid_input(
            py,
            format!("approved_by: role `{role}` needs the name of the person who approved"),
        ));
    }
    Ok(given)
}

/// Finishes a run: the report, drill files, and the exception for a run that
/// did not succeed (it carries the report).
fn finish(
    py: Python<'_>,
    result: rollback_core::Result<rollback_core::RunReport>,
    drill: bool,
    state_dir: &Path,
) -> PyResult<Py<RunReport>> {
    let report = result.map_err(|e| to_py_err(py, e))?;
    if drill {
        write_drill_report(state_dir, &report).map_err(|e| to_py_err(py, e))?;
    }
    let report = Bound::new(py, RunReport { inner: report })?;
    match status_error(py, &report)? {
        Some(err) => Err(err),
        None => Ok(report.unbind()),
    }
}

/// Writes the drill reports (Markdown, JSON, HTML) beside the run's journal,
/// as the CLI does.
fn write_drill_report(
    state_dir: &Path,
    report: &rollback_core::RunReport,
) -> rollback_core::Result<()> {
    let dir = state_dir.join("runs").join(&report.run.run_id);
    report
        .write_drill_files(&dir)
        .map(|_| ())
        .map_err(|source| Error::Journal { path: dir, source })
}

/// Runs (or resumes) with the options' watch, waiting with the GIL released.
#[allow(clippy::too_many_arguments)]
/// A resume of a stored run, and what the caller says about it.
struct Resume {
    run_id: String,
    fresh: Vec<String>,
    programs_ended_on: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn execute(
    py: Python<'_>,
    plan: Arc<rollback_core::Plan>,
    resume: Option<Resume>,
    reason: String,
    operator: Option<String>,
    yes: bool,
    approved_by: BTreeMap<String, String>,
    drill: bool,
    on_event: Option<Bound<'_, PyAny>>,
    state_dir: PathBuf,
) -> PyResult<Py<RunReport>> {
    if let Some(cb) = &on_event {
        if !cb.is_callable() {
            return Err(invalid_input(
                py,
                "on_event must be callable (it receives each event as a dict)",
            ));
        }
    }
    let mut options = RunOptions::new(reason).approver(approver(yes, approved_by));
    if let Some(op) = operator {
        options = options.operator(op);
    }
    options.drill = drill;
    if let Some(r) = &resume {
        options.fresh = r.fresh.clone();
        options.programs_ended_on = r.programs_ended_on.clone();
    }
    let (watch, options) = Watch::new(options, on_event.map(Bound::unbind));
    let store = FileJournal::new(&state_dir);
    let result = watch.drive(py, async move {
        let executor = Executor::new(Arc::new(store));
        let result = match resume {
            Some(r) => executor.resume(&plan, &r.run_id, options).await,
            None => executor.run(&plan, options).await,
        };
        let notify_wait = plan
            .notify
            .iter()
            .map(|n| n.timeout * (n.retries + 1))
            .max()
            .unwrap_or_default()
            .min(std::time::Duration::from_secs(30));
        executor.flush_notifications(notify_wait).await;
        result
    })?;
    finish(py, result, drill, &state_dir)
}

#[pymethods]
impl Plan {
    /// Loads and validates a plan file; `vars` override the plan's `vars:`.
    /// Raises `PlanError` (with `diagnostics`) or `PlanUnreadable`.
    #[staticmethod]
    #[pyo3(signature = (path, vars=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        vars: Option<BTreeMap<String, String>>,
    ) -> PyResult<Plan> {
        let overrides = vars.unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|source| {
            to_py_err(
                py,
                Error::PlanUnreadable {
                    path: path.clone(),
                    source,
                },
            )
        })?;
        let file = path.display().to_string();
        let plan =
            load_text(&text, &file, Some(&path), &overrides).map_err(|e| to_py_err(py, e))?;
        Ok(Plan {
            inner: Arc::new(plan),
            file,
            overrides,
        })
    }

    /// Validates a plan given as text; `file` names it in diagnostics.
    #[staticmethod]
    #[pyo3(signature = (text, vars=None, file="<string>"))]
    fn from_yaml(
        py: Python<'_>,
        text: &str,
        vars: Option<BTreeMap<String, String>>,
        file: &str,
    ) -> PyResult<Plan> {
        let overrides = vars.unwrap_or_default();
        let plan = load_text(text, file, None, &overrides).map_err(|e| to_py_err(py, e))?;
        Ok(Plan {
            inner: Arc::new(plan),
            file: file.to_string(),
            overrides,
        })
    }

    /// Checks the plan again against the kinds known now (Python kinds may
    /// have been registered or removed since it was loaded). Raises `PlanError`.
    fn validate(&self, py: Python<'_>) -> PyResult<()> {
        load_text(
            &self.inner.source.text,
            &self.file,
            self.inner.source.path.as_deref(),
            &self.overrides,
        )
        .map(|_| ())
        .map_err(|e| to_py_err(py, e))
    }

    /// The plan's name (runs and locks are per name).
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the plan is for.
    #[getter]
    fn description(&self) -> Option<&str> {
        self.inner.description.as_deref()
    }

    /// The time budget in milliseconds.
    #[getter]
    fn budget_ms(&self) -> Option<u64> {
        self.inner
            .budget
            .map(|b| u64::try_from(b.as_millis()).unwrap_or(u64::MAX))
    }

    /// `sha256:` digest of the plan text, as journaled.
    #[getter]
    fn digest(&self) -> &str {
        &self.inner.source.digest
    }

    /// The file it was loaded from.
    #[getter]
    fn path(&self) -> Option<String> {
        self.inner
            .source
            .path
            .as_ref()
            .map(|p| p.display().to_string())
    }

    /// Plan variables after overrides.
    #[getter]
    fn vars(&self) -> BTreeMap<String, String> {
        self.inner.vars.clone()
    }

    /// The steps in file order: dicts with `id`, `kind`, `after`, `describe`.
    #[getter]
    fn steps(&self) -> Vec<BTreeMap<&'static str, step_value::V>> {
        self.inner
            .steps
            .iter()
            .map(|s| {
                BTreeMap::from([
                    ("id", step_value::V::S(s.id.clone())),
                    ("kind", step_value::V::S(s.kind.clone())),
                    ("after", step_value::V::L(s.after.clone())),
                    ("describe", step_value::V::S(s.step.describe())),
                ])
            })
            .collect()
    }

    /// A dry run: each step's preview of what it would change. Nothing is
    /// changed and nothing is journaled.
    fn preview(&self, py: Python<'_>) -> PyResult<PreviewReport> {
        let plan = self.inner.clone();
        let inner = block_on(py, async move { Executor::preview(&plan).await })?;
        Ok(PreviewReport { inner })
    }

    /// Runs the plan and returns its report when it succeeded within its
    /// budget. Otherwise raises `StepFailed`, `VerificationFailed`,
    /// `BudgetExceeded` or `PreflightFailed`, each carrying the `report`.
    /// `on_event(event: dict)` is called in this thread for every journal
    /// record; Ctrl-C cancels the run cleanly (journaled as cancelled) and
    /// re-raises `KeyboardInterrupt`. `yes=True` approves `confirm` steps;
    /// `approved_by={"engineering-manager": "amara"}` gives the plan's
    /// named-role approvals (journaled with who approved).
    #[pyo3(signature = (*, reason, operator=None, yes=false, approved_by=None, on_event=None, state_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        reason: String,
        operator: Option<String>,
        yes: bool,
        approved_by: Option<BTreeMap<String, String>>,
        on_event: Option<Bound<'_, PyAny>>,
        state_dir: Option<PathBuf>,
    ) -> PyResult<Py<RunReport>> {
        let approved_by = approvals(py, approved_by)?;
        execute(
            py,
            self.inner.clone(),
            None,
            reason,
            operator,
            yes,
            approved_by,
            false,
            on_event,
            crate::plan::state_dir(state_dir),
        )
    }

    /// A run marked as a drill; writes `drill.md` and `drill.json` in the
    /// run's folder. Raises like `run`, and `BudgetExceeded` when the drill
    /// succeeded but took longer than the budget.
    #[pyo3(signature = (*, reason="scheduled rollback drill".to_string(), operator=None, yes=false, approved_by=None, on_event=None, state_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn drill(
        &self,
        py: Python<'_>,
        reason: String,
        operator: Option<String>,
        yes: bool,
        approved_by: Option<BTreeMap<String, String>>,
        on_event: Option<Bound<'_, PyAny>>,
        state_dir: Option<PathBuf>,
    ) -> PyResult<Py<RunReport>> {
        let approved_by = approvals(py, approved_by)?;
        execute(
            py,
            self.inner.clone(),
            None,
            reason,
            operator,
            yes,
            approved_by,
            true,
            on_event,
            crate::plan::state_dir(state_dir),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<Plan {} steps={} ({})>",
            self.inner.name,
            self.inner.steps.len(),
            self.file
        )
    }
}

/// Minimal mixed values for `Plan.steps` dicts.
mod step_value {
    use pyo3::prelude::*;
    use pyo3::IntoPyObjectExt;

    /// A string or a list of strings.
    pub enum V {
        /// A string.
        S(String),
        /// A list of strings.
        L(Vec<String>),
    }

    impl<'py> IntoPyObject<'py> for V {
        type Target = PyAny;
        type Output = Bound<'py, PyAny>;
        type Error = PyErr;

        fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
            match self {
                V::S(s) => s.into_bound_py_any(py),
                V::L(l) => l.into_bound_py_any(py),
            }
        }
    }
}

/// Past runs, newest first; `plan` keeps one plan's runs, `limit` the first N.
#[pyfunction]
#[pyo3(signature = (state_dir=None, *, plan=None, limit=None))]
pub(crate) fn history(
    py: Python<'_>,
    state_dir: Option<PathBuf>,
    plan: Option<String>,
    limit: Option<usize>,
) -> PyResult<Vec<RunSummary>> {
    let store = FileJournal::new(crate::plan::state_dir(state_dir));
    let mut runs =
        block_on(py, async move { store.list().await })?.map_err(|e| to_py_err(py, e))?;
    if let Some(p) = plan {
        runs.retain(|r| r.plan == p);
    }
    if let Some(n) = limit {
        runs.truncate(n);
    }
    Ok(runs.into_iter().map(|inner| RunSummary { inner }).collect())
}

/// The report of one run as its journal tells it (`"last"`: the newest run).
/// Raises `RunNotFound`.
#[pyfunction]
#[pyo3(signature = (run_id, state_dir=None))]
pub(crate) fn show(
    py: Python<'_>,
    run_id: String,
    state_dir: Option<PathBuf>,
) -> PyResult<RunReport> {
    let store = FileJournal::new(crate::plan::state_dir(state_dir));
    let stored = block_on(py, async move {
        let id = rollback_core::journal::resolve_run_id(&store, &run_id, false).await?;
        store.read(&id).await
    })?
    .map_err(|e| to_py_err(py, e))?;
    let inner = rollback_core::RunReport::from_stored(&stored).ok_or_else(|| {
        invalid_input(
            py,
            format!("run {} has an empty journal", stored.info.run_id),
        )
    })?;
    Ok(RunReport { inner })
}

/// Continues a run that died or was interrupted (`"last"`: the newest
/// unfinished run) with the plan text and variables it started with;
/// completed steps are not run again. Returns and raises like `Plan.run`.
#[pyfunction]
#[pyo3(signature = (run_id, state_dir=None, *, operator=None, yes=false, approved_by=None, on_event=None, fresh=None, programs_ended_on=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn resume(
    py: Python<'_>,
    run_id: String,
    state_dir: Option<PathBuf>,
    operator: Option<String>,
    yes: bool,
    approved_by: Option<BTreeMap<String, String>>,
    on_event: Option<Bound<'_, PyAny>>,
    fresh: Option<Vec<String>>,
    programs_ended_on: Option<Vec<String>>,
) -> PyResult<Py<RunReport>> {
    let approved_by = approvals(py, approved_by)?;
    let dir = crate::plan::state_dir(state_dir);
    let journal = rollback::Journal {
        state_dir: dir.clone(),
        store: Arc::new(FileJournal::new(&dir)),
        locker: None,
    };
    // Python steps read the plan's variables once it is rebuilt.
    let vars = VarsCell::default();
    let registry = registry(&vars);
    let stored = block_on(py, async move {
        rollback::stored_run(&journal, &run_id, &registry).await
    })?
    .map_err(|e| to_py_err(py, e))?;
    *vars.lock().expect("vars") = stored.plan.vars.clone();
    let fresh = fresh.unwrap_or_default();
    stored
        .check_steps(&fresh, "fresh:")
        .map_err(|e| to_py_err(py, e))?;
    let resume = Resume {
        run_id: stored.run_id.clone(),
        fresh,
        programs_ended_on: programs_ended_on.unwrap_or_default(),
    };
    let plan = stored.plan.clone();
    execute(
        py,
        Arc::new(plan),
        Some(resume),
        stored.info.reason.clone(),
        operator,
        yes,
        approved_by,
        stored.info.drill,
        on_event,
        dir,
    )
}
