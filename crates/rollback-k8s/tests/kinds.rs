//! The other kinds and the verifiers against the real control plane.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use rollback_core::{HumanDuration, Registry, Step, StepContext, Verifier};
use serde_json::{json, Value};

/// Builds a step from YAML-like JSON config, through the registry (as a plan does).
fn step(c: &support::Cluster, kind: &str, mut config: Value) -> std::sync::Arc<dyn Step> {
    config["namespace"] = json!(c.ns);
    config["kubeconfig"] = json!(c.kubeconfig);
    let mut registry = Registry::empty();
    rollback_k8s::register(&mut registry);
    let mut text = format!("name: t\nsteps:\n  - id: s\n    kind: {kind}\n");
    for (k, v) in config.as_object().unwrap() {
        text.push_str(&format!("    {k}: {v}\n"));
    }
    let plan = rollback_core::Plan::from_yaml(&text, "t.yaml", &registry, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    plan.steps[0].step.clone()
}

fn verifier(c: &support::Cluster, kind: &str, mut config: Value) -> std::sync::Arc<dyn Verifier> {
    config["namespace"] = json!(c.ns);
    config["kubeconfig"] = json!(c.kubeconfig);
    let mut registry = Registry::empty();
    rollback_k8s::register(&mut registry);
    // A plan needs a step: a harmless annotate that is never run.
    let mut text = format!(
        "name: t\nsteps:\n  - id: s\n    kind: k8s.annotate\n    resource: service/x\n    annotations: {{a: b}}\nverify:\n  - kind: {kind}\n"
    );
    for (k, v) in config.as_object().unwrap() {
        text.push_str(&format!("    {k}: {v}\n"));
    }
    let plan = rollback_core::Plan::from_yaml(&text, "t.yaml", &registry, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    plan.verify[0].verifier.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_set_image_and_set_env_undo_cleanly() {
    let Some(c) = support::cluster("workload").await else {
        return;
    };
    c.deployment("consumers", "consumers:v2", 1, &[], json!({}))
        .await;
    c.rolled_out("consumers").await;

    let scale = step(
        &c,
        "k8s.scale",
        json!({"resource": "deployment/consumers", "replicas": 3}),
    );
    let ctx = c.ctx("scale");
    let out = scale.run(&ctx).await.unwrap();
    assert_eq!(out["previous_replicas"], json!(1));
    let again = scale.run(&ctx).await.unwrap();
    assert_eq!(
        again["previous_replicas"],
        json!(1),
        "a re-run keeps the first previous count"
    );
    let d = c.rolled_out("consumers").await;
    assert_eq!(d.status.unwrap().available_replicas, Some(3));
    scale.undo(&c.ctx("scale"), &out).await.unwrap();
    assert_eq!(
        c.deployments()
            .get("consumers")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(1)
    );

    let set_image = step(
        &c,
        "k8s.set_image",
        json!({"resource": "deployment/consumers", "images": {"app": "consumers:v1"}}),
    );
    let out = set_image.run(&c.ctx("img")).await.unwrap();
    assert_eq!(out["previous_images"], json!({"app": "consumers:v2"}));
    assert_eq!(c.image("consumers").await, "consumers:v1");
    set_image.undo(&c.ctx("img"), &out).await.unwrap();
    assert_eq!(c.image("consumers").await, "consumers:v2");
    let bad = step(
        &c,
        "k8s.set_image",
        json!({"resource": "deployment/consumers", "images": {"nope": "x:1"}}),
    );
    assert!(bad
        .run(&c.ctx("img"))
        .await
        .unwrap_err()
        .message()
        .contains("(it has: app)"));

    let set_env = step(
        &c,
        "k8s.set_env",
        json!({"resource": "deployment/consumers", "env": {"SCHEMA_VERSION": "3"}}),
    );
    let out = set_env.run(&c.ctx("env")).await.unwrap();
    assert_eq!(out["previous_env"], json!({"SCHEMA_VERSION": null}));
    let env = |d: k8s_openapi::api::apps::v1::Deployment| {
        d.spec.template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
    };
    let e = env(c.deployments().get("consumers").await.unwrap());
    assert_eq!(
        (e[0].name.as_str(), e[0].value.as_deref()),
        ("SCHEMA_VERSION", Some("3"))
    );
    set_env.undo(&c.ctx("env"), &out).await.unwrap();
    assert!(
        env(c.deployments().get("consumers").await.unwrap()).is_empty(),
        "removed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn annotate_sets_and_removes_the_maintenance_flag() {
    let Some(c) = support::cluster("annotate").await else {
        return;
    };
    c.service("orders-db", &[("app", "orders-db")]).await;
    let on = step(
        &c,
        "k8s.annotate",
        json!({"resource": "service/orders-db", "annotations": {"maintenance": "true"}}),
    );
    let out = on.run(&c.ctx("on")).await.unwrap();
    assert_eq!(out["previous"], json!({"maintenance": null}));
    let ann = |s: k8s_openapi::api::core::v1::Service| s.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann(c.services().get("orders-db").await.unwrap())["maintenance"],
        "true"
    );
    let off = step(
        &c,
        "k8s.annotate",
        json!({"resource": "service/orders-db", "annotations": {"maintenance": null}}),
    );
    off.run(&c.ctx("off")).await.unwrap();
    assert!(!ann(c.services().get("orders-db").await.unwrap()).contains_key("maintenance"));
    on.undo(&c.ctx("on"), &out).await.unwrap();
    assert!(!ann(c.services().get("orders-db").await.unwrap()).contains_key("maintenance"));
    assert!(c
        .events_on("orders-db")
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("Annotated")));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_canaries_by_selector_and_apply_restores_manifests() {
    let Some(c) = support::cluster("delete-apply").await else {
        return;
    };
    for s in ["user", "order"] {
        c.deployment(
            &format!("{s}-canary"),
            "shop:v2",
            1,
            &[("version", "canary")],
            json!({}),
        )
        .await;
    }
    c.deployment(
        "user-stable",
        "shop:v1",
        1,
        &[("version", "stable")],
        json!({}),
    )
    .await;
    let del = step(
        &c,
        "k8s.delete",
        json!({"resource": "deployment", "selector": "version=canary", "grace_period": "10s"}),
    );
    let preview = del.preview(&c.ctx("del")).await.unwrap();
    assert_eq!(preview.changes.len(), 2);
    let out = del.run(&c.ctx("del")).await.unwrap();
    assert_eq!(out["deleted"], json!(["order-canary", "user-canary"]));
    let left: Vec<String> = c
        .deployments()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert_eq!(left, vec!["user-stable"]);
    assert!(
        del.run(&c.ctx("del")).await.unwrap()["deleted"]
            .as_array()
            .unwrap()
            .is_empty(),
        "idempotent"
    );

    // Last-known-good manifests: a folder with a ConfigMap and a Deployment change.
    let dir = c.dir.path().join("lkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-config\ndata:\n  mode: safe\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: flags\ndata:\n  new_checkout: \"false\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("20-deploy.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: user-stable\nspec:\n  selector:\n    matchLabels: {app: user-stable, version: stable}\n  template:\n    metadata:\n      labels: {app: user-stable, version: stable}\n    spec:\n      containers:\n      - name: app\n        image: shop:v0\n",
    )
    .unwrap();
    let apply = step(&c, "k8s.apply", json!({"path": dir.display().to_string()}));
    let preview = apply.preview(&c.ctx("apply")).await.unwrap();
    assert_eq!(preview.changes.len(), 3);
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    assert!(
        cms.get_opt("shop-config").await.unwrap().is_none(),
        "the preview was a dry run"
    );
    let out = apply.run(&c.ctx("apply")).await.unwrap();
    assert_eq!(
        out["applied"],
        json!([
            "configmap/shop-config",
            "configmap/flags",
            "deployment/user-stable"
        ])
    );
    assert_eq!(
        cms.get("shop-config").await.unwrap().data.unwrap()["mode"],
        "safe"
    );
    assert_eq!(
        c.image("user-stable").await,
        "shop:v0",
        "forced over the creator's field ownership"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_an_inline_manifest_with_data_from_a_file() {
    let Some(c) = support::cluster("inline").await else {
        return;
    };
    // The seeds' `kubectl create configmap --from-file=config.json | kubectl apply`.
    let file = c.dir.path().join("config.json");
    std::fs::write(&file, "{\"feature\": \"off\"}\n").unwrap();
    let apply = step(
        &c,
        "k8s.apply",
        json!({"manifest": {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "orders-config"},
            "data": {"config.json": format!("${{file:{}}}", file.display())}
        }}),
    );
    let out = apply.run(&c.ctx("inline")).await.unwrap();
    assert_eq!(out["applied"], json!(["configmap/orders-config"]));
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    let data = cms.get("orders-config").await.unwrap().data.unwrap();
    assert_eq!(data["config.json"], "{\"feature\": \"off\"}");
    // `path` and `manifest` are exclusive; a manifest needs kind and apiVersion.
    let registry = {
        let mut r = rollback_core::Registry::empty();
        rollback_k8s::register(&mut r);
        r
    };
    let bad = "name: p\nsteps:\n  - id: a\n    kind: k8s.apply\n    path: x\n    manifest: {apiVersion: v1, kind: ConfigMap}\n";
    let err = rollback_core::Plan::from_yaml(bad, "p.yaml", &registry, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not both"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_and_restore_bring_back_a_configmap_and_a_secret() {
    let Some(c) = support::cluster("snapshot").await else {
        return;
    };
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "orders-config", "labels": {"app": "orders"}},
            "data": {"pool_size": "10", "mode": "stable"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "orders-db", "labels": {"app": "orders"}},
                "stringData": {"password": "hunter2-very-secret"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let snap = step(&c, "k8s.snapshot", json!({"selector": "app=orders"}));
    let ctx = c.ctx("snap");
    let out = snap.run(&ctx).await.unwrap();
    assert_eq!(
        out["objects"],
        json!(["configmap/orders-config", "secret/orders-db"])
    );
    let outputs_text = serde_json::to_string(&out).unwrap();
    assert!(
        !outputs_text.contains("hunter2"),
        "no secret in the outputs: {outputs_text}"
    );
    assert!(
        !outputs_text.contains("aHVudGVyMi"),
        "not even base64: {outputs_text}"
    );
    let path = out["path"].as_str().unwrap().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // The deploy changes the config, rotates the secret, adds a key.
    cms.patch(
        "orders-config",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"data": {"mode": "new", "extra": "1"}})),
    )
    .await
    .unwrap();
    secrets
        .delete("orders-db", &Default::default())
        .await
        .unwrap();

    let restore = step(&c, "k8s.restore", json!({"from": path}));
    let out = restore.run(&c.ctx("restore")).await.unwrap();
    assert_eq!(out["created"], json!(["secret/orders-db"]));
    let data = cms.get("orders-config").await.unwrap().data.unwrap();
    assert_eq!(
        data,
        BTreeMap::from([
            ("mode".into(), "stable".into()),
            ("pool_size".into(), "10".into())
        ])
    );
    let secret = secrets.get("orders-db").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"hunter2-very-secret");
    // Again: the same state.
    restore.run(&c.ctx("restore")).await.unwrap();
    assert_eq!(
        cms.get("orders-config").await.unwrap().data.unwrap()["mode"],
        "stable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verifiers_measure_availability_endpoints_and_readiness() {
    let Some(c) = support::cluster("verify").await else {
        return;
    };
    c.deployment("api", "api:v1", 2, &[], json!({})).await;
    c.rolled_out("api").await;
    c.service("api", &[("app", "api")]).await;
    let ctx = StepContext::standalone("verify", c.dir.path());

    let available = verifier(&c, "k8s.available", json!({"deployment": "api"}));
    let m = available.check(&ctx).await.unwrap();
    assert!(m.passed, "{m:?}");
    assert_eq!(m.observed, "2/2 available, rollout complete");

    let endpoints = verifier(
        &c,
        "k8s.endpoints",
        json!({"service": "api", "min_ready": 2}),
    );
    support::eventually("endpoints", || async {
        endpoints.check(&ctx).await.unwrap().passed
    })
    .await;

    let ready = verifier(&c, "k8s.pods_ready", json!({"selector": "app=api"}));
    assert!(ready.check(&ctx).await.unwrap().passed);

    c.set_image("api", "api:bad").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client.clone(), &c.ns);
    support::eventually("bad pods running", || async {
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
            == 4
    })
    .await;
    let m = available.check(&ctx).await.unwrap();
    assert!(!m.passed, "{m:?}");
    let m = ready.check(&ctx).await.unwrap();
    assert_eq!((m.passed, m.observed.as_str()), (false, "2/4 ready"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_locker_excludes_a_second_runner_and_releases() {
    use rollback_core::error::LockHolder;
    use rollback_core::PlanLocker;
    let Some(c) = support::cluster("lease").await else {
        return;
    };
    let locker = rollback_k8s::LeaseLocker::new(c.conn(), Duration::from_secs(15));
    let holder = |run: &str| LockHolder {
        operator: "alice".into(),
        host: "runner-1".into(),
        pid: 7,
        since: "2025-01-01T00:00:00Z".into(),
        run_id: run.into(),
    };
    let guard = locker.lock("order-service", &holder("r1")).await.unwrap();
    let err = match locker.lock("order-service", &holder("r2")).await {
        Err(e) => e,
        Ok(_) => panic!("a second runner took the lock"),
    };
    assert!(err.to_string().contains("alice on runner-1"), "{err}");
    assert!(
        locker.lock("payment-service", &holder("r3")).await.is_ok(),
        "other plans are free"
    );
    drop(guard);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), &c.ns);
    support::eventually("the lease released", || async {
        leases
            .get("rollback-plan-order-service")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .is_none()
    })
    .await;
    assert!(locker.lock("order-service", &holder("r4")).await.is_ok());
    let _ = HumanDuration(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_log_errors_counts_recent_error_lines_read_through_the_kubelet() {
    let Some(c) = support::cluster_with_kubelet("pod_log_errors").await else {
        return;
    };
    // Two containers per pod: the API server refuses a log read without a
    // container name, so this proves every container is named and read.
    c.deployment(
        "web",
        "web:v2",
        2,
        &[],
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "web:v2", "env": [{"name": "TEST_STDOUT", "value": "listening on :8080\nERROR upstream reset"}]},
            {"name": "proxy", "image": "proxy:v1"},
        ]}}}}),
    )
    .await;
    c.rolled_out("web").await;
    let kubelet = c.kubelet.as_ref().unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client.clone(), &c.ns);
    let names: Vec<String> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    let now = chrono::Utc::now();
    // Outside the 5-minute window: not counted.
    kubelet.write(
        &c.ns,
        &names[0],
        "app",
        now - chrono::Duration::minutes(20),
        "ERROR old outage",
    );
    kubelet.write(&c.ns, &names[0], "proxy", now, "ERROR 502 from app");
    kubelet.write(&c.ns, &names[1], "proxy", now, "GET / 200");
    let ctx = StepContext::standalone("verify", c.dir.path());

    // 2 startup errors + 1 proxy error in the last 5 minutes.
    let strict = verifier(
        &c,
        "k8s.pod_log_errors",
        json!({"selector": "app=web", "since": "5m"}),
    );
    let m = strict.check(&ctx).await.unwrap();
    assert_eq!(
        (m.passed, m.observed.as_str(), m.expected.as_str()),
        (false, "3 matching lines in 2 pods over 300s", "<= 0"),
    );
    let tolerant = verifier(
        &c,
        "k8s.pod_log_errors",
        json!({"selector": "app=web", "since": "5m", "max_lines": 3}),
    );
    assert!(tolerant.check(&ctx).await.unwrap().passed);
    let wider = verifier(
        &c,
        "k8s.pod_log_errors",
        json!({"selector": "app=web", "since": "1h", "pattern": "ERROR (old|502)"}),
    );
    assert_eq!(
        wider.check(&ctx).await.unwrap().observed,
        "2 matching lines in 2 pods over 3600s"
    );

    // Pods whose containers never started have no logs to read: skipped, not
    // an error (the kubelet would refuse the read).
    c.set_image("web", "web:pending").await;
    support::eventually("pending pods", || async {
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.container_statuses.is_some())
            })
            .count()
            == 4
    })
    .await;
    let m = strict.check(&ctx).await.unwrap();
    assert_eq!(m.observed, "3 matching lines in 2 pods over 300s");
}
