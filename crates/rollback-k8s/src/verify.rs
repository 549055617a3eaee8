//! Verifiers: `k8s.available`, `k8s.endpoints`, `k8s.pods_ready`,
//! `k8s.pod_log_errors`.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{Api, ListParams, LogParams};
use regex::Regex;
use rollback_core::{ConfigError, HumanDuration, Measurement, StepContext, StepError, Verifier};

use crate::client::{api_error, k8s_config};
use crate::rollout::{rollout_state, RolloutState};
use crate::selector::ready_addresses;

k8s_config! {
    /// Configuration of `k8s.available`.
    pub struct AvailableConfig {
        /// The Deployment to check.
        pub deployment: String,
        /// Available replicas required; the Deployment's `spec.replicas`
        /// (and a finished rollout) when unset.
        #[serde(default)]
        pub min_available: Option<i32>,
    }
}

k8s_config! {
    /// Configuration of `k8s.endpoints`.
    pub struct EndpointsConfig {
        /// The Service whose ready endpoints to count.
        pub service: String,
        /// Ready addresses required (default 1).
        #[serde(default)]
        pub min_ready: Option<u32>,
    }
}

k8s_config! {
    /// Configuration of `k8s.pods_ready`.
    pub struct PodsReadyConfig {
        /// Label selector of the pods, e.g. `app=orders`.
        pub selector: String,
        /// Ready pods required; all of them (and at least one) when unset.
        #[serde(default)]
        pub min_ready: Option<u32>,
    }
}

k8s_config! {
    /// Configuration of `k8s.pod_log_errors` (the seeds' error-rate check).
    pub struct PodLogErrorsConfig {
        /// Label selector of the pods whose logs to read.
        pub selector: String,
        /// A regular expression for an error line (default `ERROR`).
        #[serde(default)]
        pub pattern: Option<String>,
        /// How far back to read (default `5m`).
        #[serde(default)]
        pub since: Option<HumanDuration>,
        /// Most matching lines allowed, summed over the pods (default 0).
        #[serde(default)]
        pub max_lines: Option<u64>,
    }
}

/// The `k8s.available` verifier.
#[derive(Debug)]
pub struct Available {
    config: AvailableConfig,
}

impl Available {
    /// Checks the configuration.
    pub fn new(config: AvailableConfig) -> Result<Self, ConfigError> {
        Ok(Available { config })
    }
}

#[async_trait]
impl Verifier for Available {
    fn describe(&self) -> String {
        format!("deployment/{} available", self.config.deployment)
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.deployment)?;
        let d = Api::<Deployment>::namespaced(conn.client.clone(), &conn.namespace)
            .get(&name)
            .await
            .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
        let available = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        Ok(match self.config.min_available {
            Some(min) => Measurement::new(
                available >= min,
                format!("{available} available"),
                format!(">= {min} available"),
            ),
            None => {
                let want = d.spec.replicas.unwrap_or(1);
                let state = rollout_state(&d);
                let done = matches!(state, RolloutState::Complete(_));
                let observed = match state {
                    RolloutState::Complete(_) => {
                        format!("{available}/{want} available, rollout complete")
                    }
                    RolloutState::Waiting(m) | RolloutState::Failed(m) => {
                        format!("{available}/{want} available; {m}")
                    }
                };
                Measurement::new(
                    done && available >= want,
                    observed,
                    format!("{want}/{want} available, rollout complete"),
                )
            }
        })
    }
}

/// The `k8s.endpoints` verifier.
#[derive(Debug)]
pub struct EndpointsReady {
    config: EndpointsConfig,
}

impl EndpointsReady {
    /// Checks the configuration.
    pub fn new(config: EndpointsConfig) -> Result<Self, ConfigError> {
        Ok(EndpointsReady { config })
    }
}

#[async_trait]
impl Verifier for EndpointsReady {
    fn describe(&self) -> String {
        format!("service/{} has ready endpoints", self.config.service)
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.service)?;
        let ep = Api::<Endpoints>::namespaced(conn.client.clone(), &conn.namespace)
            .get_opt(&name)
            .await
            .map_err(|e| api_error(&format!("reading endpoints/{name}"), e))?;
        let ready = ep.map(|e| ready_addresses(&e)).unwrap_or_default();
        let min = self.config.min_ready.unwrap_or(1);
        let list: Vec<String> = ready.iter().cloned().collect();
        Ok(Measurement::new(
            ready.len() as u32 >= min,
            format!("{} ready [{}]", ready.len(), list.join(", ")),
            format!(">= {min} ready"),
        ))
    }
}

