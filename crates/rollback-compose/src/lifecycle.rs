//! `compose.stop`, `compose.start`, `compose.restart` and `compose.up`: the
//! service lifecycle commands of the procedures ("stop the application",
//! "restart affected services"), each checking the containers' state first and
//! waiting for health afterwards by following `docker events`.

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};

use crate::container::{inspect, wait_for, ContainerState, Want};
use crate::project::Project;

compose_config! {
    /// Configuration of `compose.stop`, `compose.start` and `compose.restart`.
    pub struct LifecycleConfig {
        /// The services to act on; every service of the project when empty.
        #[serde(default)]
        pub services: Vec<String>,
        /// For stop and restart: seconds Compose gives a container to stop
        /// before killing it (`-t`); Compose's default (10) when absent.
        #[serde(default)]
        pub stop_timeout: Option<u32>,
        /// For start and restart: wait until the containers are running and
        /// healthy by their own healthchecks.
        #[serde(default = "crate::default_true")]
        pub wait: bool,
        /// How long to wait for health.
        #[serde(default = "crate::default_timeout")]
        pub timeout: HumanDuration,
    }
}

/// Which lifecycle command a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stop,
    Start,
    Restart,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
        }
    }
}

/// `compose.stop`, `compose.start` or `compose.restart`.
#[derive(Debug)]
pub struct Lifecycle {
    action: Action,
    config: LifecycleConfig,
}

fn check_services(services: &[String]) -> Result<(), ConfigError> {
    for (i, service) in services.iter().enumerate() {
        if service.trim().is_empty() || service.starts_with('-') {
            return Err(ConfigError::field(
                format!("services[{i}]"),
                "must name a service of the compose files, e.g. `web`",
            ));
        }
    }
    Ok(())
}

impl Lifecycle {
    fn new(action: Action, config: LifecycleConfig) -> Result<Self, ConfigError> {
        config.project_spec().validate()?;
        check_services(&config.services)?;
        Ok(Lifecycle { action, config })
    }

    /// The `compose.stop` step: stops the services; undo starts them.
    pub fn stop(config: LifecycleConfig) -> Result<Self, ConfigError> {
        Lifecycle::new(Action::Stop, config)
    }

    /// The `compose.start` step: starts stopped services; undo stops them.
    pub fn start(config: LifecycleConfig) -> Result<Self, ConfigError> {
        Lifecycle::new(Action::Start, config)
    }

    /// The `compose.restart` step.
    pub fn restart(config: LifecycleConfig) -> Result<Self, ConfigError> {
        Lifecycle::new(Action::Restart, config)
    }
}

