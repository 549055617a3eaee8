//! Database plans through the real binary against the real PostgreSQL:
//! the first Ctrl-C lets a running `db.backup` finish and verify its
//! backup; a runner killed with SIGKILL mid-restore leaves its pg_restore
//! running, and `resume` ends it before the restore runs again.

mod common;
mod pg_support;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::*;
use pg_support::*;

/// Rows in the test databases: enough that pg_dump and pg_restore run for
/// seconds, so a signal reliably lands while they work.
const ROWS: u32 = 1_500_000;

fn start_run(sb: &Sandbox, plan: &std::path::Path, db_url: &str) -> std::process::Child {
    let stderr = std::fs::File::create(sb.file("run-stderr.txt")).expect("stderr file");
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    // Its own process group, as a shell starts a foreground job.
    cmd.env("DB_URL", db_url)
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    cmd.spawn().expect("start rollback run")
}

fn signal_group(signal: &str, pgid: u32) {
    let status = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} -- -{pgid}: {status}");
}

#[test]
fn one_ctrl_c_during_a_backup_lets_pg_dump_finish_and_the_backup_is_verified() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let dbs = TestDatabases::new(&admin, "cli ctrlc backup");
    let db_url = dbs.url(&dbs.prefix);
    seed_orders(&db_url, ROWS);
    let sb = Sandbox::new();
    let backups = sb.file("backups");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: ctrl-c-backup\n\
             budget: 10m\n\
             steps:\n\
             \x20 - id: backup\n    kind: db.backup\n    url: ${{env:DB_URL}}\n    dir: {dir}\n    pg_bin_dir: {bin}\n\
             \x20 - id: next\n    kind: exec\n    after: [backup]\n    argv: [\"true\"]\n",
            dir = qp(&backups),
            bin = qp(&pg_bin("")),
        ),
    );
    let mut runner = start_run(&sb, &plan, &db_url);
    wait_until(SLOW, "pg_dump to copy the table", || {
        copying(&admin, &dbs.prefix, false)
    });
    // The terminal's Ctrl-C: SIGINT to the runner's foreground group.
    signal_group("-INT", runner.id());
    let status = wait_child(&mut runner, SLOW, "the interrupted runner");
    let stderr = std::fs::read_to_string(sb.file("run-stderr.txt")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "cancelled:\n{stderr}");
    assert!(
        !stderr.contains("stopped: the run was cancelled"),
        "{stderr}"
    );

    let run_id = sb.only_run_id();
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    let backup = step(&report, "backup");
    assert_eq!(backup["outcome"], "succeeded", "{backup:#}");
    assert_eq!(backup["outputs"]["verified"], true);
    let records = sb.records(&run_id);
    assert!(
        events(&records, "step_started")
            .iter()
            .all(|r| r["step"] != "next"),
        "no step starts after Ctrl-C: {records:#?}"
    );

    // pg_dump started before the Ctrl-C and ended by itself after it, with
    // 0; the verification ran after it.
    let dump = programs(&records, "pg_dump");
    assert_eq!(dump.len(), 1, "{records:#?}");
    let pid = dump[0]["program"]["pid"].clone();
    let started = position(&records, "pg_dump's start", |r| {
        r["event"] == "program_started" && r["program"]["pid"] == pid
    });
    let cancelled = position(&records, "the cancel", |r| r["event"] == "cancel_requested");
    let ended = position(&records, "pg_dump's end", |r| {
        r["event"] == "program_ended" && r["pid"] == pid
    });
    assert!(started < cancelled && cancelled < ended, "{records:#?}");
    assert_eq!(records[ended]["status"], "exit 0", "{:#}", records[ended]);
    let listed = programs(&records, "pg_restore --list");
    assert!(!listed.is_empty(), "verified with pg_restore --list");

    // The file is a whole archive: it lists, and its checksum is the output's.
    let path = backup["outputs"]["path"].as_str().expect("path");
    let list = std::process::Command::new(pg_bin("pg_restore"))
        .args(["--list", path])
        .output()
        .expect("pg_restore --list");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public orders"));
}

#[test]
fn kill_9_mid_restore_then_resume_ends_the_orphaned_pg_restore_before_restoring_again() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let dbs = TestDatabases::new(&admin, "cli kill restore");
    let db_url = dbs.url(&dbs.prefix);
    seed_orders(&db_url, ROWS);
    let sb = Sandbox::new();
    let clean = sb.file("clean.dump");
    dump(&db_url, &clean);
    damage_orders(&db_url);
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: kill-restore\n\
             budget: 10m\n\
             steps:\n\
             \x20 - id: restore\n    kind: db.restore\n    url: ${{env:DB_URL}}\n    from: {from}\n    jobs: 2\n    pg_bin_dir: {bin}\n    checks:\n      - sql: SELECT count(*) FROM orders\n        expect: \"= {ROWS}\"\n",
            from = qp(&clean),
            bin = qp(&pg_bin("")),
        ),
    );
    let mut runner = start_run(&sb, &plan, &db_url);
    let temp_prefix = format!("{}_restore_", dbs.prefix);
    wait_until(
        SLOW,
        "pg_restore to copy into the temporary database",
        || copying(&admin, &temp_prefix, true),
    );
    // Only the runner's group: pg_restore runs in a group of its own.
    signal_group("-9", runner.id());
    let status = wait_child(&mut runner, WAIT, "the killed runner");
    assert!(status.code().is_none(), "killed: {status}");

    let run_id = sb.only_run_id();
    let records = sb.records(&run_id);
    let restores = programs(&records, "--dbname");
    assert_eq!(restores.len(), 1, "{records:#?}");
    let pid = restores[0]["program"]["pid"].as_u64().expect("pid") as u32;
    let _cleanup = EndOnDrop(vec![pid]);
    assert!(running(pid), "pg_restore (pid {pid}) outlived its runner");

    let out = sb.run(["show", &run_id]);
    out.expect_code(0);
    for needle in [
        "pg_restore".to_string(),
        format!("(pid {pid} on "),
        "a resume ends it first".to_string(),
    ] {
        assert!(
            out.stdout.contains(&needle),
            "show lacks `{needle}`:\n{}",
            out.stdout
        );
    }

    let mut resume = sb.cmd(["resume", &run_id]);
    resume.env("DB_URL", &db_url);
    let out = run_within(resume, SLOW);
    out.expect_code(0);
    assert!(
        !running(pid),
        "the orphaned pg_restore (pid {pid}) still runs"
    );

    // Ended before the step started again; the second restore did the work.
    let records = sb.records(&run_id);
    let settled = position(&records, "program_settled", |r| {
        r["event"] == "program_settled"
    });
    assert_eq!(records[settled]["program"]["pid"], pid);
    assert!(
        records[settled]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("ended it"),
        "{:#}",
        records[settled]
    );
    let restarted = records
        .iter()
        .rposition(|r| r["event"] == "step_started")
        .expect("the step started again");
    assert!(settled < restarted, "{records:#?}");
    assert_eq!(sb.show(&run_id)["status"], "succeeded");

    assert_eq!(scalar(&db_url, "SELECT count(*) FROM orders"), ROWS as i64);
    assert_eq!(
        scalar(&db_url, "SELECT count(*) FROM orders WHERE total < 0"),
        0
    );
    let left = dbs.existing();
    assert!(
        !left.iter().any(|d| d.starts_with(&temp_prefix)),
        "a temporary database is left: {left:?}"
    );
    assert_eq!(
        left,
        [
            dbs.prefix.clone(),
            format!("{}_before_{run_id}", dbs.prefix)
        ],
        "the live database and the one the swap kept"
    );
}
