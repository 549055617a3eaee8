//! The guardrails end to end through the `rollback` binary: approvals by
//! named roles, the preflight gate, the list of drills, and `watch --once`
//! run from cron (state kept across processes).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
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

/// The item named `name` in a `preflight -o json` document.
fn item<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no preflight item `{name}` in {doc:#}"))
}

/// `preflight -o json PLAN EXTRA...`, expecting `code`.
fn preflight_json(sb: &Sandbox, plan: &Path, extra: &[&str], code: i32) -> serde_json::Value {
    let mut args = vec!["-o", "json", "preflight", s(plan)];
    args.extend_from_slice(extra);
    let out = sb.run(args);
    out.expect_code(code);
    let doc = out.json();
    assert_eq!(doc["passed"], code == 0, "{doc:#}");
    doc
}

const DRILL_ITEM: &str = "proven by a successful drill";

// ---------------------------------------------------------------- approvals

/// backup → swap, where swap needs the engineering manager's approval. Each
/// step touches its marker file.
fn approval_plan(sb: &Sandbox) -> (PathBuf, PathBuf, PathBuf) {
    let backup = sb.file("backup.marker");
    let swap = sb.file("swap.marker");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: approvals-test\n\
             budget: 1m\n\
             approvals:\n\
             \x20 - role: engineering-manager\n    before: [swap]\n\
             steps:\n\
             \x20 - id: backup\n    kind: exec\n    argv: [touch, {backup}]\n\
             \x20 - id: swap\n    kind: exec\n    after: [backup]\n    argv: [touch, {swap}]\n",
            backup = qp(&backup),
            swap = qp(&swap),
        ),
    );
    (plan, backup, swap)
}

#[test]
fn a_role_approval_is_required_before_the_guarded_step_and_journaled() {
    let sb = Sandbox::new();
    let (plan, backup, swap) = approval_plan(&sb);

    // No terminal, no --approved-by: --yes does not stand in for a named role.
    let out = sb.run(["run", s(&plan), "--reason", "x", "--yes"]);
    out.expect_code(1);
    assert!(
        backup.exists(),
        "backup should have run before the guarded step"
    );
    assert!(!swap.exists(), "swap ran without the manager's approval");
    let hint = "--approved-by 'engineering-manager=NAME'";
    assert!(
        out.all().contains(hint),
        "no hint `{hint}` in:\n{}",
        out.all()
    );
    let refused = sb.only_run_id();
    let report = sb.show(&refused);
    assert_eq!(report["status"], "step_failed", "{report:#}");
    let swap_report = step(&report, "swap");
    assert_eq!(swap_report["outcome"], "failed", "{report:#}");
    let error = swap_report["error"].as_str().expect("swap has an error");
    assert!(
        error.contains("not approved") && error.contains(hint),
        "{error}"
    );
    assert_eq!(report["approvals"], serde_json::json!([]), "{report:#}");
    assert!(events(&sb.records(&refused), "approved").is_empty());

    // A malformed --approved-by is bad input; nothing runs.
    std::fs::remove_file(&backup).expect("remove marker");
    let out = sb.run(["run", s(&plan), "--reason", "x", "--approved-by", "amara"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("write ROLE=NAME, e.g. engineering-manager=amara"),
        "{}",
        out.stderr
    );
    assert!(
        !backup.exists(),
        "a run with malformed flags started anyway"
    );
    assert_eq!(
        sb.history().len(),
        1,
        "a run with malformed flags was journaled"
    );

    // Named approval given up front: the run goes through and records who.
    let out = sb.run([
        "run",
        s(&plan),
        "--reason",
        "x",
        "--operator",
        "olga",
        "--approved-by",
        "engineering-manager=amara",
    ]);
    out.expect_code(0);
    assert!(backup.exists() && swap.exists());
    assert!(
        out.stderr
            .contains("swap approved by amara as engineering-manager (--approved-by)"),
        "{}",
        out.stderr
    );
    let runs = sb.history();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let approved = runs[0]["run_id"].as_str().expect("run_id").to_string();
    assert_ne!(approved, refused);
    let report = sb.show(&approved);
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(
        report["approvals"],
        serde_json::json!([{
            "step": "swap",
            "approved_by": "amara",
            "method": "--approved-by",
            "role": "engineering-manager",
        }]),
        "{report:#}"
    );
    let records = sb.records(&approved);
    let journaled = events(&records, "approved");
    assert_eq!(journaled.len(), 1, "{records:#?}");
    assert_eq!(journaled[0]["role"], "engineering-manager");
    assert_eq!(journaled[0]["approved_by"], "amara");
    assert_eq!(journaled[0]["step"], "swap");
    // The approval is journaled before the guarded step starts.
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        records.iter().position(pred).expect("record present")
    };
    assert!(
        pos(&|r| r["event"] == "approved")
            < pos(&|r| r["event"] == "step_started" && r["step"] == "swap"),
        "{records:#?}"
    );
}

