//! A plan being run holds its lock: a second run of it is refused with exit 5
//! and told who holds it; once the first run ends, the lock is free again.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn second_run_is_refused_while_the_first_holds_the_lock() {
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
            "name: locked-plan\n\
             steps:\n\
             \x20 - id: hold\n    kind: exec\n    argv: [sh, {}]\n",
            qp(&hold)
        ),
    );
    let plan_arg = plan.to_str().expect("UTF-8 path");

    // Run 1, in the background, by alice.
    let log1 = std::fs::File::create(sb.file("run1.log")).expect("log file");
    let mut cmd1 = sb.cmd(["run", plan_arg, "--reason", "first", "--operator", "alice"]);
    cmd1.stdout(Stdio::null())
        .stderr(log1.try_clone().expect("dup"));
    let mut run1 = cmd1.spawn().expect("start run 1");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let run1 = KillOnDrop(&mut run1);
    wait_for_file(&marker, "run 1's step to start");

    let runs = sb.history();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run1_id = runs[0]["run_id"].as_str().expect("run id").to_string();
    assert!(runs[0]["status"].is_null(), "run 1 is still running");
    let host = sb.records(&run1_id)[0]["run"]["host"]
        .as_str()
        .expect("host in run_started")
        .to_string();
    assert!(!host.is_empty());
    let pid = run1.0.id();

    // Run 2 of the same plan: refused, naming the holder.
    let out = sb.run(["run", plan_arg, "--reason", "second", "--operator", "bob"]);
    out.expect_code(5);
    for needle in [
        "plan `locked-plan` is being run by alice",
        &format!("on {host}"),
        &format!("pid {pid}"),
        &format!("run {run1_id}"),
    ] {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks `{needle}`:\n{}",
            out.stderr
        );
    }

    // The same as JSON.
    let out = sb.run([
        "-o",
        "json",
        "run",
        plan_arg,
        "--reason",
        "second",
        "--operator",
        "bob",
    ]);
    out.expect_code(5);
    let doc = out.json();
    let holder = &doc["error"]["holder"];
    assert_eq!(holder["operator"], "alice", "{doc:#}");
    assert_eq!(holder["host"], host.as_str(), "{doc:#}");
    assert_eq!(holder["pid"], pid, "{doc:#}");
    assert_eq!(holder["run_id"], run1_id.as_str(), "{doc:#}");
    assert_eq!(doc["error"]["exit_code"], 5);

    // Refused runs leave no trace in the history; the holder's hold step did
    // not run twice.
    assert_eq!(sb.history().len(), 1);

    // Release run 1: it finishes, and the lock is free for run 3.
    std::fs::write(&release, "").expect("release file");
    let status = wait_child(&mut *run1.0, WAIT, "run 1");
    assert_eq!(
        status.code(),
        Some(0),
        "run 1 failed: {}",
        std::fs::read_to_string(sb.file("run1.log")).unwrap_or_default()
    );
    drop(run1);

    let out = sb.run(["run", plan_arg, "--reason", "third", "--operator", "carol"]);
    out.expect_code(0);

    let runs = sb.history();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    let mut operators: Vec<&str> = runs
        .iter()
        .map(|r| r["operator"].as_str().expect("operator"))
        .collect();
    operators.sort();
    assert_eq!(operators, ["alice", "carol"]);
}

#[test]
fn a_killed_run_does_not_leave_a_stale_lock() {
    use std::os::unix::process::CommandExt;

    let sb = Sandbox::new();
    let marker = sb.file("started.marker");
    let script = sb.write(
        "step.sh",
        &format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then : > {m}; sleep 60; fi\n",
            m = qp(&marker)
        ),
    );
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: stale-lock\nsteps:\n  - id: s\n    kind: exec\n    argv: [sh, {}]\n",
            qp(&script)
        ),
    );
    let plan_arg = plan.to_str().expect("UTF-8 path");
    let mut cmd = sb.cmd(["run", plan_arg, "--reason", "will be killed"]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().expect("start run");
    let pgid = child.id();
    let result = std::panic::catch_unwind(|| wait_for_file(&marker, "the step to start"));
    kill_group(pgid);
    wait_child(&mut child, WAIT, "the killed runner");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // The lock file stays, but the kernel dropped the lock with the process.
    assert!(sb.state.join("locks").join("stale-lock.lock").exists());
    let out = sb.run(["run", plan_arg, "--reason", "again"]);
    out.expect_code(0);
}
