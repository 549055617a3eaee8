//! `email`: a plain-text message with the run's timeline, over SMTP with
//! STARTTLS, implicit TLS, or plain for a local relay.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rollback_core::{ConfigError, Event, Notifier, RunInfo, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::timeline::{Runs, Timeline};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte, "SMTPS" (port 465).
    Tls,
    /// No encryption, for a relay on the same host or network (port 25). A
    /// password is refused with it.
    #[serde(rename = "none", alias = "plain")]
    Plain,
}

impl SmtpSecurity {
    /// How the connection is protected, in words.
    fn words(self) -> &'static str {
        match self {
            SmtpSecurity::Starttls => "STARTTLS",
            SmtpSecurity::Tls => "implicit TLS",
            SmtpSecurity::Plain => "a plain connection (no TLS)",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Plain => 25,
        }
    }
}

/// Configuration of the `email` notifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's host name (checked against its TLS certificate).
    pub host: String,
    /// The server's port; default 587 for `starttls`, 465 for `tls`, 25 for
    /// `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit TLS) or `none` (a local relay).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login name, when the server wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`, as a reference such as `${env:SMTP_PASSWORD}`.
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, e.g. `Rollback <rollback@example.com>`.
    pub from: String,
    /// The recipients (one or more addresses).
    pub to: Vec<String>,
    /// A PEM file of extra CA certificates to trust, for a server with a
    /// private or self-signed certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// The `email` notifier: one message per event it receives.
#[derive(Debug)]
pub struct EmailNotifier {
    config: EmailConfig,
    from: Mailbox,
    to: Vec<Mailbox>,
    runs: Runs<Timeline>,
}

fn mailbox(field: &str, text: &str) -> Result<Mailbox, ConfigError> {
    text.parse::<Mailbox>().map_err(|e| {
        ConfigError::field(
            field,
            format!("`{text}` is not an email address ({e}): write e.g. ops@example.com or `Ops <ops@example.com>`"),
        )
    })
}

impl EmailNotifier {
    /// Checks the configuration: addresses parse, a password goes with a
    /// user name and never over an unencrypted connection.
    pub fn new(config: EmailConfig) -> Result<Self, ConfigError> {
        if config.host.trim().is_empty() {
            return Err(ConfigError::field(
                "host",
                "is empty: write the SMTP server's host name",
            ));
        }
        let from = mailbox("from", &config.from)?;
        if config.to.is_empty() {
            return Err(ConfigError::field(
                "to",
                "is empty: list at least one recipient",
            ));
        }
        let to = config
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| mailbox(&format!("to[{i}]"), t))
            .collect::<Result<Vec<_>, _>>()?;
        match (&config.username, &config.password) {
            (None, Some(_)) => {
                return Err(ConfigError::field(
                    "password",
                    "is set without `username`: add the login name",
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::field(
                    "username",
                    "is set without `password`: add `password: ${env:SMTP_PASSWORD}`",
                ))
            }
            (Some(_), Some(p)) => {
                crate::secret_reference("password", p, "${env:SMTP_PASSWORD}")?;
                if config.security == SmtpSecurity::Plain {
                    return Err(ConfigError::field(
                        "security",
                        "is `none` but a password is set: it would cross the network in \
                         clear; use `starttls` or `tls`",
                    ));
                }
            }
            (None, None) => {}
        }
        Ok(EmailNotifier {
            config,
            from,
            to,
            runs: Runs::default(),
        })
    }

    fn port(&self) -> u16 {
        self.config
            .port
            .unwrap_or(self.config.security.default_port())
    }

    /// The subject for a timeline's state: `Rollback <status>: <plan>`.
    fn subject(t: &Timeline, event: &Event) -> String {
        let status = match event {
            Event::RunStarted { .. } => "started",
            _ => t.status(),
        };
        format!(
            "{}Rollback {status}: {}",
            if t.drill { "[drill] " } else { "" },
            t.plan
        )
    }