#[test]
fn an_approval_for_another_role_does_not_count() {
    let sb = Sandbox::new();
    let (plan, backup, swap) = approval_plan(&sb);
    let out = sb.run([
        "run",
        s(&plan),
        "--reason",
        "x",
        "--yes",
        "--approved-by",
        "cto=amara",
    ]);
    out.expect_code(1);
    assert!(backup.exists());
    assert!(!swap.exists(), "an approval by another role let swap run");
    assert!(
        out.all()
            .contains("--approved-by 'engineering-manager=NAME'"),
        "{}",
        out.all()
    );
}

// ---------------------------------------------------------------- preflight

#[test]
fn preflight_requires_a_passing_drill_of_this_plan_text() {
    let sb = Sandbox::new();
    let marker = sb.file("ran.marker");
    let text = format!(
        "name: gate\nbudget: 1m\nsteps:\n  - id: act\n    kind: exec\n    argv: [touch, {}]\n",
        qp(&marker)
    );
    let plan = sb.write("plan.yaml", &text);

    // Never drilled: the gate is closed, and says why.
    let out = sb.run(["preflight", s(&plan)]);
    out.expect_code(6);
    assert!(out.stdout.contains(DRILL_ITEM), "{}", out.stdout);
    assert!(
        out.stdout.contains("no passing drill of this plan"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("FAIL"), "{}", out.stdout);
    let doc = preflight_json(&sb, &plan, &[], 6);
    let drill = item(&doc, DRILL_ITEM);
    assert_eq!(drill["status"], "fail", "{doc:#}");
    let digest = doc["digest"].as_str().expect("digest");
    assert!(
        drill["evidence"]
            .as_str()
            .is_some_and(|e| e.contains(digest) && e.contains("rollback drill")),
        "{doc:#}"
    );
    assert!(!marker.exists(), "preflight ran a step");

    // Drilled: the gate opens and names the drill.
    sb.run(["drill", s(&plan)]).expect_code(0);
    assert!(marker.exists());
    let drill_id = sb.only_run_id();
    let out = sb.run(["preflight", s(&plan)]);
    out.expect_code(0);
    assert!(out.stdout.contains(&drill_id), "{}", out.stdout);
    assert!(out.stdout.contains("PASS"), "{}", out.stdout);
    let doc = preflight_json(&sb, &plan, &[], 0);
    let drill = item(&doc, DRILL_ITEM);
    assert_eq!(drill["status"], "pass", "{doc:#}");
    let evidence = drill["evidence"].as_str().expect("evidence");
    assert!(
        evidence.contains(&drill_id) && evidence.contains("of this plan passed"),
        "{evidence}"
    );

    // The plan text changed: that drill no longer proves it...
    std::fs::write(&plan, format!("{text}# edited after the drill\n")).expect("edit plan");
    let doc = preflight_json(&sb, &plan, &[], 6);
    assert_ne!(
        doc["digest"].as_str(),
        Some(digest),
        "digest did not change"
    );
    assert_eq!(item(&doc, DRILL_ITEM)["status"], "fail", "{doc:#}");
    // ...unless an earlier version's drill within an age is accepted...
    let doc = preflight_json(&sb, &plan, &["--drill-max-age", "1h"], 0);
    let evidence = item(&doc, DRILL_ITEM)["evidence"]
        .as_str()
        .expect("evidence")
        .to_string();
    assert!(
        evidence.contains(&drill_id) && evidence.contains("an earlier version"),
        "{evidence}"
    );
    // ...or the drill requirement is waived.
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 0);
    assert!(
        doc["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["name"] != DRILL_ITEM),
        "{doc:#}"
    );
}

#[test]
fn a_failed_drill_does_not_open_the_gate() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: gate-failed\nbudget: 1m\nsteps:\n  - id: act\n    kind: exec\n    argv: [\"false\"]\n",
    );
    sb.run(["drill", s(&plan)]).expect_code(1);
    let drill_id = sb.only_run_id();
    let doc = preflight_json(&sb, &plan, &[], 6);
    let drill = item(&doc, DRILL_ITEM);
    assert_eq!(drill["status"], "fail", "{doc:#}");
    let evidence = drill["evidence"].as_str().expect("evidence");
    assert!(
        evidence.contains(&drill_id) && evidence.contains("did not pass"),
        "{evidence}"
    );
}

