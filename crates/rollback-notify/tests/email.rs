//! The `email` notifier against a real SMTP server (aiosmtpd, started by
//! scripts/testenv/smtp.sh): plain relay, STARTTLS with a password, implicit
//! TLS; the test reads the message that arrived in the server's mailbox.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollback_core::testing::require_env;
use rollback_core::RunStatus;
use support::{assert_not_in_state, event_names, Fixture};

struct Smtp {
    host: String,
    port: String,
    starttls_port: String,
    tls_port: String,
    user: String,
    password: String,
    ca_file: String,
    mailbox: String,
}

fn smtp() -> Option<Smtp> {
    Some(Smtp {
        host: require_env("SMTP_HOST")?,
        port: require_env("SMTP_PORT")?,
        starttls_port: require_env("SMTP_STARTTLS_PORT")?,
        tls_port: require_env("SMTP_TLS_PORT")?,
        user: require_env("SMTP_USER")?,
        password: require_env("SMTP_PASSWORD")?,
        ca_file: require_env("SMTP_CA_FILE")?,
        mailbox: require_env("SMTP_MAILBOX_DIR")?,
    })
}

/// Addresses no other test uses, so tests sharing the mailbox stay apart.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{nanos}")
}

/// A message the server stored.
#[derive(Debug)]
struct Received {
    envelope: serde_json::Value,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Messages whose envelope lists `rcpt`, oldest first.
fn received_for(mailbox: &str, rcpt: &str) -> Vec<Received> {
    let mut names: Vec<_> = std::fs::read_dir(mailbox)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for meta in names {
        let envelope: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
        if !envelope["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == rcpt)
        {
            continue;
        }
        let raw = std::fs::read_to_string(meta.with_extension("eml")).unwrap();
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap();
        // Unfold continuation lines, then split.
        let head = head.replace("\n ", " ").replace("\n\t", " ");
        let headers = head
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut received = Received {
            envelope,
            headers,
            body: body.to_string(),
        };
        match received.header("Content-Transfer-Encoding") {
            Some("quoted-printable") => received.body = decode_quoted_printable(body),
            Some("7bit") | Some("8bit") | None => {}
            Some(other) => panic!("unexpected transfer encoding {other}"),
        }
        out.push(received);
    }
    out
}

/// Quoted-printable (RFC 2045 6.7), as a mail reader decodes it.
fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn plan(name: &str, notify: &str, fail: bool) -> String {
    let last = if fail { "false" } else { "true" };
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
    argv: ["{last}"]
notify:
{notify}
"##
    )
}

#[tokio::test]
async fn a_plain_relay_receives_subject_recipients_and_timeline() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let id = unique("plain");
    let (ops, oncall) = (
        format!("ops-{id}@example.test"),
        format!("oncall-{id}@example.test"),
    );
    let notify = format!(
        r##"  - kind: email
    host: {host}
    port: {port}
    security: none
    from: "Rollback <rollback@example.test>"
    to: ["{ops}", "Oncall <{oncall}>"]
    events: [run_finished]
    timeout: 20s
    retries: 0"##,
        host = smtp.host,
        port = smtp.port
    );
    let report = fx
        .run(
            &fx.plan(&plan("email-plain", &notify, true)),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    let journal = fx.journal(&report.run.run_id);
    assert!(
        !event_names(&journal).contains(&"notification_failed".to_string()),
        "{journal:?}"
    );

    let mails = received_for(&smtp.mailbox, &ops);
    assert_eq!(mails.len(), 1, "one event asked for, one message");
    let mail = &mails[0];
    assert_eq!(mail.envelope["listener"], "plain");
    assert_eq!(mail.envelope["mail_from"], "rollback@example.test");
    assert_eq!(mail.envelope["rcpt_tos"], serde_json::json!([ops, oncall]));
    assert_eq!(mail.header("Subject"), Some("Rollback failed: email-plain"));
    assert_eq!(
        mail.header("From"),
        Some("Rollback <rollback@example.test>")
    );
    let to = mail.header("To").unwrap();
    assert!(
        to.contains(&ops) && to.contains(&format!("Oncall <{oncall}>")),
        "{to}"
    );
    assert!(mail
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));

    let body = &mail.body;
    for expected in [
        "Service:  orders\n",
        "Plan:     email-plain\n",
        "Reason:   5xx spike after 2.4.1\n",
        "Operator: alice\n",
        "Status:   failed\n",
        "of a 5m budget",
        &format!("Run:      {} on ", report.run.run_id),
        "\nTimeline\n",
        &format!("Details: rollback show {}", report.run.run_id),
    ] {
        assert!(body.contains(expected), "missing {expected:?} in\n{body}");
    }
    let timeline: Vec<&str> = body
        .split("\nTimeline\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert!(
        timeline[0].contains("  run finished: failed in "),
        "{timeline:?}"
    );
    assert!(body.contains("Completed steps: record_state\n"), "{body}");
}

