//! `slack`: one message per run in a channel, updated in place
//! (`chat.update`) as the run goes, with a reply in its thread for each event.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use rollback_core::{ConfigError, Event, Notifier, RunInfo, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::timeline::{Phase, Runs, Timeline};

/// Slack's Web API.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// How many answers `429 Too Many Requests` one delivery waits out before it
/// gives up (and lets the executor's retry policy decide).
const RATE_LIMIT_WAITS: u32 = 3;

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}

/// Configuration of the `slack` notifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The channel to post in: a name (`#deployments`) or, better, its id
    /// (`C0123456789`). The bot must be a member of it.
    pub channel: String,
    /// The bot token (`xoxb-...`, scope `chat:write`), as a reference such as
    /// `${env:SLACK_TOKEN}`; resolved when a message is sent, never stored.
    pub token: String,
    /// The Web API's base URL (default `https://slack.com/api`); point it
    /// elsewhere only for a proxy or a test stand-in.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

type Client = SlackClient<SlackClientHyperHttpsConnector>;

/// Where a run's message lives.
#[derive(Debug, Clone)]
struct Posted {
    channel: SlackChannelId,
    ts: SlackTs,
}

#[derive(Debug)]
struct RunState {
    timeline: Timeline,
    message: Option<Posted>,
}

/// The `slack` notifier. One instance serves every run of a loaded plan and
/// remembers, per run id, the message it posted.
pub struct SlackNotifier {
    config: SlackConfig,
    client: OnceLock<Client>,
    runs: Runs<RunState>,
}

impl std::fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("channel", &self.config.channel)
            .field("api_url", &self.config.api_url)
            .finish_non_exhaustive()
    }
}

impl SlackNotifier {
    /// Checks the configuration; nothing is resolved or sent yet.
    pub fn new(mut config: SlackConfig) -> Result<Self, ConfigError> {
        if config.channel.trim().is_empty() {
            return Err(ConfigError::field(
                "channel",
                "is empty: write a channel id like C0123456789 or a name like #deployments",
            ));
        }
        crate::secret_reference("token", &config.token, "${env:SLACK_TOKEN}")?;
        let url = config.api_url.trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::field(
                "api_url",
                format!("`{url}` is not an http(s) URL: write e.g. https://slack.com/api"),
            ));
        }
        config.api_url = url;
        Ok(SlackNotifier {
            config,
            client: OnceLock::new(),
            runs: Runs::default(),
        })
    }

    fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build();
            SlackClient::new(
                SlackClientHyperConnector::with_connector(https)
                    .with_slack_api_url(&self.config.api_url),
            )
        })
    }

    /// How many runs this instance still remembers (a run is forgotten once
    /// its `run_finished` was delivered).
    pub fn active_runs(&self) -> usize {
        self.runs.len()
    }
}

/// The main message: a line for notifications and an attachment coloured
/// by status with the run's facts.
fn main_message(t: &Timeline, run: &RunInfo) -> SlackMessageContent {
    let title = format!(
        "{}Rollback of {}: {}",
        if t.drill { "[drill] " } else { "" },
        t.service,
        t.status()
    );
    let field = |title: &str, value: String, short: bool| {
        SlackMessageAttachmentFieldObject::new()
            .with_title(title.to_string())
            .with_value(value)
            .with_short(short)
    };
    let mut fields = vec![
        field("Service", t.service.clone(), true),
        field("Plan", t.plan.clone(), true),
        field("Reason", t.reason.clone(), false),
        field("Operator", t.operator.clone(), true),
        field("Started", t.started_at.clone(), true),
        field("Status", t.status().to_string(), true),
        field("Duration", t.duration_text(), true),
        field("Run", format!("{} on {}", run.run_id, run.host), false),
    ];
    // With `step_finished` (or a failed step) the message shows how far the
    // steps got; before that there is nothing to count.
    if let Some(steps) = t.steps_text() {
        fields.insert(7, field("Steps", steps, false));
    }
    SlackMessageContent::new()
        .with_text(format!("{title} ({})", t.reason))
        .with_attachments(vec![SlackMessageAttachment::new()
            .with_color(t.colour().to_string())
            .with_fallback(title.clone())
            .with_title(title)
            .with_fields(fields)])
}

