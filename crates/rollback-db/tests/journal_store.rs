//! The PostgreSQL journal store and advisory plan lock, against the real
//! PostgreSQL started by scripts/testenv/postgres.sh: two runners (two
//! Executors, each with its own store and connections) share one history.

mod restore_helpers;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use restore_helpers::*;
use rollback_core::{
    Approval, ApprovalRequest, Approver, Error, Event, Executor, JournalStore, LockHolder, Outcome,
    Plan, PlanLocker, Registry, RunOptions, RunStatus,
};
use rollback_db::journal_store::{PgJournalStore, PgPlanLocker};
use sqlx::{Connection, Executor as _};
use tokio::sync::{oneshot, Notify};

const SCHEMA: &str = "Rollback \"Journal\"; --";

async fn store(url: &str, dir: &std::path::Path) -> PgJournalStore {
    PgJournalStore::connect(url, SCHEMA, dir)
        .await
        .expect("journal store")
}

fn plan(name: &str, with_confirm: bool) -> Plan {
    let confirm = if with_confirm {
        "  - id: hold\n    kind: confirm\n    message: hold the lock\n"
    } else {
        ""
    };
    let text = format!(
        "name: {name}\nsteps:\n{confirm}  - id: say\n    kind: exec\n    argv: [echo, shared history]\n"
    );
    Plan::from_yaml(
        &text,
        "plan.yaml",
        &Registry::with_core_kinds(),
        &BTreeMap::new(),
    )
    .expect("plan")
}

/// Approves when told to, so a run holds its lock as long as a test needs.
struct Gate(Arc<Notify>);

#[async_trait]
impl Approver for Gate {
    async fn approve(&self, _: &ApprovalRequest) -> Result<Approval, String> {
        self.0.notified().await;
        Ok(Approval {
            approved_by: "test".into(),
            method: "--yes".into(),
        })
    }
}

#[tokio::test]
async fn runs_round_trip_through_postgres_and_another_runner_reads_them() {
    let Some(admin) = admin_url() else { return };
    let db = "jr Journal Round Trip";
    fresh_db(&admin, db).await;
    let url = url_for(&admin, db);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Executor::new(Arc::new(store(&url, dir_a.path()).await));
    let report = a
        .run(
            &plan("orders", false),
            RunOptions::new("5xx spike").operator("alice"),
        )
        .await
        .expect("run");
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let run_id = report.run.run_id.clone();

    // Another runner, with its own connections, sees the same history.
    let b = store(&url, dir_b.path()).await;
    let run = b.read(&run_id).await.expect("read");
    assert_eq!(run.info.operator, "alice");
    assert_eq!(run.info.reason, "5xx spike");
    assert!(run.plan_text.contains("shared history"));
    assert!(matches!(
        run.records.first().map(|r| &r.event),
        Some(Event::RunStarted { .. })
    ));
    assert_eq!(run.status(), Some(RunStatus::Succeeded));
    let done = run.completed_steps();
    assert_eq!(done["say"]["stdout"], serde_json::json!("shared history"));
    assert!(run.records.iter().any(|r| matches!(
        &r.event,
        Event::StepFinished { step, outcome: Outcome::Succeeded, .. } if step == "say"
    )));
    let list = b.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].run_id, run_id);
    assert_eq!(list[0].status, Some(RunStatus::Succeeded));
    assert!(list[0].duration_ms.is_some());
    assert!(matches!(
        b.read("nope").await,
        Err(Error::RunNotFound { .. })
    ));

    // Reopening appends after the last record.
    let before = run.records.len();
    let journal = b.reopen(&run_id).await.expect("reopen");
    journal.queue(rollback_core::Record::now(Event::RunResumed {
        operator: "bob".into(),
        host: "h".into(),
        pid: 1,
        completed: vec!["say".into()],
    }));
    journal.commit().await.expect("commit");
    let run = b.read(&run_id).await.unwrap();
    assert_eq!(run.records.len(), before + 1);
    assert_eq!(run.status(), None);
}

