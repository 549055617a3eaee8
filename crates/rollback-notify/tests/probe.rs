//! `probe`, what `rollback preflight` asks each notifier: reachable, and the
//! credentials accepted, without sending a notification. Slack (`auth.test`)
//! and Statuspage (`GET /pages/{id}`) against their stand-ins, email against
//! the real SMTP server of scripts/testenv/smtp.sh (all three listeners), the
//! webhook left unchecked; then the whole preflight report for a plan.

mod support;

use std::path::Path;

use rollback_core::preflight::{preflight, ItemStatus, PreflightOptions};
use rollback_core::testing::require_env;
use rollback_core::{FileJournal, Notifier, StepContext, StepError};
use rollback_notify::{
    EmailConfig, EmailNotifier, SlackConfig, SlackNotifier, SmtpSecurity, StatuspageConfig,
    StatuspageNotifier, WebhookConfig, WebhookNotifier,
};
use support::{
    Fixture, Reply, Server, SlackStandIn, StatuspageStandIn, SLACK_BOT_ID, SLACK_BOT_USER_ID,
    SLACK_TEAM_ID, SLACK_TEAM_URL,
};

const TOKEN: &str = "xoxb-3333-4444-probe-not-real";
const KEY: &str = "sp-key-probe-7c1d-not-real";
const PAGE: &str = "kctbh9vrtdwd";

fn ctx(fx: &Fixture) -> StepContext {
    StepContext::standalone("preflight", fx.dir.path().join("run"))
}

/// A URL on 127.0.0.1 where nothing listens.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn slack(fx: &Fixture, api_url: &str, token: &str) -> SlackNotifier {
    SlackNotifier::new(SlackConfig {
        channel: "#deployments".into(),
        token: fx.secret("slack-token", token),
        api_url: api_url.into(),
    })
    .unwrap()
}

fn statuspage(fx: &Fixture, api_url: &str, key: &str) -> StatuspageNotifier {
    StatuspageNotifier::new(StatuspageConfig {
        page_id: PAGE.into(),
        api_key: fx.secret("statuspage-key", key),
        api_url: api_url.into(),
        name: None,
        components: vec!["8kbf7d35c070".into()],
        component_status: "degraded_performance".into(),
        impact: None,
        deliver_notifications: true,
    })
    .unwrap()
}

fn assert_fails_without(err: &StepError, secret: &str) -> String {
    let text = err.full_message();
    assert!(!text.contains(secret), "the secret is in the error: {text}");
    if let Some(detail) = err.detail() {
        assert!(
            !detail.contains(secret),
            "the secret is in the detail: {detail}"
        );
    }
    text
}

// ---------------------------------------------------------------------------
// Slack: auth.test
// ---------------------------------------------------------------------------

