//! Test support against the real control plane started by
//! `scripts/testenv/k8s.sh`: a namespace per test, and a node player that does
//! what a kubelet and scheduler would (as kwok does): it registers a Ready
//! Node, binds each Pod to it, marks it Running and Ready with a pod IP — except
//! Pods whose image tag is `bad`, which run but stay not Ready, and Pods whose
//! image tag is `pending`, whose containers never start — and finishes the
//! deletion of terminating Pods. Deployments then really roll out and roll
//! back, ReplicaSets carry revisions and Endpoints follow readiness.
#![allow(dead_code)]

pub mod kubelet;
pub mod rbac;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use rollback_core::StepContext;
use rollback_k8s::{Conn, Target};
use serde_json::{json, Value};

/// The four services of the seeds' emergency rollback.
pub const EMERGENCY_SERVICES: [&str; 4] = [
    "user-service",
    "catalog-service",
    "order-service",
    "payment-service",
];

/// The node Pods are bound to, unless the test plays its own kubelet.
pub const NODE: &str = "rollback-test-node";

/// A namespace on the test cluster with a node player serving it.
pub struct Cluster {
    pub client: Client,
    pub ns: String,
    pub kubeconfig: String,
    pub dir: tempfile::TempDir,
    /// The node this namespace's Pods are bound to.
    pub node: String,
    /// The node's log endpoint, for [`cluster_with_kubelet`].
    pub kubelet: Option<Arc<kubelet::Kubelet>>,
    player: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    /// Deletes the test's namespace, so that leftovers do not load the
    /// controller manager for the tests after (the control plane outlives the
    /// run). Its Pods are force-deleted: no kubelet will finish their graceful
    /// deletion once the player is gone. A failed test keeps its namespace
    /// for inspection.
    fn drop(&mut self) {
        self.player.abort();
        if std::thread::panicking() {
            eprintln!("kept namespace {} of the failed test", self.ns);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let client = self.client.clone();
        let ns = self.ns.clone();
        tokio::task::block_in_place(|| {
            runtime.block_on(async move {
                let namespaces: Api<Namespace> = Api::all(client.clone());
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                let _ = pods
                    .delete_collection(
                        &DeleteParams::default().grace_period(0),
                        &ListParams::default(),
                    )
                    .await;
            })
        });
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Connects to the test cluster, or returns `None` (test skipped) when
/// `scripts/testenv/k8s.sh` has not been run.
pub async fn cluster(test: &str) -> Option<Cluster> {
    start(test, false).await
}

/// Like [`cluster`], with Pods bound to a node of the test's own whose kubelet
/// log endpoint is played ([`kubelet::Kubelet`]), so `pods/log` works. The
/// node is named after the test, so reruns reuse it.
pub async fn cluster_with_kubelet(test: &str) -> Option<Cluster> {
    start(test, true).await
}

async fn start(test: &str, with_kubelet: bool) -> Option<Cluster> {
    rollback_core::testing::require_env("ROLLBACK_K8S_TEST")?;
    let kubeconfig = rollback_core::testing::require_env("KUBECONFIG")?;
    rollback_k8s::install_crypto_provider();
    let config = rollback_k8s::client::load_config(Some(&kubeconfig), None)
        .await
        .expect("kubeconfig");
    let client = rollback_k8s::client::build_client(config).expect("client");
    let (node, kubelet) = if with_kubelet {
        let kubelet = Arc::new(kubelet::Kubelet::start().await);
        let node: String = format!("rollback-kubelet-{}", test.replace('_', "-"))
            .chars()
            .take(63)
            .collect();
        ensure_node(&client, &node, Some(kubelet.port())).await;
        (node, Some(kubelet))
    } else {
        ensure_node(&client, NODE, None).await;
        (NODE.to_string(), None)
    };
    let ns = format!(
        "{}-{}-{}",
        test.replace('_', "-"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let ns: String = ns
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("create namespace");
    // Pods are refused until the token controller made the default account's secret.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually("the default service account", || async {
        sa.get_opt("default")
            .await
            .ok()
            .flatten()
            .is_some_and(|a| a.secrets.is_some_and(|s| !s.is_empty()))
    })
    .await;
    let player = tokio::spawn(play_node(
        client.clone(),
        ns.clone(),
        node.clone(),
        kubelet.clone(),
    ));
    Some(Cluster {
        client,
        ns,
        kubeconfig,
        dir: tempfile::tempdir().unwrap(),
        node,
        kubelet,
        player,
    })
}

/// Polls `check` (every 50 ms, up to 60 s) — only for test set-up where the
/// cluster offers no event to wait on (e.g. garbage collection).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn ensure_node(client: &Client, name: &str, kubelet_port: Option<u16>) {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await.unwrap().is_none() {
        let node = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        let _ = nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(node).unwrap(),
            )
            .await;
    }
    let now = now();
    let mut status = json!({"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "played by rollback-k8s test support",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
    }});
    if let Some(port) = kubelet_port {
        status["status"]["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": port}});
    }
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("mark the node Ready");
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn has_tag(pod: &Pod, tag: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.rsplit_once(':').is_some_and(|(_, t)| t == tag))
        })
    })
}

fn is_bad(pod: &Pod) -> bool {
    has_tag(pod, "bad")
}

fn ip_for(uid: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(uid.as_bytes());
    format!("10.{}.{}.{}", 64 + h[0] % 64, h[1], 1 + h[2] % 254)
}

/// Plays kubelet and scheduler for one namespace.
async fn play_node(
    client: Client,
    ns: String,
    node: String,
    kubelet: Option<Arc<kubelet::Kubelet>>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(pod)) = stream.try_next().await {
        let api = api.clone();
        let node = node.clone();
        let kubelet = kubelet.clone();
        tokio::spawn(async move { serve(&api, pod, &node, kubelet.as_deref()).await });
    }
}

