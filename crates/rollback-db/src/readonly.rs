//! `db.read_only`: the seeds' write stop, made to hold.
//!
//! `ALTER DATABASE … SET default_transaction_read_only = on` alone changes only
//! the default of *new* sessions, and any session can `SET` it back. So `on`
//! does this, in this order:
//! 1. refuses, changing nothing, when privileges cannot stop the role: it is
//!    or can become a superuser, is a member of `pg_write_all_data`, or owns
//!    (or is a member of the owner of) a table, sequence or schema of the
//!    listed schemas — an owner grants itself back whatever is revoked;
//! 2. in one transaction: sets the database default, and revokes the role's
//!    write privileges on the listed schemas (see [`privileges`]: table and
//!    column privileges, sequences), then checks with `has_*_privilege` that
//!    neither the role nor a role it is a member of can still write; if one
//!    can (PUBLIC, role membership, a grant by someone other than the owner),
//!    nothing is changed and the step fails naming where the write comes from;
//! 3. ends the role's sessions on the database (open transactions included);
//! 4. records exactly what it changed (the setting's previous value, each
//!    privilege revoked and whether it was grantable) in the journal store
//!    (before the commit, so every runner of a shared journal finds it: a
//!    re-run keeps the first attempt's record), in its outputs, and as a copy
//!    in `read_only-state.json` in the step's artifact folder (for
//!    `state_file:`); and reports what it does not stop (`not_stopped`:
//!    SECURITY DEFINER functions, default privileges for tables created
//!    later, CREATE).
//!
//! `off` (or undoing `on`) puts back exactly that: the previous setting (or
//! none) and each revoked privilege, nothing else.

pub mod privileges;

use std::path::PathBuf;

use std::time::Duration;

use async_trait::async_trait;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::backup::{PgTarget, Target};
use crate::restore::{quote_ident, quote_literal};

pub use privileges::{Object, RevokedPrivilege};

/// `on` or `off`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Stop writes.
    On,
    /// Put back what an `on` changed.
    Off,
}

