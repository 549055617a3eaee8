//! `file`: a verifier that a file exists, is recent and is not empty — e.g.
//! "a backup exists and was taken within the last day" in a preflight.

use std::time::SystemTime;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::registry::ConfigError;
use crate::step::{Measurement, StepContext, StepError, Verifier};

/// Configuration of the `file` verifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCheckConfig {
    /// The file (a relative path is taken from the current directory).
    pub path: String,
    /// Fails when the file was last modified longer ago than this, e.g. `24h`.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Fails when the file is smaller than this many bytes (default 1: not empty).
    #[serde(default = "default_min_size")]
    pub min_size: u64,
}

fn default_min_size() -> u64 {
    1
}

/// The `file` verifier.
#[derive(Debug)]
pub struct FileCheck {
    config: FileCheckConfig,
}

impl FileCheck {
    /// Checks the configuration.
    pub fn new(config: FileCheckConfig) -> Result<Self, ConfigError> {
        if config.path.trim().is_empty() {
            return Err(ConfigError::field("path", "the path is empty"));
        }
        Ok(FileCheck { config })
    }

    fn expected(&self) -> String {
        let mut parts = vec![format!("exists, >= {} bytes", self.config.min_size)];
        if let Some(age) = self.config.max_age {
            parts.push(format!("modified within {age}"));
        }
        parts.join(", ")
    }
}

#[async_trait]
impl Verifier for FileCheck {
    fn describe(&self) -> String {
        format!("{} {}", self.config.path, self.expected())
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let path = ctx.resolve(&self.config.path)?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) => {
                return Ok(Measurement::new(
                    false,
                    format!("{path}: {e}"),
                    self.expected(),
                ))
            }
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let too_old = self.config.max_age.is_some_and(|max| age > max.get());
        let too_small = meta.len() < self.config.min_size;
        let observed = format!(
            "{path}: {} bytes, modified {} ago",
            meta.len(),
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
        );
        Ok(Measurement::new(
            meta.is_file() && !too_old && !too_small,
            observed,
            self.expected(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, max_age: Option<&str>, min_size: u64) -> FileCheck {
        FileCheck::new(FileCheckConfig {
            path: path.into(),
            max_age: max_age.map(|a| a.parse().unwrap()),
            min_size,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn measures_existence_size_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("file", dir.path());
        let path = dir.path().join("backup.dump");
        std::fs::write(&path, b"PGDMP....").unwrap();
        let p = path.display().to_string();
        assert!(check(&p, Some("1h"), 1).check(&ctx).await.unwrap().passed);
        assert!(
            !check(&p, None, 1_000_000).check(&ctx).await.unwrap().passed,
            "too small"
        );
        let old = SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let m = check(&p, Some("1h"), 1).check(&ctx).await.unwrap();
        assert!(!m.passed && m.observed.contains("2h"), "{m:?}");
        let missing = check(&dir.path().join("nope").display().to_string(), None, 1)
            .check(&ctx)
            .await
            .unwrap();
        assert!(!missing.passed);
    }
}
