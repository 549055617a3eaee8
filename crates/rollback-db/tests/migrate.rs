//! `db.migrate_down` against the real PostgreSQL started by
//! scripts/testenv/postgres.sh; each test in a database of its own whose name
//! holds quotes, spaces, capitals and `;DROP`.

mod support;

use rollback_core::{Outcome, Step};
use rollback_db::migrate::{MigrateDown, MigrateDownConfig};
use serde_json::{json, Value};
use sqlx::migrate::{Migrate, Migrator};
use support::*;

fn step(url: &str, dir: &tempfile::TempDir, extra: Value) -> MigrateDown {
    let mut cfg = json!({"url": url, "migrations": dir.path().display().to_string()});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    MigrateDown::new(config::<MigrateDownConfig>(cfg)).expect("valid config")
}

fn reverted(outputs: &rollback_core::Outputs) -> Vec<String> {
    outputs["reverted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn rails_versions(db: &PgTestDb) -> Vec<String> {
    let mut c = db.connect().await;
    let v: Vec<String> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut c)
            .await
            .unwrap();
    v
}

async fn golang_row(db: &PgTestDb) -> Vec<(i64, bool)> {
    let mut c = db.connect().await;
    sqlx::query_as("SELECT version, dirty FROM schema_migrations")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn rails_ledger_down_to_a_version_is_idempotent_and_undo_goes_up_again() {
    let Some(db) = PgTestDb::create("rails").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);
    let down = step(&db.url, &dir, json!({"to_version": "20250101000000"}));

    let outputs = down.run(&ctx).await.expect("migrate down");
    assert_eq!(outputs["ledger"], "rails");
    assert_eq!(reverted(&outputs), ["20250115120000", "20250110090000"]);
    assert_eq!(outputs["version_before"], "20250115120000");
    assert_eq!(outputs["version_after"], "20250101000000");
    assert_eq!(outputs["database"], Value::String(db.name.clone()));
    assert_eq!(rails_versions(&db).await, ["20250101000000"]);
    // The target stays applied; what came after it is gone.
    assert!(db.has_table("orders").await);
    assert!(!db.has_table("Customers").await);
    assert!(!db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));

    // Running it again changes nothing.
    let again = down.run(&ctx).await.expect("second run");
    assert!(reverted(&again).is_empty());
    assert_eq!(rails_versions(&db).await, ["20250101000000"]);
    let preview = down.preview(&ctx).await.unwrap();
    assert!(preview.changes.is_empty(), "{preview:?}");

    // Up again: undo re-applies the up files and records them.
    down.undo(&ctx, &outputs).await.expect("undo");
    assert_eq!(
        rails_versions(&db).await,
        ["20250101000000", "20250110090000", "20250115120000"]
    );
    assert!(db.has_table("Customers").await);
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
    // Undo is idempotent too.
    down.undo(&ctx, &outputs).await.expect("second undo");
    assert_eq!(rails_versions(&db).await.len(), 3);
}

#[tokio::test]
async fn golang_migrate_ledger_down_by_steps_and_up_again() {
    let Some(db) = PgTestDb::create("golang").await else {
        return;
    };
    let migrations = golang_migrations();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);

    let one = step(&db.url, &dir, json!({"steps": 1}));
    let outputs = one.run(&ctx).await.expect("down one step");
    assert_eq!(outputs["ledger"], "golang_migrate");
    assert_eq!(reverted(&outputs), ["000003"]);
    assert_eq!(golang_row(&db).await, [(2, false)]);
    assert!(!db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));

    // To version 0: everything goes, and the ledger is emptied as
    // golang-migrate leaves it below its first migration.
    let all = step(&db.url, &dir, json!({"to_version": "0"}));
    let outputs_all = all.run(&ctx).await.expect("down to 0");
    assert_eq!(reverted(&outputs_all), ["000002", "000001"]);
    assert!(golang_row(&db).await.is_empty());
    assert!(!db.has_table("orders").await);
    let again = all.run(&ctx).await.expect("no-op");
    assert!(reverted(&again).is_empty());

    // Up again, in the order they were reverted.
    all.undo(&ctx, &outputs_all).await.expect("undo to 2");
    assert_eq!(golang_row(&db).await, [(2, false)]);
    one.undo(&ctx, &outputs).await.expect("undo to 3");
    assert_eq!(golang_row(&db).await, [(3, false)]);
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
}