#[test]
fn preflight_checks_that_the_backup_exists_and_is_recent() {
    let sb = Sandbox::new();
    let backup = sb.file("backups/orders.dump");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: gate-backup\n\
             budget: 1m\n\
             preflight:\n\
             \x20 - name: backup\n    kind: file\n    path: {path}\n    max_age: 1h\n\
             steps:\n\
             \x20 - id: restore\n    kind: exec\n    argv: [test, -s, {path}]\n",
            path = qp(&backup)
        ),
    );
    let name = "check `backup` (file)";

    // Missing: the gate is closed and the evidence names the path.
    let out = sb.run(["preflight", s(&plan), "--no-drill"]);
    out.expect_code(6);
    assert!(out.stdout.contains(s(&backup)), "{}", out.stdout);
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 6);
    let check = item(&doc, name);
    assert_eq!(check["status"], "fail", "{doc:#}");
    assert!(
        check["evidence"]
            .as_str()
            .is_some_and(|e| e.contains(s(&backup))),
        "{doc:#}"
    );

    // Present and fresh: open.
    std::fs::create_dir_all(backup.parent().expect("parent")).expect("mkdir");
    std::fs::write(&backup, "PGDMP backup bytes").expect("write backup");
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 0);
    let check = item(&doc, name);
    assert_eq!(check["status"], "pass", "{doc:#}");
    assert!(
        check["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("modified within 1h")),
        "{doc:#}"
    );

    // Present but older than max_age: closed again.
    let status = std::process::Command::new("touch")
        .args(["-d", "3 hours ago"])
        .arg(&backup)
        .status()
        .expect("run touch");
    assert!(status.success());
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 6);
    assert_eq!(item(&doc, name)["status"], "fail", "{doc:#}");

    // Every item is listed with a status and evidence.
    for i in doc["items"].as_array().expect("items") {
        assert!(
            ["pass", "fail", "unchecked"].contains(&i["status"].as_str().unwrap_or_default()),
            "{i:#}"
        );
        assert!(
            i["evidence"].as_str().is_some_and(|e| !e.is_empty()),
            "{i:#}"
        );
    }
    let names: Vec<&str> = doc["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["plan is valid", "dry run of step `restore` (exec)", name],
        "{doc:#}"
    );
}