/// The `k8s.pods_ready` verifier.
#[derive(Debug)]
pub struct PodsReady {
    config: PodsReadyConfig,
}

impl PodsReady {
    /// Checks the configuration.
    pub fn new(config: PodsReadyConfig) -> Result<Self, ConfigError> {
        if config.selector.trim().is_empty() {
            return Err(ConfigError::field(
                "selector",
                "give a label selector, e.g. app=orders",
            ));
        }
        Ok(PodsReady { config })
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[async_trait]
impl Verifier for PodsReady {
    fn describe(&self) -> String {
        format!("pods {} ready", self.config.selector)
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let selector = ctx.resolve(&self.config.selector)?;
        let pods: Vec<Pod> = Api::<Pod>::namespaced(conn.client.clone(), &conn.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(&format!("listing pods {selector}"), e))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ready = pods.iter().filter(|p| is_ready(p)).count() as u32;
        let total = pods.len() as u32;
        Ok(match self.config.min_ready {
            Some(min) => Measurement::new(
                ready >= min,
                format!("{ready}/{total} ready"),
                format!(">= {min} ready"),
            ),
            None => Measurement::new(
                total > 0 && ready == total,
                format!("{ready}/{total} ready"),
                "all ready, at least 1",
            ),
        })
    }
}

/// The `k8s.pod_log_errors` verifier. Reading logs goes through the kubelet:
/// it needs nodes with a kubelet the API server can reach.
#[derive(Debug)]
pub struct PodLogErrors {
    config: PodLogErrorsConfig,
    pattern: Regex,
}

impl PodLogErrors {
    /// Checks the configuration.
    pub fn new(config: PodLogErrorsConfig) -> Result<Self, ConfigError> {
        let pattern = Regex::new(config.pattern.as_deref().unwrap_or("ERROR"))
            .map_err(|e| ConfigError::field("pattern", format!("not a regular expression: {e}")))?;
        Ok(PodLogErrors { config, pattern })
    }

    /// Counts matching lines in a log text.
    pub fn count(&self, log: &str) -> u64 {
        log.lines().filter(|l| self.pattern.is_match(l)).count() as u64
    }
}

#[async_trait]
impl Verifier for PodLogErrors {
    fn describe(&self) -> String {
        format!(
            "lines matching /{}/ in the logs of pods {}",
            self.pattern.as_str(),
            self.config.selector
        )
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let selector = ctx.resolve(&self.config.selector)?;
        let api = Api::<Pod>::namespaced(conn.client.clone(), &conn.namespace);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(&format!("listing pods {selector}"), e))?
            .items;
        let since = self
            .config
            .since
            .map(|s| s.0.as_secs())
            .unwrap_or(300)
            .max(1) as i64;
        let max = self.config.max_lines.unwrap_or(0);
        // Only containers that have run have logs; asking for the others
        // fails ("waiting to start"), which is no error of the service.
        // Terminating pods are leaving the service (out of its endpoints): a
        // rollback's old pods must not count against the version it restored.
        let targets: Vec<(String, String)> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .flat_map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                    .filter(|c| has_run(c))
                    .map(move |c| (name.clone(), c.name.clone()))
            })
            .collect();
        let pods_read = targets
            .iter()
            .map(|(pod, _)| pod)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let reads = targets.into_iter().map(|(name, container)| {
            let api = api.clone();
            async move {
                let lp = LogParams {
                    since_seconds: Some(since),
                    container: Some(container),
                    ..LogParams::default()
                };
                api.logs(&name, &lp)
                    .await
                    .map_err(|e| api_error(&format!("reading the logs of pod/{name}"), e))
            }
        });
        let logs = futures::future::try_join_all(reads).await?;
        let total: u64 = logs.iter().map(|l| self.count(l)).sum();
        Ok(Measurement::new(
            total <= max,
            format!("{total} matching lines in {pods_read} pods over {since}s"),
            format!("<= {max}"),
        ))
    }
}

/// Whether a container has started (so the kubelet holds output of it).
fn has_run(status: &k8s_openapi::api::core::v1::ContainerStatus) -> bool {
    let started = |s: &Option<k8s_openapi::api::core::v1::ContainerState>| {
        s.as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    };
    started(&status.state) || started(&status.last_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_matching_lines() {
        let v = PodLogErrors::new(PodLogErrorsConfig {
            selector: "app=x".into(),
            pattern: Some("ERROR|panic".into()),
            since: None,
            max_lines: None,
            namespace: None,
            context: None,
            kubeconfig: None,
        })
        .unwrap();
        assert_eq!(v.count("ok\nERROR one\nfine\npanic: two\n"), 2);
    }
}
