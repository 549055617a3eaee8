//! One way for every kind to run a program: argv (never a shell), a process
//! group of its own, a capped capture of its output, errors that are
//! redacted and say what to do, and its pid recorded in the run's journal
//! before its output is read, so that a resume can end (or wait for) what a
//! dead runner left running.
//!
//! A program runs in its own process group, so the terminal's Ctrl-C reaches
//! the engine only: the first Ctrl-C lets running steps (and their programs)
//! finish. Dropping the future of [`Program::run`] (a step timeout, the
//! budget running out) ends the whole group, and
//! [`end_running_programs`] ends every group at once (a second Ctrl-C).
//!
//! ```no_run
//! # async fn demo(ctx: &rollback_core::StepContext) -> Result<(), rollback_core::StepError> {
//! use rollback_core::process::Program;
//! let finished = Program::new(["pg_dump", "--version"]).run(ctx).await?;
//! finished.expect_success(ctx)?;
//! println!("{}", finished.stdout.text());
//! # Ok(()) }
//! ```

mod capture;
pub(crate) mod procfs;
pub(crate) mod survivors;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

pub use capture::{Captured, OUTPUT_CAP};

use crate::event::Event;
use crate::step::{StepContext, StepError};

/// How many lines of output an error carries as evidence.
pub const EVIDENCE_LINES: usize = 20;

/// How long the output pipes may stay open after the program exits: a
/// process it left behind that still holds them would keep the step waiting.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);

/// Environment variable naming the run that started a program (also how a
/// resume tells its survivors from unrelated processes).
pub const RUN_ID_VAR: &str = "ROLLBACK_RUN_ID";
/// Environment variable naming the step that started a program.
pub const STEP_ID_VAR: &str = "ROLLBACK_STEP_ID";

/// What a resume does with a program a dead runner left running.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnResume {
    /// End its process group (SIGTERM, then SIGKILL) before the step runs
    /// again: the step will redo its work. (default)
    #[default]
    End,
    /// Wait for it to finish (within the budget) before the step runs again:
    /// ending it half-way would do more harm than letting it finish.
    Wait,
}

/// A started program as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramInfo {
    /// Its pid, which is also its process group.
    pub pid: u32,
    /// When it started, in clock ticks after boot (tells it from a later
    /// process that got the same pid).
    pub start_ticks: u64,
    /// The boot it ran in.
    pub boot_id: String,
    /// The host it ran on.
    pub host: String,
    /// The command, redacted and shortened, for people.
    pub command: String,
    /// What a resume does if it is still running.
    #[serde(default)]
    pub on_resume: OnResume,
}

/// A program to run: argv and how.
#[derive(Debug, Clone)]
pub struct Program {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    env_remove: Vec<String>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    output_cap: usize,
    on_resume: OnResume,
    missing_hint: Option<String>,
}

impl Program {
    /// `argv[0]` is the program (a name looked up on PATH, or a path), the
    /// rest its arguments, passed as they are: there is no shell.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Self {
        Program {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            env_remove: Vec::new(),
            cwd: None,
            stdin: None,
            output_cap: OUTPUT_CAP,
            on_resume: OnResume::End,
            missing_hint: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (added to the inherited environment).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Sets environment variables.
    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// Removes a variable from the inherited environment.
    pub fn env_remove(mut self, name: impl Into<String>) -> Self {
        self.env_remove.push(name.into());
        self
    }

    /// The working directory; the runner's own by default.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Bytes written to the program's stdin (else stdin is empty).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// Keeps at most this many bytes of stdout and of stderr (the last ones).
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes.max(1);
        self
    }

    /// What a resume does if this program outlives its runner.
    pub fn on_resume(mut self, policy: OnResume) -> Self {
        self.on_resume = policy;
        self
    }

    /// What to tell the operator when the program is not installed
    /// (`install the PostgreSQL client or set pg_bin_dir`).
    pub fn missing_hint(mut self, hint: impl Into<String>) -> Self {
        self.missing_hint = Some(hint.into());
        self
    }

    /// The argv as given.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The program's name, for messages (the last part of `argv[0]`).
    pub fn name(&self) -> String {
        program_name(self.argv.first().map(String::as_str).unwrap_or(""))
    }

    /// Starts the program, waits for it to end and captures its output.
    /// Dropping the future ends the program and everything it started.
    pub async fn run(self, ctx: &StepContext) -> Result<Finished, StepError> {
        self.spawn(ctx).await?.wait(ctx).await
    }

