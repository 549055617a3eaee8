//! A stand-in Vault server for tests: the KV version 2 HTTP API and AppRole
//! login, in memory, on 127.0.0.1. It is not Vault: it follows Vault's
//! documented requests, status codes and error bodies closely enough to test
//! a client against, and records every request so contract tests can pin them.
//!
//! Followed from Vault's documentation (KV v2 API, AppRole API):
//! - `GET /v1/{mount}/data/{path}[?version=N]`: 200 with `data.data` and
//!   `data.metadata`; a deleted or destroyed version answers 404 with
//!   `data.data: null` and its metadata; an unknown version 404 `{"errors":[]}`.
//! - `POST|PUT /v1/{mount}/data/{path}` with `{"data":{..},"options":{"cas":N}}`:
//!   a `cas` that is not the current version answers 400
//!   `{"errors":["check-and-set parameter did not match the current version"]}`.
//! - `GET /v1/{mount}/metadata/{path}`: versions with `deletion_time`/`destroyed`.
//! - A missing or unknown `X-Vault-Token`: 403 `{"errors":["permission denied"]}`.
//! - A missing path: 404 `{"errors":[]}`.
//! - `X-Vault-Namespace` selects the namespace secrets live in.
//! - `POST /v1/auth/{mount}/login` with `role_id`, `secret_id`: a token in `auth`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `GET`, `POST`...
    pub method: String,
    /// Path and query, e.g. `/v1/secret/data/app?version=2`.
    pub target: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Recorded {
    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.body).expect("request body is JSON")
        }
    }
}

#[derive(Debug, Clone)]
struct Version {
    data: Option<Value>,
    created_time: String,
    deletion_time: String,
    destroyed: bool,
}

#[derive(Debug, Clone, Default)]
struct Secret {
    versions: BTreeMap<u64, Version>,
    current: u64,
    created_time: String,
    updated_time: String,
}

type Key = (String, String, String); // namespace, mount, path

#[derive(Default)]
struct State {
    tokens: HashSet<String>,
    approles: HashMap<(String, String), String>, // (role_id, secret_id) -> token issued
    secrets: HashMap<Key, Secret>,
    requests: Vec<Recorded>,
    /// Written (as another client would) just before the next write to the key.
    concurrent_write: Option<(Key, Value)>,
    clock: u64,
}

impl State {
    fn now(&mut self) -> String {
        self.clock += 1;
        format!(
            "2025-01-15T12:{:02}:{:02}.000000Z",
            self.clock / 60 % 60,
            self.clock % 60
        )
    }

    fn write(&mut self, key: &Key, data: Value) -> u64 {
        let now = self.now();
        let secret = self.secrets.entry(key.clone()).or_insert_with(|| Secret {
            created_time: now.clone(),
            ..Secret::default()
        });
        secret.current += 1;
        secret.updated_time = now.clone();
        secret.versions.insert(
            secret.current,
            Version {
                data: Some(data),
                created_time: now,
                deletion_time: String::new(),
                destroyed: false,
            },
        );
        secret.current
    }
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(namespace: &str, mount: &str, path: &str) -> Key {
    (namespace.to_string(), mount.to_string(), path.to_string())
}

impl StandIn {
    /// Starts a stand-in on a free port of 127.0.0.1 that accepts `tokens`.
    pub async fn start(tokens: &[&str]) -> StandIn {
        Self::start_with(tokens, None).await
    }

    /// Starts a stand-in serving HTTPS with a certificate for 127.0.0.1 and
    /// `localhost` issued by a fresh CA; returns it and the CA's PEM.
    pub async fn start_tls(tokens: &[&str]) -> (StandIn, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::start_with(tokens, Some(acceptor)).await, ca.pem())
    }

