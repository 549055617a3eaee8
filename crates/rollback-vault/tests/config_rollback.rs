//! The seeds' configuration rollback (config-rollback.sh) as one plan,
//! `examples/vault/config-rollback.yaml`, end to end: the stand-in Vault
//! (tests/support) holds a good and a bad version, the real control plane
//! (scripts/testenv/k8s.sh) runs the service. The plan writes the good version
//! back (validated, check-and-set), puts it in the ConfigMap and restarts the
//! Deployment; the config's values never reach the journal.

mod support;

#[path = "../../rollback-k8s/tests/support/mod.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use serde_json::json;
use support::StandIn;

const TOKEN: &str = "hvs.standin-config-rollback-4d1e";
const GOOD_PASSWORD: &str = "good-db-pass-30411";
const BAD_PASSWORD: &str = "bad-db-pass-77102";

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_configuration_rollback_runs_from_vault_to_a_restarted_deployment() {
    let Some(c) = cluster::cluster("vault-config").await else {
        return;
    };
    let vault = StandIn::start(&[TOKEN]).await;
    let good = json!({"db_password": GOOD_PASSWORD, "pool": 10});
    let bad = json!({"db_password": BAD_PASSWORD, "pool": -1});
    assert_eq!(
        vault.put("", "secret", "order-service/config", good.clone()),
        1
    );
    assert_eq!(
        vault.put("", "secret", "order-service/config", bad.clone()),
        2
    );

    // The service runs with the bad config.
    c.deployment("order-service", "shop:v1", 1, &[], json!({}))
        .await;
    c.rolled_out("order-service").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    let bad_cm = json!({"metadata": {"name": "order-service-config"},
                        "data": {"config.json": bad.to_string()}});
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad_cm).unwrap(),
        )
        .await
        .unwrap();

    // validate-config.sh: a pool must be positive.
    let dir = tempfile::tempdir().unwrap();
    let validator = dir.path().join("validate-config.sh");
    std::fs::write(
        &validator,
        "#!/bin/sh\ngrep -Eq '\"pool\": *[1-9]' \"$1\"\n",
    )
    .unwrap();
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&validator)
        .status()
        .unwrap();
    assert!(chmod.success());
    let config_file = dir.path().join("config.json");

    std::env::set_var("VAULT_ADDR", vault.address());
    std::env::set_var("VAULT_TOKEN", TOKEN);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vault/config-rollback.yaml");
    let mut registry = Registry::with_core_kinds();
    rollback_vault::register(&mut registry);
    rollback_k8s::register(&mut registry);
    let vars = BTreeMap::from([
        ("namespace".to_string(), c.ns.clone()),
        ("config_version".to_string(), "1".to_string()),
        ("validator".to_string(), validator.display().to_string()),
        ("config_file".to_string(), config_file.display().to_string()),
    ]);
    let plan = Plan::load(&path, &registry, &vars).unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let executor = Executor::new(Arc::new(FileJournal::new(&state)));
    let report = executor
        .run(&plan, RunOptions::new("bad config in 2.4.1"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");

    // Vault: the good data is the new current version 3, written once.
    let (version, data) = vault.current("", "secret", "order-service/config");
    assert_eq!((version, data), (3, good.clone()));
    let config_step = report.steps.iter().find(|s| s.id == "config").unwrap();
    assert_eq!(config_step.outputs["version"], 3, "{config_step:#?}");
    assert!(
        report.checks.iter().all(|ch| ch.passed),
        "{:#?}",
        report.checks
    );

    // Kubernetes: the ConfigMap holds it and the Deployment was restarted.
    let cm = configmaps.get("order-service-config").await.unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(&cm.data.unwrap()["config.json"]).expect("config.json is JSON");
    assert_eq!(shipped, good);
    let d = c.deployments().get("order-service").await.unwrap();
    let restarted = d
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(rollback_k8s::workload::RESTARTED_AT).cloned());
    assert!(
        restarted.is_some(),
        "no restartedAt annotation on the pod template"
    );
    c.rolled_out("order-service").await;

    // Neither version's values, nor the token, are in the journal.
    let mut files = vec![state.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            for secret in [GOOD_PASSWORD, BAD_PASSWORD, TOKEN] {
                assert!(!text.contains(secret), "{secret} in {}", p.display());
            }
        }
    }
}
