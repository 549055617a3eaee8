//! A runner killed with SIGKILL leaves its step's programs running (they run
//! in process groups of their own). `show` names them; `resume` ends them (or
//! waits for them) before it runs the step again, so two copies never race.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A plan with one step `work`: its script logs `start PID`, and on its first
/// run starts a child `sleep`, writes both pids and waits (for `hold`
/// seconds, or until killed); it logs `end PID` when it ends by itself.
fn setup(sb: &Sandbox, on_resume: &str, hold: u32) -> std::path::PathBuf {
    let script = sb.write(
        "work.sh",
        &format!(
            "#!/bin/sh\n\
             echo \"start $$\" >> {log}\n\
             if [ ! -e {first} ]; then\n\
             \x20 : > {first}\n\
             \x20 sleep {hold} &\n\
             \x20 echo $! > {child}\n\
             \x20 echo $$ > {leader}\n\
             \x20 wait\n\
             fi\n\
             echo \"end $$\" >> {log}\n",
            log = qp(&sb.file("log.txt")),
            first = qp(&sb.file("first-run.marker")),
            child = qp(&sb.file("child.pid")),
            leader = qp(&sb.file("leader.pid")),
        ),
    );
    sb.write(
        "plan.yaml",
        &format!(
            "name: survivors-test\n\
             budget: 5m\n\
             steps:\n\
             \x20 - id: work\n    kind: exec\n    on_resume: {on_resume}\n    argv: [sh, {}]\n",
            qp(&script)
        ),
    )
}

fn pid(sb: &Sandbox, name: &str) -> u32 {
    let path = sb.file(name);
    wait_for_file(&path, name);
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
        assert!(Instant::now() < deadline, "{name} holds no pid: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Ends a process this test started if it is still running when the test
/// ends (the point of the test is that the product ends them).
struct EndOnDrop(Vec<u32>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if running(*pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Starts the run, waits until the step's program and its child run, and
/// kills the runner (only the runner: the program is in a group of its own).
fn run_and_kill_the_runner(sb: &Sandbox, plan: &std::path::Path) -> (String, u32, u32) {
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut runner = cmd.spawn().expect("start rollback run");
    let leader = pid(sb, "leader.pid");
    let child = pid(sb, "child.pid");
    kill_group(runner.id());
    let status = wait_child(&mut runner, WAIT, "the killed runner");
    assert!(status.code().is_none(), "the runner was killed: {status}");
    assert!(
        running(leader) && running(child),
        "the step's programs outlived their runner"
    );
    (sb.only_run_id(), leader, child)
}

#[test]
fn resume_ends_the_programs_a_dead_runner_left_before_running_the_step_again() {
    let sb = Sandbox::new();
    let plan = setup(&sb, "end", 300);
    let (run_id, leader, child) = run_and_kill_the_runner(&sb, &plan);
    let _cleanup = EndOnDrop(vec![leader, child]);

    // `show` says what is known: started, never ended, and which program.
    let out = sb.run(["show", &run_id]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("started, never ended"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("(pid {leader} on "))
            && out.stdout.contains("a resume ends it first"),
        "{}",
        out.stdout
    );

    let out = sb.run(["resume", &run_id]);
    out.expect_code(0);
    assert!(
        !running(leader),
        "the dead run's program (pid {leader}) still runs"
    );
    assert!(!running(child), "what it started (pid {child}) still runs");

    // The survivor was ended before the step started again, and the second
    // run of the step did its work.
    let records = sb.records(&run_id);
    let names: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    let settled = names
        .iter()
        .position(|n| *n == "program_settled")
        .unwrap_or_else(|| panic!("no program_settled: {names:?}"));
    let restarted = names
        .iter()
        .rposition(|n| *n == "step_started")
        .expect("the step started again");
    assert!(settled < restarted, "{names:?}");
    let settled = &records[settled];
    assert_eq!(settled["program"]["pid"], leader);
    assert!(
        settled["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("ended it"),
        "{settled:#}"
    );
    let log = std::fs::read_to_string(sb.file("log.txt")).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[0], format!("start {leader}"), "{log}");
    assert!(
        lines[1].starts_with("start ") && lines[2].starts_with("end "),
        "{log}"
    );
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "succeeded");
}

#[test]
fn resume_waits_for_a_survivor_whose_step_says_so() {
    let sb = Sandbox::new();
    let plan = setup(&sb, "wait", 8);
    let (run_id, leader, child) = run_and_kill_the_runner(&sb, &plan);
    let _cleanup = EndOnDrop(vec![leader, child]);
    let out = sb.run(["resume", &run_id]);
    out.expect_code(0);
    // The first program ran to its end (it logged `end`), then the step ran again.
    let log = std::fs::read_to_string(sb.file("log.txt")).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..2],
        [format!("start {leader}"), format!("end {leader}")],
        "{log}"
    );
    let records = sb.records(&run_id);
    let settled = events(&records, "program_settled");
    assert_eq!(settled.len(), 1, "{records:#?}");
    assert!(
        settled[0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("waited"),
        "{:#}",
        settled[0]
    );
}

#[test]
fn a_survivor_on_another_host_blocks_the_resume_until_the_operator_says_it_ended() {
    let sb = Sandbox::new();
    let plan = setup(&sb, "end", 300);
    let (run_id, leader, child) = run_and_kill_the_runner(&sb, &plan);
    let _cleanup = EndOnDrop(vec![leader, child]);
    // As if the run had been started by a runner on host `build-7` sharing
    // the journal: this runner cannot see its programs.
    let path = sb.run_dir(&run_id).join("journal.jsonl");
    let text = std::fs::read_to_string(&path).expect("journal");
    let moved: String = text
        .lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).expect("record");
            if record["event"] == "program_started" {
                record["program"]["host"] = "build-7".into();
            }
            format!("{record}\n")
        })
        .collect();
    std::fs::write(&path, moved).expect("rewrite journal");

    let out = sb.run(["resume", &run_id]);
    out.expect_code(2);
    for needle in [
        "may still be running where this runner cannot see them",
        &format!("(pid {leader}) on host build-7"),
        "--programs-ended-on build-7",
    ] {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks `{needle}`:\n{}",
            out.stderr
        );
    }
    assert!(running(leader), "nothing was touched");

    // The operator ends it on "build-7" (here), then says so.
    let _ = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{leader}")])
        .status();
    let out = sb.run(["resume", &run_id, "--programs-ended-on", "build-7"]);
    out.expect_code(0);
    let records = sb.records(&run_id);
    let settled = events(&records, "program_settled");
    assert!(
        settled[0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("operator confirmed"),
        "{:#}",
        settled[0]
    );
}
