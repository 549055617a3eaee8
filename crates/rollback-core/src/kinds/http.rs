//! `http`: send a request as a step, or check an endpoint as a verifier.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{one_of, OUTPUT_CAP};
use crate::duration::{millis, HumanDuration};
use crate::registry::ConfigError;
use crate::step::{
    error_chain, ErrorKind, Measurement, OutputNames, Outputs, Preview, Step, StepContext,
    StepError, StepOutputs, Verifier,
};

fn default_method() -> String {
    "GET".into()
}

fn default_status() -> u16 {
    200
}

/// Configuration of the `http` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The URL to send the request to.
    pub url: String,
    /// The HTTP method (GET, POST, PUT, PATCH, DELETE...). Prefer idempotent
    /// ones (PUT, DELETE): a step may be sent again after a timeout or a crash.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers, e.g. `Authorization: Bearer ${env:TOKEN}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body, sent as is; exclusive with `json`.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON body (`${...}` references in its strings are resolved); sets
    /// `Content-Type: application/json`. Exclusive with `body`.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Statuses that count as success; any 2xx when empty. Connection errors,
    /// 408, 409, 429 and 5xx (but 501) are retried (per the step's `retries`),
    /// other statuses fail the step.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// A request that reverses this one, sent by undo; it must answer 2xx.
    /// Without it the step cannot be undone.
    #[serde(default)]
    pub undo: Option<HttpUndo>,
}

/// The compensating request of an `http` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpUndo {
    /// The URL to send the compensating request to.
    pub url: String,
    /// The HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body, sent as is.
    #[serde(default)]
    pub body: Option<String>,
}

/// Configuration of the `http` verifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    /// The URL to check.
    pub url: String,
    /// The HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The status the endpoint must answer.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text the response body must contain (e.g. the version rolled back to).
    #[serde(default)]
    pub body_contains: Option<String>,
    /// A regular expression the response body must match (Rust `regex`
    /// syntax; no `${...}` references).
    #[serde(default)]
    pub body_matches: Option<String>,
    /// The slowest acceptable response, body included, e.g. `500ms`.
    #[serde(default)]
    pub max_latency: Option<HumanDuration>,
}

fn is_template(s: &str) -> bool {
    s.contains("${")
}

fn parse_method(method: &str) -> Result<Method, String> {
    Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
        format!("`{method}` is not an HTTP method: write e.g. GET, POST, PUT or DELETE")
    })
}

fn parse_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url)
        .map_err(|e| format!("`{url}` is not a URL ({e}): write e.g. https://host/path"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(format!(
            "`{url}` has scheme `{other}`: only http and https are supported"
        )),
    }
}

/// Semantic checks of a request that are possible before templates are
/// resolved; `prefix` names the enclosing field (`undo.`).
fn check_request(
    prefix: &str,
    url: &str,
    method: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    if !is_template(url) {
        parse_url(url).map_err(|m| ConfigError::field(format!("{prefix}url"), m))?;
    }
    if !is_template(method) {
        parse_method(method).map_err(|m| ConfigError::field(format!("{prefix}method"), m))?;
    }
    for name in headers.keys().filter(|k| !is_template(k)) {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::field(
                format!("{prefix}headers"),
                format!("`{name}` is not a valid header name"),
            )
        })?;
    }
    Ok(())
}

fn build_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .build()
        .map_err(|e| ConfigError::new(format!("cannot set up the HTTP client: {e}")))
}

/// A request with every template resolved.
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Payload,
}

enum Payload {
    None,
    Text(String),
    Json(serde_json::Value),
}

