//! The checks (`db.ping`, `db.query`, `db.schema_version`, `db.row_counts`)
//! and `db.sql` against the real PostgreSQL started by
//! scripts/testenv/postgres.sh; each test in a database of its own.

mod support;

use rollback_core::{Outcome, Step, Verifier};
use rollback_db::sql::{Sql, SqlConfig};
use rollback_db::verify::{
    Ping, PingConfig, Query, QueryConfig, SchemaVersion, SchemaVersionConfig,
};
use serde_json::json;
use support::*;

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL);
INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 20) g;
CREATE TABLE users (id bigint PRIMARY KEY);
INSERT INTO users SELECT g FROM generate_series(1, 5) g;";

#[tokio::test]
async fn ping_passes_and_a_dead_server_fails_without_showing_the_password() {
    let Some(db) = PgTestDb::create("ping").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ping = Ping::new(config::<PingConfig>(json!({"url": db.url}))).unwrap();
    let m = ping.check(&ctx(&tmp)).await.unwrap();
    assert!(m.passed, "{m:?}");
    assert!(m.observed.starts_with("answered in "), "{}", m.observed);

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = Ping::new(config::<PingConfig>(json!({
        "url": format!("postgres://app:Secret-Pw-123@127.0.0.1:{port}/shop"),
        "connect_timeout": "2s"
    })))
    .unwrap();
    let m = dead.check(&ctx(&tmp)).await.unwrap();
    assert!(!m.passed);
    assert!(m.observed.contains("cannot connect"), "{}", m.observed);
    assert!(!m.observed.contains("Secret-Pw-123"), "{}", m.observed);
}

#[tokio::test]
async fn the_seeds_corruption_check_with_db_query() {
    let Some(db) = PgTestDb::create("query").await else {
        return;
    };
    db.exec(ORDERS).await;
    let tmp = tempfile::tempdir().unwrap();
    let check = Query::new(config::<QueryConfig>(json!({
        "url": db.url,
        "query": "SELECT COUNT(*) FROM orders WHERE total < 0",
        "equals": 0
    })))
    .unwrap();
    let m = check.check(&ctx(&tmp)).await.unwrap();
    assert!(m.passed, "{m:?}");
    assert_eq!((m.observed.as_str(), m.expected.as_str()), ("0", "= 0"));

    db.exec("INSERT INTO orders VALUES (1000, -5)").await;
    let m = check.check(&ctx(&tmp)).await.unwrap();
    assert!(!m.passed);
    assert_eq!(m.observed, "1");

    // Any type comes back as text: a numeric sum against bounds.
    let sum = Query::new(config::<QueryConfig>(json!({
        "url": db.url,
        "query": "SELECT SUM(total) FROM orders WHERE id <= 20",
        "at_least": 300, "at_most": 320
    })))
    .unwrap();
    let m = sum.check(&ctx(&tmp)).await.unwrap();
    assert!(m.passed, "{m:?}");
    assert_eq!(m.observed, "315.0");

    // Checks run read-only: a query that writes cannot.
    let writer = Query::new(config::<QueryConfig>(json!({
        "url": db.url,
        "query": "DELETE FROM orders RETURNING 1",
        "equals": 1
    })))
    .unwrap();
    let err = writer.check(&ctx(&tmp)).await.unwrap_err();
    assert!(err.message().contains("read-only"), "{}", err.message());
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 21);
}

