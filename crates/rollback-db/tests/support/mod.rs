//! Shared helpers for the migrate and verify tests: a database of its own per
//! test on the PostgreSQL started by scripts/testenv/postgres.sh (its name
//! holds quotes, spaces, capitals and `; DROP`, so every identifier path is
//! exercised), dropped afterwards; SQLite files in a temporary directory; a
//! plan runner.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rollback_core::testing::require_env;
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunReport};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor as _};

/// The superuser URL of the test server, or `None` (the test is skipped)
/// when scripts/testenv/postgres.sh has not been run.
pub fn admin_url() -> Option<String> {
    require_env("DATABASE_URL")
}

/// Quotes an identifier.
pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `admin` with its database replaced by `db`, percent-encoded.
pub fn url_for(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").expect("a URL") + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut encoded = String::new();
    for b in db.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}/{encoded}{query}", &base[..path_start])
}

async fn connect_admin(admin: &str, db: &str) -> PgConnection {
    PgConnectOptions::from_str(admin)
        .expect("DATABASE_URL")
        .database(db)
        .disable_statement_logging()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {db:?}: {e}"))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL database of the test's own, dropped (WITH FORCE) when this
/// value goes away, even when the test panics.
pub struct PgTestDb {
    admin: String,
    /// The database's name, e.g. `Rb "mig" ;DROP 1a2b3c-4`.
    pub name: String,
    /// A URL for it (superuser).
    pub url: String,
}

impl PgTestDb {
    /// Creates a database named after `tag` with a quote, spaces, capitals
    /// and `;DROP` in it. `None`: no test server (skipped).
    pub async fn create(tag: &str) -> Option<PgTestDb> {
        let admin = admin_url()?;
        let unique = format!(
            "{:x}{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("Rb \"{tag}\" ;DROP {unique}");
        assert!(name.len() < 63, "name too long for PostgreSQL: {name}");
        let mut c = connect_admin(&admin, "postgres").await;
        c.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&name)).as_str())
            .await
            .unwrap();
        c.execute(format!("CREATE DATABASE {}", q(&name)).as_str())
            .await
            .unwrap();
        c.close().await.ok();
        let url = url_for(&admin, &name);
        Some(PgTestDb { admin, name, url })
    }

    /// A superuser connection to the database.
    pub async fn connect(&self) -> PgConnection {
        connect_admin(&self.admin, &self.name).await
    }

    /// Runs a script.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.connect().await;
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
    }

    /// A scalar.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut c = self.connect().await;
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
        n
    }

    /// The columns of `table`.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        let mut c = self.connect().await;
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut c)
        .await
        .unwrap();
        c.close().await.ok();
        cols
    }

    /// Whether `table` exists.
    pub async fn has_table(&self, table: &str) -> bool {
        let mut c = self.connect().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_one(&mut c)
        .await
        .unwrap();
        c.close().await.ok();
        n > 0
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside async: use a runtime of its own on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut c = connect_admin(&admin, "postgres").await;
                let _ = c
                    .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&name)).as_str())
                    .await;
                c.close().await.ok();
            });
        })
        .join();
    }
}

/// A SQLite database file in a temporary directory (removed with it).
pub struct SqliteTestDb {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The file.
    pub path: std::path::PathBuf,
    /// `sqlite://<path>`.
    pub url: String,
}

impl SqliteTestDb {
    /// Creates an empty database file; the file name has a quote, spaces and
    /// capitals.
    pub async fn create() -> SqliteTestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Shop \"Main\" DB.sqlite3");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let c = sqlx::sqlite::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        c.close().await.unwrap();
        let url = format!("sqlite://{}", path.display());
        SqliteTestDb { dir, path, url }
    }

    /// A connection.
    pub async fn connect(&self) -> sqlx::sqlite::SqliteConnection {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&self.path);
        sqlx::sqlite::SqliteConnection::connect_with(&options)
            .await
            .unwrap()
    }

    /// Runs a script.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.connect().await;
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
    }

    /// A scalar.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut c = self.connect().await;
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await.ok();
        n
    }

    /// The columns of `table`.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        let mut c = self.connect().await;
        let cols: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .bind(table)
                .fetch_all(&mut c)
                .await
                .unwrap();
        c.close().await.ok();
        cols
    }
}