#[tokio::test]
async fn a_dirty_golang_migrate_ledger_is_refused_with_guidance() {
    let Some(db) = PgTestDb::create("dirty").await else {
        return;
    };
    let migrations = golang_migrations();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations)).await;
    db.exec("UPDATE schema_migrations SET dirty = true").await;
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"steps": 1}));

    let err = down.run(&ctx(&tmp)).await.unwrap_err();
    let message = err.message();
    assert!(message.contains("version 3 is dirty"), "{message}");
    assert!(message.contains("force"), "{message}");
    assert!(message.contains("never clears"), "{message}");
    assert!(!err.is_retryable());
    // Nothing was touched: still dirty, schema intact.
    assert_eq!(golang_row(&db).await, [(3, true)]);
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
    // The preview says the same instead of planning anything.
    assert!(down.preview(&ctx(&tmp)).await.is_err());
}

#[tokio::test]
async fn sqlx_ledger_agrees_with_sqlx_migrator() {
    let Some(db) = PgTestDb::create("sqlx").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    let migrator = Migrator::new(dir.path()).await.unwrap();
    let mut c = db.connect().await;
    migrator.run(&mut c).await.expect("sqlx migrate run");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);

    let down = step(&db.url, &dir, json!({"to_version": "20250101000000"}));
    let outputs = down.run(&ctx).await.expect("migrate down");
    assert_eq!(outputs["ledger"], "sqlx");
    assert_eq!(reverted(&outputs), ["20250115120000", "20250110090000"]);

    // sqlx's own view: only the first migration applied, nothing dirty.
    let applied: Vec<i64> = c
        .list_applied_migrations()
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied, [20250101000000]);
    assert_eq!(c.dirty_version().await.unwrap(), None);
    assert!(!db.has_table("Customers").await);

    // sqlx's Migrator brings it up again (checksums of what is left agree).
    migrator
        .run(&mut c)
        .await
        .expect("sqlx migrate run after our down");
    assert_eq!(c.list_applied_migrations().await.unwrap().len(), 3);
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));

    // Our down and our undo: sqlx accepts the rows undo wrote.
    let one = step(&db.url, &dir, json!({"steps": 1}));
    let outputs = one.run(&ctx).await.expect("one step");
    assert_eq!(reverted(&outputs), ["20250115120000"]);
    one.undo(&ctx, &outputs).await.expect("undo");
    migrator
        .run(&mut c)
        .await
        .expect("sqlx agrees with the rows undo recorded (same checksums)");
    let applied = c.list_applied_migrations().await.unwrap();
    assert_eq!(applied.len(), 3);
    let mine = applied
        .iter()
        .find(|m| m.version == 20250115120000)
        .unwrap();
    let theirs = migrator
        .iter()
        .find(|m| m.version == 20250115120000 && m.migration_type.is_up_migration())
        .unwrap();
    assert_eq!(mine.checksum, theirs.checksum);
}

