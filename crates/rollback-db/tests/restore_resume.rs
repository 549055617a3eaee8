//! `db.restore` run again, and restores from backups other steps took,
//! against the real PostgreSQL started by scripts/testenv/postgres.sh: a
//! re-run follows the step's intent in the journal store, stops with what
//! the server holds when that intent is gone, and a backup that changed
//! since its step took it is refused before anything changes.

mod restore_helpers;

use std::collections::BTreeMap;
use std::sync::Arc;

use restore_helpers::*;
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus, Step};
use rollback_db::backup_location::this_host;
use rollback_db::restore::{Restore, RestoreConfig};
use serde_json::json;

async fn seeded(admin: &str, db: &str) {
    fresh_db(admin, db).await;
    exec_in(
        admin,
        db,
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric); \
         INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g",
    )
    .await;
}

async fn orders(admin: &str, db: &str) -> i64 {
    let mut c = connect(admin, db).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::Connection::close(c).await.unwrap();
    n
}

#[tokio::test]
async fn a_rerun_whose_intent_is_gone_stops_and_says_what_the_server_holds() {
    let Some(admin) = admin_url() else { return };
    let db = "rr Intent Gone";
    let _cleanup = drop_at_end(&admin, &[db]);
    seeded(&admin, db).await;
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_backup(&admin, db, dir.path()).await;
    exec_in(&admin, db, "DELETE FROM orders WHERE id > 10").await;
    let step = Restore::new(config::<RestoreConfig>(json!({
        "url": url_for(&admin, db), "from": clean, "pg_bin_dir": bin_dir(),
    })))
    .unwrap();
    let ctx = ctx("restore", dir.path());
    step.run(&ctx).await.expect("restore");
    assert_eq!(orders(&admin, db).await, 100);
    let before = databases_like(&admin, "rr Intent Gone").await;

    // The journal recorded the intent; the store lost it.
    let kept = dir.path().join("state").join("restore").join("intent");
    std::fs::remove_file(&kept).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));
    let err = step.run(&ctx.clone().as_rerun()).await.unwrap_err();
    let message = err.message();
    for needle in [
        "is missing from the journal store",
        "--fresh restore",
        "Nothing was changed; the server holds:",
        &format!("`{db}` is the copy this step restored"),
        &format!("`{db}_before_standalone` exists (the database a swap kept)"),
        &format!("`{db}_restore_standalone` does not exist"),
    ] {
        assert!(message.contains(needle), "lacks `{needle}`: {message}");
    }
    assert_eq!(databases_like(&admin, "rr Intent Gone").await, before);
    assert_eq!(orders(&admin, db).await, 100);
}

#[tokio::test]
async fn a_backup_that_changed_since_its_step_took_it_is_refused_before_anything_changes() {
    let Some(admin) = admin_url() else { return };
    let db = "rk Changed Backup";
    let _cleanup = drop_at_end(&admin, &[db]);
    seeded(&admin, db).await;
    let backups = tempfile::tempdir().unwrap();
    std::env::set_var("RK_DB_URL", url_for(&admin, db));
    // The backup step's file is appended to before the restore reads it.
    let yaml = format!(
        "name: changed-backup\n\
         steps:\n\
         \x20 - id: backup\n    kind: db.backup\n    url: ${{env:RK_DB_URL}}\n    dir: {dir}\n    pg_bin_dir: {bin}\n\
         \x20 - id: damage\n    kind: db.sql\n    after: [backup]\n    url: ${{env:RK_DB_URL}}\n    sql: DELETE FROM orders WHERE id > 10\n\
         \x20 - id: tamper\n    kind: exec\n    after: [damage]\n    argv: [sh, -c, 'printf x >> \"$0\"', '${{steps.backup.path}}']\n\
         \x20 - id: restore\n    kind: db.restore\n    after: [tamper]\n    url: ${{env:RK_DB_URL}}\n    from: ${{steps.backup.path}}\n    safety_backup: always\n    pg_bin_dir: {bin}\n",
        dir = serde_json::to_string(backups.path().to_str().unwrap()).unwrap(),
        bin = serde_json::to_string(&bin_dir().unwrap_or_default()).unwrap(),
    );
    let mut registry = Registry::with_core_kinds();
    rollback_db::register(&mut registry);
    let plan = Plan::from_yaml(&yaml, "plan.yaml", &registry, &BTreeMap::new()).expect("plan");
    let state = tempfile::tempdir().unwrap();
    let report = Executor::new(Arc::new(FileJournal::new(state.path())))
        .run(&plan, RunOptions::new("changed backup"))
        .await
        .expect("run");
    assert_eq!(report.status, Some(RunStatus::StepFailed), "{report:#?}");
    let backup = report.steps.iter().find(|s| s.id == "backup").unwrap();
    assert_eq!(backup.outputs["host"], json!(this_host()));
    let path = backup.outputs["path"].as_str().unwrap();
    let restore = report.steps.iter().find(|s| s.id == "restore").unwrap();
    let error = restore.error.as_deref().unwrap_or_default();
    for needle in [
        format!(
            "the backup to restore (step `backup`) was written on host {} at {path} with SHA-256 {}",
            this_host(),
            backup.outputs["sha256"].as_str().unwrap()
        ),
        "it changed since".to_string(),
        "Nothing was changed".to_string(),
    ] {
        assert!(error.contains(&needle), "lacks `{needle}`: {error}");
    }
    // Refused before the safety backup, the temporary database or the swap.
    assert_eq!(orders(&admin, db).await, 10);
    assert_eq!(
        databases_like(&admin, "rk Changed Backup").await,
        [db.to_string()]
    );
    let files: Vec<_> = std::fs::read_dir(backups.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "only the step's backup: {files:?}");
}
