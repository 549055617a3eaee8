//! `webhook`: each event POSTed as JSON to a URL, signed with HMAC-SHA256 of
//! the body so the receiver can check it came from us.

use std::collections::BTreeMap;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use rollback_core::{ConfigError, Event, Notifier, RunInfo, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::{retry_after, status_error, unreachable, MAX_RETRY_AFTER};

/// The header carrying the signature unless `signature_header` says otherwise.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Rollback-Signature";

fn default_signature_header() -> String {
    DEFAULT_SIGNATURE_HEADER.into()
}

/// Configuration of the `webhook` notifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST events (http or https).
    pub url: String,
    /// The shared secret for the signature, as a reference such as
    /// `${env:ROLLBACK_WEBHOOK_SECRET}`.
    pub secret: String,
    /// The header that carries `sha256=<hex of HMAC-SHA256(secret, body)>`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Extra headers; values may hold references (`Bearer ${env:TOKEN}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The `webhook` notifier.
#[derive(Debug)]
pub struct WebhookNotifier {
    config: WebhookConfig,
    signature_header: HeaderName,
    client: reqwest::Client,
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON document sent for one event.
pub fn payload(run: &RunInfo, event: &Event) -> serde_json::Value {
    serde_json::json!({
        "type": event.notification_class().unwrap_or(event.name()),
        "sent_at": crate::timeline::now_rfc3339(),
        "run": run,
        "event": event,
    })
}

impl WebhookNotifier {
    /// Checks the URL (when it holds no reference), the secret reference and
    /// the header names.
    pub fn new(config: WebhookConfig) -> Result<Self, ConfigError> {
        if !config.url.contains("${") {
            let url = reqwest::Url::parse(&config.url).map_err(|e| {
                ConfigError::field(
                    "url",
                    format!(
                        "`{}` is not a URL ({e}): write e.g. https://hooks.example.com/rollback",
                        config.url
                    ),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::field("url", "must be an http or https URL"));
            }
        }
        crate::secret_reference("secret", &config.secret, "${env:ROLLBACK_WEBHOOK_SECRET}")?;
        let signature_header =
            HeaderName::from_bytes(config.signature_header.as_bytes()).map_err(|_| {
                ConfigError::field(
                    "signature_header",
                    format!("`{}` is not a header name", config.signature_header),
                )
            })?;
        for name in config.headers.keys() {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::field(format!("headers.{name}"), "is not a header name")
            })?;
        }
        Ok(WebhookNotifier {
            config,
            signature_header,
            client: reqwest::Client::new(),
        })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn describe(&self) -> String {
        // The URL may hold references; show it as written (unresolved).
        format!("webhook {}", self.config.url)
    }

    // No `probe`: the default (`Ok(None)`, shown as unchecked by `rollback
    // preflight`) is deliberate. A webhook receiver is any URL that takes a
    // signed POST; there is no standard request that proves it reachable and
    // the secret agreed without delivering something. A HEAD or GET may be
    // refused (405) or routed elsewhere by a receiver that works, and a
    // test POST would be a delivery the receiver acts on (opening a ticket,
    // paging someone). So passing or failing here would be a guess.

    async fn notify(
        &self,
        ctx: &StepContext,
        run: &RunInfo,
        event: &Event,
    ) -> Result<(), StepError> {
        let url = ctx.resolve(&self.config.url)?;
        let secret = ctx.resolve(&self.config.secret)?;
        if secret.is_empty() {
            return Err(StepError::fatal(
                "the webhook secret is empty: set the variable `secret:` refers to",
            ));
        }
        let body = serde_json::to_vec(&payload(run, event))
            .map_err(|e| StepError::fatal("could not encode the event").with_source(e))?;
        // The same event delivered again (a retry) has the same delivery id,
        // so receivers can drop duplicates.
        let event_json = serde_json::to_vec(event).unwrap_or_default();
        let mut delivery = Sha256::new();
        delivery.update(run.run_id.as_bytes());
        delivery.update(&event_json);
        let delivery = hex::encode(&delivery.finalize()[..12]);

        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut request = self
                .client
                .post(&url)
                .header(CONTENT_TYPE, "application/json")
                .header(
                    self.signature_header.clone(),
                    signature(secret.as_bytes(), &body),
                )
                .header(
                    "X-Rollback-Event",
                    event.notification_class().unwrap_or(event.name()),
                )
                .header("X-Rollback-Run", &run.run_id)
                .header("X-Rollback-Delivery", &delivery);
            for (name, value) in &self.config.headers {
                let value = ctx.resolve(value)?;
                let value = HeaderValue::from_str(&value).map_err(|_| {
                    StepError::fatal(format!(
                        "header {name}: the value is not a valid header value"
                    ))
                })?;
                request = request.header(name.as_str(), value);
            }
            let response = request.body(body.clone()).send().await.map_err(|e| {
                unreachable("the webhook", "check `url:` and that the receiver runs", e)
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && attempts < 3 {
                if let Some(wait) = retry_after(&response).filter(|w| *w <= MAX_RETRY_AFTER) {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            let text = response.text().await.unwrap_or_default();
            let hint = match status.as_u16() {
                401 | 403 => "the receiver refused us; check the secret on both sides",
                404 => "check the webhook URL",
                _ => "",
            };
            return Err(status_error(
                "the webhook",
                status,
                &ctx.redact(&text),
                hint,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_is_checked() {
        let config = |url: &str, secret: &str| WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            signature_header: default_signature_header(),
            headers: BTreeMap::new(),
        };
        let err = WebhookNotifier::new(config("ftp://x", "${env:S}")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("url"));
        let err = WebhookNotifier::new(config("https://x/hook", "s3cret")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("secret"));
        let n = WebhookNotifier::new(config("https://x/hook", "${env:S}")).unwrap();
        assert_eq!(n.describe(), "webhook https://x/hook");
    }
}
