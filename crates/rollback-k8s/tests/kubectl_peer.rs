//! kubectl 1.20 (Debian's kubernetes-client, `$KUBECTL_1_20`) as the peer: from
//! the same starting history, in two namespaces, the object we leave behind
//! matches the one kubectl leaves behind.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rollback_core::{HumanDuration, Step};
use rollback_k8s::rollout::{RolloutUndo, RolloutUndoConfig};
use rollback_k8s::selector::{SwitchSelector, SwitchSelectorConfig};
use rollback_k8s::workload::{Restart, RestartConfig, RESTARTED_AT};
use serde_json::{json, Value};

async fn pair(test: &str) -> Option<(support::Cluster, support::Cluster)> {
    rollback_core::testing::require_env("KUBECTL_1_20")?;
    let ours = support::cluster(&format!("{test}-ours")).await?;
    let theirs = support::cluster(&format!("{test}-kubectl")).await?;
    Some((ours, theirs))
}

/// The same history in a namespace: web v1 -> v2 -> v3, with an annotation.
async fn history(c: &support::Cluster) {
    c.deployment(
        "web",
        "web:v1",
        2,
        &[],
        json!({"metadata": {"annotations": {"team": "shop"}}}),
    )
    .await;
    c.rolled_out("web").await;
    for v in ["web:v2", "web:v3"] {
        c.set_image("web", v).await;
        c.rolled_out("web").await;
    }
}

/// spec.template and the annotations of a rolled-out Deployment.
async fn essentials(c: &support::Cluster) -> (Value, BTreeMap<String, String>) {
    let d = c.rolled_out("web").await;
    (
        serde_json::to_value(&d.spec.template).unwrap(),
        d.metadata.annotations.unwrap_or_default(),
    )
}

fn undo(c: &support::Cluster, to: Option<i64>) -> RolloutUndo {
    let t = c.target();
    RolloutUndo::new(RolloutUndoConfig {
        deployment: "web".into(),
        to_revision: to,
        conflict_retries: 5,
        resource: None,
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_leaves_what_kubectl_rollout_undo_leaves() {
    let Some((ours, theirs)) = pair("peer-undo").await else {
        return;
    };
    history(&ours).await;
    history(&theirs).await;

    undo(&ours, None).run(&ours.ctx("undo")).await.unwrap();
    theirs
        .kubectl(&["rollout", "undo", "deployment/web"])
        .unwrap();
    let (t_ours, a_ours) = essentials(&ours).await;
    let (t_theirs, a_theirs) = essentials(&theirs).await;
    assert_eq!(t_ours, t_theirs, "spec.template after undo");
    assert_eq!(
        a_ours, a_theirs,
        "annotations after undo (revision included)"
    );
    assert_eq!(a_ours["deployment.kubernetes.io/revision"], "4");

    // And to an explicit revision.
    undo(&ours, Some(1)).run(&ours.ctx("undo")).await.unwrap();
    theirs
        .kubectl(&["rollout", "undo", "deployment/web", "--to-revision=1"])
        .unwrap();
    let (t_ours, a_ours) = essentials(&ours).await;
    let (t_theirs, a_theirs) = essentials(&theirs).await;
    assert_eq!(t_ours, t_theirs, "spec.template after undo --to-revision=1");
    assert_eq!(a_ours, a_theirs);
    assert_eq!(t_ours["spec"]["containers"][0]["image"], "web:v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_leaves_what_kubectl_rollout_restart_leaves() {
    let Some((ours, theirs)) = pair("peer-restart").await else {
        return;
    };
    history(&ours).await;
    history(&theirs).await;
    let t = ours.target();
    Restart::new(RestartConfig {
        resource: "deployment/web".into(),
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
    .run(&ours.ctx("restart"))
    .await
    .unwrap();
    theirs
        .kubectl(&["rollout", "restart", "deployment/web"])
        .unwrap();
    let (mut t_ours, a_ours) = essentials(&ours).await;
    let (mut t_theirs, a_theirs) = essentials(&theirs).await;
    // The timestamps differ by when each ran; the format must be kubectl's.
    for t in [&mut t_ours, &mut t_theirs] {
        let stamp = t["metadata"]["annotations"][RESTARTED_AT].take();
        let stamp = stamp.as_str().expect("restartedAt set");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert!(
            !stamp.contains('.'),
            "whole seconds, as time.RFC3339: {stamp}"
        );
    }
    assert_eq!(t_ours, t_theirs);
    assert_eq!(a_ours, a_theirs);
}

#[tokio::test(flavor = "multi_thread")]
async fn selector_switch_leaves_what_kubectl_patch_leaves() {
    let Some((ours, theirs)) = pair("peer-switch").await else {
        return;
    };
    for c in [&ours, &theirs] {
        c.deployment(
            "shop-blue",
            "shop:v1",
            1,
            &[("svc", "shop"), ("version", "blue")],
            json!({}),
        )
        .await;
        c.deployment(
            "shop-green",
            "shop:v2",
            1,
            &[("svc", "shop"), ("version", "green")],
            json!({}),
        )
        .await;
        c.rolled_out("shop-blue").await;
        c.service("shop", &[("svc", "shop"), ("version", "green")])
            .await;
    }
    let t = ours.target();
    SwitchSelector::new(SwitchSelectorConfig {
        service: "shop".into(),
        selector: BTreeMap::from([("version".to_string(), "blue".to_string())]),
        replace: false,
        min_ready: 1,
        timeout: HumanDuration(Duration::from_secs(30)),
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
    .run(&ours.ctx("switch"))
    .await
    .unwrap();
    theirs
        .kubectl(&[
            "patch",
            "service",
            "shop",
            "-p",
            r#"{"spec":{"selector":{"version":"blue"}}}"#,
        ])
        .unwrap();
    let mut s_ours = serde_json::to_value(ours.services().get("shop").await.unwrap().spec).unwrap();
    let mut s_theirs =
        serde_json::to_value(theirs.services().get("shop").await.unwrap().spec).unwrap();
    for s in [&mut s_ours, &mut s_theirs] {
        s["clusterIP"].take();
        s["clusterIPs"].take();
    }
    assert_eq!(s_ours, s_theirs);
}
