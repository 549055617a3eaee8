//! A journal shared by several runners: runs and their records in PostgreSQL
//! ([`PgJournalStore`]), and the plan lock as a PostgreSQL advisory lock
//! ([`PgPlanLocker`]).
//!
//! Tables, in a schema of their own (`rollback` by default; created on first
//! use, under a transaction-scoped advisory lock so two runners starting at
//! once do not race):
//!
//! ```text
//! runs(run_id PK, plan, started_at, info jsonb, plan_text, created)
//! records(run_id, n, record jsonb, PK (run_id, n))   one row per journal record
//! state(run_id, step, name, body bytea, saved, PK (run_id, step, name))
//!                                                    steps' intents and small artifacts
//! plan_locks(plan PK, holder jsonb, backend_pid, taken)   who holds each plan's lock
//! ```
//!
//! A step's state (its intent, objects it captured) is kept here, not on the
//! runner's disk, so a runner that resumes a run another one started finds
//! it.
//!
//! A record is durable when `commit` returns: the queued records are inserted
//! in one statement, and PostgreSQL's commit (with its default
//! `synchronous_commit = on`) is on disk before it answers. Concurrent commits
//! share one insert, like the file journal's group commit.
//!
//! The lock is `pg_try_advisory_lock` on a connection of its own held for the
//! whole run: a runner that crashes drops its connection, the server ends the
//! session and the lock is free again. No lease to expire, no stale lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rollback_core::{
    Error, Event, JournalStore, LockHolder, PlanLockGuard, PlanLocker, Record, Result, RunInfo,
    RunJournal, RunSummary, StateEntry, StateStore, StoredRun,
};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use crate::restore::quote_ident;

/// Key of the advisory lock that serialises creating the tables.
const SETUP_LOCK: i64 = 0x726f_6c6c_6261_636b; // "rollback"

fn journal_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Journal {
        path: PathBuf::from(format!("postgres: {what}")),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Creates the schema and tables if missing.
async fn ensure_schema(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let s = quote_ident(schema);
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| journal_error("cannot begin", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(|e| journal_error("cannot take the set-up lock", e))?;
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.runs (
             run_id text PRIMARY KEY,
             plan text NOT NULL,
             started_at text NOT NULL,
             info jsonb NOT NULL,
             plan_text text NOT NULL,
             created timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS {s}.records (
             run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
             n bigint NOT NULL,
             record jsonb NOT NULL,
             PRIMARY KEY (run_id, n));
         CREATE TABLE IF NOT EXISTS {s}.state (
             run_id text NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
             step text NOT NULL,
             name text NOT NULL,
             body bytea NOT NULL,
             saved timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (run_id, step, name));
         CREATE TABLE IF NOT EXISTS {s}.plan_locks (
             plan text PRIMARY KEY,
             holder jsonb NOT NULL,
             backend_pid integer NOT NULL,
             taken timestamptz NOT NULL DEFAULT now());"
    );
    tx.execute(ddl.as_str()).await.map_err(|e| {
        journal_error(
            &format!("cannot create the journal tables in schema {schema}"),
            e,
        )
    })?;
    tx.commit()
        .await
        .map_err(|e| journal_error("cannot commit the journal tables", e))?;
    Ok(())
}

/// Runs and records in PostgreSQL, so several runners share one history.
#[derive(Debug, Clone)]
pub struct PgJournalStore {
    pool: PgPool,
    schema: String,
    state_dir: PathBuf,
    locker: PgPlanLocker,
}

impl PgJournalStore {
    /// Connects to `url` (a `postgres://` URL), creates the tables in `schema`
    /// if missing, and keeps run artifacts (backups, saved files, reports) in
    /// `state_dir/runs/RUN_ID/`, which stays local to each runner.
    pub async fn connect(url: &str, schema: &str, state_dir: impl Into<PathBuf>) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|_| Error::InvalidInput {
                message: "the journal URL is not a valid postgres:// URL".into(),
            })?
            .application_name("rollback journal")
            .disable_statement_logging();
        Self::with_options(options, schema, state_dir).await
    }

    /// Like [`PgJournalStore::connect`], from connection options.
    pub async fn with_options(
        options: PgConnectOptions,
        schema: &str,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        if schema.is_empty() {
            return Err(Error::InvalidInput {
                message: "the journal schema name is empty".into(),
            });
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(|e| journal_error("cannot connect to the journal database", e))?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| journal_error("cannot connect to the journal database", e))?;
        ensure_schema(&mut conn, schema).await?;
        drop(conn);
        Ok(PgJournalStore {
            pool,
            schema: schema.to_string(),
            state_dir: state_dir.into(),
            locker: PgPlanLocker {
                options,
                schema: schema.to_string(),
            },
        })
    }

    /// The advisory-lock locker on the same database (what [`JournalStore::lock`] uses).
    pub fn locker(&self) -> PgPlanLocker {
        self.locker.clone()
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), name)
    }

    fn not_found(&self, run_id: &str) -> Error {
        Error::RunNotFound {
            run_id: run_id.to_string(),
            dir: PathBuf::from(format!("the PostgreSQL journal (schema {})", self.schema)),
        }
    }

    async fn journal(&self, run_id: &str, next: i64) -> Arc<dyn RunJournal> {
        Arc::new(PgRunJournal {
            pool: self.pool.clone(),
            insert: format!(
                "INSERT INTO {} (run_id, n, record) \
                 SELECT $1, $2 + t.i - 1, t.r::jsonb FROM unnest($3::text[]) WITH ORDINALITY AS t(r, i)",
                self.table("records")
            ),
            run_id: run_id.to_string(),
            pending: Mutex::new(Vec::new()),
            next: tokio::sync::Mutex::new(next),
        })
    }
}

