//! Reaching Vault: the fields every kind shares (address, auth, namespace, CA
//! file, mount, path) and the authenticated client built from them at run time.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rollback_core::{ConfigError, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::error::Error;

/// The default KV v2 mount.
pub(crate) fn default_mount() -> String {
    "secret".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// How to log in to Vault.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// A Vault token, written as a reference so it never sits in the plan:
    /// `${env:VAULT_TOKEN}` or `${file:/run/secrets/vault-token}`.
    Token(String),
    /// AppRole login (`POST /v1/auth/{mount}/login`); the token it returns
    /// lives only in memory for the step.
    Approle(AppRole),
}

/// AppRole credentials.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRole {
    /// The role's id, e.g. `${env:VAULT_ROLE_ID}`.
    pub role_id: String,
    /// The secret id, written as a reference: `${env:VAULT_SECRET_ID}` or
    /// `${file:/run/secrets/vault-secret-id}`.
    pub secret_id: String,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

/// Declares a kind's configuration: the shared connection fields followed by
/// the kind's own.
macro_rules! vault_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Vault's address, e.g. `https://vault.internal:8200` or `${env:VAULT_ADDR}`.
            pub address: String,
            /// How to log in: `{token: "${env:VAULT_TOKEN}"}` or
            /// `{approle: {role_id: ..., secret_id: "${env:VAULT_SECRET_ID}"}}`.
            pub auth: $crate::connection::Auth,
            /// A Vault Enterprise namespace, sent as the `X-Vault-Namespace` header.
            #[serde(default)]
            pub namespace: Option<String>,
            /// A PEM file of CA certificates trusted for an `https` address,
            /// instead of the system's certificate store.
            #[serde(default)]
            pub ca_file: Option<String>,
            /// The KV version 2 secrets engine's mount.
            #[serde(default = "crate::connection::default_mount")]
            pub mount: String,
            /// The secret's path inside the mount, written without `data/`
            /// (as for `vault kv get -mount=secret order-service/config`).
            pub path: String,
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            pub(crate) fn target(&self) -> $crate::connection::Target<'_> {
                $crate::connection::Target {
                    address: &self.address,
                    auth: &self.auth,
                    namespace: self.namespace.as_deref(),
                    ca_file: self.ca_file.as_deref(),
                    mount: &self.mount,
                    path: &self.path,
                }
            }
        }
    };
}
pub(crate) use vault_config;

/// The shared connection fields of one kind's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub address: &'a str,
    pub auth: &'a Auth,
    pub namespace: Option<&'a str>,
    pub ca_file: Option<&'a str>,
    pub mount: &'a str,
    pub path: &'a str,
}

fn is_template(s: &str) -> bool {
    s.contains("${")
}

fn is_secret_reference(s: &str) -> bool {
    let t = s.trim();
    (t.starts_with("${env:") || t.starts_with("${file:"))
        && t.ends_with('}')
        && t.matches("${").count() == 1
}

fn check_address(address: &str) -> Result<reqwest_vault::Url, String> {
    let url = reqwest_vault::Url::parse(address).map_err(|e| {
        format!("`{address}` is not a URL ({e}): write e.g. https://vault.internal:8200")
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "`{address}` has scheme `{other}`: Vault is reached over http or https"
        )),
    }
}

fn check_segment(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim_matches('/').is_empty() {
        return Err(ConfigError::field(field, "must not be empty"));
    }
    if value.contains("..") || value.contains('?') || value.contains('#') {
        return Err(ConfigError::field(
            field,
            format!("`{value}` holds `..`, `?` or `#`: write the plain KV path"),
        ));
    }
    Ok(())
}

