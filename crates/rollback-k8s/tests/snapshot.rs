//! `k8s.snapshot`, `k8s.restore` and `k8s.snapshot_cleanup` run as plans by
//! the engine against the real control plane: Secret values stay in the
//! cluster, never in the state directory.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunReport, RunStatus};
use serde_json::json;

const PASSWORD: &str = "hunter2-kept-in-the-cluster";

async fn run_plan(c: &support::Cluster, yaml: &str) -> RunReport {
    let mut registry = Registry::with_core_kinds();
    rollback_k8s::register(&mut registry);
    let plan = Plan::from_yaml(yaml, "snapshot.yaml", &registry, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let executor = Executor::new(Arc::new(FileJournal::new(c.dir.path().join("state"))));
    executor
        .run(&plan, RunOptions::new("snapshot test"))
        .await
        .unwrap()
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_values_stay_in_the_cluster_and_restore_puts_them_back_exactly() {
    let Some(c) = support::cluster("snapshot-secrets").await else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    // As `kubectl apply` leaves it: the value is also in an annotation.
    let applied = json!({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "orders-db"}, "stringData": {"password": PASSWORD}});
    let original = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "orders-db", "labels": {"app": "orders"},
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()}},
                "type": "Opaque",
                "stringData": {"password": PASSWORD}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let snapshot = format!(
        "name: snap\nsteps:\n  - id: take_snapshot\n    kind: k8s.snapshot\n    selector: app=orders\n    {}\n",
        c.yaml_target()
    );
    let report = run_plan(&c, &snapshot).await;
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let run_id = report.run.run_id.clone();
    let path = report.steps[0].outputs["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        report.steps[0].outputs["objects"],
        json!(["secret/orders-db"])
    );

    // Nothing of the value on the runner's disk: not plain, not base64 (in
    // either the value's or the annotation's encoding).
    let state = c.dir.path();
    for needle in [
        PASSWORD.to_string(),
        base64(PASSWORD.as_bytes()),
        base64(applied.to_string().as_bytes()),
    ] {
        let found = files_containing(state, needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} found in {found:?}");
    }
    // Only a reference, kept in a Secret owned by the run.
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.contains("dataRef"), "{file}");
    let keepers = secrets
        .list(&ListParams::default().labels(&format!(
            "rollback.dev/run={run_id},rollback.dev/step=take-snapshot"
        )))
        .await
        .unwrap()
        .items;
    assert_eq!(keepers.len(), 1, "one snapshot Secret for the run and step");
    let keeper = keepers[0].metadata.name.clone().unwrap();
    assert!(file.contains(&keeper), "{file}");

    // The deploy rotates the secret; the rollback restores and then cleans up.
    secrets
        .delete("orders-db", &Default::default())
        .await
        .unwrap();
    let restore = format!(
        "name: restore\nsteps:\n  - id: restore\n    kind: k8s.restore\n    from: {path}\n    {t}\n  \
         - id: cleanup\n    kind: k8s.snapshot_cleanup\n    after: [restore]\n    from: {path}\n    {t}\n",
        t = c.yaml_target()
    );
    let report = run_plan(&c, &restore).await;
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let back = secrets.get("orders-db").await.unwrap();
    assert_eq!(back.data, original.data);
    assert_eq!(back.type_, original.type_);
    assert_eq!(back.metadata.labels, original.metadata.labels);
    assert_eq!(back.metadata.annotations, original.metadata.annotations);
    assert_eq!(
        secrets.get_opt(&keeper).await.unwrap(),
        None,
        "the snapshot Secret is cleaned up"
    );
    for needle in [PASSWORD.to_string(), base64(PASSWORD.as_bytes())] {
        let found = files_containing(state, needle.as_bytes());
        assert!(
            found.is_empty(),
            "{needle:?} found in {found:?} after the restore"
        );
    }

    // A restore whose snapshot Secret is gone stops, saying so, and changes nothing.
    secrets
        .delete("orders-db", &Default::default())
        .await
        .unwrap();
    let report = run_plan(&c, &restore).await;
    assert_eq!(report.status, Some(RunStatus::StepFailed), "{report:#?}");
    let error = report.steps[0].error.clone().unwrap();
    assert!(
        error.contains(&keeper) && error.contains("is gone"),
        "{error}"
    );
    assert!(error.contains("nothing was restored"), "{error}");
    assert_eq!(secrets.get_opt("orders-db").await.unwrap(), None);
}
