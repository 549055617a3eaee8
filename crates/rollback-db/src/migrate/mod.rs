//! `db.migrate_down`: revert applied migrations with their `.down.sql` files,
//! to a target version or by a number of steps, on PostgreSQL or SQLite,
//! whichever of the three common ledgers the database keeps (see [`ledger`]).
//!
//! - "To version V" means V stays applied and every applied version after it
//!   is reverted, newest first. `to_version: 0` reverts everything.
//! - Each down migration and its ledger change run in one transaction (a file
//!   starting with `-- no-transaction` runs outside one, as sqlx does).
//! - A version that is not applied is skipped, so running the step again is
//!   a no-op.
//! - Before reverting anything it checks every down file for `DROP TABLE` and
//!   `ALTER TABLE … DROP COLUMN` on tables and columns that hold rows; it stops
//!   unless `allow_data_loss: true` or a verified backup of the same database
//!   was taken earlier in the run (a `db.backup` step's outputs with
//!   `verified: true` and the same `database`).
//! - `undo` applies the reverted versions' `.up.sql` files again and records
//!   them in the ledger as the tool would.

pub mod drift;
pub mod files;
pub mod guard;
pub mod intent;
pub mod ledger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::connect::{self, Backend, Db, DbUrl, DEFAULT_CONNECT_TIMEOUT};
use files::{MigrationFiles, Version};
use intent::MigrateIntent;
use ledger::{Ledger, LedgerChange, LedgerChoice, LedgerState};

/// Configuration of the `db.migrate_down` step.
///
/// Reverts applied migrations with their `.down.sql` files. With
/// `to_version: V`, V stays applied and every applied version after it is
/// reverted (newest first); with `steps: N`, the N most recently applied
/// migrations are reverted. Give exactly one of the two.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateDownConfig {
    /// The database: `postgres://user:password@host:5432/name` or
    /// `sqlite:///path/app.db` (or a plain SQLite file path). Use
    /// `${env:DATABASE_URL}` so the password stays out of the plan.
    pub url: String,
    /// The migrations directory holding `<VERSION>_<name>.down.sql` (and
    /// `.up.sql`) files; relative paths are taken from the directory rollback
    /// runs in.
    pub migrations: String,
    /// The version to go back to: it stays applied, and every applied version
    /// after it is reverted. `0` reverts everything.
    #[serde(default)]
    pub to_version: Option<String>,
    /// How many of the most recently applied migrations to revert (instead of
    /// `to_version`).
    #[serde(default)]
    pub steps: Option<u32>,
    /// Which ledger the database keeps: `auto` (default: detect it), `rails`
    /// (`schema_migrations(version)`), `golang_migrate`
    /// (`schema_migrations(version, dirty)`) or `sqlx` (`_sqlx_migrations`).
    #[serde(default)]
    pub ledger: LedgerChoice,
    /// Revert even when a down migration drops tables or columns that hold
    /// rows and no verified backup was taken earlier in the run.
    #[serde(default)]
    pub allow_data_loss: bool,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone)]
enum Target {
    Version(String),
    Steps(u32),
}

/// The `db.migrate_down` step.
#[derive(Debug)]
pub struct MigrateDown {
    url: String,
    migrations: String,
    target: Target,
    ledger: LedgerChoice,
    allow_data_loss: bool,
    connect_timeout: Duration,
}

const OUTPUTS: &[&str] = &[
    "ledger",
    "reverted",
    "version_before",
    "version_after",
    "database",
];

