//! `wait`: pause for a fixed time, e.g. to let caches expire or a load
//! balancer notice a change.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::registry::ConfigError;
use crate::step::{Outputs, Preview, Step, StepContext, StepError};

/// Configuration of the `wait` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConfig {
    /// How long to wait, e.g. `30s` or `2m`.
    pub duration: HumanDuration,
}

/// The `wait` step.
#[derive(Debug)]
pub struct Wait {
    duration: HumanDuration,
}

impl Wait {
    /// Builds the step.
    pub fn new(config: WaitConfig) -> Result<Self, ConfigError> {
        Ok(Wait {
            duration: config.duration,
        })
    }
}

#[async_trait]
impl Step for Wait {
    fn describe(&self) -> String {
        format!("wait {}", self.duration)
    }

    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::new(self.describe(), Vec::new()))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        tokio::select! {
            () = tokio::time::sleep(self.duration.get()) => Ok(Outputs::new()),
            () = ctx.cancellation().cancelled() => Err(StepError::interrupted(format!(
                "the wait of {} was cancelled because the run was interrupted",
                self.duration
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn step(duration: &str) -> Wait {
        Wait::new(serde_json::from_value(serde_json::json!({ "duration": duration })).unwrap())
            .unwrap()
    }

    #[tokio::test]
    async fn waits_for_the_duration() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("wait", dir.path());
        let step = step("50ms");
        assert_eq!(
            step.preview(&ctx).await.unwrap(),
            Preview::new("wait 50ms", vec![])
        );
        let started = Instant::now();
        assert!(step.run(&ctx).await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait_early() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("wait", dir.path());
        let token = ctx.cancellation().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            token.cancel();
        });
        let started = Instant::now();
        let err = step("1h").run(&ctx).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!err.is_retryable());
        assert!(err.message().contains("cancelled"), "{}", err.message());
    }

    #[test]
    fn duration_is_required() {
        assert!(serde_json::from_value::<WaitConfig>(serde_json::json!({})).is_err());
    }
}
