//! Checking a version's data before it is written back: a command that reads
//! the JSON on stdin, a JSON Schema, or both.

use std::process::Stdio;
use std::time::Duration;

use rollback_core::{ConfigError, HumanDuration, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::kv::Scrubber;

/// How long a validation command may run unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a rejecting command's stderr is quoted in the error.
const STDERR_TAIL: usize = 2048;

/// A command that validates the data.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateCommand {
    /// The program and its arguments (no shell), e.g.
    /// `[./scripts/validate-config.sh, "-"]`. It receives the version's data
    /// as one JSON object on stdin and accepts it by exiting 0.
    pub argv: Vec<String>,
    /// The longest the command may run, e.g. `10s` (default 30s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// The checks a version's data must pass.
pub(crate) struct Validator {
    command: Option<ValidateCommand>,
    schema: Option<(String, jsonschema::Validator)>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("command", &self.command)
            .field("schema", &self.schema.as_ref().map(|(p, _)| p))
            .finish()
    }
}

impl Validator {
    /// Checks the command and compiles the schema file (read now, so a plan
    /// with a broken schema fails when it is loaded).
    pub(crate) fn new(
        command: Option<ValidateCommand>,
        schema: Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(cmd) = &command {
            if cmd.argv.first().is_none_or(|a| a.trim().is_empty()) {
                return Err(ConfigError::field(
                    "validate.argv",
                    "must name a program, e.g. [./scripts/validate-config.sh]",
                ));
            }
        }
        let schema = match schema {
            None => None,
            Some(path) => {
                if path.contains("${") {
                    return Err(ConfigError::field(
                        "schema",
                        "a schema file is read when the plan is loaded: write a plain path, without references",
                    ));
                }
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::field(
                        "schema",
                        format!("cannot read `{path}`: {e} (a relative path is taken from the current folder)"),
                    )
                })?;
                let value: Value = serde_json::from_str(&text).map_err(|e| {
                    ConfigError::field("schema", format!("`{path}` is not JSON: {e}"))
                })?;
                let compiled = jsonschema::validator_for(&value).map_err(|e| {
                    ConfigError::field(
                        "schema",
                        format!("`{path}` is not a valid JSON Schema: {e}"),
                    )
                })?;
                Some((path, compiled))
            }
        };
        Ok(Validator { command, schema })
    }

    /// Whether there is anything to check.
    pub(crate) fn is_empty(&self) -> bool {
        self.command.is_none() && self.schema.is_none()
    }

    /// What is checked, for descriptions.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((path, _)) = &self.schema {
            parts.push(format!("schema {path}"));
        }
        if let Some(cmd) = &self.command {
            parts.push(format!("`{}`", cmd.argv.join(" ")));
        }
        parts.join(" and ")
    }

    /// Ok, or why the data is refused (no secret values in the reason).
    /// `Err(Err(_))` means the check itself could not run.
    pub(crate) async fn check(
        &self,
        ctx: &StepContext,
        data: &Value,
        scrubber: &Scrubber,
    ) -> Result<Result<(), String>, StepError> {
        if let Some((path, schema)) = &self.schema {
            let problems: Vec<String> = schema
                .iter_errors(data)
                .take(5)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    let at = if at.is_empty() { "/".to_string() } else { at };
                    format!("{at}: {}", e.masked())
                })
                .collect();
            if !problems.is_empty() {
                return Ok(Err(scrubber.scrub(&format!(
                    "it does not match schema `{path}`: {}",
                    problems.join("; ")
                ))));
            }
        }
        if let Some(cmd) = &self.command {
            return self.run_command(ctx, cmd, data, scrubber).await;
        }
        Ok(Ok(()))
    }

    async fn run_command(
        &self,
        ctx: &StepContext,
        cmd: &ValidateCommand,
        data: &Value,
        scrubber: &Scrubber,
    ) -> Result<Result<(), String>, StepError> {
        let argv: Vec<String> = cmd
            .argv
            .iter()
            .map(|a| ctx.resolve(a))
            .collect::<Result<_, _>>()?;
        let program = &argv[0];
        let shown = ctx.redact(program);
        let mut child = tokio::process::Command::new(program)
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                StepError::fatal(format!(
                    "cannot start the validation command `{shown}`: {e}: check `validate.argv` (the program must exist \
                     and be executable)"
                ))
            })?;
        let input = serde_json::to_vec(data).expect("JSON data serializes");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            // A validator may exit before reading everything; that is its verdict.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        };
        let limit = cmd.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
        let work = async {
            let ((), output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        let output = tokio::select! {
            out = tokio::time::timeout(limit, work) => match out {
                Ok(Ok(output)) => output,
                Ok(Err(e)) => {
                    return Err(StepError::fatal(format!("the validation command `{shown}` failed to run: {e}")))
                }
                Err(_) => {
                    return Ok(Err(format!(
                        "the validation command `{shown}` did not finish within {}s",
                        limit.as_secs_f64()
                    )))
                }
            },
            _ = ctx.cancellation().cancelled() => {
                return Err(StepError::interrupted("cancelled while validating"));
            }
        };
        if output.status.success() {
            return Ok(Ok(()));
        }
        let code = output
            .status
            .code()
            .map(|c| format!("exited with code {c}"))
            .unwrap_or_else(|| "was killed by a signal".into());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let tail = if stderr.len() > STDERR_TAIL {
            let mut start = stderr.len() - STDERR_TAIL;
            while !stderr.is_char_boundary(start) {
                start += 1;
            }
            &stderr[start..]
        } else {
            stderr
        };
        let reason = if tail.is_empty() {
            format!("`{shown}` {code}")
        } else {
            format!("`{shown}` {code}: {tail}")
        };
        Ok(Err(ctx.redact(&scrubber.scrub(&reason))))
    }
}
