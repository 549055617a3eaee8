//! The example plans in examples/k8s, run unchanged by the engine against the
//! real control plane, each in a namespace set up as the seeds describe. They
//! name no kubeconfig, so they also prove the default (`KUBECONFIG`) works.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunReport, RunStatus};
use serde_json::json;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/k8s")
        .join(name)
}

async fn run_example(c: &support::Cluster, file: &str, vars: &[(&str, &str)]) -> RunReport {
    let mut registry = Registry::with_core_kinds();
    rollback_k8s::register(&mut registry);
    let mut vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("namespace".into(), c.ns.clone());
    let plan = Plan::load(example(file), &registry, &vars).unwrap_or_else(|e| panic!("{e}"));
    let executor = Executor::new(Arc::new(FileJournal::new(c.dir.path().join("state"))));
    let report = executor
        .run(&plan, RunOptions::new("example drill"))
        .await
        .unwrap();
    assert_eq!(
        report.status,
        Some(RunStatus::Succeeded),
        "{file}: {report:#?}"
    );
    report
}

fn check<'a>(report: &'a RunReport, name: &str) -> &'a rollback_core::CheckReport {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {:?}", report.checks))
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_rollback_undoes_the_release_and_reads_the_new_pods_logs() {
    let Some(c) = support::cluster_with_kubelet("example_deployment").await else {
        return;
    };
    let release = |image: &str, stdout: &str| {
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": image, "env": [{"name": "TEST_STDOUT", "value": stdout}]}
        ]}}}})
    };
    c.deployment(
        "order-service",
        "orders:v1",
        3,
        &[],
        release("orders:v1", "started\nERROR cache warm-up slow"),
    )
    .await;
    c.rolled_out("order-service").await;
    let v2 = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "orders:v2",
        "env": [{"name": "TEST_STDOUT", "value": "started\nERROR 1\nERROR 2\nERROR 3\nERROR 4"}]}]}}}});
    c.deployments()
        .patch(
            "order-service",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&v2),
        )
        .await
        .unwrap();
    c.rolled_out("order-service").await;

    let report = run_example(
        &c,
        "deployment-rollback.yaml",
        &[("service", "order-service")],
    )
    .await;
    assert_eq!(c.image("order-service").await, "orders:v1");
    // v2's pods logged 12 errors; the check reads the three v1 pods the undo
    // brought back (one warm-up error each), through the API server and kubelet.
    let errors = check(&report, "error-rate");
    assert!(errors.passed, "{errors:?}");
    assert_eq!(errors.observed, "3 matching lines in 3 pods over 300s");
    assert!(check(&report, "available").passed);
    let undo = report.steps.iter().find(|s| s.id == "undo").unwrap();
    assert_eq!(undo.outputs["to_revision"], json!(1), "{undo:?}");
    assert_eq!(undo.outputs["from_revision"], json!(2), "{undo:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blue_green_rollback_switches_to_blue_and_removes_green() {
    let Some(c) = support::cluster("example_blue_green").await else {
        return;
    };
    for version in ["blue", "green"] {
        c.deployment(
            &format!("shop-{version}"),
            &format!("shop:{version}"),
            2,
            &[("svc", "shop"), ("version", version)],
            json!({}),
        )
        .await;
    }
    c.service("shop", &[("svc", "shop"), ("version", "green")])
        .await;
    c.rolled_out("shop-blue").await;
    c.rolled_out("shop-green").await;

    let report = run_example(&c, "blue-green-rollback.yaml", &[("service", "shop")]).await;
    assert_eq!(
        c.selector("shop").await,
        BTreeMap::from([
            ("svc".to_string(), "shop".to_string()),
            ("version".to_string(), "blue".to_string())
        ])
    );
    assert!(c
        .deployments()
        .get_opt("shop-green")
        .await
        .unwrap()
        .is_none());
    assert_eq!(c.ready_ips("version=blue").await.len(), 2);
    assert!(check(&report, "endpoints").passed);
}

#[tokio::test(flavor = "multi_thread")]
async fn emergency_rollback_switches_deletes_canaries_and_applies_last_known_good() {
    let Some(c) = support::cluster("example_emergency").await else {
        return;
    };
    c.emergency_services().await;
    let config: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    config
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "checkout"}, "data": {"new_checkout": "on"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let last_known_good = c.dir.path().join("last-known-good-config.yaml");
    std::fs::write(
        &last_known_good,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: checkout\ndata:\n  new_checkout: \"off\"\n",
    )
    .unwrap();

    let report = run_example(
        &c,
        "emergency-rollback.yaml",
        &[("last_known_good", last_known_good.to_str().unwrap())],
    )
    .await;
    for s in support::EMERGENCY_SERVICES {
        assert_eq!(c.selector(s).await["version"], "stable", "{s}");
        assert!(
            c.deployments()
                .get_opt(&format!("{s}-canary"))
                .await
                .unwrap()
                .is_none(),
            "{s}-canary deleted"
        );
        assert!(c
            .deployments()
            .get_opt(&format!("{s}-stable"))
            .await
            .unwrap()
            .is_some());
    }
    assert_eq!(
        config.get("checkout").await.unwrap().data.unwrap()["new_checkout"],
        "off"
    );
    assert_eq!(report.checks.iter().filter(|c| c.passed).count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn event_schema_rollback_stops_producers_and_moves_consumers_back() {
    let Some(c) = support::cluster("example_event_schema").await else {
        return;
    };
    let env = |version: &str| {
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "consumers:v4", "env": [{"name": "SCHEMA_VERSION", "value": version}]}
        ]}}}})
    };
    c.deployment("consumers", "consumers:v4", 2, &[], env("4"))
        .await;
    c.deployment("producers", "producers:v4", 3, &[], json!({}))
        .await;
    c.rolled_out("consumers").await;
    c.rolled_out("producers").await;

    let report = run_example(&c, "event-schema-rollback.yaml", &[("version", "3")]).await;
    let consumers = c.deployments().get("consumers").await.unwrap();
    let container = &consumers.spec.template.spec.unwrap().containers[0];
    let schema = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SCHEMA_VERSION")
        .and_then(|e| e.value.clone());
    assert_eq!(schema.as_deref(), Some("3"));
    let producers = c.deployments().get("producers").await.unwrap();
    assert_eq!(producers.spec.replicas, Some(3));
    // Producers were really stopped before the consumers moved.
    let stop = report
        .steps
        .iter()
        .find(|s| s.id == "stop_producers")
        .unwrap();
    let consumers_step = report
        .steps
        .iter()
        .find(|s| s.id == "consumers_on_old_schema")
        .unwrap();
    assert!(stop.start_ms.unwrap() + stop.duration_ms.unwrap() <= consumers_step.start_ms.unwrap());
    assert!(check(&report, "consumers").passed && check(&report, "producers").passed);
}