impl MigrateDown {
    /// Checks the configuration.
    pub fn new(config: MigrateDownConfig) -> Result<Self, ConfigError> {
        let target = match (config.to_version, config.steps) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "give either `to_version` or `steps`, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "say how far to go back: `to_version: V` (V stays applied, later versions are reverted) or \
                     `steps: N`",
                ))
            }
            (Some(v), None) => {
                if !v.contains("${") && Version::parse(&v).is_none() {
                    return Err(ConfigError::field(
                        "to_version",
                        format!("`{v}` is not a migration version (digits, e.g. 20250115120000)"),
                    ));
                }
                Target::Version(v)
            }
            (None, Some(0)) => {
                return Err(ConfigError::field(
                    "steps",
                    "must be at least 1 (leave the step out to revert nothing)",
                ))
            }
            (None, Some(n)) => Target::Steps(n),
        };
        if config.migrations.trim().is_empty() {
            return Err(ConfigError::field(
                "migrations",
                "give the directory holding the .down.sql files",
            ));
        }
        Ok(MigrateDown {
            url: config.url,
            migrations: config.migrations,
            target,
            ledger: config.ledger,
            allow_data_loss: config.allow_data_loss,
            connect_timeout: config
                .connect_timeout
                .map(HumanDuration::get)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }

    fn target_text(&self) -> String {
        match &self.target {
            Target::Version(v) => {
                format!("to version {v} (it stays applied; later versions are reverted)")
            }
            Target::Steps(1) => "the last applied migration".to_string(),
            Target::Steps(n) => format!("the last {n} applied migrations"),
        }
    }

    async fn open(&self, ctx: &StepContext, read_only: bool) -> Result<Opened, StepError> {
        let (mut db, url) = connect::connect(ctx, &self.url, self.connect_timeout).await?;
        if read_only {
            db.set_read_only().await?;
        }
        let dir = PathBuf::from(ctx.resolve(&self.migrations)?);
        let files = files::read_dir(&dir).map_err(|m| StepError::fatal(ctx.redact(&m)))?;
        let ledger = ledger::detect(&mut db, self.ledger).await?;
        let state = ledger::read(&mut db, ledger, &files).await?;
        Ok(Opened {
            db,
            url,
            dir,
            files,
            state,
        })
    }

    /// Which versions to revert, newest first, with their SQL. Refuses,
    /// before anything changes, when the folder and the ledger disagree
    /// (see [`drift`]).
    fn plan(&self, ctx: &StepContext, o: &Opened) -> Result<Vec<Revert>, StepError> {
        let target = match &self.target {
            Target::Steps(_) => None,
            Target::Version(v) => {
                let text = ctx.resolve(v)?;
                Some(Version::parse(&text).ok_or_else(|| {
                    StepError::fatal(format!(
                        "to_version `{text}` is not a migration version (digits)"
                    ))
                })?)
            }
        };
        drift::check_positions(&o.dir, &o.files, &o.state, target.as_ref())?;
        self.plan_to(o, target)
    }

    /// Which versions to revert to reach `target` (or, without one, the
    /// configured number of steps), once the folder and ledger are checked.
    fn plan_to(&self, o: &Opened, target: Option<Version>) -> Result<Vec<Revert>, StepError> {
        let applied_desc = o.state.applied.iter().rev();
        let chosen: Vec<&Version> = match (&target, &self.target) {
            (Some(target), _) => applied_desc.filter(|a| *a > target).collect(),
            (None, Target::Steps(n)) => applied_desc.take(*n as usize).collect(),
            (None, Target::Version(_)) => Vec::new(),
        };
        let mut out = Vec::new();
        for version in chosen {
            let (files, down) = drift::revertible(&o.dir, &o.files, &o.state, version)?;
            let sql = read_sql(down)?;
            let change = match o.state.ledger {
                Ledger::Rails => LedgerChange::RemoveRails(version.clone()),
                Ledger::Sqlx => LedgerChange::RemoveSqlx(version.clone()),
                Ledger::GolangMigrate => {
                    let previous = o.files.keys().rev().find(|v| *v < version).cloned();
                    LedgerChange::SetGolang(previous)
                }
            };
            out.push(Revert {
                version: version.clone(),
                name: files.name.clone(),
                transaction: !files::wants_no_transaction(&sql),
                sql,
                change,
            });
        }
        Ok(out)
    }

    /// Tables and columns with rows that the reverts would drop.
    async fn losses(db: &mut Db, reverts: &[Revert]) -> Result<Vec<String>, StepError> {
        let mut out = Vec::new();
        for r in reverts {
            for drop in guard::drops(&r.sql) {
                let schema = drop.schema.as_deref();
                if !db.table_exists(schema, &drop.table).await? {
                    continue;
                }
                let rows = match &drop.column {
                    None => db.count_rows(schema, &drop.table, None).await?,
                    Some(column) => {
                        let columns = db.columns(schema, &drop.table).await?;
                        let Some(actual) = columns.iter().find(|c| {
                            *c == column
                                || (db.backend() == Backend::Sqlite
                                    && c.eq_ignore_ascii_case(column))
                        }) else {
                            continue;
                        };
                        db.count_rows(schema, &drop.table, Some(actual)).await?
                    }
                };
                if rows > 0 {
                    let what = if drop.column.is_some() {
                        format!("{drop} holding values in {rows} rows")
                    } else {
                        format!("{drop} holding {rows} rows")
                    };
                    out.push(format!("{} drops {what}", r.version));
                }
            }
        }
        Ok(out)
    }
}

