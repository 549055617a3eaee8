//! A run killed with SIGKILL mid-step is resumed: completed steps are not run
//! again, the interrupted one is, and the journal tells the story.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::*;

/// The plan a → b → c; `b` appends to the counter, then on its first run
/// (no marker yet) creates the marker and hangs, so the runner can be killed
/// while it runs. With `with_var`, the scripts' folder is a required plan
/// variable (`vars: {dir: }`) given with `--var` on the first run only: resume
/// must reuse it. Returns the plan and the extra arguments of `run`.
fn setup(sb: &Sandbox, with_var: bool) -> (std::path::PathBuf, Vec<String>) {
    let counter = sb.file("counter.txt");
    let marker = sb.file("b-started.marker");
    let append = |name: &str, letter: &str| {
        sb.write(
            name,
            &format!("#!/bin/sh\necho {letter} >> {}\n", qp(&counter)),
        );
    };
    append("a.sh", "a");
    append("c.sh", "c");
    sb.write(
        "b.sh",
        &format!(
            "#!/bin/sh\n\
             echo b >> {counter}\n\
             if [ ! -e {marker} ]; then\n  : > {marker}\n  sleep 60\nfi\n\
             exit 0\n",
            counter = qp(&counter),
            marker = qp(&marker),
        ),
    );
    let dir = sb.path().to_str().expect("UTF-8 path");
    let (vars, prefix, extra) = if with_var {
        (
            "vars:\n  dir:\n".to_string(),
            "${var:dir}".to_string(),
            vec!["--var".to_string(), format!("dir={dir}")],
        )
    } else {
        (String::new(), dir.to_string(), Vec::new())
    };
    let script = |name: &str| q(format!("{prefix}/{name}"));
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: resume-test\n\
             budget: 5m\n\
             {vars}\
             steps:\n\
             \x20 - id: a\n    kind: exec\n    argv: [sh, {a}]\n\
             \x20 - id: b\n    kind: exec\n    after: [a]\n    argv: [sh, {b}]\n\
             \x20 - id: c\n    kind: exec\n    after: [b]\n    argv: [sh, {c}]\n",
            a = script("a.sh"),
            b = script("b.sh"),
            c = script("c.sh"),
        ),
    );
    (plan, extra)
}

/// Starts the run, waits until `b` runs and has created its marker, then
/// kills the runner's whole process group with SIGKILL. Returns the run id.
fn start_and_kill(sb: &Sandbox, plan: &std::path::Path, extra: &[String]) -> String {
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    cmd.args(extra);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start rollback run");
    let pgid = child.id();
    // If anything below panics, do not leave the runner (and its `sleep 60`) behind.
    struct KillOnPanic(u32);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", "--", &format!("-{}", self.0)])
                    .status();
            }
        }
    }
    let _guard = KillOnPanic(pgid);

    // A watchdog: if `b` never starts, the runner is killed and the stream ends.
    let watchdog_pgid = pgid;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(WAIT).is_err() {
            let _ = std::process::Command::new("kill")
                .args(["-9", "--", &format!("-{watchdog_pgid}")])
                .status();
        }
    });

    let mut stderr = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let first = read_until(&mut stderr, &mut seen, "the run announced itself", |l| {
        l.contains("run ") && l.contains(" of plan resume-test")
    });
    let run_id = first
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("run id after `run`")
        .to_string();
    read_until(&mut stderr, &mut seen, "step b started", |l| {
        l.contains("▸ b started")
    });
    assert!(
        seen.iter().any(|l| l.contains("✓ a done")),
        "a finished before b started: {seen:#?}"
    );
    wait_for_file(&sb.file("b-started.marker"), "step b's marker");
    let _ = done_tx.send(());
    watchdog.join().expect("watchdog");

    kill_group(pgid);
    let status = wait_child(&mut child, WAIT, "the killed runner");
    assert!(status.code().is_none(), "runner was killed: {status}");
    run_id
}

fn counter(sb: &Sandbox) -> Vec<String> {
    std::fs::read_to_string(sb.file("counter.txt"))
        .expect("counter file")
        .lines()
        .map(str::to_string)
        .collect()
}

