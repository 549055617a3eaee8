//! `vault.kv_version`: a check that a secret's current version is what a
//! rollback should have left.

use async_trait::async_trait;
use rollback_core::{ConfigError, Measurement, StepContext, StepError, Verifier};

use crate::connection::{vault_config, Session};
use crate::kv::VersionRef;

vault_config! {
    /// Configuration of the `vault.kv_version` check; give `equals` or `at_least`.
    pub struct KvVersionConfig {
        /// The current version must be exactly this (a number or a reference
        /// such as `${steps.config.version}`).
        #[serde(default)]
        pub equals: Option<VersionRef>,
        /// The current version must be this or newer.
        #[serde(default)]
        pub at_least: Option<VersionRef>,
    }
}

/// The `vault.kv_version` check.
#[derive(Debug)]
pub struct KvVersion {
    config: KvVersionConfig,
}

impl KvVersion {
    /// Checks that exactly one of `equals` and `at_least` is given.
    pub fn new(config: KvVersionConfig) -> Result<Self, ConfigError> {
        config.target().check()?;
        match (&config.equals, &config.at_least) {
            (Some(v), None) => v.check("equals")?,
            (None, Some(v)) => v.check("at_least")?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::field(
                    "at_least",
                    "`equals` and `at_least` are exclusive: keep one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "give `equals: N` or `at_least: N`: the version the secret must be at",
                ))
            }
        }
        Ok(KvVersion { config })
    }
}

#[async_trait]
impl Verifier for KvVersion {
    fn describe(&self) -> String {
        let target = self.config.target().display();
        match (&self.config.equals, &self.config.at_least) {
            (Some(v), _) => format!("Vault secret {target} is at version {v}"),
            (_, Some(v)) => format!("Vault secret {target} is at version {v} or newer"),
            _ => format!("Vault secret {target} version"),
        }
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let meta = session
            .metadata()
            .await
            .map_err(|e| e.into_step_error(|s| ctx.redact(s)))?;
        let observed = format!("version {}", meta.current);
        Ok(match (&self.config.equals, &self.config.at_least) {
            (Some(v), _) => {
                let want = v.resolve(ctx, "equals")?;
                Measurement::new(meta.current == want, observed, format!("version {want}"))
            }
            (_, Some(v)) => {
                let want = v.resolve(ctx, "at_least")?;
                Measurement::new(meta.current >= want, observed, format!("version >= {want}"))
            }
            _ => unreachable!("checked by KvVersion::new"),
        })
    }
}