#[tokio::test]
async fn slack_probe_calls_auth_test_and_names_team_and_bot() {
    let stand_in = SlackStandIn::start(TOKEN).await;
    let fx = Fixture::new();
    let evidence = slack(&fx, &stand_in.api_url(), TOKEN)
        .probe(&ctx(&fx))
        .await
        .unwrap()
        .expect("slack can be probed");
    assert_eq!(
        evidence,
        format!(
            "Slack auth.test accepted the token: user `rollback` ({SLACK_BOT_USER_ID}, bot \
             {SLACK_BOT_ID}) in team `Rollback Test` ({SLACK_TEAM_ID}, {SLACK_TEAM_URL}); \
             messages will go to #deployments"
        )
    );
    assert!(!evidence.contains(TOKEN));

    // The contract: one POST to auth.test, bearer token, JSON, no arguments.
    let requests = stand_in.server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/auth.test")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(r.json(), serde_json::json!({}));
    // Nothing was posted.
    assert!(stand_in.state.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn slack_probe_with_a_wrong_token_fails_with_the_hint_and_without_the_token() {
    let stand_in = SlackStandIn::start("xoxb-the-right-one").await;
    let fx = Fixture::new();
    let err = slack(&fx, &stand_in.api_url(), TOKEN)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, TOKEN);
    assert_eq!(
        text,
        "Slack auth.test refused the bot token (invalid_auth): check the token `token:` \
         refers to and that the app has the chat:write scope"
    );
    assert!(!err.is_retryable());
    assert!(stand_in.state.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn slack_probe_maps_not_authed_and_revoked_tokens() {
    for code in ["not_authed", "token_revoked"] {
        let server = Server::start(move |_| {
            Reply::json(200, serde_json::json!({ "ok": false, "error": code }))
        })
        .await;
        let fx = Fixture::new();
        let err = slack(&fx, &format!("{}/api", server.url), TOKEN)
            .probe(&ctx(&fx))
            .await
            .unwrap_err();
        let text = assert_fails_without(&err, TOKEN);
        assert!(
            text.contains(&format!("refused the bot token ({code})")),
            "{text}"
        );
        assert!(
            text.contains("check the token `token:` refers to"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn slack_probe_of_an_unreachable_api_says_so() {
    let fx = Fixture::new();
    let port = closed_port().await;
    let err = slack(&fx, &format!("http://127.0.0.1:{port}/api"), TOKEN)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, TOKEN);
    assert!(
        text.starts_with(&format!(
            "could not reach Slack for auth.test at http://127.0.0.1:{port}/api (check \
             `api_url:` and that this host reaches it)"
        )),
        "{text}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn the_slack_stand_in_answers_auth_test_as_documented() {
    let stand_in = SlackStandIn::start(TOKEN).await;
    let client = reqwest::Client::new();
    let url = format!("{}/auth.test", stand_in.api_url());
    let answer: serde_json::Value = client
        .post(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ok"], true);
    for field in ["url", "team", "user", "team_id", "user_id", "bot_id"] {
        assert!(answer[field].is_string(), "{field} missing in {answer}");
    }
    let no_token: serde_json::Value = client
        .post(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        no_token,
        serde_json::json!({ "ok": false, "error": "not_authed" })
    );
    let wrong: serde_json::Value = client
        .get(&url)
        .bearer_auth("xoxb-wrong")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        wrong,
        serde_json::json!({ "ok": false, "error": "invalid_auth" })
    );
}

// ---------------------------------------------------------------------------
// Statuspage: GET /pages/{page_id}
// ---------------------------------------------------------------------------

#[tokio::test]
async fn statuspage_probe_reads_the_page_and_opens_nothing() {
    let stand_in = StatuspageStandIn::start(PAGE, KEY).await;
    let fx = Fixture::new();
    let evidence = statuspage(&fx, &stand_in.api_url(), KEY)
        .probe(&ctx(&fx))
        .await
        .unwrap()
        .expect("statuspage can be probed");
    assert_eq!(
        evidence,
        format!(
            "Statuspage accepted the API key: page `Orders Status` ({PAGE}, \
             orders-status.statuspage.io); components `Orders API` (8kbf7d35c070, \
             operational)"
        )
    );

    // The contract: the page, then its components; GETs with the key only.
    let requests = stand_in.server.requests();
    let calls: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", format!("/v1/pages/{PAGE}").as_str()),
            ("GET", format!("/v1/pages/{PAGE}/components").as_str()),
        ]
    );
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("OAuth {KEY}").as_str())
        );
        assert_eq!(r.header("content-type"), None, "a GET carries no body");
        assert!(r.body.is_empty());
    }
    assert!(stand_in.state.lock().unwrap().incidents.is_empty());
}

#[tokio::test]
async fn statuspage_probe_of_an_unknown_component_names_it() {
    let stand_in = StatuspageStandIn::start(PAGE, KEY).await;
    stand_in.state.lock().unwrap().components[0].0 = "otherc0mp0nt".into();
    let fx = Fixture::new();
    let err = statuspage(&fx, &stand_in.api_url(), KEY)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, KEY);
    assert!(
        text.starts_with(&format!(
            "Statuspage page `Orders Status` ({PAGE}) has no component 8kbf7d35c070: check \
             `components:`"
        )),
        "{text}"
    );
    assert!(stand_in.state.lock().unwrap().incidents.is_empty());
}

#[tokio::test]
async fn statuspage_probe_with_a_wrong_key_is_a_401_with_the_hint() {
    let stand_in = StatuspageStandIn::start(PAGE, "the-right-key").await;
    let fx = Fixture::new();
    let err = statuspage(&fx, &stand_in.api_url(), KEY)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, KEY);
    assert_eq!(
        text,
        "Statuspage GET answered 401 Unauthorized: the API key was refused; check the key \
         `api_key:` refers to"
    );
    assert!(!err.is_retryable());
    assert!(stand_in.state.lock().unwrap().incidents.is_empty());
}