impl Target<'_> {
    /// Checks what can be checked before references are resolved.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !is_template(self.address) {
            check_address(self.address).map_err(|m| ConfigError::field("address", m))?;
        }
        match self.auth {
            Auth::Token(token) => {
                if !is_secret_reference(token) {
                    return Err(ConfigError::field(
                        "auth.token",
                        "write the token as a reference, `${env:VAULT_TOKEN}` or `${file:PATH}`: a token written \
                         in the plan would be kept with every run's copy of the plan",
                    ));
                }
            }
            Auth::Approle(approle) => {
                if !is_secret_reference(&approle.secret_id) {
                    return Err(ConfigError::field(
                        "auth.approle.secret_id",
                        "write the secret id as a reference, `${env:VAULT_SECRET_ID}` or `${file:PATH}`: a secret \
                         written in the plan would be kept with every run's copy of the plan",
                    ));
                }
                if approle.role_id.trim().is_empty() {
                    return Err(ConfigError::field(
                        "auth.approle.role_id",
                        "must not be empty",
                    ));
                }
                check_segment("auth.approle.mount", &approle.mount)?;
            }
        }
        check_segment("mount", self.mount)?;
        check_segment("path", self.path)?;
        Ok(())
    }

    /// `mount/path`, for descriptions (references unresolved).
    pub(crate) fn display(&self) -> String {
        format!(
            "{}/{}",
            self.mount.trim_matches('/'),
            self.path.trim_matches('/')
        )
    }
}

/// The system's CA certificates, loaded once per process.
fn system_roots() -> &'static Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(loaded.certs);
        Arc::new(roots)
    })
}

