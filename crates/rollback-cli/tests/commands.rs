//! The commands end to end: validate, plan (dry run), schema, kinds, history,
//! quickstart, show, and the exit code of each way a run can end.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;

const QUICKSTART_PLAN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/quickstart/plan.yaml"
);

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Runs git by argv in `repo`, with an identity and no signing.
fn git(repo: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=rollback tests",
            "-c",
            "user.email=tests@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_plan(sb: &Sandbox, plan: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "run",
        plan.to_str().expect("UTF-8"),
        "--reason",
        "integration test",
    ];
    args.extend_from_slice(extra);
    sb.run(args)
}

#[test]
fn validate_the_quickstart_plan() {
    let sb = Sandbox::new();
    let out = sb.run(["validate", QUICKSTART_PLAN, "--var", "repo=/tmp"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(
            "plan quickstart is valid: 4 steps, 2 checks, 1 preflight, 0 notifiers, budget 1m"
        ),
        "{}",
        out.stdout
    );

    let out = sb.run([
        "-o",
        "json",
        "validate",
        QUICKSTART_PLAN,
        "--var",
        "repo=/tmp",
    ]);
    out.expect_code(0);
    let doc = out.json();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["plan"], "quickstart");
    assert_eq!(doc["budget_ms"], 60_000);
    assert_eq!(doc["steps"].as_array().expect("steps").len(), 4);

    // `repo` has no default: without --var the plan is incomplete.
    let out = sb.run(["validate", QUICKSTART_PLAN]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("variable `repo` has no value"),
        "{}",
        out.stderr
    );
}

#[test]
fn dry_run_of_git_restore_shows_the_change_and_changes_nothing() {
    let sb = Sandbox::new();
    let repo = sb.file("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("service.conf"), "version=v1\n").expect("write v1");
    git(&repo, &["add", "service.conf"]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    std::fs::write(repo.join("service.conf"), "version=v2\n").expect("write v2");
    git(&repo, &["commit", "-q", "-am", "v2"]);

    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: git-preview\nsteps:\n  - id: restore\n    kind: git.restore\n    repo: {}\n    revision: HEAD~1\n    paths: [service.conf]\n",
            qp(&repo)
        ),
    );
    let before = std::fs::read(repo.join("service.conf")).expect("read");

    let out = sb.run(["plan".as_ref(), plan.as_os_str()]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("nothing will be changed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("~ service.conf: restore from"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(differs)"), "{}", out.stdout);

    let out = sb.run([
        "-o".as_ref(),
        "json".as_ref(),
        "preview".as_ref(),
        plan.as_os_str(),
    ]);
    out.expect_code(0);
    let doc = out.json();
    let changes = &doc["steps"][0]["preview"]["Ok"]["changes"];
    assert_eq!(changes.as_array().map(Vec::len), Some(1), "{doc:#}");
    assert!(changes[0]
        .as_str()
        .unwrap_or_default()
        .starts_with("service.conf:"));

    assert_eq!(
        std::fs::read(repo.join("service.conf")).expect("read"),
        before,
        "a dry run must not touch the file"
    );
    assert!(sb.history().is_empty(), "a dry run is not journaled");
    assert!(!sb.state.join("runs").exists());

    // The real run does what the preview said.
    run_plan(&sb, &plan, &[]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(repo.join("service.conf")).expect("read"),
        "version=v1\n"
    );
    // And now the preview finds nothing to do.
    let out = sb.run(["plan".as_ref(), plan.as_os_str()]);
    out.expect_code(0);
    assert!(out.stdout.contains("no change needed"), "{}", out.stdout);
}

#[test]
fn schema_is_json_with_a_branch_per_kind() {
    let sb = Sandbox::new();
    let out = sb.run(["schema"]);
    out.expect_code(0);
    assert!(out.stdout.contains("\"oneOf\""), "{}", out.stdout);
    let schema = out.json();
    let branches = schema["properties"]["steps"]["items"]["oneOf"]
        .as_array()
        .expect("steps.items.oneOf");
    let kinds: Vec<&str> = branches
        .iter()
        .filter_map(|b| b["properties"]["kind"]["const"].as_str())
        .collect();
    for kind in ["exec", "http", "wait", "confirm", "git.restore"] {
        assert!(kinds.contains(&kind), "no branch for {kind}: {kinds:?}");
    }
    let exec = branches
        .iter()
        .find(|b| b["properties"]["kind"]["const"] == "exec")
        .expect("exec branch");
    assert!(exec["properties"]["argv"].is_object(), "{exec:#}");
}

