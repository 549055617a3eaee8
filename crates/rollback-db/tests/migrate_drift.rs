//! `db.migrate_down` when the migrations folder and the ledger disagree, on
//! the real PostgreSQL: every refusal leaves tables, columns, indexes and the
//! ledger exactly as they were.

mod support;

use rollback_core::Step;
use rollback_db::migrate::{MigrateDown, MigrateDownConfig};
use serde_json::{json, Value};
use sqlx::migrate::Migrator;
use support::*;

fn step(url: &str, dir: &tempfile::TempDir, extra: Value) -> MigrateDown {
    let mut cfg = json!({"url": url, "migrations": dir.path().display().to_string()});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    MigrateDown::new(config::<MigrateDownConfig>(cfg)).expect("valid config")
}

/// Everything a revert could change: each column of each table, each index,
/// and every row of whichever ledger tables exist.
async fn db_state(db: &PgTestDb) -> Vec<String> {
    let mut c = db.connect().await;
    let mut state: Vec<String> = sqlx::query_scalar(
        "SELECT format('column %I.%I %s', table_name, column_name, data_type) FROM information_schema.columns \
         WHERE table_schema = 'public' \
         UNION ALL SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public' \
         ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for ledger in ["schema_migrations", "_sqlx_migrations"] {
        if db.has_table(ledger).await {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT format('{ledger} %s', row_to_json(t)) FROM {ledger} t ORDER BY 1"
            ))
            .fetch_all(&mut c)
            .await
            .unwrap();
            state.extend(rows);
        }
    }
    state
}

/// Runs `down` and its preview, which must both refuse with a message holding
/// each of `expected`; the database must be as it was.
async fn assert_refused(db: &PgTestDb, down: &MigrateDown, expected: &[&str]) -> String {
    let before = db_state(db).await;
    let tmp = tempfile::tempdir().unwrap();
    let err = down.run(&ctx(&tmp)).await.unwrap_err();
    let message = err.message().to_string();
    for part in expected {
        assert!(message.contains(part), "missing {part:?} in: {message}");
    }
    assert!(!err.is_retryable(), "{message}");
    let preview = down.preview(&ctx(&tmp)).await.unwrap_err();
    assert_eq!(
        preview.message(),
        message,
        "the preview refuses the same way"
    );
    assert_eq!(
        db_state(db).await,
        before,
        "the refusal changed the database"
    );
    message
}

/// golang-migrate migrations 1, 2 and 5, as `(version, name, up, down)`.
fn golang_1_2_5() -> Vec<(String, String, String, String)> {
    [
        (
            "1",
            "create_orders",
            "CREATE TABLE orders (id bigint PRIMARY KEY);",
            "DROP TABLE orders;",
        ),
        (
            "2",
            "create_customers",
            "CREATE TABLE customers (id bigint);",
            "DROP TABLE customers;",
        ),
        (
            "5",
            "create_invoices",
            "CREATE TABLE invoices (id bigint);",
            "DROP TABLE invoices;",
        ),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect()
}

#[tokio::test]
async fn a_golang_migrate_ledger_at_a_version_with_no_file_is_refused() {
    let Some(db) = PgTestDb::create("gm7").await else {
        return;
    };
    let migrations = golang_1_2_5();
    let dir = write_migrations(&migrations);
    // The database was migrated to 7 by a newer release; this folder stops at 5.
    db.exec(&golang_migrated_sql(&migrations)).await;
    db.exec("CREATE TABLE shipments (id bigint); UPDATE schema_migrations SET version = 7")
        .await;

    for target in [
        json!({"steps": 1}),
        json!({"to_version": "2"}),
        json!({"to_version": "0"}),
    ] {
        let down = step(&db.url, &dir, target);
        assert_refused(
            &db,
            &down,
            &[
                "golang_migrate ledger says the database is at version 7",
                "has no migration file for 7 (it has versions 1, 2, 5)",
                "Restore the missing 7_<name>.down.sql",
                "point `migrations:` at the migrations folder of the release",
            ],
        )
        .await;
    }
    assert!(db.has_table("invoices").await && db.has_table("shipments").await);
}

#[tokio::test]
async fn a_to_version_with_no_file_is_refused_for_every_ledger() {
    let Some(db) = PgTestDb::create("notfile").await else {
        return;
    };
    // Rails: the first migration was squashed out of the folder, its row stays.
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    std::fs::remove_file(dir.path().join("20250101000000_create_orders.down.sql")).unwrap();
    std::fs::remove_file(dir.path().join("20250101000000_create_orders.up.sql")).unwrap();
    let down = step(&db.url, &dir, json!({"to_version": "20250101000000"}));
    assert_refused(
        &db,
        &down,
        &[
            "to_version 20250101000000 has no migration file in",
            "it has versions 20250110090000, 20250115120000",
            "0 to revert everything",
        ],
    )
    .await;

    // sqlx, the same shape.
    let Some(db) = PgTestDb::create("notfilesqlx").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    let mut c = db.connect().await;
    Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut c)
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("20250101000000_create_orders.down.sql")).unwrap();
    std::fs::remove_file(dir.path().join("20250101000000_create_orders.up.sql")).unwrap();
    let down = step(&db.url, &dir, json!({"to_version": "20250101000000"}));
    assert_refused(
        &db,
        &down,
        &["to_version 20250101000000 has no migration file"],
    )
    .await;

    // golang-migrate: a version between two files.
    let Some(db) = PgTestDb::create("notfilegm").await else {
        return;
    };
    let migrations = golang_1_2_5();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations)).await;
    let down = step(&db.url, &dir, json!({"to_version": "3"}));
    assert_refused(
        &db,
        &down,
        &["to_version 3 has no migration file", "versions 1, 2, 5"],
    )
    .await;
}