#[tokio::test]
async fn row_counts_catch_a_deleted_row() {
    let Some(db) = PgTestDb::create("rows").await else {
        return;
    };
    db.exec(ORDERS).await;
    std::env::set_var("ROLLBACK_DB_TEST_VERIFY_ROWS_URL", &db.url);
    let plan = |change: &str| {
        format!(
            r#"
name: data-check
steps:
  - id: counts
    kind: db.row_counts_snapshot
    url: ${{env:ROLLBACK_DB_TEST_VERIFY_ROWS_URL}}
    tables: [orders, users]
  - id: change
    kind: db.sql
    after: [counts]
    url: ${{env:ROLLBACK_DB_TEST_VERIFY_ROWS_URL}}
    sql: "{change}"
verify:
  - name: nothing lost
    kind: db.row_counts
    url: ${{env:ROLLBACK_DB_TEST_VERIFY_ROWS_URL}}
    snapshot: counts
"#
        )
    };
    // New rows are fine.
    let report = run_plan(
        &plan("INSERT INTO users VALUES (100) ON CONFLICT DO NOTHING"),
        &[],
    )
    .await;
    assert_eq!(
        report.steps[0].outcome,
        Some(Outcome::Succeeded),
        "{:?}",
        report.steps[0].error
    );
    assert_eq!(
        report.steps[0].outputs["counts"],
        json!({"orders": 20, "users": 5})
    );
    assert!(report.checks[0].passed, "{:?}", report.checks[0]);

    // One deleted row is caught and named.
    let report = run_plan(&plan("DELETE FROM orders WHERE id = 7"), &[]).await;
    let check = &report.checks[0];
    assert!(!check.passed, "{check:?}");
    assert_eq!(
        check.observed,
        "orders: 19 (was 20, 1 lost); users: 6 (was 6)"
    );
    assert_eq!(
        check.expected,
        "no table has fewer rows than at snapshot `counts`"
    );
}

#[tokio::test]
async fn schema_version_of_each_ledger() {
    let Some(db) = PgTestDb::create("version").await else {
        return;
    };
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    let tmp = tempfile::tempdir().unwrap();
    let check = |cond: serde_json::Value| {
        let mut cfg = json!({"url": db.url});
        for (k, v) in cond.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        SchemaVersion::new(config::<SchemaVersionConfig>(cfg)).unwrap()
    };
    let m = check(json!({"equals": "20250115120000"}))
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(m.passed, "{m:?}");
    assert_eq!(m.observed, "version 20250115120000 (rails ledger)");
    let m = check(json!({"equals": "20250101000000"}))
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(!m.passed);
    let m = check(json!({"at_least": "20250110090000"}))
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(m.passed);

    let Some(golang) = PgTestDb::create("version2").await else {
        return;
    };
    golang
        .exec(&golang_migrated_sql(&golang_migrations()))
        .await;
    golang
        .exec("UPDATE schema_migrations SET dirty = true")
        .await;
    let dirty = SchemaVersion::new(config::<SchemaVersionConfig>(
        json!({"url": golang.url, "equals": "3"}),
    ))
    .unwrap()
    .check(&ctx(&tmp))
    .await
    .unwrap();
    assert!(!dirty.passed);
    assert!(
        dirty.observed.contains("dirty") && dirty.observed.contains("force"),
        "{}",
        dirty.observed
    );
}

#[tokio::test]
async fn db_sql_runs_in_one_transaction_and_again_safely() {
    let Some(db) = PgTestDb::create("sql").await else {
        return;
    };
    db.exec(ORDERS).await;
    let tmp = tempfile::tempdir().unwrap();
    // The seeds' migration rollback as an idempotent script.
    let script = "DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'total') THEN
        UPDATE orders SET total = 0 WHERE total < 0;
    END IF;
END $$;
DELETE FROM users WHERE id > 3;";
    let step = Sql::new(config::<SqlConfig>(json!({"url": db.url, "sql": script}))).unwrap();
    let preview = step.preview(&ctx(&tmp)).await.unwrap();
    assert!(preview.changes[0].contains("DELETE FROM users"));
    assert_eq!(
        db.scalar_i64("SELECT COUNT(*) FROM users").await,
        5,
        "preview changes nothing"
    );
    step.run(&ctx(&tmp)).await.expect("first run");
    step.run(&ctx(&tmp)).await.expect("second run is safe");
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM users").await, 3);

    // A failing statement rolls back the ones before it.
    let failing = Sql::new(config::<SqlConfig>(json!({
        "url": db.url,
        "sql": "DELETE FROM users; INSERT INTO no_such_table VALUES (1);"
    })))
    .unwrap();
    let err = failing.run(&ctx(&tmp)).await.unwrap_err();
    assert!(err.message().contains("rolled back"), "{}", err.message());
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM users").await, 3);
}