#[tokio::test]
async fn starttls_with_a_password_and_the_timeline_of_every_event() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let ops = format!("ops-{}@example.test", unique("starttls"));
    // SMTP_PASSWORD is in the environment (scripts/test.sh sources smtp.env).
    let notify = format!(
        r##"  - kind: email
    host: {host}
    port: {port}
    security: starttls
    ca_file: {ca}
    username: {user}
    password: ${{env:SMTP_PASSWORD}}
    from: rollback@example.test
    to: ["{ops}"]
    timeout: 20s
    retries: 0"##,
        host = smtp.host,
        port = smtp.starttls_port,
        ca = smtp.ca_file,
        user = smtp.user
    );
    let report = fx
        .run(
            &fx.plan(&plan("email-starttls", &notify, true)),
            Duration::from_secs(30),
        )
        .await;
    let journal = fx.journal(&report.run.run_id);
    assert!(
        !event_names(&journal).contains(&"notification_failed".to_string()),
        "{journal:?}"
    );
    let mails = received_for(&smtp.mailbox, &ops);
    // run_started, step_failed, run_finished: one message each, in order.
    let subjects: Vec<&str> = mails.iter().map(|m| m.header("Subject").unwrap()).collect();
    assert_eq!(
        subjects,
        [
            "Rollback started: email-starttls",
            "Rollback step failed: email-starttls",
            "Rollback failed: email-starttls"
        ]
    );
    for m in &mails {
        assert_eq!(m.envelope["listener"], "starttls");
        assert_eq!(m.envelope["authenticated"], true);
    }
    // The last message carries the whole timeline.
    let body = &mails[2].body;
    let timeline: Vec<&str> = body
        .split("\nTimeline\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(timeline.len(), 3, "{body}");
    assert!(timeline[0]
        .contains("run started by alice: 5xx spike after 2.4.1 (2 steps: record_state, restart)"));
    assert!(timeline[1].contains("step restart failed after 1 attempt"));
    assert!(timeline[2].contains("run finished: failed in "));
    assert_not_in_state(&fx, &smtp.password);
}

#[tokio::test]
async fn implicit_tls() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let ops = format!("ops-{}@example.test", unique("tls"));
    let notify = format!(
        r##"  - kind: email
    host: {host}
    port: {port}
    security: tls
    ca_file: {ca}
    from: rollback@example.test
    to: ["{ops}"]
    events: [run_finished]
    timeout: 20s
    retries: 0"##,
        host = smtp.host,
        port = smtp.tls_port,
        ca = smtp.ca_file,
    );
    let report = fx
        .run(
            &fx.plan(&plan("email-tls", &notify, false)),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let mails = received_for(&smtp.mailbox, &ops);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].envelope["listener"], "implicit_tls");
    assert_eq!(
        mails[0].header("Subject"),
        Some("Rollback succeeded: email-tls")
    );
    assert!(mails[0].body.contains("Status:   succeeded\n"));
}

#[tokio::test]
async fn an_untrusted_certificate_and_a_wrong_password_are_journaled() {
    let Some(smtp) = smtp() else { return };
    let fx = Fixture::new();
    let ops = format!("ops-{}@example.test", unique("refused"));
    let wrong = "wrong-password-a1b2c3";
    let wrong_ref = fx.secret("smtp-password", wrong);
    let notify = format!(
        r##"  - kind: email
    host: {host}
    port: {port}
    security: starttls
    from: rollback@example.test
    to: ["{ops}"]
    events: [run_started]
    timeout: 20s
    retries: 0
  - kind: email
    host: {host}
    port: {port}
    security: starttls
    ca_file: {ca}
    username: {user}
    password: "{wrong_ref}"
    from: rollback@example.test
    to: ["{ops}"]
    events: [run_finished]
    timeout: 20s
    retries: 0"##,
        host = smtp.host,
        port = smtp.starttls_port,
        ca = smtp.ca_file,
        user = smtp.user,
    );
    let report = fx
        .run(
            &fx.plan(&plan("email-refused", &notify, false)),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let journal = fx.journal(&report.run.run_id);
    let errors: Vec<(String, String)> = journal
        .iter()
        .filter(|r| r["event"] == "notification_failed")
        .map(|r| {
            (
                r["about"].as_str().unwrap().to_string(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let tls = &errors.iter().find(|(a, _)| a == "run_started").unwrap().1;
    assert!(
        tls.contains("TLS failed; check `security:` and `ca_file:`"),
        "{tls}"
    );
    let auth = &errors.iter().find(|(a, _)| a == "run_finished").unwrap().1;
    assert!(auth.contains("the server refused it"), "{auth}");
    assert!(received_for(&smtp.mailbox, &ops).is_empty());
    assert_not_in_state(&fx, wrong);
    assert!(Path::new(&smtp.ca_file).exists());
}