#[tokio::test]
async fn no_transaction_migrations_run_outside_a_transaction() {
    let Some(db) = PgTestDb::create("notx").await else {
        return;
    };
    let migrations = [
        (
            "1",
            "create_orders",
            "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric);",
            "DROP TABLE orders;",
        ),
        (
            "2",
            "index_total",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_total ON orders (total);",
            // CONCURRENTLY cannot run inside a transaction block.
            "-- no-transaction\nDROP INDEX CONCURRENTLY orders_total;",
        ),
    ];
    let dir = write_migrations(&migrations);
    let migrator = Migrator::new(dir.path()).await.unwrap();
    let mut c = db.connect().await;
    migrator.run(&mut c).await.expect("sqlx migrate run");
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"steps": 1}));
    let preview = down.preview(&ctx(&tmp)).await.unwrap();
    assert!(
        preview.changes[0].contains("without a transaction"),
        "{preview:?}"
    );
    let outputs = down
        .run(&ctx(&tmp))
        .await
        .expect("down without a transaction");
    assert_eq!(reverted(&outputs), ["2"]);
    let indexes = db
        .scalar_i64("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'orders_total'")
        .await;
    assert_eq!(indexes, 0);
    migrator.run(&mut c).await.expect("and up again with sqlx");
}

#[tokio::test]
async fn a_failing_down_migration_changes_nothing() {
    let Some(db) = PgTestDb::create("fail").await else {
        return;
    };
    let mut migrations: Vec<(String, String, String, String)> = MIGRATIONS
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    // The second statement fails after the first has dropped the index.
    migrations[2].3 =
        "DROP INDEX orders_new_field;\nALTER TABLE no_such_table DROP COLUMN x;\n".into();
    let dir = write_migrations(&migrations);
    db.exec(&rails_migrated_sql(&migrations)).await;
    let tmp = tempfile::tempdir().unwrap();
    let err = step(&db.url, &dir, json!({"steps": 2}))
        .run(&ctx(&tmp))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("reverting 20250115120000"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("rolled back"), "{}", err.message());
    assert_eq!(rails_versions(&db).await.len(), 3);
    let index = db
        .scalar_i64("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'orders_new_field'")
        .await;
    assert_eq!(
        index, 1,
        "the DROP INDEX before the failure was rolled back"
    );
}

#[tokio::test]
async fn the_data_loss_guard_stops_a_drop_column_with_rows() {
    let Some(db) = PgTestDb::create("guard").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    db.exec("INSERT INTO orders (id, amount, total, new_field) VALUES (1, 10, 10, 'gift'), (2, 5, 5, NULL)")
        .await;
    let tmp = tempfile::tempdir().unwrap();

    let guarded = step(&db.url, &dir, json!({"steps": 1}));
    let preview = guarded.preview(&ctx(&tmp)).await.unwrap();
    assert!(
        preview
            .changes
            .iter()
            .any(|c| c.contains("column orders.new_field holding values in 1 rows")),
        "{preview:?}"
    );
    let err = guarded.run(&ctx(&tmp)).await.unwrap_err();
    let message = err.message();
    assert!(
        message.contains("stopped before changing anything"),
        "{message}"
    );
    assert!(
        message.contains("column orders.new_field holding values in 1 rows"),
        "{message}"
    );
    assert!(message.contains("allow_data_loss: true"), "{message}");
    assert_eq!(rails_versions(&db).await.len(), 3);
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));

    // An empty column is no loss.
    db.exec("UPDATE orders SET new_field = NULL").await;
    let outputs = guarded.run(&ctx(&tmp)).await.expect("nothing to lose");
    assert_eq!(reverted(&outputs), ["20250115120000"]);
    guarded.undo(&ctx(&tmp), &outputs).await.unwrap();

    // With allow_data_loss the plan takes responsibility.
    db.exec("UPDATE orders SET new_field = 'gift'").await;
    let allowed = step(&db.url, &dir, json!({"steps": 1, "allow_data_loss": true}));
    let outputs = allowed.run(&ctx(&tmp)).await.expect("allowed");
    assert_eq!(reverted(&outputs), ["20250115120000"]);
    assert!(!db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 2);
}

