//! `vault.kv_read` and `vault.kv_snapshot`: reading a secret for later steps,
//! and recording its current version before anything changes.

use std::path::PathBuf;

use async_trait::async_trait;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};

use crate::connection::{vault_config, Session};
use crate::error::{version_list, Error};
use crate::kv::{data_hash, data_keys, VersionRef};

vault_config! {
    /// Configuration of `vault.kv_read`.
    pub struct KvReadConfig {
        /// The version to read: a number or a reference; the current one by default.
        #[serde(default)]
        pub version: Option<VersionRef>,
        /// A file to write the data to as one JSON object (created with mode
        /// 0600, replaced atomically), e.g. for a ConfigMap built by a later
        /// step with `${file:...}`. Output `file` names it.
        #[serde(default)]
        pub write_to: Option<String>,
    }
}

fn fail(ctx: &StepContext) -> impl Fn(Error) -> StepError + '_ {
    move |e| e.into_step_error(|s| ctx.redact(s))
}

/// The `vault.kv_read` step.
///
/// Its outputs are `version`, `keys` (the data's top-level keys), `sha256`
/// (a hash of the data) and `file` (with `write_to`). The values themselves are
/// not outputs: the engine has no way yet for a step to mark output values as
/// secret, and outputs are journaled.
#[derive(Debug)]
pub struct KvRead {
    config: KvReadConfig,
}

impl KvRead {
    /// Checks the configuration.
    pub fn new(config: KvReadConfig) -> Result<Self, ConfigError> {
        config.target().check()?;
        if let Some(v) = &config.version {
            v.check("version")?;
        }
        if config
            .write_to
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(ConfigError::field("write_to", "must not be empty"));
        }
        Ok(KvRead { config })
    }

    async fn version(&self, ctx: &StepContext, session: &Session) -> Result<u64, StepError> {
        let meta = session.metadata().await.map_err(fail(ctx))?;
        let version = match &self.config.version {
            Some(v) => v.resolve(ctx, "version")?,
            None => meta.current,
        };
        meta.require_usable(&session.resource(), version)
            .map_err(fail(ctx))?;
        Ok(version)
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-rollback");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl Step for KvRead {
    fn describe(&self) -> String {
        let target = self.config.target().display();
        match &self.config.version {
            Some(v) => format!("read version {v} of Vault secret {target}"),
            None => format!("read Vault secret {target}"),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["version", "keys", "sha256", "file"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let version = self.version(ctx, &session).await?;
        let mut changes = Vec::new();
        if let Some(file) = &self.config.write_to {
            changes.push(ctx.redact(&format!(
                "write version {version}'s data to {}",
                ctx.resolve(file)?
            )));
        }
        Ok(Preview::new(
            ctx.redact(&format!("read version {version} of {}", session.resource())),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let version = self.version(ctx, &session).await?;
        let data = session.read_version(version).await.map_err(fail(ctx))?;
        let mut out = Outputs::new();
        out.insert("version".into(), version.into());
        out.insert("keys".into(), data_keys(&data).into());
        out.insert("sha256".into(), data_hash(&data).into());
        if let Some(file) = &self.config.write_to {
            let path = PathBuf::from(ctx.resolve(file)?);
            let bytes = serde_json::to_vec_pretty(&data).expect("JSON data serializes");
            write_private(&path, &bytes).map_err(|e| {
                StepError::fatal(ctx.redact(&format!(
                    "cannot write `{}`: {e}: check `write_to` (its folder must exist and be writable)",
                    path.display()
                )))
            })?;
            out.insert("file".into(), path.display().to_string().into());
        }
        Ok(out)
    }
}

vault_config! {
    /// Configuration of `vault.kv_snapshot`.
    pub struct KvSnapshotConfig {
    }
}

/// The `vault.kv_snapshot` step: records the secret's current version and
/// metadata (never its data) as outputs and as `metadata.json` in the step's
/// artifact folder, so a later step or a later run can roll back to it.
#[derive(Debug)]
pub struct KvSnapshot {
    config: KvSnapshotConfig,
}

impl KvSnapshot {
    /// Checks the configuration.
    pub fn new(config: KvSnapshotConfig) -> Result<Self, ConfigError> {
        config.target().check()?;
        Ok(KvSnapshot { config })
    }
}

#[async_trait]
impl Step for KvSnapshot {
    fn describe(&self) -> String {
        format!(
            "record the current version of Vault secret {}",
            self.config.target().display()
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "version",
            "oldest_version",
            "usable_versions",
            "updated_time",
            "file",
        ])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let meta = session.metadata().await.map_err(fail(ctx))?;
        Ok(Preview::new(
            ctx.redact(&format!(
                "record version {} of {} (Vault is not changed)",
                meta.current,
                session.resource()
            )),
            vec!["save the metadata in the run's artifacts".into()],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let meta = session.metadata().await.map_err(fail(ctx))?;
        let dir = ctx.artifact_dir().map_err(|e| {
            StepError::fatal(format!("cannot create the step's artifact folder: {e}"))
        })?;
        let file = dir.join("metadata.json");
        let record = serde_json::json!({
            "address": session.address,
            "namespace": session.namespace,
            "mount": session.mount,
            "path": session.path,
            "current_version": meta.current,
            "metadata": meta.raw,
        });
        let tmp = dir.join("metadata.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&record).expect("metadata serializes"),
        )
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| StepError::fatal(format!("cannot write `{}`: {e}", file.display())))?;
        let mut out = Outputs::new();
        out.insert("version".into(), meta.current.into());
        out.insert("oldest_version".into(), meta.oldest.into());
        out.insert(
            "usable_versions".into(),
            version_list(&meta.usable()).into(),
        );
        out.insert(
            "updated_time".into(),
            meta.raw.get("updated_time").cloned().unwrap_or_default(),
        );
        out.insert("file".into(), file.display().to_string().into());
        Ok(out)
    }
}