/// Configuration of the `db.read_only` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadOnlyConfig {
    /// The database, as a role allowed to alter it, grant and revoke on its
    /// tables and end sessions (owner or superuser):
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`.
    pub url: String,
    /// `on` stops writes; `off` restores what an `on` changed.
    pub mode: Mode,
    /// `on`: the application role whose writes stop and whose sessions end.
    #[serde(default)]
    pub role: Option<String>,
    /// `on`: schemas whose tables the role stops writing (default `[public]`).
    #[serde(default)]
    pub schemas: Option<Vec<String>>,
    /// `on`: end the role's open sessions on the database (default true), so
    /// none keeps a transaction begun before the stop.
    #[serde(default)]
    pub terminate_sessions: Option<bool>,
    /// `off`: the id of the `on` step of this run whose changes to put back.
    #[serde(default)]
    pub restore_from_step: Option<String>,
    /// `off`: a state file written by an `on` step (`read_only-state.json` in
    /// its artifact folder), e.g. from an earlier run.
    #[serde(default)]
    pub state_file: Option<String>,
}

/// What `on` changed, so `off` can put back exactly that.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadOnlyState {
    /// The database.
    pub database: String,
    /// The application role.
    pub role: String,
    /// The database's `default_transaction_read_only` before (`None`: not set).
    pub setting_before: Option<String>,
    /// Privileges revoked from the role.
    pub revoked: Vec<RevokedPrivilege>,
    /// Sessions ended.
    pub sessions_ended: u64,
}

/// The `db.read_only` step.
#[derive(Debug)]
pub struct ReadOnly {
    config: ReadOnlyConfig,
}

impl ReadOnly {
    /// Checks the configuration.
    pub fn new(config: ReadOnlyConfig) -> Result<Self, ConfigError> {
        if !config.url.starts_with("${") && !config.url.starts_with("postgres") {
            return Err(ConfigError::field(
                "url",
                "read-only mode is for PostgreSQL (postgres://...); for SQLite stop the application instead",
            ));
        }
        match config.mode {
            Mode::On => {
                if config
                    .role
                    .as_deref()
                    .map(str::trim)
                    .unwrap_or("")
                    .is_empty()
                {
                    return Err(ConfigError::field(
                        "role",
                        "`on` needs the application role whose writes stop, e.g. `role: app`",
                    ));
                }
                if config.restore_from_step.is_some() || config.state_file.is_some() {
                    return Err(ConfigError::new(
                        "`restore_from_step` and `state_file` belong to `mode: off`",
                    ));
                }
                if matches!(&config.schemas, Some(s) if s.is_empty()) {
                    return Err(ConfigError::field("schemas", "list at least one schema"));
                }
            }
            Mode::Off => {
                if config.restore_from_step.is_some() == config.state_file.is_some() {
                    return Err(ConfigError::new(
                        "`mode: off` needs exactly one of `restore_from_step` (the `on` step's id) or `state_file`",
                    ));
                }
                if config.role.is_some() || config.schemas.is_some() {
                    return Err(ConfigError::new(
                        "`off` restores what `on` recorded; `role` and `schemas` belong to `mode: on`",
                    ));
                }
            }
        }
        Ok(ReadOnly { config })
    }

    fn target(&self, ctx: &StepContext) -> Result<PgTarget, StepError> {
        let url = ctx.resolve(&self.config.url)?;
        match Target::parse(&url).map_err(|e| StepError::fatal(ctx.redact(&e)))? {
            Target::Postgres(pg) => Ok(*pg),
            Target::Sqlite(_) => Err(StepError::fatal("read-only mode is for PostgreSQL")),
        }
    }

    fn schemas(&self) -> Vec<String> {
        self.config
            .schemas
            .clone()
            .unwrap_or_else(|| vec!["public".into()])
    }

    /// The state `off` restores.
    async fn recorded_state(&self, ctx: &StepContext) -> Result<ReadOnlyState, StepError> {
        if let Some(step) = &self.config.restore_from_step {
            let outputs = ctx.completed_outputs();
            let Some(out) = outputs.get(step) else {
                return Err(StepError::fatal(format!(
                    "step `{step}` has not completed in this run: `restore_from_step` must name the `on` step (add it to `after:`)"
                )));
            };
            return state_from_outputs(out);
        }
        let path = ctx.resolve(self.config.state_file.as_deref().unwrap_or_default())?;
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            StepError::fatal(format!("cannot read the read-only state file {path}")).with_source(e)
        })?;
        serde_json::from_str(&text).map_err(|e| {
            StepError::fatal(format!("{path} is not a read-only state file")).with_source(e)
        })
    }
}

fn state_from_outputs(out: &Outputs) -> Result<ReadOnlyState, StepError> {
    let value = out.get("state").cloned().unwrap_or(Value::Null);
    serde_json::from_value(value).map_err(|e| {
        StepError::fatal(
            "the `on` step's outputs hold no read-only state (is it a `db.read_only` `on` step?)",
        )
        .with_source(e)
    })
}

async fn current_setting(
    conn: &mut PgConnection,
    database: &str,
) -> Result<Option<String>, StepError> {
    let settings: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         WHERE d.datname = $1 AND s.setrole = 0",
    )
    .bind(database)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StepError::retryable("cannot read the database's settings").with_source(e))?;
    Ok(settings.unwrap_or_default().into_iter().find_map(|s| {
        s.strip_prefix("default_transaction_read_only=")
            .map(str::to_string)
    }))
}

/// The name of `on`'s record in the journal store (and of its copy in the
/// step's artifact folder).
const STATE_NAME: &str = "read_only-state.json";

/// Keeps the record of what `on` changed: in the journal store, which every
/// runner of the run reads, then a copy in the artifact folder.
async fn keep_state(
    ctx: &StepContext,
    path: &std::path::Path,
    state: &ReadOnlyState,
) -> Result<(), StepError> {
    let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    ctx.save_state(STATE_NAME, bytes).await?;
    write_state(path, state).await
}

/// The record an earlier attempt of this step kept: from the journal store,
/// else (a record written before the journal store kept it) from the
/// artifact folder of this runner.
async fn earlier_state(
    ctx: &StepContext,
    path: &std::path::Path,
) -> Result<Option<ReadOnlyState>, StepError> {
    if let Some(bytes) = ctx.load_state(STATE_NAME).await? {
        return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StepError::fatal(format!(
                "the record of what step `{}` revoked cannot be read ({e}): check the role's privileges, then \
                 resume with `--fresh {}`",
                ctx.step_id(),
                ctx.step_id()
            ))
        });
    }
    Ok(match tokio::fs::read_to_string(path).await {
        Ok(text) => serde_json::from_str(&text).ok(),
        Err(_) => None,
    })
}

/// Writes the record of what `on` changed, durably (written whole, then renamed).
async fn write_state(path: &std::path::Path, state: &ReadOnlyState) -> Result<(), StepError> {
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    let tmp = path.with_extension("json.tmp");
    let write = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    };
    write
        .await
        .map_err(|e| StepError::fatal(format!("cannot write {}", path.display())).with_source(e))
}

/// The refusal when the role could still write after losing its own grants.
fn other_paths_error(role: &str, paths: &[String], writable: &[String]) -> StepError {
    let found = if paths.is_empty() {
        format!(
            "{} (through a predefined role or a role attribute)",
            writable.join(", ")
        )
    } else {
        paths.join("; ")
    };
    StepError::fatal(format!(
        "role `{role}` could still write after losing its own grants, so nothing was changed: {found}. \
         Revoking those would take them from other roles too, so this step leaves them to you: for a role \
         `{role}` is a member of, add a db.read_only step with that `role:` before this one (its `off` gives \
         them back); for PUBLIC, REVOKE them FROM PUBLIC by hand and note them to grant back; for a grant by \
         another role, revoke it as that role (see \\dp)"
    ))
}

/// What previewing or running `on` learns before changing anything.
struct Survey {
    refusal: Option<String>,
    other_paths: Vec<String>,
    grants: Vec<RevokedPrivilege>,
    not_stopped: Vec<String>,
}

async fn survey(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Survey, StepError> {
    let read = async {
        Ok::<_, sqlx::Error>(Survey {
            refusal: privileges::unstoppable(conn, role, schemas).await?,
            other_paths: privileges::other_write_paths(conn, role, schemas).await?,
            grants: privileges::write_grants(conn, role, schemas).await?,
            not_stopped: privileges::not_stopped(conn, role, schemas).await?,
        })
    };
    read.await
        .map_err(|e| StepError::retryable("cannot read the role's privileges").with_source(e))
}

async fn role_exists(conn: &mut PgConnection, role: &str) -> Result<(), StepError> {
    let exists: bool =
        sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| StepError::retryable("cannot read pg_roles").with_source(e))?;
    if exists {
        Ok(())
    } else {
        Err(StepError::fatal(format!(
            "role `{role}` does not exist on the server: check `role`"
        )))
    }
}

/// In `tx`: the read-only default and the revokes, then the check that
/// neither the role nor a role it can act as can still write. Returns the
/// database's setting as it was before.
async fn revoke_writes(
    tx: &mut PgConnection,
    database: &str,
    role: &str,
    schemas: &[String],
    found: &Survey,
) -> Result<Option<String>, StepError> {
    let setting_before = current_setting(tx, database).await?;
    let fail = |what: String| move |e: sqlx::Error| StepError::fatal(what).with_source(e);
    tx.execute(
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            quote_ident(database)
        )
        .as_str(),
    )
    .await
    .map_err(fail(format!("cannot set `{database}` read-only")))?;
    for g in &found.grants {
        tx.execute(g.revoke_sql(role).as_str())
            .await
            .map_err(fail(format!(
                "cannot revoke {} (if `{role}` granted it on to others, revoke those grants first)",
                g.target()
            )))?;
    }
    let writable = privileges::still_writable(tx, role, schemas)
        .await
        .map_err(|e| StepError::retryable("cannot check privileges").with_source(e))?;
    if !writable.is_empty() || !found.other_paths.is_empty() {
        return Err(other_paths_error(role, &found.other_paths, &writable));
    }
    Ok(setting_before)
}

#[async_trait]
impl Step for ReadOnly {
    fn describe(&self) -> String {
        match self.config.mode {
            Mode::On => format!(
                "stop writes of role `{}`: read-only default, write privileges revoked, sessions ended",
                self.config.role.as_deref().unwrap_or_default()
            ),
            Mode::Off => "put back what read-only mode changed".into(),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "state",
            "state_file",
            "revoked",
            "sessions_ended",
            "not_stopped",
        ])
    }

    fn can_undo(&self) -> bool {
        self.config.mode == Mode::On
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let pg = self.target(ctx)?;
        let db = pg.database().to_string();
        match self.config.mode {
            Mode::On => {
                let role = ctx.resolve(self.config.role.as_deref().unwrap_or_default())?;
                let mut conn = pg.connect(None).await?;
                let found = match role_exists(&mut conn, &role).await {
                    Ok(()) => survey(&mut conn, &role, &self.schemas()).await,
                    Err(e) => Err(e),
                };
                let _ = conn.close().await;
                let found = found?;
                // The preview refuses as `on` would.
                if let Some(refusal) = found.refusal {
                    return Err(StepError::fatal(refusal));
                }
                if !found.other_paths.is_empty() {
                    return Err(other_paths_error(&role, &found.other_paths, &[]));
                }
                let mut changes = vec![format!(
                    "ALTER DATABASE {} SET default_transaction_read_only = on",
                    quote_ident(&db)
                )];
                changes.extend(found.grants.iter().map(|g| g.revoke_sql(&role)));
                changes.push(format!("end the sessions of role `{role}` on `{db}`"));
                changes.extend(
                    found
                        .not_stopped
                        .iter()
                        .map(|n| format!("not stopped: {n}")),
                );
                Ok(Preview::new(
                    format!("stop writes to `{db}` by `{role}`"),
                    changes,
                ))
            }
            Mode::Off => {
                let state = self.recorded_state(ctx).await?;
                let mut changes = vec![match &state.setting_before {
                    Some(v) => format!(
                        "ALTER DATABASE {} SET default_transaction_read_only = {v}",
                        quote_ident(&state.database)
                    ),
                    None => format!(
                        "ALTER DATABASE {} RESET default_transaction_read_only",
                        quote_ident(&state.database)
                    ),
                }];
                changes.extend(state.revoked.iter().map(|g| g.grant_sql(&state.role)));
                Ok(Preview::new(
                    format!("allow writes to `{}` again", state.database),
                    changes,
                ))
            }
        }
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        match self.config.mode {
            Mode::On => self.on(ctx).await,
            Mode::Off => {
                let state = self.recorded_state(ctx).await?;
                self.off(ctx, &state).await?;
                let mut out = Outputs::new();
                out.insert("state".into(), json!(state));
                out.insert("state_file".into(), Value::Null);
                out.insert("revoked".into(), json!(0));
                out.insert("sessions_ended".into(), json!(0));
                out.insert("not_stopped".into(), json!([]));
                Ok(out)
            }
        }
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let state = state_from_outputs(outputs)?;
        self.off(ctx, &state).await
    }
}

impl ReadOnly {
    async fn on(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let pg = self.target(ctx)?;
        let database = pg.database().to_string();
        let role = ctx.resolve(self.config.role.as_deref().unwrap_or_default())?;
        let schemas = self.schemas();
        let state_path: PathBuf = ctx
            .artifact_dir()
            .map_err(|e| {
                StepError::fatal("cannot create the step's artifact folder").with_source(e)
            })?
            .join(STATE_NAME);
        // A re-run after a crash: the first attempt's record is the truth (the
        // privileges are already revoked, so a fresh look would find none).
        let earlier = earlier_state(ctx, &state_path).await?;
        let mut conn = pg.connect(None).await?;
        // A re-run finds the database read-only already; this session writes.
        conn.execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| StepError::retryable("cannot prepare the session").with_source(e))?;
        role_exists(&mut conn, &role).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| StepError::retryable("cannot begin").with_source(e))?;
        let found = survey(&mut tx, &role, &schemas).await?;
        if let Some(refusal) = found.refusal {
            let _ = tx.rollback().await;
            return Err(StepError::fatal(refusal));
        }
        let setting_before = match revoke_writes(&mut tx, &database, &role, &schemas, &found).await
        {
            Ok(setting) => setting,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        // What this attempt is about to change is kept before the commit: a
        // crash after the commit then still leaves the record `off` needs.
        // (A crash before it leaves a record of revokes that did not happen;
        // granting those back gives the role only what it already has.)
        let mut state = match earlier {
            Some(mut e) if e.database == database && e.role == role => {
                // Keep the first attempt's facts; add anything granted since.
                for g in found.grants {
                    if !e.revoked.contains(&g) {
                        e.revoked.push(g);
                    }
                }
                e
            }
            _ => ReadOnlyState {
                database: database.clone(),
                role: role.clone(),
                setting_before,
                revoked: found.grants,
                sessions_ended: 0,
            },
        };
        if let Err(e) = keep_state(ctx, &state_path, &state).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit()
            .await
            .map_err(|e| StepError::retryable("cannot commit").with_source(e))?;

        let terminated = if self.config.terminate_sessions.unwrap_or(true) {
            crate::restore::end_sessions(&mut conn, &database, Some(&role), Duration::from_secs(5))
                .await
                .map_err(|e| {
                    StepError::fatal(format!(
                        "cannot end the sessions of `{role}`: the connecting role needs pg_signal_backend"
                    ))
                    .with_source(e)
                })?
        } else {
            0
        };
        let _ = conn.close().await;
        state.sessions_ended += terminated;
        keep_state(ctx, &state_path, &state).await?;
        ctx.progress(&format!(
            "read-only: {} privilege(s) revoked, {} session(s) ended",
            state.revoked.len(),
            state.sessions_ended
        ));
        for n in &found.not_stopped {
            ctx.progress(&format!("not stopped: {n}"));
        }
        let mut out = Outputs::new();
        out.insert("revoked".into(), json!(state.revoked.len()));
        out.insert("sessions_ended".into(), json!(state.sessions_ended));
        out.insert("state".into(), json!(state));
        out.insert("state_file".into(), json!(state_path.to_string_lossy()));
        out.insert("not_stopped".into(), json!(found.not_stopped));
        Ok(out)
    }

    async fn off(&self, ctx: &StepContext, state: &ReadOnlyState) -> Result<(), StepError> {
        let pg = self.target(ctx)?;
        if pg.database() != state.database {
            return Err(StepError::fatal(format!(
                "the recorded state is for database `{}`, but the url names `{}`",
                state.database,
                pg.database()
            )));
        }
        let mut conn = pg.connect(None).await?;
        // This session must write even though the database defaults to read-only.
        conn.execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| StepError::retryable("cannot prepare the session").with_source(e))?;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| StepError::retryable("cannot begin").with_source(e))?;
        let fail = |what: String| move |e: sqlx::Error| StepError::fatal(what).with_source(e);
        let db = quote_ident(&state.database);
        let setting = match &state.setting_before {
            Some(v) => format!(
                "ALTER DATABASE {db} SET default_transaction_read_only = {}",
                quote_literal(v)
            ),
            None => format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
        };
        tx.execute(setting.as_str()).await.map_err(fail(format!(
            "cannot restore the setting of `{}`",
            state.database
        )))?;
        let mut granted = 0;
        let mut gone = Vec::new();
        for g in &state.revoked {
            // A table or column that no longer exists (a restore swapped in an
            // older copy of the database) has nothing to grant back.
            let qualified = format!("{}.{}", quote_ident(&g.schema), quote_ident(&g.table));
            let exists: bool = sqlx::query_scalar(
                "SELECT CASE WHEN $2::text IS NULL THEN to_regclass($1) IS NOT NULL \
                 ELSE exists(SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
                             AND attname = $2 AND attnum > 0 AND NOT attisdropped) END",
            )
            .bind(&qualified)
            .bind(&g.column)
            .fetch_one(&mut *tx)
            .await
            .map_err(fail(format!("cannot look up {qualified}")))?;
            if !exists {
                let what = match &g.column {
                    Some(c) => format!("{qualified}.{}", quote_ident(c)),
                    None => qualified,
                };
                if !gone.contains(&what) {
                    gone.push(what);
                }
                continue;
            }
            granted += 1;
            tx.execute(g.grant_sql(&state.role).as_str())
                .await
                .map_err(fail(format!("cannot grant back {}", g.target())))?;
        }
        tx.commit()
            .await
            .map_err(|e| StepError::retryable("cannot commit").with_source(e))?;
        let _ = conn.close().await;
        let skipped = if gone.is_empty() {
            String::new()
        } else {
            format!("; no longer there, so skipped: {}", gone.join(", "))
        };
        ctx.progress(&format!(
            "writes allowed again: {granted} privilege(s) granted back{skipped}"
        ));
        // Sessions opened while read-only keep the read-only default until
        // they reconnect; their writes are allowed again by the grants.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> ReadOnlyConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn config_is_checked() {
        assert!(ReadOnly::new(cfg(json!({"url": "postgres://a/b", "mode": "on"}))).is_err());
        assert!(ReadOnly::new(cfg(
            json!({"url": "postgres://a/b", "mode": "on", "role": "app"})
        ))
        .is_ok());
        assert!(ReadOnly::new(cfg(json!({"url": "postgres://a/b", "mode": "off"}))).is_err());
        assert!(ReadOnly::new(cfg(
            json!({"url": "postgres://a/b", "mode": "off", "restore_from_step": "ro"})
        ))
        .is_ok());
        assert!(ReadOnly::new(cfg(
            json!({"url": "sqlite://a", "mode": "on", "role": "app"})
        ))
        .is_err());
    }
}