#[tokio::test]
async fn a_verified_backup_earlier_in_the_run_lets_the_drop_through() {
    let Some(db) = PgTestDb::create("bkp").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    db.exec("INSERT INTO orders (id, amount, total, new_field) VALUES (1, 10, 10, 'gift')")
        .await;
    let bin = std::env::var("PG_BIN_DIR").unwrap_or_default();
    // The URL (with its password) comes from the environment, as in a real
    // plan: a secret, redacted everywhere.
    std::env::set_var("ROLLBACK_DB_TEST_MIGRATE_BKP_URL", &db.url);
    let plan = format!(
        r#"
name: migration-rollback
steps:
  - id: safety_backup
    kind: db.backup
    url: "${{env:ROLLBACK_DB_TEST_MIGRATE_BKP_URL}}"
    pg_bin_dir: "{bin}"
  - id: migrate_down
    kind: db.migrate_down
    after: [safety_backup]
    url: "${{env:ROLLBACK_DB_TEST_MIGRATE_BKP_URL}}"
    migrations: "{dir}"
    steps: 1
"#,
        dir = dir.path().display()
    );
    let report = run_plan(&plan, &[]).await;
    let backup = &report.steps[0];
    assert_eq!(
        backup.outcome,
        Some(Outcome::Succeeded),
        "{:?}",
        backup.error
    );
    assert_eq!(backup.outputs["verified"], true);
    let down = &report.steps[1];
    assert_eq!(down.outcome, Some(Outcome::Succeeded), "{:?}", down.error);
    assert_eq!(down.outputs["reverted"], json!(["20250115120000"]));

    // Without the backup, the same plan stops.
    db.exec("ALTER TABLE orders ADD COLUMN other text; UPDATE orders SET other = 'x'")
        .await;
    let dir2 = write_migrations(&[(
        "20250201000000",
        "add_other",
        "ALTER TABLE orders ADD COLUMN other text;",
        "ALTER TABLE orders DROP COLUMN other;",
    )]);
    db.exec("INSERT INTO schema_migrations VALUES ('20250201000000')")
        .await;
    let plan = format!(
        r#"
name: migration-rollback
steps:
  - id: migrate_down
    kind: db.migrate_down
    url: "${{env:ROLLBACK_DB_TEST_MIGRATE_BKP_URL}}"
    migrations: "{}"
    steps: 1
"#,
        dir2.path().display()
    );
    let report = run_plan(&plan, &[]).await;
    assert_eq!(report.steps[0].outcome, Some(Outcome::Failed));
    let error = report.steps[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("Take a backup first"), "{error}");
    // The password never reaches the report.
    let password = db.url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!serde_json::to_string(&report).unwrap().contains(password));
}

#[tokio::test]
async fn injection_shaped_table_and_column_names() {
    let Some(db) = PgTestDb::create("names").await else {
        return;
    };
    let evil_table = r#"Order "Items"; DROP TABLE orders; --"#;
    let evil_column = r#"Note's "x" Col"#;
    let qt = q(evil_table);
    let qc = q(evil_column);
    let migrations = [
        (
            "1",
            "create_orders",
            "CREATE TABLE orders (id bigint);".to_string(),
            "DROP TABLE orders;".to_string(),
        ),
        (
            "2",
            "evil",
            format!("CREATE TABLE {qt} (id bigint, {qc} text);"),
            format!("ALTER TABLE {qt} DROP COLUMN {qc};\nDROP TABLE {qt};"),
        ),
    ];
    let migrations: Vec<(String, String, String, String)> = migrations
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.clone(), d.clone()))
        .collect();
    let dir = write_migrations(&migrations);
    db.exec(&rails_migrated_sql(&migrations)).await;
    db.exec(&format!(
        "INSERT INTO {qt} (id, {qc}) VALUES (1, 'keep me'); INSERT INTO orders VALUES (7)"
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"to_version": "1"}));
    let err = down.run(&ctx(&tmp)).await.unwrap_err();
    assert!(
        err.message()
            .contains(&format!("column {evil_table}.{evil_column}")),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains(&format!("table {evil_table} holding 1 rows")),
        "{}",
        err.message()
    );
    assert!(db.has_table(evil_table).await);

    let allowed = step(
        &db.url,
        &dir,
        json!({"to_version": "1", "allow_data_loss": true}),
    );
    allowed.run(&ctx(&tmp)).await.expect("down");
    assert!(!db.has_table(evil_table).await);
    // The table whose name the evil one mentions is untouched.
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM orders").await, 1);
}

