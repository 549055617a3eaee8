//! `db.restore` on SQLite: the backup file is copied next to the live file,
//! checked (`PRAGMA integrity_check`, tables, `checks`), then the live file
//! is hard-linked to `<file>.before-<run>` and the copy renamed over it
//! (`rename(2)` is atomic: the live path always names a complete database).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rollback_core::{Outputs, StepContext, StepError};
use serde_json::{json, Value};
use sqlx::{Connection, Row};

use super::Restore;
use crate::backup::{self, exists, remove_path, sqlite_connect, sqlite_integrity};

impl Restore {
    pub(super) async fn run_sqlite(
        &self,
        ctx: &StepContext,
        live: &Path,
    ) -> Result<Outputs, StepError> {
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
        // Readable here, and unchanged when a step of the run took it.
        self.source_backup(ctx, &from.to_string_lossy()).await?;
        let safety = self.safety_backup(ctx, &live_name).await?.path;
        let verified = self.copy_and_check(&from, &temp).await;
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

    /// Copies the backup next to the live file and checks the copy
    /// (integrity, tables, `checks`); returns the tables and the checks' results.
    async fn copy_and_check(
        &self,
        from: &Path,
        temp: &Path,
    ) -> Result<(u64, Vec<Value>), StepError> {
        remove_path(temp).await?;
        tokio::fs::copy(from, temp).await.map_err(|e| {
            StepError::fatal(format!("cannot copy backup {}", from.display())).with_source(e)
        })?;
        let tables = sqlite_integrity(temp).await?;
        let min = self.config.min_tables.unwrap_or(1);
        if tables < min {
            return Err(StepError::fatal(format!(
                "the restored copy holds {tables} table(s), fewer than {min}"
            )));
        }
        let mut conn = sqlite_connect(temp, true).await?;
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
}

pub(super) async fn undo_sqlite(ctx: &StepContext, live: &Path) -> Result<(), StepError> {
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
pub(super) fn sqlite_sibling(live: &Path, suffix: &str) -> PathBuf {
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