/// A verified backup of `database` taken earlier in the run: the id of the
/// step whose outputs say `verified: true` for that database.
pub fn verified_backup_in_run(ctx: &StepContext, url: &DbUrl) -> Option<String> {
    let wanted = url.database();
    let canonical = url
        .sqlite_path()
        .and_then(|p| std::fs::canonicalize(p).ok());
    ctx.completed_outputs()
        .into_iter()
        .find_map(|(step, outputs)| {
            let verified = outputs.get("verified").and_then(Value::as_bool) == Some(true);
            let database = outputs.get("database").and_then(Value::as_str)?;
            let same = database == wanted
                || canonical
                    .as_ref()
                    .is_some_and(|c| std::fs::canonicalize(database).ok().as_ref() == Some(c));
            (verified && same).then_some(step)
        })
}

fn read_sql(path: &Path) -> Result<String, StepError> {
    std::fs::read_to_string(path).map_err(|e| {
        StepError::fatal(format!("cannot read {}: {e}", path.display())).with_source(e)
    })
}

struct Opened {
    db: Db,
    url: DbUrl,
    dir: PathBuf,
    files: BTreeMap<Version, MigrationFiles>,
    state: LedgerState,
}

struct Revert {
    version: Version,
    name: String,
    sql: String,
    transaction: bool,
    change: LedgerChange,
}

fn version_value(v: Option<&Version>) -> Value {
    v.map(|v| Value::String(v.to_string()))
        .unwrap_or(Value::Null)
}

/// Holds sqlx's migration lock on PostgreSQL while migrations run: another
/// runner of this step is refused, and sqlx's `Migrator::run` (an application
/// migrating at start-up) waits. sqlx-cli takes no lock, so it does neither.
async fn lock(db: &mut Db) -> Result<Option<i64>, StepError> {
    let Db::Postgres(c) = db else {
        return Ok(None);
    };
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *c)
        .await
        .map_err(|e| connect::query_error("reading the database name", e))?;
    let id = ledger::sqlx_lock_id(&name);
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(id)
        .fetch_one(&mut *c)
        .await
        .map_err(|e| connect::query_error("taking the migration lock", e))?;
    if !got {
        return Err(StepError::retryable(format!(
            "another migration holds the migration lock of database {name} (advisory lock {id}, the one sqlx \
             takes): wait for it to finish, then run again"
        )));
    }
    Ok(Some(id))
}

async fn unlock(db: &mut Db, id: Option<i64>) {
    if let (Db::Postgres(c), Some(id)) = (db, id) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(id)
            .execute(&mut *c)
            .await;
    }
}

