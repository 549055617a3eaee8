//! A `db.restore` started by runner A and resumed by runner B: two state
//! directories, one journal in PostgreSQL (`--journal postgres://...`),
//! runner A killed with SIGKILL mid-restore. B resumes from the safety
//! backup on a folder both can read, and refuses, naming the host and path
//! where the backup was written, when it cannot read it.
//!
//! Runner B runs on a host of its own when this machine allows it (its own
//! UTS namespace with the host name `runner-b`, through `unshare --uts`), so
//! it sees what a second machine would: A's programs on a host it cannot
//! reach, and A's backups by host and path.

mod common;
mod pg_support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use pg_support::*;

const ROWS: u32 = 1_500_000;
const HOST_B: &str = "runner-b";

/// Whether runner B can get a host name of its own here.
fn separate_host() -> bool {
    Command::new("unshare")
        .args(["--uts", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `rollback --state-dir STATE --journal URL ARGS...` as runner B.
fn runner_b(sb: &Sandbox, journal: &str, db_url: &str, args: &[&str]) -> Command {
    let mut cmd = if separate_host() {
        let mut c = Command::new("unshare");
        c.args(["--uts", "sh", "-c"])
            .arg(format!("hostname {HOST_B} && exec \"$0\" \"$@\""))
            .arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--state-dir")
        .arg(&sb.state)
        .args(["--journal", journal])
        .args(args)
        .env_remove("ROLLBACK_STATE_DIR")
        .env_remove("ROLLBACK_OPERATOR")
        .env("NO_COLOR", "1")
        .env("DB_URL", db_url)
        .current_dir(sb.path())
        .stdin(Stdio::null());
    cmd
}

/// The journal's records of a run, in order.
fn shared_records(journal: &str, run_id: &str) -> Vec<serde_json::Value> {
    psql(
        journal,
        &format!(
            "SELECT record FROM rollback.records WHERE run_id = {} ORDER BY n",
            literal(run_id)
        ),
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("record is JSON"))
    .collect()
}

/// What both tests share: the live database damaged after its clean
/// backup, the journal database, and runner A's sandbox.
struct Setup {
    dbs: TestDatabases,
    db_url: String,
    journal: String,
    clean: std::path::PathBuf,
    _clean_dir: tempfile::TempDir,
    a: Sandbox,
    b: Sandbox,
}

fn setup(admin: &str, prefix: &str) -> Setup {
    let dbs = TestDatabases::new(admin, prefix);
    let db_url = dbs.url(&dbs.prefix);
    let journal_db = format!("{prefix} journal");
    psql(admin, &format!("CREATE DATABASE {}", ident(&journal_db)));
    let journal = dbs.url(&journal_db);
    seed_orders(&db_url, ROWS);
    // The backup to restore is where both runners read it (these tests are
    // about the safety backup).
    let clean_dir = tempfile::tempdir().expect("clean backup folder");
    let clean = clean_dir.path().join("clean.dump");
    dump(&db_url, &clean);
    damage_orders(&db_url);
    Setup {
        dbs,
        db_url,
        journal,
        clean,
        _clean_dir: clean_dir,
        a: Sandbox::new(),
        b: Sandbox::new(),
    }
}

/// Starts the plan on runner A, kills A (SIGKILL, only its group) once
/// pg_restore copies into the temporary database, and returns the run id,
/// A's host and the orphaned pg_restore's pid.
fn run_and_kill_runner_a(s: &Setup, plan: &Path) -> (String, String, u32) {
    let mut cmd = s.a.cmd([
        "--journal".as_ref(),
        s.journal.as_ref(),
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    cmd.env("DB_URL", &s.db_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut runner = cmd.spawn().expect("start runner A");
    let temp_prefix = format!("{}_restore_", s.dbs.prefix);
    wait_until(
        SLOW,
        "pg_restore to copy into the temporary database",
        || copying(&s.dbs.admin, &temp_prefix, true),
    );
    let status = Command::new("kill")
        .args(["-9", "--", &format!("-{}", runner.id())])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = wait_child(&mut runner, WAIT, "runner A");
    assert!(status.code().is_none(), "killed: {status}");
    let out = s.a.run(["--journal", &s.journal, "-o", "json", "history"]);
    out.expect_code(0);
    let run_id = out.json()[0]["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let records = shared_records(&s.journal, &run_id);
    let restore = programs(&records, "--dbname");
    assert_eq!(restore.len(), 1, "{records:#?}");
    let pid = restore[0]["program"]["pid"].as_u64().expect("pid") as u32;
    let host = restore[0]["program"]["host"]
        .as_str()
        .expect("host")
        .to_string();
    (run_id, host, pid)
}

/// The operator ends, on host A, the pg_restore runner A left.
fn end_on_host_a(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pid}")])
        .status();
    wait_until(WAIT, "the orphaned pg_restore to end", || !running(pid));
}

/// `resume RUN` on runner B, first saying (when B is another host) that
/// A's programs have ended.
fn resume_on_b(s: &Setup, run_id: &str, host_a: &str) -> Out {
    let mut args = vec!["resume", run_id];
    if separate_host() {
        args.extend(["--programs-ended-on", host_a]);
    }
    run_within(runner_b(&s.b, &s.journal, &s.db_url, &args), SLOW)
}

fn restore_step_yaml(s: &Setup, extra: &str) -> String {
    format!(
        "  - id: restore\n    kind: db.restore\n    url: ${{env:DB_URL}}\n    from: {from}\n    jobs: 2\n    pg_bin_dir: {bin}\n{extra}    checks:\n      - sql: SELECT count(*) FROM orders\n        expect: \"= {ROWS}\"\n",
        from = qp(&s.clean),
        bin = qp(&pg_bin("")),
    )
}

fn assert_restored(s: &Setup, run_id: &str) {
    assert_eq!(
        scalar(&s.db_url, "SELECT count(*) FROM orders"),
        ROWS as i64
    );
    assert_eq!(
        scalar(&s.db_url, "SELECT count(*) FROM orders WHERE total < 0"),
        0
    );
    let temp_prefix = format!("{}_restore_", s.dbs.prefix);
    let left = s.dbs.existing();
    assert!(
        !left.iter().any(|d| d.starts_with(&temp_prefix)),
        "a temporary database is left: {left:?}"
    );
    assert!(
        left.contains(&format!("{}_before_{run_id}", s.dbs.prefix)),
        "{left:?}"
    );
}

#[test]
fn runner_b_resumes_a_restore_runner_a_left_from_the_safety_backup_on_shared_storage() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let s = setup(&admin, "cli shared ok");
    let shared = tempfile::tempdir().expect("shared storage");
    let plan = s.a.write(
        "plan.yaml",
        &format!(
            "name: shared-restore\nbudget: 10m\nsteps:\n{}",
            restore_step_yaml(
                &s,
                &format!("    safety_backup_dir: {}\n", qp(shared.path()))
            )
        ),
    );
    let (run_id, host_a, pid) = run_and_kill_runner_a(&s, &plan);
    let _cleanup = EndOnDrop(vec![pid]);
    assert!(running(pid), "pg_restore outlived runner A");

    if separate_host() {
        // B cannot see A's programs: it refuses until the operator says
        // they ended.
        let out = run_within(
            runner_b(&s.b, &s.journal, &s.db_url, &["resume", &run_id]),
            SLOW,
        );
        out.expect_code(2);
        for needle in [
            "may still be running where this runner cannot see them".to_string(),
            format!("(pid {pid}) on host {host_a}"),
            format!("--programs-ended-on {host_a}"),
        ] {
            assert!(
                out.stderr.contains(&needle),
                "lacks `{needle}`:\n{}",
                out.stderr
            );
        }
        end_on_host_a(pid);
    }
    let out = resume_on_b(&s, &run_id, &host_a);
    out.expect_code(0);
    assert!(!running(pid));

    assert_restored(&s, &run_id);
    let records = shared_records(&s.journal, &run_id);
    let resumed = position(&records, "run_resumed", |r| r["event"] == "run_resumed");
    if separate_host() {
        assert_eq!(records[resumed]["host"], HOST_B, "{:#}", records[resumed]);
    }
    let settled = position(&records, "program_settled", |r| {
        r["event"] == "program_settled"
    });
    assert_eq!(records[settled]["program"]["pid"], pid);
    let report = run_within(
        runner_b(
            &s.b,
            &s.journal,
            &s.db_url,
            &["-o", "json", "show", &run_id],
        ),
        WAIT,
    );
    report.expect_code(0);
    let report = report.json();
    assert_eq!(report["status"], "succeeded");
    let safety = step(&report, "restore")["outputs"]["safety_backup"]
        .as_str()
        .expect("safety backup path")
        .to_string();
    assert!(
        Path::new(&safety).starts_with(shared.path()) && Path::new(&safety).is_file(),
        "{safety}"
    );
}

#[test]
fn runner_b_that_cannot_read_the_safety_backup_stops_naming_host_and_path_and_changes_nothing() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let s = setup(&admin, "cli shared refused");
    // Runner A's own disk, which B cannot read.
    let a_disk = s.a.file("a-disk");
    let plan = s.a.write(
        "plan.yaml",
        &format!(
            "name: local-safety-backup\nbudget: 10m\nsteps:\n\
             \x20 - id: safety\n    kind: db.backup\n    url: ${{env:DB_URL}}\n    dir: {dir}\n    pg_bin_dir: {bin}\n{restore}",
            dir = qp(&a_disk.join("backups")),
            bin = qp(&pg_bin("")),
            restore = restore_step_yaml(&s, "    after: [safety]\n"),
        ),
    );
    let (run_id, host_a, pid) = run_and_kill_runner_a(&s, &plan);
    let _cleanup = EndOnDrop(vec![pid]);
    end_on_host_a(pid);
    let records = shared_records(&s.journal, &run_id);
    let taken = records
        .iter()
        .find(|r| r["event"] == "step_finished" && r["step"] == "safety")
        .expect("the safety backup completed on A");
    let path = taken["outputs"]["path"].as_str().expect("path").to_string();
    assert_eq!(taken["outputs"]["host"], host_a.as_str());
    // B cannot reach A's disk.
    let hidden = s.a.file("a-disk.unreachable");
    std::fs::rename(&a_disk, &hidden).expect("hide A's disk");
    let databases = s.dbs.existing();
    let live_rows = scalar(&s.db_url, "SELECT count(*) FROM orders");

    let out = resume_on_b(&s, &run_id, &host_a);
    eprintln!("runner B's refusal:\n{}", out.stderr);
    out.expect_code(1);
    let host_b = if separate_host() {
        HOST_B.to_string()
    } else {
        host_a.clone()
    };
    for needle in [
        format!("the safety backup (step `safety`) was written on host {host_a} at {path}"),
        format!("this runner (host {host_b}) cannot read it"),
        "so nothing was changed".to_string(),
        "put `dir:` on storage every runner of the run can read".to_string(),
    ] {
        assert!(
            out.all().contains(&needle),
            "lacks `{needle}`:\n{}",
            out.all()
        );
    }
    // Nothing changed: A's temporary database is still there, the live one
    // is as it was, and B took no backup of its own.
    assert_eq!(s.dbs.existing(), databases);
    assert_eq!(scalar(&s.db_url, "SELECT count(*) FROM orders"), live_rows);
    let written: Vec<_> = walk(&s.b.state)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".dump"))
        .collect();
    assert!(written.is_empty(), "B wrote {written:?}");

    // The storage is fixed: B resumes and the restore completes.
    std::fs::rename(&hidden, &a_disk).expect("A's disk back");
    let out = resume_on_b(&s, &run_id, &host_a);
    out.expect_code(0);
    assert_restored(&s, &run_id);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
