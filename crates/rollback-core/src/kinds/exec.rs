//! `exec`: run a program with its arguments, never through a shell; as a step
//! and as a verifier.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{one_of, OUTPUT_CAP};
use crate::registry::ConfigError;
use crate::step::{
    Measurement, OutputNames, Outputs, Preview, Step, StepContext, StepError, Verifier,
};

/// How many lines of stderr an error carries as evidence.
const STDERR_TAIL_LINES: usize = 20;

fn default_expect_exit() -> Vec<i32> {
    vec![0]
}

/// Configuration of the `exec` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program and its arguments, e.g. `["pg_restore", "--clean", "dump.sql"]`.
    /// The program is started directly, never through a shell: to use pipes or
    /// redirections, write `["sh", "-c", "..."]` explicitly.
    pub argv: Vec<String>,
    /// Environment variables added to the inherited environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the runner's own when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Exit codes that count as success.
    #[serde(default = "default_expect_exit")]
    pub expect_exit: Vec<i32>,
    /// Exit codes after which another attempt may help (the step's `retries`
    /// decide how many); any other unexpected code fails the step at once.
    #[serde(default)]
    pub retry_on_exit: Vec<i32>,
    /// A compensating command run by undo, with the same `env` and `cwd`; it
    /// succeeds when it exits with 0. Without it the step cannot be undone.
    #[serde(default)]
    pub undo: Option<Vec<String>>,
}

/// Configuration of the `exec` verifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecCheckConfig {
    /// The program and its arguments, started directly (no shell).
    pub argv: Vec<String>,
    /// Environment variables added to the inherited environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the runner's own when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Exit codes that make the check pass.
    #[serde(default = "default_expect_exit")]
    pub expect_exit: Vec<i32>,
}

fn check_argv(field: &str, argv: &[String]) -> Result<(), ConfigError> {
    match argv.first() {
        None => Err(ConfigError::field(
            field,
            "must not be empty: give the program and its arguments, e.g. [\"systemctl\", \"restart\", \"app\"]",
        )),
        Some(program) if program.trim().is_empty() => Err(ConfigError::field(
            field,
            "the program (first element) is empty: give its name or path",
        )),
        Some(_) => Ok(()),
    }
}

fn check_expect_exit(expect_exit: &[i32]) -> Result<(), ConfigError> {
    if expect_exit.is_empty() {
        Err(ConfigError::field(
            "expect_exit",
            "must list at least one exit code (leave it out for [0])",
        ))
    } else {
        Ok(())
    }
}

/// The `exec` step.
#[derive(Debug)]
pub struct Exec {
    config: ExecConfig,
}

impl Exec {
    /// Checks the configuration.
    pub fn new(config: ExecConfig) -> Result<Self, ConfigError> {
        check_argv("argv", &config.argv)?;
        if let Some(undo) = &config.undo {
            check_argv("undo", undo)?;
        }
        check_expect_exit(&config.expect_exit)?;
        Ok(Exec { config })
    }
}

