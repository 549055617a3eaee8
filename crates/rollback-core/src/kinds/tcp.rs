//! `tcp`: a verifier that passes when `host:port` accepts connections.

use std::time::Instant;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::duration::millis;
use crate::registry::ConfigError;
use crate::step::{Measurement, StepContext, StepError, Verifier};

const EXPECTED: &str = "accepts connections";

/// Configuration of the `tcp` verifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckConfig {
    /// Where to connect: `host:port`, e.g. `db.internal:5432` or `[::1]:8080`.
    pub address: String,
}

/// The `tcp` verifier.
#[derive(Debug)]
pub struct TcpCheck {
    address: String,
}

fn check_address(address: &str) -> Result<(), String> {
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host.trim(), port.trim()));
    match port {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "`{address}` is not host:port: write e.g. db.internal:5432"
        )),
    }
}

impl TcpCheck {
    /// Checks the configuration.
    pub fn new(config: TcpCheckConfig) -> Result<Self, ConfigError> {
        if !config.address.contains("${") {
            check_address(&config.address).map_err(|m| ConfigError::field("address", m))?;
        }
        Ok(TcpCheck {
            address: config.address,
        })
    }
}

#[async_trait]
impl Verifier for TcpCheck {
    fn describe(&self) -> String {
        format!("{} accepts TCP connections", self.address)
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let address = ctx.resolve(&self.address)?;
        check_address(&address).map_err(|m| StepError::fatal(ctx.redact(&m)))?;
        let started = Instant::now();
        let observed = match TcpStream::connect(address.as_str()).await {
            Ok(_stream) => {
                return Ok(Measurement::new(
                    true,
                    format!("connected in {}ms", millis(started.elapsed())),
                    EXPECTED,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!("refused: {e}"),
            Err(e) => format!("connection failed: {e}"),
        };
        Ok(Measurement::new(false, ctx.redact(&observed), EXPECTED))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn check(address: &str) -> TcpCheck {
        TcpCheck::new(TcpCheckConfig {
            address: address.into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn passes_when_something_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("tcp", dir.path());
        let m = check(&listener.local_addr().unwrap().to_string())
            .check(&ctx)
            .await
            .unwrap();
        assert!(m.passed, "{m:?}");
        assert!(
            m.observed.starts_with("connected in ") && m.observed.ends_with("ms"),
            "{}",
            m.observed
        );
        assert_eq!(m.expected, "accepts connections");
    }

    #[tokio::test]
    async fn fails_on_a_closed_port() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("tcp", dir.path());
        let m = check(&address).check(&ctx).await.unwrap();
        assert!(!m.passed);
        assert!(m.observed.starts_with("refused: "), "{}", m.observed);
    }

    #[test]
    fn address_needs_a_port() {
        let err = TcpCheck::new(TcpCheckConfig {
            address: "db.internal".into(),
        })
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("address"));
        assert!(TcpCheck::new(TcpCheckConfig {
            address: "[::1]:8080".into()
        })
        .is_ok());
        assert!(TcpCheck::new(TcpCheckConfig {
            address: "${var:db}".into()
        })
        .is_ok());
    }
}