fn resume_after_kill(resume_arg: Option<&str>, with_var: bool) {
    let sb = Sandbox::new();
    let (plan, extra) = setup(&sb, with_var);
    let run_id = start_and_kill(&sb, &plan, &extra);

    // The run is unfinished: a, then b started; c never did.
    assert_eq!(counter(&sb), ["a", "b"]);
    let runs = sb.history();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert!(
        runs[0]["status"].is_null(),
        "a killed run has no status: {runs:#?}"
    );
    let unfinished = sb.show(&run_id);
    assert!(unfinished["status"].is_null(), "{unfinished:#}");
    assert_eq!(step(&unfinished, "a")["outcome"], "succeeded");
    assert!(step(&unfinished, "b")["outcome"].is_null());

    let which = resume_arg.unwrap_or(&run_id);
    let out = sb.run(["resume", which]);
    out.expect_code(0);
    assert!(
        out.stderr
            .contains("resumed; 1 completed step(s) will not run again: a"),
        "{}",
        out.stderr
    );

    // a ran once, b twice (it was interrupted), c once.
    assert_eq!(counter(&sb), ["a", "b", "b", "c"]);

    let report = sb.show(&run_id);
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert!(
        !report["resumed"].as_array().expect("resumed").is_empty(),
        "{report:#}"
    );
    assert_eq!(step(&report, "a")["from_earlier_segment"], true);
    if with_var {
        assert_eq!(
            report["run"]["vars"]["dir"],
            sb.path().to_str().expect("UTF-8"),
            "{report:#}"
        );
    }
    for id in ["b", "c"] {
        assert_eq!(step(&report, id)["outcome"], "succeeded", "{report:#}");
        assert!(step(&report, id)["from_earlier_segment"].is_null());
    }

    let records = sb.records(&run_id);
    let resumed = events(&records, "run_resumed");
    assert_eq!(resumed.len(), 1, "{records:#?}");
    assert_eq!(resumed[0]["completed"], serde_json::json!(["a"]));
    // b started twice: once before the kill, once after the resume.
    let b_starts = events(&records, "step_started")
        .into_iter()
        .filter(|r| r["step"] == "b")
        .count();
    assert_eq!(b_starts, 2, "{records:#?}");
    let a_starts = events(&records, "step_started")
        .into_iter()
        .filter(|r| r["step"] == "a")
        .count();
    assert_eq!(a_starts, 1, "a must not run again: {records:#?}");
    assert_eq!(events(&records, "run_finished").len(), 1);

    let runs = sb.history();
    assert_eq!(runs.len(), 1, "resume continues the run, not a new one");
    assert_eq!(runs[0]["status"], "succeeded");

    // A succeeded run cannot be resumed again.
    let again = sb.run(["resume", &run_id]);
    again.expect_code(2);
    assert!(
        again.stderr.contains("already succeeded"),
        "{}",
        again.stderr
    );
    assert_eq!(counter(&sb), ["a", "b", "b", "c"], "nothing ran again");
}

#[test]
fn resume_by_id_after_sigkill_skips_completed_steps() {
    resume_after_kill(None, false);
}

#[test]
fn resume_last_after_sigkill_picks_the_unfinished_run() {
    resume_after_kill(Some("last"), false);
}

#[test]
fn resume_reuses_the_variables_given_to_the_first_run() {
    resume_after_kill(None, true);
}

#[test]
fn resume_last_with_nothing_unfinished_is_invalid_input() {
    let sb = Sandbox::new();
    let out = sb.run(["resume", "last"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no unfinished run"), "{}", out.stderr);

    let out = sb.run(["resume", "20990101-000000-abcd"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no run `20990101-000000-abcd`"),
        "{}",
        out.stderr
    );
}

/// A run that stopped on a failed step is resumed from that step; outputs of
/// the steps completed before reach the steps after, from the journal.
#[test]
fn resume_after_a_failed_step_runs_only_what_is_left() {
    let sb = Sandbox::new();
    let fixed = sb.file("fixed");
    let got = sb.file("got.txt");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: fix-and-resume
steps:
  - id: a
    kind: exec
    argv: [echo, hello from a]
  - id: b
    kind: exec
    after: [a]
    argv: [test, -e, {fixed}]
  - id: c
    kind: exec
    after: [b]
    argv: [sh, -c, 'printf %s \"$1\" > \"$0\"', {got}, \"${{steps.a.stdout}}\"]
",
            fixed = qp(&fixed),
            got = qp(&got),
        ),
    );
    let out = sb.run([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "t".as_ref(),
    ]);
    out.expect_code(1);
    let run_id = sb.only_run_id();
    assert_eq!(sb.history()[0]["status"], "step_failed");
    assert!(!got.exists());

    // The operator fixes the cause, then resumes.
    std::fs::write(&fixed, "").expect("fix");
    let out = sb.run(["resume", "last"]);
    out.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&got).expect("got.txt"),
        "hello from a"
    );
    let records = sb.records(&run_id);
    let a_starts = events(&records, "step_started")
        .into_iter()
        .filter(|r| r["step"] == "a")
        .count();
    assert_eq!(a_starts, 1, "a must not run again: {records:#?}");
    assert_eq!(sb.show(&run_id)["status"], "succeeded");
}