#[test]
fn kinds_lists_core_kinds() {
    let sb = Sandbox::new();
    let out = sb.run(["kinds"]);
    out.expect_code(0);
    for kind in ["exec", "http", "git.restore", "wait", "confirm", "tcp"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{kind} "))),
            "{kind} missing:\n{}",
            out.stdout
        );
    }
    let doc = sb.run(["-o", "json", "kinds"]).json();
    let names = |section: &str| -> Vec<String> {
        doc[section]
            .as_array()
            .expect("section")
            .iter()
            .map(|k| k["kind"].as_str().expect("kind").to_string())
            .collect()
    };
    assert!(names("steps").contains(&"git.restore".to_string()));
    assert!(names("checks").contains(&"tcp".to_string()));
    assert!(
        !names("steps").contains(&"tcp".to_string()),
        "tcp is only a check"
    );
}

#[test]
fn history_of_an_empty_state_dir() {
    let sb = Sandbox::new();
    let out = sb.run(["history"]);
    out.expect_code(0);
    assert_eq!(out.stdout, "No runs yet.\n");
    assert!(sb.history().is_empty());
    let out = sb.run(["show", "last"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no runs yet"), "{}", out.stderr);
}

#[test]
fn quickstart_passes_and_is_journaled_as_a_drill() {
    let sb = Sandbox::new();
    let out = sb.run(["quickstart"]);
    out.expect_code(0);
    assert!(out.stdout.contains("Drill PASS"), "{}", out.stdout);
    let runs = sb.history();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["drill"], true);
    assert_eq!(runs[0]["plan"], "quickstart");
    let run_id = runs[0]["run_id"].as_str().expect("run id");
    assert!(sb.run_dir(run_id).join("drill.md").exists());
    let drill: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sb.run_dir(run_id).join("drill.json")).expect("drill.json"),
    )
    .expect("drill.json is JSON");
    assert_eq!(drill["passed"], true);
    // The drill measured each step against the budget.
    let used = drill["budget_used_percent"]
        .as_f64()
        .expect("budget_used_percent");
    assert!(used > 0.0 && used < 100.0, "{drill:#}");
    assert_eq!(drill["report"]["budget_ms"], 60_000, "{drill:#}");
    let steps = drill["report"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "{drill:#}");
    for s in steps {
        assert_eq!(s["outcome"], "succeeded", "{s:#}");
        assert!(s["start_ms"].is_u64() && s["duration_ms"].is_u64(), "{s:#}");
    }
    // The release really was broken before the rollback...
    let report = sb.show(run_id);
    assert_eq!(
        step(&report, "record_broken_health")["outputs"]["status"],
        503,
        "{report:#}"
    );
    let markdown = std::fs::read_to_string(sb.run_dir(run_id).join("drill.md")).expect("drill.md");
    for id in ["record_broken_health", "restore_config", "reload_service"] {
        assert!(markdown.contains(id), "drill.md lists {id}:\n{markdown}");
    }
    // ...and the config really was rolled back.
    let conf = sb.state.join("quickstart/service/service.conf");
    assert!(
        std::fs::read_to_string(&conf)
            .expect("service.conf")
            .contains("version=v1"),
        "{}",
        conf.display()
    );
}

