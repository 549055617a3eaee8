//! The kubelet's log endpoint, played for one test node.
//!
//! `GET pods/NAME/log` on the API server is proxied to the node's kubelet:
//! `https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER`
//! with the log options as query parameters. Without
//! `--kubelet-certificate-authority` the API server does not verify the
//! kubelet's certificate, so a self-signed one for 127.0.0.1 serves.
//!
//! Container output comes from two places: lines a test writes with
//! [`Kubelet::write`], and the lines of a container's `TEST_STDOUT` environment
//! variable, "printed" when the node player starts the container. The
//! endpoint honours `sinceSeconds`, `sinceTime`, `timestamps`, `tailLines` and
//! `limitBytes` as the kubelet does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;

/// (namespace, pod, container)
type ContainerKey = (String, String, String);
type Output = Vec<(DateTime<Utc>, String)>;

/// A kubelet log endpoint on a free port of 127.0.0.1.
pub struct Kubelet {
    addr: SocketAddr,
    output: Arc<Mutex<HashMap<ContainerKey, Output>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    pub async fn start() -> Kubelet {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let output: Arc<Mutex<HashMap<ContainerKey, Output>>> = Arc::default();
        let shared = output.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let output = shared.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let reply = container_logs(&output, &req);
                        async move { Ok::<_, Infallible>(reply) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Kubelet { addr, output, task }
    }

    /// The port to publish as the node's `daemonEndpoints.kubeletEndpoint`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A container prints `line` at `at`.
    pub fn write(&self, ns: &str, pod: &str, container: &str, at: DateTime<Utc>, line: &str) {
        self.output
            .lock()
            .unwrap()
            .entry((ns.into(), pod.into(), container.into()))
            .or_default()
            .push((at, line.to_string()));
    }

    /// Starts the pod's containers: each prints its `TEST_STDOUT` lines, once.
    pub fn start_containers(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Utc::now();
        let mut output = self.output.lock().unwrap();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let key = (ns.clone(), name.clone(), c.name.clone());
            if output.contains_key(&key) {
                continue;
            }
            let printed = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "TEST_STDOUT")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            output.insert(key, printed.lines().map(|l| (now, l.to_string())).collect());
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn container_logs(
    output: &Mutex<HashMap<ContainerKey, Output>>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let ["containerLogs", ns, pod, container] = parts[..] else {
        return reply(StatusCode::NOT_FOUND, "404 page not found\n".into());
    };
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2B", "+")))
        .collect();
    let since = match (query.get("sinceSeconds"), query.get("sinceTime")) {
        (Some(s), _) => match s.parse::<i64>() {
            Ok(s) => Some(Utc::now() - chrono::Duration::seconds(s)),
            Err(_) => return reply(StatusCode::BAD_REQUEST, format!("bad sinceSeconds {s}")),
        },
        (None, Some(t)) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => return reply(StatusCode::BAD_REQUEST, format!("bad sinceTime {t}")),
        },
        (None, None) => None,
    };
    let timestamps = query.get("timestamps").is_some_and(|v| v == "true");
    let key = (ns.to_string(), pod.to_string(), container.to_string());
    let output = output.lock().unwrap();
    let Some(lines) = output.get(&key) else {
        return reply(
            StatusCode::NOT_FOUND,
            format!("container {container} of pod {ns}/{pod} is not running on this node"),
        );
    };
    let mut kept: Vec<String> = lines
        .iter()
        .filter(|(at, _)| since.is_none_or(|s| *at >= s))
        .map(|(at, line)| {
            if timestamps {
                format!(
                    "{} {line}\n",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                )
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if let Some(tail) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        kept.drain(..kept.len().saturating_sub(tail));
    }
    let mut body = kept.concat().into_bytes();
    if let Some(limit) = query
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.truncate(limit);
    }
    Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
