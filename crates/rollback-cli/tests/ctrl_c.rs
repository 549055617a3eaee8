//! Ctrl-C against the real binary: the first stops scheduling and lets the
//! running step finish, the journal says the run was cancelled and `resume`
//! continues it; a second quits at once and ends the step's programs.

mod common;

use std::os::unix::process::CommandExt;

use common::*;

/// The plan a → b → c. `b` creates `b.marker` and then runs `b.sh`'s body.
fn plan(sb: &Sandbox, b_body: &str) -> std::path::PathBuf {
    let counter = sb.file("counter.txt");
    for (name, letter) in [("a.sh", "a"), ("c.sh", "c")] {
        sb.write(
            name,
            &format!("#!/bin/sh\necho {letter} >> {}\n", qp(&counter)),
        );
    }
    sb.write(
        "b.sh",
        &format!(
            "#!/bin/sh\necho b >> {counter}\n: > {marker}\n{b_body}\n",
            counter = qp(&counter),
            marker = qp(&sb.file("b.marker")),
        ),
    );
    let script = |name: &str| q(sb.file(name).to_str().expect("UTF-8 path"));
    sb.write(
        "plan.yaml",
        &format!(
            "name: ctrl-c-test\n\
             budget: 5m\n\
             steps:\n\
             \x20 - id: a\n    kind: exec\n    argv: [sh, {a}]\n\
             \x20 - id: b\n    kind: exec\n    after: [a]\n    argv: [sh, {b}]\n\
             \x20 - id: c\n    kind: exec\n    after: [b]\n    argv: [sh, {c}]\n",
            a = script("a.sh"),
            b = script("b.sh"),
            c = script("c.sh"),
        ),
    )
}

/// Starts `rollback run` in its own process group (as a shell starts a
/// foreground job) with stdout and stderr in files, and waits until `b` runs.
fn start(sb: &Sandbox, plan: &std::path::Path) -> std::process::Child {
    let stdout = std::fs::File::create(sb.file("stdout.txt")).expect("stdout file");
    let stderr = std::fs::File::create(sb.file("stderr.txt")).expect("stderr file");
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    cmd.stdout(stdout).stderr(stderr).process_group(0);
    let child = cmd.spawn().expect("start rollback run");
    wait_for_file(&sb.file("b.marker"), "step b's marker");
    child
}

/// What the terminal does on Ctrl-C: SIGINT to the foreground process group.
fn ctrl_c(pgid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT -- -{pgid}: {status}");
}

fn counter(sb: &Sandbox) -> Vec<String> {
    std::fs::read_to_string(sb.file("counter.txt"))
        .expect("counter file")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ctrl_c_lets_the_running_step_finish_records_the_cancel_and_resume_continues() {
    let sb = Sandbox::new();
    // `b` outlives the Ctrl-C by a little and then succeeds.
    let plan = plan(&sb, "sleep 2\nexit 0");
    let mut child = start(&sb, &plan);
    ctrl_c(child.id());
    let status = wait_child(&mut child, WAIT, "the cancelled run");
    let stderr = std::fs::read_to_string(sb.file("stderr.txt")).expect("stderr");
    let stdout = std::fs::read_to_string(sb.file("stdout.txt")).expect("stdout");
    assert_eq!(exit_code(status), 130, "{stderr}");
    assert!(stderr.contains("no new step will start"), "{stderr}");
    let run_id = sb.only_run_id();
    assert!(
        stdout.contains(&format!("Continue with: rollback resume {run_id}")),
        "says how to continue:\n{stdout}"
    );
    // `b` was not killed by the Ctrl-C: it ran to its end. `c` never started.
    assert_eq!(counter(&sb), ["a", "b"]);

    let report = sb.show(&run_id);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert_eq!(step(&report, "b")["outcome"], "succeeded", "{report:#}");
    let records = sb.records(&run_id);
    let cancel = events(&records, "cancel_requested");
    assert_eq!(cancel.len(), 1, "{records:#?}");
    assert_eq!(cancel[0]["running"], serde_json::json!(["b"]));
    assert!(
        events(&records, "step_started")
            .iter()
            .all(|r| r["step"] != "c"),
        "c must not start after Ctrl-C: {records:#?}"
    );

    let out = sb.run(["resume", &run_id]);
    out.expect_code(0);
    assert_eq!(counter(&sb), ["a", "b", "c"], "only c ran on resume");
    assert_eq!(sb.show(&run_id)["status"], "succeeded");
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_ends_the_steps_programs() {
    let sb = Sandbox::new();
    let pidfile = sb.file("sleep.pid");
    let plan = plan(
        &sb,
        &format!("sleep 300 &\necho $! > {}\nwait", qp(&pidfile)),
    );
    let mut child = start(&sb, &plan);
    wait_for_file(&pidfile, "the pid of b's sleep");
    let sleep_pid = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .to_string();
    ctrl_c(child.id());
    // The first Ctrl-C is being handled once the journal says so.
    let run_id = sb.only_run_id();
    let deadline = std::time::Instant::now() + WAIT;
    while !sb.journal(&run_id).contains("cancel_requested") {
        assert!(
            std::time::Instant::now() < deadline,
            "no cancel_requested in the journal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ctrl_c(child.id());
    let status = wait_child(&mut child, WAIT, "the twice-interrupted run");
    let stderr = std::fs::read_to_string(sb.file("stderr.txt")).expect("stderr");
    assert_eq!(exit_code(status), 130, "{stderr}");

    // b's program and what it started are gone, not orphaned.
    let gone = |pid: &str| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !gone(&sleep_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "b's `sleep 300` (pid {sleep_pid}) outlived the runner"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The journal says what happened to the running step: interrupted by
    // the quit, so resume runs it again.
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert_eq!(step(&report, "a")["outcome"], "succeeded");
    let b = step(&report, "b");
    assert_eq!(b["outcome"], "interrupted", "{report:#}");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains("second Ctrl-C"),
        "{report:#}"
    );
    assert_eq!(step(&report, "c")["outcome"], "skipped", "{report:#}");
    let stdout = std::fs::read_to_string(sb.file("stdout.txt")).expect("stdout");
    assert!(
        stdout.contains(&format!("Continue with: rollback resume {run_id}")),
        "{stdout}"
    );
}
