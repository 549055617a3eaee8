//! The data-rollback procedure as a plan run by the engine against the real
//! PostgreSQL: the example plans load, a backup taken earlier in the run
//! stands in for the safety backup, and a failed verification compensates
//! by swapping back.

mod restore_helpers;

use std::collections::BTreeMap;
use std::sync::Arc;

use restore_helpers::*;
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use sqlx::{Connection, Executor as _};

fn registry() -> Registry {
    let mut r = Registry::with_core_kinds();
    rollback_db::register(&mut r);
    r
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/db")
        .join(name)
}

#[test]
fn example_plans_load() {
    for (name, var) in [
        ("data-rollback.yaml", "backup"),
        ("data-corruption.yaml", "last_clean_backup"),
    ] {
        let vars = BTreeMap::from([(var.to_string(), "/backups/x.dump".to_string())]);
        Plan::load(example(name), &registry(), &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn data_rollback_example_runs_end_to_end() {
    let Some(admin) = admin_url() else { return };
    let db = "rx Example Orders";
    let role = "rx example app";
    fresh_db(&admin, db).await;
    ensure_role(&admin, role, "LOGIN").await;
    exec_in(
        &admin,
        db,
        &format!(
            "CREATE TABLE orders (id int PRIMARY KEY, total numeric); \
         INSERT INTO orders SELECT g, g FROM generate_series(1, 200) g; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {}",
            q(role)
        ),
    )
    .await;
    // Yesterday's backup, then today's bad import.
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_backup(&admin, db, dir.path()).await;
    exec_in(
        &admin,
        db,
        "UPDATE orders SET total = -total WHERE id % 2 = 0",
    )
    .await;

    std::env::set_var("ORDERS_DB_URL", url_for(&admin, db));
    let vars = BTreeMap::from([
        ("backup".to_string(), clean.clone()),
        ("app_role".to_string(), role.to_string()),
        ("pg_bin_dir".to_string(), bin_dir().unwrap_or_default()),
    ]);
    let plan = Plan::load(example("data-rollback.yaml"), &registry(), &vars).expect("plan");
    let state = tempfile::tempdir().unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    let report = executor
        .run(&plan, RunOptions::new("bad import"))
        .await
        .expect("run");
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let mut c = connect(&admin, db).await;
    let negative: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE total < 0")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(negative, 0);
    let ro: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(ro, "off");
    c.close().await.unwrap();
    let safety = report
        .steps
        .iter()
        .find(|s| s.id == "safety_backup")
        .unwrap();
    let restore = report.steps.iter().find(|s| s.id == "restore").unwrap();
    assert_eq!(restore.outputs["safety_backup"], safety.outputs["path"]);
}

/// The seeds' data-corruption procedure, `examples/db/data-corruption.yaml`:
/// read-only mode, evidence kept, the last clean backup restored only once
/// the corruption checks pass on it, writes allowed again, checks re-run live.
#[tokio::test]
async fn data_corruption_example_runs_end_to_end() {
    let Some(admin) = admin_url() else { return };
    let db = "rc Example Market";
    let role = "rc example app";
    fresh_db(&admin, db).await;
    ensure_role(&admin, role, "LOGIN").await;
    exec_in(
        &admin,
        db,
        &format!(
        "CREATE TABLE users (id int PRIMARY KEY, created_at timestamptz, updated_at timestamptz); \
         INSERT INTO users SELECT g, now() - interval '2 days', now() - interval '1 day' FROM generate_series(1, 50) g; \
         CREATE TABLE orders (id int PRIMARY KEY, total numeric); \
         INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON users, orders TO {}",
        q(role)
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_backup(&admin, db, dir.path()).await;
    // The corruption: negative totals, users updated before they were created.
    exec_in(
        &admin,
        db,
        "UPDATE orders SET total = -total WHERE id % 3 = 0; \
         UPDATE users SET updated_at = created_at - interval '1 hour' WHERE id < 5",
    )
    .await;

    std::env::set_var("AFRICANMARKET_DB_URL", url_for(&admin, db));
    let vars = BTreeMap::from([
        ("last_clean_backup".to_string(), clean),
        ("app_role".to_string(), role.to_string()),
        ("pg_bin_dir".to_string(), bin_dir().unwrap_or_default()),
    ]);
    let plan = Plan::load(example("data-corruption.yaml"), &registry(), &vars).expect("plan");
    let state = tempfile::tempdir().unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    let report = executor
        .run(&plan, RunOptions::new("negative totals"))
        .await
        .expect("run");
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    assert_eq!(report.checks.len(), 3, "{:#?}", report.checks);

    // The live database is the clean one, writable by the application again.
    let mut c = connect(&admin, db).await;
    let corrupt: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders WHERE total < 0) + \
                (SELECT count(*) FROM users WHERE created_at > updated_at)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(corrupt, 0);
    let ro: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(ro, "off");
    let writes: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'orders', 'INSERT')")
        .bind(role)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(writes, "the application role can write again");
    c.close().await.unwrap();

    // The corrupted state is kept for the investigation: the evidence dump
    // and the database that was swapped out.
    let step = |id: &str| report.steps.iter().find(|s| s.id == id).unwrap();
    assert_eq!(step("evidence").outputs["verified"], true);
    assert_eq!(
        step("restore_clean").outputs["safety_backup"],
        step("evidence").outputs["path"]
    );
    let kept = step("restore_clean").outputs["previous"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = connect(&admin, &kept).await;
    let negative: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE total < 0")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(negative > 0, "{kept} keeps the corrupted rows");
    c.close().await.unwrap();
    let mut c = connect(&admin, "postgres").await;
    c.execute(format!("DROP DATABASE {}", q(&kept)).as_str())
        .await
        .unwrap();
    c.close().await.unwrap();
}

async fn count(admin: &str, db: &str) -> i64 {
    let mut c = connect(admin, db).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    n
}

#[tokio::test]
async fn plan_reuses_the_runs_verified_backup_and_compensation_swaps_back() {
    let Some(admin) = admin_url() else { return };
    let db = "rp Plan Orders";
    fresh_db(&admin, db).await;
    let mut c = connect(&admin, db).await;
    c.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric); INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    c.close().await.unwrap();
    std::env::set_var("ROLLBACK_TEST_PLAN_DB", url_for(&admin, db));

    // Snapshot, damage, restore the snapshot; a final check that fails makes
    // the run compensate: the restore is undone (swapped back).
    let text = format!(
        r#"
name: data-rollback-test
on_failure: compensate
steps:
  - id: snapshot
    kind: db.backup
    url: ${{env:ROLLBACK_TEST_PLAN_DB}}
    pg_bin_dir: "{bin}"
  - id: damage
    kind: db.sql
    after: [snapshot]
    url: ${{env:ROLLBACK_TEST_PLAN_DB}}
    sql: DELETE FROM orders WHERE id > 5
  - id: restore
    kind: db.restore
    after: [damage]
    url: ${{env:ROLLBACK_TEST_PLAN_DB}}
    from: ${{steps.snapshot.path}}
    pg_bin_dir: "{bin}"
    checks:
      - sql: SELECT count(*) FROM orders
        expect: "= 10"
  - id: fail_after
    kind: exec
    after: [restore]
    argv: ["false"]
"#,
        bin = bin_dir().unwrap_or_default()
    );
    let plan = Plan::from_yaml(&text, "plan.yaml", &registry(), &BTreeMap::new()).expect("plan");
    let state = tempfile::tempdir().unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    let report = executor
        .run(&plan, RunOptions::new("test"))
        .await
        .expect("run");
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    assert!(report.compensated);
    let restore = report.steps.iter().find(|s| s.id == "restore").unwrap();
    // No second dump: the snapshot taken earlier in the run is the safety backup.
    let snapshot = report.steps.iter().find(|s| s.id == "snapshot").unwrap();
    assert_eq!(
        restore.outputs["safety_backup"], snapshot.outputs["path"],
        "{restore:?}"
    );
    // Compensation swapped back: the damaged database is live again, and the
    // restored copy is kept beside it.
    assert_eq!(count(&admin, db).await, 5);
    let kept = databases_like(&admin, "rp Plan Orders_restore_").await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(count(&admin, &kept[0]).await, 10);
}
