//! Runs the Python suite (`tests/test_*.py`) from `cargo test`: builds the
//! package into the virtualenv of `scripts/testenv/python.sh` with
//! `maturin develop`, then runs pytest with warnings as errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_command(venv: &Path, program: &str) -> Command {
    let bin = venv.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(bin.join(program));
    cmd.env("VIRTUAL_ENV", venv)
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONHOME")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn python_suite_passes() {
    let Some(venv) = rollback_core::testing::require_env("ROLLBACK_PY_VENV") else {
        return;
    };
    let venv = PathBuf::from(venv);

    let status = venv_command(&venv, "maturin")
        .args(["develop", "--quiet"])
        .status()
        .expect("run maturin from ROLLBACK_PY_VENV (scripts/testenv/python.sh installs it)");
    assert!(status.success(), "maturin develop failed: {status}");

    let status = venv_command(&venv, "python")
        .args([
            "-m",
            "pytest",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            "-q",
            "tests",
        ])
        .status()
        .expect("run pytest from ROLLBACK_PY_VENV");
    assert!(
        status.success(),
        "the Python suite failed ({status}); see its output above"
    );
}
