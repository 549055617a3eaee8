//! The `slack` notifier against the Slack Web API stand-in, driven by real
//! plan runs: the exact requests, the message updated in place with replies
//! in its thread, 429 Retry-After, and errors journaled without the token.

mod support;

use std::time::Duration;

use rollback_core::RunStatus;
use support::{assert_not_in_state, event_names, Fixture, SlackStandIn, DEPLOYMENTS};

const TOKEN: &str = "xoxb-1111-2222-notarealtoken";

fn plan(
    fx: &Fixture,
    name: &str,
    api_url: &str,
    channel: &str,
    token: &str,
    events: &str,
    fail: bool,
) -> String {
    let token_ref = fx.secret("slack-token", token);
    let second = if fail { "false" } else { "true" };
    format!(
        r##"
name: {name}
budget: 5m
vars:
  service: orders
steps:
  - id: record_state
    kind: exec
    argv: ["true"]
  - id: restart
    kind: exec
    after: [record_state]
    argv: ["{second}"]
notify:
  - kind: slack
    channel: "{channel}"
    token: "{token_ref}"
    api_url: {api_url}
    events: {events}
    timeout: 10s
    retries: 0
"##
    )
}

fn field<'a>(body: &'a serde_json::Value, title: &str) -> &'a str {
    body["attachments"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["title"] == title)
        .unwrap_or_else(|| panic!("no field {title} in {body}"))["value"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn one_message_per_run_updated_in_place_with_a_thread() {
    let slack = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-thread",
        &slack.api_url(),
        "#deployments",
        TOKEN,
        "[run_started, step_failed, run_finished]",
        true,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(report.status, Some(RunStatus::StepFailed));

    let requests = slack.server.requests();
    let calls: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST", "/api/chat.postMessage"), // run_started: the message
            ("POST", "/api/chat.update"),      // step_failed: update ...
            ("POST", "/api/chat.postMessage"), // ... and a reply in the thread
            ("POST", "/api/chat.update"),      // run_finished: update ...
            ("POST", "/api/chat.postMessage"), // ... and a reply
        ]
    );
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{:?}",
            r.headers
        );
    }

    // The first message: channel as configured, facts, blue while running.
    let first = requests[0].json();
    assert_eq!(first["channel"], "#deployments");
    assert!(first.get("thread_ts").is_none());
    assert_eq!(
        first["text"],
        "Rollback of orders: running (5xx spike after 2.4.1)"
    );
    assert_eq!(first["attachments"][0]["color"], "#1d9bd1");
    assert_eq!(field(&first, "Service"), "orders");
    assert_eq!(field(&first, "Plan"), "slack-thread");
    assert_eq!(field(&first, "Reason"), "5xx spike after 2.4.1");
    assert_eq!(field(&first, "Operator"), "alice");
    assert_eq!(field(&first, "Status"), "running");
    assert!(field(&first, "Duration").contains("of a 5m budget"));
    assert!(field(&first, "Run").starts_with(&report.run.run_id));

    // Updates address the message by channel id and ts from the answer.
    let state = slack.state.lock().unwrap();
    let parents = state.parents();
    assert_eq!(parents.len(), 1);
    let parent = &parents[0];
    assert_eq!(parent.edits, 2);
    let update = requests[1].json();
    assert_eq!(update["channel"], DEPLOYMENTS);
    assert_eq!(update["ts"], parent.ts.as_str());
    assert_eq!(field(&update, "Status"), "step failed");
    assert_eq!(update["attachments"][0]["color"], "#e01e5a");

    let replies = state.replies(&parent.ts);
    assert_eq!(replies.len(), 2);
    let failed = replies[0].text.as_deref().unwrap();
    assert!(
        failed.starts_with(":warning: step restart failed after 1 attempt"),
        "{failed}"
    );
    let finished = replies[1].text.as_deref().unwrap();
    assert!(
        finished.starts_with(":x: run finished: failed in "),
        "{finished}"
    );

    // The message's final state: failed, red, duration against the budget.
    let last = requests[3].json();
    assert_eq!(field(&last, "Status"), "failed");
    assert_eq!(last["attachments"][0]["color"], "#e01e5a");
    drop(state);

    let journal = fx.journal(&report.run.run_id);
    assert!(!event_names(&journal).contains(&"notification_failed".to_string()));
    assert_not_in_state(&fx, TOKEN);
}