#[tokio::test]
async fn injection_shaped_names_in_row_counts() {
    let Some(db) = PgTestDb::create("evil").await else {
        return;
    };
    let schema = r#"Shop "EU"; DROP SCHEMA public; --"#;
    let table = r#"Order "Items"; DROP TABLE orders; --"#;
    db.exec(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.{t} (id int); INSERT INTO {s}.{t} VALUES (1), (2); CREATE TABLE orders (id int);",
        s = q(schema),
        t = q(table)
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = rollback_db::verify::RowCountsSnapshot::new(config(json!({
        "url": db.url, "schema": schema, "tables": [table]
    })))
    .unwrap();
    let outputs = snapshot.run(&ctx(&tmp)).await.expect("snapshot");
    assert_eq!(outputs["counts"][table], 2);
    assert_eq!(
        outputs["database"],
        serde_json::Value::String(db.name.clone())
    );
    assert!(db.has_table("orders").await);
    // A name that does not exist is reported, not guessed.
    let missing = rollback_db::verify::RowCountsSnapshot::new(config(json!({
        "url": db.url, "tables": ["ORDERS"]
    })))
    .unwrap();
    let err = missing.run(&ctx(&tmp)).await.unwrap_err();
    assert!(
        err.message().contains("\"ORDERS\" does not exist"),
        "{}",
        err.message()
    );
}

/// The pre-deployment checklist's "backup completed and verified": a real
/// pg_dump passes; a stale one, a damaged one, a plain SQL dump and an empty
/// folder fail, each saying why.
#[tokio::test]
async fn backup_ready_checks_the_newest_backup_is_recent_and_readable() {
    use rollback_db::backup::{Backup, BackupConfig};
    use rollback_db::backup_ready::{BackupReady, BackupReadyConfig};
    let Some(db) = PgTestDb::create("bkready").await else {
        return;
    };
    db.exec(ORDERS).await;
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let bin = std::env::var("PG_BIN_DIR").unwrap_or_default();
    let check = |extra: serde_json::Value| {
        let mut cfg = json!({"path": backups.to_str().unwrap(), "pg_bin_dir": bin});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        BackupReady::new(config::<BackupReadyConfig>(cfg)).unwrap()
    };

    let m = check(json!({})).check(&ctx(&tmp)).await.unwrap();
    assert!(!m.passed && m.observed.contains("no backup in"), "{m:?}");

    let taken = Backup::new(config::<BackupConfig>(json!({
        "url": db.url, "dir": backups.to_str().unwrap(), "pg_bin_dir": bin
    })))
    .unwrap()
    .run(&ctx(&tmp))
    .await
    .expect("backup");
    let path = taken["path"].as_str().unwrap().to_string();
    let m = check(json!({"max_age": "1h"}))
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(m.passed, "{m:?}");
    assert!(
        m.observed.contains(&path) && m.observed.contains("entries (pg_restore --list)"),
        "{m:?}"
    );

    // Two days old: readable, but too old for a 24h rule.
    let aged = std::process::Command::new("touch")
        .args(["-d", "2 days ago", &path])
        .status()
        .unwrap();
    assert!(aged.success());
    let m = check(json!({"max_age": "24h"}))
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(!m.passed, "{m:?}");
    assert!(m.observed.contains("2days"), "{m:?}");

    // A newer file that only looks like a dump is what preflight must catch.
    std::fs::write(backups.join("orders-newer.dump"), b"PGDMP backup bytes").unwrap();
    let m = check(json!({})).check(&ctx(&tmp)).await.unwrap();
    assert!(!m.passed, "{m:?}");
    assert!(
        m.observed.contains("orders-newer.dump") && m.observed.contains("pg_restore"),
        "{m:?}"
    );

    // Pointing at the real dump by name still passes; a plain SQL file fails.
    let m = BackupReady::new(config::<BackupReadyConfig>(
        json!({"path": path, "pg_bin_dir": bin}),
    ))
    .unwrap()
    .check(&ctx(&tmp))
    .await
    .unwrap();
    assert!(m.passed, "{m:?}");
    let plain = tmp.path().join("orders.sql");
    std::fs::write(&plain, "-- PostgreSQL database dump\nSELECT 1;\n").unwrap();
    let m = BackupReady::new(config::<BackupReadyConfig>(
        json!({"path": plain.to_str().unwrap()}),
    ))
    .unwrap()
    .check(&ctx(&tmp))
    .await
    .unwrap();
    assert!(!m.passed && m.observed.contains("pg_dump -Fc"), "{m:?}");
}
