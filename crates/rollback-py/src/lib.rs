#![doc = include_str!("../README.md")]
// `rollback_core::Error` is large; it is core's type and returned as is.
#![allow(clippy::result_large_err)]

mod convert;
mod errors;
mod kinds;
mod plan;
mod report;
mod run;

use pyo3::prelude::*;

pub use kinds::PyKindConfig;

/// The native part of the `rollback` Python package (`rollback._native`);
/// import `rollback` instead.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<plan::Plan>()?;
    m.add_class::<report::RunReport>()?;
    m.add_class::<report::StepReport>()?;
    m.add_class::<report::CheckReport>()?;
    m.add_class::<report::PreviewReport>()?;
    m.add_class::<report::RunSummary>()?;
    m.add_class::<kinds::StepContext>()?;
    m.add_function(wrap_pyfunction!(plan::history, m)?)?;
    m.add_function(wrap_pyfunction!(plan::show, m)?)?;
    m.add_function(wrap_pyfunction!(plan::resume, m)?)?;
    m.add_function(wrap_pyfunction!(kinds::register_step, m)?)?;
    m.add_function(wrap_pyfunction!(kinds::register_verifier, m)?)?;
    m.add_function(wrap_pyfunction!(kinds::unregister, m)?)?;
    m.add_function(wrap_pyfunction!(kinds::kinds, m)?)?;
    Ok(())
}