impl Request {
    fn resolve(
        ctx: &StepContext,
        url: &str,
        method: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<Self, StepError> {
        let url = ctx.resolve(url)?;
        let url = parse_url(&url).map_err(|m| StepError::fatal(ctx.redact(&m)))?;
        let method =
            parse_method(&ctx.resolve(method)?).map_err(|m| StepError::fatal(ctx.redact(&m)))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = ctx.resolve(name)?;
            let value = ctx.resolve(value)?;
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                StepError::fatal(ctx.redact(&format!(
                    "`{name}` is not a valid header name: fix `headers`"
                )))
            })?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                StepError::fatal(ctx.redact(&format!(
                    "the value of header `{name}` holds characters a header cannot carry (e.g. a newline): fix \
                     `headers` or the value it refers to"
                )))
            })?;
            value.set_sensitive(true);
            map.append(header, value);
        }
        Ok(Request {
            method,
            url,
            headers: map,
            body: Payload::None,
        })
    }

    /// `METHOD url`, redacted.
    fn display(&self, ctx: &StepContext) -> String {
        ctx.redact(&format!("{} {}", self.method, self.url))
    }

    async fn send(self, client: &reqwest::Client) -> Result<Exchange, reqwest::Error> {
        let started = Instant::now();
        let mut builder = client.request(self.method, self.url).headers(self.headers);
        builder = match self.body {
            Payload::None => builder,
            Payload::Text(text) => builder.body(text),
            Payload::Json(value) => builder.json(&value),
        };
        let mut response = builder.send().await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await? {
            let room = OUTPUT_CAP - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(Exchange {
            status,
            body,
            truncated,
            latency: started.elapsed(),
        })
    }
}

/// A response, its body capped at [`OUTPUT_CAP`] bytes.
struct Exchange {
    status: u16,
    body: String,
    truncated: bool,
    latency: Duration,
}

impl Exchange {
    fn body_with_note(&self) -> String {
        if self.truncated {
            format!(
                "{}\n[body truncated after {} KiB]",
                self.body,
                OUTPUT_CAP / 1024
            )
        } else {
            self.body.clone()
        }
    }
}

/// The error of a request that got no complete response.
fn send_error(ctx: &StepContext, what: &str, e: reqwest::Error) -> StepError {
    // reqwest's own message rarely says why: the causes do.
    let message = ctx.redact(&format!(
        "{what} failed: {}: check that the service is up and reachable from here",
        error_chain(&e)
    ));
    let kind = if e.is_builder() {
        ErrorKind::Invalid
    } else {
        ErrorKind::Unavailable
    };
    StepError::new(kind, message)
}

/// Checks a step's response status: the kind of the error is the status's
/// (429, 5xx and 409 may succeed on another attempt).
fn check_status(
    ctx: &StepContext,
    what: &str,
    exchange: &Exchange,
    expect: &[u16],
) -> Result<(), StepError> {
    let status = exchange.status;
    let ok = if expect.is_empty() {
        (200..300).contains(&status)
    } else {
        expect.contains(&status)
    };
    if ok {
        return Ok(());
    }
    let expected = if expect.is_empty() {
        "2xx".to_string()
    } else {
        one_of(expect)
    };
    let detail = ctx.redact(&exchange.body_with_note());
    let advice = match ErrorKind::of_status(status) {
        Some(ErrorKind::Unavailable) => {
            "the service is overloaded or failing; it may succeed on another attempt"
        }
        Some(ErrorKind::Conflict) => {
            "the target changed under the request; it may succeed on another attempt"
        }
        _ => "check the URL, method, headers and body against the response below",
    };
    let message = ctx.redact(&format!(
        "{what} answered {status} (expected {expected}): {advice}"
    ));
    Err(StepError::from_status(status, message).with_detail(detail))
}

/// The `http` step.
#[derive(Debug)]
pub struct Http {
    config: HttpConfig,
    client: reqwest::Client,
}

impl Http {
    /// Checks the configuration.
    pub fn new(config: HttpConfig) -> Result<Self, ConfigError> {
        check_request("", &config.url, &config.method, &config.headers)?;
        if config.body.is_some() && config.json.is_some() {
            return Err(ConfigError::field(
                "json",
                "`body` and `json` are exclusive: keep one of them",
            ));
        }
        if let Some(bad) = config
            .expect_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(ConfigError::field(
                "expect_status",
                format!("{bad} is not an HTTP status (100 to 599)"),
            ));
        }
        if let Some(undo) = &config.undo {
            check_request("undo.", &undo.url, &undo.method, &undo.headers)?;
        }
        Ok(Http {
            config,
            client: build_client()?,
        })
    }
}