    async fn start_with(tokens: &[&str], tls: Option<tokio_rustls::TlsAcceptor>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            ..State::default()
        }));
        let shared = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = serve(stream, state).await;
                            }
                        }
                        None => {
                            let _ = serve(stream, state).await;
                        }
                    }
                });
            }
        });
        StandIn {
            addr,
            scheme,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (`https` for [`StandIn::start_tls`]).
    pub fn address(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Writes a new version (in the root namespace unless `namespace` is set);
    /// returns its number.
    pub fn put(&self, namespace: &str, mount: &str, path: &str, data: Value) -> u64 {
        self.state
            .lock()
            .unwrap()
            .write(&key(namespace, mount, path), data)
    }

    /// Soft-deletes versions (as `vault kv delete -versions=...`).
    pub fn delete_versions(&self, mount: &str, path: &str, versions: &[u64]) {
        let mut state = self.state.lock().unwrap();
        let now = state.now();
        let secret = state
            .secrets
            .get_mut(&key("", mount, path))
            .expect("secret");
        for v in versions {
            let version = secret.versions.get_mut(v).expect("version");
            version.deletion_time = now.clone();
        }
    }

    /// Destroys versions (as `vault kv destroy -versions=...`).
    pub fn destroy_versions(&self, mount: &str, path: &str, versions: &[u64]) {
        let mut state = self.state.lock().unwrap();
        let secret = state
            .secrets
            .get_mut(&key("", mount, path))
            .expect("secret");
        for v in versions {
            let version = secret.versions.get_mut(v).expect("version");
            version.destroyed = true;
            version.data = None;
        }
    }

    /// The current version and its data.
    pub fn current(&self, namespace: &str, mount: &str, path: &str) -> (u64, Value) {
        let state = self.state.lock().unwrap();
        let secret = &state.secrets[&key(namespace, mount, path)];
        let data = secret.versions[&secret.current]
            .data
            .clone()
            .unwrap_or(Value::Null);
        (secret.current, data)
    }

    /// Makes another client write `data` just before our next write to the
    /// secret arrives, so that a check-and-set write loses the race.
    pub fn write_concurrently_before_next_write(&self, mount: &str, path: &str, data: Value) {
        self.state.lock().unwrap().concurrent_write = Some((key("", mount, path), data));
    }

    /// Lets `role_id`/`secret_id` log in at `auth/approle`, issuing `token`.
    pub fn add_approle(&self, role_id: &str, secret_id: &str, token: &str) {
        self.state
            .lock()
            .unwrap()
            .approles
            .insert((role_id.into(), secret_id.into()), token.into());
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let request = Recorded {
            method,
            target,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let (status, reply) = {
            let mut state = state.lock().unwrap();
            state.requests.push(request.clone());
            handle(&mut state, &request)
        };
        let text = reply.to_string();
        let reason = match status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        let stream = reader.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(text.as_bytes()).await?;
        stream.flush().await?;
    }
}

fn errors(list: &[&str]) -> Value {
    json!({ "errors": list })
}

fn envelope(data: Value) -> Value {
    json!({
        "request_id": "00000000-0000-0000-0000-000000000000",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    })
}

fn version_metadata(n: u64, v: &Version) -> Value {
    json!({
        "created_time": v.created_time,
        "custom_metadata": null,
        "deletion_time": v.deletion_time,
        "destroyed": v.destroyed,
        "version": n,
    })
}

fn handle(state: &mut State, req: &Recorded) -> (u16, Value) {
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target.as_str(), ""),
    };
    let Some(rest) = path.strip_prefix("/v1/") else {
        return (404, errors(&[]));
    };
    let namespace = req
        .headers
        .get("x-vault-namespace")
        .map(|n| n.trim_matches('/').to_string())
        .unwrap_or_default();

    // AppRole login needs no token.
    if let Some(auth_mount) = rest
        .strip_prefix("auth/")
        .and_then(|r| r.strip_suffix("/login"))
    {
        if req.method != "POST" && req.method != "PUT" {
            return (405, errors(&["unsupported operation"]));
        }
        let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
        let role = body["role_id"].as_str().unwrap_or_default().to_string();
        let secret = body["secret_id"].as_str().unwrap_or_default().to_string();
        if auth_mount != "approle" {
            return (403, errors(&["permission denied"]));
        }
        if role.is_empty() {
            return (400, errors(&["missing role_id"]));
        }
        return match state.approles.get(&(role.clone(), secret)).cloned() {
            Some(token) => {
                state.tokens.insert(token.clone());
                (
                    200,
                    json!({
                        "request_id": "00000000-0000-0000-0000-000000000001",
                        "lease_id": "", "renewable": false, "lease_duration": 0,
                        "data": null, "wrap_info": null, "warnings": null,
                        "auth": {
                            "client_token": token,
                            "accessor": "accessor-1",
                            "policies": ["default", "config-reader"],
                            "token_policies": ["default", "config-reader"],
                            "metadata": { "role_name": "config" },
                            "lease_duration": 1200,
                            "renewable": true,
                            "entity_id": "entity-1",
                            "token_type": "service",
                            "orphan": true,
                        }
                    }),
                )
            }
            None => (400, errors(&["invalid role or secret ID"])),
        };
    }

    match req.headers.get("x-vault-token") {
        Some(t) if state.tokens.contains(t) => {}
        _ => return (403, errors(&["permission denied"])),
    }

    let Some((mount, rest)) = rest.split_once('/') else {
        return (404, errors(&[]));
    };
    if let Some(secret_path) = rest.strip_prefix("data/") {
        let k = key(&namespace, mount, secret_path);
        match req.method.as_str() {
            "GET" => {
                let Some(secret) = state.secrets.get(&k) else {
                    return (404, errors(&[]));
                };
                let wanted = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("version="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|v| *v != 0)
                    .unwrap_or(secret.current);
                let Some(version) = secret.versions.get(&wanted) else {
                    return (404, errors(&[]));
                };
                let metadata = version_metadata(wanted, version);
                match &version.data {
                    Some(data) if version.deletion_time.is_empty() => {
                        (200, envelope(json!({ "data": data, "metadata": metadata })))
                    }
                    _ => (404, envelope(json!({ "data": null, "metadata": metadata }))),
                }
            }
            "POST" | "PUT" => {
                let body: Value = match serde_json::from_str(&req.body) {
                    Ok(v) => v,
                    Err(_) => return (400, errors(&["error parsing JSON"])),
                };
                let Some(data) = body.get("data").filter(|d| d.is_object()).cloned() else {
                    return (400, errors(&["no data provided"]));
                };
                if let Some((ck, other)) = state.concurrent_write.take() {
                    if ck == k {
                        state.write(&k, other);
                    } else {
                        state.concurrent_write = Some((ck, other));
                    }
                }
                let current = state.secrets.get(&k).map(|s| s.current).unwrap_or(0);
                if let Some(cas) = body.pointer("/options/cas") {
                    if cas.as_u64() != Some(current) {
                        return (
                            400,
                            errors(&["check-and-set parameter did not match the current version"]),
                        );
                    }
                }
                let n = state.write(&k, data);
                let secret = &state.secrets[&k];
                (200, envelope(version_metadata(n, &secret.versions[&n])))
            }
            _ => (405, errors(&["unsupported operation"])),
        }
    } else if let Some(secret_path) = rest.strip_prefix("metadata/") {
        if req.method != "GET" {
            return (405, errors(&["unsupported operation"]));
        }
        let Some(secret) = state.secrets.get(&key(&namespace, mount, secret_path)) else {
            return (404, errors(&[]));
        };
        let versions: serde_json::Map<String, Value> = secret
            .versions
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    json!({
                        "created_time": v.created_time,
                        "deletion_time": v.deletion_time,
                        "destroyed": v.destroyed,
                    }),
                )
            })
            .collect();
        (
            200,
            envelope(json!({
                "cas_required": false,
                "created_time": secret.created_time,
                "current_version": secret.current,
                "custom_metadata": null,
                "delete_version_after": "0s",
                "max_versions": 0,
                "oldest_version": 0,
                "updated_time": secret.updated_time,
                "versions": versions,
            })),
        )
    } else {
        (404, errors(&[]))
    }
}