    /// The plain-text body: the run's facts, then the timeline.
    fn body(t: &Timeline, run: &RunInfo, completed: &[String]) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: &str| {
            out.push_str(&format!("{label:<10}{value}\n"));
        };
        line("Service:", &t.service);
        line("Plan:", &t.plan);
        line("Reason:", &t.reason);
        line("Operator:", &t.operator);
        if let Some(trigger) = &run.trigger {
            line("Trigger:", trigger);
        }
        line("Started:", &t.started_at);
        line("Status:", t.status());
        line("Duration:", &t.duration_text());
        line(
            "Run:",
            &format!("{} on {} (pid {})", run.run_id, run.host, run.pid),
        );
        if t.drill {
            line("Drill:", "yes");
        }
        out.push_str("\nTimeline\n");
        for l in t.lines() {
            out.push_str("  ");
            out.push_str(&l);
            out.push('\n');
        }
        if !completed.is_empty() {
            out.push_str(&format!("\nCompleted steps: {}\n", completed.join(", ")));
        }
        out.push_str(&format!(
            "\nDetails: rollback show {}\n-- \nSent by rollback {}\n",
            run.run_id, run.version
        ));
        out
    }

    fn transport(
        &self,
        ctx: &StepContext,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, StepError> {
        let host = self.config.host.clone();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(self.port())
            .timeout(Some(Duration::from_secs(30)));
        let tls = || -> Result<TlsParameters, StepError> {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(path) = &self.config.ca_file {
                let path = ctx.resolve(path)?;
                let pem = std::fs::read(&path).map_err(|e| {
                    StepError::fatal(format!("cannot read ca_file {path}: fix the path"))
                        .with_source(e)
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    StepError::fatal(format!("ca_file {path} holds no PEM certificate"))
                        .with_source(e)
                })?;
                params = params.add_root_certificate(cert);
            }
            params
                .build_rustls()
                .map_err(|e| StepError::fatal("could not set up TLS for SMTP").with_source(e))
        };
        builder = match self.config.security {
            SmtpSecurity::Starttls => builder.tls(Tls::Required(tls()?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
            SmtpSecurity::Plain => builder.tls(Tls::None),
        };
        if let (Some(user), Some(password)) = (&self.config.username, &self.config.password) {
            let user = ctx.resolve(user)?;
            let password = ctx.resolve(password)?;
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(builder.build())
    }
}

/// SMTP reply codes for a refused login (RFC 4954): 530 authentication
/// required, 534 mechanism too weak, 535 credentials invalid, 538 encryption
/// required.
fn is_login_refused(err: &lettre::transport::smtp::Error) -> bool {
    err.status()
        .is_some_and(|c| matches!(c.to_string().as_str(), "530" | "534" | "535" | "538"))
}

impl EmailNotifier {
    /// Why the probe failed, with what to check; no secret in the text.
    fn probe_error(&self, ctx: &StepContext, err: lettre::transport::smtp::Error) -> StepError {
        let target = format!("{}:{}", self.config.host, self.port());
        let text = ctx.redact(&err.to_string());
        let lower = text.to_ascii_lowercase();
        let tls = err.is_tls() || lower.contains("certificate") || lower.contains("tls");
        if is_login_refused(&err) {
            let hint = if self.config.username.is_some() {
                "check `username:` and the password `password:` refers to"
            } else {
                "the server wants a login: add `username:` and `password:`"
            };
            StepError::fatal(format!(
                "SMTP server {target} refused the login: {hint}: {text}"
            ))
        } else if err.is_permanent() {
            StepError::fatal(format!(
                "SMTP server {target} refused the session: check `host:`, `port:` and \
                 `security:`: {text}"
            ))
        } else if tls {
            StepError::fatal(format!(
                "SMTP server {target}: TLS failed; check `security:` ({} expected here; \
                 `tls` for an SMTPS port such as 465, `starttls` for 587) and `ca_file:`: {text}",
                self.config.security.words()
            ))
        } else {
            StepError::retryable(format!(
                "could not reach the SMTP server {target}: check `host:` and `port:` and that \
                 the server runs and accepts connections from here: {text}"
            ))
        }
    }
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn describe(&self) -> String {
        format!(
            "email to {} via {}:{}",
            self.config.to.join(", "),
            self.config.host,
            self.port()
        )
    }

    /// lettre's `test_connection`: connects, says EHLO, upgrades with
    /// STARTTLS or speaks TLS from the start as `security:` says, logs in
    /// when `username:` is set, sends NOOP and QUIT. No message is sent.
    async fn probe(&self, ctx: &StepContext) -> Result<Option<String>, StepError> {
        let transport = self.transport(ctx)?;
        let target = format!("{}:{}", self.config.host, self.port());
        let answered = transport
            .test_connection()
            .await
            .map_err(|e| self.probe_error(ctx, e))?;
        if !answered {
            return Err(StepError::retryable(format!(
                "SMTP server {target} took the connection but did not answer NOOP: check that \
                 `host:` and `port:` point at an SMTP server"
            )));
        }
        let login = match &self.config.username {
            Some(user) => format!("logged in as `{}`", ctx.redact(&ctx.resolve(user)?)),
            None => "no login configured".to_string(),
        };
        Ok(Some(format!(
            "SMTP server {target} answered over {}, {login}; mail goes from {} to {}",
            self.config.security.words(),
            self.config.from,
            self.config.to.join(", ")
        )))
    }

    async fn notify(
        &self,
        ctx: &StepContext,
        run: &RunInfo,
        event: &Event,
    ) -> Result<(), StepError> {
        let timeline = self.runs.with(
            &run.run_id,
            || Timeline::new(run),
            |t| {
                t.record(event);
                t.clone()
            },
        );
        let completed: Vec<String> = ctx.completed_outputs().into_keys().collect();
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(Self::subject(&timeline, event))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .body(Self::body(&timeline, run, &completed))
            .map_err(|e| StepError::fatal("could not build the email").with_source(e))?;
        let transport = self.transport(ctx)?;
        transport.send(message).await.map_err(|e| {
            let what = format!(
                "SMTP delivery via {}:{} failed",
                self.config.host,
                self.port()
            );
            let text = ctx.redact(&e.to_string());
            let lower = text.to_ascii_lowercase();
            // rustls' certificate errors arrive as connection errors.
            let tls = e.is_tls() || lower.contains("certificate") || lower.contains("tls");
            let hint = if e.is_permanent() {
                ": the server refused it; check the addresses and credentials"
            } else if tls {
                ": TLS failed; check `security:` and `ca_file:`"
            } else {
                ""
            };
            let err = format!("{what}{hint}: {text}");
            if e.is_permanent() || tls {
                StepError::fatal(err)
            } else {
                StepError::retryable(err)
            }
        })?;
        if matches!(event, Event::RunFinished { .. }) {
            self.runs.remove(&run.run_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_core::RunStatus;

    fn config() -> EmailConfig {
        EmailConfig {
            host: "smtp.example.com".into(),
            port: None,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: "Rollback <rollback@example.com>".into(),
            to: vec![
                "ops@example.com".into(),
                "Oncall <oncall@example.com>".into(),
            ],
            ca_file: None,
        }
    }

    #[test]
    fn ports_follow_the_security() {
        let n = EmailNotifier::new(config()).unwrap();
        assert_eq!(n.port(), 587);
        assert_eq!(
            n.describe(),
            "email to ops@example.com, Oncall <oncall@example.com> via smtp.example.com:587"
        );
        let mut c = config();
        c.security = SmtpSecurity::Tls;
        assert_eq!(EmailNotifier::new(c).unwrap().port(), 465);
    }

    #[test]
    fn a_password_needs_encryption_and_a_reference() {
        let mut c = config();
        c.username = Some("bot".into());
        c.password = Some("hunter2".into());
        assert_eq!(
            EmailNotifier::new(c).unwrap_err().field.as_deref(),
            Some("password")
        );
        let mut c = config();
        c.username = Some("bot".into());
        c.password = Some("${env:SMTP_PASSWORD}".into());
        c.security = SmtpSecurity::Plain;
        assert_eq!(
            EmailNotifier::new(c).unwrap_err().field.as_deref(),
            Some("security")
        );
    }

    #[test]
    fn bad_addresses_point_at_the_field() {
        let mut c = config();
        c.to.push("not an address".into());
        let err = EmailNotifier::new(c).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("to[2]"));
    }

    #[test]
    fn subject_and_body() {
        let run = crate::timeline::tests::run_info();
        let mut t = Timeline::new(&run);
        let finished = Event::RunFinished {
            status: RunStatus::Succeeded,
            duration_ms: 42_000,
            budget_ms: Some(300_000),
        };
        t.record(&finished);
        assert_eq!(
            EmailNotifier::subject(&t, &finished),
            "Rollback succeeded: order-service"
        );
        let body = EmailNotifier::body(&t, &run, &["undo".into()]);
        assert!(body.contains("Reason:   5xx spike after 2.4.1\n"), "{body}");
        assert!(
            body.contains("Duration: 42s of a 5m budget (14%)\n"),
            "{body}"
        );
        assert!(body.contains("run finished: succeeded in 42s"), "{body}");
        assert!(body.contains("Completed steps: undo\n"), "{body}");
    }
}