#[test]
fn preflight_fails_when_a_steps_rollback_target_does_not_exist() {
    let sb = Sandbox::new();
    let repo = sb.file("repo");
    std::fs::create_dir_all(&repo).expect("repo dir");
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("service.conf"), "version=v1\n").expect("write v1");
    git(&repo, &["add", "service.conf"]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    let plan_for = |revision: &str| {
        format!(
            "name: gate-git\nbudget: 1m\nsteps:\n  - id: restore\n    kind: git.restore\n    repo: {}\n    revision: {revision}\n    paths: [service.conf]\n",
            qp(&repo)
        )
    };
    let name = "dry run of step `restore` (git.restore)";

    let plan = sb.write("plan.yaml", &plan_for("release-0.9-does-not-exist"));
    let out = sb.run(["preflight", s(&plan), "--no-drill"]);
    out.expect_code(6);
    assert!(out.stdout.contains(name), "{}", out.stdout);
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 6);
    let dry = item(&doc, name);
    assert_eq!(dry["status"], "fail", "{doc:#}");
    assert!(
        dry["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("release-0.9-does-not-exist")),
        "{doc:#}"
    );

    // The same plan with a revision that exists passes.
    let plan = sb.write("plan.yaml", &plan_for("HEAD"));
    let doc = preflight_json(&sb, &plan, &["--no-drill"], 0);
    assert_eq!(item(&doc, name)["status"], "pass", "{doc:#}");
}

// ---------------------------------------------------------------- drills

#[test]
fn drills_lists_each_plans_drills_with_time_against_budget_and_verdict() {
    let sb = Sandbox::new();
    let alpha = sb.write(
        "alpha.yaml",
        "name: alpha\nbudget: 30s\nsteps:\n  - id: act\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let beta = sb.write(
        "beta.yaml",
        "name: beta\nbudget: 45s\nsteps:\n  - id: act\n    kind: exec\n    argv: [\"false\"]\n",
    );

    let out = sb.run(["drills"]);
    out.expect_code(0);
    assert!(out.stdout.contains("No drills yet"), "{}", out.stdout);

    sb.run(["drill", s(&alpha)]).expect_code(0);
    sb.run(["drill", s(&alpha)]).expect_code(0);
    sb.run(["drill", s(&beta)]).expect_code(1);
    // A plain run is not a drill.
    sb.run(["run", s(&alpha), "--reason", "real"])
        .expect_code(0);

    let out = sb.run(["-o", "json", "drills"]);
    out.expect_code(0);
    let list = out.json();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 3, "{list:#?}");
    let of = |plan: &str| -> Vec<&serde_json::Value> {
        list.iter().filter(|d| d["plan"] == plan).collect()
    };
    assert_eq!(of("alpha").len(), 2, "{list:#?}");
    assert_eq!(of("beta").len(), 1, "{list:#?}");
    for d in of("alpha") {
        assert_eq!(d["passed"], true, "{d:#}");
        assert_eq!(d["status"], "succeeded", "{d:#}");
        assert_eq!(d["budget_ms"], 30_000, "{d:#}");
        assert!(
            d["duration_ms"].as_u64().is_some_and(|ms| ms < 30_000),
            "{d:#}"
        );
    }
    let b = of("beta")[0];
    assert_eq!(b["passed"], false, "{b:#}");
    assert_eq!(b["status"], "step_failed", "{b:#}");
    assert_eq!(b["budget_ms"], 45_000, "{b:#}");
    assert!(b["duration_ms"].as_u64().is_some(), "{b:#}");

    let out = sb.run(["drills"]);
    out.expect_code(0);
    let text = &out.stdout;
    let line_of = |id: &serde_json::Value| -> String {
        let id = id.as_str().expect("run_id");
        text.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for drill {id} in:\n{text}"))
            .to_string()
    };
    for d in of("alpha") {
        let line = line_of(&d["run_id"]);
        assert!(
            line.contains("PASS") && line.contains(" of 30.00s"),
            "{line}"
        );
    }
    let line = line_of(&b["run_id"]);
    assert!(
        line.contains("FAIL") && line.contains(" of 45.00s"),
        "{line}"
    );
    // Grouped per plan: a heading line per plan, alpha's drills under alpha.
    let lines: Vec<&str> = text.lines().collect();
    let heading = |p: &str| {
        lines
            .iter()
            .position(|l| l.trim() == p)
            .unwrap_or_else(|| panic!("no heading {p} in:\n{text}"))
    };
    let (ha, hb) = (heading("alpha"), heading("beta"));
    let line_idx = |id: &serde_json::Value| {
        let id = id.as_str().expect("run_id");
        lines.iter().position(|l| l.contains(id)).expect("line")
    };
    for d in of("alpha") {
        let i = line_idx(&d["run_id"]);
        assert!(i > ha && (hb < ha || i < hb), "{text}");
    }
    assert!(line_idx(&b["run_id"]) > hb, "{text}");

    // Filtered by plan.
    let out = sb.run(["-o", "json", "drills", "--plan", "beta"]);
    out.expect_code(0);
    let only = out.json();
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only:#}");
    assert_eq!(only[0]["run_id"], b["run_id"]);
}