#[tokio::test]
async fn statuspage_probe_of_an_unknown_page_is_a_404_naming_it() {
    let stand_in = StatuspageStandIn::start("otherpage", KEY).await;
    let fx = Fixture::new();
    let err = statuspage(&fx, &stand_in.api_url(), KEY)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, KEY);
    assert!(text.contains("404"), "{text}");
    assert!(
        text.contains(&format!(
            "page `{PAGE}` does not exist or the key cannot see it; check page_id"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn statuspage_probe_of_an_unreachable_api_says_so() {
    let fx = Fixture::new();
    let port = closed_port().await;
    let err = statuspage(&fx, &format!("http://127.0.0.1:{port}/v1"), KEY)
        .probe(&ctx(&fx))
        .await
        .unwrap_err();
    let text = assert_fails_without(&err, KEY);
    assert!(
        text.starts_with(
            "could not reach Statuspage (check `api_url:` and that this host reaches it)"
        ),
        "{text}"
    );
    assert!(err.is_retryable());
}

// ---------------------------------------------------------------------------
// Webhook: cannot be probed without delivering
// ---------------------------------------------------------------------------

#[tokio::test]
async fn webhook_probe_is_unchecked_and_sends_nothing() {
    let server = Server::start(|_| Reply::json(204, serde_json::json!({}))).await;
    let fx = Fixture::new();
    let webhook = WebhookNotifier::new(WebhookConfig {
        url: format!("{}/hooks/rollback", server.url),
        secret: fx.secret("webhook-secret", "whsec-probe"),
        signature_header: "X-Rollback-Signature".into(),
        headers: Default::default(),
    })
    .unwrap();
    assert_eq!(webhook.probe(&ctx(&fx)).await.unwrap(), None);
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Email: lettre's test_connection against the real SMTP server
// ---------------------------------------------------------------------------

struct Smtp {
    host: String,
    port: u16,
    starttls_port: u16,
    tls_port: u16,
    user: String,
    password: String,
    ca_file: String,
    mailbox: String,
}

fn smtp() -> Option<Smtp> {
    let port = |name: &str| require_env(name).map(|p| p.parse::<u16>().unwrap());
    Some(Smtp {
        host: require_env("SMTP_HOST")?,
        port: port("SMTP_PORT")?,
        starttls_port: port("SMTP_STARTTLS_PORT")?,
        tls_port: port("SMTP_TLS_PORT")?,
        user: require_env("SMTP_USER")?,
        password: require_env("SMTP_PASSWORD")?,
        ca_file: require_env("SMTP_CA_FILE")?,
        mailbox: require_env("SMTP_MAILBOX_DIR")?,
    })
}

fn mailbox_files(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn email(
    host: &str,
    port: u16,
    security: SmtpSecurity,
    login: Option<(&str, String)>,
    ca_file: Option<&str>,
) -> EmailNotifier {
    let (username, password) = match login {
        Some((user, password_ref)) => (Some(user.to_string()), Some(password_ref)),
        None => (None, None),
    };
    EmailNotifier::new(EmailConfig {
        host: host.into(),
        port: Some(port),
        security,
        username,
        password,
        from: "Rollback <rollback@example.test>".into(),
        to: vec!["ops-probe@example.test".into()],
        ca_file: ca_file.map(str::to_string),
    })
    .unwrap()
}

#[tokio::test]
async fn email_probe_passes_on_all_three_listeners_and_sends_nothing() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let before = mailbox_files(&smtp.mailbox);

    let plain = email(&smtp.host, smtp.port, SmtpSecurity::Plain, None, None);
    let evidence = plain.probe(&ctx(&fx)).await.unwrap().unwrap();
    assert_eq!(
        evidence,
        format!(
            "SMTP server {}:{} answered over a plain connection (no TLS), no login \
             configured; mail goes from Rollback <rollback@example.test> to \
             ops-probe@example.test",
            smtp.host, smtp.port
        )
    );

    let starttls = email(
        &smtp.host,
        smtp.starttls_port,
        SmtpSecurity::Starttls,
        Some((&smtp.user, fx.secret("smtp-password", &smtp.password))),
        Some(&smtp.ca_file),
    );
    let evidence = starttls.probe(&ctx(&fx)).await.unwrap().unwrap();
    assert!(
        evidence.starts_with(&format!(
            "SMTP server {}:{} answered over STARTTLS, logged in as `{}`",
            smtp.host, smtp.starttls_port, smtp.user
        )),
        "{evidence}"
    );
    assert!(!evidence.contains(&smtp.password));

    let tls = email(
        &smtp.host,
        smtp.tls_port,
        SmtpSecurity::Tls,
        None,
        Some(&smtp.ca_file),
    );
    let evidence = tls.probe(&ctx(&fx)).await.unwrap().unwrap();
    assert!(
        evidence.starts_with(&format!(
            "SMTP server {}:{} answered over implicit TLS, no login configured",
            smtp.host, smtp.tls_port
        )),
        "{evidence}"
    );

    assert_eq!(
        mailbox_files(&smtp.mailbox),
        before,
        "a probe delivered a message"
    );
}

#[tokio::test]
async fn email_probe_with_a_wrong_password_fails_without_the_password() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let wrong = "wrong-probe-password-9f8e";
    let notifier = email(
        &smtp.host,
        smtp.starttls_port,
        SmtpSecurity::Starttls,
        Some((&smtp.user, fx.secret("smtp-password", wrong))),
        Some(&smtp.ca_file),
    );
    let err = notifier.probe(&ctx(&fx)).await.unwrap_err();
    let text = assert_fails_without(&err, wrong);
    assert!(
        text.starts_with(&format!(
            "SMTP server {}:{} refused the login: check `username:` and the password \
             `password:` refers to",
            smtp.host, smtp.starttls_port
        )),
        "{text}"
    );
    assert!(text.contains("535"), "{text}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn email_probe_without_the_ca_fails_with_the_tls_hint() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let notifier = email(&smtp.host, smtp.tls_port, SmtpSecurity::Tls, None, None);
    let err = notifier.probe(&ctx(&fx)).await.unwrap_err();
    let text = err.full_message();
    assert!(
        text.contains("TLS failed; check `security:`") && text.contains("`ca_file:`"),
        "{text}"
    );
    assert!(Path::new(&smtp.ca_file).exists());
}

#[tokio::test]
async fn email_probe_of_an_unreachable_server_says_what_to_check() {
    let fx = Fixture::new();
    let port = closed_port().await;
    let notifier = email("127.0.0.1", port, SmtpSecurity::Plain, None, None);
    let err = notifier.probe(&ctx(&fx)).await.unwrap_err();
    let text = err.full_message();
    assert!(
        text.starts_with(&format!(
            "could not reach the SMTP server 127.0.0.1:{port}: check `host:` and `port:`"
        )),
        "{text}"
    );
    assert!(err.is_retryable());
}

// ---------------------------------------------------------------------------
// The whole preflight report
// ---------------------------------------------------------------------------

fn preflight_plan(fx: &Fixture, slack_url: &str, token: &str, sp_url: &str, hook: &str) -> String {
    format!(
        r##"
name: preflight-notify
steps:
  - id: restart
    kind: exec
    argv: ["true"]
notify:
  - kind: slack
    channel: "#deployments"
    token: "{token}"
    api_url: {slack_url}
  - kind: statuspage
    page_id: {PAGE}
    api_key: "{key}"
    api_url: {sp_url}
  - kind: webhook
    url: {hook}/hooks/rollback
    secret: "{secret}"
"##,
        token = fx.secret("slack-token", token),
        key = fx.secret("statuspage-key", KEY),
        secret = fx.secret("webhook-secret", "whsec-preflight"),
    )
}

#[tokio::test]
async fn preflight_checks_slack_and_statuspage_and_leaves_the_webhook_unchecked() {
    let slack = SlackStandIn::start(TOKEN).await;
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    let hook = Server::start(|_| Reply::json(204, serde_json::json!({}))).await;
    let fx = Fixture::new();
    let plan = fx.plan(&preflight_plan(
        &fx,
        &slack.api_url(),
        TOKEN,
        &sp.api_url(),
        &hook.url,
    ));
    let store = FileJournal::new(fx.state_dir());
    let report = preflight(
        &plan,
        &store,
        &PreflightOptions {
            skip_drill: true,
            ..Default::default()
        },
    )
    .await;

    let notifier_items: Vec<_> = report
        .items
        .iter()
        .filter(|i| i.name.starts_with("notifier "))
        .collect();
    let summary: Vec<(&str, ItemStatus)> = notifier_items
        .iter()
        .map(|i| (i.name.as_str(), i.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("notifier slack reachable", ItemStatus::Pass),
            ("notifier statuspage reachable", ItemStatus::Pass),
            ("notifier webhook reachable", ItemStatus::Unchecked),
        ],
        "{:#?}",
        report.items
    );
    assert!(notifier_items[0]
        .evidence
        .contains("user `rollback` (U0ROLLBACK, bot B0ROLLBACK) in team `Rollback Test`"));
    assert!(notifier_items[1]
        .evidence
        .contains(&format!("page `Orders Status` ({PAGE}")));
    assert!(
        notifier_items[2]
            .evidence
            .contains("cannot be checked without sending a message"),
        "{}",
        notifier_items[2].evidence
    );
    assert!(report.passed, "{:#?}", report.items);

    // Checked, not announced.
    assert!(slack.state.lock().unwrap().messages.is_empty());
    assert!(slack
        .server
        .requests()
        .iter()
        .all(|r| r.path == "/api/auth.test"));
    assert!(sp.state.lock().unwrap().incidents.is_empty());
    assert!(hook.requests().is_empty());
}

#[tokio::test]
async fn preflight_fails_when_slack_refuses_the_token() {
    let slack = SlackStandIn::start("xoxb-the-right-one").await;
    let sp = StatuspageStandIn::start(PAGE, KEY).await;
    let hook = Server::start(|_| Reply::json(204, serde_json::json!({}))).await;
    let fx = Fixture::new();
    let plan = fx.plan(&preflight_plan(
        &fx,
        &slack.api_url(),
        TOKEN,
        &sp.api_url(),
        &hook.url,
    ));
    let store = FileJournal::new(fx.state_dir());
    let report = preflight(
        &plan,
        &store,
        &PreflightOptions {
            skip_drill: true,
            ..Default::default()
        },
    )
    .await;
    assert!(!report.passed, "{:#?}", report.items);
    let slack_item = report
        .items
        .iter()
        .find(|i| i.name == "notifier slack reachable")
        .unwrap();
    assert_eq!(slack_item.status, ItemStatus::Fail);
    assert!(
        slack_item.evidence.contains("invalid_auth")
            && slack_item.evidence.contains("check the token"),
        "{}",
        slack_item.evidence
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(TOKEN), "the token is in the report: {json}");
    let sp_item = report
        .items
        .iter()
        .find(|i| i.name == "notifier statuspage reachable")
        .unwrap();
    assert_eq!(sp_item.status, ItemStatus::Pass);
    assert!(slack.state.lock().unwrap().messages.is_empty());
}
