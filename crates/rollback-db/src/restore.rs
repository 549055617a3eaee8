//! `db.restore`: restores a backup into a temporary database, verifies it, and
//! swaps it into place; `undo` swaps back.
//!
//! PostgreSQL, in order:
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
//! The verified temporary database carries a comment naming the run and step,
//! so a re-run after a crash finds where it stopped: a verified copy is swapped
//! without restoring again, a finished swap is reported as done.
//!
//! SQLite: the backup file is copied next to the live file, checked with
//! `PRAGMA integrity_check`, the table count and `checks`, then the live file
//! is hard-linked to `<file>.before-<run>` and the copy renamed over it
//! (`rename(2)` is atomic: the live path always names a complete database).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use crate::backup::{
    self, conninfo_dbname, exists, remove_path, run_tool, sqlite_connect, sqlite_integrity,
    verified_backup_in_run, Backup, BackupConfig, PgTarget, PgTools, Scheme, Target,
};

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

/// Comparison of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed `expect`.
#[derive(Debug, Clone)]
pub(crate) struct Expectation {
    op: Op,
    value: String,
}

impl Expectation {
    pub(crate) fn parse(text: &str) -> Result<Expectation, String> {
        let t = text.trim();
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            ("<>", Op::Ne),
            ("==", Op::Eq),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        for (sym, op) in ops {
            if let Some(rest) = t.strip_prefix(sym) {
                let value = rest.trim().trim_matches('\'').to_string();
                if value.is_empty() {
                    return Err(format!("`{text}` has no value after `{sym}`"));
                }
                if !matches!(op, Op::Eq | Op::Ne) && value.parse::<f64>().is_err() {
                    return Err(format!("`{sym}` compares numbers; `{value}` is not one"));
                }
                return Ok(Expectation { op, value });
            }
        }
        Err(format!(
            "`{text}` does not start with an operator: write e.g. `= 0`, `>= 1000`, `!= 'broken'`"
        ))
    }