#[test]
fn run_requires_a_reason() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let out = sb.run(["run".as_ref(), plan.as_os_str()]);
    out.expect_code(2);
    assert!(out.stderr.contains("--reason"), "{}", out.stderr);
    assert!(out.stderr.contains("Usage:"), "{}", out.stderr);
    // An empty reason is refused by the engine too.
    let out = sb.run([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        " ".as_ref(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("a run needs a reason"),
        "{}",
        out.stderr
    );
    assert!(sb.history().is_empty());
}

#[test]
fn help_documents_the_exit_codes() {
    let sb = Sandbox::new();
    let out = sb.run(["--help"]);
    out.expect_code(0);
    assert!(out.stdout.contains("Exit codes:"), "{}", out.stdout);
    assert!(out.stdout.contains("5    locked"), "{}", out.stdout);
    let out = sb.run(["no-such-command"]);
    out.expect_code(2);
}

#[test]
fn a_failed_step_exits_1_and_stops_the_run() {
    let sb = Sandbox::new();
    let marker = sb.file("after.marker");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: failing\nsteps:\n  - id: boom\n    kind: exec\n    argv: [sh, -c, 'echo broken >&2; exit 7']\n  - id: next\n    kind: exec\n    after: [boom]\n    argv: [touch, {}]\n",
            qp(&marker)
        ),
    );
    let out = run_plan(&sb, &plan, &[]);
    out.expect_code(1);
    assert!(out.stderr.contains("exited with 7"), "{}", out.stderr);
    assert!(out.stderr.contains("broken"), "{}", out.stderr);
    assert!(
        out.stdout.contains("Details: rollback show"),
        "{}",
        out.stdout
    );
    assert!(!marker.exists(), "a step after a failed one must not run");
    let run_id = sb.only_run_id();
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "step_failed");
    assert_eq!(step(&report, "boom")["outcome"], "failed");
    assert_eq!(step(&report, "next")["outcome"], "skipped");
}

#[test]
fn compensation_undoes_completed_steps_in_reverse() {
    let sb = Sandbox::new();
    let log = sb.file("log.txt");
    let l = qp(&log);
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: compensating
on_failure: compensate
steps:
  - id: one
    kind: exec
    argv: [sh, -c, 'echo one >> \"$0\"', {l}]
    undo: [sh, -c, 'echo undo-one >> \"$0\"', {l}]
  - id: two
    kind: exec
    after: [one]
    argv: [sh, -c, 'echo two >> \"$0\"', {l}]
    undo: [sh, -c, 'echo undo-two >> \"$0\"', {l}]
  - id: three
    kind: exec
    after: [two]
    argv: [\"false\"]
"
        ),
    );
    let out = run_plan(&sb, &plan, &[]);
    out.expect_code(1);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "one\ntwo\nundo-two\nundo-one\n"
    );
    let report = sb.show(&sb.only_run_id());
    assert_eq!(report["compensated"], true);
    assert_eq!(step(&report, "one")["undo"], "succeeded");
    assert_eq!(step(&report, "two")["undo"], "succeeded");
    // A compensated run cannot be resumed.
    let out = sb.run(["resume", "last"]);
    out.expect_code(2);
    assert!(out.stderr.contains("undone"), "{}", out.stderr);
}

#[test]
fn a_failed_verification_exits_3() {
    let sb = Sandbox::new();
    let port = closed_port();
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: unverified\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\nverify:\n  - name: health\n    kind: http\n    url: http://127.0.0.1:{port}/health\n    timeout: 2s\n"
        ),
    );
    let out = run_plan(&sb, &plan, &[]);
    out.expect_code(3);
    assert!(out.stderr.contains("✗ verify health"), "{}", out.stderr);
    let report = sb.show(&sb.only_run_id());
    assert_eq!(report["status"], "verification_failed");
    assert_eq!(report["checks"][0]["passed"], false);
    assert_eq!(
        report["checks"][0]["attempts"], 1,
        "no `within`: one measurement"
    );
    assert_eq!(step(&report, "a")["outcome"], "succeeded");
}

#[test]
fn a_failed_preflight_exits_6_and_runs_nothing() {
    let sb = Sandbox::new();
    let port = closed_port();
    let marker = sb.file("ran.marker");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: gated\npreflight:\n  - name: up\n    kind: tcp\n    address: 127.0.0.1:{port}\nsteps:\n  - id: a\n    kind: exec\n    argv: [touch, {}]\n",
            qp(&marker)
        ),
    );
    let out = run_plan(&sb, &plan, &[]);
    out.expect_code(6);
    assert!(!marker.exists(), "no step runs after a failed preflight");
    assert_eq!(sb.show(&sb.only_run_id())["status"], "preflight_failed");
}

