//! `statuspage`: an incident on an Atlassian Statuspage page (API v1), opened
//! when a run starts, updated as it goes, resolved when the run succeeded
//! (its steps and its verification passed).
//!
//! Requests: `POST {api_url}/pages/{page_id}/incidents` and
//! `PATCH {api_url}/pages/{page_id}/incidents/{incident_id}`, each with a JSON
//! body `{"incident": {...}}` and the header `Authorization: OAuth <key>`;
//! `rollback preflight` probes with `GET {api_url}/pages/{page_id}` (and
//! `GET {api_url}/pages/{page_id}/components` when `components:` is set).

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use rollback_core::{
    ConfigError, Event, Notifier, Outcome, RunInfo, RunStatus, StepContext, StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::{retry_after, status_error, unreachable, MAX_RETRY_AFTER};
use crate::timeline::{status_words, Runs};

/// Statuspage's API.
pub const DEFAULT_API_URL: &str = "https://api.statuspage.io/v1";

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}

fn default_component_status() -> String {
    "degraded_performance".into()
}

fn yes() -> bool {
    true
}

const COMPONENT_STATUSES: &[&str] = &[
    "operational",
    "degraded_performance",
    "partial_outage",
    "major_outage",
    "under_maintenance",
];
const IMPACTS: &[&str] = &["none", "minor", "major", "critical"];

/// Configuration of the `statuspage` notifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatuspageConfig {
    /// The page's id (Statuspage: your avatar → API info).
    pub page_id: String,
    /// The API key, as a reference such as `${env:STATUSPAGE_API_KEY}`; sent
    /// as `Authorization: OAuth <key>`.
    pub api_key: String,
    /// The API's base URL (default `https://api.statuspage.io/v1`); point it
    /// elsewhere only for a proxy or a test stand-in.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The incident's title; default `Rolling back <service>`. Shown to the
    /// page's visitors.
    #[serde(default)]
    pub name: Option<String>,
    /// Ids of the components the rollback touches: set to
    /// `component_status` while it runs, to `operational` when resolved.
    #[serde(default)]
    pub components: Vec<String>,
    /// The components' status while the rollback runs: `degraded_performance`
    /// (default), `partial_outage`, `major_outage` or `under_maintenance`.
    #[serde(default = "default_component_status")]
    pub component_status: String,
    /// Overrides the impact Statuspage derives: `none`, `minor`, `major`,
    /// `critical`.
    #[serde(default)]
    pub impact: Option<String>,
    /// Whether Statuspage tells the page's subscribers about each update
    /// (default true).
    #[serde(default = "yes")]
    pub deliver_notifications: bool,
}

/// The `statuspage` notifier. One instance serves every run of a loaded plan
/// and remembers, per run id, the incident it opened.
#[derive(Debug)]
pub struct StatuspageNotifier {
    config: StatuspageConfig,
    client: reqwest::Client,
    incidents: Runs<Option<String>>,
}

/// What one event does to the incident: its status and the update's text.
fn update_for(service: &str, event: &Event) -> Option<(&'static str, String)> {
    Some(match event {
        Event::RunStarted { .. } => (
            "investigating",
            format!("We are rolling back a recent change to {service}. Updates follow as the rollback progresses."),
        ),
        Event::StepFinished {
            step,
            outcome: Outcome::Succeeded,
            ..
        } => (
            "identified",
            format!("Rolling back {service}: step {step} is done."),
        ),
        Event::StepFinished { step, .. } => (
            "identified",
            format!("A step of the rollback of {service} ({step}) did not succeed; our team is working on it."),
        ),
        Event::CheckFinished { passed: true, name, .. } => (
            "monitoring",
            format!("The rollback of {service} is done; check {name} passed. We are monitoring."),
        ),
        Event::CheckFinished { name, .. } => (
            "identified",
            format!("A check after the rollback of {service} ({name}) has not passed yet; our team is working on it."),
        ),
        Event::BudgetExceeded { .. } => (
            "identified",
            format!("The rollback of {service} is taking longer than planned; our team is on it."),
        ),
        Event::RunFinished {
            status: RunStatus::Succeeded,
            ..
        } => (
            "resolved",
            format!("The rollback of {service} is complete and its checks pass."),
        ),
        Event::RunFinished { status, .. } => (
            "identified",
            format!(
                "The rollback of {service} ended without success ({}); the incident stays open while our team works on it.",
                status_words(*status)
            ),
        ),
        _ => return None,
    })
}

