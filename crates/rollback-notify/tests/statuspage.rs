//! The `statuspage` notifier against the Statuspage API stand-in, driven by
//! real plan runs: an incident opened at the start, updated when a step
//! fails, resolved only when the run succeeded; the exact requests; 401 and
//! 429 answers.

mod support;

use std::time::Duration;

use rollback_core::RunStatus;
use support::{assert_not_in_state, event_names, Fixture, StatuspageStandIn};

const KEY: &str = "sp-key-89a229b4-not-real";
const PAGE: &str = "kctbh9vrtdwd";

fn plan(fx: &Fixture, name: &str, api_url: &str, key: &str, fail: bool) -> String {
    let key_ref = fx.secret("statuspage-key", key);
    let last = if fail { "false" } else { "true" };
    format!(
        r##"
name: {name}
vars:
  service: orders
steps:
  - id: undo
    kind: exec
    argv: ["true"]
  - id: migrate_down
    kind: exec
    after: [undo]
    argv: ["{last}"]
notify:
  - kind: statuspage
    page_id: {PAGE}
    api_key: "{key_ref}"
    api_url: {api_url}
    components: [8kbf7d35c070]
    timeout: 10s
    retries: 0
"##
    )
}

#[tokio::test]
async fn an_incident_is_opened_then_resolved_when_the_run_succeeds() {
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "sp-ok", &sp.api_url(), KEY, false)),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));

    let requests = sp.server.requests();
    let calls: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".to_string(), format!("/v1/pages/{PAGE}/incidents")),
            (
                "PATCH".to_string(),
                format!("/v1/pages/{PAGE}/incidents/p31zjtct2j00")
            ),
        ]
    );
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("OAuth {KEY}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let open = requests[0].json();
    assert_eq!(open["incident"]["name"], "Rolling back orders");
    assert_eq!(open["incident"]["status"], "investigating");
    assert_eq!(
        open["incident"]["component_ids"],
        serde_json::json!(["8kbf7d35c070"])
    );
    assert_eq!(
        open["incident"]["components"]["8kbf7d35c070"],
        "degraded_performance"
    );
    assert_eq!(open["incident"]["deliver_notifications"], true);
    assert!(open["incident"]["body"]
        .as_str()
        .unwrap()
        .starts_with("We are rolling back a recent change to orders."));
    let resolve = requests[1].json();
    assert_eq!(resolve["incident"]["status"], "resolved");
    assert_eq!(
        resolve["incident"]["components"]["8kbf7d35c070"],
        "operational"
    );
    assert!(
        resolve["incident"].get("name").is_none(),
        "an update does not rename"
    );

    let state = sp.state.lock().unwrap();
    assert_eq!(state.incidents.len(), 1);
    let incident = &state.incidents[0];
    assert_eq!(incident.status, "resolved");
    assert_eq!(incident.components["8kbf7d35c070"], "operational");
    assert_eq!(incident.updates.len(), 2);
    drop(state);
    assert_not_in_state(&fx, KEY);
}

#[tokio::test]
async fn a_failed_run_updates_the_incident_and_leaves_it_open() {
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "sp-fail", &sp.api_url(), KEY, true)),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::StepFailed));

    let state = sp.state.lock().unwrap();
    assert_eq!(state.incidents.len(), 1);
    let incident = &state.incidents[0];
    let statuses: Vec<&str> = incident.updates.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["investigating", "identified", "identified"]);
    assert!(incident.updates[1]
        .1
        .contains("(migrate_down) did not succeed"));
    assert!(incident.updates[2]
        .1
        .contains("ended without success (failed)"));
    assert_eq!(incident.status, "identified", "not resolved");
    assert_eq!(incident.components["8kbf7d35c070"], "degraded_performance");
}

#[tokio::test]
async fn a_refused_key_is_journaled_and_the_run_goes_on() {
    let sp = StatuspageStandIn::start(PAGE, "the-right-key").await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "sp-401", &sp.api_url(), KEY, false)),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let journal = fx.journal(&report.run.run_id);
    let failures: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|r| r["event"] == "notification_failed")
        .collect();
    // run_started and run_finished both fail to open the incident.
    assert_eq!(failures.len(), 2, "{:?}", event_names(&journal));
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(
        error.contains("check the key `api_key:` refers to"),
        "{error}"
    );
    assert_eq!(failures[0]["notifier"], format!("Statuspage page {PAGE}"));
    assert_not_in_state(&fx, KEY);
}

#[tokio::test]
async fn an_unknown_page_is_a_404_that_names_it() {
    let sp = StatuspageStandIn::start("otherpage", KEY).await;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "sp-404", &sp.api_url(), KEY, false)),
            Duration::from_secs(20),
        )
        .await;
    let journal = fx.journal(&report.run.run_id);
    let failure = journal
        .iter()
        .find(|r| r["event"] == "notification_failed")
        .expect("journaled");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("404"), "{error}");
    assert!(error.contains(&format!("page `{PAGE}`")), "{error}");
}

#[tokio::test]
async fn a_429_is_waited_out() {
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    sp.state.lock().unwrap().rate_limit_next = 1;
    let fx = Fixture::new();
    let report = fx
        .run(
            &fx.plan(&plan(&fx, "sp-429", &sp.api_url(), KEY, false)),
            Duration::from_secs(20),
        )
        .await;
    let requests = sp.server.requests();
    assert_eq!(
        requests.len(),
        3,
        "429, then the POST again, then the PATCH"
    );
    assert!(requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(1));
    assert_eq!(sp.state.lock().unwrap().incidents[0].status, "resolved");
    let journal = fx.journal(&report.run.run_id);
    assert!(!event_names(&journal).contains(&"notification_failed".to_string()));
}

#[tokio::test]
async fn step_finished_adds_one_update_per_step_then_resolves() {
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    let fx = Fixture::new();
    let yaml = plan(&fx, "sp-progress", &sp.api_url(), KEY, false).replace(
        "    timeout: 10s\n",
        "    events: [run_started, step_finished, run_finished]\n    timeout: 10s\n",
    );
    let report = fx.run(&fx.plan(&yaml), Duration::from_secs(20)).await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));

    let requests = sp.server.requests();
    let calls: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let patch = (
        "PATCH".to_string(),
        format!("/v1/pages/{PAGE}/incidents/p31zjtct2j00"),
    );
    assert_eq!(
        calls,
        [
            ("POST".to_string(), format!("/v1/pages/{PAGE}/incidents")),
            patch.clone(), // undo is done
            patch.clone(), // migrate_down is done
            patch,         // resolved
        ]
    );
    let state = sp.state.lock().unwrap();
    assert_eq!(state.incidents.len(), 1, "one incident per run");
    let incident = &state.incidents[0];
    let updates: Vec<(&str, &str)> = incident
        .updates
        .iter()
        .map(|(s, b)| (s.as_str(), b.as_str()))
        .collect();
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert_eq!(updates[0].0, "investigating");
    assert_eq!(
        updates[1],
        ("identified", "Rolling back orders: step undo is done.")
    );
    assert_eq!(
        updates[2],
        (
            "identified",
            "Rolling back orders: step migrate_down is done."
        )
    );
    assert_eq!(
        updates[3],
        (
            "resolved",
            "The rollback of orders is complete and its checks pass."
        )
    );
    assert_eq!(incident.status, "resolved");
    assert_eq!(incident.components["8kbf7d35c070"], "operational");
    drop(state);
    assert_not_in_state(&fx, KEY);
}
