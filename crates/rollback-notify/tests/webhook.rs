//! The `webhook` notifier against a recording HTTP server: the body is the
//! event as JSON, the signature header is HMAC-SHA256 of the body under the
//! shared secret (checked here with an independent computation), retries
//! keep the delivery id.

mod support;

use std::time::Duration;

use hmac::{Hmac, Mac};
use rollback_core::RunStatus;
use sha2::Sha256;
use support::{assert_not_in_state, event_names, Fixture, Reply, Server};

const SECRET: &str = "whsec-5b8f0c1e-not-real";

fn plan(fx: &Fixture, name: &str, url: &str, retries: u32) -> String {
    let secret_ref = fx.secret("webhook-secret", SECRET);
    format!(
        r##"
name: {name}
steps:
  - id: a
    kind: exec
    argv: ["true"]
notify:
  - kind: webhook
    url: {url}/hooks/rollback
    secret: "{secret_ref}"
    events: [run_started, run_finished]
    timeout: 10s
    retries: {retries}
"##
    )
}

/// The receiver's side: verify `sha256=<hex>` over the raw body.
fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[tokio::test]
async fn events_arrive_signed() {
    let server = Server::start(|_| Reply::json(204, serde_json::json!({}))).await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "webhook-signed", &server.url, 0)),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for (r, class) in requests.iter().zip(["run_started", "run_finished"]) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/rollback");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-rollback-event"), Some(class));
        assert_eq!(r.header("x-rollback-run"), Some(report.run.run_id.as_str()));
        assert_eq!(r.header("x-rollback-delivery").map(str::len), Some(24));
        let signature = r.header("x-rollback-signature").expect("signed");
        assert!(
            verify(SECRET.as_bytes(), &r.body, signature),
            "bad signature {signature}"
        );
        assert!(!verify(b"another secret", &r.body, signature));
        let body = r.json();
        assert_eq!(body["type"], class);
        assert_eq!(body["event"]["event"], class);
        assert_eq!(body["run"]["run_id"], report.run.run_id.as_str());
        assert_eq!(body["run"]["operator"], "alice");
        assert_eq!(body["run"]["reason"], "5xx spike after 2.4.1");
        assert!(body["sent_at"].is_string());
    }
    assert_eq!(requests[1].json()["event"]["status"], "succeeded");
    assert_not_in_state(&fx, SECRET);
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_delivery_id() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = calls.clone();
    let server = Server::start(move |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::json(503, serde_json::json!({"error": "busy"}))
        } else {
            Reply::json(200, serde_json::json!({}))
        }
    })
    .await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "webhook-retry", &server.url, 2)),
            Duration::from_secs(20),
        )
        .await;
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        3,
        "run_started twice (503, then 200), run_finished once"
    );
    assert_eq!(
        requests[0].header("x-rollback-delivery"),
        requests[1].header("x-rollback-delivery")
    );
    assert_ne!(
        requests[1].header("x-rollback-delivery"),
        requests[2].header("x-rollback-delivery")
    );
    let journal = fx.journal(&report.run.run_id);
    assert!(!event_names(&journal).contains(&"notification_failed".to_string()));
}

#[tokio::test]
async fn a_refusal_is_journaled() {
    let server =
        Server::start(|_| Reply::json(401, serde_json::json!({"error": "bad signature"}))).await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "webhook-401", &server.url, 0)),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let journal = fx.journal(&report.run.run_id);
    let failure = journal
        .iter()
        .find(|r| r["event"] == "notification_failed")
        .expect("journaled");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("check the secret on both sides"), "{error}");
    assert_not_in_state(&fx, SECRET);
}
