//! Test support: stand-in servers for the APIs that cannot run here (Slack's
//! Web API, Atlassian Statuspage), a recording HTTP server for webhooks, a
//! server that never answers, and helpers to run real plans and read their
//! journal.
//!
//! The stand-ins follow the documented request and response shapes,
//! including their errors; they are named as stand-ins and used only here.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunReport};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One request a server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST`, `PATCH`...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, value: Value) -> Self {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(&value).unwrap(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers
/// with `handler`.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Starts a server.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_ascii_lowercase(),
                                        v.to_str().unwrap_or("").to_string(),
                                    )
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let recorded = Recorded {
                                method,
                                path,
                                headers,
                                body,
                                at: Instant::now(),
                            };
                            let reply = handler(&recorded);
                            log.lock().unwrap().push(recorded);
                            let mut response = Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                response = response.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            url,
            requests,
            task,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A server that accepts connections and never answers: a hung endpoint.
pub struct Silent {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    connections: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    /// Starts it.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections: Arc<Mutex<usize>> = Arc::default();
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                held.push(stream); // kept open, never read, never answered
            }
        });
        Silent {
            url,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Slack Web API stand-in
// ---------------------------------------------------------------------------

/// A message in the Slack stand-in.
#[derive(Debug, Clone)]
pub struct SlackMessage {
    /// Channel id.
    pub channel: String,
    /// Message ts.
    pub ts: String,
    /// Parent ts when it is a thread reply.
    pub thread_ts: Option<String>,
    /// `text`.
    pub text: Option<String>,
    /// `attachments` as sent.
    pub attachments: Value,
    /// How many times chat.update changed it.
    pub edits: u32,
}

/// The Slack stand-in's state.
#[derive(Debug, Default)]
pub struct SlackState {
    /// The bot token that is accepted.
    pub token: String,
    /// Channel name (without `#`) → id.
    pub channels: HashMap<String, String>,
    /// Messages in order of posting.
    pub messages: Vec<SlackMessage>,
    /// Answer this many next requests with 429.
    pub rate_limit_next: u32,
    /// `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u64,
    /// The workspace's name (`team` in `auth.test`).
    pub team: String,
    next_ts: u64,
}

impl SlackState {
    /// Top-level messages (not thread replies).
    pub fn parents(&self) -> Vec<SlackMessage> {
        self.messages
            .iter()
            .filter(|m| m.thread_ts.is_none())
            .cloned()
            .collect()
    }

    /// Replies in the thread of `ts`.
    pub fn replies(&self, ts: &str) -> Vec<SlackMessage> {
        self.messages
            .iter()
            .filter(|m| m.thread_ts.as_deref() == Some(ts))
            .cloned()
            .collect()
    }
}

/// A stand-in for Slack's Web API (`chat.postMessage`, `chat.update`,
/// `auth.test`) at `{url}/api`. Like Slack it answers HTTP 200 with `{"ok":
/// false, "error": CODE}` for API errors (`not_authed`, `invalid_auth`,
/// `channel_not_found`, `no_text`, `message_not_found`, `invalid_json`,
/// `unknown_method`) and HTTP 429 with `Retry-After` when rate limited.
/// `auth.test` (GET or POST, no arguments) answers who the token belongs to:
/// `{"ok": true, "url", "team", "user", "team_id", "user_id", "bot_id",
/// "is_enterprise_install"}`.
pub struct SlackStandIn {
    /// The HTTP server.
    pub server: Server,
    /// Its state.
    pub state: Arc<Mutex<SlackState>>,
}

/// The id the stand-in gives `#deployments`.
pub const DEPLOYMENTS: &str = "C0DEPLOYS01";
/// The stand-in workspace's id, URL and name.
pub const SLACK_TEAM_ID: &str = "T0ROLLBACK1";
/// The stand-in workspace's URL.
pub const SLACK_TEAM_URL: &str = "https://rollback-test.slack.com/";
/// The stand-in workspace's name.
pub const SLACK_TEAM: &str = "Rollback Test";
/// The bot user the stand-in's token belongs to: name, user id, bot id.
pub const SLACK_BOT_USER: &str = "rollback";
/// The bot user's id.
pub const SLACK_BOT_USER_ID: &str = "U0ROLLBACK";
/// The bot's id.
pub const SLACK_BOT_ID: &str = "B0ROLLBACK";

fn slack_error(code: &str) -> Reply {
    Reply::json(200, json!({ "ok": false, "error": code }))
}

impl SlackStandIn {
    /// Starts one that accepts `token` and knows the channel `#deployments`.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(SlackState {
            token: token.into(),
            channels: HashMap::from([("deployments".to_string(), DEPLOYMENTS.to_string())]),
            next_ts: 1_700_000_000_000_100,
            retry_after_secs: 1,
            team: SLACK_TEAM.into(),
            ..Default::default()
        }));
        let s = state.clone();
        let server = Server::start(move |req| slack_answer(&mut s.lock().unwrap(), req)).await;
        SlackStandIn { server, state }
    }

    /// The `api_url` to configure.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.server.url)
    }
}

