//! `db.read_only`: the seeds' write stop, made to hold.
//!
//! `ALTER DATABASE … SET default_transaction_read_only = on` alone changes only
//! the default of *new* sessions, and any session can `SET` it back. So `on`
//! does three things, in this order:
//! 1. in one transaction: sets the database default, and revokes INSERT,
//!    UPDATE, DELETE and TRUNCATE on every table of the listed schemas from
//!    the application role (then checks with `has_table_privilege` that the
//!    role cannot write any of them through another role or PUBLIC; if it
//!    can, nothing is changed and the step fails naming those tables);
//! 2. ends the role's sessions on the database (open transactions included);
//! 3. records exactly what it changed (the setting's previous value, each
//!    privilege revoked and whether it was grantable) in its outputs and in
//!    `read_only-state.json` in the step's artifact folder.
//!
//! `off` (or undoing `on`) puts back exactly that: the previous setting (or
//! none) and each revoked privilege, nothing else.

use std::path::PathBuf;

use std::time::Duration;

use async_trait::async_trait;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use crate::backup::{PgTarget, Target};
use crate::restore::{quote_ident, quote_literal};

/// Write privileges `on` revokes.
const WRITE_PRIVILEGES: &[&str] = &["INSERT", "UPDATE", "DELETE", "TRUNCATE"];

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

/// One privilege `on` revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RevokedPrivilege {
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// INSERT, UPDATE, DELETE or TRUNCATE.
    pub privilege: String,
    /// Whether the role could grant it on (WITH GRANT OPTION).
    pub grantable: bool,
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

/// The role's direct write privileges on the schemas' tables (relacl, or the
/// owner's defaults when relacl is NULL).
async fn write_grants(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<RevokedPrivilege>, StepError> {
    let rows = sqlx::query(
        "SELECT n.nspname, c.relname, a.privilege_type, a.is_grantable \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
         WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname = ANY($1) \
           AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2) \
           AND a.privilege_type = ANY($3) \
         ORDER BY 1, 2, 3",
    )
    .bind(schemas)
    .bind(role)
    .bind(WRITE_PRIVILEGES)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StepError::retryable("cannot read table privileges").with_source(e))?;
    Ok(rows
        .iter()
        .map(|r| RevokedPrivilege {
            schema: r.get(0),
            table: r.get(1),
            privilege: r.get(2),
            grantable: r.get(3),
        })
        .collect())
}

/// Tables of the schemas the role can still write (through membership or PUBLIC).
async fn still_writable(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname = ANY($1) \
           AND (has_table_privilege($2, c.oid, 'INSERT') OR has_table_privilege($2, c.oid, 'UPDATE') \
             OR has_table_privilege($2, c.oid, 'DELETE') OR has_table_privilege($2, c.oid, 'TRUNCATE')) \
         ORDER BY 1",
    )
    .bind(schemas)
    .bind(role)
    .fetch_all(&mut *conn)
    .await
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

