//! One connection to the database a kind works on: the URL from the plan
//! (resolved late with [`StepContext::resolve`], so secrets stay out of the
//! kind's configuration), PostgreSQL or SQLite chosen by its scheme, a connect
//! timeout, and errors that never show the password.
//!
//! | URL | database |
//! |---|---|
//! | `postgres://user:pass@host:5432/name`, `postgresql://…` | PostgreSQL |
//! | `sqlite://path/to/file.db`, `sqlite:file.db` | SQLite file (must exist) |
//! | `/var/lib/app/app.db`, `./app.db`, `app.sqlite3` | SQLite file (a plain path) |

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rollback_core::{StepContext, StepError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

/// How long a connection attempt may take unless the plan says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// SQLite (`sqlite:` or a file path).
    Sqlite,
}

/// A resolved database address, kept apart from how it is shown.
#[derive(Clone)]
pub struct DbUrl {
    backend: Backend,
    /// The URL as resolved (may hold a password: never show it).
    url: String,
    /// The SQLite file, for SQLite.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbUrl")
            .field("backend", &self.backend)
            .field("url", &self.display())
            .finish()
    }
}

impl DbUrl {
    /// Reads a URL or a SQLite file path.
    pub fn parse(url: &str) -> Result<Self, String> {
        let trimmed = url.trim();
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(DbUrl {
                backend: Backend::Postgres,
                url: trimmed.to_string(),
                path: None,
            });
        }
        if let Some(rest) = lower.strip_prefix("sqlite:") {
            let start = trimmed.len() - rest.len();
            let mut path = &trimmed[start..];
            path = path.strip_prefix("//").unwrap_or(path);
            // Drop `?mode=...` and similar query parameters for the path.
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(
                    "an in-memory SQLite database cannot be rolled back: give a file, e.g. sqlite:///var/lib/app/app.db"
                        .into(),
                );
            }
            return Ok(DbUrl {
                backend: Backend::Sqlite,
                url: trimmed.to_string(),
                path: Some(PathBuf::from(path)),
            });
        }
        if trimmed.is_empty() {
            return Err("the database URL is empty: give e.g. postgres://user@host/db or sqlite:///path/app.db".into());
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(format!(
                "unsupported database scheme `{scheme}://`: this crate speaks postgres:// and sqlite:// (or a SQLite file path)"
            ));
        }
        Ok(DbUrl {
            backend: Backend::Sqlite,
            url: format!("sqlite://{trimmed}"),
            path: Some(PathBuf::from(trimmed)),
        })
    }

    /// PostgreSQL or SQLite.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite file, for SQLite URLs.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The URL with any password replaced by `***`, for messages.
    pub fn display(&self) -> String {
        mask_password(&self.url)
    }

    /// The database's name: the path's last segment for PostgreSQL (without
    /// query), the file path for SQLite.
    pub fn database(&self) -> String {
        match self.backend {
            Backend::Sqlite => self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            Backend::Postgres => PgConnectOptions::from_str(&self.url)
                .ok()
                .and_then(|o| o.get_database().map(str::to_string))
                .unwrap_or_default(),
        }
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`; a `password=`
/// query parameter is masked too.
pub fn mask_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map(|i| rest_start + i)
            .unwrap_or(out.len());
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                let end = rest_start + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

/// An open connection to PostgreSQL or SQLite.
#[derive(Debug)]
pub enum Db {
    /// A PostgreSQL connection.
    Postgres(PgConnection),
    /// A SQLite connection.
    Sqlite(SqliteConnection),
}

/// Runs the same code against whichever connection `db` holds.
macro_rules! with_conn {
    ($db:expr, $c:ident => $body:expr) => {
        match $db {
            $crate::connect::Db::Postgres($c) => $body,
            $crate::connect::Db::Sqlite($c) => $body,
        }
    };
}
pub(crate) use with_conn;

/// Resolves `url_template` with the context, then connects within `timeout`.
pub async fn connect(
    ctx: &StepContext,
    url_template: &str,
    timeout: Duration,
) -> Result<(Db, DbUrl), StepError> {
    let resolved = ctx.resolve(url_template)?;
    let url = DbUrl::parse(&resolved).map_err(|m| StepError::fatal(ctx.redact(&m)))?;
    let db = connect_url(&url, timeout)
        .await
        .map_err(|e| redact_error(ctx, e))?;
    Ok((db, url))
}

/// Connects to an already resolved URL within `timeout`. Errors show the URL
/// with its password masked.
pub async fn connect_url(url: &DbUrl, timeout: Duration) -> Result<Db, StepError> {
    let shown = url.display();
    let attempt = async {
        match url.backend {
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(&url.url).map_err(|e| {
                    StepError::fatal(format!(
                        "cannot read the PostgreSQL URL {shown}: {}",
                        mask_password(&e.to_string())
                    ))
                })?;
                let options = options.application_name("rollback");
                PgConnection::connect_with(&options)
                    .await
                    .map(Db::Postgres)
                    .map_err(|e| connect_error(&shown, e))
            }
            Backend::Sqlite => {
                let path = url.path.clone().unwrap_or_default();
                if !path.is_file() {
                    return Err(StepError::fatal(format!(
                        "no SQLite database at {}: check the path in `url` (relative paths are taken from the \
                         directory rollback runs in)",
                        path.display()
                    )));
                }
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(false)
                    .busy_timeout(timeout);
                SqliteConnection::connect_with(&options)
                    .await
                    .map(Db::Sqlite)
                    .map_err(|e| connect_error(&shown, e))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(StepError::retryable(format!(
            "connecting to {shown} took longer than {}: check that the server is up and reachable (pg_isready), \
             or raise `connect_timeout`",
            humantime::format_duration(timeout)
        ))),
    }
}

fn connect_error(shown: &str, e: sqlx::Error) -> StepError {
    let text = mask_password(&e.to_string());
    let (hint, retryable) = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => (
            "check that the server is up and listening (pg_isready), then run again",
            true,
        ),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => (
                "the user or password is wrong: check the credentials the URL refers to",
                false,
            ),
            Some("3D000") => (
                "the database does not exist: check its name in the URL",
                false,
            ),
            Some("57P03") => (
                "the server is starting up or shutting down: run again",
                true,
            ),
            Some("53300") => ("the server has no free connection slots: run again", true),
            _ => ("see the server's message", false),
        },
        sqlx::Error::Tls(_) => (
            "TLS failed: check sslmode and the server's certificate",
            false,
        ),
        _ => ("see the cause", false),
    };
    let message = format!("cannot connect to {shown}: {text}; {hint}");
    if retryable {
        StepError::retryable(message)
    } else {
        StepError::fatal(message)
    }
}

/// Makes sure a step error carries no secret the context knows about.
pub(crate) fn redact_error(ctx: &StepContext, e: StepError) -> StepError {
    e.redacted(|text| ctx.redact(text))
}

/// A database error as a step error, with what was being done.
pub(crate) fn query_error(what: &str, e: sqlx::Error) -> StepError {
    let text = mask_password(&e.to_string());
    let retryable = matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        || matches!(&e, sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("40001") | Some("40P01") | Some("55P03")));
    let message = format!("{what}: {text}");
    if retryable {
        StepError::retryable(message)
    } else {
        StepError::fatal(message)
    }
}

/// Quotes an identifier (table, column, schema) for PostgreSQL and SQLite:
/// wrapped in double quotes, inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`, or `"table"` without a schema.
pub fn qualified(schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(table)),
        None => quote_ident(table),
    }
}

