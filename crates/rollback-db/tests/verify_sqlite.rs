//! The checks and `db.sql` on SQLite files (no server needed).

mod support;

use rollback_core::{Step, Verifier};
use rollback_db::sql::{Sql, SqlConfig};
use rollback_db::verify::{
    Ping, PingConfig, Query, QueryConfig, SchemaVersion, SchemaVersionConfig,
};
use serde_json::json;
use support::*;

const ORDERS: &str = "CREATE TABLE orders (id integer PRIMARY KEY, total numeric NOT NULL);
INSERT INTO orders (id, total) VALUES (1, 10.5), (2, 20), (3, 30);";

#[tokio::test]
async fn ping_and_query_on_sqlite() {
    let db = SqliteTestDb::create().await;
    db.exec(ORDERS).await;
    let tmp = tempfile::tempdir().unwrap();
    let m = Ping::new(config::<PingConfig>(json!({"url": db.url})))
        .unwrap()
        .check(&ctx(&tmp))
        .await
        .unwrap();
    assert!(m.passed, "{m:?}");
    let missing = Ping::new(config::<PingConfig>(
        json!({"url": tmp.path().join("gone.db").display().to_string()}),
    ))
    .unwrap()
    .check(&ctx(&tmp))
    .await
    .unwrap();
    assert!(!missing.passed);
    assert!(
        missing.observed.contains("no SQLite database"),
        "{}",
        missing.observed
    );

    let corrupt = Query::new(config::<QueryConfig>(json!({
        "url": db.url,
        "query": "SELECT COUNT(*) FROM orders WHERE total < 0",
        "equals": 0
    })))
    .unwrap();
    assert!(corrupt.check(&ctx(&tmp)).await.unwrap().passed);
    db.exec("INSERT INTO orders VALUES (4, -1)").await;
    let m = corrupt.check(&ctx(&tmp)).await.unwrap();
    assert!(!m.passed);
    assert_eq!(m.observed, "1");

    // Read-only: a write through a check is refused and changes nothing.
    let writer = Query::new(config::<QueryConfig>(json!({
        "url": db.url, "query": "DELETE FROM orders RETURNING 1", "equals": 1
    })))
    .unwrap();
    assert!(writer.check(&ctx(&tmp)).await.is_err());
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 4);
}

#[tokio::test]
async fn row_counts_catch_a_deleted_row_on_sqlite() {
    let db = SqliteTestDb::create().await;
    db.exec(ORDERS).await;
    db.exec("CREATE TABLE \"Line \"\"Items\"\"\" (id integer); INSERT INTO \"Line \"\"Items\"\"\" VALUES (1), (2);")
        .await;
    let plan = format!(
        r#"
name: data-check
steps:
  - id: counts
    kind: db.row_counts_snapshot
    url: "sqlite://${{var:path}}"
    tables: [orders, 'Line "Items"']
  - id: change
    kind: db.sql
    after: [counts]
    url: "sqlite://${{var:path}}"
    sql: "DELETE FROM orders WHERE id = 2"
verify:
  - name: nothing lost
    kind: db.row_counts
    url: "sqlite://${{var:path}}"
    snapshot: counts
  - name: schema
    kind: db.query
    url: "${{var:path}}"
    query: "SELECT COUNT(*) FROM orders"
    equals: 2
vars:
  path: '{}'
"#,
        db.path.display()
    );
    let report = run_plan(&plan, &[]).await;
    assert_eq!(report.steps[1].outputs["rows_affected"], 1, "{report:?}");
    let rows = &report
        .checks
        .iter()
        .find(|c| c.name == "nothing lost")
        .unwrap();
    assert!(!rows.passed);
    assert_eq!(
        rows.observed,
        "Line \"Items\": 2 (was 2); orders: 2 (was 3, 1 lost)"
    );
    assert!(
        report
            .checks
            .iter()
            .find(|c| c.name == "schema")
            .unwrap()
            .passed
    );
}

#[tokio::test]
async fn schema_version_and_db_sql_on_sqlite() {
    let db = SqliteTestDb::create().await;
    let dir = write_migrations(MIGRATIONS);
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut c = db.connect().await;
    migrator.run(&mut c).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let m = SchemaVersion::new(config::<SchemaVersionConfig>(
        json!({"url": db.url, "equals": "20250115120000"}),
    ))
    .unwrap()
    .check(&ctx(&tmp))
    .await
    .unwrap();
    assert!(m.passed, "{m:?}");
    assert_eq!(m.observed, "version 20250115120000 (sqlx ledger)");

    let step = Sql::new(config::<SqlConfig>(json!({
        "url": db.url,
        "sql": "INSERT INTO orders (id, amount, total) VALUES (1, 1, 1) ON CONFLICT DO NOTHING; UPDATE orders SET total = 2;",
        "undo_sql": "DELETE FROM orders WHERE id = 1"
    })))
    .unwrap();
    let outputs = step.run(&ctx(&tmp)).await.unwrap();
    step.run(&ctx(&tmp)).await.unwrap();
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 1);
    step.undo(&ctx(&tmp), &outputs).await.unwrap();
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 0);
}
