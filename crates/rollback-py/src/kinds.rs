//! Step and check kinds written in Python (`@rollback.step`, `@rollback.verifier`),
//! and the registry the module loads plans with.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rollback_core::{
    ConfigError, Measurement, OutputNames, Outputs, Preview, Registry, Step,
    StepContext as CoreContext, StepError, Verifier,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::convert::{json_to_py, py_to_json, to_py};

/// Whether a Python kind is a step or a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Step,
    Verifier,
}

/// A Python function registered as a kind.
#[derive(Debug)]
struct PyKind {
    role: Role,
    func: Py<PyAny>,
    preview: Option<Py<PyAny>>,
    /// `module.qualname` of the function, for descriptions.
    name: String,
}

/// Kinds registered from Python, by kind name.
static PY_KINDS: Mutex<BTreeMap<String, Arc<PyKind>>> = Mutex::new(BTreeMap::new());

/// Plan variables, filled in once the plan that holds the Python steps is
/// loaded (the registry builds steps before the plan's variables are known).
pub(crate) type VarsCell = Arc<Mutex<BTreeMap<String, String>>>;

/// The kinds compiled into this module (core and the enabled adapters).
fn builtin_registry() -> Registry {
    rollback::registry()
}

/// The registry plans are loaded with: built-in kinds plus the Python kinds
/// registered so far. Python steps read plan variables from `vars`.
pub(crate) fn registry(vars: &VarsCell) -> Registry {
    let mut registry = builtin_registry();
    let kinds = PY_KINDS.lock().expect("python kinds").clone();
    for (kind, py_kind) in kinds {
        match py_kind.role {
            Role::Step => {
                let vars = vars.clone();
                let name = kind.clone();
                registry.step(
                    &kind,
                    "a step written in Python",
                    move |config: PyKindConfig| {
                        Ok::<_, ConfigError>(PyStep {
                            kind: name.clone(),
                            py_kind: py_kind.clone(),
                            config: config.0,
                            vars: vars.clone(),
                        })
                    },
                );
            }
            Role::Verifier => {
                let vars = vars.clone();
                let name = kind.clone();
                registry.verifier(
                    &kind,
                    "a check written in Python",
                    move |config: PyKindConfig| {
                        Ok::<_, ConfigError>(PyVerifier {
                            kind: name.clone(),
                            py_kind: py_kind.clone(),
                            config: config.0,
                            vars: vars.clone(),
                        })
                    },
                );
            }
        }
    }
    registry
}

/// The configuration of a Python kind: every field of the plan entry besides
/// the engine's own (`id`, `kind`, `after`, `timeout`, ...), passed to the
/// function as a dict with `${...}` references resolved.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PyKindConfig(
    /// The entry's fields, as written in the plan.
    BTreeMap<String, serde_json::Value>,
);

fn qualified_name(func: &Bound<'_, PyAny>) -> String {
    let module = func
        .getattr("__module__")
        .and_then(|m| m.extract::<String>())
        .unwrap_or_else(|_| "?".into());
    let name = func
        .getattr("__qualname__")
        .and_then(|m| m.extract::<String>())
        .unwrap_or_else(|_| "?".into());
    format!("{module}.{name}")
}

fn register(
    kind: &str,
    role: Role,
    func: &Bound<'_, PyAny>,
    preview: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    if !func.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "kind `{kind}`: {func} is not callable"
        )));
    }
    if let Some(p) = preview {
        if !p.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "kind `{kind}`: preview {p} is not callable"
            )));
        }
    }
    if kind.is_empty() || kind.chars().any(|c| c.is_whitespace()) {
        return Err(PyValueError::new_err(format!(
            "`{kind}` is not a valid kind name: use letters, digits, `_` and `.` (e.g. `team.flush_cache`)"
        )));
    }
    let builtin = builtin_registry();
    let taken = match role {
        Role::Step => builtin.step_kinds().iter().any(|(k, _)| *k == kind),
        Role::Verifier => builtin.verifier_kinds().iter().any(|(k, _)| *k == kind),
    };
    if taken {
        return Err(PyValueError::new_err(format!(
            "kind `{kind}` is built in; give the Python kind a name of its own (e.g. `team.{kind}`)"
        )));
    }
    let entry = PyKind {
        role,
        func: func.clone().unbind(),
        preview: preview.map(|p| p.clone().unbind()),
        name: qualified_name(func),
    };
    PY_KINDS
        .lock()
        .expect("python kinds")
        .insert(kind.to_string(), Arc::new(entry));
    Ok(())
}