#[tokio::test]
async fn a_to_version_that_is_not_applied_is_refused() {
    // Rails: 20250110090000 was never applied (a gap), later ones were.
    let Some(db) = PgTestDb::create("gap").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    let applied = [MIGRATIONS[0], MIGRATIONS[2]];
    db.exec(&rails_migrated_sql(&applied)).await;
    let down = step(&db.url, &dir, json!({"to_version": "20250110090000"}));
    assert_refused(
        &db,
        &down,
        &[
            "to_version 20250110090000 is not applied",
            "rails ledger has applied 20250101000000, 20250115120000",
        ],
    )
    .await;

    // golang-migrate: the target is newer than the database.
    let Some(db) = PgTestDb::create("newer").await else {
        return;
    };
    let migrations = golang_1_2_5();
    let dir = write_migrations(&migrations);
    db.exec(&golang_migrated_sql(&migrations[..2])).await;
    let down = step(&db.url, &dir, json!({"to_version": "5"}));
    assert_refused(
        &db,
        &down,
        &["to_version 5 is not applied (the golang_migrate ledger has version 2)"],
    )
    .await;
}

#[tokio::test]
async fn a_missing_file_for_a_version_in_between_changes_nothing() {
    let Some(db) = PgTestDb::create("between").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    db.exec(&rails_migrated_sql(MIGRATIONS)).await;
    // The newest down file is there; the one before it is not.
    std::fs::remove_file(dir.path().join("20250110090000_create_customers.down.sql")).unwrap();
    let down = step(&db.url, &dir, json!({"to_version": "20250101000000"}));
    assert_refused(
        &db,
        &down,
        &["version 20250110090000 (create_customers) has no down migration"],
    )
    .await;
    assert!(db
        .columns("orders")
        .await
        .contains(&"new_field".to_string()));

    // No file at all for an applied version in between.
    std::fs::remove_file(dir.path().join("20250110090000_create_customers.up.sql")).unwrap();
    assert_refused(
        &db,
        &down,
        &[
            "version 20250110090000 is applied but",
            "has no files for it",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_sqlx_migration_changed_since_it_was_applied_is_refused() {
    let Some(db) = PgTestDb::create("checksum").await else {
        return;
    };
    let dir = write_migrations(MIGRATIONS);
    let mut c = db.connect().await;
    Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut c)
        .await
        .unwrap();
    // Another release's version of the newest migration, under the same number.
    std::fs::write(
        dir.path().join("20250115120000_add_new_field.up.sql"),
        "ALTER TABLE orders ADD COLUMN other_field text;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20250115120000_add_new_field.down.sql"),
        // It would "succeed": the applied migration's column stays, its row goes.
        "ALTER TABLE orders DROP COLUMN IF EXISTS other_field;\n",
    )
    .unwrap();
    let down = step(&db.url, &dir, json!({"steps": 1}));
    assert_refused(
        &db,
        &down,
        &[
            "is not the migration this database applied as version 20250115120000",
            "checksum differs from the one in _sqlx_migrations",
        ],
    )
    .await;
}
