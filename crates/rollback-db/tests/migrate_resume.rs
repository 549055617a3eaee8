//! `db.migrate_down` run again after an attempt stopped mid-step (a crash, a
//! failed migration): `steps: N` goes to the target the first attempt chose,
//! kept as its intent, instead of counting N again from where it stopped.
//! Against the real PostgreSQL started by scripts/testenv/postgres.sh.

mod support;

use rollback_core::Step;
use rollback_db::migrate::{MigrateDown, MigrateDownConfig};
use serde_json::json;
use support::*;

fn migrations_failing_at(version: &str) -> Vec<(String, String, String, String)> {
    MIGRATIONS
        .iter()
        .map(|(v, name, up, down)| {
            let down = if *v == version {
                // Fails after the first statement; its transaction rolls back.
                format!("{down}ALTER TABLE no_such_table DROP COLUMN x;\n")
            } else {
                down.to_string()
            };
            (v.to_string(), name.to_string(), up.to_string(), down)
        })
        .collect()
}

fn step(url: &str, dir: &tempfile::TempDir) -> MigrateDown {
    MigrateDown::new(config::<MigrateDownConfig>(json!({
        "url": url,
        "migrations": dir.path().display().to_string(),
        "steps": 2,
    })))
    .expect("valid config")
}

async fn rails_versions(db: &PgTestDb) -> Vec<String> {
    let mut c = db.connect().await;
    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn steps_run_again_after_a_stop_mid_step_go_to_the_first_attempts_target() {
    let Some(db) = PgTestDb::create("steps again").await else {
        return;
    };
    // The second of the two versions to revert fails on the first attempt.
    let broken = migrations_failing_at("20250110090000");
    let dir = write_migrations(&broken);
    db.exec(&rails_migrated_sql(&broken)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);
    let err = step(&db.url, &dir).run(&ctx).await.unwrap_err();
    assert!(
        err.message()
            .contains("reverting 20250110090000 (create_customers) failed after 20250115120000"),
        "{}",
        err.message()
    );
    assert_eq!(
        rails_versions(&db).await,
        ["20250101000000", "20250110090000"]
    );

    // The file is fixed; the step runs again (as a retry or a resume would).
    let dir = write_migrations(MIGRATIONS);
    let down = step(&db.url, &dir);
    let again = ctx.clone().as_rerun();
    let outputs = down.run(&again).await.expect("the re-run");
    // Two steps back from where the first attempt started, not from where
    // it stopped: 20250101000000 stays.
    assert_eq!(rails_versions(&db).await, ["20250101000000"]);
    assert!(db.has_table("orders").await);
    assert_eq!(
        strings(&outputs["reverted"]),
        ["20250115120000", "20250110090000"]
    );
    assert_eq!(outputs["version_before"], "20250115120000");
    assert_eq!(outputs["version_after"], "20250101000000");
    // Once more: nothing left to do.
    let third = down.run(&again).await.expect("a third run");
    assert_eq!(rails_versions(&db).await, ["20250101000000"]);
    assert_eq!(
        strings(&third["reverted"]),
        ["20250115120000", "20250110090000"]
    );

    // Undo applies both again: what the step reverted over its attempts.
    down.undo(&again, &outputs).await.expect("undo");
    assert_eq!(rails_versions(&db).await.len(), 3);
}

#[tokio::test]
async fn a_rerun_whose_intent_is_gone_stops_before_changing_anything() {
    let Some(db) = PgTestDb::create("intent gone").await else {
        return;
    };
    let broken = migrations_failing_at("20250110090000");
    let dir = write_migrations(&broken);
    db.exec(&rails_migrated_sql(&broken)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(&tmp);
    step(&db.url, &dir).run(&ctx).await.unwrap_err();
    // The journal recorded the intent; the store lost it.
    let kept = tmp.path().join("state").join("test").join("intent");
    std::fs::remove_file(&kept).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));

    let dir = write_migrations(MIGRATIONS);
    let err = step(&db.url, &dir)
        .run(&ctx.clone().as_rerun())
        .await
        .unwrap_err();
    assert!(
        err.message().contains("is missing from the journal store")
            && err.message().contains("--fresh test"),
        "{}",
        err.message()
    );
    assert_eq!(
        rails_versions(&db).await,
        ["20250101000000", "20250110090000"],
        "nothing was reverted"
    );
}