/// Registers `func(config, context) -> dict | None` as the step kind `kind`.
#[pyfunction]
#[pyo3(signature = (kind, func, preview=None))]
pub(crate) fn register_step(
    kind: &str,
    func: &Bound<'_, PyAny>,
    preview: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    register(kind, Role::Step, func, preview)
}

/// Registers `func(config, context) -> bool | dict` as the check kind `kind`.
#[pyfunction]
pub(crate) fn register_verifier(kind: &str, func: &Bound<'_, PyAny>) -> PyResult<()> {
    register(kind, Role::Verifier, func, None)
}

/// Removes a kind registered from Python; returns whether there was one.
#[pyfunction]
pub(crate) fn unregister(kind: &str) -> bool {
    PY_KINDS
        .lock()
        .expect("python kinds")
        .remove(kind)
        .is_some()
}

/// The kinds plans may use: `{"steps": {...}, "verifiers": {...}, "notifiers": {...}}`,
/// each mapping a kind to its one-line summary.
#[pyfunction]
pub(crate) fn kinds(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let registry = registry(&VarsCell::default());
    let out = PyDict::new(py);
    let table = |list: Vec<(&str, &'static str)>| -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        for (k, s) in list {
            d.set_item(k, s)?;
        }
        Ok(d)
    };
    out.set_item("steps", table(registry.step_kinds())?)?;
    out.set_item("verifiers", table(registry.verifier_kinds())?)?;
    out.set_item("notifiers", table(registry.notifier_kinds())?)?;
    Ok(out)
}

/// What a Python step or check sees: who runs it, why, the outputs of earlier
/// steps, the plan variables.
#[pyclass(module = "rollback._native", frozen, name = "StepContext")]
pub struct StepContext {
    inner: CoreContext,
    vars: BTreeMap<String, String>,
}

#[pymethods]
impl StepContext {
    /// The run's id.
    #[getter]
    fn run_id(&self) -> &str {
        self.inner.run_id()
    }

    /// The id of the step (or the name of the check) being run.
    #[getter]
    fn step_id(&self) -> &str {
        self.inner.step_id()
    }

    /// 1 for the first attempt, 2 for the first retry, and so on.
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Who runs the plan.
    #[getter]
    fn operator(&self) -> &str {
        self.inner.operator()
    }

    /// Why the run was started.
    #[getter]
    fn reason(&self) -> &str {
        self.inner.reason()
    }

    /// Outputs of the steps completed so far, by step id.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.inner.completed_outputs())
    }

    /// The plan's variables (after overrides).
    #[getter]
    fn vars(&self) -> BTreeMap<String, String> {
        self.vars.clone()
    }

    /// Seconds left before the plan's budget runs out, if it has one.
    #[getter]
    fn remaining_s(&self) -> Option<f64> {
        self.inner.remaining().map(|d| d.as_secs_f64())
    }

    /// Whether the operator interrupted the run (a long step should stop).
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.cancellation().is_cancelled()
    }

    /// Resolves `${env:..}`, `${file:..}`, `${var:..}` and `${steps.ID.NAME}`
    /// in `template`; secrets read this way are redacted from the journal.
    fn resolve(&self, template: &str) -> PyResult<String> {
        self.inner
            .resolve(template)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// `text` with every secret seen in this run replaced by `***`.
    fn redact(&self, text: &str) -> String {
        self.inner.redact(text)
    }

    /// Reports progress of a long step (journaled, passed to `on_event`).
    fn progress(&self, message: &str) {
        self.inner.progress(message)
    }

    /// A folder for this step's files inside the run's directory (created).
    fn artifact_dir(&self) -> PyResult<String> {
        self.inner
            .artifact_dir()
            .map(|p| p.display().to_string())
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!(
            "<StepContext run={} step={} attempt={}>",
            self.inner.run_id(),
            self.inner.step_id(),
            self.inner.attempt()
        )
    }
}

