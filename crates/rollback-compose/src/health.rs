//! `compose.healthy`: every container of the named services (all services when
//! none are named) is running, and healthy by its own healthcheck where it has
//! one. Read-only: `ps` and `docker inspect`.

use async_trait::async_trait;
use rollback_core::{ConfigError, Measurement, StepContext, StepError, Verifier};

use crate::lifecycle::service_states;

compose_config! {
    /// Configuration of the `compose.healthy` check.
    pub struct ComposeHealthyConfig {
        /// The services to check; every service of the project when empty.
        #[serde(default)]
        pub services: Vec<String>,
    }
}

/// The `compose.healthy` verifier.
#[derive(Debug)]
pub struct ComposeHealthy {
    config: ComposeHealthyConfig,
}

impl ComposeHealthy {
    /// Checks the configuration.
    pub fn new(config: ComposeHealthyConfig) -> Result<Self, ConfigError> {
        config.project_spec().validate()?;
        for (i, service) in config.services.iter().enumerate() {
            if service.trim().is_empty() || service.starts_with('-') {
                return Err(ConfigError::field(
                    format!("services[{i}]"),
                    "must name a service of the compose files, e.g. `web`",
                ));
            }
        }
        Ok(ComposeHealthy { config })
    }
}

#[async_trait]
impl Verifier for ComposeHealthy {
    fn describe(&self) -> String {
        let which = if self.config.services.is_empty() {
            "all services".to_string()
        } else {
            self.config.services.join(", ")
        };
        format!("{which} running and healthy")
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let states = service_states(ctx, &project, &self.config.services).await?;
        if states.is_empty() {
            return Ok(Measurement::new(
                false,
                "the compose files declare no services",
                "running, healthy by its healthcheck",
            ));
        }
        let mut passed = true;
        let mut observed = Vec::new();
        for (service, containers) in &states {
            if containers.is_empty() {
                passed = false;
                observed.push(format!("{service}: no container"));
                continue;
            }
            for container in containers {
                passed &= container.is_healthy();
                let mut text = container.summary();
                if !container.is_healthy() {
                    if let Some(check) = &container.last_check {
                        text.push_str(&format!(" (last check {check})"));
                    }
                }
                observed.push(text);
            }
        }
        Ok(Measurement::new(
            passed,
            ctx.redact(&observed.join("; ")),
            "every container running, healthy by its healthcheck where it has one",
        ))
    }
}