/// A registry with core's kinds and this crate's.
pub fn registry() -> Registry {
    let mut registry = Registry::with_core_kinds();
    rollback_db::register(&mut registry);
    registry
}

/// Loads `yaml` (with `vars`) and runs it with a journal in a temporary
/// state directory.
pub async fn run_plan(yaml: &str, vars: &[(&str, &str)]) -> RunReport {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let plan = Plan::from_yaml(yaml, "plan.yaml", &registry(), &vars)
        .unwrap_or_else(|e| panic!("plan does not load:\n{e}"));
    let state = tempfile::tempdir().unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    executor
        .run(&plan, RunOptions::new("test"))
        .await
        .expect("the run starts")
}

/// Writes migration files into a new temporary directory.
pub fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

/// A standalone step context with a temporary run directory.
pub fn ctx(dir: &tempfile::TempDir) -> rollback_core::StepContext {
    rollback_core::StepContext::standalone("test", dir.path())
}

/// Builds a kind's configuration from JSON, as the plan loader would.
pub fn config<C: serde::de::DeserializeOwned>(value: serde_json::Value) -> C {
    serde_json::from_value(value).expect("configuration")
}

/// The seeds' orders schema as three migrations (they run on PostgreSQL and
/// SQLite alike): `(version, name, up, down)`. The last one is the seeds'
/// 20250115120000: it adds `orders.new_field`.
pub const MIGRATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "20250101000000",
        "create_orders",
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric NOT NULL CHECK (amount > 0), total numeric NOT NULL);\n",
        "DROP TABLE orders;\n",
    ),
    (
        "20250110090000",
        "create_customers",
        "CREATE TABLE \"Customers\" (id bigint PRIMARY KEY, \"Name\" text);\n",
        "DROP TABLE \"Customers\";\n",
    ),
    (
        "20250115120000",
        "add_new_field",
        "ALTER TABLE orders ADD COLUMN new_field text;\nCREATE INDEX orders_new_field ON orders (new_field);\n",
        "DROP INDEX orders_new_field;\nALTER TABLE orders DROP COLUMN new_field;\n",
    ),
];

/// The same migrations numbered 1, 2, 3 the way golang-migrate users do
/// (`000001_create_orders.up.sql`).
pub fn golang_migrations() -> Vec<(String, String, String, String)> {
    MIGRATIONS
        .iter()
        .enumerate()
        .map(|(i, (_, name, up, down))| {
            (
                format!("{:06}", i + 1),
                name.to_string(),
                up.to_string(),
                down.to_string(),
            )
        })
        .collect()
}

/// Writes `<version>_<name>.up.sql` / `.down.sql` files.
pub fn write_migrations<V: AsRef<str>>(migrations: &[(V, V, V, V)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (version, name, up, down) in migrations {
        let (version, name) = (version.as_ref(), name.as_ref());
        std::fs::write(
            dir.path().join(format!("{version}_{name}.up.sql")),
            up.as_ref(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{version}_{name}.down.sql")),
            down.as_ref(),
        )
        .unwrap();
    }
    dir
}

/// SQL that applies every migration and records it the way Rails does.
pub fn rails_migrated_sql<V: AsRef<str>>(migrations: &[(V, V, V, V)]) -> String {
    let mut sql =
        "CREATE TABLE schema_migrations (version varchar(255) PRIMARY KEY);\n".to_string();
    for (version, _, up, _) in migrations {
        sql.push_str(up.as_ref());
        sql.push_str(&format!(
            "INSERT INTO schema_migrations (version) VALUES ('{}');\n",
            version.as_ref()
        ));
    }
    sql
}

/// SQL that applies every migration and records the last one the way
/// golang-migrate does (one row, `dirty = false`).
pub fn golang_migrated_sql<V: AsRef<str>>(migrations: &[(V, V, V, V)]) -> String {
    let mut sql =
        "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);\n".to_string();
    for (_, _, up, _) in migrations {
        sql.push_str(up.as_ref());
    }
    let last: i64 = migrations.last().unwrap().0.as_ref().parse().unwrap();
    sql.push_str(&format!(
        "INSERT INTO schema_migrations (version, dirty) VALUES ({last}, false);\n"
    ));
    sql
}