/// A Python exception as a step error: the type and message, then the
/// traceback (which the report and `StepFailed.error` show in full). An
/// exception derived from `rollback.TransientError` is retryable.
fn step_error(py: Python<'_>, err: PyErr) -> StepError {
    let retryable = py
        .import("rollback._errors")
        .and_then(|m| m.getattr("TransientError"))
        .map(|cls| err.value(py).is_instance(&cls).unwrap_or(false))
        .unwrap_or(false);
    let head = {
        let type_name = err
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into());
        format!("{type_name}: {}", err.value(py))
    };
    let traceback = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (err.get_type(py), err.value(py), err.traceback(py)),
            )
        })
        .and_then(|lines| lines.extract::<Vec<String>>())
        .map(|lines| lines.concat())
        .unwrap_or_default();
    let e = if retryable {
        StepError::retryable(head)
    } else {
        StepError::fatal(head)
    };
    if traceback.is_empty() {
        e
    } else {
        e.with_detail(traceback.trim_end().to_string())
    }
}

/// Calls `func(config, context)`; a coroutine it returns runs to completion on
/// a fresh asyncio event loop in this (worker) thread.
fn call<'py>(
    py: Python<'py>,
    func: &Py<PyAny>,
    ctx: CoreContext,
    vars: BTreeMap<String, String>,
    config: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    let config = json_to_py(py, config)?;
    let context = Bound::new(py, StepContext { inner: ctx, vars })?;
    let result = func.bind(py).call1((config, context))?;
    let inspect = py.import("inspect")?;
    if inspect
        .call_method1("isawaitable", (&result,))?
        .is_truthy()?
    {
        let asyncio = py.import("asyncio")?;
        // asyncio.run wants a coroutine; wrap other awaitables.
        let coroutine = if inspect
            .call_method1("iscoroutine", (&result,))?
            .is_truthy()?
        {
            result
        } else {
            let ns = PyDict::new(py);
            py.run(
                c"async def _await(a):\n    return await a\n",
                None,
                Some(&ns),
            )?;
            ns.get_item("_await")?
                .ok_or_else(|| PyTypeError::new_err("internal: _await missing"))?
                .call1((result,))?
        };
        return asyncio.call_method1("run", (coroutine,));
    }
    Ok(result)
}

/// Runs Python work on the blocking pool, so the executor's threads keep going.
async fn in_python<T: Send + 'static>(
    what: String,
    work: impl FnOnce(Python<'_>) -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(move || Python::attach(work))
        .await
        .map_err(|e| StepError::fatal(format!("{what}: the Python call did not finish: {e}")))?
}

/// A plan step whose kind is a Python function.
#[derive(Debug)]
struct PyStep {
    kind: String,
    py_kind: Arc<PyKind>,
    config: BTreeMap<String, serde_json::Value>,
    vars: VarsCell,
}

impl PyStep {
    fn config_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.config.clone().into_iter().collect())
    }
}

#[async_trait]
impl Step for PyStep {
    fn describe(&self) -> String {
        format!("Python step {} ({})", self.kind, self.py_kind.name)
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Any
    }