fn privilege_target(p: &RevokedPrivilege) -> String {
    format!(
        "{} ON TABLE {}.{}",
        p.privilege,
        quote_ident(&p.schema),
        quote_ident(&p.table)
    )
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
        OutputNames::Fixed(&["state", "state_file", "revoked", "sessions_ended"])
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
                let grants = write_grants(&mut conn, &role, &self.schemas()).await?;
                let _ = conn.close().await;
                let mut changes = vec![format!(
                    "ALTER DATABASE {} SET default_transaction_read_only = on",
                    quote_ident(&db)
                )];
                changes.extend(grants.iter().map(|g| {
                    format!("REVOKE {} FROM {}", privilege_target(g), quote_ident(&role))
                }));
                changes.push(format!("end the sessions of role `{role}` on `{db}`"));
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
                changes.extend(state.revoked.iter().map(|g| {
                    format!(
                        "GRANT {} TO {}",
                        privilege_target(g),
                        quote_ident(&state.role)
                    )
                }));
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
            .join("read_only-state.json");
        // A re-run after a crash: the first attempt's record is the truth (the
        // privileges are already revoked, so a fresh look would find none).
        let earlier: Option<ReadOnlyState> = match tokio::fs::read_to_string(&state_path).await {
            Ok(text) => serde_json::from_str(&text).ok(),
            Err(_) => None,
        };
        let mut conn = pg.connect(None).await?;
        // A re-run finds the database read-only already; this session writes.
        conn.execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| StepError::retryable("cannot prepare the session").with_source(e))?;
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
                .bind(&role)
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| StepError::retryable("cannot read pg_roles").with_source(e))?
                .ok_or_else(|| {
                    StepError::fatal(format!(
                        "role `{role}` does not exist on the server: check `role`"
                    ))
                })?;
        if superuser {
            return Err(StepError::fatal(format!(
                "role `{role}` is a superuser: privileges do not bind it, so read-only mode cannot stop its writes; give the application a non-superuser role"
            )));
        }

        let mut tx = conn
            .begin()
            .await
            .map_err(|e| StepError::retryable("cannot begin").with_source(e))?;
        let setting_before = current_setting(&mut tx, &database).await?;
        let grants = write_grants(&mut tx, &role, &schemas).await?;
        let fail = |what: String| move |e: sqlx::Error| StepError::fatal(what).with_source(e);
        tx.execute(
            format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                quote_ident(&database)
            )
            .as_str(),
        )
        .await
        .map_err(fail(format!("cannot set `{database}` read-only")))?;
        for g in &grants {
            tx.execute(
                format!("REVOKE {} FROM {}", privilege_target(g), quote_ident(&role)).as_str(),
            )
            .await
            .map_err(fail(format!("cannot revoke {}", privilege_target(g))))?;
        }
        let writable = still_writable(&mut tx, &role, &schemas)
            .await
            .map_err(|e| StepError::retryable("cannot check privileges").with_source(e))?;
        if !writable.is_empty() {
            let _ = tx.rollback().await;
            return Err(StepError::fatal(format!(
                "role `{role}` could still write {} through another role or PUBLIC, so nothing was changed: \
                 revoke those grants (see \\dp) or name the role that holds them",
                writable.join(", ")
            )));
        }
        // What this attempt is about to change goes to disk before the commit:
        // a crash after the commit then still leaves the record `off` needs.
        // (A crash before it leaves a record of revokes that did not happen;
        // granting those back gives the role only what it already has.)
        let mut state = match earlier {
            Some(mut e) if e.database == database && e.role == role => {
                // Keep the first attempt's facts; add anything granted since.
                for g in grants {
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
                revoked: grants,
                sessions_ended: 0,
            },
        };
        write_state(&state_path, &state).await?;
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
        write_state(&state_path, &state).await?;
        ctx.progress(&format!(
            "read-only: {} privilege(s) revoked, {} session(s) ended",
            state.revoked.len(),
            state.sessions_ended
        ));
        let mut out = Outputs::new();
        out.insert("revoked".into(), json!(state.revoked.len()));
        out.insert("sessions_ended".into(), json!(state.sessions_ended));
        out.insert("state".into(), json!(state));
        out.insert("state_file".into(), json!(state_path.to_string_lossy()));
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
            // A table that no longer exists (a restore swapped in an older
            // copy of the database) has nothing to grant back.
            let qualified = format!("{}.{}", quote_ident(&g.schema), quote_ident(&g.table));
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&qualified)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail(format!("cannot look up {qualified}")))?;
            if !exists {
                if !gone.contains(&qualified) {
                    gone.push(qualified);
                }
                continue;
            }
            granted += 1;
            let grant = format!(
                "GRANT {} TO {}{}",
                privilege_target(g),
                quote_ident(&state.role),
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            );
            tx.execute(grant.as_str())
                .await
                .map_err(fail(format!("cannot grant back {}", privilege_target(g))))?;
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