// ---------------------------------------------------------------- watch

/// A plan whose trigger `health` fails (exit 1) while `flag` exists, held
/// for `hold`; its one step appends a line to `ran.log`.
fn watched_plan(sb: &Sandbox, hold: &str) -> (PathBuf, PathBuf, PathBuf) {
    let flag = sb.file("unhealthy.flag");
    let ran = sb.file("ran.log");
    let check = sb.write(
        "check.sh",
        "#!/bin/sh\nif [ -e \"$1\" ]; then echo \"error rate 9%\" >&2; exit 1; fi\nexit 0\n",
    );
    let act = sb.write("act.sh", "#!/bin/sh\necho ran >> \"$1\"\n");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: watched\n\
             budget: 30s\n\
             triggers:\n\
             \x20 - name: health\n    kind: exec\n    argv: [sh, {check}, {flag}]\n    for: {hold}\n\
             watch:\n  interval: 100ms\n  cooldown: 1h\n\
             steps:\n\
             \x20 - id: act\n    kind: exec\n    argv: [sh, {act}, {ran}]\n",
            check = qp(&check),
            flag = qp(&flag),
            act = qp(&act),
            ran = qp(&ran),
        ),
    );
    (plan, flag, ran)
}

fn runs_logged(ran: &Path) -> usize {
    std::fs::read_to_string(ran)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn watch_once(sb: &Sandbox, plan: &Path) -> serde_json::Value {
    let out = sb.run(["-o", "json", "watch", s(plan), "--once"]);
    out.expect_code(0);
    out.json()
}

#[test]
fn watch_once_from_cron_runs_the_plan_after_for_and_not_again_within_cooldown() {
    let sb = Sandbox::new();
    let (plan, flag, ran) = watched_plan(&sb, "1s");
    let state = sb.state.join("watch").join("watched.json");

    // Healthy: nothing runs; the tick shows the rule as ok.
    let out = sb.run(["watch", s(&plan), "--once"]);
    out.expect_code(0);
    assert!(out.stderr.contains("health"), "{}", out.stderr);
    assert!(out.stderr.contains("ok"), "{}", out.stderr);
    let tick = watch_once(&sb, &plan);
    assert_eq!(tick["rules"][0]["name"], "health", "{tick:#}");
    assert_eq!(tick["rules"][0]["kind"], "exec", "{tick:#}");
    assert_eq!(tick["rules"][0]["condition"], "ok", "{tick:#}");
    assert_eq!(tick["rules"][0]["hold_for_ms"], 1000, "{tick:#}");
    assert!(tick["fired"].is_null(), "{tick:#}");
    assert_eq!(runs_logged(&ran), 0);
    assert!(sb.history().is_empty());
    assert!(state.exists(), "no watch state at {}", state.display());

    // Violated: the first invocation only starts the clock.
    std::fs::write(&flag, "").expect("raise flag");
    let t0 = Instant::now();
    let tick = watch_once(&sb, &plan);
    let rule = &tick["rules"][0];
    assert_eq!(rule["condition"], "violating", "{tick:#}");
    assert!(
        rule["observed"]
            .as_str()
            .is_some_and(|o| o.contains("exit 1") && o.contains("error rate 9%")),
        "{tick:#}"
    );
    assert!(
        rule["violating_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 1000),
        "{tick:#}"
    );
    assert!(
        tick["fired"].is_null(),
        "fired before `for:` held: {tick:#}"
    );
    assert_eq!(runs_logged(&ran), 0);
    let memory: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("read state"))
            .expect("state is JSON");
    assert!(
        memory["rules"]["health"]["violating_since"].is_string(),
        "{memory:#}"
    );

    // Separate processes, as cron would start them, until the rule fires.
    let fired = loop {
        assert!(
            t0.elapsed() < WAIT,
            "the trigger did not fire within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let tick = watch_once(&sb, &plan);
        if !tick["fired"].is_null() {
            break tick;
        }
        assert_eq!(runs_logged(&ran), 0, "ran without saying so: {tick:#}");
        assert!(
            tick["rules"][0]["violating_for_ms"]
                .as_u64()
                .is_some_and(|ms| ms < 1000),
            "held for `for:` but did not fire: {tick:#}"
        );
    };
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "fired after {:?}, before `for: 1s` held",
        t0.elapsed()
    );
    assert!(
        fired["rules"][0]["violating_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1000),
        "{fired:#}"
    );
    let f = &fired["fired"];
    assert_eq!(f["rule"], "health", "{fired:#}");
    assert_eq!(f["status"], "succeeded", "{fired:#}");
    let reason = f["reason"].as_str().expect("reason").to_string();
    assert!(reason.starts_with("trigger: health = exit 1"), "{reason}");
    assert!(fired["cooling_down_until"].is_string(), "{fired:#}");
    assert_eq!(runs_logged(&ran), 1);

    let runs = sb.history();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["run_id"], f["run_id"]);
    assert_eq!(runs[0]["reason"], reason.as_str());
    assert_eq!(runs[0]["drill"], false);
    let report = sb.show(runs[0]["run_id"].as_str().expect("run_id"));
    assert_eq!(report["run"]["trigger"], reason.as_str(), "{report:#}");
    assert_eq!(report["run"]["reason"], reason.as_str(), "{report:#}");

    // Still violated, and held for `for:` again, but cooling down: no rerun.
    let tick = watch_once(&sb, &plan);
    assert!(tick["fired"].is_null(), "{tick:#}");
    std::thread::sleep(Duration::from_millis(1100));
    let tick = watch_once(&sb, &plan);
    assert!(
        tick["rules"][0]["violating_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1000),
        "{tick:#}"
    );
    assert!(
        tick["fired"].is_null(),
        "fired again within the cooldown: {tick:#}"
    );
    assert!(tick["cooling_down_until"].is_string(), "{tick:#}");
    let out = sb.run(["watch", s(&plan), "--once"]);
    out.expect_code(0);
    assert!(out.stderr.contains("cooling down until"), "{}", out.stderr);
    assert!(out.stderr.contains("violated for"), "{}", out.stderr);
    assert_eq!(runs_logged(&ran), 1, "ran again within the cooldown");
    assert_eq!(sb.history().len(), 1);

    // A second watcher whose state never saw the firing (another cron line,
    // another host sharing the journal): the journal's triggered run keeps
    // it cooling down.
    let mut forgetful: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("read state")).expect("JSON");
    forgetful["last_fired"] = serde_json::Value::Null;
    forgetful["last_run"] = serde_json::Value::Null;
    std::fs::write(&state, forgetful.to_string()).expect("write state");
    let t1 = Instant::now();
    loop {
        let tick = watch_once(&sb, &plan);
        assert!(
            tick["fired"].is_null(),
            "fired again within the cooldown: {tick:#}"
        );
        if tick["rules"][0]["violating_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1000)
        {
            assert!(tick["cooling_down_until"].is_string(), "{tick:#}");
            break;
        }
        assert!(t1.elapsed() < WAIT, "the rule did not hold again: {tick:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(runs_logged(&ran), 1, "ran again within the cooldown");

    // A damaged state is reported, never silently reset (that would forget
    // the cooldown).
    std::fs::write(&state, "{ not json").expect("damage state");
    let out = sb.run(["watch", s(&plan), "--once"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("watch state is not valid"),
        "{}",
        out.stderr
    );
    assert_eq!(runs_logged(&ran), 1);
}

#[test]
fn watch_once_with_for_zero_runs_at_the_first_violation() {
    let sb = Sandbox::new();
    let (plan, flag, ran) = watched_plan(&sb, "0s");
    let tick = watch_once(&sb, &plan);
    assert!(tick["fired"].is_null(), "{tick:#}");
    std::fs::write(&flag, "").expect("raise flag");
    let out = sb.run(["watch", s(&plan), "--once"]);
    out.expect_code(0);
    assert!(out.stderr.contains("FIRED"), "{}", out.stderr);
    assert!(
        out.stderr.contains("trigger: health = exit 1"),
        "{}",
        out.stderr
    );
    assert_eq!(runs_logged(&ran), 1);
    let runs = sb.history();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert!(
        runs[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("trigger: health = exit 1")),
        "{runs:#?}"
    );
}

#[test]
fn watch_needs_triggers() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: untriggered\nsteps:\n  - id: act\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let out = sb.run(["watch", s(&plan), "--once"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no `triggers:`"), "{}", out.stderr);
    assert!(sb.history().is_empty());
}

#[test]
fn watch_once_while_the_plan_is_being_run_reports_the_holder_and_fires_later() {
    let sb = Sandbox::new();
    let marker = sb.file("holding.marker");
    let release = sb.file("release");
    // Bounded: gives up after ~20 s so a broken test cannot hang forever.
    let hold = sb.write(
        "hold.sh",
        &format!(
            "#!/bin/sh\n\
             : > {marker}\n\
             i=0\n\
             while [ ! -e {release} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n\
             [ -e {release} ]\n",
            marker = qp(&marker),
            release = qp(&release),
        ),
    );
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: watched-locked\n\
             triggers:\n\
             \x20 - name: always\n    kind: exec\n    argv: [\"false\"]\n    for: 0s\n\
             steps:\n\
             \x20 - id: hold\n    kind: exec\n    argv: [sh, {}]\n",
            qp(&hold)
        ),
    );

    // A person is running the plan.
    let mut cmd = sb.cmd([
        "run",
        s(&plan),
        "--reason",
        "by hand",
        "--operator",
        "alice",
    ]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = KillOnDrop(cmd.spawn().expect("start the manual run"));
    wait_for_file(&marker, "the manual run's step to start");

    // The trigger is due, but the plan is locked: exit 5, naming the holder.
    let out = sb.run(["watch", s(&plan), "--once"]);
    out.expect_code(5);
    assert!(out.stderr.contains("DUE"), "{}", out.stderr);
    assert!(out.stderr.contains("alice"), "{}", out.stderr);
    let out = sb.run(["-o", "json", "watch", s(&plan), "--once"]);
    out.expect_code(5);
    let tick = out.json();
    assert_eq!(tick["fired"]["locked_by"]["operator"], "alice", "{tick:#}");
    assert!(tick["fired"]["run_id"].is_null(), "{tick:#}");
    assert!(tick["cooling_down_until"].is_null(), "{tick:#}");
    assert_eq!(sb.history().len(), 1);

    // The manual run ends; the next cron invocation runs the plan.
    std::fs::write(&release, "").expect("release");
    let status = wait_child(&mut first.0, WAIT, "the manual run");
    assert!(status.success(), "{status}");
    let tick = watch_once(&sb, &plan);
    assert_eq!(tick["fired"]["status"], "succeeded", "{tick:#}");
    let runs = sb.history();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(runs[0]["run_id"], tick["fired"]["run_id"]);
    assert_eq!(runs[0]["reason"], "trigger: always = exit 1");
}