#[async_trait]
impl Step for Exec {
    fn describe(&self) -> String {
        format!("run `{}`", display_argv(&self.config.argv))
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["stdout", "stderr", "exit_code"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let argv = resolve_all(ctx, &self.config.argv)?;
        let shown = ctx.redact(&display_argv(&argv));
        Ok(Preview::new(
            format!("run `{shown}`"),
            vec![format!("run {shown}")],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let command = Command::resolve(
            ctx,
            &self.config.argv,
            &self.config.env,
            self.config.cwd.as_deref(),
        )?;
        let finished = command.execute(ctx).await?;
        let code = finished.check(
            ctx,
            &command.argv[0],
            &self.config.expect_exit,
            &self.config.retry_on_exit,
        )?;
        let mut outputs = Outputs::new();
        outputs.insert(
            "stdout".into(),
            serde_json::Value::String(finished.stdout.text()),
        );
        outputs.insert(
            "stderr".into(),
            serde_json::Value::String(finished.stderr.text()),
        );
        outputs.insert("exit_code".into(), serde_json::Value::from(code));
        Ok(outputs)
    }

    fn can_undo(&self) -> bool {
        self.config.undo.is_some()
    }

    async fn undo(&self, ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        let Some(undo) = &self.config.undo else {
            return Err(StepError::fatal(
                "this exec step has no `undo` command: add one to make it reversible",
            ));
        };
        let command = Command::resolve(ctx, undo, &self.config.env, self.config.cwd.as_deref())?;
        let finished = command.execute(ctx).await?;
        finished.check(ctx, &command.argv[0], &[0], &self.config.retry_on_exit)?;
        Ok(())
    }
}

/// The `exec` verifier.
#[derive(Debug)]
pub struct ExecCheck {
    config: ExecCheckConfig,
}

impl ExecCheck {
    /// Checks the configuration.
    pub fn new(config: ExecCheckConfig) -> Result<Self, ConfigError> {
        check_argv("argv", &config.argv)?;
        check_expect_exit(&config.expect_exit)?;
        Ok(ExecCheck { config })
    }

    fn expected(&self) -> String {
        format!("exit in {:?}", self.config.expect_exit)
    }
}

#[async_trait]
impl Verifier for ExecCheck {
    fn describe(&self) -> String {
        format!(
            "`{}` exits with {}",
            display_argv(&self.config.argv),
            one_of(&self.config.expect_exit)
        )
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let command = Command::resolve(
            ctx,
            &self.config.argv,
            &self.config.env,
            self.config.cwd.as_deref(),
        )?;
        let finished = command.execute(ctx).await?;
        let code = finished.status.code();
        let passed = code.is_some_and(|c| self.config.expect_exit.contains(&c));
        let mut observed = match code {
            Some(code) => format!("exit {code}"),
            None => describe_status(finished.status),
        };
        if !passed {
            let stderr = finished.stderr.text();
            if let Some(line) = stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
                observed.push_str(": ");
                observed.push_str(line);
            }
        }
        Ok(Measurement::new(
            passed,
            ctx.redact(&observed),
            self.expected(),
        ))
    }
}

/// A resolved command line, ready to start.
struct Command {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

fn resolve_all(ctx: &StepContext, items: &[String]) -> Result<Vec<String>, StepError> {
    items.iter().map(|s| ctx.resolve(s)).collect()
}

impl Command {
    fn resolve(
        ctx: &StepContext,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cwd: Option<&str>,
    ) -> Result<Self, StepError> {
        let argv = resolve_all(ctx, argv)?;
        let env = env
            .iter()
            .map(|(k, v)| Ok((k.clone(), ctx.resolve(v)?)))
            .collect::<Result<_, StepError>>()?;
        let cwd = cwd.map(|c| ctx.resolve(c)).transpose()?;
        Ok(Command { argv, env, cwd })
    }

    /// Starts the program and waits for it, capturing the tails of stdout and
    /// stderr. Dropping the future kills the program.
    async fn execute(&self, ctx: &StepContext) -> Result<Finished, StepError> {
        let program = &self.argv[0];
        let mut command = tokio::process::Command::new(program);
        command
            .args(&self.argv[1..])
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout can end `sh -c` descendants
            // too, and the terminal's Ctrl-C reaches the engine only, which
            // lets running steps finish.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            if !Path::new(cwd).is_dir() {
                return Err(StepError::fatal(ctx.redact(&format!(
                    "working directory `{cwd}` does not exist or is not a directory: fix `cwd` or create it first"
                ))));
            }
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| spawn_error(ctx, program, e))?;
        let mut group = ProcessGroup::of(&child);
        let stdout = tokio::spawn(read_tail(child.stdout.take().expect("stdout is piped")));
        let stderr = tokio::spawn(read_tail(child.stderr.take().expect("stderr is piped")));
        let failed = |what: &str, e: std::io::Error| {
            StepError::fatal(ctx.redact(&format!("{what} of `{program}` failed: {e}")))
                .with_source(e)
        };
        let status = child
            .wait()
            .await
            .map_err(|e| failed("waiting for the end", e))?;
        // The program has exited. A process it left behind that still holds
        // its stdout or stderr would keep the step waiting: after a grace
        // period the rest of its process group is ended.
        let outputs = async { (stdout.await, stderr.await) };
        let mut outputs = std::pin::pin!(outputs);
        let (stdout, stderr) = match tokio::time::timeout(OUTPUT_LINGER, &mut outputs).await {
            Ok(both) => {
                group.disarm();
                both
            }
            Err(_) => {
                group.kill();
                outputs.await
            }
        };
        let joined = |r: Result<std::io::Result<Captured>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let stdout = joined(stdout).map_err(|e| failed("reading the stdout", e))?;
        let stderr = joined(stderr).map_err(|e| failed("reading the stderr", e))?;
        Ok(Finished {
            status,
            stdout,
            stderr,
        })
    }
}

/// How long the output pipes may stay open after the program exits.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);

/// Process groups of the programs `exec` steps are running in this process.
fn live_groups() -> &'static std::sync::Mutex<std::collections::BTreeSet<i32>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<i32>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Ends (SIGKILL) every program an `exec` step of this process is running,
/// with all it started. For a front door about to exit without unwinding
/// (a second Ctrl-C), which would otherwise leave them running: each runs in
/// its own process group, out of reach of the terminal's Ctrl-C.
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
    fn of(child: &tokio::process::Child) -> Self {
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

    /// The program ended and released its output: leave the group alone
    /// (a daemon it started on purpose keeps running).
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

fn spawn_error(ctx: &StepContext, program: &str, e: std::io::Error) -> StepError {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound if program.contains('/') => {
            format!("program `{program}` not found: check the path in argv[0]")
        }
        std::io::ErrorKind::NotFound => {
            let path = std::env::var("PATH").unwrap_or_default();
            format!("program `{program}` not found on PATH ({path}): install it or give its full path in argv[0]")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("program `{program}` cannot be executed (permission denied): check argv[0] and its mode")
        }
        _ => format!("cannot start `{program}`: {e}"),
    };
    StepError::fatal(ctx.redact(&message)).with_source(e)
}

/// What a finished program left behind.
struct Finished {
    status: ExitStatus,
    stdout: Captured,
    stderr: Captured,
}

impl Finished {
    /// The exit code if it is expected, or the error to report.
    fn check(
        &self,
        ctx: &StepContext,
        program: &str,
        expect_exit: &[i32],
        retry_on_exit: &[i32],
    ) -> Result<i32, StepError> {
        let detail = ctx.redact(&self.evidence());
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
        let expected = one_of(expect_exit);
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

    /// The last lines of stderr, or of stdout when stderr is empty.
    fn evidence(&self) -> String {
        let stderr = self.stderr.text();
        let text = if stderr.trim().is_empty() {
            self.stdout.text()
        } else {
            stderr
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
        lines[start..].join("\n")
    }
}

#[cfg(unix)]
fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(not(unix))]
fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => status.to_string(),
    }
}