/// A thread reply for the latest event.
fn reply(t: &Timeline, event: &Event) -> Option<SlackMessageContent> {
    let entry = t.entries.last()?;
    let icon = match (event, t.phase) {
        (
            Event::StepFinished {
                outcome: rollback_core::Outcome::Succeeded,
                ..
            }
            | Event::CheckFinished { passed: true, .. },
            _,
        ) => ":heavy_check_mark:",
        (_, phase) => match phase {
            Phase::Finished(rollback_core::RunStatus::Succeeded) => ":white_check_mark:",
            Phase::Finished(_) => ":x:",
            Phase::Running if entry.text.starts_with("budget") => ":hourglass:",
            Phase::Running => ":warning:",
        },
    };
    Some(SlackMessageContent::new().with_text(format!("{icon} {}", entry.text)))
}

fn is_auth_error(code: &str) -> bool {
    matches!(
        code,
        "invalid_auth"
            | "not_authed"
            | "account_inactive"
            | "token_revoked"
            | "token_expired"
            | "no_permission"
            | "missing_scope"
            | "not_allowed_token_type"
    )
}

impl SlackNotifier {
    /// Resolves the token reference (at run time, never at construction).
    fn token(&self, ctx: &StepContext) -> Result<SlackApiToken, StepError> {
        let token_value = ctx.resolve(&self.config.token)?;
        if token_value.trim().is_empty() {
            return Err(StepError::fatal(
                "the Slack token is empty: set the variable `token:` refers to",
            ));
        }
        Ok(SlackApiToken::new(SlackApiTokenValue::new(token_value)))
    }

    fn failure(&self, method: &str, err: SlackClientError) -> StepError {
        let channel = &self.config.channel;
        match &err {
            SlackClientError::ApiError(api) => {
                let code = api.code.as_str();
                let message = if is_auth_error(code) {
                    format!(
                        "Slack {method} refused the bot token ({code}): check the token \
                         `token:` refers to and that the app has the chat:write scope"
                    )
                } else if code == "channel_not_found" {
                    format!(
                        "Slack {method}: channel `{channel}` not found ({code}): write the \
                         channel's id (C0123456789) and invite the bot to it"
                    )
                } else if code == "not_in_channel" || code == "is_archived" {
                    format!(
                        "Slack {method}: the bot cannot post in `{channel}` ({code}): invite \
                         it with /invite, or pick another channel"
                    )
                } else {
                    format!("Slack {method} failed: {code}")
                };
                let transient = matches!(
                    code,
                    "internal_error"
                        | "fatal_error"
                        | "service_unavailable"
                        | "request_timeout"
                        | "ratelimited"
                        | "message_not_found"
                );
                if transient {
                    StepError::retryable(message)
                } else {
                    StepError::fatal(message)
                }
            }
            SlackClientError::HttpError(http) => {
                let status = http.status_code.as_u16();
                let mut message = format!("Slack {method} answered HTTP {status}");
                if status == 404 {
                    message.push_str(
                        ": check api_url (the Web API's base, e.g. https://slack.com/api)",
                    );
                }
                if status >= 500 || status == 408 {
                    StepError::retryable(message)
                } else {
                    StepError::fatal(message)
                }
            }
            SlackClientError::RateLimitError(rate) => StepError::retryable(format!(
                "Slack {method} is rate limited (429) and asked to wait {}",
                rate.retry_after
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_else(|| "an unknown time".into())
            )),
            SlackClientError::ProtocolError(_) => StepError::fatal(format!(
                "Slack {method} answered something that is not the Web API's JSON: check api_url"
            ))
            .with_source(err),
            _ => StepError::retryable(format!(
                "could not reach Slack for {method} at {} (check `api_url:` and that this \
                 host reaches it)",
                self.config.api_url
            ))
            .with_source(err),
        }
    }