#[tokio::test]
async fn each_run_gets_its_own_message() {
    let slack = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-two-runs",
        &slack.api_url(),
        DEPLOYMENTS,
        TOKEN,
        "[run_started, run_finished]",
        false,
    );
    let plan = fx.plan(&yaml);
    let first = fx.run(&plan, Duration::from_secs(20)).await;
    let second = fx.run(&plan, Duration::from_secs(20)).await;
    assert_ne!(first.run.run_id, second.run.run_id);

    let state = slack.state.lock().unwrap();
    let parents = state.parents();
    assert_eq!(parents.len(), 2, "{:?}", state.messages);
    for (parent, report) in parents.iter().zip([&first, &second]) {
        assert_eq!(parent.edits, 1);
        assert_eq!(parent.attachments[0]["color"], "#2eb67d");
        let run_field = parent.attachments[0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["title"] == "Run")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(run_field.starts_with(&report.run.run_id));
        let replies = state.replies(&parent.ts);
        assert_eq!(replies.len(), 1);
        assert!(replies[0]
            .text
            .as_deref()
            .unwrap()
            .starts_with(":white_check_mark: run finished: succeeded"));
    }
}

#[tokio::test]
async fn a_429_is_waited_out_as_retry_after_says() {
    let slack = SlackStandIn::start(TOKEN).await;
    {
        let mut s = slack.state.lock().unwrap();
        s.rate_limit_next = 1;
        s.retry_after_secs = 1;
    }
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-429",
        &slack.api_url(),
        "#deployments",
        TOKEN,
        "[run_started]",
        false,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));

    let requests = slack.server.requests();
    assert_eq!(
        requests.len(),
        2,
        "one refused with 429, then the same request again"
    );
    assert_eq!(requests[0].body, requests[1].body);
    assert!(
        requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(1),
        "the retry came before Retry-After"
    );
    assert_eq!(slack.state.lock().unwrap().parents().len(), 1);
    let journal = fx.journal(&report.run.run_id);
    assert!(!event_names(&journal).contains(&"notification_failed".to_string()));
}

#[tokio::test]
async fn a_refused_token_is_journaled_without_the_token() {
    let slack = SlackStandIn::start("xoxb-the-right-one").await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-invalid-auth",
        &slack.api_url(),
        "#deployments",
        TOKEN,
        "[run_started]",
        false,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(
        report.status,
        Some(RunStatus::Succeeded),
        "a notifier never fails a run"
    );

    let journal = fx.journal(&report.run.run_id);
    let failure = journal
        .iter()
        .find(|r| r["event"] == "notification_failed")
        .expect("the failure is journaled");
    assert_eq!(failure["notifier"], "Slack channel #deployments");
    assert_eq!(failure["about"], "run_started");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("invalid_auth"), "{error}");
    assert!(error.contains("check the token"), "{error}");
    // The request carried the token; nothing the engine wrote does.
    assert_eq!(
        slack.server.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_not_in_state(&fx, TOKEN);
}

#[tokio::test]
async fn an_unknown_channel_says_what_to_do() {
    let slack = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-no-channel",
        &slack.api_url(),
        "#nowhere",
        TOKEN,
        "[run_started]",
        false,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    let journal = fx.journal(&report.run.run_id);
    let failure = journal
        .iter()
        .find(|r| r["event"] == "notification_failed")
        .expect("the failure is journaled");
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains("channel `#nowhere` not found (channel_not_found)"),
        "{error}"
    );
    assert!(error.contains("invite the bot"), "{error}");
}

