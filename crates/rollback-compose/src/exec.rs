//! `compose.exec`: run a command inside a service's running container
//! (`exec -T SERVICE ARGV...`), e.g. seed 003's
//! `docker exec africanmarket_postgres psql -c "ALTER DATABASE ..."`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};

use crate::project::display_argv;

fn default_expect_exit() -> Vec<i32> {
    vec![0]
}

compose_config! {
    /// Configuration of `compose.exec`.
    pub struct ComposeExecConfig {
        /// The service whose container runs the command.
        pub service: String,
        /// The command and its arguments inside the container, run directly
        /// (no shell): e.g. `["psql", "-c", "SELECT 1"]`.
        pub argv: Vec<String>,
        /// Environment variables for the command (`-e NAME=VALUE`); values may
        /// be secrets (`${env:...}`): they are redacted from outputs and errors.
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        /// The user to run as (`-u`).
        #[serde(default)]
        pub user: Option<String>,
        /// The working folder inside the container (`-w`).
        #[serde(default)]
        pub workdir: Option<String>,
        /// Which container of a scaled service (`--index`), from 1.
        #[serde(default)]
        pub index: Option<u32>,
        /// Exit codes that count as success.
        #[serde(default = "default_expect_exit")]
        pub expect_exit: Vec<i32>,
        /// A compensating command run inside the container by undo; without
        /// it the step cannot be undone.
        #[serde(default)]
        pub undo: Option<Vec<String>>,
    }
}

/// The `compose.exec` step.
#[derive(Debug)]
pub struct ComposeExec {
    config: ComposeExecConfig,
}

impl ComposeExec {
    /// Checks the configuration.
    pub fn new(config: ComposeExecConfig) -> Result<Self, ConfigError> {
        config.project_spec().validate()?;
        if config.service.trim().is_empty() || config.service.starts_with('-') {
            return Err(ConfigError::field(
                "service",
                "must name a service of the compose files, e.g. `db`",
            ));
        }
        for (field, argv) in [("argv", Some(&config.argv)), ("undo", config.undo.as_ref())] {
            if let Some(argv) = argv {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(ConfigError::field(
                        field,
                        "must name a program and its arguments, e.g. [\"psql\", \"-c\", \"SELECT 1\"]",
                    ));
                }
            }
        }
        if config.expect_exit.is_empty() {
            return Err(ConfigError::field(
                "expect_exit",
                "must list at least one exit code (leave it out for [0])",
            ));
        }
        for name in config.env.keys() {
            if name.is_empty() || name.contains('=') {
                return Err(ConfigError::field(
                    format!("env.{name}"),
                    "an environment variable name must be non-empty and hold no `=`",
                ));
            }
        }
        Ok(ComposeExec { config })
    }

    /// `exec -T [-u U] [-w W] [--index N] [-e K=V]... SERVICE ARGV...`.
    fn exec_args(&self, ctx: &StepContext, argv: &[String]) -> Result<Vec<String>, StepError> {
        let mut args = vec!["exec".to_string(), "-T".to_string()];
        if let Some(user) = &self.config.user {
            args.push("-u".into());
            args.push(ctx.resolve(user)?);
        }
        if let Some(workdir) = &self.config.workdir {
            args.push("-w".into());
            args.push(ctx.resolve(workdir)?);
        }
        if let Some(index) = self.config.index {
            args.push(format!("--index={index}"));
        }
        for (name, value) in &self.config.env {
            args.push("-e".into());
            args.push(format!("{name}={}", ctx.resolve(value)?));
        }
        args.push(ctx.resolve(&self.config.service)?);
        for arg in argv {
            args.push(ctx.resolve(arg)?);
        }
        Ok(args)
    }

    async fn execute(
        &self,
        ctx: &StepContext,
        argv: &[String],
        expect_exit: &[i32],
    ) -> Result<Outputs, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let args = self.exec_args(ctx, argv)?;
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = project.output(ctx, &[], &arg_refs).await?;
        let code = output.code.unwrap_or(-1);
        if !expect_exit.contains(&code) {
            let service = ctx.resolve(&self.config.service)?;
            let message = format!(
                "`{}` in service {service} exited with {code} (expected {}): read its output below; if the \
                 service is not running, start it first (`compose.start`)",
                display_argv(argv),
                expect_exit
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            return Err(
                StepError::fatal(ctx.redact(&message)).with_detail(ctx.redact(&output.evidence()))
            );
        }
        let mut outputs = Outputs::new();
        outputs.insert(
            "stdout".into(),
            ctx.redact(output.stdout.trim_end_matches(['\n', '\r']))
                .into(),
        );
        outputs.insert(
            "stderr".into(),
            ctx.redact(output.stderr.trim_end_matches(['\n', '\r']))
                .into(),
        );
        outputs.insert("exit_code".into(), code.into());
        Ok(outputs)
    }
}

#[async_trait]
impl Step for ComposeExec {
    fn describe(&self) -> String {
        format!(
            "run `{}` in service {}",
            display_argv(&self.config.argv),
            self.config.service
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["stdout", "stderr", "exit_code"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let args = self.exec_args(ctx, &self.config.argv)?;
        let shown = ctx.redact(&display_argv(
            &project.argv(&[], &args.iter().map(String::as_str).collect::<Vec<_>>()),
        ));
        Ok(Preview::new(
            format!("run `{shown}`"),
            vec![format!("run {shown}")],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        self.execute(ctx, &self.config.argv, &self.config.expect_exit)
            .await
    }

    fn can_undo(&self) -> bool {
        self.config.undo.is_some()
    }

    async fn undo(&self, ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        let Some(undo) = &self.config.undo else {
            return Err(StepError::fatal(
                "this compose.exec step has no `undo` command: add one to make it reversible",
            ));
        };
        self.execute(ctx, undo, &[0]).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_exec_args_in_order() {
        let config: ComposeExecConfig = serde_json::from_value(serde_json::json!({
            "service": "db",
            "argv": ["psql", "-c", "SELECT 1"],
            "user": "postgres",
            "env": {"PGDATABASE": "shop"},
        }))
        .unwrap();
        let step = ComposeExec::new(config).unwrap();
        let ctx = StepContext::standalone("x", std::env::temp_dir());
        assert_eq!(
            step.exec_args(&ctx, &step.config.argv).unwrap(),
            [
                "exec",
                "-T",
                "-u",
                "postgres",
                "-e",
                "PGDATABASE=shop",
                "db",
                "psql",
                "-c",
                "SELECT 1"
            ]
        );
        let empty: ComposeExecConfig =
            serde_json::from_value(serde_json::json!({"service": "db", "argv": []})).unwrap();
        assert_eq!(
            ComposeExec::new(empty).unwrap_err().field.as_deref(),
            Some("argv")
        );
    }
}