fn slack_answer(state: &mut SlackState, req: &Recorded) -> Reply {
    if state.rate_limit_next > 0 {
        state.rate_limit_next -= 1;
        return Reply::json(429, json!({ "ok": false, "error": "ratelimited" }))
            .header("Retry-After", &state.retry_after_secs.to_string());
    }
    let method = req.path.strip_prefix("/api/").unwrap_or("");
    let method = method.split('?').next().unwrap_or("");
    if !matches!(method, "chat.postMessage" | "chat.update" | "auth.test") {
        return Reply::json(404, json!({ "ok": false, "error": "unknown_method" }));
    }
    match req.header("authorization") {
        None => return slack_error("not_authed"),
        Some(h) if h != format!("Bearer {}", state.token) => return slack_error("invalid_auth"),
        Some(_) => {}
    }
    if method == "auth.test" {
        // No arguments; Slack takes it as GET or POST (form or JSON body).
        if !matches!(req.method.as_str(), "GET" | "POST") {
            return Reply::json(405, json!({ "ok": false, "error": "method_not_allowed" }));
        }
        return Reply::json(
            200,
            json!({
                "ok": true,
                "url": SLACK_TEAM_URL,
                "team": state.team,
                "user": SLACK_BOT_USER,
                "team_id": SLACK_TEAM_ID,
                "user_id": SLACK_BOT_USER_ID,
                "bot_id": SLACK_BOT_ID,
                "is_enterprise_install": false,
            }),
        );
    }
    if !req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return slack_error("invalid_json");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return slack_error("invalid_json");
    };
    let channel_arg = body["channel"].as_str().unwrap_or("");
    let text = body["text"].as_str().map(str::to_string);
    let attachments = body.get("attachments").cloned().unwrap_or(Value::Null);
    if text.is_none() && attachments.is_null() && body.get("blocks").is_none() {
        return slack_error("no_text");
    }
    match method {
        "chat.postMessage" => {
            let name = channel_arg.trim_start_matches('#');
            let channel = if state.channels.values().any(|id| id == channel_arg) {
                channel_arg.to_string()
            } else if let Some(id) = state.channels.get(name) {
                id.clone()
            } else {
                return slack_error("channel_not_found");
            };
            let thread_ts = body["thread_ts"].as_str().map(str::to_string);
            if let Some(parent) = &thread_ts {
                if !state
                    .messages
                    .iter()
                    .any(|m| &m.ts == parent && m.channel == channel)
                {
                    return slack_error("thread_not_found");
                }
            }
            state.next_ts += 100;
            let ts = format!(
                "{}.{:06}",
                state.next_ts / 1_000_000,
                state.next_ts % 1_000_000
            );
            state.messages.push(SlackMessage {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                text: text.clone(),
                attachments: attachments.clone(),
                edits: 0,
            });
            let mut message = json!({
                "type": "message", "subtype": "bot_message", "bot_id": "B0ROLLBACK",
                "ts": ts, "text": text.unwrap_or_default(),
            });
            if !attachments.is_null() {
                message["attachments"] = attachments;
            }
            if let Some(t) = thread_ts {
                message["thread_ts"] = json!(t);
            }
            Reply::json(
                200,
                json!({ "ok": true, "channel": channel, "ts": ts, "message": message }),
            )
        }
        _ => {
            // chat.update takes the channel's id, not its name.
            let ts = body["ts"].as_str().unwrap_or("").to_string();
            if !state.channels.values().any(|id| id == channel_arg) {
                return slack_error("channel_not_found");
            }
            let Some(m) = state
                .messages
                .iter_mut()
                .find(|m| m.ts == ts && m.channel == channel_arg)
            else {
                return slack_error("message_not_found");
            };
            m.text = text.clone();
            m.attachments = attachments.clone();
            m.edits += 1;
            Reply::json(
                200,
                json!({
                    "ok": true, "channel": channel_arg, "ts": ts, "text": text,
                    "message": { "text": text, "user": "U0ROLLBACK", "attachments": attachments },
                }),
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Statuspage stand-in
// ---------------------------------------------------------------------------

/// An incident in the Statuspage stand-in.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Current status.
    pub status: String,
    /// Each update: (status, body).
    pub updates: Vec<(String, String)>,
    /// Component id → status.
    pub components: BTreeMap<String, String>,
}

/// The Statuspage stand-in's state.
#[derive(Debug, Default)]
pub struct StatuspageState {
    /// The accepted API key.
    pub key: String,
    /// The one page id that exists.
    pub page_id: String,
    /// That page's name.
    pub page_name: String,
    /// The page's components: (id, name, status).
    pub components: Vec<(String, String, String)>,
    /// Incidents in order of creation.
    pub incidents: Vec<Incident>,
    /// Answer this many next requests with 429.
    pub rate_limit_next: u32,
}

/// A stand-in for Atlassian Statuspage's REST API v1 at `{url}/v1`:
/// `GET /pages/{page_id}` (200, the page), `GET /pages/{page_id}/components`
/// (200, a list), `POST /pages/{page_id}/incidents`
/// (201), `PATCH /pages/{page_id}/incidents/{incident_id}` (200); 401 without a valid
/// `Authorization: OAuth <key>`, 404 for an unknown page or incident, 422 for
/// an invalid incident, 429 with `Retry-After` when rate limited.
pub struct StatuspageStandIn {
    /// The HTTP server.
    pub server: Server,
    /// Its state.
    pub state: Arc<Mutex<StatuspageState>>,
}

const INCIDENT_STATUSES: &[&str] = &[
    "investigating",
    "identified",
    "monitoring",
    "resolved",
    "scheduled",
    "in_progress",
    "verifying",
    "completed",
];

impl StatuspageStandIn {
    /// Starts one with page `page_id` accepting `key`.
    pub async fn start(page_id: &str, key: &str) -> Self {
        let state = Arc::new(Mutex::new(StatuspageState {
            key: key.into(),
            page_id: page_id.into(),
            page_name: "Orders Status".into(),
            components: vec![(
                "8kbf7d35c070".into(),
                "Orders API".into(),
                "operational".into(),
            )],
            ..Default::default()
        }));
        let s = state.clone();
        let server = Server::start(move |req| statuspage_answer(&mut s.lock().unwrap(), req)).await;
        StatuspageStandIn { server, state }
    }

    /// The `api_url` to configure.
    pub fn api_url(&self) -> String {
        format!("{}/v1", self.server.url)
    }
}

fn incident_json(page_id: &str, i: &Incident) -> Value {
    json!({
        "id": i.id,
        "name": i.name,
        "status": i.status,
        "impact": "minor",
        "page_id": page_id,
        "shortlink": format!("https://stspg.io/{}", &i.id[..6]),
        "created_at": "2025-01-01T12:00:00.000Z",
        "updated_at": "2025-01-01T12:00:00.000Z",
        "resolved_at": if i.status == "resolved" { json!("2025-01-01T12:05:00.000Z") } else { Value::Null },
        "incident_updates": i.updates.iter().enumerate().rev().map(|(n, (status, body))| json!({
            "id": format!("upd{n:04}"), "incident_id": i.id, "status": status, "body": body,
        })).collect::<Vec<_>>(),
        "components": i.components.iter().map(|(id, status)| json!({"id": id, "status": status})).collect::<Vec<_>>(),
    })
}

/// A page as `GET /pages/{page_id}` returns it (the documented fields).
fn page_json(state: &StatuspageState) -> Value {
    let mut page = json!({
        "id": state.page_id,
        "created_at": "2024-06-01T09:00:00.000Z",
        "updated_at": "2025-01-01T12:00:00.000Z",
        "name": state.page_name,
        "page_description": null,
        "headline": null,
        "branding": "basic",
        "subdomain": "orders-status",
        "domain": null,
        "url": "https://www.example.com",
        "support_url": null,
        "hidden_from_search": false,
        "allow_page_subscribers": true,
        "allow_incident_subscribers": true,
        "allow_email_subscribers": true,
        "allow_sms_subscribers": false,
        "allow_rss_atom_feeds": true,
        "allow_webhook_subscribers": true,
        "notifications_from_email": "noreply@example.com",
        "notifications_email_footer": null,
        "activity_score": 0,
        "twitter_username": null,
        "viewers_must_be_subscribed": false,
        "ip_restrictions": null,
        "city": null,
        "state": null,
        "country": null,
        "time_zone": "Etc/UTC",
    });
    // The page's colours and images (one json! would hit the macro
    // recursion limit).
    let look = json!({
        "css_body_background_color": "#ffffff",
        "css_font_color": "#333333",
        "css_light_font_color": "#757575",
        "css_greens": "#2fcc66",
        "css_yellows": "#f1c40f",
        "css_oranges": "#e67e22",
        "css_blues": "#3498db",
        "css_reds": "#e74c3c",
        "css_border_color": "#ecf0f1",
        "css_graph_color": "#3498db",
        "css_link_color": "#3498db",
        "css_no_data": "#b3bac5",
        "favicon_logo": null,
        "transactional_logo": null,
        "hero_cover": null,
        "email_logo": null,
        "twitter_logo": null,
    });
    if let (Value::Object(page_map), Value::Object(look)) = (&mut page, look) {
        page_map.extend(look);
    }
    page
}

fn statuspage_answer(state: &mut StatuspageState, req: &Recorded) -> Reply {
    if state.rate_limit_next > 0 {
        state.rate_limit_next -= 1;
        return Reply::json(429, json!({ "error": "Rate limit exceeded" }))
            .header("Retry-After", "1");
    }
    if req.header("authorization") != Some(format!("OAuth {}", state.key).as_str()) {
        return Reply::json(401, json!({ "error": "Could not authenticate" }));
    }
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    if let ["v1", "pages", page] = parts.as_slice() {
        if *page != state.page_id {
            return Reply::json(404, json!({ "error": "Page not found" }));
        }
        return match req.method.as_str() {
            "GET" => Reply::json(200, page_json(state)),
            _ => Reply::json(405, json!({ "error": "Method not allowed" })),
        };
    }
    if let ["v1", "pages", page, "components"] = parts.as_slice() {
        if *page != state.page_id {
            return Reply::json(404, json!({ "error": "Page not found" }));
        }
        if req.method != "GET" {
            return Reply::json(405, json!({ "error": "Method not allowed" }));
        }
        let list: Vec<Value> = state
            .components
            .iter()
            .enumerate()
            .map(|(n, (id, name, status))| {
                json!({
                    "id": id, "page_id": state.page_id, "group_id": null,
                    "created_at": "2024-06-01T09:00:00.000Z",
                    "updated_at": "2025-01-01T12:00:00.000Z",
                    "group": false, "name": name, "description": null,
                    "position": n + 1, "status": status, "showcase": true,
                    "only_show_if_degraded": false, "automation_email": null,
                    "start_date": null,
                })
            })
            .collect();
        return Reply::json(200, Value::Array(list));
    }
    let (page, incident_id) = match parts.as_slice() {
        ["v1", "pages", page, "incidents"] => (*page, None),
        ["v1", "pages", page, "incidents", id] => (*page, Some(*id)),
        _ => return Reply::json(404, json!({ "error": "Not found" })),
    };
    if page != state.page_id {
        return Reply::json(404, json!({ "error": "Page not found" }));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Reply::json(400, json!({ "error": "Invalid JSON" }));
    };
    let incident = &body["incident"];
    if !incident.is_object() {
        return Reply::json(400, json!({ "error": "incident is missing" }));
    }
    if let Some(status) = incident.get("status") {
        if !status
            .as_str()
            .is_some_and(|s| INCIDENT_STATUSES.contains(&s))
        {
            return Reply::json(
                422,
                json!({ "error": ["Status is not included in the list"] }),
            );
        }
    }
    let components: BTreeMap<String, String> = incident["components"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let page_id = state.page_id.clone();
    match (req.method.as_str(), incident_id) {
        ("POST", None) => {
            let name = incident["name"].as_str().unwrap_or("");
            if name.trim().is_empty() {
                return Reply::json(422, json!({ "error": ["Name can't be blank"] }));
            }
            let status = incident["status"]
                .as_str()
                .unwrap_or("investigating")
                .to_string();
            let i = Incident {
                id: format!("p31zjtct2j{:02}", state.incidents.len()),
                name: name.into(),
                status: status.clone(),
                updates: vec![(status, incident["body"].as_str().unwrap_or("").into())],
                components,
            };
            let answer = incident_json(&page_id, &i);
            state.incidents.push(i);
            Reply::json(201, answer)
        }
        ("PATCH", Some(id)) | ("PUT", Some(id)) => {
            let Some(i) = state.incidents.iter_mut().find(|i| i.id == id) else {
                return Reply::json(404, json!({ "error": "Incident not found" }));
            };
            if let Some(status) = incident["status"].as_str() {
                i.status = status.into();
            }
            i.updates.push((
                i.status.clone(),
                incident["body"].as_str().unwrap_or("").into(),
            ));
            i.components.extend(components);
            Reply::json(200, incident_json(&page_id, i))
        }
        _ => Reply::json(405, json!({ "error": "Method not allowed" })),
    }
}

// ---------------------------------------------------------------------------
// Running plans
// ---------------------------------------------------------------------------

/// A state directory and a secret file for one test.
pub struct Fixture {
    /// Temporary directory holding the state dir and secret files.
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh one.
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `value` to a file and returns the `${file:...}` reference to it
    /// (a secret reference: resolved at run time, redacted from the journal).
    pub fn secret(&self, name: &str, value: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        format!("${{file:{}}}", path.display())
    }

    /// The registry with core's kinds and this crate's.
    pub fn registry() -> Registry {
        let mut registry = Registry::with_core_kinds();
        rollback_notify::register(&mut registry);
        registry
    }

    /// Loads a plan from YAML.
    pub fn plan(&self, yaml: &str) -> Plan {
        Plan::from_yaml(yaml, "test.yaml", &Self::registry(), &Default::default())
            .unwrap_or_else(|e| panic!("plan does not load: {e}"))
    }

    /// An executor journaling into this fixture's state dir.
    pub fn executor(&self) -> Executor {
        Executor::new(Arc::new(FileJournal::new(self.state_dir())))
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `plan` and waits (at most `wait`) for its notifications.
    pub async fn run(&self, plan: &Plan, wait: Duration) -> RunReport {
        let executor = self.executor();
        let report = executor
            .run(
                plan,
                RunOptions::new("5xx spike after 2.4.1").operator("alice"),
            )
            .await
            .unwrap();
        executor.flush_notifications(wait).await;
        report
    }

    /// The journal file of a run, as text.
    pub fn journal_text(&self, run_id: &str) -> String {
        let path = self
            .state_dir()
            .join("runs")
            .join(run_id)
            .join("journal.jsonl");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The journal's records as JSON values.
    pub fn journal(&self, run_id: &str) -> Vec<Value> {
        self.journal_text(run_id)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The `event` names of journal records, in order.
pub fn event_names(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Asserts that no file of the state directory holds `secret`.
pub fn assert_not_in_state(fixture: &Fixture, secret: &str) {
    for file in files_under(&fixture.state_dir()) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            !text.contains(secret),
            "{} holds the secret:\n{text}",
            file.display()
        );
    }
}
