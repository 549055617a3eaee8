//! The PostgreSQL client tools (`pg_dump`, `pg_restore`), run through core's
//! program runner: argv only, a process group of their own (the terminal's
//! Ctrl-C does not reach them, so the first Ctrl-C lets them finish), their
//! pid journaled before their output is read (a resume ends what a dead
//! runner left running), capped output, redacted errors.
//!
//! The connection travels in libpq's environment (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGDATABASE`, `PGPASSWORD`) set on the child only: never on a
//! command line, so never in the journal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rollback_core::process::{Finished, OnResume, Program};
use rollback_core::{StepContext, StepError};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What to do when a client tool is not installed.
pub(crate) const CLIENT_HINT: &str =
    "install the PostgreSQL client (apt-get install postgresql-client) or set `pg_bin_dir`";

/// Phrases of libpq and the server that mean the connection to the server
/// was lost or refused (a restart, a failover): another attempt may work.
const CONNECTION_LOST: &[&str] = &[
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "connection to server was lost",
    "could not connect to server",
    "Connection refused",
    "no connection to the server",
];

/// Where the PostgreSQL client tools are.
#[derive(Debug, Clone)]
pub(crate) struct PgTools {
    bin_dir: Option<PathBuf>,
}

/// What `pg_restore --list` found in an archive.
#[derive(Debug)]
pub(crate) enum Listing {
    /// It lists this many entries.
    Entries(usize),
    /// `pg_restore` ran and could not read it.
    Unreadable(StepError),
}

impl PgTools {
    pub(crate) fn new(bin_dir: Option<String>) -> Self {
        PgTools {
            bin_dir: bin_dir.filter(|d| !d.is_empty()).map(PathBuf::from),
        }
    }

    pub(crate) fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `name args...` with `env` added to the runner's environment.
    pub(crate) fn command(
        &self,
        name: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        on_resume: OnResume,
    ) -> Program {
        Program::new([self.program(name).to_string_lossy().into_owned()])
            .args(args.iter().cloned())
            .envs(env)
            .missing_hint(CLIENT_HINT)
            .on_resume(on_resume)
    }

    /// Runs a tool to its end; an error unless it exited with 0. A failure
    /// that says the server connection was lost is retryable.
    pub(crate) async fn run(
        &self,
        ctx: &StepContext,
        program: Program,
    ) -> Result<Finished, StepError> {
        let finished = program.run(ctx).await?;
        match finished.expect_success(ctx) {
            Ok(()) => Ok(finished),
            Err(e) if connection_lost(&finished.evidence()) => {
                Err(StepError::retryable(e.message().to_string())
                    .with_detail(e.detail().unwrap_or_default().to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// `pg_restore --list PATH`, counting the entries as they are listed
    /// (a large schema lists more than the output kept for errors). An
    /// error only when `pg_restore` cannot be run.
    pub(crate) async fn list_archive(
        &self,
        ctx: &StepContext,
        env: &BTreeMap<String, String>,
        path: &Path,
    ) -> Result<Listing, StepError> {
        // Read-only and quick: a resume ends a survivor and lists again.
        let program = self.command(
            "pg_restore",
            &["--list".to_string(), path.to_string_lossy().into_owned()],
            env,
            OnResume::End,
        );
        let mut running = program.spawn(ctx).await?;
        let mut entries = 0;
        if let Some(stdout) = running.take_stdout() {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if is_entry(&line) {
                    entries += 1;
                }
            }
        }
        let finished = running.wait(ctx).await?;
        Ok(match finished.expect_success(ctx) {
            Ok(()) => Listing::Entries(entries),
            Err(e) => Listing::Unreadable(e),
        })
    }

    /// `pg_restore --list`: the archive is readable and holds entries.
    pub(crate) async fn list(
        &self,
        ctx: &StepContext,
        env: &BTreeMap<String, String>,
        path: &Path,
    ) -> Result<usize, StepError> {
        match self.list_archive(ctx, env, path).await? {
            Listing::Entries(0) => Err(StepError::fatal(ctx.redact(&format!(
                "backup {} holds no entries (pg_restore --list is empty): it cannot restore anything",
                path.display()
            )))),
            Listing::Entries(n) => Ok(n),
            Listing::Unreadable(e) => Err(e),
        }
    }
}

/// Whether a line of a `pg_restore --list` listing names an entry
/// (comments start with `;`).
fn is_entry(line: &str) -> bool {
    !line.trim().is_empty() && !line.starts_with(';')
}

/// Whether a tool's output says the connection to the server was lost.
pub(crate) fn connection_lost(output: &str) -> bool {
    CONNECTION_LOST.iter().any(|p| output.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_are_entries_unless_comments() {
        let listing = ";\n; Archive created at ...\n;\n215; 1259 16390 TABLE public orders app\n\n3325; 0 16390 TABLE DATA public orders app\n";
        assert_eq!(listing.lines().filter(|l| is_entry(l)).count(), 2);
    }

    #[test]
    fn a_lost_connection_is_told_from_a_bad_archive() {
        assert!(connection_lost(
            "pg_restore: error: could not execute query: server closed the connection unexpectedly"
        ));
        assert!(connection_lost(
            "pg_restore: error: FATAL:  terminating connection due to administrator command"
        ));
        assert!(!connection_lost(
            "pg_restore: error: input file does not appear to be a valid archive"
        ));
    }
}