impl Db {
    /// PostgreSQL or SQLite.
    pub fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs `SELECT 1` and returns how long it took.
    pub async fn ping(&mut self) -> Result<Duration, StepError> {
        let started = Instant::now();
        with_conn!(self, c => c.ping().await).map_err(|e| query_error("SELECT 1 failed", e))?;
        let one: i32 = with_conn!(self, c => sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *c).await)
            .map_err(|e| query_error("SELECT 1 failed", e))?;
        if one != 1 {
            return Err(StepError::fatal(format!("SELECT 1 returned {one}")));
        }
        Ok(started.elapsed())
    }

    /// Runs a script of one or more statements (no bind parameters), outside
    /// any transaction this code opens.
    pub async fn execute_script(&mut self, sql: &str) -> Result<u64, StepError> {
        with_conn!(self, c => sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql)).await.map(|r| r.rows_affected()))
            .map_err(|e| query_error("the SQL failed", e))
    }

    /// The first column of the first row of `sql` as text (NULL → `None`),
    /// whatever its type: the query runs over the simple protocol, so
    /// PostgreSQL sends text, and SQLite converts. `Ok(None)` also when there
    /// is no row; the bool says whether there was one.
    pub async fn scalar_text(&mut self, sql: &str) -> Result<(bool, Option<String>), StepError> {
        let row = with_conn!(self, c => {
            match sqlx::Executor::fetch_optional(&mut *c, sqlx::raw_sql(sql)).await {
                Ok(Some(row)) => {
                    if row.columns().is_empty() {
                        Ok((true, None))
                    } else {
                        row.try_get_unchecked::<Option<String>, _>(0).map(|v| (true, v))
                    }
                }
                Ok(None) => Ok((false, None)),
                Err(e) => Err(e),
            }
        });
        row.map_err(|e| query_error("the query failed", e))
    }

    /// Whether a table exists (in `schema`, else in the current schema / the
    /// main SQLite database). Names are compared exactly (as stored).
    pub async fn table_exists(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<bool, StepError> {
        let found: Result<i64, sqlx::Error> = match self {
            Db::Postgres(c) => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.tables \
                     WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
                )
                .bind(schema)
                .bind(table)
                .fetch_one(&mut *c)
                .await
            }
            Db::Sqlite(c) => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
                )
                .bind(table)
                .fetch_one(&mut *c)
                .await
            }
        };
        found
            .map(|n| n > 0)
            .map_err(|e| query_error(&format!("looking up table {table}"), e))
    }

    /// The columns of a table, in order (empty when it does not exist).
    pub async fn columns(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<String>, StepError> {
        let found: Result<Vec<String>, sqlx::Error> = match self {
            Db::Postgres(c) => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2 \
                     ORDER BY ordinal_position",
                )
                .bind(schema)
                .bind(table)
                .fetch_all(&mut *c)
                .await
            }
            Db::Sqlite(c) => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                    .bind(table)
                    .fetch_all(&mut *c)
                    .await
            }
        };
        found.map_err(|e| query_error(&format!("listing the columns of {table}"), e))
    }

    /// `SELECT COUNT(*)` of a table, or of its rows where `column` is not
    /// NULL; identifiers quoted.
    pub async fn count_rows(
        &mut self,
        schema: Option<&str>,
        table: &str,
        column: Option<&str>,
    ) -> Result<i64, StepError> {
        let mut sql = format!("SELECT COUNT(*) FROM {}", qualified(schema, table));
        if let Some(column) = column {
            sql.push_str(&format!(" WHERE {} IS NOT NULL", quote_ident(column)));
        }
        with_conn!(self, c => sqlx::query_scalar::<_, i64>(&sql).fetch_one(&mut *c).await).map_err(
            |e| {
                query_error(
                    &format!("counting the rows of {}", qualified(schema, table)),
                    e,
                )
            },
        )
    }

    /// Makes this session read-only (PostgreSQL: every transaction READ ONLY;
    /// SQLite: `PRAGMA query_only`), so a check or a preview cannot change
    /// anything whatever SQL it is given.
    pub async fn set_read_only(&mut self) -> Result<(), StepError> {
        let sql = match self {
            Db::Postgres(_) => "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            Db::Sqlite(_) => "PRAGMA query_only = ON",
        };
        self.execute_script(sql).await.map(|_| ())
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = with_conn!(self, c => c.close().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_the_backend() {
        let pg = DbUrl::parse("postgres://u:p@localhost:5432/shop").unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.database(), "shop");
        let pg = DbUrl::parse("postgresql://localhost/shop").unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        let lite = DbUrl::parse("sqlite:///var/lib/app.db?mode=rw").unwrap();
        assert_eq!(lite.backend(), Backend::Sqlite);
        assert_eq!(
            lite.sqlite_path().unwrap(),
            std::path::Path::new("/var/lib/app.db")
        );
        let lite = DbUrl::parse("sqlite:app.db").unwrap();
        assert_eq!(lite.sqlite_path().unwrap(), std::path::Path::new("app.db"));
        let file = DbUrl::parse("./data/app.db").unwrap();
        assert_eq!(file.backend(), Backend::Sqlite);
        assert_eq!(file.database(), "./data/app.db");
        assert!(DbUrl::parse("mysql://localhost/x")
            .unwrap_err()
            .contains("mysql://"));
        assert!(DbUrl::parse("sqlite::memory:").is_err());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:s3cr:et@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            mask_password("postgres://db/shop?user=app&password=hunter2"),
            "postgres://db/shop?user=app&password=***"
        );
        assert_eq!(
            mask_password("postgres://app@db/shop"),
            "postgres://app@db/shop"
        );
        let url = DbUrl::parse("postgres://app:hunter2@db/shop").unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            quote_ident(r#"Order "Items"; DROP"#),
            r#""Order ""Items""; DROP""#
        );
        assert_eq!(qualified(Some("My Schema"), "t"), r#""My Schema"."t""#);
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::parse(&dir.path().join("nope.db").display().to_string()).unwrap();
        let err = connect_url(&url, Duration::from_secs(2)).await.unwrap_err();
        assert!(
            err.message().contains("no SQLite database at"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_hides_the_password() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = DbUrl::parse(&format!("postgres://app:hunter2@127.0.0.1:{port}/shop")).unwrap();
        let err = connect_url(&url, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.is_retryable(), "{}", err.message());
        assert!(!err.full_message().contains("hunter2"));
        assert!(
            err.message().contains("app:***@127.0.0.1"),
            "{}",
            err.message()
        );
    }
}