    /// Starts the program and records it in the run's journal; the caller
    /// may take its stdout to read it as it comes ([`Running::take_stdout`]).
    pub async fn spawn(self, ctx: &StepContext) -> Result<Running, StepError> {
        let Some(program) = self.argv.first().cloned() else {
            return Err(StepError::fatal("no program to run: argv is empty"));
        };
        let mut command = self.command(ctx, &program)?;
        let mut child = command
            .spawn()
            .map_err(|e| spawn_error(ctx, &program, self.missing_hint.as_deref(), e))?;
        let group = ProcessGroup::of(&child);
        let info = ProgramInfo {
            pid: child.id().unwrap_or(0),
            start_ticks: child
                .id()
                .and_then(|p| procfs::start_ticks(p as i32))
                .unwrap_or(0),
            boot_id: procfs::boot_id(),
            host: crate::executor::hostname(),
            command: shorten(&ctx.redact(&display_argv(&self.argv)), 200),
            on_resume: self.on_resume,
        };
        // Durable before the program's output is read: a runner that dies
        // from here on leaves a record a resume can act on.
        ctx.recorder.queue(Event::ProgramStarted {
            step: ctx.step_id().to_string(),
            program: info.clone(),
        });
        if let Err(e) = ctx.recorder.commit().await {
            drop(group);
            return Err(StepError::fatal(format!(
                "`{}` was ended: its start could not be journaled ({e})",
                self.name()
            )));
        }
        let name = self.name();
        let stdin = match (self.stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
                // A program may exit before reading everything: that is its answer.
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };
        let stderr = child
            .stderr
            .take()
            .map(|e| tokio::spawn(capture::read_tail(e, self.output_cap)));
        Ok(Running {
            stdout: child.stdout.take(),
            child,
            group,
            info,
            name,
            cap: self.output_cap,
            stdin,
            stderr,
        })
    }

    fn command(
        &self,
        ctx: &StepContext,
        program: &str,
    ) -> Result<tokio::process::Command, StepError> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(&self.argv[1..])
            .envs(&self.env)
            .env(RUN_ID_VAR, ctx.run_id())
            .env(STEP_ID_VAR, ctx.step_id())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Out of reach of the terminal's Ctrl-C, and ended whole.
            .process_group(0)
            .kill_on_drop(true);
        for name in &self.env_remove {
            command.env_remove(name);
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(StepError::fatal(ctx.redact(&format!(
                    "working directory `{}` does not exist or is not a directory: fix `cwd` or create it first",
                    cwd.display()
                ))));
            }
            command.current_dir(cwd);
        }
        Ok(command)
    }
}

/// A started program.
pub struct Running {
    child: Child,
    group: ProcessGroup,
    info: ProgramInfo,
    name: String,
    cap: usize,
    stdout: Option<ChildStdout>,
    stdin: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<std::io::Result<Captured>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("pid", &self.info.pid)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Its stdout, to read as it comes; [`Running::wait`] then captures
    /// nothing from it.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// What the journal recorded about it.
    pub fn info(&self) -> &ProgramInfo {
        &self.info
    }

    /// Waits for the program to end and collects its output.
    pub async fn wait(mut self, ctx: &StepContext) -> Result<Finished, StepError> {
        let cap = self.cap;
        let stdout = self
            .stdout
            .take()
            .map(|o| tokio::spawn(capture::read_tail(o, cap)));
        let failed = |what: &str, e: std::io::Error| {
            StepError::fatal(ctx.redact(&format!("{what} of `{}` failed: {e}", self.name)))
                .with_source(e)
        };
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| failed("waiting for the end", e))?;
        let outputs = async {
            let out = match stdout {
                Some(h) => joined(h.await),
                None => Ok(Captured::default()),
            };
            let err = match self.stderr.take() {
                Some(h) => joined(h.await),
                None => Ok(Captured::default()),
            };
            (out, err)
        };
        let mut outputs = std::pin::pin!(outputs);
        let (stdout, stderr) = match tokio::time::timeout(OUTPUT_LINGER, &mut outputs).await {
            Ok(both) => {
                // It ended and released its output: a daemon it started on
                // purpose keeps running.
                self.group.disarm();
                both
            }
            Err(_) => {
                self.group.kill();
                outputs.await
            }
        };
        if let Some(feed) = self.stdin.take() {
            feed.abort();
        }
        ctx.recorder.queue(Event::ProgramEnded {
            step: ctx.step_id().to_string(),
            pid: self.info.pid,
            start_ticks: self.info.start_ticks,
            status: describe_status(status),
        });
        Ok(Finished {
            name: self.name.clone(),
            status,
            stdout: stdout.map_err(|e| failed("reading the stdout", e))?,
            stderr: stderr.map_err(|e| failed("reading the stderr", e))?,
        })
    }
}

