//! Notifiers whose endpoint accepts the connection and never answers do not
//! hold a run back: the run finishes first, and each notifier's timeout is
//! journaled afterwards as `notification_failed`.

mod support;

use std::time::Duration;

use rollback_core::RunStatus;
use support::{assert_not_in_state, event_names, Fixture, Silent};

#[tokio::test]
async fn a_notifier_that_never_answers_does_not_hold_the_run_back() {
    let silent = Silent::start().await;
    let fx = Fixture::new();
    let token = fx.secret("slack-token", "xoxb-hung-endpoint-token");
    let secret = fx.secret("webhook-secret", "whsec-hung-endpoint-secret");
    let yaml = format!(
        r##"
name: hung-endpoint
steps:
  - id: record_state
    kind: exec
    argv: [sleep, "0.3"]
  - id: restart
    kind: exec
    after: [record_state]
    argv: [sleep, "0.3"]
notify:
  - kind: slack
    channel: "#deployments"
    token: "{token}"
    api_url: {url}/api
    events: [run_started]
    timeout: 2s
    retries: 0
  - kind: webhook
    url: {url}/hook
    secret: "{secret}"
    events: [run_started]
    timeout: 2s
    retries: 0
"##,
        url = silent.url
    );
    // The same steps without notifiers: how long the run takes on its own.
    let bare_yaml =
        yaml[..yaml.find("notify:").unwrap()].replace("hung-endpoint", "hung-endpoint-bare");
    let executor = fx.executor();
    let bare = executor
        .run(
            &fx.plan(&bare_yaml),
            rollback_core::RunOptions::new("baseline"),
        )
        .await
        .unwrap();
    assert_eq!(bare.status, Some(RunStatus::Succeeded));

    let plan = fx.plan(&yaml);
    let report = executor
        .run(&plan, rollback_core::RunOptions::new("hung endpoint test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    // The start goes to two endpoints that never answer within their 2s
    // timeout; the run still takes about what it takes without them.
    let (with, without) = (report.duration_ms.unwrap(), bare.duration_ms.unwrap());
    assert!(
        with < without + 1000,
        "the run took {with} ms with hung notifiers, {without} ms without"
    );
    assert!(
        report.notification_failures.is_empty(),
        "the run returned before the notifiers' timeouts"
    );
    executor.flush_notifications(Duration::from_secs(20)).await;
    assert!(silent.connections() >= 2, "both notifiers tried to deliver");

    let journal = fx.journal(&report.run.run_id);
    let names = event_names(&journal);
    let finished = names.iter().position(|n| n == "run_finished").unwrap();
    let failures: Vec<(usize, &serde_json::Value)> = journal
        .iter()
        .enumerate()
        .filter(|(_, r)| r["event"] == "notification_failed")
        .collect();
    assert_eq!(failures.len(), 2, "{names:?}");
    let mut notifiers = Vec::new();
    for (i, record) in failures {
        assert!(i > finished, "journaled after the run finished: {names:?}");
        assert_eq!(record["about"], "run_started");
        assert_eq!(record["error"], "no answer within 2s");
        notifiers.push(record["notifier"].as_str().unwrap().to_string());
    }
    notifiers.sort();
    assert_eq!(
        notifiers,
        [
            "Slack channel #deployments".to_string(),
            format!("webhook {}/hook", silent.url)
        ]
    );
    assert_not_in_state(&fx, "xoxb-hung-endpoint-token");
    assert_not_in_state(&fx, "whsec-hung-endpoint-secret");
}
