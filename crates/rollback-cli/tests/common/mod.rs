//! Helpers shared by the integration tests of the `rollback` binary: a
//! sandbox (temporary state directory and work folder), runs of the binary by
//! argv, and bounded waits that fail with a clear message.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rollback");

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// What a finished `rollback` command left behind.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics (showing both streams) unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// stdout and stderr together, for "appears nowhere" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A temporary work folder with its own state directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        Sandbox { dir, state }
    }

    /// The work folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the work folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the work folder and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.file(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, content).expect("write file");
        path
    }

    /// `rollback --state-dir STATE ARGS...`, with a clean, colourless
    /// environment as far as rollback's own settings go.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("ROLLBACK_STATE_DIR")
            .env_remove("ROLLBACK_OPERATOR")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `rollback ARGS...` to the end (bounded by [`WAIT`]).
    pub fn run<I, S>(&self, args: I) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_cmd(self.cmd(args))
    }

    /// `history -o json` as a list.
    pub fn history(&self) -> Vec<serde_json::Value> {
        let out = self.run(["-o", "json", "history"]);
        out.expect_code(0);
        out.json().as_array().expect("history is a list").clone()
    }

    /// `show RUN -o json`.
    pub fn show(&self, run_id: &str) -> serde_json::Value {
        let out = self.run(["-o", "json", "show", run_id]);
        out.expect_code(0);
        out.json()
    }

    /// The folder of a run.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.state.join("runs").join(run_id)
    }

    /// The text of a run's journal.
    pub fn journal(&self, run_id: &str) -> String {
        let path = self.run_dir(run_id).join("journal.jsonl");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// A run's journal as JSON records.
    pub fn records(&self, run_id: &str) -> Vec<serde_json::Value> {
        self.journal(run_id)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
            .collect()
    }

    /// The id of the only run in the state directory.
    pub fn only_run_id(&self) -> String {
        let runs = self.history();
        assert_eq!(runs.len(), 1, "expected exactly one run: {runs:#?}");
        runs[0]["run_id"].as_str().expect("run_id").to_string()
    }
}

/// Runs a prepared command to the end, capturing both streams; a command that
/// does not finish within [`WAIT`] is killed and the test fails.
pub fn run_cmd(mut cmd: Command) -> Out {
    let out_file = tempfile::tempfile().expect("temp file");
    let err_file = tempfile::tempfile().expect("temp file");
    cmd.stdout(out_file.try_clone().expect("dup"))
        .stderr(err_file.try_clone().expect("dup"));
    let mut child = cmd.spawn().expect("start rollback");
    let status = wait_child(&mut child, WAIT, &format!("{cmd:?}"));
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().expect("rewind");
        f.read_to_string(&mut s).expect("read output");
        s
    };
    Out {
        code: exit_code(status),
        stdout: read(out_file),
        stderr: read(err_file),
    }
}

/// The exit code; a death by signal fails the test.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("rollback did not exit normally: {status}"))
}

/// Waits for a child at most `timeout`; on timeout kills it and fails.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?} waiting for {what} to exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `path` exists.
#[track_caller]
pub fn wait_for_file(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > WAIT {
            panic!(
                "timed out after {WAIT:?} waiting for {what} ({})",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads lines from `reader` until one satisfies `pred`; returns every line
/// read so far. Fails if the stream ends first. (The caller bounds the time by
/// killing the process on its own timeout; the stream then ends.)
pub fn read_until(
    reader: &mut impl BufRead,
    seen: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stderr");
        if n == 0 {
            panic!("stderr ended before {what}; it said:\n{}", seen.join("\n"));
        }
        let line = line.trim_end().to_string();
        seen.push(line.clone());
        if pred(&line) {
            return line;
        }
    }
}

/// Wraps a child's stderr for line-by-line reading.
pub fn stderr_lines(child: &mut Child) -> BufReader<std::process::ChildStderr> {
    BufReader::new(child.stderr.take().expect("stderr is piped"))
}

/// `kill -9 -- -PGID`: kills a whole process group.
pub fn kill_group(pgid: u32) {
    let status = Command::new("kill")
        .args(["-9", "--", &format!("-{pgid}")])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 -- -{pgid} failed: {status}");
}

/// A string as a YAML double-quoted scalar (JSON strings are valid YAML).
pub fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string serializes")
}

/// A path as a YAML double-quoted scalar.
pub fn qp(p: &Path) -> String {
    q(p.to_str().expect("UTF-8 temp path"))
}

/// Finds the record of an event in a run's records.
pub fn events<'a>(records: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == name).collect()
}

/// The step report with this id in a `show -o json` document.
pub fn step<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {report:#}"))
}
