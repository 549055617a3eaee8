//! The plan lock after a runner died: a lock whose recorded holder is gone
//! does not block the next run, even while a process the dead runner forked
//! still holds the lock file for a moment; a live holder refuses at once.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_core::{Error, Executor, FileJournal, Outputs, Plan, PlanStep, Preview, RunOptions};
use rollback_core::{RunStatus, Step, StepContext, StepError};

#[derive(Debug)]
struct Noop;

#[async_trait::async_trait]
impl Step for Noop {
    fn describe(&self) -> String {
        "nothing".into()
    }
    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::default())
    }
    async fn run(&self, _ctx: &StepContext) -> Result<Outputs, StepError> {
        Ok(Outputs::new())
    }
}

fn plan() -> Plan {
    let mut p = Plan::new("locked");
    p.steps = vec![PlanStep::new("a", "noop", Arc::new(Noop))];
    p.check().unwrap();
    p
}

fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes a holder record into the plan's lock file, then has `flock(1)`
/// hold the file for `hold` (as a child forked by a runner holds it between
/// fork and exec). Returns the `flock` process once it holds the lock.
fn hold_lock(state: &std::path::Path, holder_pid: u32, hold: Duration) -> Child {
    let locks = state.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let file = locks.join("locked.lock");
    let holder = serde_json::json!({
        "operator": "alice",
        "host": hostname(),
        "pid": holder_pid,
        "since": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "run_id": "20261201-000000-dead",
    });
    std::fs::write(&file, holder.to_string()).unwrap();
    let held = state.join("held");
    let child = Command::new("flock")
        .arg("-x")
        .arg(&file)
        .args([
            "sh",
            "-c",
            &format!("touch '{}'; sleep {}", held.display(), hold.as_secs_f64()),
        ])
        .spawn()
        .expect("flock(1) from util-linux");
    let start = Instant::now();
    while !held.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "flock never held the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn a_lock_whose_holder_died_is_taken_once_the_last_copy_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut flock = hold_lock(dir.path(), dead_pid(), Duration::from_millis(800));
    let executor = Executor::new(Arc::new(FileJournal::new(dir.path())));
    let report = executor
        .run(&plan(), RunOptions::new("after a crash"))
        .await
        .expect("the dead holder's lock does not block the run");
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert!(
        flock.try_wait().unwrap().is_some(),
        "the run waited for the copy to close"
    );
    flock.wait().unwrap();
}

#[tokio::test]
async fn a_lock_held_by_a_live_runner_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut flock = hold_lock(dir.path(), std::process::id(), Duration::from_secs(10));
    let executor = Executor::new(Arc::new(FileJournal::new(dir.path())));
    let start = Instant::now();
    let result = executor.run(&plan(), RunOptions::new("second")).await;
    let Err(Error::Locked { holder, .. }) = result else {
        panic!("expected the lock to be refused: {result:?}")
    };
    assert_eq!(holder.pid, std::process::id());
    // Refused without the wait a dead holder gets (5 s).
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    let _ = flock.kill();
    let _ = flock.wait();
}
