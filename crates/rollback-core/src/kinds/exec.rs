//! `exec`: run a program with its arguments, never through a shell; as a step
//! and as a verifier.

use std::collections::BTreeMap;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use super::one_of;
use crate::process::{describe_status, display_argv, OnResume, Program};
use crate::registry::ConfigError;
use crate::step::{
    Measurement, OutputNames, Outputs, Preview, Step, StepContext, StepError, StepOutputs, Verifier,
};

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
    /// If the runner dies while the program runs, what `rollback resume` does
    /// with it before running the step again: `end` its process group (the
    /// default: the step redoes its work) or `wait` for it to finish (a
    /// program that must not be stopped half-way).
    #[serde(default)]
    pub on_resume: OnResume,
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

crate::step_outputs! {
    /// What an `exec` step returns.
    pub struct ExecOutputs {
        /// The end of its stdout (the last 64 KiB).
        pub stdout: String,
        /// The end of its stderr.
        pub stderr: String,
        /// Its exit code.
        pub exit_code: i32,
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
        ExecOutputs::names()
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
        let finished = program(
            ctx,
            &self.config.argv,
            &self.config.env,
            self.config.cwd.as_deref(),
        )?
        .on_resume(self.config.on_resume)
        .run(ctx)
        .await?;
        let code = finished.check(ctx, &self.config.expect_exit, &self.config.retry_on_exit)?;
        Ok(ExecOutputs {
            stdout: finished.stdout.text(),
            stderr: finished.stderr.text(),
            exit_code: code,
        }
        .into_outputs())
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
        let finished = program(ctx, undo, &self.config.env, self.config.cwd.as_deref())?
            .run(ctx)
            .await?;
        finished.check(ctx, &[0], &self.config.retry_on_exit)?;
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
        let finished = program(
            ctx,
            &self.config.argv,
            &self.config.env,
            self.config.cwd.as_deref(),
        )?
        .run(ctx)
        .await?;
        let code = finished.code();
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
fn program(
    ctx: &StepContext,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Result<Program, StepError> {
    let argv = resolve_all(ctx, argv)?;
    let mut program = Program::new(argv);
    for (k, v) in env {
        program = program.env(k.clone(), ctx.resolve(v)?);
    }
    if let Some(cwd) = cwd {
        program = program.cwd(ctx.resolve(cwd)?);
    }
    Ok(program)
}

fn resolve_all(ctx: &StepContext, items: &[String]) -> Result<Vec<String>, StepError> {
    items.iter().map(|s| ctx.resolve(s)).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
        assert_eq!(detail.lines().count(), crate::process::EVIDENCE_LINES);
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