crate::step_outputs! {
    /// What an `http` step returns.
    pub struct HttpOutputs {
        /// The response status.
        pub status: u16,
        /// The response body (the first 64 KiB).
        pub body: String,
        /// Time to the full response.
        pub latency_ms: u64,
    }
}

#[async_trait]
impl Step for Http {
    fn describe(&self) -> String {
        format!(
            "send {} {}",
            self.config.method.to_ascii_uppercase(),
            self.config.url
        )
    }

    fn outputs(&self) -> OutputNames {
        HttpOutputs::names()
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let request = Request::resolve(
            ctx,
            &self.config.url,
            &self.config.method,
            &self.config.headers,
        )?;
        let summary = format!("send {}", request.display(ctx));
        Ok(Preview::new(summary.clone(), vec![summary]))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let mut request = Request::resolve(
            ctx,
            &self.config.url,
            &self.config.method,
            &self.config.headers,
        )?;
        if let Some(body) = &self.config.body {
            request.body = Payload::Text(ctx.resolve(body)?);
        } else if let Some(json) = &self.config.json {
            request.body = Payload::Json(ctx.resolve_json(json)?);
        }
        let what = request.display(ctx);
        let exchange = request
            .send(&self.client)
            .await
            .map_err(|e| send_error(ctx, &what, e))?;
        check_status(ctx, &what, &exchange, &self.config.expect_status)?;
        Ok(HttpOutputs {
            status: exchange.status,
            body: exchange.body_with_note(),
            latency_ms: millis(exchange.latency),
        }
        .into_outputs())
    }

    fn can_undo(&self) -> bool {
        self.config.undo.is_some()
    }

    async fn undo(&self, ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        let Some(undo) = &self.config.undo else {
            return Err(StepError::fatal(
                "this http step has no `undo` request: add one to make it reversible",
            ));
        };
        let mut request = Request::resolve(ctx, &undo.url, &undo.method, &undo.headers)?;
        if let Some(body) = &undo.body {
            request.body = Payload::Text(ctx.resolve(body)?);
        }
        let what = request.display(ctx);
        let exchange = request
            .send(&self.client)
            .await
            .map_err(|e| send_error(ctx, &what, e))?;
        check_status(ctx, &what, &exchange, &[])
    }
}

/// The `http` verifier.
#[derive(Debug)]
pub struct HttpCheck {
    config: HttpCheckConfig,
    body_matches: Option<Regex>,
    client: reqwest::Client,
}

impl HttpCheck {
    /// Checks the configuration and compiles `body_matches`.
    pub fn new(config: HttpCheckConfig) -> Result<Self, ConfigError> {
        check_request("", &config.url, &config.method, &config.headers)?;
        if !(100..=599).contains(&config.status) {
            return Err(ConfigError::field(
                "status",
                format!("{} is not an HTTP status (100 to 599)", config.status),
            ));
        }
        let body_matches = config
            .body_matches
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| {
                ConfigError::field(
                    "body_matches",
                    format!("not a valid regular expression: {e}"),
                )
            })?;
        Ok(HttpCheck {
            config,
            body_matches,
            client: build_client()?,
        })
    }

    fn expected(&self, body_contains: Option<&str>) -> String {
        let mut parts = vec![format!("status {}", self.config.status)];
        if let Some(text) = body_contains {
            parts.push(format!("body contains `{text}`"));
        }
        if let Some(re) = &self.body_matches {
            parts.push(format!("body matches `{re}`"));
        }
        if let Some(max) = self.config.max_latency {
            parts.push(format!("latency <= {max}"));
        }
        parts.join(", ")
    }
}

