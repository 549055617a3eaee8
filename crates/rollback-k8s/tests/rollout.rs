//! `k8s.rollout_undo` and `k8s.wait_rollout` against the real control plane.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, Patch, PatchParams};
use rollback_core::{HumanDuration, Step};
use rollback_k8s::rollout::{
    plan_undo, revision_of, RolloutUndo, RolloutUndoConfig, WaitRollout, WaitRolloutConfig,
};
use serde_json::json;

fn undo_step(c: &support::Cluster, name: &str, to_revision: Option<i64>) -> RolloutUndo {
    let t = c.target();
    RolloutUndo::new(RolloutUndoConfig {
        deployment: name.into(),
        to_revision,
        conflict_retries: 5,
        resource: None,
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
}

fn wait_step(c: &support::Cluster, name: &str, timeout: Duration) -> WaitRollout {
    let t = c.target();
    WaitRollout::new(WaitRolloutConfig {
        deployment: name.into(),
        timeout: HumanDuration(timeout),
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap()
}

/// web: revision 1 = v1, 2 = v2, 3 = v3 (as many as `images`).
async fn history(c: &support::Cluster, name: &str, images: &[&str], extra: serde_json::Value) {
    c.deployment(name, images[0], 2, &[], extra).await;
    c.rolled_out(name).await;
    for image in &images[1..] {
        c.set_image(name, image).await;
        c.rolled_out(name).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_goes_to_the_previous_revision_and_records_an_event() {
    let Some(c) = support::cluster("undo-prev").await else {
        return;
    };
    history(&c, "web", &["web:v1", "web:v2"], json!({})).await;

    let step = undo_step(&c, "web", None);
    let preview = step.preview(&c.ctx("undo")).await.unwrap();
    assert_eq!(preview.changes.len(), 1, "{preview:?}");
    let out = step.run(&c.ctx("undo")).await.unwrap();
    assert_eq!(out["from_revision"], json!(2));
    assert_eq!(out["to_revision"], json!(1));
    assert_eq!(out["skipped"], json!(false));
    assert_eq!(c.image("web").await, "web:v1");

    let wait = wait_step(&c, "web", Duration::from_secs(60));
    let out = wait.run(&c.ctx("wait")).await.unwrap();
    assert_eq!(
        out["revision"],
        json!(3),
        "kubectl's undo makes the old template revision 3"
    );
    assert_eq!(out["available_replicas"], json!(2));

    let events = c.events_on("web").await;
    let ours = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("RolledBack"))
        .expect("a RolledBack event on the deployment");
    let note = ours.note.clone().unwrap();
    assert!(note.contains("from revision 2 to revision 1"), "{note}");
    assert!(note.contains("standalone"), "names the reason: {note}");
    assert_eq!(
        ours.regarding.as_ref().unwrap().kind.as_deref(),
        Some("Deployment")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_to_a_given_revision_and_again_is_a_no_op() {
    let Some(c) = support::cluster("undo-to").await else {
        return;
    };
    history(&c, "web", &["web:v1", "web:v2", "web:v3"], json!({})).await;

    let ctx = c.ctx("undo");
    let out = undo_step(&c, "web", Some(1)).run(&ctx).await.unwrap();
    assert_eq!(out["to_revision"], json!(1));
    assert_eq!(c.image("web").await, "web:v1");
    c.rolled_out("web").await;

    // Running the same step again (a resume after a crash) does not flip back.
    let again = undo_step(&c, "web", None).run(&ctx).await.unwrap();
    assert_eq!(again["skipped"], json!(true), "{again:?}");
    assert_eq!(c.image("web").await, "web:v1");

    // Undo (compensation) returns to revision 3's template.
    undo_step(&c, "web", Some(1))
        .undo(&c.ctx("undo"), &out)
        .await
        .unwrap();
    assert_eq!(c.image("web").await, "web:v3");
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_to_a_revision_that_no_longer_exists_names_the_kept_ones() {
    let Some(c) = support::cluster("undo-gone").await else {
        return;
    };
    history(
        &c,
        "web",
        &["web:v1", "web:v2", "web:v3"],
        json!({"spec": {"revisionHistoryLimit": 1}}),
    )
    .await;
    let rs: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let kept = || async {
        let mut revs: Vec<i64> = rs
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .filter_map(|r| revision_of(&r.metadata))
            .collect();
        revs.sort();
        revs
    };
    support::eventually("old ReplicaSets pruned to revisionHistoryLimit", || async {
        kept().await.len() == 2
    })
    .await;
    // The controller prunes by creation time (one-second resolution, ties by
    // name), so either revision 1 or 2 is gone.
    let kept = kept().await;
    let gone = if kept.contains(&1) { 2 } else { 1 };

    let err = undo_step(&c, "web", Some(gone))
        .run(&c.ctx("undo"))
        .await
        .unwrap_err();
    let msg = err.message().to_string();
    assert!(
        msg.contains(&format!("unable to find revision {gone}")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("keeps revisions {}, 3", kept[0])),
        "{msg}"
    );
    assert!(msg.contains("revisionHistoryLimit 1"), "{msg}");
    assert!(!err.is_retryable());
    assert_eq!(c.image("web").await, "web:v3", "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_refuses_a_paused_deployment() {
    let Some(c) = support::cluster("undo-paused").await else {
        return;
    };
    history(&c, "web", &["web:v1", "web:v2"], json!({})).await;
    c.deployments()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    let err = undo_step(&c, "web", None)
        .run(&c.ctx("undo"))
        .await
        .unwrap_err();
    assert!(err.message().contains("paused"), "{}", err.message());
    assert_eq!(c.image("web").await, "web:v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_edit_is_detected_and_the_undo_retried() {
    let Some(c) = support::cluster("undo-conflict").await else {
        return;
    };
    history(&c, "web", &["web:v1", "web:v2"], json!({})).await;
    let conn = c.conn();

    // The guard: a patch computed from a stale read is refused as a conflict.
    let stale = c.deployments().get("web").await.unwrap();
    let plan = plan_undo(&conn, &stale, None).await.unwrap();
    c.deployments()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"team": "payments"}}})),
        )
        .await
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_value(plan.patch.clone()).unwrap();
    let err = c
        .deployments()
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .unwrap_err();
    assert!(rollback_k8s::client::is_conflict(&err), "{err:?}");
    assert_eq!(
        c.image("web").await,
        "web:v2",
        "the stale patch changed nothing"
    );

    // The retry: a writer edits the Deployment between our read and our patch.
    let writer = c.deployments();
    let hook = move |attempt: u32| {
        let writer = writer.clone();
        Box::pin(async move {
            if attempt == 0 {
                writer
                    .patch(
                        "web",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": {"team": "checkout"}}})),
                    )
                    .await
                    .unwrap();
            }
        }) as futures::future::BoxFuture<'static, ()>
    };
    let done = rollback_k8s::rollout::undo_deployment_with(&conn, "web", None, 5, &hook)
        .await
        .unwrap();
    assert!(
        done.conflicts >= 1,
        "the edit between read and patch was retried"
    );
    assert_eq!(c.image("web").await, "web:v1");
    let d = c.deployments().get("web").await.unwrap();
    // The Deployment keeps its own revision annotation (never the restored
    // ReplicaSet's 1); the controller may already have bumped it to 3.
    let revision = revision_of(&d.metadata);
    assert!(
        matches!(revision, Some(2 | 3)),
        "revision annotation kept until the controller bumps it, got {revision:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_that_never_becomes_available_fails_at_its_deadline_with_the_reason() {
    let Some(c) = support::cluster("wait-deadline").await else {
        return;
    };
    history(
        &c,
        "web",
        &["web:v1"],
        json!({"spec": {"progressDeadlineSeconds": 2}}),
    )
    .await;
    c.set_image("web", "web:bad").await;
    let err = wait_step(&c, "web", Duration::from_secs(90))
        .run(&c.ctx("wait"))
        .await
        .unwrap_err();
    let msg = err.message().to_string();
    assert!(msg.contains("ProgressDeadlineExceeded"), "{msg}");
    assert!(
        msg.contains("has timed out progressing"),
        "the condition's message: {msg}"
    );

    // Rolling back and waiting again succeeds: the deadline condition the
    // controller keeps (it names the timed-out ReplicaSet) is a leftover.
    undo_step(&c, "web", None)
        .run(&c.ctx("undo"))
        .await
        .unwrap();
    if let Err(e) = wait_step(&c, "web", Duration::from_secs(60))
        .run(&c.ctx("wait"))
        .await
    {
        let rs: Api<ReplicaSet> = Api::namespaced(c.client.clone(), &c.ns);
        let image = |r: &ReplicaSet| {
            let pod = r.spec.template.as_ref().and_then(|t| t.spec.as_ref());
            pod.and_then(|p| p.containers[0].image.clone())
        };
        let target = rs
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|r| image(r).as_deref() == Some("web:v1"))
            .and_then(|r| r.metadata.name);
        panic!(
            "the wait after the undo failed: {}; the undo went to ReplicaSet {target:?}",
            e.message()
        );
    }
    assert_eq!(c.image("web").await, "web:v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_rollout_times_out_with_what_it_waited_for() {
    let Some(c) = support::cluster("wait-timeout").await else {
        return;
    };
    history(&c, "web", &["web:v1"], json!({})).await;
    c.set_image("web", "web:bad").await;
    let err = wait_step(&c, "web", Duration::from_secs(2))
        .run(&c.ctx("wait"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("timed out after 2s"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("rollout to finish"),
        "{}",
        err.message()
    );
}

/// A StatefulSet `db` on `image`, waited until its pods run the update.
async fn statefulset_history(c: &support::Cluster, images: &[&str]) {
    let sts: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let spec = json!({
        "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "db", "image": images[0]}]}}}
    });
    sts.create(&Default::default(), &serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
    for (i, image) in images.iter().enumerate() {
        if i > 0 {
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "db", "image": image}]}}}});
            sts.patch("db", &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .unwrap();
        }
        support::eventually("the statefulset rolled out", || async {
            let s = sts.get("db").await.unwrap();
            let st = s.status.unwrap_or_default();
            st.observed_generation == s.metadata.generation
                && st.update_revision.is_some()
                && st.current_revision == st.update_revision
                && st.ready_replicas == Some(1)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_undo_goes_through_controller_revisions_like_kubectl() {
    let Some(c) = support::cluster("sts-undo").await else {
        return;
    };
    statefulset_history(&c, &["db:v1", "db:v2"]).await;
    let t = c.target();
    let step = RolloutUndo::new(RolloutUndoConfig {
        deployment: String::new(),
        resource: Some("statefulset/db".into()),
        to_revision: None,
        conflict_retries: 5,
        namespace: t.namespace,
        context: None,
        kubeconfig: t.kubeconfig,
    })
    .unwrap();
    let out = step.run(&c.ctx("undo")).await.unwrap();
    assert_eq!(
        (out["from_revision"].clone(), out["to_revision"].clone()),
        (json!(2), json!(1))
    );
    let sts: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let ours = sts.get("db").await.unwrap();
    assert_eq!(
        ours.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("db:v1")
    );
    assert!(c
        .events_on("db")
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("RolledBack")));

    // kubectl from the same history leaves the same template.
    if let Some(peer) = support::cluster("sts-undo-kubectl")
        .await
        .filter(|_| std::env::var("KUBECTL_1_20").is_ok())
    {
        statefulset_history(&peer, &["db:v1", "db:v2"]).await;
        peer.kubectl(&["rollout", "undo", "statefulset/db"])
            .unwrap();
        let theirs: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> =
            kube::Api::namespaced(peer.client.clone(), &peer.ns);
        let theirs = theirs.get("db").await.unwrap();
        assert_eq!(
            serde_json::to_value(&ours.spec.template).unwrap(),
            serde_json::to_value(&theirs.spec.template).unwrap()
        );
    }
    // A revision that is not kept.
    let err = RolloutUndo::new(RolloutUndoConfig {
        deployment: String::new(),
        resource: Some("statefulset/db".into()),
        to_revision: Some(9),
        conflict_retries: 5,
        namespace: Some(c.ns.clone()),
        context: None,
        kubeconfig: Some(c.kubeconfig.clone()),
    })
    .unwrap()
    .run(&c.ctx("undo"))
    .await
    .unwrap_err();
    assert!(
        err.message().contains("unable to find revision 9"),
        "{}",
        err.message()
    );
}

/// A DaemonSet `agent` whose template went through `images`, with one
/// ControllerRevision per image.
async fn daemonset_history(c: &support::Cluster, images: &[&str]) {
    let ds: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let revisions: kube::Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let spec = json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "agent", "image": images[0]}]}}}
    });
    ds.create(&Default::default(), &serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
    for (i, image) in images.iter().enumerate() {
        if i > 0 {
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": image}]}}}});
            ds.patch("agent", &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .unwrap();
        }
        support::eventually("the daemonset's controller revision", || async {
            let d = ds.get("agent").await.unwrap();
            let observed = d.status.as_ref().and_then(|s| s.observed_generation);
            let kept = revisions
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|r| {
                    r.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "DaemonSet" && o.name == "agent")
                })
                .count();
            observed == d.metadata.generation && kept == i + 1
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_undo_goes_through_controller_revisions_like_kubectl() {
    let Some(c) = support::cluster("ds-undo").await else {
        return;
    };
    daemonset_history(&c, &["agent:v1", "agent:v2"]).await;
    let undo = |to_revision: Option<i64>| {
        let t = c.target();
        RolloutUndo::new(RolloutUndoConfig {
            deployment: String::new(),
            resource: Some("daemonset/agent".into()),
            to_revision,
            conflict_retries: 5,
            namespace: t.namespace,
            context: None,
            kubeconfig: t.kubeconfig,
        })
        .unwrap()
    };
    let out = undo(None).run(&c.ctx("undo")).await.unwrap();
    assert_eq!(
        (out["from_revision"].clone(), out["to_revision"].clone()),
        (json!(2), json!(1))
    );
    let ds: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    let ours = ds.get("agent").await.unwrap();
    assert_eq!(
        ours.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("agent:v1")
    );
    assert!(c
        .events_on("agent")
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("RolledBack")));

    // kubectl from the same history leaves the same template.
    if let Some(peer) = support::cluster("ds-undo-kubectl")
        .await
        .filter(|_| std::env::var("KUBECTL_1_20").is_ok())
    {
        daemonset_history(&peer, &["agent:v1", "agent:v2"]).await;
        peer.kubectl(&["rollout", "undo", "daemonset/agent"])
            .unwrap();
        let theirs: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
            kube::Api::namespaced(peer.client.clone(), &peer.ns);
        let theirs = theirs.get("agent").await.unwrap();
        assert_eq!(
            serde_json::to_value(&ours.spec.template).unwrap(),
            serde_json::to_value(&theirs.spec.template).unwrap()
        );
    }
    // A revision that is not kept.
    let err = undo(Some(9)).run(&c.ctx("undo")).await.unwrap_err();
    assert!(
        err.message().contains("unable to find revision 9"),
        "{}",
        err.message()
    );
}