/// The last [`OUTPUT_CAP`] bytes of a stream, and how many came before them.
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Captured {
    /// The text without its trailing newlines, with a note first if the
    /// beginning was dropped.
    fn text(&self) -> String {
        let mut bytes = self.bytes.as_slice();
        if self.dropped > 0 {
            // Do not start in the middle of a UTF-8 sequence.
            while let [first, rest @ ..] = bytes {
                if (0x80..0xC0).contains(first) {
                    bytes = rest;
                } else {
                    break;
                }
            }
        }
        let body = String::from_utf8_lossy(bytes);
        let body = body.trim_end_matches(['\n', '\r']);
        if self.dropped > 0 {
            format!(
                "[output truncated: the first {} bytes were dropped, the last {} KiB are kept]\n{body}",
                self.dropped + (self.bytes.len() - bytes.len()),
                OUTPUT_CAP / 1024
            )
        } else {
            body.to_string()
        }
    }
}

async fn read_tail<R: AsyncRead + Unpin>(mut reader: R) -> std::io::Result<Captured> {
    let mut bytes = Vec::new();
    let mut dropped = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        // Trim in batches so that a chatty program costs no quadratic copying.
        if bytes.len() > 2 * OUTPUT_CAP {
            let excess = bytes.len() - OUTPUT_CAP;
            bytes.drain(..excess);
            dropped += excess;
        }
    }
    if bytes.len() > OUTPUT_CAP {
        let excess = bytes.len() - OUTPUT_CAP;
        bytes.drain(..excess);
        dropped += excess;
    }
    Ok(Captured { bytes, dropped })
}