#[async_trait]
impl StateStore for PgJournalStore {
    async fn put_state(&self, run_id: &str, step: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        rollback_core::state::check_size(step, name, bytes.len())?;
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, step, name, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (run_id, step, name) DO UPDATE SET body = EXCLUDED.body, saved = now()",
            self.table("state")
        ))
        .bind(run_id)
        .bind(step)
        .bind(name)
        .bind(bytes)
        .execute(&self.pool)
        .await
        .map_err(|e| journal_error(&format!("cannot keep `{name}` of step `{step}`"), e))?;
        Ok(())
    }

    async fn get_state(&self, run_id: &str, step: &str, name: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar(&format!(
            "SELECT body FROM {} WHERE run_id = $1 AND step = $2 AND name = $3",
            self.table("state")
        ))
        .bind(run_id)
        .bind(step)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| journal_error(&format!("cannot read `{name}` of step `{step}`"), e))
    }

    async fn list_state(&self, run_id: &str) -> Result<Vec<StateEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT step, name, octet_length(body)::bigint FROM {} WHERE run_id = $1 ORDER BY step, name",
            self.table("state")
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| journal_error("cannot list a run's state", e))?;
        Ok(rows
            .iter()
            .map(|r| StateEntry {
                step: r.get(0),
                name: r.get(1),
                bytes: r.get::<i64, _>(2) as u64,
            })
            .collect())
    }
}