async fn serve(api: &Api<Pod>, pod: Pod, node: &str, kubelet: Option<&kubelet::Kubelet>) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        let _ = api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
        return;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.node_name.is_none() {
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let _ = api
            .create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding)
            .await;
        return;
    }
    let status = pod.status.clone().unwrap_or_default();
    if has_tag(&pod, "pending") {
        if status.container_statuses.is_none() {
            let waiting: Vec<Value> = spec
                .containers
                .iter()
                .map(|c| {
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                           "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}})
                })
                .collect();
            let patch = json!({"status": {"phase": "Pending", "hostIP": "127.0.0.1",
                                          "containerStatuses": waiting}});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        return;
    }
    let ready = !is_bad(&pod);
    let is_ready_now = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if status.phase.as_deref() == Some("Running")
        && is_ready_now == ready
        && status.pod_ip.is_some()
    {
        return;
    }
    if let Some(kubelet) = kubelet {
        kubelet.start_containers(&pod);
    }
    let ip = ip_for(pod.metadata.uid.as_deref().unwrap_or(&name));
    let now = now();
    let flag = if ready { "True" } else { "False" };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": format!("docker://{}", c.image.clone().unwrap_or_default()),
                   "ready": ready, "started": true, "restartCount": 0,
                   "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let patch = json!({"status": {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }});
    let _ = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

impl Cluster {
    /// A connection for library calls.
    pub fn conn(&self) -> Conn {
        Conn {
            client: self.client.clone(),
            namespace: self.ns.clone(),
        }
    }

    /// The connection fields of a step.
    pub fn target(&self) -> Target {
        Target {
            kubeconfig: Some(self.kubeconfig.clone()),
            context: None,
            namespace: Some(self.ns.clone()),
        }
    }

    /// A fresh step context (its own artifact folder).
    pub fn ctx(&self, step: &str) -> StepContext {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        StepContext::standalone(step, self.dir.path().join(format!("run-{n}")))
    }

    /// Common YAML lines naming this namespace and kubeconfig.
    pub fn yaml_target(&self) -> String {
        format!(
            "namespace: {}\n    kubeconfig: {}",
            self.ns, self.kubeconfig
        )
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a Deployment of `replicas` pods running `image`, labelled
    /// `app=NAME` plus `labels`.
    pub async fn deployment(
        &self,
        name: &str,
        image: &str,
        replicas: i32,
        labels: &[(&str, &str)],
        extra: Value,
    ) {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("app".into(), name.into());
        let mut d = json!({
            "metadata": {"name": name, "labels": l},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": l},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}},
                "template": {"metadata": {"labels": l},
                             "spec": {"containers": [{"name": "app", "image": image}]}}
            }
        });
        merge(&mut d, extra);
        self.deployments()
            .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
            .await
            .expect("create deployment");
    }

    /// Changes the image (a new revision).
    pub async fn set_image(&self, name: &str, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .expect("set image");
    }

    /// Waits until the Deployment finished rolling out.
    pub async fn rolled_out(&self, name: &str) -> Deployment {
        rollback_k8s::rollout::wait_deployment(
            &self.conn(),
            &self.ctx("wait"),
            name,
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("deployment/{name} did not roll out: {e}"))
    }

    /// A Service selecting `selector`.
    pub async fn service(&self, name: &str, selector: &[(&str, &str)]) {
        let s: BTreeMap<&str, &str> = selector.iter().cloned().collect();
        let svc = json!({"metadata": {"name": name},
                         "spec": {"selector": s, "ports": [{"port": 80, "targetPort": 8080}]}});
        self.services()
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .expect("create service");
    }

    /// A Service's selector.
    pub async fn selector(&self, service: &str) -> BTreeMap<String, String> {
        let svc = self.services().get(service).await.unwrap();
        svc.spec.unwrap().selector.unwrap_or_default()
    }

    /// The seeds' emergency set-up: for each of [`EMERGENCY_SERVICES`] a
    /// `-stable` and a `-canary` Deployment of one pod (labels `svc`,
    /// `version`) and a Service on the canary; returns once all rolled out.
    pub async fn emergency_services(&self) {
        for s in EMERGENCY_SERVICES {
            for version in ["stable", "canary"] {
                self.deployment(
                    &format!("{s}-{version}"),
                    &format!("shop:{version}"),
                    1,
                    &[("svc", s), ("version", version)],
                    json!({}),
                )
                .await;
            }
            self.service(s, &[("svc", s), ("version", "canary")]).await;
        }
        for s in EMERGENCY_SERVICES {
            for version in ["stable", "canary"] {
                self.rolled_out(&format!("{s}-{version}")).await;
            }
        }
    }

    /// The image of the Deployment's first container.
    pub async fn image(&self, name: &str) -> String {
        let d = self.deployments().get(name).await.unwrap();
        d.spec.template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    /// Ready pod IPs under a selector.
    pub async fn ready_ips(&self, selector: &str) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut ips: Vec<String> = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.status.and_then(|s| s.pod_ip))
            .collect();
        ips.sort();
        ips
    }

    /// Events recorded on an object.
    pub async fn events_on(&self, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// Runs kubectl 1.20 (the peer) against this namespace; `None` when it is
    /// not installed.
    pub fn kubectl(&self, args: &[&str]) -> Option<std::process::Output> {
        let bin = std::env::var("KUBECTL_1_20").ok()?;
        let out = std::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out)
    }
}

/// JSON merge (objects merged recursively, other values replaced).
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}
