//! Connecting to a cluster: kubeconfig, context and namespace options shared by
//! every kind, in-cluster configuration when run as a Job, and a client cache
//! so that the steps of one run share connections.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rollback_core::{StepContext, StepError};

/// Where a kind talks to: the shared connection fields of every kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Target {
    /// Path of a kubeconfig file (templates allowed).
    pub kubeconfig: Option<String>,
    /// Context inside the kubeconfig.
    pub context: Option<String>,
    /// Namespace; the context's namespace (or `default`) when unset.
    pub namespace: Option<String>,
}

/// A connected client and the namespace to work in.
#[derive(Clone)]
pub struct Conn {
    /// The client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Installs rustls's `ring` provider for the process, so a binary that links
/// several TLS users never has to guess between providers.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

type Key = (Option<String>, Option<String>);

/// Parsed configurations by (kubeconfig, context).
fn cache() -> &'static Mutex<HashMap<Key, Config>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Config>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Clients by (kubeconfig, context, runtime): a client's connection pool
/// lives on the tokio runtime it was made on, so steps of one run share
/// connections (no TLS handshake per step) and another runtime gets its own.
fn clients() -> &'static Mutex<HashMap<(Key, tokio::runtime::Id), Client>> {
    static CLIENTS: OnceLock<Mutex<HashMap<(Key, tokio::runtime::Id), Client>>> = OnceLock::new();
    CLIENTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds a kube [`Config`] from explicit options: a kubeconfig file and
/// context when given, otherwise `$KUBECONFIG` / `~/.kube/config`, otherwise
/// the in-cluster service account.
pub async fn load_config(
    kubeconfig: Option<&str>,
    context: Option<&str>,
) -> Result<Config, String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {path}: {e}"))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("kubeconfig {path}: {e}"))
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig: {e}")),
        None => Config::infer().await.map_err(|e| {
            format!("no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster: {e}")
        }),
    }
}

impl Target {
    /// Resolves templates and connects (cached per kubeconfig and context).
    pub async fn connect(&self, ctx: &StepContext) -> Result<Conn, StepError> {
        let kubeconfig = self
            .kubeconfig
            .as_deref()
            .map(|k| ctx.resolve(k))
            .transpose()?;
        let context = self
            .context
            .as_deref()
            .map(|c| ctx.resolve(c))
            .transpose()?;
        let namespace = self
            .namespace
            .as_deref()
            .map(|n| ctx.resolve(n))
            .transpose()?;
        let key = (kubeconfig.clone(), context.clone());
        let runtime = tokio::runtime::Handle::current().id();
        let client_key = (key.clone(), runtime);
        let cached = cache().lock().expect("config cache").get(&key).cloned();
        let config = match cached {
            Some(hit) => hit,
            None => {
                install_crypto_provider();
                let config = load_config(kubeconfig.as_deref(), context.as_deref())
                    .await
                    .map_err(|m| {
                        StepError::fatal(format!(
                            "{m}: set `kubeconfig`/`context` on the step or KUBECONFIG"
                        ))
                    })?;
                cache()
                    .lock()
                    .expect("config cache")
                    .insert(key, config.clone());
                config
            }
        };
        let default_ns = config.default_namespace.clone();
        let existing = clients()
            .lock()
            .expect("client cache")
            .get(&client_key)
            .cloned();
        let client = match existing {
            Some(c) => c,
            None => {
                let c = build_client(config).map_err(|e| {
                    StepError::fatal(format!("cannot build a Kubernetes client: {e}"))
                })?;
                clients()
                    .lock()
                    .expect("client cache")
                    .insert(client_key, c.clone());
                c
            }
        };
        Ok(Conn {
            client,
            namespace: namespace.unwrap_or(default_ns),
        })
    }
}

/// A kube [`Client`] like `Client::try_from(config)`, with two changes that
/// matter to a rollback's latency:
/// - HTTP/2 when the API server offers it (ALPN `h2`, else HTTP/1.1): every
///   request and watch of a run shares one TLS connection. Over kube's
///   HTTP/1.1, each concurrent request and each watch needs a connection of
///   its own (a TLS handshake, ~5 ms of CPU on each side), and a watch that
///   is dropped mid-stream takes its connection with it.
/// - TCP_NODELAY: kube's connector leaves Nagle's algorithm on, and a request
///   written in two TLS records then waits for the server's delayed ACK
///   (40 ms on Linux) before its second half leaves.
///
/// Everything else kube's own builder sets up is kept: the TLS settings of the
/// kubeconfig (CA, client certificate, `tls-server-name`), the connect, read
/// and write timeouts, and the retry of 429/503/504 answers. Proxies in the
/// kubeconfig fall back to kube's own builder. (No kind here upgrades a
/// connection, as exec and port-forward would, which HTTP/2 cannot carry.)
pub fn build_client(config: Config) -> Result<Client, kube::Error> {
    use kube::client::ConfigExt;
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = config.rustls_client_config()?;
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        builder =
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = builder.enable_http1().enable_http2().wrap_connector(http);
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, kube::client::Body>(timed);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| {
            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
        })
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// Turns a kube error into a step error that says what to do next.
pub fn api_error(what: &str, e: kube::Error) -> StepError {
    match &e {
        kube::Error::Api(status) => {
            let code = status.code;
            let msg = format!("{what}: {} ({code} {})", status.message, status.reason);
            match code {
                404 => StepError::fatal(format!("{msg}: check the name and namespace")),
                401 => StepError::fatal(format!(
                    "{what}: the API server did not accept the credentials (401 Unauthorized): renew the \
                     token or certificate in the kubeconfig"
                )),
                // Not retryable, and not a missing object: the account lacks a grant.
                403 => StepError::fatal(format!(
                    "{what}: permission denied: {}",
                    crate::permission::explain_status(status)
                )),
                409 | 429 | 500..=599 => StepError::retryable(msg),
                _ => StepError::fatal(msg),
            }
        }
        _ => StepError::retryable(format!(
            "{what}: {e}: check that the API server is reachable"
        ))
        .with_source(e),
    }
}

/// Whether a kube error is an HTTP 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is a write conflict: a 409, or a JSON patch `test` op
/// that failed because the object changed since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409
        || (s.code == 422 && s.message.contains("test"))
        || (s.code == 500 && s.message.contains("testing value")))
}

/// Defines a kind's configuration struct with the shared connection fields
/// (`namespace`, `context`, `kubeconfig`) appended, and a `target()` accessor.
macro_rules! k8s_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
            /// Namespace of the object; the kubeconfig context's namespace
            /// (else `default`) when unset.
            #[serde(default)]
            pub namespace: Option<String>,
            /// Context in the kubeconfig; the current context when unset.
            #[serde(default)]
            pub context: Option<String>,
            /// Path of a kubeconfig file; `$KUBECONFIG`, `~/.kube/config` or the
            /// in-cluster service account when unset.
            #[serde(default)]
            pub kubeconfig: Option<String>,
        }

        impl $name {
            /// The connection fields.
            pub fn target(&self) -> $crate::client::Target {
                $crate::client::Target {
                    kubeconfig: self.kubeconfig.clone(),
                    context: self.context.clone(),
                    namespace: self.namespace.clone(),
                }
            }
        }
    };
}
pub(crate) use k8s_config;
