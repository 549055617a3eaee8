//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One problem in a plan file, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// The field at fault, as a path (`steps[2].timeout`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when there is a likely answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Who holds a plan's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The operator running the plan.
    pub operator: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it took the lock (RFC 3339).
    pub since: String,
    /// Its run id.
    pub run_id: String,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} (pid {}, run {}) since {}",
            self.operator, self.host, self.pid, self.run_id, self.since
        )
    }
}

fn render_invalid(file: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{file}:{}:{}: {}: {}",
            d.line, d.column, d.field, d.message
        ));
        if let Some(hint) = &d.hint {
            out.push_str(&format!("\n  hint: {hint}"));
        }
    }
    out
}

/// Everything that can go wrong in the engine outside a step's own work
/// (which is reported in the run's report, not as an `Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The plan file has mistakes; each is listed with its position.
    #[error("{}", render_invalid(file, diagnostics))]
    InvalidPlan {
        /// The plan's file name.
        file: String,
        /// The mistakes.
        diagnostics: Vec<Diagnostic>,
    },
    /// The plan file cannot be read.
    #[error("cannot read plan file {path}: {source}")]
    PlanUnreadable {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another run of the same plan holds its lock.
    #[error("plan `{plan}` is being run by {holder}; wait for it to finish, or check with `rollback show {}`", holder.run_id)]
    Locked {
        /// The plan's name.
        plan: String,
        /// Who holds the lock (boxed: it keeps every `Result` of this crate small).
        holder: Box<LockHolder>,
    },
    /// The journal could not be written or read.
    #[error("journal at {path}: {source}")]
    Journal {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No run with that id.
    #[error("no run `{run_id}` in {dir} (list runs with `rollback history`)")]
    RunNotFound {
        /// The id asked for.
        run_id: String,
        /// Where runs are kept.
        dir: PathBuf,
    },
    /// The run cannot be resumed.
    #[error("run `{run_id}` cannot be resumed: {reason}")]
    NotResumable {
        /// The run.
        run_id: String,
        /// Why not.
        reason: String,
    },
    /// The account the engine runs as may not do something it needs (an
    /// API answered 403 Forbidden).
    #[error("permission denied: {what}: {message}")]
    Permission {
        /// What was being done, e.g. `taking the plan lock (Lease rollback-plan-orders in namespace ops)`.
        what: String,
        /// Which verb on which resource in which namespace is missing, and
        /// the rule that grants it.
        message: String,
    },
    /// A value given on the command line or through the API is wrong.
    #[error("{message}")]
    InvalidInput {
        /// What is wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn journal(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Journal {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
