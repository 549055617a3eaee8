//! `db.restore` on PostgreSQL, phase by phase, each one's intent saved in the
//! journal store before its effect (see [`super::progress`]):
//!
//! - *restoring*: the safety backup is in hand (its host, path and checksum
//!   in the intent); the temporary database is created, restored into and
//!   verified. The live database is untouched.
//! - *swapping*: the copy is verified; the live database's connection
//!   setting is in the intent; the swap runs.
//! - *swapped*: the copy is live; the intent keeps what the outputs report.

use rollback_core::process::OnResume;
use rollback_core::{Outputs, StepContext, StepError};
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::databases::{
    count_tables, db_state, drop_database, exec, scalar_text, sql_err, swap_in, tables_in,
};
use super::progress::{next_step, Next, Phase, RestoreIntent, Seen};
use super::{fit_name, quote_ident, quote_literal, Restore};
use crate::backup::{conninfo_dbname, PgTarget};

/// The names one restore works with.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) live: String,
    pub(crate) temp: String,
    pub(crate) before: String,
    /// The comment that marks the copy this step restored and verified.
    pub(crate) marker: String,
}

impl Names {
    pub(crate) fn new(ctx: &StepContext, live: &str) -> Names {
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

impl Seen {
    /// Reads the three databases' state.
    pub(crate) async fn read(admin: &mut PgConnection, names: &Names) -> Result<Seen, StepError> {
        Ok(Seen {
            live: db_state(admin, &names.live).await?,
            temp: db_state(admin, &names.temp).await?,
            before: db_state(admin, &names.before).await?,
            names: names.clone(),
        })
    }
}

impl Restore {
    pub(super) async fn maintenance(
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

    pub(super) async fn run_postgres(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
    ) -> Result<Outputs, StepError> {
        let names = Names::new(ctx, pg.database());
        // Only an earlier attempt of this step can have left an intent.
        let intent = match ctx.is_rerun() {
            false => None,
            true => match ctx.load_intent::<RestoreIntent>().await {
                Ok(intent) => intent,
                Err(missing) => return Err(self.intent_missing(ctx, pg, &names, missing).await),
            },
        };
        match intent {
            Some(intent) => self.continue_postgres(ctx, pg, &names, intent).await,
            None => self.start_postgres(ctx, pg, &names).await,
        }
    }

    /// The journal says the intent was saved and the store lost it: say
    /// what the server holds, change nothing.
    async fn intent_missing(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        names: &Names,
        missing: StepError,
    ) -> StepError {
        let seen = match self.maintenance(ctx, pg).await {
            Ok(mut admin) => {
                let seen = Seen::read(&mut admin, names).await;
                let _ = admin.close().await;
                seen.map(|s| s.describe())
            }
            Err(e) => Err(e),
        };
        let seen = match seen {
            Ok(text) => format!("the server holds: {text}"),
            Err(e) => format!("what the server holds could not be read: {}", e.message()),
        };
        StepError::fatal(ctx.redact(&format!(
            "{} Nothing was changed; {seen}",
            missing.message()
        )))
    }

    /// A first attempt (or a re-run that never saved an intent, or one the
    /// operator asked to run fresh): decides from what the server holds.
    async fn start_postgres(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        names: &Names,
    ) -> Result<Outputs, StepError> {
        let from = ctx.resolve(&self.config.from)?;
        let mut admin = self.maintenance(ctx, pg).await?;
        let seen = Seen::read(&mut admin, names).await?;
        if seen.live.is_some() && seen.before.is_some() {
            if seen.live_is_restored() {
                ctx.progress("already restored and swapped by an earlier attempt");
                let tables = count_tables(pg, &names.live).await?;
                return Ok(outputs(names, &from, tables, json!([]), None, 0, 0));
            }
            return Err(StepError::fatal(format!(
                "both `{}` and `{}` exist but `{}` was not restored by this step: \
                 rename or drop `{}` by hand after checking which one is current",
                names.live, names.before, names.live, names.before
            )));
        }
        let Some(live) = &seen.live else {
            let kept = match &seen.before {
                Some(_) => format!(
                    " (`{}` holds the database kept by an earlier swap)",
                    names.before
                ),
                None => String::new(),
            };
            return Err(StepError::fatal(format!(
                "database `{}` does not exist on {}: check the `url`{kept}",
                names.live,
                pg.server().unwrap_or_default(),
            )));
        };
        // Connections refused with a verified copy waiting: a crash mid-swap
        // of a run journaled without an intent. It accepted them before.
        let allow = live.allow_connections || seen.temp_verified();
        let source = self.source_backup(ctx, &from).await?;
        let safety = self.safety_backup(ctx, &names.live).await?;
        let mut intent = RestoreIntent::new(names, from, source, safety);
        ctx.save_intent(&intent).await?;
        if seen.temp_verified() {
            self.verify_phase(pg, &mut admin, names, &mut intent)
                .await?;
        } else {
            self.restore_phase(ctx, pg, &mut admin, names, &mut intent, seen.temp.is_some())
                .await?;
        }
        self.swap_phase(ctx, &mut admin, names, &mut intent, allow)
            .await
    }

    /// A re-run with the intent of an earlier attempt: continues from its
    /// phase if the server agrees, else stops saying what it holds.
    async fn continue_postgres(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        names: &Names,
        mut intent: RestoreIntent,
    ) -> Result<Outputs, StepError> {
        let names = intent.names(&names.marker);
        let mut admin = self.maintenance(ctx, pg).await?;
        let seen = Seen::read(&mut admin, &names).await?;
        let allow = |live: &Option<super::databases::DbState>| {
            intent
                .allow_connections
                .or(live.as_ref().map(|l| l.allow_connections))
                .unwrap_or(true)
        };
        match next_step(ctx.step_id(), &intent, &seen) {
            Next::Stop(why) => Err(StepError::fatal(ctx.redact(&why))),
            Next::Done => {
                ctx.progress("already restored and swapped by an earlier attempt");
                Ok(intent_outputs(&intent))
            }
            Next::FinishSwap => {
                ctx.progress("the swap of an earlier attempt committed; finishing it");
                self.finish_swap(ctx, &mut admin, &names, &mut intent).await
            }
            Next::Restore => {
                let allow = allow(&seen.live);
                self.check_backups(ctx, &intent, true).await?;
                ctx.progress(&format!(
                    "an earlier attempt did not finish restoring into `{}`: restoring again",
                    names.temp
                ));
                self.restore_phase(
                    ctx,
                    pg,
                    &mut admin,
                    &names,
                    &mut intent,
                    seen.temp.is_some(),
                )
                .await?;
                self.swap_phase(ctx, &mut admin, &names, &mut intent, allow)
                    .await
            }
            Next::Swap => {
                let allow = allow(&seen.live);
                self.check_backups(ctx, &intent, false).await?;
                ctx.progress(&format!(
                    "`{}` was restored and verified by an earlier attempt",
                    names.temp
                ));
                if intent.tables.is_none() {
                    self.verify_phase(pg, &mut admin, &names, &mut intent)
                        .await?;
                }
                self.swap_phase(ctx, &mut admin, &names, &mut intent, allow)
                    .await
            }
        }
    }

    /// Before acting on an earlier attempt's intent: the backups it relies
    /// on are readable here and unchanged (the safety backup always, the
    /// one to restore when it is restored again).
    async fn check_backups(
        &self,
        ctx: &StepContext,
        intent: &RestoreIntent,
        restoring: bool,
    ) -> Result<(), StepError> {
        intent.safety.check_here(ctx, "the safety backup").await?;
        match &intent.source {
            Some(source) if restoring => source.check_here(ctx, "the backup to restore").await,
            None if restoring
                && !crate::backup::exists(std::path::Path::new(&intent.from)).await =>
            {
                Err(StepError::fatal(ctx.redact(&format!(
                    "backup {} does not exist on this runner: check `from`",
                    intent.from
                ))))
            }
            _ => Ok(()),
        }
    }

    /// Restores into the temporary database and verifies it. On failure the
    /// temporary database is dropped (the live one was never touched).
    async fn restore_phase(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        admin: &mut PgConnection,
        names: &Names,
        intent: &mut RestoreIntent,
        leftover: bool,
    ) -> Result<(), StepError> {
        if leftover {
            drop_database(admin, &names.temp).await?;
        }
        let restored = match self
            .restore_into_temp(ctx, pg, admin, names, &intent.from)
            .await
        {
            Ok(()) => self.verify_phase(pg, admin, names, intent).await,
            Err(e) => Err(e),
        };
        let Err(e) = restored else {
            return Ok(());
        };
        let kind = |message: String| {
            if e.is_retryable() {
                StepError::retryable(message)
            } else {
                StepError::fatal(message)
            }
        };
        let detail = e.detail().unwrap_or_default().to_string();
        match self.drop_temp(ctx, pg, admin, &names.temp).await {
            Ok(()) => Err(kind(format!(
                "{} (the live database `{}` is untouched; the temporary database was dropped)",
                e.message(),
                names.live
            ))
            .with_detail(detail)),
            Err(cleanup) => Err(kind(format!(
                "{} (the live database `{}` is untouched; the temporary database `{}` could not be dropped: \
                 {}; resuming the run drops it before restoring again, or drop it with DROP DATABASE {} WITH \
                 (FORCE))",
                e.message(),
                names.live,
                names.temp,
                cleanup.full_message(),
                quote_ident(&names.temp)
            ))
            .with_detail(detail)),
        }
    }

    /// Drops the temporary database; on a fresh connection when the server
    /// ended the old one (a restart is why a restore fails mid-way).
    async fn drop_temp(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        admin: &mut PgConnection,
        temp: &str,
    ) -> Result<(), StepError> {
        if drop_database(admin, temp).await.is_ok() {
            return Ok(());
        }
        let mut fresh = self.maintenance(ctx, pg).await?;
        let dropped = drop_database(&mut fresh, temp).await;
        *admin = fresh;
        dropped
    }

    /// `CREATE DATABASE temp` like the live one, then `pg_restore` into it.
    async fn restore_into_temp(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        admin: &mut PgConnection,
        names: &Names,
        from: &str,
    ) -> Result<(), StepError> {
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
        let args = [
            format!("--jobs={jobs}"),
            "--exit-on-error".into(),
            "--dbname".into(),
            conninfo_dbname(&names.temp),
            from.to_string(),
        ];
        // A resume ends a pg_restore its dead runner left: the step then
        // drops the temporary database and restores again, and a survivor
        // would still be writing into it.
        let pg_restore = tools.command(
            "pg_restore",
            &args,
            &pg.child_env(Some(&names.temp)),
            OnResume::End,
        );
        tools.run(ctx, pg_restore).await.map(drop).map_err(|e| {
            let message = format!("restoring {from} failed: {}", e.message());
            let detail = e.detail().unwrap_or_default().to_string();
            if e.is_retryable() {
                StepError::retryable(message).with_detail(detail)
            } else {
                StepError::fatal(message).with_detail(detail)
            }
        })
    }

    /// Verifies the temporary database (tables, checks) and marks it
    /// verified; keeps the results in the intent.
    async fn verify_phase(
        &self,
        pg: &PgTarget,
        admin: &mut PgConnection,
        names: &Names,
        intent: &mut RestoreIntent,
    ) -> Result<(), StepError> {
        let from = &intent.from;
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
        intent.tables = Some(tables);
        intent.checks = Some(Value::Array(results));
        Ok(())
    }

    /// The swap, its intent (phase and the live database's connection
    /// setting) saved first; on failure the repair.
    async fn swap_phase(
        &self,
        ctx: &StepContext,
        admin: &mut PgConnection,
        names: &Names,
        intent: &mut RestoreIntent,
        allow: bool,
    ) -> Result<Outputs, StepError> {
        intent.phase = Phase::Swapping;
        intent.allow_connections = Some(allow);
        ctx.save_intent(intent).await?;
        ctx.progress(&format!("swapping `{}` into place", names.temp));
        let started = std::time::Instant::now();
        let swapped = swap_in(
            admin,
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
                intent.sessions_ended = Some(report.ended);
                intent.swap_ms = Some(swap_ms);
                self.finish_swap(ctx, admin, names, intent).await
            }
            Err(e) => Err(repair_swap(admin, names, allow, e).await),
        }
    }

    /// After the swap committed: the kept database gets back the connection
    /// setting it had, and the intent says it is done.
    async fn finish_swap(
        &self,
        ctx: &StepContext,
        admin: &mut PgConnection,
        names: &Names,
        intent: &mut RestoreIntent,
    ) -> Result<Outputs, StepError> {
        let allow = intent.allow_connections.unwrap_or(true);
        let _ = exec(
            admin,
            &format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                quote_ident(&names.before)
            ),
        )
        .await;
        intent.phase = Phase::Swapped;
        ctx.save_intent(intent).await?;
        Ok(intent_outputs(intent))
    }
}

/// A failed swap renamed nothing: connections are allowed again on the live
/// database and the copy is dropped; if that fails too, the error gives the
/// exact state and what ends it.
async fn repair_swap(
    admin: &mut PgConnection,
    names: &Names,
    allow: bool,
    e: sqlx::Error,
) -> StepError {
    let repaired = async {
        exec(
            admin,
            &format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                quote_ident(&names.live)
            ),
        )
        .await
        .map_err(|e| StepError::fatal(e.to_string()))?;
        drop_database(admin, &names.temp).await
    }
    .await;
    match repaired {
        Ok(()) => StepError::fatal(format!(
            "the swap failed and was rolled back: `{}` is unchanged and accepts connections again, the restored \
             copy was dropped: {e}",
            names.live
        )),
        Err(r) => StepError::fatal(format!(
            "the swap failed ({e}) and the repair failed too ({}): `{}` is the original database but may refuse \
             connections, `{}` holds the verified restored copy. To go back: ALTER DATABASE {} WITH \
             ALLOW_CONNECTIONS true; to finish instead: run this step again",
            r.full_message(),
            names.live,
            names.temp,
            quote_ident(&names.live)
        )),
    }
}

/// The outputs a restore reports, from its intent.
fn intent_outputs(intent: &RestoreIntent) -> Outputs {
    let names = intent.names("");
    outputs(
        &names,
        &intent.from,
        intent.tables.unwrap_or(0),
        intent.checks.clone().unwrap_or_else(|| json!([])),
        Some(intent.safety.path.clone()),
        intent.sessions_ended.unwrap_or(0),
        intent.swap_ms.unwrap_or(0),
    )
}

fn outputs(
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

impl Restore {
    pub(super) async fn undo_postgres(
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
}