#[async_trait]
impl Verifier for HttpCheck {
    fn describe(&self) -> String {
        format!(
            "{} {} answers {}",
            self.config.method.to_ascii_uppercase(),
            self.config.url,
            self.config.status
        )
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let request = Request::resolve(
            ctx,
            &self.config.url,
            &self.config.method,
            &self.config.headers,
        )?;
        let body_contains = self
            .config
            .body_contains
            .as_deref()
            .map(|t| ctx.resolve(t))
            .transpose()?;
        let expected = ctx.redact(&self.expected(body_contains.as_deref()));
        let exchange = match request.send(&self.client).await {
            Ok(exchange) => exchange,
            Err(e) => {
                let observed = ctx.redact(&format!("connection failed: {}", error_chain(&e)));
                return Ok(Measurement::new(false, observed, expected));
            }
        };
        let mut passed = exchange.status == self.config.status;
        let mut observed = format!("{} in {}ms", exchange.status, millis(exchange.latency));
        if let Some(text) = &body_contains {
            if !exchange.body.contains(text.as_str()) {
                passed = false;
                observed.push_str(&format!(", body lacks `{text}`"));
            }
        }
        if let Some(re) = &self.body_matches {
            if !re.is_match(&exchange.body) {
                passed = false;
                observed.push_str(&format!(", body does not match `{re}`"));
            }
        }
        if let Some(max) = self.config.max_latency {
            passed &= exchange.latency <= max.get();
        }
        Ok(Measurement::new(passed, ctx.redact(&observed), expected))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A request as the stand-in server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A tiny HTTP/1.1 server: `/status/N` answers N, `/version` answers
    /// `version v1`, `/slow` answers after 200ms; every request is recorded.
    struct Server {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        async fn start() -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let log = log.clone();
                    tokio::spawn(async move { serve(stream, log).await });
                }
            });
            Server { base, seen }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_string();
        let path = request_line.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while raw.len() < head_end + length {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
        log.lock().unwrap().push(Seen {
            method,
            path: path.clone(),
            headers,
            body,
        });
        let (status, body) = if let Some(code) = path.strip_prefix("/status/") {
            (code.parse::<u16>().unwrap(), format!("status {code}"))
        } else if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (200, "version v1".to_string())
        } else if path == "/version" {
            (200, "version v1".to_string())
        } else {
            (404, "no such page".to_string())
        };
        let response = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A local port with nothing listening on it.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn step(value: serde_json::Value) -> Http {
        Http::new(serde_json::from_value(value).expect("config")).expect("valid config")
    }

    fn check(value: serde_json::Value) -> HttpCheck {
        HttpCheck::new(serde_json::from_value(value).expect("config")).expect("valid config")
    }

    #[test]
    fn config_is_checked() {
        let build = |v| Http::new(serde_json::from_value(v).unwrap()).unwrap_err();
        let both = build(serde_json::json!({"url": "http://x/", "body": "a", "json": {"a": 1}}));
        assert_eq!(both.field.as_deref(), Some("json"));
        let url = build(serde_json::json!({"url": "not a url"}));
        assert_eq!(url.field.as_deref(), Some("url"));
        let method = build(serde_json::json!({"url": "http://x/", "method": "GE T"}));
        assert_eq!(method.field.as_deref(), Some("method"));
        let undo = build(serde_json::json!({"url": "http://x/", "undo": {"url": "ftp://x/"}}));
        assert_eq!(undo.field.as_deref(), Some("undo.url"));
        // Templates are checked when they are resolved, not before.
        assert!(Http::new(
            serde_json::from_value(serde_json::json!({"url": "${var:base}/x"})).unwrap()
        )
        .is_ok());
        let regex = HttpCheck::new(
            serde_json::from_value(serde_json::json!({"url": "http://x/", "body_matches": "v("}))
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(regex.field.as_deref(), Some("body_matches"));
    }

    #[tokio::test]
    async fn step_sends_the_request_and_returns_outputs() {
        let server = Server::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("http", dir.path());
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-123456\n").unwrap();
        let step = step(serde_json::json!({
            "url": server.url("/status/201"),
            "method": "put",
            "headers": {"Authorization": format!("Bearer ${{file:{}}}", token.display())},
            "json": {"replicas": 3, "image": format!("app:${{file:{}}}", token.display())},
        }));
        let outputs = step.run(&ctx).await.expect("request succeeds");
        assert_eq!(outputs["status"], 201);
        assert_eq!(outputs["body"], "status 201");
        assert!(outputs["latency_ms"].as_u64().is_some());
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].path, "/status/201");
        assert_eq!(seen[0].header("authorization"), Some("Bearer tok-123456"));
        assert_eq!(seen[0].header("content-type"), Some("application/json"));
        let sent: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"replicas": 3, "image": "app:tok-123456"})
        );
    }

    #[tokio::test]
    async fn statuses_decide_retryable_or_fatal() {
        let server = Server::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("http", dir.path());
        let busy = step(serde_json::json!({"url": server.url("/status/503")}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(busy.is_retryable(), "{}", busy.message());
        assert!(
            busy.message().contains("answered 503 (expected 2xx)"),
            "{}",
            busy.message()
        );
        assert_eq!(busy.detail(), Some("status 503"));
        let limited = step(serde_json::json!({"url": server.url("/status/429")}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(limited.is_retryable());
        let missing = step(serde_json::json!({"url": server.url("/status/404")}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(!missing.is_retryable());
        let expected = step(
            serde_json::json!({"url": server.url("/status/404"), "expect_status": [404, 410]}),
        );
        assert_eq!(expected.run(&ctx).await.unwrap()["status"], 404);
        let port = closed_port().await;
        let refused = step(serde_json::json!({"url": format!("http://127.0.0.1:{port}/")}))
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(refused.is_retryable(), "{}", refused.message());
    }

    #[tokio::test]
    async fn preview_sends_nothing_and_undo_sends_the_compensation() {
        let server = Server::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("http", dir.path());
        let step = step(serde_json::json!({
            "url": server.url("/status/200"),
            "method": "POST",
            "body": "pause",
            "undo": {"url": server.url("/status/204"), "method": "POST", "body": "resume"},
        }));
        let preview = step.preview(&ctx).await.unwrap();
        assert_eq!(
            preview.summary,
            format!("send POST {}", server.url("/status/200"))
        );
        assert!(server.seen().is_empty());
        assert!(step.can_undo());
        step.undo(&ctx, &Outputs::new()).await.unwrap();
        let seen = server.seen();
        assert_eq!(
            (seen[0].path.as_str(), seen[0].body.as_str()),
            ("/status/204", "resume")
        );
    }

    #[tokio::test]
    async fn verifier_measures_status_body_and_latency() {
        let server = Server::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("check", dir.path());
        let ok = check(serde_json::json!({
            "url": server.url("/version"),
            "body_contains": "v1",
            "max_latency": "5s",
        }));
        let ok = ok.check(&ctx).await.unwrap();
        assert!(ok.passed, "{ok:?}");
        assert!(
            ok.observed.starts_with("200 in ") && ok.observed.ends_with("ms"),
            "{}",
            ok.observed
        );
        assert_eq!(ok.expected, "status 200, body contains `v1`, latency <= 5s");

        let wrong = check(serde_json::json!({
            "url": server.url("/version"),
            "body_contains": "v2",
            "body_matches": "^version v[0-9]+$",
        }));
        let wrong = wrong.check(&ctx).await.unwrap();
        assert!(!wrong.passed);
        assert_eq!(
            wrong.expected,
            "status 200, body contains `v2`, body matches `^version v[0-9]+$`"
        );
        assert!(
            wrong.observed.ends_with(", body lacks `v2`"),
            "{}",
            wrong.observed
        );

        let status = check(serde_json::json!({"url": server.url("/status/503")}))
            .check(&ctx)
            .await
            .unwrap();
        assert!(!status.passed);
        assert!(
            status.observed.starts_with("503 in "),
            "{}",
            status.observed
        );

        let slow = check(serde_json::json!({"url": server.url("/slow"), "max_latency": "50ms"}))
            .check(&ctx)
            .await
            .unwrap();
        assert!(!slow.passed, "{slow:?}");
        assert_eq!(slow.expected, "status 200, latency <= 50ms");

        let port = closed_port().await;
        let down = check(serde_json::json!({"url": format!("http://127.0.0.1:{port}/health")}))
            .check(&ctx)
            .await
            .unwrap();
        assert!(!down.passed);
        assert!(
            down.observed.starts_with("connection failed: "),
            "{}",
            down.observed
        );
    }
}
