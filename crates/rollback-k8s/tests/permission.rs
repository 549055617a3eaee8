//! A 403 from the real API server, under RBAC, for an account that lacks a
//! grant: the plan lock and the steps say which verb on which resource in
//! which namespace is missing and the rule to add, instead of "locked", a
//! retry or an API dump.

mod support;

use std::time::Duration;

use rollback_core::error::{Error, LockHolder};
use rollback_core::{HumanDuration, PlanLocker, Step};
use rollback_k8s::rollout::{WaitRollout, WaitRolloutConfig};
use rollback_k8s::{Conn, LeaseLocker};
use serde_json::json;

fn holder() -> LockHolder {
    LockHolder {
        operator: "alice".into(),
        host: "runner-1".into(),
        pid: 1,
        since: "2026-12-01T10:00:00Z".into(),
        run_id: "r1".into(),
    }
}

async fn locker_as(c: &support::Cluster, account: &support::rbac::Account) -> LeaseLocker {
    let config = rollback_k8s::client::load_config(Some(&account.kubeconfig), None)
        .await
        .unwrap();
    let client = rollback_k8s::client::build_client(config).unwrap();
    LeaseLocker::new(
        Conn {
            client,
            namespace: c.ns.clone(),
        },
        Duration::from_secs(30),
    )
}

async fn lease_exists(c: &support::Cluster) -> bool {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(c.client.clone(), &c.ns);
    leases
        .get_opt("rollback-plan-orders")
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_the_account_may_not_read_is_a_permission_error_not_locked() {
    let Some(c) = support::cluster("lease-forbidden").await else {
        return;
    };
    let account = c.account("runner", json!([])).await;
    let err = locker_as(&c, &account)
        .await
        .lock("orders", &holder())
        .await
        .err()
        .expect("the lock is refused");
    let text = err.to_string();
    let Error::Permission { what, message } = err else {
        panic!("not a permission error: {text}");
    };
    assert!(what.contains("Lease rollback-plan-orders"), "{what}");
    assert!(what.contains(&format!("namespace {}", c.ns)), "{what}");
    assert!(
        message.contains("may not get, create, update leases (API group coordination.k8s.io)"),
        "{message}"
    );
    assert!(
        message.contains(&format!("in namespace {}", c.ns)),
        "{message}"
    );
    assert!(
        message.contains(r#"{apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get", "create", "update"]}"#),
        "{message}"
    );
    assert!(
        !text.contains("ErrorResponse") && !text.contains("Status {"),
        "{text}"
    );
    assert!(!lease_exists(&c).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_the_account_may_take_but_not_renew_is_refused_before_it_is_taken() {
    let Some(c) = support::cluster("lease-no-update").await else {
        return;
    };
    let rules = json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]}]);
    let account = c.account("runner", rules).await;
    let err = locker_as(&c, &account)
        .await
        .lock("orders", &holder())
        .await
        .err()
        .expect("the lock is refused");
    let Error::Permission { message, .. } = err else {
        panic!("not a permission error: {err}");
    };
    assert!(message.contains("may not update leases"), "{message}");
    assert!(
        !lease_exists(&c).await,
        "no Lease that would expire under the run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_roles_lease_rule_is_enough_to_take_and_release_the_lock() {
    let Some(c) = support::cluster("lease-granted").await else {
        return;
    };
    let rules = json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                        "verbs": ["get", "create", "update"]}]);
    let account = c.account("runner", rules).await;
    let locker = locker_as(&c, &account).await;
    let guard = locker.lock("orders", &holder()).await.unwrap();
    assert!(lease_exists(&c).await);
    let again = locker.lock("orders", &holder()).await.err().unwrap();
    assert!(matches!(again, Error::Locked { .. }), "{again}");
    guard.release().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_the_account_may_not_make_fails_the_step_at_once_naming_the_grant() {
    let Some(c) = support::cluster("watch-forbidden").await else {
        return;
    };
    c.deployment("web", "web:v1", 1, &[], json!({})).await;
    c.rolled_out("web").await;
    // A rollout that does not finish: the wait must watch.
    c.set_image("web", "web:bad").await;
    let rules =
        json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}]);
    let account = c.account("runner", rules).await;
    let wait = WaitRollout::new(WaitRolloutConfig {
        deployment: "web".into(),
        timeout: HumanDuration(Duration::from_secs(60)),
        namespace: Some(c.ns.clone()),
        context: None,
        kubeconfig: Some(account.kubeconfig.clone()),
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = wait.run(&c.ctx("wait")).await.unwrap_err();
    let msg = err.message().to_string();
    assert!(!err.is_retryable(), "a missing grant does not heal: {msg}");
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        msg.contains(&format!(
            "may not watch deployments (API group apps) in namespace {}",
            c.ns
        )),
        "{msg}"
    );
    assert!(
        msg.contains(r#"verbs: ["watch"]"#),
        "the rule to add: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not waited out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_account_may_not_make_names_the_verb_resource_and_namespace() {
    let Some(c) = support::cluster("step-forbidden").await else {
        return;
    };
    c.deployment("web", "web:v1", 1, &[], json!({})).await;
    c.rolled_out("web").await;
    let account = c.account("runner", json!([])).await;
    let wait = WaitRollout::new(WaitRolloutConfig {
        deployment: "web".into(),
        timeout: HumanDuration(Duration::from_secs(60)),
        namespace: Some(c.ns.clone()),
        context: None,
        kubeconfig: Some(account.kubeconfig.clone()),
    })
    .unwrap();
    let err = wait.run(&c.ctx("wait")).await.unwrap_err();
    let msg = err.message().to_string();
    assert!(!err.is_retryable(), "{msg}");
    assert!(
        msg.contains(&format!(
            "system:serviceaccount:{}:runner may not get deployments (API group apps) in namespace {}",
            c.ns, c.ns
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("check the name"),
        "not reported as missing: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_the_account_may_not_watch_fail_the_switch_naming_the_grant() {
    let Some(c) = support::cluster("switch-forbidden").await else {
        return;
    };
    for version in ["blue", "green"] {
        let name = format!("shop-{version}");
        let labels = [("svc", "shop"), ("version", version)];
        c.deployment(&name, "shop:v1", 1, &labels, json!({})).await;
        c.rolled_out(&name).await;
    }
    c.service("shop", &[("svc", "shop"), ("version", "green")])
        .await;
    // All a switch needs but watching Endpoints.
    let rules = json!([
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}
    ]);
    let account = c.account("runner", rules).await;
    let switch =
        rollback_k8s::selector::SwitchSelector::new(rollback_k8s::selector::SwitchSelectorConfig {
            service: "shop".into(),
            selector: [("version".to_string(), "blue".to_string())].into(),
            replace: false,
            min_ready: 1,
            timeout: HumanDuration(Duration::from_secs(60)),
            namespace: Some(c.ns.clone()),
            context: None,
            kubeconfig: Some(account.kubeconfig.clone()),
        })
        .unwrap();
    let started = std::time::Instant::now();
    let err = switch.run(&c.ctx("switch")).await.unwrap_err();
    let msg = err.message().to_string();
    assert!(!err.is_retryable(), "a missing grant does not heal: {msg}");
    assert!(
        msg.contains(&format!(
            "may not watch endpoints (the core API group) in namespace {}",
            c.ns
        )),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not waited out"
    );
}