#[tokio::test]
async fn the_example_migration_rollback_plan_runs_twice() {
    let Some(db) = PgTestDb::create("example").await else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/db");
    let migrations = root.join("migrations");
    // The orders database as the seeds describe it: migrated to 20250115120000
    // (Rails-style ledger), with orders whose new_field holds data.
    let mut setup =
        "CREATE TABLE schema_migrations (version varchar(255) PRIMARY KEY);".to_string();
    for version in [
        "20250101000000_create_orders",
        "20250115120000_add_new_field",
    ] {
        setup.push_str(
            &std::fs::read_to_string(migrations.join(format!("{version}.up.sql"))).unwrap(),
        );
        setup.push_str(&format!(
            "INSERT INTO schema_migrations VALUES ('{}');",
            &version[..14]
        ));
    }
    setup.push_str("INSERT INTO orders VALUES (1, 10, 10, 'gift wrap'), (2, 5, 5, NULL);");
    db.exec(&setup).await;

    // The plan reads ORDERS_DB_URL; only this test sets it.
    std::env::set_var("ORDERS_DB_URL", &db.url);
    let vars: std::collections::BTreeMap<String, String> = [
        ("migrations", migrations.display().to_string()),
        (
            "pg_bin_dir",
            std::env::var("PG_BIN_DIR").unwrap_or_default(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let plan = rollback_core::Plan::load(root.join("migration-rollback.yaml"), &registry(), &vars)
        .unwrap_or_else(|e| panic!("{e}"));
    let state = tempfile::tempdir().unwrap();
    let executor = rollback_core::Executor::new(std::sync::Arc::new(
        rollback_core::FileJournal::new(state.path()),
    ));
    for attempt in 1..=2 {
        let report = executor
            .run(
                &plan,
                rollback_core::RunOptions::new("new_field breaks checkout"),
            )
            .await
            .unwrap();
        for s in &report.steps {
            assert_eq!(
                s.outcome,
                Some(Outcome::Succeeded),
                "run {attempt}, {}: {:?}",
                s.id,
                s.error
            );
        }
        for c in &report.checks {
            assert!(c.passed, "run {attempt}: {c:?}");
        }
        let down = report
            .steps
            .iter()
            .find(|s| s.id == "migrate_down")
            .unwrap();
        let expected = if attempt == 1 {
            json!(["20250115120000"])
        } else {
            json!([])
        };
        assert_eq!(down.outputs["reverted"], expected, "run {attempt}");
    }
    assert_eq!(rails_versions(&db).await, ["20250101000000"]);
    assert!(!db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
    let constraint = db
        .scalar_i64("SELECT COUNT(*) FROM pg_constraint WHERE conname = 'check_amount'")
        .await;
    assert_eq!(constraint, 1, "the check constraint is back");
}

#[tokio::test]
async fn the_migration_lock_is_the_one_sqlx_s_migrator_takes() {
    let Some(db) = PgTestDb::create("lock").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"steps": 1}));
    // sqlx's Migrator (what an application runs at start-up) holds its lock:
    // the step is refused, retryably, and changes nothing. The same id held by
    // the step makes the Migrator's pg_advisory_lock wait.
    let mut migrator = db.connect().await;
    migrator
        .lock()
        .await
        .expect("sqlx takes its migration lock");
    let err = down.run(&ctx(&tmp)).await.unwrap_err();
    assert!(err.is_retryable(), "{}", err.message());
    assert!(
        err.message().contains("holds the migration lock"),
        "{}",
        err.message()
    );
    assert_eq!(rails_versions(&db).await.len(), 3);
    migrator.unlock().await.unwrap();
    let outputs = down.run(&ctx(&tmp)).await.expect("free again");
    assert_eq!(reverted(&outputs), ["20250115120000"]);
}