/// `argv` as a person would type it in a POSIX shell (for display only; it is
/// never run through one).
pub(crate) fn display_argv(argv: &[String]) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn step(value: serde_json::Value) -> Exec {
        Exec::new(serde_json::from_value(value).expect("config")).expect("valid config")
    }

    #[test]
    fn config_defaults_and_validation() {
        let config: ExecConfig =
            serde_json::from_value(serde_json::json!({"argv": ["true"]})).unwrap();
        assert_eq!(config.expect_exit, [0]);
        assert!(config.retry_on_exit.is_empty() && config.env.is_empty() && config.undo.is_none());
        let err = Exec::new(serde_json::from_value(serde_json::json!({"argv": []})).unwrap())
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("argv"));
        let err = Exec::new(
            serde_json::from_value(serde_json::json!({"argv": ["x"], "undo": []})).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("undo"));
        let unknown =
            serde_json::from_value::<ExecConfig>(serde_json::json!({"argv": ["x"], "shell": true}));
        assert!(unknown.unwrap_err().to_string().contains("shell"));
    }

    #[test]
    fn quotes_for_display() {
        assert_eq!(
            display_argv(&argv(&["echo", "a b", "it's", "", "x=1"])),
            r"echo 'a b' 'it'\''s' '' x=1"
        );
    }

    #[tokio::test]
    async fn runs_with_env_and_cwd_and_captures_output() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let step = step(serde_json::json!({
            "argv": ["sh", "-c", "echo \"$GREETING from $(pwd)\"; echo careful >&2"],
            "env": {"GREETING": "hello"},
            "cwd": dir.path().to_str().unwrap(),
        }));
        let outputs = step.run(&ctx).await.expect("runs");
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(outputs["stdout"], format!("hello from {}", cwd.display()));
        assert_eq!(outputs["stderr"], "careful");
        assert_eq!(outputs["exit_code"], 0);
        assert!(!step.can_undo());
    }

    /// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
    fn ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// The pid a test script wrote with `echo $! > FILE`.
    fn read_pid(file: &std::path::Path) -> String {
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }

    async fn until_ended(pid: &str) -> bool {
        for _ in 0..100 {
            if ended(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_dropped_step_ends_the_programs_it_started_too() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let step = step(serde_json::json!({"argv": ["sh", "-c", script]}));
        // What the executor does on a step timeout: drop the running future.
        let run = tokio::time::timeout(Duration::from_secs(1), step.run(&ctx)).await;
        assert!(run.is_err(), "the step should still be running");
        let pid = read_pid(&pidfile);
        assert!(
            until_ended(&pid).await,
            "the grandchild `sleep 300` (pid {pid}) is still running"
        );
    }

    #[tokio::test]
    async fn a_leftover_holding_stdout_does_not_hold_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let pidfile = dir.path().join("leftover.pid");
        let script = format!("echo started; sleep 300 & echo $! > {}", pidfile.display());
        let started = std::time::Instant::now();
        let outputs = step(serde_json::json!({"argv": ["sh", "-c", script]}))
            .run(&ctx)
            .await
            .expect("runs");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(outputs["stdout"], "started");
        let pid = read_pid(&pidfile);
        assert!(
            until_ended(&pid).await,
            "the leftover `sleep 300` (pid {pid}) is still running"
        );
    }

    #[tokio::test]
    async fn unexpected_exit_is_fatal_with_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = step(serde_json::json!({"argv": ["sh", "-c", script]}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().contains("exited with 3 (expected 0)"),
            "{}",
            err.message()
        );
        let detail = err.detail().expect("stderr tail");
        assert_eq!(detail.lines().count(), STDERR_TAIL_LINES);
        assert!(
            detail.starts_with("line11") && detail.ends_with("line30"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn retry_on_exit_makes_the_error_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let config = serde_json::json!({
            "argv": ["sh", "-c", "echo busy >&2; exit 75"],
            "retry_on_exit": [75],
        });
        let err = step(config).run(&ctx).await.unwrap_err();
        assert!(err.is_retryable(), "{}", err.message());
        assert_eq!(err.detail(), Some("busy"));
    }

    #[tokio::test]
    async fn expect_exit_accepts_other_codes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let outputs = step(serde_json::json!({"argv": ["false"], "expect_exit": [1]}))
            .run(&ctx)
            .await
            .unwrap();
        assert_eq!(outputs["exit_code"], 1);
    }

    #[tokio::test]
    async fn missing_program_names_it_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let err = step(serde_json::json!({"argv": ["rollback-no-such-program"]}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message()
                .contains("`rollback-no-such-program` not found on PATH"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn keeps_the_tail_of_large_output() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let script =
            "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the output\"; i=$((i+1)); done";
        let outputs = step(serde_json::json!({"argv": ["sh", "-c", script]}))
            .run(&ctx)
            .await
            .unwrap();
        let stdout = outputs["stdout"].as_str().unwrap();
        assert!(
            stdout.starts_with("[output truncated: the first "),
            "{}",
            &stdout[..100]
        );
        assert!(stdout.ends_with("line 2999 of the output"));
        assert!(stdout.len() <= OUTPUT_CAP + 100);
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
        let step = step(serde_json::json!({"argv": ["sh", "-c", script]}));
        let timed_out = tokio::time::timeout(Duration::from_millis(500), step.run(&ctx)).await;
        assert!(
            timed_out.is_err(),
            "the program should still have been running"
        );
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        let stat = format!("/proc/{pid}/stat");
        let mut gone = false;
        for _ in 0..100 {
            // Dead means gone or a zombie waiting to be reaped.
            match std::fs::read_to_string(&stat) {
                Err(_) => gone = true,
                Ok(s) => {
                    gone = s
                        .rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
                }
            }
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "process {pid} survived the dropped step");
    }

    #[tokio::test]
    async fn preview_resolves_redacts_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let marker = dir.path().join("ran");
        let step = step(serde_json::json!({
            "argv": ["touch", marker.to_str().unwrap(), format!("--token=${{file:{}}}", secret.display())],
        }));
        let preview = step.preview(&ctx).await.unwrap();
        assert!(!marker.exists());
        assert!(!preview.summary.contains("s3cr3t"), "{}", preview.summary);
        assert_eq!(
            preview.summary,
            format!("run `touch {} --token=***`", marker.display())
        );
        assert_eq!(
            preview.changes,
            [format!("run touch {} --token=***", marker.display())]
        );
    }

    #[tokio::test]
    async fn undo_runs_the_compensating_command() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("exec", dir.path());
        let file = dir.path().join("flag");
        let file = file.to_str().unwrap();
        let step = step(serde_json::json!({"argv": ["touch", file], "undo": ["rm", "-f", file]}));
        assert!(step.can_undo());
        let outputs = step.run(&ctx).await.unwrap();
        assert!(Path::new(file).exists());
        step.undo(&ctx, &outputs).await.unwrap();
        step.undo(&ctx, &outputs).await.unwrap();
        assert!(!Path::new(file).exists());
    }

    #[tokio::test]
    async fn verifier_measures_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("check", dir.path());
        let check = |value| ExecCheck::new(serde_json::from_value(value).unwrap()).unwrap();
        let ok = check(serde_json::json!({"argv": ["true"]}))
            .check(&ctx)
            .await
            .unwrap();
        assert_eq!(ok, Measurement::new(true, "exit 0", "exit in [0]"));
        let script = "echo 'replica lag 30s' >&2; echo more >&2; exit 2";
        let bad = check(serde_json::json!({"argv": ["sh", "-c", script]}))
            .check(&ctx)
            .await
            .unwrap();
        assert_eq!(
            bad,
            Measurement::new(false, "exit 2: replica lag 30s", "exit in [0]")
        );
        let grep_absent = check(serde_json::json!({"argv": ["false"], "expect_exit": [1]}));
        assert!(grep_absent.check(&ctx).await.unwrap().passed);
        assert!(
            check(serde_json::json!({"argv": ["rollback-no-such-program"]}))
                .check(&ctx)
                .await
                .is_err()
        );
    }
}