#[async_trait]
impl JournalStore for PgJournalStore {
    async fn create(&self, run: &RunInfo, plan_text: &str) -> Result<Arc<dyn RunJournal>> {
        let info = serde_json::to_string(run).expect("run info serializes");
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, plan, started_at, info, plan_text) VALUES ($1, $2, $3, $4::jsonb, $5)",
            self.table("runs")
        ))
        .bind(&run.run_id)
        .bind(&run.plan)
        .bind(&run.started_at)
        .bind(info)
        .bind(plan_text)
        .execute(&self.pool)
        .await
        .map_err(|e| journal_error(&format!("cannot record run {}", run.run_id), e))?;
        std::fs::create_dir_all(self.run_dir(&run.run_id))
            .map_err(|e| journal_error("cannot create the run's local folder", e))?;
        Ok(self.journal(&run.run_id, 1).await)
    }

    async fn reopen(&self, run_id: &str) -> Result<Arc<dyn RunJournal>> {
        let row = sqlx::query(&format!(
            "SELECT (SELECT coalesce(max(n), 0) FROM {} WHERE run_id = r.run_id) FROM {} r WHERE r.run_id = $1",
            self.table("records"),
            self.table("runs")
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| journal_error("cannot read the journal", e))?;
        let Some(row) = row else {
            return Err(self.not_found(run_id));
        };
        let last: i64 = row.get(0);
        Ok(self.journal(run_id, last + 1).await)
    }

    async fn read(&self, run_id: &str) -> Result<StoredRun> {
        let row = sqlx::query(&format!(
            "SELECT info::text, plan_text FROM {} WHERE run_id = $1",
            self.table("runs")
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| journal_error("cannot read the journal", e))?;
        let Some(row) = row else {
            return Err(self.not_found(run_id));
        };
        let info: RunInfo = serde_json::from_str(row.get::<&str, _>(0))
            .map_err(|e| journal_error(&format!("run {run_id} has unreadable info"), e))?;
        let plan_text: String = row.get(1);
        let texts: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT record::text FROM {} WHERE run_id = $1 ORDER BY n",
            self.table("records")
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| journal_error("cannot read the journal", e))?;
        let records = texts
            .iter()
            .map(|t| serde_json::from_str::<Record>(t))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| journal_error(&format!("run {run_id} has an unreadable record"), e))?;
        Ok(StoredRun {
            info,
            plan_text,
            records,
            torn_tail: false,
        })
    }

    async fn list(&self) -> Result<Vec<RunSummary>> {
        let rows = sqlx::query(&format!(
            "SELECT r.info::text, (SELECT x.record::text FROM {rec} x WHERE x.run_id = r.run_id \
                 AND x.record->>'event' IN ('run_finished', 'run_resumed') ORDER BY x.n DESC LIMIT 1) \
             FROM {runs} r ORDER BY r.started_at DESC, r.run_id DESC",
            rec = self.table("records"),
            runs = self.table("runs")
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| journal_error("cannot list runs", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(info) = serde_json::from_str::<RunInfo>(row.get::<&str, _>(0)) else {
                continue;
            };
            let last: Option<Record> = row
                .get::<Option<&str>, _>(1)
                .and_then(|t| serde_json::from_str(t).ok());
            let (status, duration_ms) = match last.map(|r| r.event) {
                Some(Event::RunFinished {
                    status,
                    duration_ms,
                    ..
                }) => (Some(status), Some(duration_ms)),
                _ => (None, None),
            };
            out.push(RunSummary {
                run_id: info.run_id,
                plan: info.plan,
                started_at: info.started_at,
                operator: info.operator,
                reason: info.reason,
                drill: info.drill,
                status,
                duration_ms,
                trigger: info.trigger,
                digest: info.digest,
            });
        }
        Ok(out)
    }

    async fn lock(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>> {
        self.locker.lock(plan, holder).await
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.state_dir.join("runs").join(run_id)
    }

    fn location(&self, run_id: &str) -> String {
        format!(
            "the PostgreSQL journal, schema {}, run {run_id}",
            self.schema
        )
    }
}

/// Appends one run's records; `commit` inserts everything queued in one statement.
struct PgRunJournal {
    pool: PgPool,
    insert: String,
    run_id: String,
    pending: Mutex<Vec<String>>,
    /// The next record number; held while a batch is inserted, so batches
    /// land in the order they were queued.
    next: tokio::sync::Mutex<i64>,
}

#[async_trait]
impl RunJournal for PgRunJournal {
    fn queue(&self, record: Record) {
        let text = serde_json::to_string(&record).expect("records serialize");
        self.pending.lock().expect("pending records").push(text);
    }

    async fn commit(&self) -> Result<()> {
        let mut next = self.next.lock().await;
        let batch: Vec<String> =
            std::mem::take(&mut *self.pending.lock().expect("pending records"));
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as i64;
        match sqlx::query(&self.insert)
            .bind(&self.run_id)
            .bind(*next)
            .bind(&batch)
            .execute(&self.pool)
            .await
        {
            Ok(_) => {
                *next += n;
                Ok(())
            }
            Err(e) => {
                // Keep them for the next commit, in front of anything newer.
                let mut pending = self.pending.lock().expect("pending records");
                let newer = std::mem::take(&mut *pending);
                *pending = batch;
                pending.extend(newer);
                Err(journal_error(
                    &format!("cannot write the records of run {}", self.run_id),
                    e,
                ))
            }
        }
    }
}

/// The plan lock as a PostgreSQL advisory lock held on a dedicated
/// connection for the whole run; its holder is recorded in `plan_locks` so a
/// refused runner can say who holds it.
#[derive(Debug, Clone)]
pub struct PgPlanLocker {
    options: PgConnectOptions,
    schema: String,
}

impl PgPlanLocker {
    /// A locker on the database of `url`, recording holders in `schema`
    /// (created if missing).
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|_| Error::InvalidInput {
                message: "the lock URL is not a valid postgres:// URL".into(),
            })?
            .application_name("rollback lock")
            .disable_statement_logging();
        let mut conn = options
            .connect()
            .await
            .map_err(|e| journal_error("cannot connect to the lock database", e))?;
        ensure_schema(&mut conn, schema).await?;
        let _ = conn.close().await;
        Ok(PgPlanLocker {
            options,
            schema: schema.to_string(),
        })
    }

    /// The advisory lock key of `plan`: 64 bits of SHA-256 over a fixed prefix
    /// and the plan's name.
    pub fn key(plan: &str) -> i64 {
        let digest = Sha256::digest(format!("rollback plan lock\0{plan}").as_bytes());
        i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

#[async_trait]
impl PlanLocker for PgPlanLocker {
    async fn lock(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>> {
        let table = format!("{}.plan_locks", quote_ident(&self.schema));
        let mut conn = self
            .options
            .clone()
            .application_name("rollback lock")
            .connect()
            .await
            .map_err(|e| journal_error("cannot connect to take the plan lock", e))?;
        let key = Self::key(plan);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| journal_error("cannot take the plan lock", e))?;
        if got {
            let text = serde_json::to_string(holder).expect("holder serializes");
            sqlx::query(&format!(
                "INSERT INTO {table} (plan, holder, backend_pid) VALUES ($1, $2::jsonb, pg_backend_pid()) \
                 ON CONFLICT (plan) DO UPDATE SET holder = excluded.holder, backend_pid = excluded.backend_pid, taken = now()"
            ))
            .bind(plan)
            .bind(text)
            .execute(&mut conn)
            .await
            .map_err(|e| journal_error("cannot record the plan lock's holder", e))?;
            return Ok(Box::new(PgLockGuard { conn: Some(conn) }));
        }
        // Who holds it: the recorded holder, if its session is the one holding
        // the advisory lock now (otherwise the holder is still recording itself).
        let row = sqlx::query(&format!(
            "SELECT l.holder::text FROM {table} l WHERE l.plan = $1 AND l.backend_pid IN ( \
                 SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = $2::bigint::oid AND objid = $3::bigint::oid AND objsubid = 1)"
        ))
        .bind(plan)
        .bind(((key as u64) >> 32) as i64)
        .bind(((key as u64) & 0xffff_ffff) as i64)
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| journal_error("cannot read the plan lock's holder", e))?;
        let _ = conn.close().await;
        let holder = row
            .and_then(|r| serde_json::from_str::<LockHolder>(r.get::<&str, _>(0)).ok())
            .unwrap_or_else(|| LockHolder {
                operator: "unknown".into(),
                host: "unknown".into(),
                pid: 0,
                since: "unknown".into(),
                run_id: "unknown (the holder is still recording itself)".into(),
            });
        Err(Error::Locked {
            plan: plan.to_string(),
            holder: Box::new(holder),
        })
    }
}

/// Holds the advisory lock's connection; dropping it closes the connection,
/// which ends the session and frees the lock.
struct PgLockGuard {
    conn: Option<PgConnection>,
}

#[async_trait]
impl PlanLockGuard for PgLockGuard {
    async fn release(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl Drop for PgLockGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            match tokio::runtime::Handle::try_current() {
                // A clean goodbye: the server ends the session at once.
                Ok(handle) => {
                    handle.spawn(async move {
                        let _ = conn.close().await;
                    });
                }
                // Outside a runtime the socket just closes; the server notices
                // and ends the session (and the lock) all the same.
                Err(_) => drop(conn),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(PgPlanLocker::key("orders"), PgPlanLocker::key("orders"));
        assert_ne!(PgPlanLocker::key("orders"), PgPlanLocker::key("orders2"));
    }
}
