//! Helpers shared by the backup, restore, read-only and journal tests: a
//! database of its own per test on the server started by
//! scripts/testenv/postgres.sh.
#![allow(dead_code)]

use std::str::FromStr;

use rollback_core::testing::require_env;
use rollback_core::StepContext;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};

/// The superuser URL of the test server, or `None` (skipped) when it is not running.
pub fn admin_url() -> Option<String> {
    require_env("DATABASE_URL")
}

/// PG_BIN_DIR from the test environment.
pub fn bin_dir() -> Option<String> {
    std::env::var("PG_BIN_DIR").ok().filter(|s| !s.is_empty())
}

/// `admin` with its database replaced by `db` (percent-encoded).
pub fn url_for(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").unwrap() + 3;
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

/// Connects to `db` as the superuser.
pub async fn connect(admin: &str, db: &str) -> PgConnection {
    PgConnectOptions::from_str(admin)
        .unwrap()
        .database(db)
        .disable_statement_logging()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// Quotes an identifier.
pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops every database whose name starts with `prefix` (leftovers of an
/// earlier run of the same test), then creates `name`.
pub async fn fresh_db(admin: &str, name: &str) {
    let mut conn = connect(admin, "postgres").await;
    let prefix = &name[..name.len().min(20)];
    let old: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE left(datname, $2) = $1")
            .bind(prefix)
            .bind(prefix.chars().count() as i32)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for db in old {
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&db)).as_str())
            .await
            .unwrap();
    }
    conn.execute(format!("CREATE DATABASE {}", q(name)).as_str())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Names of the databases whose name starts with `prefix`.
pub async fn databases_like(admin: &str, prefix: &str) -> Vec<String> {
    let mut conn = connect(admin, "postgres").await;
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE left(datname, $2) = $1 ORDER BY datname",
    )
    .bind(prefix)
    .bind(prefix.chars().count() as i32)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    names.sort();
    names
}

/// A context for running a step outside a plan, with its artifacts in `dir`.
pub fn ctx(step: &str, dir: &std::path::Path) -> StepContext {
    StepContext::standalone(step, dir)
}

/// Builds a step kind from JSON configuration.
pub fn config<C: serde::de::DeserializeOwned>(value: serde_json::Value) -> C {
    serde_json::from_value(value).expect("configuration")
}

/// `admin` URL with the user and password replaced and database `db`.
pub fn url_with_user(admin: &str, user: &str, password: &str, db: &str) -> String {
    let url = url_for(admin, db);
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').unwrap().1;
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!("{scheme}://{}:{}@{host}", enc(user), enc(password))
}

/// A verified pg_dump of `db` taken with `db.backup` into `dir` (the "last
/// clean backup" of a procedure); returns its path.
pub async fn clean_backup(admin: &str, db: &str, dir: &std::path::Path) -> String {
    use rollback_core::Step;
    let step = rollback_db::backup::Backup::new(config(serde_json::json!({
        "url": url_for(admin, db),
        "dir": dir.to_str().expect("UTF-8 path"),
        "pg_bin_dir": bin_dir(),
    })))
    .expect("backup config");
    let outputs = step
        .run(&ctx("clean_backup", dir))
        .await
        .expect("clean backup");
    outputs["path"].as_str().expect("path").to_string()
}

/// Creates `role` with `options` (e.g. `LOGIN PASSWORD 'pw'`) unless it exists:
/// roles are server-wide, shared by the tests' databases.
pub async fn ensure_role(admin: &str, role: &str, options: &str) {
    let mut c = connect(admin, "postgres").await;
    let exists: bool =
        sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut c)
            .await
            .unwrap();
    if !exists {
        c.execute(format!("CREATE ROLE {} {options}", q(role)).as_str())
            .await
            .unwrap();
    }
    c.close().await.unwrap();
}

/// Runs `sql` (several statements allowed) in database `db` as the superuser.
pub async fn exec_in(admin: &str, db: &str, sql: &str) {
    let mut c = connect(admin, db).await;
    c.execute(sql).await.unwrap();
    c.close().await.unwrap();
}

/// Drops, when it goes away (also when the test fails), every database
/// whose name starts with one of `prefixes`: what a test created.
pub struct DropDatabases {
    /// The superuser URL.
    pub admin: String,
    /// Name prefixes of the test's databases.
    pub prefixes: Vec<String>,
}

impl Drop for DropDatabases {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let prefixes = self.prefixes.clone();
        // Drop runs outside async: a runtime of its own on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for prefix in prefixes {
                    for db in databases_like(&admin, &prefix).await {
                        exec_in(
                            &admin,
                            "postgres",
                            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&db)),
                        )
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

/// Drops the test's databases (named by `prefixes`) when the test ends.
pub fn drop_at_end(admin: &str, prefixes: &[&str]) -> DropDatabases {
    DropDatabases {
        admin: admin.to_string(),
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
    }
}