#[test]
fn a_literal_token_in_the_plan_is_refused_at_load() {
    let fx = Fixture::new();
    let yaml = r##"
name: literal
steps:
  - id: a
    kind: exec
    argv: ["true"]
notify:
  - kind: slack
    channel: "#deployments"
    token: xoxb-literal
"##;
    let err = rollback_core::Plan::from_yaml(
        yaml,
        "test.yaml",
        &Fixture::registry(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    drop(fx);
    assert!(err.contains("notify[0].token"), "{err}");
    assert!(err.contains("${env:SLACK_TOKEN}"), "{err}");
    assert!(!err.contains("xoxb-literal"), "{err}");
}

#[tokio::test]
async fn step_finished_replies_in_the_thread_and_updates_the_message() {
    let slack = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-progress",
        &slack.api_url(),
        "#deployments",
        TOKEN,
        "[run_started, step_finished, run_finished]",
        false,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));

    let requests = slack.server.requests();
    let calls: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        calls,
        [
            "/api/chat.postMessage", // run_started: the message
            "/api/chat.update",      // record_state finished: update ...
            "/api/chat.postMessage", // ... and a reply
            "/api/chat.update",      // restart finished
            "/api/chat.postMessage",
            "/api/chat.update", // run_finished
            "/api/chat.postMessage",
        ]
    );
    // The message shows how far the steps got after each one.
    let first = requests[0].json();
    assert!(
        first["attachments"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["title"] != "Steps"),
        "no step finished yet: {first}"
    );
    let after_first = requests[1].json();
    assert_eq!(
        field(&after_first, "Steps"),
        "1 of 2 steps done (record_state)"
    );
    assert_eq!(field(&after_first, "Status"), "running");
    assert_eq!(after_first["attachments"][0]["color"], "#1d9bd1");
    let after_second = requests[3].json();
    assert_eq!(
        field(&after_second, "Steps"),
        "2 of 2 steps done (record_state, restart)"
    );
    let last = requests[5].json();
    assert_eq!(field(&last, "Status"), "succeeded");
    assert_eq!(last["attachments"][0]["color"], "#2eb67d");

    let state = slack.state.lock().unwrap();
    let parents = state.parents();
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0].edits, 3);
    let replies: Vec<String> = state
        .replies(&parents[0].ts)
        .into_iter()
        .map(|m| m.text.unwrap())
        .collect();
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(
        replies[0].starts_with(":heavy_check_mark: step record_state succeeded after 1 attempt"),
        "{replies:?}"
    );
    assert!(
        replies[1].starts_with(":heavy_check_mark: step restart succeeded after 1 attempt"),
        "{replies:?}"
    );
    assert!(
        replies[2].starts_with(":white_check_mark: run finished: succeeded"),
        "{replies:?}"
    );
    drop(state);
    let journal = fx.journal(&report.run.run_id);
    assert!(!event_names(&journal).contains(&"notification_failed".to_string()));
}

#[tokio::test]
async fn a_failed_step_is_one_reply_when_both_step_classes_are_asked_for() {
    let slack = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let yaml = plan(
        &fx,
        "slack-progress-failed",
        &slack.api_url(),
        "#deployments",
        TOKEN,
        "[step_finished, step_failed]",
        true,
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    let state = slack.state.lock().unwrap();
    let parents = state.parents();
    assert_eq!(parents.len(), 1, "{:?}", state.messages);
    let fields = parents[0].attachments[0]["fields"].as_array().unwrap();
    let steps = fields.iter().find(|f| f["title"] == "Steps").unwrap()["value"]
        .as_str()
        .unwrap();
    // Without run_started the notifier does not know how many steps there are.
    assert_eq!(steps, "1 step done (record_state); failed: restart");
    let replies: Vec<String> = state
        .replies(&parents[0].ts)
        .into_iter()
        .map(|m| m.text.unwrap())
        .collect();
    // record_state's event posted the message (and its reply); restart's
    // failure arrives once although it is in both classes.
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].starts_with(":heavy_check_mark: step record_state succeeded"));
    assert!(replies[1].starts_with(":warning: step restart failed after 1 attempt"));
}