#[tokio::test]
async fn advisory_lock_refuses_a_second_runner_and_names_the_holder() {
    let Some(admin) = admin_url() else { return };
    let db = "jl Journal Lock";
    fresh_db(&admin, db).await;
    let url = url_for(&admin, db);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let runner_a = Arc::new(Executor::new(Arc::new(store(&url, dir_a.path()).await)));
    let runner_b = Executor::new(Arc::new(store(&url, dir_b.path()).await));

    let gate = Arc::new(Notify::new());
    let (started_tx, started_rx) = oneshot::channel::<String>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let a = {
        let runner_a = runner_a.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let options = RunOptions::new("drill")
                .operator("alice")
                .approver(Arc::new(Gate(gate)))
                .observer(move |record| {
                    if let Event::RunStarted { run, .. } = &record.event {
                        if let Some(tx) = started_tx.lock().unwrap().take() {
                            let _ = tx.send(run.run_id.clone());
                        }
                    }
                });
            runner_a.run(&plan("orders", true), options).await
        })
    };
    let run_a = started_rx.await.expect("runner A started");

    // Runner B is refused, and told who holds the plan.
    let err = runner_b
        .run(
            &plan("orders", false),
            RunOptions::new("second").operator("bob"),
        )
        .await
        .unwrap_err();
    let Error::Locked {
        plan: locked,
        holder,
    } = err
    else {
        panic!("expected Locked, got {err}")
    };
    assert_eq!(locked, "orders");
    assert_eq!(holder.operator, "alice");
    assert_eq!(holder.run_id, run_a);
    assert_eq!(holder.pid, std::process::id());
    assert!(!holder.host.is_empty());
    assert!(holder.since.ends_with('Z'));
    // Another plan is not blocked.
    let other = runner_b
        .run(
            &plan("payments", false),
            RunOptions::new("other plan").operator("bob"),
        )
        .await
        .expect("other plan runs");
    assert_eq!(other.status, Some(RunStatus::Succeeded));

    gate.notify_one();
    let report_a = a.await.unwrap().expect("runner A");
    assert_eq!(report_a.status, Some(RunStatus::Succeeded));

    // Wait (on the server, not a sleep) until A's session let go, then B runs.
    let mut c = connect(&admin, db).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PgPlanLocker::key("orders"))
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PgPlanLocker::key("orders"))
        .execute(&mut c)
        .await
        .unwrap();
    let report_b = runner_b
        .run(
            &plan("orders", false),
            RunOptions::new("after A").operator("bob"),
        )
        .await
        .expect("runner B after A");
    assert_eq!(report_b.status, Some(RunStatus::Succeeded));
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_crashed_runners_lock_is_freed_with_its_connection() {
    let Some(admin) = admin_url() else { return };
    let db = "jc Journal Crash";
    fresh_db(&admin, db).await;
    let url = url_for(&admin, db);
    let locker = PgPlanLocker::connect(&url, SCHEMA).await.expect("locker");
    let holder = |who: &str| LockHolder {
        operator: who.into(),
        host: "web1".into(),
        pid: 4242,
        since: "2026-11-21T10:00:00Z".into(),
        run_id: format!("run-{who}"),
    };
    let guard = locker
        .lock("orders", &holder("alice"))
        .await
        .expect("first lock");
    let Err(Error::Locked { holder: held, .. }) = locker.lock("orders", &holder("bob")).await
    else {
        panic!("second lock must fail")
    };
    assert_eq!(*held, holder("alice"));

    // The runner "crashes": its session is killed (as when its process dies).
    let mut c = connect(&admin, db).await;
    c.execute(
        format!(
            "SELECT pg_terminate_backend(backend_pid, 5000) FROM {}.plan_locks WHERE plan = 'orders'",
            q(SCHEMA)
        )
        .as_str(),
    )
    .await
    .unwrap();
    let _again = locker
        .lock("orders", &holder("bob"))
        .await
        .expect("lock freed by the crash");
    drop(guard);
    let Err(Error::Locked { holder: held, .. }) = locker.lock("orders", &holder("carol")).await
    else {
        panic!("bob holds it now")
    };
    assert_eq!(held.operator, "bob");
    c.close().await.unwrap();
}

#[tokio::test]
async fn run_state_lives_in_the_state_table_and_every_runner_of_the_journal_sees_it() {
    use rollback_core::state::MAX_STATE_BYTES;
    use rollback_core::StateStore;
    let Some(admin) = admin_url() else { return };
    let db = "js Journal State";
    let _cleanup = drop_at_end(&admin, &[db]);
    fresh_db(&admin, db).await;
    let url = url_for(&admin, db);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(&url, dir_a.path()).await;
    let b = store(&url, dir_b.path()).await;
    // State belongs to runs: two of them, one started by each runner.
    let executor_a = Executor::new(Arc::new(a.clone()));
    let executor_b = Executor::new(Arc::new(b.clone()));
    let first = executor_a
        .run(&plan("orders", false), RunOptions::new("first"))
        .await
        .expect("run A")
        .run
        .run_id;
    let second = executor_b
        .run(&plan("payments", false), RunOptions::new("second"))
        .await
        .expect("run B")
        .run
        .run_id;

    assert_eq!(
        a.get_state(&first, "restore", "intent").await.unwrap(),
        None
    );
    a.put_state(&first, "restore", "intent", b"one".to_vec())
        .await
        .unwrap();
    // Replaced whole, bytes as given (not text).
    let binary = vec![0u8, 159, 146, 150, b'\n', 0];
    a.put_state(&first, "restore", "intent", binary.clone())
        .await
        .unwrap();
    a.put_state(&first, "snap", "objects/\"a\".json", b"{}".to_vec())
        .await
        .unwrap();

    // The other runner, with its own connections and state directory, reads it.
    assert_eq!(
        b.get_state(&first, "restore", "intent").await.unwrap(),
        Some(binary.clone())
    );
    let listed: Vec<(String, String, u64)> = b
        .list_state(&first)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.step, e.name, e.bytes))
        .collect();
    assert_eq!(
        listed,
        [
            ("restore".to_string(), "intent".to_string(), 6),
            ("snap".to_string(), "objects/\"a\".json".to_string(), 2),
        ]
    );

    // Another run's state is its own: same step and name, not visible across.
    b.put_state(&second, "restore", "intent", b"other run".to_vec())
        .await
        .unwrap();
    assert_eq!(
        a.get_state(&first, "restore", "intent").await.unwrap(),
        Some(binary)
    );
    assert_eq!(
        a.get_state(&second, "snap", "objects/\"a\".json")
            .await
            .unwrap(),
        None
    );
    let names: Vec<String> = a
        .list_state(&second)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}/{}", e.step, e.name))
        .collect();
    assert_eq!(names, ["restore/intent"]);

    // Too large for the journal store: refused, saying where it belongs.
    let err = a
        .put_state(&first, "backup", "dump", vec![0; MAX_STATE_BYTES + 1])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shared storage"), "{err}");
    // Nothing of it is on either runner's disk.
    for (dir, run) in [(&dir_a, &first), (&dir_b, &first), (&dir_b, &second)] {
        let local = dir.path().join("runs").join(run).join("state");
        assert!(!local.exists(), "{} exists", local.display());
    }
}
