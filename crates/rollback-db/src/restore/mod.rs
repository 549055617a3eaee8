//! `db.restore`: restores a backup into a temporary database, verifies it, and
//! swaps it into place; `undo` swaps back.
//!
//! PostgreSQL, in order (see [`postgres`]):
//! 1. a safety backup of the live database (a `db.backup`), unless a verified
//!    backup of it was taken earlier in the run (see [`SafetyBackup`]);
//! 2. `CREATE DATABASE <live>_restore_<run>` (owner, encoding and locale of the
//!    live one) and `pg_restore -j N --exit-on-error` into it;
//! 3. verification: pg_restore's exit status, at least `min_tables` tables, and
//!    the plan's `checks` (scalar queries with expectations). A failure here
//!    drops the temporary database; the live one was never touched;
//! 4. the swap: `ALTER DATABASE live ALLOW_CONNECTIONS false`, the remaining
//!    sessions ended with `pg_terminate_backend` (waiting for each to exit), then
//!    in one transaction `live → <live>_before_<run>` and `temp → live`. The
//!    restored database accepts connections as soon as that commits; the kept
//!    one gets back the `ALLOW_CONNECTIONS` it had. If the swap fails, the
//!    transaction has renamed nothing; connections are allowed again on the
//!    live database and the temporary one is dropped. If even that repair
//!    fails, the error states the exact state and the commands that finish it.
//!
//! What the step set out to do and how far it got (the names, the backups it
//! relies on, the phase: restoring, swapping, swapped) is its intent in the
//! journal store, saved before each phase's effect (see [`progress`]): a
//! re-run, on this runner or another one of a shared journal, continues
//! from there. The verified temporary database also carries a comment naming
//! the run and step, which `undo` and a re-run read to tell it from the
//! original.
//!
//! SQLite: see [`sqlite`].

mod databases;
mod expect;
pub mod postgres;
pub mod progress;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::backup::{verified_backup_in_run, Backup, BackupConfig, PgTools, Scheme, Target};
use crate::backup_location::BackupRef;
pub(crate) use databases::end_sessions;
pub(crate) use expect::Expectation;
use postgres::Names;
use sqlite::{sqlite_sibling, undo_sqlite};

/// PostgreSQL's identifier length limit (NAMEDATALEN - 1), in bytes.
const MAX_IDENTIFIER: usize = 63;

/// When `db.restore` takes a safety backup of the live database first.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SafetyBackup {
    /// Skip it when a step completed earlier in this run produced a verified
    /// backup of this same database (a `db.backup`: `verified: true` and the
    /// same `database`); take one otherwise. The default.
    #[default]
    SkipIfVerifiedBackupInRun,
    /// Always take one, even if the run already holds a backup.
    Always,
}

/// A check run against the restored copy before it is swapped in.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreCheck {
    /// A name for reports; the SQL when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// A query returning one value (first column of the first row), e.g.
    /// `SELECT count(*) FROM orders WHERE total < 0`.
    pub sql: String,
    /// The condition the value must meet: an operator (`=`, `!=`, `<`, `<=`,
    /// `>`, `>=`) and a value, e.g. `= 0` or `>= 1000`. Numbers compare as
    /// numbers, anything else as text (`=` and `!=` only).
    pub expect: String,
}

/// Configuration of the `db.restore` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The live database to replace: `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`
    /// (a role allowed to create, rename and drop databases and end sessions)
    /// or `sqlite://PATH`.
    pub url: String,
    /// The backup to restore: a `pg_dump` archive (custom file or directory) or a
    /// SQLite file, e.g. `${steps.last_clean.path}`.
    pub from: String,
    /// PostgreSQL: parallel jobs of `pg_restore -j` (default 2).
    #[serde(default)]
    pub jobs: Option<u32>,
    /// The restored copy must hold at least this many tables (default 1).
    #[serde(default)]
    pub min_tables: Option<u64>,
    /// Checks the restored copy must pass before it replaces the live database.
    #[serde(default)]
    pub checks: Vec<RestoreCheck>,
    /// When to take a safety backup of the live database first.
    #[serde(default)]
    pub safety_backup: SafetyBackup,
    /// Folder for the safety backup this step takes (when it takes one): a
    /// folder every runner that may resume the run can read (shared
    /// storage). The step's folder in the run's artifacts (this runner's
    /// state directory) when absent: then a resume on another runner stops,
    /// naming the host and path where the backup was written.
    #[serde(default)]
    pub safety_backup_dir: Option<String>,
    /// PostgreSQL: the database to connect to for CREATE / ALTER / DROP
    /// DATABASE (default `postgres`).
    #[serde(default)]
    pub maintenance_db: Option<String>,
    /// Folder holding `pg_restore` and `pg_dump`; found on `PATH` when absent.
    #[serde(default)]
    pub pg_bin_dir: Option<String>,
    /// PostgreSQL: how long to wait for each session of the live database to
    /// exit after it is told to end (default 5s).
    #[serde(default)]
    pub terminate_timeout: Option<HumanDuration>,
}

