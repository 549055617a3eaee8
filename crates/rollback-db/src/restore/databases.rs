//! What `db.restore` does to databases on the server: reading their state
//! in `pg_database`, dropping and counting, ending sessions, and the swap.

use std::time::{Duration, Instant};

use rollback_core::StepError;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use super::quote_ident;
use crate::backup::PgTarget;

/// A database as seen in pg_database.
#[derive(Debug, Clone)]
pub(crate) struct DbState {
    pub(crate) allow_connections: bool,
    pub(crate) comment: Option<String>,
}

pub(super) async fn db_state(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<DbState>, StepError> {
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

pub(super) async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute(sql).await.map(|_| ())
}

pub(super) fn sql_err(what: String) -> impl FnOnce(sqlx::Error) -> StepError {
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
pub(super) struct SwapReport {
    pub(super) ended: u64,
    pub(super) summary: String,
}

/// Renames `from → to` after `live → before` in one transaction, after
/// blocking new connections to `live` and ending its sessions; retried when a
/// session slipped in between. Returns the sessions ended.
pub(super) async fn swap_in(
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

pub(super) async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), StepError> {
    exec(
        admin,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
    )
    .await
    .map_err(sql_err(format!("cannot drop `{name}`")))
}

pub(super) async fn tables_in(conn: &mut PgConnection) -> Result<u64, StepError> {
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

pub(super) async fn count_tables(pg: &PgTarget, database: &str) -> Result<u64, StepError> {
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