/// A rustls configuration on the `ring` provider, trusting `ca_file` when
/// given, else the system's store. Built here (not by vaultrs) so that no
/// process-wide crypto provider has to be installed.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let roots = match ca_file {
        None => system_roots().clone(),
        Some(path) => {
            let setup = |why: String| {
                Error::Setup {
                message: format!(
                    "cannot use CA file `{path}`: {why}: give `ca_file` a PEM file of CA certificates"
                ),
            }
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs =
                CertificateDer::pem_file_iter(Path::new(path)).map_err(|e| setup(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| setup(e.to_string()))?;
                roots.add(cert).map_err(|e| setup(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(setup("it holds no certificate".into()));
            }
            Arc::new(roots)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup {
            message: format!("cannot set up TLS: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// How long one request to Vault may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated client for one secret.
pub(crate) struct Session {
    pub(crate) client: VaultClient,
    pub(crate) address: String,
    pub(crate) mount: String,
    pub(crate) path: String,
    pub(crate) namespace: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("path", &self.path)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(err) = cause {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = err.source();
    }
    text
}

impl Session {
    /// Resolves the target's references, builds the client and logs in.
    pub(crate) async fn open(ctx: &StepContext, target: &Target<'_>) -> Result<Session, StepError> {
        let redact = |s: &str| ctx.redact(s);
        let address = ctx.resolve(target.address)?;
        let url = check_address(&address)
            .map_err(|m| StepError::fatal(ctx.redact(&format!("address: {m}"))))?;
        let namespace = match target.namespace {
            Some(ns) => Some(ctx.resolve(ns)?).filter(|ns| !ns.trim().is_empty()),
            None => None,
        };
        let mount = ctx.resolve(target.mount)?.trim_matches('/').to_string();
        let path = ctx.resolve(target.path)?.trim_matches('/').to_string();
        let ca_file = match target.ca_file {
            Some(f) => Some(ctx.resolve(f)?),
            None => None,
        };
        let tls = tls_config(ca_file.as_deref()).map_err(|e| e.into_step_error(redact))?;
        let http = reqwest_vault::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| {
                StepError::fatal(
                    ctx.redact(&format!("cannot set up the HTTP client: {}", chain(&e))),
                )
            })?;
        let token = match target.auth {
            Auth::Token(token) => ctx.resolve(token)?,
            Auth::Approle(_) => String::new(),
        };
        // Every setting is given here so that vaultrs reads none of VAULT_*.
        let settings = VaultClientSettingsBuilder::default()
            .address(url.as_str())
            .token(token.clone())
            .ca_certs(Vec::new())
            .identity(None)
            .verify(true)
            .timeout(Some(REQUEST_TIMEOUT))
            .namespace(namespace.clone())
            .build()
            .map_err(|e| StepError::fatal(ctx.redact(&format!("invalid Vault settings: {e}"))))?;
        let base = url.as_str().trim_end_matches('/').to_string();
        let mut client = VaultClient {
            http: rustify::clients::reqwest::Client::new(&base, http),
            middle: EndpointMiddleware {
                token,
                version: "v1".into(),
                wrap: None,
                namespace: namespace.clone(),
            },
            settings,
        };
        if let Auth::Approle(approle) = target.auth {
            let role_id = ctx.resolve(&approle.role_id)?;
            let secret_id = ctx.resolve(&approle.secret_id)?;
            let auth_mount = ctx.resolve(&approle.mount)?.trim_matches('/').to_string();
            let info = vaultrs::auth::approle::login(&client, &auth_mount, &role_id, &secret_id)
                .await
                .map_err(|e| {
                    let (status, errors) = match &e {
                        ClientError::APIError { code, errors } => (*code, errors.join("; ")),
                        ClientError::RestClientError {
                            source: rustify::errors::ClientError::ServerResponseError { code, .. },
                        } => (*code, "no error text".into()),
                        other => (0, chain(other)),
                    };
                    let err = Error::Login {
                        mount: auth_mount.clone(),
                        status,
                        errors,
                    };
                    err.into_step_error(redact)
                })?;
            client.set_token(&info.client_token);
        }
        Ok(Session {
            client,
            address: base,
            mount,
            path,
            namespace,
        })
    }

    /// `mount/path`.
    pub(crate) fn resource(&self) -> String {
        format!("{}/{}", self.mount, self.path)
    }

    fn namespace_hint(&self, lead: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{lead}namespace `{ns}`"),
            None => String::new(),
        }
    }

    /// Turns a vaultrs error into ours.
    pub(crate) fn classify(&self, action: &str, e: ClientError) -> Error {
        let api = |status: u16, errors: String| {
            if status == 403 {
                Error::PermissionDenied {
                    action: action.to_string(),
                    resource: self.resource(),
                    namespace_hint: self.namespace_hint("; the request used "),
                }
            } else if status == 404 {
                Error::NotFound {
                    resource: self.resource(),
                    namespace_hint: self.namespace_hint(" in "),
                }
            } else {
                Error::Api {
                    action: action.to_string(),
                    resource: self.resource(),
                    status,
                    errors: if errors.is_empty() {
                        "no error text".into()
                    } else {
                        errors
                    },
                }
            }
        };
        match e {
            ClientError::APIError { code, errors } => api(code, errors.join("; ")),
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    api(code, String::new())
                }
                rustify::errors::ClientError::ResponseParseError { .. }
                | rustify::errors::ClientError::ResponseConversionError { .. } => {
                    Error::Malformed {
                        action: action.to_string(),
                        resource: self.resource(),
                        mount: self.mount.clone(),
                        reason: chain(&source),
                    }
                }
                other => Error::Unreachable {
                    address: self.address.clone(),
                    action: action.to_string(),
                    reason: chain(&other),
                },
            },
            other => Error::Malformed {
                action: action.to_string(),
                resource: self.resource(),
                mount: self.mount.clone(),
                reason: chain(&other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(auth: &'a Auth, address: &'a str) -> Target<'a> {
        Target {
            address,
            auth,
            namespace: None,
            ca_file: None,
            mount: "secret",
            path: "app/config",
        }
    }

    #[test]
    fn tokens_must_be_references() {
        let literal = Auth::Token("hvs.abcdef".into());
        let err = target(&literal, "http://127.0.0.1:8200")
            .check()
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("auth.token"));
        let env = Auth::Token("${env:VAULT_TOKEN}".into());
        target(&env, "http://127.0.0.1:8200").check().unwrap();
        let approle = Auth::Approle(AppRole {
            role_id: "r".into(),
            secret_id: "s3cr3t".into(),
            mount: "approle".into(),
        });
        let err = target(&approle, "http://127.0.0.1:8200")
            .check()
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("auth.approle.secret_id"));
    }

    #[test]
    fn addresses_are_checked_unless_templated() {
        let env = Auth::Token("${env:VAULT_TOKEN}".into());
        let err = target(&env, "vault:8200").check().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("address"));
        target(&env, "${env:VAULT_ADDR}").check().unwrap();
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = tls_config(Some("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
