//! `db.read_only` resumed on another runner of a shared PostgreSQL journal:
//! `on` keeps its record of what it revoked in the journal store, so a
//! re-run on runner B keeps runner A's record (the privileges are already
//! revoked, a fresh look would find none) and `off` puts back exactly what
//! was there. Against the real PostgreSQL started by
//! scripts/testenv/postgres.sh.

mod restore_helpers;

use std::collections::BTreeMap;
use std::sync::Arc;

use restore_helpers::*;
use rollback_core::{Executor, Plan, Registry, RunOptions, RunStatus};
use rollback_db::journal_store::PgJournalStore;
use sqlx::Connection;

const OWNER: &str = "ror owner \"Role\"";
const APP: &str = "ror app role";

async fn grants(admin: &str, db: &str) -> Vec<String> {
    let mut c = connect(admin, db).await;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT table_name || ':' || privilege_type FROM information_schema.table_privileges \
         WHERE grantee = $1 ORDER BY 1",
    )
    .bind(APP)
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    rows
}

#[tokio::test]
async fn on_resumed_by_another_runner_keeps_the_first_record_and_off_restores_exactly() {
    let Some(admin) = admin_url() else { return };
    let db = "ror Resume Elsewhere";
    let journal_db = "rorj Journal Of Runners";
    let _cleanup = drop_at_end(&admin, &[db, journal_db]);
    fresh_db(&admin, db).await;
    ensure_role(&admin, OWNER, "LOGIN PASSWORD 'owner pw'").await;
    ensure_role(&admin, APP, "LOGIN PASSWORD 'app pw'").await;
    // The step connects as the database's owner, who may not end the app's
    // sessions yet: the first attempt fails after its commit.
    exec_in(
        &admin,
        "postgres",
        &format!(
            "REVOKE pg_signal_backend FROM {o}; ALTER DATABASE {d} OWNER TO {o}",
            o = q(OWNER),
            d = q(db)
        ),
    )
    .await;
    exec_in(
        &admin,
        db,
        &format!(
            "CREATE TABLE orders (id int); CREATE TABLE invoices (id int); \
             ALTER TABLE orders OWNER TO {o}; ALTER TABLE invoices OWNER TO {o}; \
             GRANT SELECT, INSERT, UPDATE ON orders TO {a}; GRANT SELECT, DELETE ON invoices TO {a}",
            o = q(OWNER),
            a = q(APP)
        ),
    )
    .await;
    let before = grants(&admin, db).await;
    let mut app = sqlx::PgConnection::connect(&url_with_user(&admin, APP, "app pw", db))
        .await
        .unwrap();

    std::env::set_var(
        "ROR_OWNER_URL",
        url_with_user(&admin, OWNER, "owner pw", db),
    );
    let yaml = format!(
        "name: read-only-elsewhere\n\
         steps:\n\
         \x20 - id: stop_writes\n    kind: db.read_only\n    url: ${{env:ROR_OWNER_URL}}\n    mode: \"on\"\n    role: {app}\n\
         \x20 - id: resume_writes\n    kind: db.read_only\n    after: [stop_writes]\n    url: ${{env:ROR_OWNER_URL}}\n    mode: \"off\"\n    restore_from_step: stop_writes\n",
        app = serde_json::to_string(APP).unwrap()
    );
    let mut registry = Registry::with_core_kinds();
    rollback_db::register(&mut registry);
    let plan = Plan::from_yaml(&yaml, "plan.yaml", &registry, &BTreeMap::new()).expect("plan");
    fresh_db(&admin, journal_db).await;
    let journal = url_for(&admin, journal_db);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runner = |dir: std::path::PathBuf| {
        let journal = journal.clone();
        async move {
            Executor::new(Arc::new(
                PgJournalStore::connect(&journal, "rollback", dir)
                    .await
                    .expect("journal"),
            ))
        }
    };

    let a = runner(dir_a.path().to_path_buf()).await;
    let report = a
        .run(&plan, RunOptions::new("writes must stop"))
        .await
        .expect("run on A");
    assert_eq!(report.status, Some(RunStatus::StepFailed), "{report:#?}");
    let failed = report.steps.iter().find(|s| s.id == "stop_writes").unwrap();
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("pg_signal_backend"),
        "{failed:#?}"
    );
    assert!(grants(&admin, db)
        .await
        .iter()
        .all(|g| g.ends_with(":SELECT")));

    // The cause is fixed; runner B, with its own state directory, resumes.
    exec_in(
        &admin,
        "postgres",
        &format!("GRANT pg_signal_backend TO {}", q(OWNER)),
    )
    .await;
    let b = runner(dir_b.path().to_path_buf()).await;
    let report = b
        .resume(
            &plan,
            &report.run.run_id,
            RunOptions::new("writes must stop"),
        )
        .await
        .expect("resume on B");
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let on = report.steps.iter().find(|s| s.id == "stop_writes").unwrap();
    assert_eq!(on.outputs["revoked"], serde_json::json!(3), "{on:#?}");
    assert_eq!(
        grants(&admin, db).await,
        before,
        "off put back exactly what was there"
    );
    // The app's session was ended by B's attempt.
    assert!(sqlx::query("SELECT 1").execute(&mut app).await.is_err());

    exec_in(
        &admin,
        "postgres",
        &format!("REVOKE pg_signal_backend FROM {}", q(OWNER)),
    )
    .await;
}