/// The `db.restore` step.
#[derive(Debug)]
pub struct Restore {
    config: RestoreConfig,
    expectations: Vec<Expectation>,
}

impl Restore {
    /// Checks the configuration.
    pub fn new(config: RestoreConfig) -> Result<Self, ConfigError> {
        let scheme = Scheme::of(&config.url).map_err(|m| ConfigError::field("url", m))?;
        if config.from.trim().is_empty() {
            return Err(ConfigError::field(
                "from",
                "name the backup to restore, e.g. `${steps.backup.path}`",
            ));
        }
        if config.jobs == Some(0) {
            return Err(ConfigError::field("jobs", "must be at least 1"));
        }
        if scheme == Scheme::Sqlite && (config.jobs.is_some() || config.maintenance_db.is_some()) {
            return Err(ConfigError::field(
                if config.jobs.is_some() {
                    "jobs"
                } else {
                    "maintenance_db"
                },
                "applies to PostgreSQL only",
            ));
        }
        let mut expectations = Vec::new();
        for (i, check) in config.checks.iter().enumerate() {
            if check.sql.trim().is_empty() {
                return Err(ConfigError::field(format!("checks[{i}].sql"), "is empty"));
            }
            expectations.push(
                Expectation::parse(&check.expect)
                    .map_err(|m| ConfigError::field(format!("checks[{i}].expect"), m))?,
            );
        }
        Ok(Restore {
            config,
            expectations,
        })
    }

    fn terminate_timeout(&self) -> Duration {
        self.config
            .terminate_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(5))
    }

    fn tools(&self, ctx: &StepContext) -> Result<PgTools, StepError> {
        Ok(PgTools::new(
            self.config
                .pg_bin_dir
                .as_deref()
                .map(|d| ctx.resolve(d))
                .transpose()?,
        ))
    }

    fn target(&self, ctx: &StepContext) -> Result<Target, StepError> {
        let url = ctx.resolve(&self.config.url)?;
        Target::parse(&url).map_err(|e| StepError::fatal(ctx.redact(&e)))
    }

    /// The safety backup: a `db.backup` of the live database, or the verified
    /// one already in the run (checked readable here and unchanged).
    async fn safety_backup(
        &self,
        ctx: &StepContext,
        database: &str,
    ) -> Result<BackupRef, StepError> {
        if self.config.safety_backup == SafetyBackup::SkipIfVerifiedBackupInRun {
            if let Some(found) = verified_backup_in_run(ctx, database)
                .and_then(|(step, out)| BackupRef::from_outputs(&step, &out))
            {
                ctx.progress(&format!(
                    "safety backup: using the verified backup of step `{}` ({})",
                    found.step, found.path
                ));
                found.check_here(ctx, "the safety backup").await?;
                return Ok(found);
            }
        }
        ctx.progress(&format!("safety backup of `{database}`"));
        let backup = Backup::new(BackupConfig {
            url: self.config.url.clone(),
            format: None,
            dir: self.config.safety_backup_dir.clone(),
            jobs: None,
            compress: None,
            pg_bin_dir: self.config.pg_bin_dir.clone(),
        })
        .map_err(|e| StepError::fatal(format!("safety backup: {e}")))?;
        let out = backup.take(ctx).await.map_err(|e| {
            StepError::fatal(format!(
                "the safety backup of `{database}` failed, so nothing was restored: {}",
                e.message()
            ))
        })?;
        BackupRef::from_outputs(ctx.step_id(), &out)
            .ok_or_else(|| StepError::fatal("the safety backup's outputs name no path"))
    }

    /// The backup to restore, when a step of this run took it: checked
    /// readable here and unchanged. A path no step of the run wrote is
    /// only checked to exist.
    async fn source_backup(
        &self,
        ctx: &StepContext,
        from: &str,
    ) -> Result<Option<BackupRef>, StepError> {
        match BackupRef::taken_in_run(ctx, from) {
            Some(taken) => {
                taken.check_here(ctx, "the backup to restore").await?;
                Ok(Some(taken))
            }
            None if crate::backup::exists(std::path::Path::new(from)).await => Ok(None),
            None => Err(StepError::fatal(
                ctx.redact(&format!("backup {from} does not exist: check `from`")),
            )),
        }
    }
}