    pub(crate) fn holds(&self, observed: Option<&str>) -> bool {
        let Some(observed) = observed else {
            return false;
        };
        if let (Ok(a), Ok(b)) = (observed.trim().parse::<f64>(), self.value.parse::<f64>()) {
            return match self.op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
            };
        }
        match self.op {
            Op::Eq => observed == self.value,
            Op::Ne => observed != self.value,
            _ => false,
        }
    }
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
    /// one already in the run. Returns the backup's path.
    async fn safety_backup(&self, ctx: &StepContext, database: &str) -> Result<String, StepError> {
        if self.config.safety_backup == SafetyBackup::SkipIfVerifiedBackupInRun {
            if let Some((step, out)) = verified_backup_in_run(ctx, database) {
                let path = out
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                ctx.progress(&format!(
                    "safety backup: using the verified backup of step `{step}` ({path})"
                ));
                return Ok(path);
            }
        }
        ctx.progress(&format!("safety backup of `{database}`"));
        let backup = Backup::new(BackupConfig {
            url: self.config.url.clone(),
            format: None,
            dir: None,
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
        Ok(out
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
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

/// The names one restore works with.
#[derive(Debug, Clone)]
struct Names {
    live: String,
    temp: String,
    before: String,
    marker: String,
}

impl Names {
    fn new(ctx: &StepContext, live: &str) -> Names {
        let run = ctx.run_id();
        Names {
            live: live.to_string(),
            temp: fit_name(live, &format!("_restore_{run}")),
            before: fit_name(live, &format!("_before_{run}")),
            marker: format!(
                "rollback db.restore run={run} step={} verified",
                ctx.step_id()
            ),
        }
    }
}

/// A database as seen in pg_database.
#[derive(Debug, Clone)]
struct DbState {
    allow_connections: bool,
    comment: Option<String>,
}

async fn db_state(conn: &mut PgConnection, name: &str) -> Result<Option<DbState>, StepError> {
    let row = sqlx::query(
        "SELECT datallowconn, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StepError::retryable("cannot read pg_database").with_source(e))?;
    Ok(row.map(|r| DbState {
        allow_connections: r.get(0),
        comment: r.get(1),
    }))
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute(sql).await.map(|_| ())
}

fn sql_err(what: String) -> impl FnOnce(sqlx::Error) -> StepError {
    move |e| StepError::fatal(what).with_source(e)
}

/// Ends every other session of `database` and waits until they are gone
/// (up to `timeout`). Returns how many were signalled.
///
/// All are signalled at once (`pg_terminate_backend(pid)` without a timeout):
/// the timeout form waits for each backend in turn in steps of 100 ms, which
/// made the swap take 100 ms per open session. PostgreSQL offers no event for
/// "this backend has exited", so the wait re-reads pg_stat_activity (a fresh
/// snapshot per autocommit query) every millisecond; terminated backends are
/// usually gone within a few.
pub(crate) async fn end_sessions(
    conn: &mut PgConnection,
    database: &str,
    role: Option<&str>,
    timeout: Duration,
) -> Result<u64, sqlx::Error> {
    let signalled: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND ($2::text IS NULL OR usename = $2)",
    )
    .bind(database)
    .bind(role)
    .fetch_one(&mut *conn)
    .await?;
    let deadline = Instant::now() + timeout;
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND ($2::text IS NULL OR usename = $2)",
        )
        .bind(database)
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(signalled as u64);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How a swap went.
struct SwapReport {
    ended: u64,
    attempts: u32,
    summary: String,
}

/// Renames `from → to` after `live → before` in one transaction, after
/// blocking new connections to `live` and ending its sessions; retried when a
/// session slipped in between. Returns the sessions ended.
async fn swap_in(
    conn: &mut PgConnection,
    live: &str,
    before: &str,
    incoming: &str,
    timeout: Duration,
) -> Result<SwapReport, sqlx::Error> {
    let started = Instant::now();
    exec(
        conn,
        &format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            quote_ident(live)
        ),
    )
    .await?;
    let blocked_ms = started.elapsed().as_millis() as u64;
    let mut ended = 0;
    let mut attempt = 0;
    let mut terminate_ms = 0;
    loop {
        attempt += 1;
        let t = Instant::now();
        ended += end_sessions(conn, live, None, timeout).await?;
        terminate_ms += t.elapsed().as_millis() as u64;
        let mut tx = conn.begin().await?;
        let renamed = async {
            tx.execute(
                format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(live),
                    quote_ident(before)
                )
                .as_str(),
            )
            .await?;
            tx.execute(
                format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(incoming),
                    quote_ident(live)
                )
                .as_str(),
            )
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match renamed {
            Ok(()) => {
                tx.commit().await?;
                let total_ms = started.elapsed().as_millis() as u64;
                return Ok(SwapReport {
                    ended,
                    attempts: attempt,
                    summary: format!(
                        "swap {total_ms} ms: block connections {blocked_ms} ms, end {ended} session(s) {terminate_ms} ms, \
                         rename {} ms, {attempt} attempt(s)",
                        total_ms - blocked_ms - terminate_ms
                    ),
                });
            }
            Err(e) => {
                let _ = tx.rollback().await;
                let in_use =
                    matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55006"));
                if !in_use || attempt >= 5 {
                    return Err(e);
                }
            }
        }
    }
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

impl Restore {
    async fn maintenance(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
    ) -> Result<PgConnection, StepError> {
        let db = match &self.config.maintenance_db {
            Some(d) => ctx.resolve(d)?,
            None => "postgres".to_string(),
        };
        pg.connect(Some(&db)).await
    }

    async fn run_postgres(&self, ctx: &StepContext, pg: &PgTarget) -> Result<Outputs, StepError> {
        let names = Names::new(ctx, pg.database());
        let from = ctx.resolve(&self.config.from)?;
        let mut admin = self.maintenance(ctx, pg).await?;
        let live = db_state(&mut admin, &names.live).await?;
        let before = db_state(&mut admin, &names.before).await?;
        let temp = db_state(&mut admin, &names.temp).await?;

        // Where an earlier attempt of this run stopped.
        if let (Some(live_state), Some(_)) = (&live, &before) {
            if live_state.comment.as_deref() == Some(names.marker.as_str()) {
                ctx.progress("already restored and swapped by an earlier attempt");
                let tables = count_tables(pg, &names.live).await?;
                return Ok(self.outputs(&names, &from, tables, json!([]), None, 0, 0));
            }
            return Err(StepError::fatal(format!(
                "both `{}` and `{}` exist but `{}` was not restored by this step: \
                 rename or drop `{}` by hand after checking which one is current",
                names.live, names.before, names.live, names.before
            )));
        }
        let Some(live_state) = live else {
            return Err(StepError::fatal(format!(
                "database `{}` does not exist on {}: check the `url`{}",
                names.live,
                pg.server().unwrap_or_default(),
                if before.is_some() {
                    format!(
                        " (`{}` holds the database kept by an earlier swap)",
                        names.before
                    )
                } else {
                    String::new()
                }
            )));
        };
        let prev_allow = if live_state.allow_connections {
            true
        } else {
            // ALLOW_CONNECTIONS false on live with a verified copy waiting: a
            // crash mid-swap. The database was accepting connections before.
            temp.as_ref()
                .map(|t| t.comment.as_deref() == Some(names.marker.as_str()))
                .unwrap_or(false)
        };

        let safety = self.safety_backup(ctx, &names.live).await?;

        let ready = matches!(&temp, Some(t) if t.comment.as_deref() == Some(names.marker.as_str()));
        let (tables, checks) = if ready {
            ctx.progress(&format!(
                "`{}` was restored and verified by an earlier attempt",
                names.temp
            ));
            (count_tables(pg, &names.temp).await?, json!([]))
        } else {
            if temp.is_some() {
                drop_database(&mut admin, &names.temp).await?;
            }
            match self
                .restore_and_verify(ctx, pg, &mut admin, &names, &from)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    // Nothing of the live database was touched; leave nothing behind.
                    if let Err(cleanup) = drop_database(&mut admin, &names.temp).await {
                        return Err(StepError::fatal(format!(
                            "{} (the live database `{}` is untouched; the temporary database `{}` could not be dropped: {}; drop it with DROP DATABASE {} WITH (FORCE))",
                            e.message(), names.live, names.temp, cleanup.full_message(), quote_ident(&names.temp)
                        )));
                    }
                    return Err(StepError::fatal(format!(
                        "{} (the live database `{}` is untouched; the temporary database was dropped)",
                        e.message(),
                        names.live
                    ))
                    .with_detail(e.detail().unwrap_or_default().to_string()));
                }
            }
        };

        // The swap.
        ctx.progress(&format!("swapping `{}` into place", names.temp));
        let started = Instant::now();
        let swapped = swap_in(
            &mut admin,
            &names.live,
            &names.before,
            &names.temp,
            self.terminate_timeout(),
        )
        .await;
        let swap_ms = started.elapsed().as_millis() as u64;
        match swapped {
            Ok(report) => {
                ctx.progress(&report.summary);
                let ended = report.ended;
                let _ = report.attempts;
                // The kept database gets back the connection setting it had.
                let _ = exec(
                    &mut admin,
                    &format!(
                        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {prev_allow}",
                        quote_ident(&names.before)
                    ),
                )
                .await;
                let _ = admin.close().await;
                Ok(self.outputs(&names, &from, tables, checks, Some(safety), ended, swap_ms))
            }
            Err(e) => {
                let repaired = async {
                    exec(
                        &mut admin,
                        &format!(
                            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {prev_allow}",
                            quote_ident(&names.live)
                        ),
                    )
                    .await
                    .map_err(|e| StepError::fatal(e.to_string()))?;
                    drop_database(&mut admin, &names.temp).await
                }
                .await;
                match repaired {
                    Ok(()) => Err(StepError::fatal(format!(
                        "the swap failed and was rolled back: `{}` is unchanged and accepts connections again, the restored copy was dropped: {e}",
                        names.live
                    ))),
                    Err(r) => Err(StepError::fatal(format!(
                        "the swap failed ({e}) and the repair failed too ({}): `{}` is the original database but may refuse connections, `{}` holds the verified restored copy. \
                         To go back: ALTER DATABASE {} WITH ALLOW_CONNECTIONS true; to finish instead: run this step again",
                        r.full_message(), names.live, names.temp, quote_ident(&names.live)
                    ))),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn outputs(
        &self,
        names: &Names,
        from: &str,
        tables: u64,
        checks: Value,
        safety: Option<String>,
        ended: u64,
        swap_ms: u64,
    ) -> Outputs {
        let mut out = Outputs::new();
        out.insert("database".into(), json!(names.live));
        out.insert("previous".into(), json!(names.before));
        out.insert("restored_from".into(), json!(from));
        out.insert("tables".into(), json!(tables));
        out.insert("checks".into(), checks);
        out.insert("safety_backup".into(), json!(safety));
        out.insert("sessions_ended".into(), json!(ended));
        out.insert("swap_ms".into(), json!(swap_ms));
        out.insert("engine".into(), json!("postgres"));
        out
    }

    /// Creates the temporary database, restores into it and verifies it;
    /// marks it verified. Returns the table count and the checks' results.
    async fn restore_and_verify(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        admin: &mut PgConnection,
        names: &Names,
        from: &str,
    ) -> Result<(u64, Value), StepError> {
        if !exists(Path::new(from)).await {
            return Err(StepError::fatal(format!("backup {from} does not exist")));
        }
        let settings = sqlx::query(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype \
             FROM pg_database WHERE datname = $1",
        )
        .bind(&names.live)
        .fetch_one(&mut *admin)
        .await
        .map_err(sql_err(format!(
            "cannot read the settings of `{}`",
            names.live
        )))?;
        let (owner, encoding, collate, ctype): (String, String, String, String) = (
            settings.get(0),
            settings.get(1),
            settings.get(2),
            settings.get(3),
        );
        let create = format!(
            "CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&names.temp),
            quote_ident(&owner),
            quote_literal(&encoding),
            quote_literal(&collate),
            quote_literal(&ctype)
        );
        exec(admin, &create).await.map_err(sql_err(format!(
            "cannot create the temporary database `{}`",
            names.temp
        )))?;

        let jobs = self.config.jobs.unwrap_or(2);
        ctx.progress(&format!("pg_restore -j {jobs} into `{}`", names.temp));
        let tools = self.tools(ctx)?;
        run_tool(
            ctx,
            &tools.program("pg_restore"),
            &[
                format!("--jobs={jobs}"),
                "--exit-on-error".into(),
                "--dbname".into(),
                conninfo_dbname(&names.temp),
                from.to_string(),
            ],
            &pg.child_env(Some(&names.temp)),
        )
        .await
        .map_err(|e| {
            StepError::fatal(format!("restoring {from} failed: {}", e.message()))
                .with_detail(e.detail().unwrap_or_default().to_string())
        })?;

        let mut conn = pg.connect(Some(&names.temp)).await?;
        let tables = tables_in(&mut conn).await?;
        let min = self.config.min_tables.unwrap_or(1);
        if tables < min {
            let _ = conn.close().await;
            return Err(StepError::fatal(format!(
                "the restored copy holds {tables} table(s), fewer than {min}: is {from} the right backup?"
            )));
        }
        let mut results = Vec::new();
        for (check, expectation) in self.config.checks.iter().zip(&self.expectations) {
            let name = check.name.clone().unwrap_or_else(|| check.sql.clone());
            let observed = scalar_text(&mut conn, &check.sql).await.map_err(|e| {
                StepError::fatal(format!(
                    "check `{name}` could not run on the restored copy: {e}"
                ))
            })?;
            let passed = expectation.holds(observed.as_deref());
            results.push(json!({"name": name, "observed": observed, "expect": check.expect, "passed": passed}));
            if !passed {
                let _ = conn.close().await;
                return Err(StepError::fatal(format!(
                    "check `{name}` failed on the restored copy: got {}, expected {}",
                    observed.as_deref().unwrap_or("no value"),
                    check.expect
                )));
            }
        }
        let _ = conn.close().await;
        exec(
            admin,
            &format!(
                "COMMENT ON DATABASE {} IS {}",
                quote_ident(&names.temp),
                quote_literal(&names.marker)
            ),
        )
        .await
        .map_err(sql_err(format!("cannot mark `{}` as verified", names.temp)))?;
        Ok((tables, Value::Array(results)))
    }

    async fn undo_postgres(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        outputs: &Outputs,
    ) -> Result<(), StepError> {
        let names = Names::new(ctx, pg.database());
        let before_name = outputs
            .get("previous")
            .and_then(Value::as_str)
            .unwrap_or(&names.before)
            .to_string();
        let mut admin = self.maintenance(ctx, pg).await?;
        let live = db_state(&mut admin, &names.live).await?;
        let before = db_state(&mut admin, &before_name).await?;
        let temp = db_state(&mut admin, &names.temp).await?;
        match (&live, &before) {
            (Some(l), Some(b)) if l.comment.as_deref() == Some(names.marker.as_str()) => {
                if temp.is_some() {
                    return Err(StepError::fatal(format!(
                        "cannot swap back: `{}` exists; drop or rename it first",
                        names.temp
                    )));
                }
                ctx.progress(&format!("swapping `{before_name}` back into place"));
                let prev_allow = b.allow_connections;
                exec(
                    &mut admin,
                    &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(&before_name)),
                )
                .await
                .map_err(sql_err(format!("cannot allow connections to `{before_name}`")))?;
                // The restored database is kept as the temporary name.
                if let Err(e) = swap_in(
                    &mut admin,
                    &names.live,
                    &names.temp,
                    &before_name,
                    self.terminate_timeout(),
                )
                .await
                {
                    let _ = exec(
                        &mut admin,
                        &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(&names.live)),
                    )
                    .await;
                    let _ = exec(
                        &mut admin,
                        &format!(
                            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {prev_allow}",
                            quote_ident(&before_name)
                        ),
                    )
                    .await;
                    return Err(StepError::fatal(format!(
                        "swapping back failed and was rolled back (`{}` is still the restored copy): {e}",
                        names.live
                    )));
                }
                let _ = exec(
                    &mut admin,
                    &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", quote_ident(&names.temp)),
                )
                .await;
                let _ = admin.close().await;
                Ok(())
            }
            (Some(l), None) if l.comment.as_deref() != Some(names.marker.as_str()) => {
                // Already swapped back (or never swapped): nothing to do.
                Ok(())
            }
            _ => Err(StepError::fatal(format!(
                "cannot swap back: expected `{}` (restored) and `{before_name}` (kept); found {} and {}",
                names.live,
                if live.is_some() { "the first" } else { "no first" },
                if before.is_some() { "the second" } else { "no second" },
            ))),
        }
    }

    async fn run_sqlite(&self, ctx: &StepContext, live: &Path) -> Result<Outputs, StepError> {
        let from = PathBuf::from(ctx.resolve(&self.config.from)?);
        let before = sqlite_sibling(live, &format!("before-{}", ctx.run_id()));
        let temp = sqlite_sibling(live, &format!("restore-{}", ctx.run_id()));
        let live_name = live.to_string_lossy().into_owned();
        let mut out = Outputs::new();
        out.insert("database".into(), json!(live_name));
        out.insert("previous".into(), json!(before.to_string_lossy()));
        out.insert("restored_from".into(), json!(from.to_string_lossy()));
        out.insert("engine".into(), json!("sqlite"));
        out.insert("sessions_ended".into(), json!(0));
        if exists(&before).await && !exists(&temp).await && exists(live).await {
            ctx.progress("already restored by an earlier attempt");
            out.insert("tables".into(), json!(sqlite_integrity(live).await?));
            out.insert("checks".into(), json!([]));
            out.insert("safety_backup".into(), Value::Null);
            out.insert("swap_ms".into(), json!(0));
            return Ok(out);
        }
        if !exists(live).await {
            return Err(StepError::fatal(format!(
                "SQLite database {} does not exist: check the `url`",
                live.display()
            )));
        }
        let safety = self.safety_backup(ctx, &live_name).await?;
        let verified = async {
            remove_path(&temp).await?;
            tokio::fs::copy(&from, &temp).await.map_err(|e| {
                StepError::fatal(format!("cannot copy backup {}", from.display())).with_source(e)
            })?;
            let tables = sqlite_integrity(&temp).await?;
            let min = self.config.min_tables.unwrap_or(1);
            if tables < min {
                return Err(StepError::fatal(format!(
                    "the restored copy holds {tables} table(s), fewer than {min}"
                )));
            }
            let mut conn = sqlite_connect(&temp, true).await?;
            let mut results = Vec::new();
            for (check, expectation) in self.config.checks.iter().zip(&self.expectations) {
                let name = check.name.clone().unwrap_or_else(|| check.sql.clone());
                let row = sqlx::query(&check.sql)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| StepError::fatal(format!("check `{name}` could not run: {e}")))?;
                let observed = row.and_then(|r| sqlite_text(&r));
                let passed = expectation.holds(observed.as_deref());
                results.push(json!({"name": name, "observed": observed, "expect": check.expect, "passed": passed}));
                if !passed {
                    return Err(StepError::fatal(format!(
                        "check `{name}` failed on the restored copy: got {}, expected {}",
                        observed.as_deref().unwrap_or("no value"),
                        check.expect
                    )));
                }
            }
            let _ = conn.close().await;
            Ok((tables, results))
        }
        .await;
        let (tables, results) = match verified {
            Ok(v) => v,
            Err(e) => {
                let _ = remove_path(&temp).await;
                return Err(StepError::fatal(format!(
                    "{} ({} is untouched)",
                    e.message(),
                    live.display()
                )));
            }
        };
        // Fold the live file's write-ahead log into it, so the kept copy is whole.
        if let Ok(mut conn) = sqlite_connect(live, false).await {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
        // A log the checkpoint could not empty belongs to connections still
        // using the live file: after the swap it would sit beside the
        // restored file, and SQLite would replay it into that file.
        let mut wal = live.as_os_str().to_os_string();
        wal.push("-wal");
        if let Ok(meta) = tokio::fs::metadata(&wal).await {
            if meta.len() > 0 {
                let _ = remove_path(&temp).await;
                return Err(StepError::fatal(format!(
                    "{} is in use: its write-ahead log ({} bytes) could not be checkpointed, so the restored copy \
                     cannot replace it safely ({} is untouched); stop the application first (seed 003: stop \
                     the app, then restore), e.g. with a compose.stop step before this one",
                    live.display(),
                    meta.len(),
                    live.display()
                )));
            }
        }
        let started = Instant::now();
        remove_path(&before).await?;
        tokio::fs::hard_link(live, &before).await.map_err(|e| {
            StepError::fatal(format!(
                "cannot keep {} as {}",
                live.display(),
                before.display()
            ))
            .with_source(e)
        })?;
        if let Err(e) = tokio::fs::rename(&temp, live).await {
            let _ = tokio::fs::remove_file(&before).await;
            let _ = remove_path(&temp).await;
            return Err(StepError::fatal(format!(
                "cannot rename the restored copy over {} ({} is untouched)",
                live.display(),
                live.display()
            ))
            .with_source(e));
        }
        backup::sync_parent(live).await;
        out.insert("tables".into(), json!(tables));
        out.insert("checks".into(), Value::Array(results));
        out.insert("safety_backup".into(), json!(safety));
        out.insert(
            "swap_ms".into(),
            json!(started.elapsed().as_millis() as u64),
        );
        Ok(out)
    }
}

async fn undo_sqlite(ctx: &StepContext, live: &Path) -> Result<(), StepError> {
    let before = sqlite_sibling(live, &format!("before-{}", ctx.run_id()));
    let restored = sqlite_sibling(live, &format!("restored-{}", ctx.run_id()));
    if !exists(&before).await {
        if exists(&restored).await {
            return Ok(()); // already swapped back
        }
        return Err(StepError::fatal(format!(
            "cannot swap back: the kept file {} is gone",
            before.display()
        )));
    }
    remove_path(&restored).await?;
    if exists(live).await {
        tokio::fs::hard_link(live, &restored).await.map_err(|e| {
            StepError::fatal(format!(
                "cannot keep the restored file as {}",
                restored.display()
            ))
            .with_source(e)
        })?;
    }
    tokio::fs::rename(&before, live).await.map_err(|e| {
        StepError::fatal(format!(
            "cannot rename {} back over {}",
            before.display(),
            live.display()
        ))
        .with_source(e)
    })?;
    backup::sync_parent(live).await;
    Ok(())
}

/// `<file>.<suffix>` next to `live`.
fn sqlite_sibling(live: &Path, suffix: &str) -> PathBuf {
    let mut name = live.as_os_str().to_os_string();
    name.push(format!(".{suffix}"));
    PathBuf::from(name)
}

fn sqlite_text(row: &sqlx::sqlite::SqliteRow) -> Option<String> {
    if let Ok(v) = row.try_get::<Option<i64>, _>(0) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(0) {
        return v.map(|v| v.to_string());
    }
    row.try_get::<Option<String>, _>(0).ok().flatten()
}

/// An SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), StepError> {
    exec(
        admin,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
    )
    .await
    .map_err(sql_err(format!("cannot drop `{name}`")))
}

async fn tables_in(conn: &mut PgConnection) -> Result<u64, StepError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| StepError::fatal("cannot count the restored tables").with_source(e))?;
    Ok(n as u64)
}