/// The containers of `services` (all services when empty), inspected.
pub(crate) async fn service_states(
    ctx: &StepContext,
    project: &Project,
    services: &[String],
) -> Result<Vec<(String, Vec<ContainerState>)>, StepError> {
    let services = if services.is_empty() {
        project.services(ctx).await?
    } else {
        services
            .iter()
            .map(|s| ctx.resolve(s))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut result = Vec::new();
    for service in services {
        let ids = project.containers(ctx, &service).await?;
        let states = inspect(ctx, &ids).await?;
        result.push((service, states));
    }
    Ok(result)
}

fn all_ids(states: &[(String, Vec<ContainerState>)]) -> Vec<String> {
    states
        .iter()
        .flat_map(|(_, s)| s.iter().map(|c| c.id.clone()))
        .collect()
}

impl Lifecycle {
    async fn act(
        &self,
        ctx: &StepContext,
        action: Action,
        project: &Project,
    ) -> Result<Vec<String>, StepError> {
        let states = service_states(ctx, project, &self.config.services).await?;
        let names: Vec<String> = states.iter().map(|(s, _)| s.clone()).collect();
        let running = |c: &ContainerState| c.status == "running";
        let needed = match action {
            Action::Stop => states.iter().any(|(_, cs)| cs.iter().any(running)),
            Action::Start => states.iter().any(|(_, cs)| !cs.iter().all(running)),
            Action::Restart => true,
        };
        if let Some((service, _)) = states.iter().find(|(_, cs)| cs.is_empty()) {
            if action != Action::Stop {
                return Err(StepError::fatal(format!(
                    "service {service} has no container to {}: create it first with `compose.up`",
                    action.verb()
                )));
            }
        }
        if needed {
            let mut args = vec![action.verb().to_string()];
            if action != Action::Start {
                if let Some(t) = self.config.stop_timeout {
                    args.push("-t".into());
                    args.push(t.to_string());
                }
            }
            args.extend(names.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctx.progress(&format!("{} {}", action.verb(), names.join(" ")));
            project.ok(ctx, &[], &args).await?;
        }
        if action != Action::Stop && self.config.wait {
            let ids = all_ids(&states);
            wait_for(ctx, &ids, Want::Healthy, self.config.timeout.get()).await?;
        }
        Ok(names)
    }
}

#[async_trait]
impl Step for Lifecycle {
    fn describe(&self) -> String {
        let which = if self.config.services.is_empty() {
            "all services".to_string()
        } else {
            self.config.services.join(", ")
        };
        format!("compose {} {which}", self.action.verb())
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["services", "was_running"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let states = service_states(ctx, &project, &self.config.services).await?;
        let mut changes = Vec::new();
        for (service, containers) in &states {
            let now: Vec<String> = containers.iter().map(ContainerState::summary).collect();
            let now = if now.is_empty() {
                "no container".into()
            } else {
                now.join("; ")
            };
            let running = containers.iter().any(|c| c.status == "running");
            let change = match self.action {
                Action::Stop if running => Some(format!("{service}: stop (now: {now})")),
                Action::Start if !running || containers.iter().any(|c| c.status != "running") => {
                    Some(format!("{service}: start (now: {now})"))
                }
                Action::Restart => Some(format!("{service}: restart (now: {now})")),
                _ => None,
            };
            changes.extend(change);
        }
        Ok(Preview::new(
            format!("{} in {}", self.describe(), project.display()),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        // Which services ran before, so undo of a stop starts only those.
        let before = service_states(ctx, &project, &self.config.services).await?;
        let was_running: Vec<String> = before
            .iter()
            .filter(|(_, cs)| cs.iter().any(|c| c.status == "running"))
            .map(|(s, _)| s.clone())
            .collect();
        let names = self.act(ctx, self.action, &project).await?;
        let mut outputs = Outputs::new();
        outputs.insert("services".into(), names.join(",").into());
        outputs.insert("was_running".into(), was_running.join(",").into());
        Ok(outputs)
    }

    fn can_undo(&self) -> bool {
        self.action != Action::Restart
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let list = |key: &str| -> Vec<String> {
            outputs
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (action, services) = match self.action {
            Action::Stop => (Action::Start, list("was_running")),
            Action::Start => {
                let was = list("was_running");
                let started: Vec<String> = list("services")
                    .into_iter()
                    .filter(|s| !was.contains(s))
                    .collect();
                (Action::Stop, started)
            }
            Action::Restart => {
                return Err(StepError::fatal(
                    "a restart cannot be undone: restart the services again if needed",
                ))
            }
        };
        if services.is_empty() {
            return Ok(());
        }
        let undo = Lifecycle {
            action,
            config: LifecycleConfig {
                services,
                project: None,
                files: Vec::new(),
                cwd: None,
                compose: None,
                stop_timeout: self.config.stop_timeout,
                wait: self.config.wait,
                timeout: self.config.timeout,
            },
        };
        undo.act(ctx, action, &project).await.map(drop)
    }
}

compose_config! {
    /// Configuration of `compose.up`.
    pub struct UpConfig {
        /// The services to bring up; every service when empty.
        #[serde(default)]
        pub services: Vec<String>,
        /// Do not start linked services (`--no-deps`).
        #[serde(default)]
        pub no_deps: bool,
        /// Recreate containers even if their configuration is unchanged
        /// (`--force-recreate`).
        #[serde(default)]
        pub force_recreate: bool,
        /// Wait until the containers are running and healthy by their own
        /// healthchecks.
        #[serde(default = "crate::default_true")]
        pub wait: bool,
        /// How long to wait for health.
        #[serde(default = "crate::default_timeout")]
        pub timeout: HumanDuration,
    }
}

/// The `compose.up` step: `up -d [--no-deps] [SERVICE...]`, then wait.
#[derive(Debug)]
pub struct Up {
    config: UpConfig,
}

impl Up {
    /// Checks the configuration.
    pub fn new(config: UpConfig) -> Result<Self, ConfigError> {
        config.project_spec().validate()?;
        check_services(&config.services)?;
        Ok(Up { config })
    }
}

#[async_trait]
impl Step for Up {
    fn describe(&self) -> String {
        let which = if self.config.services.is_empty() {
            "all services".to_string()
        } else {
            self.config.services.join(", ")
        };
        format!("compose up -d {which}")
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["containers"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let states = service_states(ctx, &project, &self.config.services).await?;
        let changes = states
            .iter()
            .filter(|(_, cs)| {
                cs.is_empty() || cs.iter().any(|c| !c.is_healthy()) || self.config.force_recreate
            })
            .map(|(service, cs)| {
                let now: Vec<String> = cs.iter().map(ContainerState::summary).collect();
                format!(
                    "{service}: up -d (now: {})",
                    if now.is_empty() {
                        "no container".into()
                    } else {
                        now.join("; ")
                    }
                )
            })
            .collect::<Vec<_>>();
        let mut changes = changes;
        if changes.is_empty() {
            // `up -d` may still recreate containers whose configuration changed.
            changes.push("up -d: recreate containers whose configuration changed".into());
        }
        Ok(Preview::new(
            format!("{} in {}", self.describe(), project.display()),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let services = self
            .config
            .services
            .iter()
            .map(|s| ctx.resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = vec!["up".to_string(), "-d".to_string()];
        if self.config.no_deps {
            args.push("--no-deps".into());
        }
        if self.config.force_recreate {
            args.push("--force-recreate".into());
        }
        args.extend(services.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        project.ok(ctx, &[], &args).await?;
        let states = service_states(ctx, &project, &services).await?;
        let ids = all_ids(&states);
        let names: Vec<String> = states
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|c| c.name.clone()))
            .collect();
        if self.config.wait {
            wait_for(ctx, &ids, Want::Healthy, self.config.timeout.get()).await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("containers".into(), names.join(",").into());
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let config: LifecycleConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(config.wait && config.services.is_empty() && config.stop_timeout.is_none());
        assert_eq!(config.timeout.get().as_secs(), 120);
        let bad: LifecycleConfig =
            serde_json::from_value(serde_json::json!({"services": ["web", "-f"]})).unwrap();
        assert_eq!(
            Lifecycle::stop(bad).unwrap_err().field.as_deref(),
            Some("services[1]")
        );
        assert!(
            !Lifecycle::restart(serde_json::from_value(serde_json::json!({})).unwrap())
                .unwrap()
                .can_undo()
        );
        let up: UpConfig = serde_json::from_value(serde_json::json!({"no_deps": true})).unwrap();
        assert!(up.no_deps && up.wait && !up.force_recreate);
    }
}