    async fn preview(&self, ctx: &CoreContext) -> Result<Preview, StepError> {
        let summary = format!("call {}", self.py_kind.name);
        let Some(preview) = self
            .py_kind
            .preview
            .as_ref()
            .map(|p| Python::attach(|py| p.clone_ref(py)))
        else {
            return Ok(Preview::new(
                summary,
                vec![format!(
                    "runs {} (its changes cannot be previewed: register it with preview=...)",
                    self.py_kind.name
                )],
            ));
        };
        let config = ctx.resolve_json(&self.config_value())?;
        let ctx = ctx.clone();
        let vars = self.vars.lock().expect("vars").clone();
        let kind = self.kind.clone();
        in_python(format!("preview of {kind}"), move |py| {
            let result = call(py, &preview, ctx, vars, &config).map_err(|e| step_error(py, e))?;
            if result.is_none() {
                return Ok(Preview::new(summary, Vec::new()));
            }
            let changes: Vec<String> =
                result.extract().map_err(|_| {
                    StepError::fatal(format!(
                    "the preview function of `{}` must return a list of str (the changes), not {}",
                    kind,
                    result.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
                })?;
            Ok(Preview::new(summary, changes))
        })
        .await
    }

    async fn run(&self, ctx: &CoreContext) -> Result<Outputs, StepError> {
        let config = ctx.resolve_json(&self.config_value())?;
        let func = Python::attach(|py| self.py_kind.func.clone_ref(py));
        let ctx = ctx.clone();
        let vars = self.vars.lock().expect("vars").clone();
        let kind = self.kind.clone();
        in_python(format!("step kind {kind}"), move |py| {
            let cancel = ctx.cancellation().clone();
            let result = call(py, &func, ctx, vars, &config).map_err(|e| {
                let error = step_error(py, e);
                if cancel.is_cancelled() {
                    // A step that gave up because it saw `ctx.cancelled` was
                    // interrupted, not broken: `resume` runs it again.
                    let interrupted = StepError::interrupted(error.message().to_string());
                    match error.detail() {
                        Some(traceback) => interrupted.with_detail(traceback.to_string()),
                        None => interrupted,
                    }
                } else {
                    error
                }
            })?;
            outputs_from(py, &kind, &result)
        })
        .await
    }
}

fn outputs_from(
    py: Python<'_>,
    kind: &str,
    result: &Bound<'_, PyAny>,
) -> Result<Outputs, StepError> {
    if result.is_none() {
        return Ok(Outputs::new());
    }
    let Ok(dict) = result.cast::<PyDict>() else {
        return Err(StepError::fatal(format!(
            "step kind `{kind}` returned {}; return a dict of outputs (or None)",
            result
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        )));
    };
    match py_to_json(dict.as_any(), &format!("outputs of step kind `{kind}`")) {
        Ok(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(_) => Ok(Outputs::new()),
        Err(e) => Err(step_error(py, e)),
    }
}

/// A check whose kind is a Python function.
#[derive(Debug)]
struct PyVerifier {
    kind: String,
    py_kind: Arc<PyKind>,
    config: BTreeMap<String, serde_json::Value>,
    vars: VarsCell,
}

#[async_trait]
impl Verifier for PyVerifier {
    fn describe(&self) -> String {
        format!("Python check {} ({})", self.kind, self.py_kind.name)
    }

    async fn check(&self, ctx: &CoreContext) -> Result<Measurement, StepError> {
        let config = ctx.resolve_json(&serde_json::Value::Object(
            self.config.clone().into_iter().collect(),
        ))?;
        let func = Python::attach(|py| self.py_kind.func.clone_ref(py));
        let ctx = ctx.clone();
        let vars = self.vars.lock().expect("vars").clone();
        let kind = self.kind.clone();
        in_python(format!("check kind {kind}"), move |py| {
            let result = call(py, &func, ctx, vars, &config).map_err(|e| step_error(py, e))?;
            measurement_from(&kind, &result)
        })
        .await
    }
}

/// `True`/`False`, or a dict with `passed` and optional `observed`, `expected`.
fn measurement_from(kind: &str, result: &Bound<'_, PyAny>) -> Result<Measurement, StepError> {
    if let Ok(passed) = result.extract::<bool>() {
        return Ok(Measurement::new(
            passed,
            if passed { "passed" } else { "failed" },
            "passed",
        ));
    }
    let bad = || {
        StepError::fatal(format!(
            "check kind `{kind}` must return a bool or a dict with `passed` (bool) and optional \
             `observed` and `expected` (str)"
        ))
    };
    let dict = result.cast::<PyDict>().map_err(|_| bad())?;
    let passed: bool = dict
        .get_item("passed")
        .ok()
        .flatten()
        .and_then(|v| v.extract().ok())
        .ok_or_else(bad)?;
    let text = |key: &str, default: &str| -> String {
        dict.get_item(key)
            .ok()
            .flatten()
            .map(|v| v.str().map(|s| s.to_string()).unwrap_or_default())
            .unwrap_or_else(|| default.to_string())
    };
    Ok(Measurement::new(
        passed,
        text("observed", if passed { "passed" } else { "failed" }),
        text("expected", "passed"),
    ))
}