fn joined(
    r: Result<std::io::Result<Captured>, tokio::task::JoinError>,
) -> std::io::Result<Captured> {
    r.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// What a finished program left behind.
#[derive(Debug)]
pub struct Finished {
    name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// The end of its stdout.
    pub stdout: Captured,
    /// The end of its stderr.
    pub stderr: Captured,
}

impl Finished {
    /// Its exit code; `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The last lines of stderr, or of stdout when stderr is empty.
    pub fn evidence(&self) -> String {
        let stderr = self.stderr.text();
        let text = if stderr.trim().is_empty() {
            self.stdout.text()
        } else {
            stderr
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(EVIDENCE_LINES);
        lines[start..].join("\n")
    }

    /// The exit code if it is one of `expect_exit`, else the error to report:
    /// retryable when the code is in `retry_on_exit`.
    pub fn check(
        &self,
        ctx: &StepContext,
        expect_exit: &[i32],
        retry_on_exit: &[i32],
    ) -> Result<i32, StepError> {
        let detail = ctx.redact(&self.evidence());
        let program = &self.name;
        let Some(code) = self.status.code() else {
            let message = format!(
                "`{program}` did not exit normally ({}): see its stderr, and the system log if it was killed",
                describe_status(self.status)
            );
            return Err(StepError::fatal(ctx.redact(&message)).with_detail(detail));
        };
        if expect_exit.contains(&code) {
            return Ok(code);
        }
        let expected = crate::kinds::one_of(expect_exit);
        let err = if retry_on_exit.contains(&code) {
            StepError::retryable(ctx.redact(&format!(
                "`{program}` exited with {code} (expected {expected}); retry_on_exit lists {code}, so it may be \
                 attempted again"
            )))
        } else {
            StepError::fatal(ctx.redact(&format!(
                "`{program}` exited with {code} (expected {expected}): read the end of its output below, fix \
                 the cause, then run the plan again"
            )))
        };
        Err(err.with_detail(detail))
    }

    /// Ok when it exited with 0; else an error naming the first line of its
    /// stderr that mentions an error, with the end of its output as detail.
    pub fn expect_success(&self, ctx: &StepContext) -> Result<(), StepError> {
        if self.success() {
            return Ok(());
        }
        let evidence = self.evidence();
        let first = evidence
            .lines()
            .find(|l| l.to_lowercase().contains("error"))
            .or_else(|| evidence.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("no message")
            .trim();
        Err(StepError::fatal(ctx.redact(&format!(
            "`{}` {}: {first}",
            self.name,
            match self.code() {
                Some(code) => format!("exited with {code}"),
                None => describe_status(self.status),
            }
        )))
        .with_detail(ctx.redact(&evidence)))
    }
}

/// `exit N` or `killed by signal N`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn program_name(program: &str) -> String {
    std::path::Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string())
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn spawn_error(
    ctx: &StepContext,
    program: &str,
    hint: Option<&str>,
    e: std::io::Error,
) -> StepError {
    let message = match (e.kind(), hint) {
        (std::io::ErrorKind::NotFound, Some(hint)) => {
            format!("program `{program}` not found: {hint}")
        }
        (std::io::ErrorKind::NotFound, None) if program.contains('/') => {
            format!("program `{program}` not found: check the path in argv[0]")
        }
        (std::io::ErrorKind::NotFound, None) => {
            let path = std::env::var("PATH").unwrap_or_default();
            format!("program `{program}` not found on PATH ({path}): install it or give its full path in argv[0]")
        }
        (std::io::ErrorKind::PermissionDenied, _) => {
            format!("program `{program}` cannot be executed (permission denied): check argv[0] and its mode")
        }
        _ => format!("cannot start `{program}`: {e}"),
    };
    StepError::fatal(ctx.redact(&message)).with_source(e)
}

/// `argv` as a person would type it in a POSIX shell (for display only; it is
/// never run through one).
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Process groups of the programs this process is running.
fn live_groups() -> &'static std::sync::Mutex<std::collections::BTreeSet<i32>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<i32>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Ends (SIGKILL) every program this process is running, with all they
/// started. For a front door about to exit without unwinding (a second
/// Ctrl-C), which would otherwise leave them running: each runs in its own
/// process group, out of reach of the terminal's Ctrl-C.
pub fn end_running_programs() {
    let groups = std::mem::take(&mut *live_groups().lock().unwrap_or_else(|e| e.into_inner()));
    for pid in groups
        .into_iter()
        .filter_map(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// A program's process group, ended with SIGKILL when this is dropped: a
/// timeout, the budget or a second Ctrl-C drops the step's future, and
/// `kill_on_drop` alone would reach only the direct child.
struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    fn of(child: &Child) -> Self {
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            live_groups()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid.as_raw_nonzero().get());
        }
        ProcessGroup(pid)
    }

    /// Ends every process still in the group.
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            Self::forget(pid);
            // ESRCH (nothing left in the group) is the common, fine answer.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    /// The program ended and released its output: leave the group alone.
    fn disarm(&mut self) {
        if let Some(pid) = self.0.take() {
            Self::forget(pid);
        }
    }

    fn forget(pid: rustix::process::Pid) {
        live_groups()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid.as_raw_nonzero().get());
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests;
