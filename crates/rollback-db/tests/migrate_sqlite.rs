//! `db.migrate_down` on SQLite files (no server needed).

mod support;

use rollback_core::Step;
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

#[tokio::test]
async fn rails_ledger_down_and_up_again_on_sqlite() {
    let db = SqliteTestDb::create().await;
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);
    // A plain file path works as well as a sqlite:// URL.
    let down = step(
        &db.path.display().to_string(),
        &dir,
        json!({"to_version": "20250101000000"}),
    );
    let outputs = down.run(&ctx).await.expect("down");
    assert_eq!(outputs["ledger"], "rails");
    assert_eq!(reverted(&outputs), ["20250115120000", "20250110090000"]);
    assert_eq!(
        db.scalar_i64("SELECT COUNT(*) FROM schema_migrations")
            .await,
        1
    );
    assert!(!db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
    assert!(db.columns("Customers").await.is_empty());
    assert!(
        reverted(&down.run(&ctx).await.unwrap()).is_empty(),
        "idempotent"
    );

    down.undo(&ctx, &outputs).await.expect("up again");
    assert_eq!(
        db.scalar_i64("SELECT COUNT(*) FROM schema_migrations")
            .await,
        3
    );
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));
}

#[tokio::test]
async fn golang_migrate_ledger_on_sqlite_and_dirty_refused() {
    let db = SqliteTestDb::create().await;
    let migrations = golang_migrations();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations)).await;
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"steps": 2}));
    let outputs = down.run(&ctx(&tmp)).await.expect("down");
    assert_eq!(reverted(&outputs), ["000003", "000002"]);
    assert_eq!(
        db.scalar_i64("SELECT version FROM schema_migrations").await,
        1
    );
    down.undo(&ctx(&tmp), &outputs).await.expect("up again");
    assert_eq!(
        db.scalar_i64("SELECT version FROM schema_migrations").await,
        3
    );

    db.exec("UPDATE schema_migrations SET dirty = 1").await;
    let err = down.run(&ctx(&tmp)).await.unwrap_err();
    assert!(
        err.message().contains("dirty") && err.message().contains("force"),
        "{}",
        err.message()
    );
    assert_eq!(
        db.scalar_i64("SELECT dirty FROM schema_migrations").await,
        1
    );
}

#[tokio::test]
async fn sqlx_ledger_on_sqlite_agrees_with_sqlx_migrator() {
    let db = SqliteTestDb::create().await;
    let dir = write_migrations(MIGRATIONS);
    let migrator = Migrator::new(dir.path()).await.unwrap();
    let mut c = db.connect().await;
    migrator.run(&mut c).await.expect("sqlx migrate run");
    let tmp = tempfile::tempdir().unwrap();
    let down = step(&db.url, &dir, json!({"steps": 2}));
    let outputs = down.run(&ctx(&tmp)).await.expect("down");
    assert_eq!(reverted(&outputs), ["20250115120000", "20250110090000"]);
    let applied: Vec<i64> = c
        .list_applied_migrations()
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied, [20250101000000]);
    migrator.run(&mut c).await.expect("sqlx goes up again");
    assert_eq!(c.list_applied_migrations().await.unwrap().len(), 3);
    let outputs = down.run(&ctx(&tmp)).await.expect("down again");
    down.undo(&ctx(&tmp), &outputs).await.expect("our undo");
    migrator.run(&mut c).await.expect("sqlx accepts our rows");
}

#[tokio::test]
async fn the_data_loss_guard_on_sqlite() {
    let db = SqliteTestDb::create().await;
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    db.exec("INSERT INTO \"Customers\" (id, \"Name\") VALUES (1, 'Ada'), (2, 'Grace')")
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let err = step(&db.url, &dir, json!({"steps": 2}))
        .run(&ctx(&tmp))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("table Customers holding 2 rows"),
        "{}",
        err.message()
    );
    assert_eq!(
        db.scalar_i64("SELECT COUNT(*) FROM schema_migrations")
            .await,
        3
    );
    let outputs = step(&db.url, &dir, json!({"steps": 2, "allow_data_loss": true}))
        .run(&ctx(&tmp))
        .await
        .expect("allowed");
    assert_eq!(reverted(&outputs).len(), 2);
}

/// The schema and the ledger rows of a SQLite file.
async fn sqlite_state(db: &SqliteTestDb) -> Vec<String> {
    let mut c = db.connect().await;
    let mut state: Vec<String> = sqlx::query_scalar(
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT version || ' ' || dirty FROM schema_migrations ORDER BY 1")
            .fetch_all(&mut c)
            .await
            .unwrap();
    state.extend(rows);
    state
}

#[tokio::test]
async fn a_golang_migrate_ledger_at_a_version_with_no_file_is_refused_on_sqlite() {
    let db = SqliteTestDb::create().await;
    let migrations = golang_migrations();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations)).await;
    // Migrated to 7 by a newer release; the folder stops at 3.
    db.exec("CREATE TABLE shipments (id bigint); UPDATE schema_migrations SET version = 7")
        .await;
    let before = sqlite_state(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let err = step(&db.url, &dir, json!({"steps": 1}))
        .run(&ctx(&tmp))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("says the database is at version 7, but")
            && err
                .message()
                .contains("(it has versions 000001, 000002, 000003)"),
        "{}",
        err.message()
    );
    assert_eq!(sqlite_state(&db).await, before);
}
