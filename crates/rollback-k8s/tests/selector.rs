//! `k8s.switch_selector` (blue-green) against the real control plane, and the
//! emergency plan switching four services in parallel.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rollback_core::{
    Executor, FileJournal, HumanDuration, Plan, Registry, RunOptions, RunStatus, Step,
};
use rollback_k8s::selector::{SwitchSelector, SwitchSelectorConfig};
use serde_json::json;

fn switch_step(c: &support::Cluster, service: &str, version: &str) -> SwitchSelector {
    let t = c.target();
    SwitchSelector::new(SwitchSelectorConfig {
        service: service.into(),
        selector: BTreeMap::from([("version".to_string(), version.to_string())]),
        replace: false,
        min_ready: 1,
        timeout: HumanDuration(Duration::from_secs(30)),
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
}

/// blue and green Deployments of `app`, both rolled out; the Service on green.
async fn blue_green(c: &support::Cluster, app: &str, green_image: &str) {
    c.deployment(
        &format!("{app}-blue"),
        "shop:v1",
        2,
        &[("svc", app), ("version", "blue")],
        json!({}),
    )
    .await;
    c.deployment(
        &format!("{app}-green"),
        green_image,
        2,
        &[("svc", app), ("version", "green")],
        json!({}),
    )
    .await;
    c.rolled_out(&format!("{app}-blue")).await;
    c.service(app, &[("svc", app), ("version", "green")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn switch_moves_the_endpoints_and_undo_switches_back() {
    let Some(c) = support::cluster("switch").await else {
        return;
    };
    blue_green(&c, "shop", "shop:v2").await;
    c.rolled_out("shop-green").await;

    let step = switch_step(&c, "shop", "blue");
    let preview = step.preview(&c.ctx("switch")).await.unwrap();
    assert_eq!(
        preview.changes,
        vec!["spec.selector: svc=shop,version=green -> svc=shop,version=blue"]
    );

    let out = step.run(&c.ctx("switch")).await.unwrap();
    let blue_ips = c.ready_ips("svc=shop,version=blue").await;
    assert_eq!(
        out["endpoints"],
        json!(blue_ips),
        "the endpoints list exactly the blue pods"
    );
    assert_eq!(
        out["previous_selector"],
        json!({"svc": "shop", "version": "green"})
    );
    assert_eq!(
        c.selector("shop").await,
        BTreeMap::from([
            ("svc".to_string(), "shop".to_string()),
            ("version".to_string(), "blue".to_string())
        ])
    );
    assert!(c
        .events_on("shop")
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("SelectorSwitched")));

    // Running it again changes nothing.
    let again = step.run(&c.ctx("switch")).await.unwrap();
    assert_eq!(again["changed"], json!(false));

    step.undo(&c.ctx("switch"), &out).await.unwrap();
    let ep: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let green_ips = c.ready_ips("svc=shop,version=green").await;
    let listed: Vec<String> =
        rollback_k8s::selector::ready_addresses(&ep.get("shop").await.unwrap())
            .into_iter()
            .collect();
    assert_eq!(listed, green_ips);
}

#[tokio::test(flavor = "multi_thread")]
async fn switch_is_refused_while_the_target_pods_are_not_ready() {
    let Some(c) = support::cluster("switch-refused").await else {
        return;
    };
    // The Service is on blue; green runs a bad build whose pods never get ready.
    blue_green(&c, "shop", "shop:bad").await;
    let svc_api = c.services();
    let patch = json!({"spec": {"selector": {"version": "blue"}}});
    svc_api
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await
        .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    support::eventually("green pods running (not ready)", || async {
        pods.list(&kube::api::ListParams::default().labels("version=green"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
            == 2
    })
    .await;

    let err = switch_step(&c, "shop", "green")
        .run(&c.ctx("switch"))
        .await
        .unwrap_err();
    let msg = err.message().to_string();
    assert!(msg.contains("refusing to switch service/shop"), "{msg}");
    assert!(msg.contains("0 of 2 pods under it are ready"), "{msg}");
    assert!(msg.contains("shop-green-"), "names the pods: {msg}");
    assert_eq!(
        c.selector("shop").await["version"],
        "blue",
        "the selector did not move"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emergency_plan_switches_four_services_in_parallel() {
    let Some(c) = support::cluster("emergency").await else {
        return;
    };
    c.emergency_services().await;
    let services = support::EMERGENCY_SERVICES;
    let steps: String = services
        .iter()
        .map(|s| {
            format!(
                "  - id: switch_{id}\n    kind: k8s.switch_selector\n    service: {s}\n    selector: {{version: stable}}\n    {t}\n",
                id = s.replace('-', "_"),
                t = c.yaml_target()
            )
        })
        .collect();
    let text = format!("name: emergency\nbudget: 2m\nsteps:\n{steps}");
    let mut registry = Registry::with_core_kinds();
    rollback_k8s::register(&mut registry);
    let plan = Plan::from_yaml(&text, "emergency.yaml", &registry, &BTreeMap::new()).unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(c.dir.path().join("state"))));
    let report = executor
        .run(&plan, RunOptions::new("canary 5xx spike"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:?}");
    for s in services {
        assert_eq!(c.selector(s).await["version"], "stable", "{s}");
    }
    // In parallel: every step started before any other finished.
    let spans: Vec<(u64, u64)> = report
        .steps
        .iter()
        .map(|s| {
            let start = s.start_ms.unwrap();
            (start, start + s.duration_ms.unwrap())
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_start <= first_end,
        "the four switches overlap: {spans:?}"
    );
}