#[async_trait]
impl Step for MigrateDown {
    fn describe(&self) -> String {
        format!(
            "revert migrations from {} {}",
            self.migrations,
            self.target_text()
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(OUTPUTS)
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let mut o = self.open(ctx, true).await?;
        let reverts = self.plan(ctx, &o)?;
        let mut changes: Vec<String> = reverts
            .iter()
            .map(|r| {
                format!(
                    "revert {} ({}){}, then remove it from the {} ledger:\n{}",
                    r.version,
                    r.name,
                    if r.transaction {
                        " in one transaction"
                    } else {
                        " without a transaction (-- no-transaction)"
                    },
                    o.state.ledger,
                    r.sql.trim_end()
                )
            })
            .collect();
        let losses = Self::losses(&mut o.db, &reverts).await?;
        if !losses.is_empty() {
            let backup = verified_backup_in_run(ctx, &o.url);
            let note = if self.allow_data_loss {
                "data loss allowed (allow_data_loss: true)".to_string()
            } else if let Some(step) = backup {
                format!("covered by the verified backup of step `{step}`")
            } else {
                "would stop unless a verified backup is taken earlier in the run or allow_data_loss: true"
                    .to_string()
            };
            changes.push(format!("data loss: {}; {note}", losses.join("; ")));
        }
        o.db.close().await;
        let summary = if reverts.is_empty() {
            format!(
                "nothing to revert: {} ledger at version {}",
                o.state.ledger,
                o.state
                    .current
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into())
            )
        } else {
            format!(
                "revert {} migration(s) {}: {}",
                reverts.len(),
                self.target_text(),
                reverts
                    .iter()
                    .map(|r| r.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok(Preview::new(
            ctx.redact(&summary),
            changes.iter().map(|c| ctx.redact(c)).collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let mut o = self.open(ctx, false).await?;
        let lock_id = lock(&mut o.db).await?;
        let result = self.run_locked(ctx, &mut o).await;
        unlock(&mut o.db, lock_id).await;
        o.db.close().await;
        result.map_err(|e| connect::redact_error(ctx, e))
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let reverted: Vec<Version> = outputs
            .get("reverted")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(Version::parse)
                    .collect()
            })
            .unwrap_or_default();
        if reverted.is_empty() {
            return Ok(());
        }
        let mut o = self.open(ctx, false).await?;
        let lock_id = lock(&mut o.db).await?;
        let result = reapply(ctx, &mut o, reverted).await;
        unlock(&mut o.db, lock_id).await;
        o.db.close().await;
        result.map_err(|e| connect::redact_error(ctx, e))
    }
}

impl MigrateDown {
    async fn run_locked(&self, ctx: &StepContext, o: &mut Opened) -> Result<Outputs, StepError> {
        // Read the ledger again under the lock: someone may have migrated
        // between opening and locking.
        o.state = ledger::read(&mut o.db, o.state.ledger, &o.files).await?;
        let (intent, reverts) = self.intent_and_reverts(ctx, o).await?;
        if !reverts.is_empty() && !self.allow_data_loss {
            let losses = Self::losses(&mut o.db, &reverts).await?;
            if !losses.is_empty() {
                match verified_backup_in_run(ctx, &o.url) {
                    Some(step) => ctx.progress(&format!(
                        "data loss covered by the verified backup of step `{step}`: {}",
                        losses.join("; ")
                    )),
                    None => {
                        return Err(StepError::fatal(format!(
                            "stopped before changing anything: {}. Take a backup first (a db.backup step of the \
                             same database that this step runs `after:`), or set `allow_data_loss: true` if \
                             that data may go",
                            losses.join("; ")
                        )))
                    }
                }
            }
        }
        if let Some(intent) = &intent {
            // Before the first change: a re-run goes to this same target.
            ctx.save_intent(intent).await?;
        }
        let mut done = Vec::new();
        for r in &reverts {
            if ctx.cancellation().is_cancelled() {
                return Err(StepError::interrupted(format!(
                    "interrupted after reverting {} of {} migrations ({}); run again to continue",
                    done.len(),
                    reverts.len(),
                    done.join(", ")
                )));
            }
            ctx.progress(&format!("reverting {} ({})", r.version, r.name));
            let started = Instant::now();
            ledger::apply(&mut o.db, &r.sql, &r.change, r.transaction, 0)
                .await
                .map_err(|e| {
                    let message = format!(
                        "reverting {} ({}) failed{}: {}",
                        r.version,
                        r.name,
                        if done.is_empty() {
                            String::new()
                        } else {
                            format!(" after {} were reverted", done.join(", "))
                        },
                        e.message()
                    );
                    if e.is_retryable() {
                        StepError::retryable(message)
                    } else {
                        StepError::fatal(message)
                    }
                })?;
            ctx.progress(&format!(
                "reverted {} in {}ms",
                r.version,
                started.elapsed().as_millis()
            ));
            done.push(r.version.to_string());
        }
        let after = ledger::read(&mut o.db, o.state.ledger, &o.files).await?;
        // Over every attempt: what undo applies again.
        let reverted = match &intent {
            Some(intent) => intent.reverted_in(&after),
            None => done,
        };
        let before = match &intent {
            Some(intent) => intent
                .from
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
            None => version_value(o.state.current.as_ref()),
        };
        let mut outputs = Outputs::new();
        outputs.insert("ledger".into(), Value::String(o.state.ledger.to_string()));
        outputs.insert(
            "reverted".into(),
            Value::Array(reverted.into_iter().map(Value::String).collect()),
        );
        outputs.insert("version_before".into(), before);
        outputs.insert(
            "version_after".into(),
            version_value(after.current.as_ref()),
        );
        outputs.insert("database".into(), Value::String(o.url.database()));
        Ok(outputs)
    }
}

impl MigrateDown {
    /// The intent of this run of the step and the reverts still to do. A
    /// re-run with the intent of an earlier attempt goes to its target; a
    /// first attempt plans from the ledger and returns a new intent (`None`
    /// when there is nothing to revert).
    async fn intent_and_reverts(
        &self,
        ctx: &StepContext,
        o: &Opened,
    ) -> Result<(Option<MigrateIntent>, Vec<Revert>), StepError> {
        let earlier = if ctx.is_rerun() {
            ctx.load_intent::<MigrateIntent>().await?
        } else {
            None
        };
        if let Some(earlier) = earlier {
            let target = earlier.target().ok_or_else(|| {
                StepError::fatal(format!(
                    "the intent of step `{}` names `{}`, which is not a version: resume with `--fresh {}` \
                     after checking the ledger",
                    ctx.step_id(),
                    earlier.to,
                    ctx.step_id()
                ))
            })?;
            ctx.progress(&format!(
                "an earlier attempt set out to go from {} to {}: continuing to {}",
                earlier.from.as_deref().unwrap_or("none"),
                earlier.to,
                earlier.to
            ));
            // The target is a version this step found applied: only the
            // ledger's current version is checked against the folder.
            drift::check_positions(&o.dir, &o.files, &o.state, None)?;
            let reverts = self.plan_to(o, Some(target))?;
            return Ok((Some(earlier), reverts));
        }
        let reverts = self.plan(ctx, o)?;
        if reverts.is_empty() {
            return Ok((None, reverts));
        }
        let chosen: Vec<&Version> = reverts.iter().map(|r| &r.version).collect();
        let intent = MigrateIntent {
            ledger: o.state.ledger.to_string(),
            from: o.state.current.as_ref().map(|v| v.to_string()),
            to: intent::target_after(o.state.applied.iter(), &chosen),
            reverts: chosen.iter().map(|v| v.to_string()).collect(),
        };
        Ok((Some(intent), reverts))
    }
}

/// Applies the up files of `versions` (oldest first) that are not applied.
async fn reapply(
    ctx: &StepContext,
    o: &mut Opened,
    mut versions: Vec<Version>,
) -> Result<(), StepError> {
    o.state = ledger::read(&mut o.db, o.state.ledger, &o.files).await?;
    versions.sort();
    for version in versions {
        if o.state.applied.contains(&version) {
            continue;
        }
        let files = o.files.get(&version).ok_or_else(|| {
            StepError::fatal(format!(
                "cannot re-apply {version}: {} has no files for it",
                o.dir.display()
            ))
        })?;
        let up = files.up.as_ref().ok_or_else(|| {
            StepError::fatal(format!(
                "cannot re-apply {version}: no {version}_{}.up.sql in {}",
                files.name,
                o.dir.display()
            ))
        })?;
        let sql = read_sql(up)?;
        let change = match o.state.ledger {
            Ledger::Rails => LedgerChange::InsertRails(version.clone()),
            Ledger::GolangMigrate => LedgerChange::SetGolang(Some(version.clone())),
            Ledger::Sqlx => LedgerChange::InsertSqlx {
                version: version.clone(),
                description: files.sqlx_description(),
                checksum: ledger::sqlx_checksum(&sql),
            },
        };
        ctx.progress(&format!("re-applying {version} ({})", files.name));
        // sqlx's execution_time is informational; the row is written in the
        // same transaction as the migration, before its time is known.
        ledger::apply(
            &mut o.db,
            &sql,
            &change,
            !files::wants_no_transaction(&sql),
            0,
        )
        .await
        .map_err(|e| {
            StepError::fatal(format!(
                "re-applying {version} ({}) failed: {}",
                files.name,
                e.message()
            ))
        })?;
        o.state = ledger::read(&mut o.db, o.state.ledger, &o.files).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(to_version: Option<&str>, steps: Option<u32>) -> MigrateDownConfig {
        MigrateDownConfig {
            url: "sqlite:app.db".into(),
            migrations: "migrations".into(),
            to_version: to_version.map(str::to_string),
            steps,
            ledger: LedgerChoice::Auto,
            allow_data_loss: false,
            connect_timeout: None,
        }
    }

    #[test]
    fn needs_exactly_one_target() {
        assert!(MigrateDown::new(config(None, None)).is_err());
        assert!(MigrateDown::new(config(Some("1"), Some(1))).is_err());
        assert_eq!(
            MigrateDown::new(config(Some("v2"), None))
                .unwrap_err()
                .field
                .as_deref(),
            Some("to_version")
        );
        assert_eq!(
            MigrateDown::new(config(None, Some(0)))
                .unwrap_err()
                .field
                .as_deref(),
            Some("steps")
        );
        let step = MigrateDown::new(config(Some("20250115120000"), None)).unwrap();
        assert!(
            step.describe().contains("it stays applied"),
            "{}",
            step.describe()
        );
        assert!(MigrateDown::new(config(Some("${var:target}"), None)).is_ok());
    }
}
