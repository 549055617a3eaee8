//! The state directory fails under a run: full (ENOSPC, a small tmpfs) or
//! read-only (mounted so). The run stops before the next step with exit 10
//! and a message naming the journal, nothing is half-done, and once the
//! directory is usable again `rollback resume` finishes the run. (Linux
//! refuses to remount a file system read-only while a file on it is open
//! for writing, as the journal is during a run: a read-only state directory
//! is met when a run or a resume starts.)

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
    // outside it), then prints more than the journal's last page holds, so
    // its end record needs space there is not.
    let once = sb.file("filled.marker");
    let filler = sb.state.join("filler");
    let fill = format!(
        "if [ ! -e {o} ]; then : > {o}; dd if=/dev/zero of={f} bs=4k 2>/dev/null; \
         head -c 48000 /dev/urandom | base64; fi; exit 0",
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
fn a_read_only_state_directory_stops_a_run_and_a_resume_before_any_step() {
    let sb = Sandbox::new();
    let Some(fs) = Tmpfs::mount(&sb.state, "8m") else {
        return;
    };
    // The first step fails once (it marks that it did, outside the state
    // directory), so the run ends with something left to resume.
    let once = sb.file("failed-once.marker");
    let first = format!(
        "if [ ! -e {o} ]; then : > {o}; exit 1; fi; exit 0",
        o = qp(&once)
    );
    let plan = plan(&sb, &first);
    sb.run(["run", plan.to_str().unwrap(), "--reason", "first try"])
        .expect_code(1);
    let run_id = run_id_in(&sb.state);
    let before = sb.journal(&run_id);

    fs.remount("ro");
    let out = sb.run(["resume", &run_id]);
    out.expect_code(10);
    assert!(
        out.stderr.contains("Read-only file system")
            && out.stderr.contains(&sb.state.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(!sb.file("after.marker").exists(), "no step ran");
    let plan_again = sb.run(["run", plan.to_str().unwrap(), "--reason", "again"]);
    plan_again.expect_code(10);
    assert!(!sb.file("after.marker").exists(), "no step ran");

    fs.remount("rw");
    assert_eq!(sb.journal(&run_id), before, "the journal was not touched");
    sb.run(["resume", &run_id]).expect_code(0);
    assert!(sb.file("after.marker").exists());
}