#[test]
fn running_out_of_budget_exits_4_and_is_journaled() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: slow\nbudget: 300ms\nsteps:\n  - id: nap\n    kind: wait\n    duration: 30s\n  - id: later\n    kind: exec\n    after: [nap]\n    argv: [\"true\"]\n",
    );
    let started = Instant::now();
    let out = run_plan(&sb, &plan, &[]);
    out.expect_code(4);
    assert!(
        started.elapsed().as_secs() < 10,
        "the budget interrupts the 30s wait"
    );
    assert!(
        out.stderr.contains("budget of 300ms exceeded"),
        "{}",
        out.stderr
    );
    let run_id = sb.only_run_id();
    let records = sb.records(&run_id);
    let exceeded = events(&records, "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{records:#?}");
    assert_eq!(exceeded[0]["budget_ms"], 300);
    assert_eq!(exceeded[0]["running"], serde_json::json!(["nap"]));
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "budget_exceeded");
    assert_eq!(report["budget_exceeded"], true);
    assert_eq!(step(&report, "nap")["outcome"], "interrupted");
    assert_eq!(step(&report, "later")["outcome"], "skipped");
}

#[test]
fn confirm_without_a_terminal_needs_yes() {
    let sb = Sandbox::new();
    let marker = sb.file("after.marker");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: confirming\nsteps:\n  - id: go\n    kind: confirm\n    message: Restore the database?\n  - id: restore\n    kind: exec\n    after: [go]\n    argv: [touch, {}]\n",
            qp(&marker)
        ),
    );
    // stdin is /dev/null (not a terminal) and there is no --yes.
    let out = run_plan(&sb, &plan, &["--operator", "dave"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("step `go` needs confirmation"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("pass --yes"), "{}", out.stderr);
    assert!(!marker.exists());
    let refused = sb.only_run_id();
    assert!(sb.show(&refused)["approvals"]
        .as_array()
        .expect("approvals")
        .is_empty());

    let out = run_plan(&sb, &plan, &["--operator", "dave", "--yes"]);
    out.expect_code(0);
    assert!(marker.exists());
    assert!(
        out.stderr.contains("go approved by dave (--yes)"),
        "{}",
        out.stderr
    );
    let runs = sb.history();
    assert_eq!(runs.len(), 2);
    let approved = runs
        .iter()
        .find(|r| r["status"] == "succeeded")
        .expect("the approved run");
    let report = sb.show(approved["run_id"].as_str().expect("run id"));
    assert_eq!(
        report["approvals"],
        serde_json::json!([{"step": "go", "approved_by": "dave", "method": "--yes"}]),
        "{report:#}"
    );
    assert_eq!(step(&report, "go")["outputs"]["approved_by"], "dave");
}

#[test]
fn show_and_history_describe_a_run() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: described\nbudget: 1m\nsteps:\n  - id: hello\n    kind: exec\n    argv: [echo, hi]\n",
    );
    let out = run_plan(
        &sb,
        &plan,
        &["--operator", "erin", "--trigger", "alert: 5xx"],
    );
    out.expect_code(0);
    assert!(out.stdout.contains("Rollback SUCCEEDED"), "{}", out.stdout);
    let run_id = sb.only_run_id();

    let human = sb.run(["history"]);
    human.expect_code(0);
    assert!(human.stdout.contains(&run_id), "{}", human.stdout);
    assert!(human.stdout.contains("succeeded"), "{}", human.stdout);

    let report = sb.show("last");
    assert_eq!(report["run"]["run_id"], run_id.as_str());
    assert_eq!(report["run"]["operator"], "erin");
    assert_eq!(report["run"]["reason"], "integration test");
    assert_eq!(report["run"]["trigger"], "alert: 5xx");
    assert_eq!(report["budget_ms"], 60_000);
    assert_eq!(step(&report, "hello")["outputs"]["stdout"], "hi");
    assert_eq!(step(&report, "hello")["outputs"]["exit_code"], 0);

    let text = sb.run(["show", &run_id]);
    text.expect_code(0);
    assert!(
        text.stdout.contains(&format!(
            "journal: {}",
            sb.run_dir(&run_id).join("journal.jsonl").display()
        )),
        "{}",
        text.stdout
    );
    let missing = sb.run(["show", "nope"]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("no run `nope`"),
        "{}",
        missing.stderr
    );

    let filtered = sb.run(["-o", "json", "history", "--plan", "other"]);
    filtered.expect_code(0);
    assert_eq!(filtered.json(), serde_json::json!([]));
}
