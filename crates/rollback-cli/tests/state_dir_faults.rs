//! The state directory fails under a run: full (ENOSPC, a small tmpfs) or
//! read-only (remounted). The run stops before the next step with exit 10
//! and a message naming the journal, nothing is half-done, and once the
//! directory is usable again `rollback resume` finishes the run.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts it; `None` (the test is skipped) when not root outside CI.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            if std::env::var_os("CI").is_some() {
                panic!("cannot mount a tmpfs for the state directory (the test needs root): {why}");
            }
            eprintln!("skipped: cannot mount a tmpfs (needs root): {why}");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options}: {status}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `first` then `second` (after it); `second` touches `after.marker`.
fn plan(sb: &Sandbox, first: &str) -> std::path::PathBuf {
    sb.write(
        "plan.yaml",
        &format!(
            "name: state-dir-fault\n\
             budget: 2m\n\
             steps:\n\
             \x20 - id: first\n    kind: exec\n    argv: [sh, -c, {first}]\n\
             \x20 - id: second\n    kind: exec\n    after: [first]\n    argv: [touch, {marker}]\n",
            first = q(first),
            marker = qp(&sb.file("after.marker")),
        ),
    )
}

fn run_id_in(state: &Path) -> String {
    let runs: Vec<String> = std::fs::read_dir(state.join("runs"))
        .expect("runs folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

#[test]
fn a_full_state_directory_stops_the_run_before_the_next_step_and_resume_finishes_it() {
    let sb = Sandbox::new();
    let Some(_fs) = Tmpfs::mount(&sb.state, "1m") else {
        return;
    };
    // The first step fills the state directory (once: it marks that it did,
    // outside it).
    let once = sb.file("filled.marker");
    let filler = sb.state.join("filler");
    let fill = format!(
        "if [ ! -e {o} ]; then : > {o}; dd if=/dev/zero of={f} bs=4k 2>/dev/null; fi; exit 0",
        o = qp(&once),
        f = qp(&filler)
    );
    let plan = plan(&sb, &fill);
    let out = sb.run(["run", plan.to_str().unwrap(), "--reason", "disk fills up"]);
    out.expect_code(10);
    assert!(
        out.stderr.contains("No space left on device") && out.stderr.contains("journal.jsonl"),
        "{}",
        out.stderr
    );
    assert!(
        !sb.file("after.marker").exists(),
        "the next step must not run without its start record"
    );

    std::fs::remove_file(&filler).expect("free the space");
    let run_id = run_id_in(&sb.state);
    let out = sb.run(["resume", &run_id]);
    out.expect_code(0);
    assert!(sb.file("after.marker").exists());
    let report = sb.show(&run_id);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn a_state_directory_turned_read_only_stops_the_run_before_the_next_step() {
    let sb = Sandbox::new();
    let Some(fs) = Tmpfs::mount(&sb.state, "8m") else {
        return;
    };
    let once = sb.file("remounted.marker");
    let remount = format!(
        "if [ ! -e {o} ]; then : > {o}; mount -o remount,ro {s}; fi; exit 0",
        o = qp(&once),
        s = qp(&sb.state)
    );
    let plan = plan(&sb, &remount);
    let out = sb.run([
        "run",
        plan.to_str().unwrap(),
        "--reason",
        "disk goes read-only",
    ]);
    out.expect_code(10);
    assert!(
        out.stderr.contains("Read-only file system") && out.stderr.contains("journal.jsonl"),
        "{}",
        out.stderr
    );
    assert!(!sb.file("after.marker").exists());

    fs.remount("rw");
    let run_id = run_id_in(&sb.state);
    sb.run(["resume", &run_id]).expect_code(0);
    assert!(sb.file("after.marker").exists());
}
