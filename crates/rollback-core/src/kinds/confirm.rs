//! `confirm`: ask the operator for a go-ahead before going on.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::approval::ApprovalRequest;
use crate::registry::ConfigError;
use crate::step::{OutputNames, Outputs, Preview, Step, StepContext, StepError, StepOutputs};

/// Configuration of the `confirm` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    /// What the operator approves, e.g. `Traffic is drained from eu-west; restore the database?`.
    pub message: String,
}

/// The `confirm` step.
#[derive(Debug)]
pub struct Confirm {
    message: String,
}

impl Confirm {
    /// Checks the configuration.
    pub fn new(config: ConfirmConfig) -> Result<Self, ConfigError> {
        if config.message.trim().is_empty() {
            return Err(ConfigError::field(
                "message",
                "must not be empty: say what the operator approves",
            ));
        }
        Ok(Confirm {
            message: config.message,
        })
    }
}

crate::step_outputs! {
    /// What a `confirm` step returns.
    pub struct ConfirmOutputs {
        /// Who approved.
        pub approved_by: String,
        /// How (`interactive`, `--yes`, `--approved-by`).
        pub method: String,
    }
}

#[async_trait]
impl Step for Confirm {
    fn describe(&self) -> String {
        format!("ask for confirmation: {}", self.message)
    }

    fn outputs(&self) -> OutputNames {
        ConfirmOutputs::names()
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let message = ctx.redact(&ctx.resolve(&self.message)?);
        Ok(Preview::new(
            format!("ask for confirmation: {message}"),
            Vec::new(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        // The approver shows the message to a person and may journal it.
        let message = ctx.redact(&ctx.resolve(&self.message)?);
        let request = ApprovalRequest {
            step: ctx.step_id().to_string(),
            message,
            operator: ctx.operator().to_string(),
            role: None,
        };
        let approval = ctx
            .approver()
            .approve(&request)
            .await
            .map_err(StepError::fatal)?;
        Ok(ConfirmOutputs {
            approved_by: approval.approved_by,
            method: approval.method,
        }
        .into_outputs())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::approval::NonInteractive;

    fn step(message: &str) -> Confirm {
        Confirm::new(serde_json::from_value(serde_json::json!({ "message": message })).unwrap())
            .unwrap()
    }

    #[tokio::test]
    async fn approved_with_yes() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = StepContext::standalone("go", dir.path());
        ctx.approver = Arc::new(NonInteractive { assume_yes: true });
        let outputs = step("restore the database?").run(&ctx).await.unwrap();
        assert_eq!(outputs["approved_by"], ctx.operator());
        assert_eq!(outputs["method"], "--yes");
    }

    #[tokio::test]
    async fn refused_without_a_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = StepContext::standalone("go", dir.path());
        ctx.approver = Arc::new(NonInteractive { assume_yes: false });
        let err = step("restore the database?").run(&ctx).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().contains("step `go` needs confirmation"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("--yes"), "{}", err.message());
    }

    #[tokio::test]
    async fn preview_asks_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("go", dir.path());
        let preview = step("drain eu-west?").preview(&ctx).await.unwrap();
        assert_eq!(
            preview,
            Preview::new("ask for confirmation: drain eu-west?", vec![])
        );
        assert!(Confirm::new(ConfirmConfig {
            message: " ".into()
        })
        .is_err());
    }
}
