//! `--journal postgres://...`: two runners with separate state directories
//! share one history in PostgreSQL, and the plan lock (an advisory lock) keeps
//! the second from running the plan while the first does.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// A fresh database for this test on the test server; returns its URL.
fn fresh_database(admin_url: &str, name: &str) -> String {
    let psql = std::env::var("PG_BIN_DIR")
        .map(|d| format!("{d}/psql"))
        .unwrap_or_else(|_| "psql".into());
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\""),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        let out = Command::new(&psql)
            .arg(admin_url)
            .arg("-qc")
            .arg(&sql)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

fn hold_plan(sb: &Sandbox) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let marker = sb.file("holding.marker");
    let release = sb.file("release");
    let hold = sb.write(
        "hold.sh",
        &format!(
            "#!/bin/sh\n: > {m}\ni=0\nwhile [ ! -e {r} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n[ -e {r} ]\n",
            m = qp(&marker),
            r = qp(&release)
        ),
    );
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: shared-plan\nsteps:\n  - id: hold\n    kind: exec\n    argv: [sh, {}]\n",
            qp(&hold)
        ),
    );
    (plan.to_str().expect("UTF-8").to_string(), marker, release)
}

#[test]
fn two_runners_share_history_and_the_plan_lock_through_postgres() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let url = fresh_database(&admin, "rollback_cli_shared_journal");
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let (plan_a, marker, release) = hold_plan(&a);
    let (plan_b, _, _) = hold_plan(&b);
    std::fs::write(b.file("release"), "").expect("runner B's own runs do not wait");

    let mut first = a.cmd([
        "--journal",
        &url,
        "run",
        &plan_a,
        "--reason",
        "first",
        "--operator",
        "alice",
    ]);
    first.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut first = first.spawn().expect("start runner A");
    wait_for_file(&marker, "runner A's step to start");

    // Runner B, another state directory, same journal: refused, holder named.
    let out = b.run([
        "--journal",
        &url,
        "run",
        &plan_b,
        "--reason",
        "second",
        "--operator",
        "bob",
    ]);
    out.expect_code(5);
    assert!(
        out.stderr
            .contains("plan `shared-plan` is being run by alice"),
        "{}",
        out.stderr
    );

    // And it sees runner A's run in the shared history.
    let out = b.run(["--journal", &url, "-o", "json", "history"]);
    out.expect_code(0);
    let runs = out.json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs:#}");
    assert_eq!(runs[0]["operator"], "alice");
    assert!(runs[0]["status"].is_null(), "still running: {runs:#}");

    std::fs::write(&release, "").expect("release runner A");
    let status = wait_child(&mut first, WAIT, "runner A");
    assert_eq!(status.code(), Some(0));

    b.run([
        "--journal",
        &url,
        "run",
        &plan_b,
        "--reason",
        "third",
        "--operator",
        "carol",
    ])
    .expect_code(0);
    let out = a.run(["--journal", &url, "-o", "json", "history"]);
    let mut operators: Vec<String> = out
        .json()
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["operator"].as_str().unwrap_or("").to_string())
        .collect();
    operators.sort();
    assert_eq!(operators, ["alice", "carol"]);
    // `show` from the other runner reads the same journal.
    let id = out.json()[0]["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let show = b.run(["--journal", &url, "-o", "json", "show", &id]);
    show.expect_code(0);
    assert_eq!(show.json()["status"], "succeeded");

    // A journal URL that is not PostgreSQL is invalid input.
    a.run(["--journal", "sqlite://x.db", "history"])
        .expect_code(2);
}

#[test]
fn a_second_runner_lists_shows_and_reports_the_first_runners_drills() {
    let Some(admin) = rollback_core::testing::require_env("DATABASE_URL") else {
        return;
    };
    let url = fresh_database(&admin, "rollback_cli_shared_reports");
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let plan = a.write(
        "plan.yaml",
        "name: drill-shared\nbudget: 1m\nsteps:\n  - id: noop\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let plan = plan.to_str().expect("UTF-8 path");
    a.run([
        "--journal",
        &url,
        "drill",
        plan,
        "--reason",
        "monthly drill",
    ])
    .expect_code(0);
    let on_a = a.run(["--journal", &url, "-o", "json", "history"]);
    let run_id = on_a.json()[0]["run_id"]
        .as_str()
        .expect("runner A's run")
        .to_string();

    // Runner B, with a state directory of its own, sees everything.
    let history = b.run(["--journal", &url, "-o", "json", "history"]);
    history.expect_code(0);
    assert_eq!(history.json()[0]["run_id"], run_id.as_str());
    let drills = b.run(["--journal", &url, "-o", "json", "drills"]);
    drills.expect_code(0);
    let drill = &drills.json()[0];
    assert_eq!(drill["run_id"], run_id.as_str(), "{drill:#}");
    assert_eq!(drill["passed"], true, "{drill:#}");
    let show = b.run(["--journal", &url, "show", &run_id]);
    show.expect_code(0);
    for needle in [
        "journal: the PostgreSQL journal",
        "kept in the journal store",
        "drill.md",
        "drill.html",
    ] {
        assert!(
            show.stdout.contains(needle),
            "show lacks `{needle}`:\n{}",
            show.stdout
        );
    }
    let md = b.run(["--journal", &url, "report", &run_id]);
    md.expect_code(0);
    assert!(
        md.stdout.contains("# Rollback drill: drill-shared — PASS"),
        "{}",
        md.stdout
    );
    let html = b.file("report.html");
    b.run([
        "--journal",
        &url,
        "report",
        &run_id,
        "--format",
        "html",
        "--out",
        html.to_str().expect("UTF-8 path"),
    ])
    .expect_code(0);
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(
        page.contains("<svg") && page.contains("drill-shared"),
        "{page}"
    );
    assert!(
        !b.state.join("runs").join(&run_id).exists(),
        "runner B keeps nothing of A's run on its disk"
    );
}