impl StatuspageNotifier {
    /// Checks the configuration; nothing is resolved or sent yet.
    pub fn new(mut config: StatuspageConfig) -> Result<Self, ConfigError> {
        if config.page_id.trim().is_empty() {
            return Err(ConfigError::field(
                "page_id",
                "is empty: write the page's id (Statuspage → API info)",
            ));
        }
        crate::secret_reference("api_key", &config.api_key, "${env:STATUSPAGE_API_KEY}")?;
        config.api_url = config.api_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&config.api_url).map_err(|e| {
            ConfigError::field(
                "api_url",
                format!(
                    "`{}` is not a URL ({e}): write e.g. {DEFAULT_API_URL}",
                    config.api_url
                ),
            )
        })?;
        if !COMPONENT_STATUSES.contains(&config.component_status.as_str()) {
            return Err(ConfigError::field(
                "component_status",
                format!(
                    "`{}` is not a component status: one of {}",
                    config.component_status,
                    COMPONENT_STATUSES.join(", ")
                ),
            ));
        }
        if let Some(impact) = &config.impact {
            if !IMPACTS.contains(&impact.as_str()) {
                return Err(ConfigError::field(
                    "impact",
                    format!("`{impact}` is not an impact: one of {}", IMPACTS.join(", ")),
                ));
            }
        }
        Ok(StatuspageNotifier {
            config,
            client: reqwest::Client::new(),
            incidents: Runs::default(),
        })
    }

    /// The incident opened for `run_id`, if any.
    pub fn incident(&self, run_id: &str) -> Option<String> {
        self.incidents.with(run_id, || None, |i| i.clone())
    }

    fn components(&self, status: &str) -> Value {
        let map: Map<String, Value> = self
            .config
            .components
            .iter()
            .map(|id| (id.clone(), Value::String(status.to_string())))
            .collect();
        Value::Object(map)
    }

    async fn send(
        &self,
        ctx: &StepContext,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, StepError> {
        let key = ctx.resolve(&self.config.api_key)?;
        if key.trim().is_empty() {
            return Err(StepError::fatal(
                "the Statuspage API key is empty: set the variable `api_key:` refers to",
            ));
        }
        let mut waits = 0;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header(AUTHORIZATION, format!("OAuth {key}"));
            if let Some(body) = body {
                request = request.header(CONTENT_TYPE, "application/json").json(body);
            }
            let response = request.send().await.map_err(|e| {
                unreachable(
                    "Statuspage",
                    "check `api_url:` and that this host reaches it",
                    e,
                )
            })?;
            let status = response.status();
            if status.is_success() {
                return response.json::<Value>().await.map_err(|e| {
                    StepError::fatal(
                        "Statuspage answered something that is not JSON: check api_url",
                    )
                    .with_source(e.without_url())
                });
            }
            // Statuspage answers rate limits with 420 or 429.
            if (status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 420) && waits < 3 {
                if let Some(wait) = retry_after(&response).filter(|w| *w <= MAX_RETRY_AFTER) {
                    waits += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            let text = ctx.redact(&response.text().await.unwrap_or_default());
            let hint = match status.as_u16() {
                401 | 403 => {
                    "the API key was refused; check the key `api_key:` refers to".to_string()
                }
                404 if url.contains("/incidents/") => format!(
                    "page `{}` or the incident does not exist; check page_id",
                    self.config.page_id
                ),
                404 => format!(
                    "page `{}` does not exist or the key cannot see it; check page_id",
                    self.config.page_id
                ),
                422 => "the request was refused as invalid".to_string(),
                _ => String::new(),
            };
            return Err(status_error(
                &format!("Statuspage {method}"),
                status,
                &text,
                &hint,
            ));
        }
    }
}

#[async_trait]
impl Notifier for StatuspageNotifier {
    fn describe(&self) -> String {
        format!("Statuspage page {}", self.config.page_id)
    }

    /// `GET {api_url}/pages/{page_id}`: the API is reachable, the key is
    /// accepted and the page exists; with `components:`, also `GET
    /// {api_url}/pages/{page_id}/components`: each listed id is on the page.
    /// Nothing is opened or changed.
    async fn probe(&self, ctx: &StepContext) -> Result<Option<String>, StepError> {
        let url = format!("{}/pages/{}", self.config.api_url, self.config.page_id);
        let page = self.send(ctx, reqwest::Method::GET, &url, None).await?;
        let id = page["id"].as_str().unwrap_or_default();
        if id != self.config.page_id {
            return Err(StepError::fatal(format!(
                "Statuspage answered GET /pages/{} without that page's id: check api_url",
                self.config.page_id
            )));
        }
        let name = page["name"].as_str().unwrap_or("(unnamed)");
        let mut evidence = format!("Statuspage accepted the API key: page `{name}` ({id}");
        // Where visitors see it: the custom domain, else the subdomain.
        let nonempty = |key: &str| page[key].as_str().filter(|v| !v.is_empty());
        if let Some(domain) = nonempty("domain") {
            evidence.push_str(&format!(", {domain}"));
        } else if let Some(sub) = nonempty("subdomain") {
            evidence.push_str(&format!(", {sub}.statuspage.io"));
        }
        evidence.push(')');
        if !self.config.components.is_empty() {
            // The components the incident will set must be on this page, or
            // every update is refused at run time.
            let listed = self
                .send(
                    ctx,
                    reqwest::Method::GET,
                    &format!("{url}/components"),
                    None,
                )
                .await?;
            let listed = listed.as_array().cloned().unwrap_or_default();
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for wanted in &self.config.components {
                match listed.iter().find(|c| c["id"].as_str() == Some(wanted)) {
                    Some(c) => found.push(format!(
                        "`{}` ({wanted}, {})",
                        c["name"].as_str().unwrap_or("(unnamed)"),
                        c["status"].as_str().unwrap_or("unknown status")
                    )),
                    None => missing.push(wanted.as_str()),
                }
            }
            if !missing.is_empty() {
                return Err(StepError::fatal(format!(
                    "Statuspage page `{name}` ({id}) has no component {}: check `components:` \
                     (the ids are under Components → the component → its URL)",
                    missing.join(", ")
                )));
            }
            evidence.push_str(&format!("; components {}", found.join(", ")));
        }
        Ok(Some(evidence))
    }

    async fn notify(
        &self,
        ctx: &StepContext,
        run: &RunInfo,
        event: &Event,
    ) -> Result<(), StepError> {
        let service = run
            .vars
            .get("service")
            .cloned()
            .unwrap_or_else(|| run.plan.clone());
        let Some((status, text)) = update_for(&service, event) else {
            return Ok(());
        };
        let resolved = status == "resolved";
        let component_status = if resolved {
            "operational"
        } else {
            self.config.component_status.as_str()
        };
        let incidents = format!(
            "{}/pages/{}/incidents",
            self.config.api_url, self.config.page_id
        );
        let mut incident = json!({
            "status": status,
            "body": text,
            "deliver_notifications": self.config.deliver_notifications,
        });
        if !self.config.components.is_empty() {
            incident["component_ids"] = json!(self.config.components);
            incident["components"] = self.components(component_status);
        }
        match self.incident(&run.run_id) {
            Some(id) => {
                self.send(
                    ctx,
                    reqwest::Method::PATCH,
                    &format!("{incidents}/{id}"),
                    Some(&json!({ "incident": incident })),
                )
                .await?;
            }
            None => {
                incident["name"] = json!(self
                    .config
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("Rolling back {service}")));
                if let Some(impact) = &self.config.impact {
                    incident["impact_override"] = json!(impact);
                }
                let created = self
                    .send(
                        ctx,
                        reqwest::Method::POST,
                        &incidents,
                        Some(&json!({ "incident": incident })),
                    )
                    .await?;
                let id = created["id"].as_str().ok_or_else(|| {
                    StepError::fatal("Statuspage created an incident but sent no id: check api_url")
                })?;
                let id = id.to_string();
                self.incidents
                    .with(&run.run_id, || None, |slot| *slot = Some(id));
            }
        }
        if matches!(event, Event::RunFinished { .. }) {
            self.incidents.remove(&run.run_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StatuspageConfig {
        StatuspageConfig {
            page_id: "kctbh9vrtdwd".into(),
            api_key: "${env:STATUSPAGE_API_KEY}".into(),
            api_url: "https://api.statuspage.io/v1/".into(),
            name: None,
            components: vec!["8kbf7d35c070".into()],
            component_status: default_component_status(),
            impact: None,
            deliver_notifications: true,
        }
    }

    #[test]
    fn config_is_checked() {
        let n = StatuspageNotifier::new(config()).unwrap();
        assert_eq!(n.config.api_url, DEFAULT_API_URL);
        assert_eq!(n.describe(), "Statuspage page kctbh9vrtdwd");
        let mut c = config();
        c.component_status = "broken".into();
        assert_eq!(
            StatuspageNotifier::new(c).unwrap_err().field.as_deref(),
            Some("component_status")
        );
        let mut c = config();
        c.api_key = "abc123".into();
        assert_eq!(
            StatuspageNotifier::new(c).unwrap_err().field.as_deref(),
            Some("api_key")
        );
    }

    #[test]
    fn events_map_to_incident_statuses() {
        let done = |status| Event::RunFinished {
            status,
            duration_ms: 1,
            budget_ms: None,
        };
        assert_eq!(
            update_for("orders", &done(RunStatus::Succeeded)).unwrap().0,
            "resolved"
        );
        assert_eq!(
            update_for("orders", &done(RunStatus::VerificationFailed))
                .unwrap()
                .0,
            "identified"
        );
        assert!(update_for(
            "orders",
            &Event::StepProgress {
                step: "a".into(),
                message: "m".into()
            }
        )
        .is_none());
    }
}