/// Quotes an SQL identifier: `"` doubled, the whole in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `base` + `suffix`, cut to PostgreSQL's 63-byte identifier limit by
/// shortening `base` (at a character boundary), so the suffix always survives.
pub fn fit_name(base: &str, suffix: &str) -> String {
    let room = MAX_IDENTIFIER.saturating_sub(suffix.len());
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

#[async_trait]
impl Step for Restore {
    fn describe(&self) -> String {
        format!(
            "restore {} into a temporary database, verify it, swap it into place",
            self.config.from
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "database",
            "previous",
            "restored_from",
            "tables",
            "checks",
            "safety_backup",
            "sessions_ended",
            "swap_ms",
            "engine",
        ])
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let from = ctx.resolve(&self.config.from)?;
        match self.target(ctx)? {
            Target::Postgres(pg) => {
                let n = Names::new(ctx, pg.database());
                let mut changes = Vec::new();
                match (
                    self.config.safety_backup,
                    verified_backup_in_run(ctx, &n.live),
                ) {
                    (SafetyBackup::SkipIfVerifiedBackupInRun, Some((step, _))) => changes.push(
                        format!("safety backup: the verified backup of step `{step}`"),
                    ),
                    _ => changes.push(format!("pg_dump `{}` as a safety backup", n.live)),
                }
                changes.push(format!(
                    "create database `{}` and pg_restore -j {} {from} into it",
                    n.temp,
                    self.config.jobs.unwrap_or(2)
                ));
                changes.push(format!(
                    "check: at least {} table(s){}",
                    self.config.min_tables.unwrap_or(1),
                    self.config
                        .checks
                        .iter()
                        .map(|c| format!("; {} {}", c.name.as_deref().unwrap_or(&c.sql), c.expect))
                        .collect::<String>()
                ));
                changes.push(format!(
                    "block connections to `{}`, end its sessions, rename it to `{}`, rename `{}` to `{}`",
                    n.live, n.before, n.temp, n.live
                ));
                Ok(Preview::new(
                    format!("restore `{}` from {from} and swap", n.live),
                    changes,
                ))
            }
            Target::Sqlite(live) => {
                let before = sqlite_sibling(&live, &format!("before-{}", ctx.run_id()));
                Ok(Preview::new(
                    format!("restore {} from {from}", live.display()),
                    vec![
                        format!("copy {from} next to {} and check it", live.display()),
                        format!(
                            "keep the live file as {} and rename the copy over it",
                            before.display()
                        ),
                    ],
                ))
            }
        }
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        match self.target(ctx)? {
            Target::Postgres(pg) => self.run_postgres(ctx, &pg).await,
            Target::Sqlite(live) => self.run_sqlite(ctx, &live).await,
        }
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        match self.target(ctx)? {
            Target::Postgres(pg) => self.undo_postgres(ctx, &pg, outputs).await,
            Target::Sqlite(live) => undo_sqlite(ctx, &live).await,
        }
    }
}

/// An SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn names_fit_the_identifier_limit_and_keep_the_suffix() {
        let long = "é".repeat(40); // 80 bytes
        let name = fit_name(&long, "_before_20261121-134000-ab12");
        assert!(name.len() <= 63);
        assert!(name.ends_with("_before_20261121-134000-ab12"));
        assert_eq!(fit_name("orders", "_x"), "orders_x");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"a"b; DROP"#), r#""a""b; DROP""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn config_is_checked() {
        let cfg = |v: Value| serde_json::from_value::<RestoreConfig>(v).unwrap();
        assert!(Restore::new(cfg(json!({"url": "postgres://a/b", "from": ""}))).is_err());
        assert!(Restore::new(cfg(json!({"url": "postgres://a/b", "from": "x", "checks": [{"sql": "select 1", "expect": "one"}]}))).is_err());
        assert!(
            Restore::new(cfg(json!({"url": "sqlite://a.db", "from": "x", "jobs": 2}))).is_err()
        );
        assert!(Restore::new(cfg(
            json!({"url": "postgres://a/b", "from": "x", "safety_backup": "always"})
        ))
        .is_ok());
    }
}