    /// Calls the API, waiting out `429 Too Many Requests` as its
    /// `Retry-After` header says (a few times at most).
    async fn call<T, F, Fut>(&self, method: &str, mut f: F) -> Result<T, StepError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ClientResult<T>>,
    {
        let mut waits = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(SlackClientError::RateLimitError(rate)) if waits < RATE_LIMIT_WAITS => {
                    waits += 1;
                    tokio::time::sleep(rate.retry_after.unwrap_or(Duration::from_secs(1))).await;
                }
                Err(e) => return Err(self.failure(method, e)),
            }
        }
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn describe(&self) -> String {
        format!("Slack channel {}", self.config.channel)
    }

    /// Slack's `auth.test`: the Web API is reachable and accepts the token,
    /// and names the team and the bot user it belongs to. Nothing is posted.
    /// (Whether the bot may post in the channel is only known by posting.)
    async fn probe(&self, ctx: &StepContext) -> Result<Option<String>, StepError> {
        let token = self.token(ctx)?;
        let session = self.client().open_session(&token);
        // POST with an empty JSON object: auth.test takes no arguments, the
        // token travels in the Authorization header.
        let no_arguments = serde_json::json!({});
        let answer: SlackApiAuthTestResponse = self
            .call("auth.test", || {
                session
                    .http_session_api
                    .http_post("auth.test", &no_arguments, None)
            })
            .await?;
        let user = answer.user.as_deref().unwrap_or("(unnamed)");
        let bot = answer
            .bot_id
            .map(|b| format!(", bot {}", b.0))
            .unwrap_or_default();
        Ok(Some(format!(
            "Slack auth.test accepted the token: user `{user}` ({}{bot}) in team `{}` ({}, {}); \
             messages will go to {}",
            answer.user_id.0, answer.team, answer.team_id.0, answer.url.0, self.config.channel
        )))
    }

    async fn notify(
        &self,
        ctx: &StepContext,
        run: &RunInfo,
        event: &Event,
    ) -> Result<(), StepError> {
        let token = self.token(ctx)?;
        let session = self.client().open_session(&token);

        let (timeline, posted) = self.runs.with(
            &run.run_id,
            || RunState {
                timeline: Timeline::new(run),
                message: None,
            },
            |state| {
                state.timeline.record(event);
                (state.timeline.clone(), state.message.clone())
            },
        );
        let content = main_message(&timeline, run);

        match posted {
            None => {
                let request = SlackApiChatPostMessageRequest::new(
                    SlackChannelId::new(self.config.channel.clone()),
                    content,
                );
                let answer = self
                    .call("chat.postMessage", || session.chat_post_message(&request))
                    .await?;
                let posted = Posted {
                    channel: answer.channel,
                    ts: answer.ts,
                };
                self.runs.with(
                    &run.run_id,
                    || RunState {
                        timeline: timeline.clone(),
                        message: None,
                    },
                    |state| state.message = Some(posted.clone()),
                );
                // The first message already says everything about the start;
                // any other first event also gets its line in the thread.
                if !matches!(event, Event::RunStarted { .. }) {
                    self.post_reply(&session, &posted, &timeline, event).await?;
                }
            }
            Some(posted) => {
                let request = SlackApiChatUpdateRequest::new(
                    posted.channel.clone(),
                    content,
                    posted.ts.clone(),
                );
                let updated = self
                    .call("chat.update", || session.chat_update(&request))
                    .await;
                if let Err(e) = updated {
                    if e.message().contains("message_not_found") {
                        // Deleted by someone: post a fresh message on the retry.
                        self.runs.with(
                            &run.run_id,
                            || RunState {
                                timeline: timeline.clone(),
                                message: None,
                            },
                            |state| state.message = None,
                        );
                    }
                    return Err(e);
                }
                self.post_reply(&session, &posted, &timeline, event).await?;
            }
        }
        if matches!(event, Event::RunFinished { .. }) {
            self.runs.remove(&run.run_id);
        }
        Ok(())
    }
}

impl SlackNotifier {
    async fn post_reply(
        &self,
        session: &SlackClientSession<'_, SlackClientHyperHttpsConnector>,
        posted: &Posted,
        timeline: &Timeline,
        event: &Event,
    ) -> Result<(), StepError> {
        let Some(content) = reply(timeline, event) else {
            return Ok(());
        };
        let request = SlackApiChatPostMessageRequest::new(posted.channel.clone(), content)
            .with_thread_ts(posted.ts.clone());
        self.call("chat.postMessage", || session.chat_post_message(&request))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: &str) -> SlackConfig {
        SlackConfig {
            channel: "#deployments".into(),
            token: token.into(),
            api_url: "https://slack.com/api/".into(),
        }
    }

    #[test]
    fn a_literal_token_is_refused() {
        let err = SlackNotifier::new(config("xoxb-123")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("token"));
        assert!(err.message.contains("${env:SLACK_TOKEN}"));
    }

    #[test]
    fn describe_names_the_channel_not_the_token() {
        let n = SlackNotifier::new(config("${env:SLACK_TOKEN}")).unwrap();
        assert_eq!(n.describe(), "Slack channel #deployments");
        assert_eq!(n.config.api_url, "https://slack.com/api");
    }

    #[test]
    fn the_message_carries_the_runs_facts() {
        let run = crate::timeline::tests::run_info();
        let t = Timeline::new(&run);
        let content = main_message(&t, &run);
        let json = serde_json::to_value(&content).unwrap();
        let attachment = &json["attachments"][0];
        assert_eq!(attachment["color"], crate::timeline::BLUE);
        let titles: Vec<&str> = attachment["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles,
            ["Service", "Plan", "Reason", "Operator", "Started", "Status", "Duration", "Run"]
        );
        assert_eq!(
            json["text"],
            "Rollback of orders: running (5xx spike after 2.4.1)"
        );
    }
}
