//! `k8s.switch_selector`: the blue-green switch. Before patching the Service,
//! the pods under the new selector must be ready; after it, the Service's
//! Endpoints must list exactly them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use serde_json::json;

use crate::client::{api_error, is_conflict, k8s_config, Conn};
use crate::event::{self, Regarding};

fn default_min_ready() -> u32 {
    1
}

fn default_endpoint_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

k8s_config! {
    /// Configuration of `k8s.switch_selector`.
    pub struct SwitchSelectorConfig {
        /// The Service to switch.
        pub service: String,
        /// Labels to set in the Service's selector, e.g. `{version: blue}`.
        /// Merged into the current selector like `kubectl patch -p
        /// '{"spec":{"selector":{...}}}'` does, unless `replace` is set.
        pub selector: BTreeMap<String, String>,
        /// Replace the whole selector instead of merging into it.
        #[serde(default)]
        pub replace: bool,
        /// Pods under the new selector that must be ready before the switch
        /// (default 1); every non-terminating one must be ready in any case.
        #[serde(default = "default_min_ready")]
        pub min_ready: u32,
        /// How long the Endpoints may take to list the new pods (default `30s`).
        #[serde(default = "default_endpoint_timeout")]
        pub timeout: HumanDuration,
    }
}

/// A selector in label-selector syntax.
pub fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// Active (non-terminating) pods matching `selector`, read from etcd (a
/// quorum read: the safety check must not see stale readiness). A list "not
/// older than" the Service's resourceVersion would come from the watch cache,
/// but a 1.20 API server's pod cache only advances on pod events: on a quiet
/// namespace it waits 3 s and answers 504.
async fn pods_under(
    conn: &Conn,
    selector: &BTreeMap<String, String>,
) -> Result<Vec<Pod>, StepError> {
    let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let list = api
        .list(&ListParams::default().labels(&selector_text(selector)))
        .await
        .map_err(|e| api_error(&format!("listing pods with {}", selector_text(selector)), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// One label selector choosing the pods of both `a` and `b`, when they have
/// the same keys: `svc=shop,version in (blue,green)`.
fn union_selector(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Option<String> {
    let plain = |s: &BTreeMap<String, String>| !s.is_empty() && s.values().all(|v| !v.is_empty());
    if !plain(a) || !plain(b) || !a.keys().eq(b.keys()) {
        return None;
    }
    let parts: Vec<String> = a
        .iter()
        .map(|(k, v)| match &b[k] {
            w if w == v => format!("{k}={v}"),
            w => format!("{k} in ({v},{w})"),
        })
        .collect();
    Some(parts.join(","))
}

/// The pods under `a` and the pods under `b`, from one list when the two
/// selectors have the same keys (a blue-green switch changes one value:
/// `version in (blue,green)`), else from two lists read at once.
async fn pods_under_both(
    conn: &Conn,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Result<(Vec<Pod>, Vec<Pod>), StepError> {
    let Some(union) = union_selector(a, b) else {
        return futures::try_join!(pods_under(conn, a), pods_under(conn, b));
    };
    let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let list = api
        .list(&ListParams::default().labels(&union))
        .await
        .map_err(|e| api_error(&format!("listing pods with {union}"), e))?;
    let matches = |pod: &Pod, selector: &BTreeMap<String, String>| {
        let labels = pod.metadata.labels.as_ref();
        selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    };
    let live: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let under_a = live.iter().filter(|p| matches(p, a)).cloned().collect();
    let under_b = live.into_iter().filter(|p| matches(p, b)).collect();
    Ok((under_a, under_b))
}

/// The result of a switch.
#[derive(Debug, Clone)]
pub struct Switched {
    /// The selector before.
    pub previous: BTreeMap<String, String>,
    /// The selector after.
    pub selector: BTreeMap<String, String>,
    /// Whether the Service was patched (false: it already had the selector).
    pub changed: bool,
    /// Ready endpoint IPs after the switch.
    pub endpoints: Vec<String>,
    /// Conflicting writes that were retried.
    pub conflicts: u32,
}

/// Switches a Service's selector safely: checks the target pods are ready,
/// patches with a resourceVersion guard (retrying on conflict), then waits
/// (by watch) until the Endpoints list the target pods and none of the pods
/// left behind.
pub async fn switch_service(
    conn: &Conn,
    ctx: &StepContext,
    service: &str,
    labels: &BTreeMap<String, String>,
    replace: bool,
    min_ready: u32,
    timeout: Duration,
) -> Result<Switched, StepError> {
    let api: Api<Service> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let mut conflicts = 0;
    let mut watch = EndpointsWatch::start(conn, service);
    loop {
        let svc = api
            .get(service)
            .await
            .map_err(|e| api_error(&format!("reading service/{service}"), e))?;
        let previous: BTreeMap<String, String> = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let mut selector = if replace {
            BTreeMap::new()
        } else {
            previous.clone()
        };
        selector.extend(labels.clone());

        let changed = selector != previous;
        // The target pods, and the pods only the old selector chose (they
        // must leave the endpoints), read at once.
        let (target, before) = if changed {
            pods_under_both(conn, &selector, &previous).await?
        } else {
            (pods_under(conn, &selector).await?, Vec::new())
        };
        let not_ready: Vec<String> = target
            .iter()
            .filter(|p| !is_ready(p) || pod_ip(p).is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let ready: BTreeSet<String> = target
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(pod_ip)
            .collect();
        if !not_ready.is_empty() || (ready.len() as u32) < min_ready {
            return Err(StepError::fatal(format!(
                "refusing to switch service/{service} to {}: {} of {} pods under it are ready (need all, at least \
                 {min_ready}){}; fix or wait for the target pods, or roll back the target deployment first",
                selector_text(&selector),
                ready.len(),
                target.len(),
                if not_ready.is_empty() { String::new() } else { format!("; not ready: {}", not_ready.join(", ")) }
            )));
        }
        let mut uid = svc.metadata.uid.clone();
        if changed {
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": svc.metadata.resource_version},
                {"op": if previous.is_empty() { "add" } else { "replace" }, "path": "/spec/selector", "value": selector},
            ]))
            .expect("a JSON patch");
            match api
                .patch(service, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
            {
                Ok(s) => uid = s.metadata.uid,
                Err(e) if is_conflict(&e) && conflicts < 5 => {
                    conflicts += 1;
                    continue;
                }
                Err(e) => return Err(api_error(&format!("patching service/{service}"), e)),
            }
        }
        let left_behind: BTreeSet<String> = before
            .iter()
            .filter_map(pod_ip)
            .filter(|ip| !ready.contains(ip))
            .collect();
        // The Event is recorded while the endpoints controller does its work.
        let note = format!(
            "traffic switched from {} to {}",
            selector_text(&previous),
            selector_text(&selector)
        );
        let (endpoints, ()) = tokio::join!(
            wait_endpoints(&mut watch, ctx, service, &ready, &left_behind, timeout),
            async {
                if changed {
                    event::record(
                        conn,
                        ctx,
                        Regarding {
                            api_version: "v1",
                            kind: "Service",
                            name: service,
                            uid: uid.as_deref(),
                        },
                        "SelectorSwitched",
                        "Rollback",
                        &note,
                    )
                    .await;
                }
            }
        );
        let endpoints = endpoints?;
        return Ok(Switched {
            previous,
            selector,
            changed,
            endpoints,
            conflicts,
        });
    }
}

/// Ready addresses of an Endpoints object.
pub fn ready_addresses(ep: &Endpoints) -> BTreeSet<String> {
    ep.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// A watch on one Endpoints object, started ahead of the patch so that its
/// connection and initial list are off the critical path; aborted on drop.
struct EndpointsWatch {
    rx: tokio::sync::watch::Receiver<Option<Endpoints>>,
    /// Why the watch stopped, when the account may not watch Endpoints.
    forbidden: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndpointsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndpointsWatch {
    fn start(conn: &Conn, service: &str) -> Self {
        let api: Api<Endpoints> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let fields = format!("metadata.name={service}");
        let (tx, rx) = tokio::sync::watch::channel(None);
        let forbidden = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop_with = forbidden.clone();
        let stop = move |why: String| *stop_with.lock().expect("endpoints watch") = Some(why);
        let task = tokio::spawn(async move {
            // One request: a watch from resourceVersion 0 begins with the
            // object as the API server's watch cache holds it, then its
            // changes (a list and then a watch would be two).
            let params = WatchParams::default().fields(&fields);
            let first = api.watch(&params, "0").await;
            if let Err(kube::Error::Api(status)) = &first {
                if status.code == 403 {
                    return stop(crate::permission::explain_status(status));
                }
            }
            if let Ok(stream) = first {
                futures::pin_mut!(stream);
                while let Ok(Some(event)) = stream.try_next().await {
                    match event {
                        WatchEvent::Added(ep) | WatchEvent::Modified(ep) => {
                            if tx.send(Some(ep)).is_err() {
                                return;
                            }
                        }
                        WatchEvent::Deleted(_) => {
                            if tx.send(None).is_err() {
                                return;
                            }
                        }
                        WatchEvent::Bookmark(_) => {}
                        WatchEvent::Error(status) if status.code == 403 => {
                            return stop(crate::permission::explain_status(&status));
                        }
                        WatchEvent::Error(_) => break,
                    }
                }
            }
            // That watch ended or failed: kube's list-then-watch watcher.
            let stream = watcher(api, watcher::Config::default().fields(&fields))
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            // default_backoff retries transient errors (the wait's timeout
            // bounds them); a refused permission will not heal.
            loop {
                match stream.try_next().await {
                    Ok(Some(ep)) => {
                        if tx.send(Some(ep)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        if let Some(why) = crate::permission::watch_forbidden(&e) {
                            return stop(why);
                        }
                    }
                }
            }
        });
        EndpointsWatch {
            rx,
            forbidden,
            task,
        }
    }
}

async fn wait_endpoints(
    watch: &mut EndpointsWatch,
    ctx: &StepContext,
    service: &str,
    want: &BTreeSet<String>,
    gone: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Vec<String>, StepError> {
    let timeout = ctx.remaining().map_or(timeout, |r| r.min(timeout));
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut seen = BTreeSet::new();
    loop {
        if let Some(ep) = watch.rx.borrow_and_update().as_ref() {
            seen = ready_addresses(ep);
            if want.is_subset(&seen) && seen.is_disjoint(gone) {
                return Ok(seen.into_iter().collect());
            }
        }
        tokio::select! {
            _ = &mut sleep => return Err(StepError::fatal(format!(
                "the selector of service/{service} is switched, but after {}s its endpoints list [{}] instead of \
                 [{}]: check the endpoints controller (kube-controller-manager) and the pods' readiness",
                timeout.as_secs(),
                seen.iter().cloned().collect::<Vec<_>>().join(", "),
                want.iter().cloned().collect::<Vec<_>>().join(", "),
            ))),
            _ = ctx.cancellation().cancelled() => return Err(StepError::interrupted(format!(
                "cancelled while waiting for the endpoints of service/{service}"
            ))),
            changed = watch.rx.changed() => if changed.is_err() {
                if let Some(why) = watch.forbidden.lock().expect("endpoints watch").take() {
                    return Err(StepError::fatal(format!(
                        "the selector of service/{service} is switched, but its endpoints cannot be watched: \
                         permission denied: {why}"
                    )));
                }
                return Err(StepError::retryable(format!("the watch on endpoints/{service} ended")));
            }
        }
    }
}

/// The `k8s.switch_selector` step.
#[derive(Debug)]
pub struct SwitchSelector {
    config: SwitchSelectorConfig,
}

impl SwitchSelector {
    /// Checks the configuration.
    pub fn new(config: SwitchSelectorConfig) -> Result<Self, ConfigError> {
        if config.service.trim().is_empty() {
            return Err(ConfigError::field("service", "name the Service to switch"));
        }
        if config.selector.is_empty() {
            return Err(ConfigError::field(
                "selector",
                "give the labels to switch to, e.g. `selector: {version: blue}`",
            ));
        }
        Ok(SwitchSelector { config })
    }

    fn resolved_selector(&self, ctx: &StepContext) -> Result<BTreeMap<String, String>, StepError> {
        self.config
            .selector
            .iter()
            .map(|(k, v)| Ok((ctx.resolve(k)?, ctx.resolve(v)?)))
            .collect()
    }
}

fn outputs_of(s: &Switched) -> Outputs {
    let mut out = Outputs::new();
    out.insert("previous_selector".into(), json!(s.previous));
    out.insert("selector".into(), json!(s.selector));
    out.insert("changed".into(), json!(s.changed));
    out.insert("endpoints".into(), json!(s.endpoints));
    out.insert("conflicts_retried".into(), json!(s.conflicts));
    out
}

#[async_trait]
impl Step for SwitchSelector {
    fn describe(&self) -> String {
        format!(
            "switch service/{} to {}",
            self.config.service,
            selector_text(&self.config.selector)
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "previous_selector",
            "selector",
            "changed",
            "endpoints",
            "conflicts_retried",
        ])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.service)?;
        let svc = Api::<Service>::namespaced(conn.client.clone(), &conn.namespace)
            .get(&name)
            .await
            .map_err(|e| api_error(&format!("reading service/{name}"), e))?;
        let previous = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        let mut selector = if self.config.replace {
            BTreeMap::new()
        } else {
            previous.clone()
        };
        selector.extend(self.resolved_selector(ctx)?);
        let pods = pods_under(&conn, &selector).await?;
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        let summary = format!(
            "switch service/{name} in {} from {} to {} ({ready} of {} target pods ready)",
            conn.namespace,
            selector_text(&previous),
            selector_text(&selector),
            pods.len()
        );
        let changes = if selector == previous {
            vec![]
        } else {
            vec![format!(
                "spec.selector: {} -> {}",
                selector_text(&previous),
                selector_text(&selector)
            )]
        };
        Ok(Preview::new(summary, changes))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.service)?;
        let labels = self.resolved_selector(ctx)?;
        let mut done = switch_service(
            &conn,
            ctx,
            &name,
            &labels,
            self.config.replace,
            self.config.min_ready,
            self.config.timeout.0,
        )
        .await?;
        // A re-run after a crash finds the selector already switched: keep the
        // selector from before the first attempt, so undo goes back there.
        let intent = ctx
            .artifact_dir()
            .ok()
            .map(|d| d.join("previous_selector.json"));
        if let Some(path) = &intent {
            if done.changed {
                let _ =
                    std::fs::write(path, serde_json::to_vec(&done.previous).unwrap_or_default());
            } else if let Ok(bytes) = std::fs::read(path) {
                if let Ok(prev) = serde_json::from_slice(&bytes) {
                    done.previous = prev;
                }
            }
        }
        Ok(outputs_of(&done))
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let previous: BTreeMap<String, String> = outputs
            .get("previous_selector")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| {
                StepError::fatal(format!("the recorded previous selector is unreadable: {e}"))
            })?
            .ok_or_else(|| StepError::fatal("the switch recorded no previous selector"))?;
        if previous.is_empty() {
            return Err(StepError::fatal(
                "the Service had no selector before the switch; nothing to go back to",
            ));
        }
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.service)?;
        switch_service(&conn, ctx, &name, &previous, true, 0, self.config.timeout.0).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn one_list_covers_both_selectors_when_their_keys_agree() {
        assert_eq!(
            union_selector(
                &sel(&[("svc", "shop"), ("version", "blue")]),
                &sel(&[("svc", "shop"), ("version", "green")])
            )
            .as_deref(),
            Some("svc=shop,version in (blue,green)")
        );
        // Other keys, an empty value or an empty selector: two lists.
        assert_eq!(
            union_selector(&sel(&[("app", "a")]), &sel(&[("svc", "a")])),
            None
        );
        assert_eq!(
            union_selector(&sel(&[("app", "")]), &sel(&[("app", "a")])),
            None
        );
        assert_eq!(union_selector(&sel(&[]), &sel(&[("app", "a")])), None);
    }
}