async fn count_tables(pg: &PgTarget, database: &str) -> Result<u64, StepError> {
    let mut conn = pg.connect(Some(database)).await?;
    let n = tables_in(&mut conn).await;
    let _ = conn.close().await;
    n
}

/// The first column of the first row as text (the simple query protocol
/// returns every type in its text form), `None` for NULL or no row.
pub(crate) async fn scalar_text(
    conn: &mut PgConnection,
    sql: &str,
) -> Result<Option<String>, sqlx::Error> {
    use sqlx::ValueRef;
    // A &str executes unprepared: text results.
    let rows = conn.fetch_all(sql).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if row.is_empty() || row.try_get_raw(0)?.is_null() {
        return Ok(None);
    }
    Ok(Some(row.try_get_unchecked::<String, _>(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_compare_numbers_and_text() {
        let e = Expectation::parse("= 0").unwrap();
        assert!(e.holds(Some("0")));
        assert!(!e.holds(Some("3")));
        assert!(!e.holds(None));
        assert!(Expectation::parse(">= 1000").unwrap().holds(Some("1500")));
        assert!(Expectation::parse("!= 'broken'")
            .unwrap()
            .holds(Some("fine")));
        assert!(Expectation::parse("> abc").is_err());
        assert!(Expectation::parse("0").is_err());
    }

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
