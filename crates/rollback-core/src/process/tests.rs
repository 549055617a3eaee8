use std::time::Duration;

use super::*;

fn ctx(dir: &std::path::Path) -> StepContext {
    StepContext::standalone("exec", dir)
}

fn sh(script: &str) -> Program {
    Program::new(["sh", "-c", script])
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
pub(crate) fn ended(pid: i32) -> bool {
    procfs::stat(pid).is_none_or(|s| s.zombie)
}

pub(crate) async fn until_ended(pid: i32) -> bool {
    for _ in 0..250 {
        if ended(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn read_pid(file: &std::path::Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn runs_argv_with_env_cwd_and_stdin_and_tags_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let finished =
        sh("read line; echo \"$line $GREETING $ROLLBACK_STEP_ID from $(pwd)\"; echo careful >&2")
            .env("GREETING", "hello")
            .cwd(dir.path())
            .stdin(b"piped\n".to_vec())
            .run(&ctx(dir.path()))
            .await
            .unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        finished.stdout.text(),
        format!("piped hello exec from {}", cwd.display())
    );
    assert_eq!(finished.stderr.text(), "careful");
    assert!(finished.success());
}

#[tokio::test]
async fn a_dropped_run_ends_the_programs_it_started_too() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let ctx = ctx(dir.path());
    let run = tokio::time::timeout(Duration::from_secs(1), sh(&script).run(&ctx)).await;
    assert!(run.is_err(), "the program should still be running");
    let pid = read_pid(&pidfile);
    assert!(
        until_ended(pid).await,
        "the grandchild (pid {pid}) is still running"
    );
}

#[tokio::test]
async fn a_leftover_holding_stdout_does_not_hold_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("leftover.pid");
    let script = format!("echo started; sleep 300 & echo $! > {}", pidfile.display());
    let finished = sh(&script).run(&ctx(dir.path())).await.unwrap();
    assert_eq!(finished.stdout.text(), "started");
    let pid = read_pid(&pidfile);
    assert!(
        until_ended(pid).await,
        "the leftover (pid {pid}) is still running"
    );
}

#[tokio::test]
async fn the_first_cancellation_lets_a_program_finish() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    ctx.cancellation().cancel();
    let finished = sh("sleep 0.2; echo done").run(&ctx).await.unwrap();
    assert_eq!(finished.stdout.text(), "done");
}

#[tokio::test]
async fn runs_in_a_process_group_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let finished = sh("ps -o pgid= -p $$; ps -o pid= -p $$")
        .run(&ctx(dir.path()))
        .await
        .unwrap();
    let text = finished.stdout.text();
    let ids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "{text}");
    assert_eq!(ids[0], ids[1], "the program leads its own group");
    let mine = procfs::stat(std::process::id() as i32).unwrap().pgrp;
    assert_ne!(ids[0], mine.to_string());
}

#[tokio::test]
async fn exit_codes_become_clear_errors_with_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
    let finished = sh(script).run(&ctx).await.unwrap();
    let err = finished.check(&ctx, &[0], &[]).unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.message().contains("`sh` exited with 3 (expected 0)"),
        "{}",
        err.message()
    );
    let detail = err.detail().unwrap();
    assert_eq!(detail.lines().count(), EVIDENCE_LINES);
    assert!(detail.starts_with("line11") && detail.ends_with("line30"));
    assert!(finished.check(&ctx, &[0], &[3]).unwrap_err().is_retryable());
    let err = sh("echo 'FATAL: error: role x does not exist' >&2; exit 1")
        .run(&ctx)
        .await
        .unwrap()
        .expect_success(&ctx)
        .unwrap_err();
    assert_eq!(
        err.message(),
        "`sh` exited with 1: FATAL: error: role x does not exist"
    );
}

#[tokio::test]
async fn a_missing_program_is_named_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let err = Program::new(["rollback-no-such-program"])
        .run(&ctx)
        .await
        .unwrap_err();
    assert!(err
        .message()
        .contains("`rollback-no-such-program` not found on PATH"));
    let err = Program::new(["rollback-no-such-program"])
        .missing_hint("install the PostgreSQL client")
        .run(&ctx)
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "program `rollback-no-such-program` not found: install the PostgreSQL client"
    );
}

#[tokio::test]
async fn output_is_capped_to_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the output\"; i=$((i+1)); done";
    let finished = sh(script)
        .output_cap(4096)
        .run(&ctx(dir.path()))
        .await
        .unwrap();
    assert!(finished.stdout.truncated());
    assert!(finished.stdout.text().ends_with("line 2999 of the output"));
}

#[test]
fn quotes_for_display() {
    let argv: Vec<String> = ["echo", "a b", "it's", "", "x=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(display_argv(&argv), r"echo 'a b' 'it'\''s' '' x=1");
}
