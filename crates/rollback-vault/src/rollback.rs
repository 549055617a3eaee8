//! `vault.kv_rollback`: put an earlier version of a KV v2 secret back as the
//! current version, validated first and written with check-and-set.

use std::path::Path;

use async_trait::async_trait;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connection::{vault_config, Session};
use crate::error::Error;
use crate::kv::{data_hash, Scrubber, VersionRef, VersionState};
use crate::validate::{ValidateCommand, Validator};

vault_config! {
    /// Configuration of `vault.kv_rollback`.
    pub struct KvRollbackConfig {
        /// The version to put back: a number, or a reference such as
        /// `${var:config_version}`. Without it, the version before the current one.
        #[serde(default)]
        pub to_version: Option<VersionRef>,
        /// A command that must accept the version's data (given as JSON on
        /// stdin) before it is written back.
        #[serde(default)]
        pub validate: Option<ValidateCommand>,
        /// A JSON Schema file the version's data must match before it is
        /// written back (read when the plan is loaded; a relative path is
        /// taken from the current folder).
        #[serde(default)]
        pub schema: Option<String>,
    }
}

/// What this step decided before writing, kept in its artifact folder so that
/// an attempt after a crash finishes the same rollback instead of rolling
/// back once more. Holds version numbers only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Intent {
    resource: String,
    from_version: u64,
    target: u64,
}

const INTENT: &str = "kv_rollback.json";

fn load_intent(dir: &Path) -> Result<Option<Intent>, String> {
    match std::fs::read(dir.join(INTENT)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("`{}` is damaged: {e}", dir.join(INTENT).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read `{}`: {e}", dir.join(INTENT).display())),
    }
}

fn save_intent(dir: &Path, intent: &Intent) -> Result<(), String> {
    let tmp = dir.join(format!("{INTENT}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(intent).expect("intent serializes"),
    )
    .and_then(|()| std::fs::rename(&tmp, dir.join(INTENT)))
    .map_err(|e| format!("cannot write `{}`: {e}", dir.join(INTENT).display()))
}

/// The `vault.kv_rollback` step.
#[derive(Debug)]
pub struct KvRollback {
    config: KvRollbackConfig,
    validator: Validator,
}

impl KvRollback {
    /// Checks the configuration and compiles the schema, if any.
    pub fn new(mut config: KvRollbackConfig) -> Result<Self, ConfigError> {
        config.target().check()?;
        if let Some(v) = &config.to_version {
            v.check("to_version")?;
        }
        let validator = Validator::new(config.validate.take(), config.schema.take())?;
        Ok(KvRollback { config, validator })
    }

    fn outputs(version: u64, replaced: u64, restored: u64, changed: bool, hash: String) -> Outputs {
        let mut out = Outputs::new();
        out.insert("version".into(), version.into());
        out.insert("replaced".into(), replaced.into());
        out.insert("restored_from".into(), restored.into());
        out.insert("changed".into(), changed.into());
        out.insert("sha256".into(), hash.into());
        out
    }

    /// The version to restore, given the current one.
    fn target_version(
        &self,
        ctx: &StepContext,
        session: &Session,
        current: u64,
    ) -> Result<u64, StepError> {
        match &self.config.to_version {
            Some(v) => v.resolve(ctx, "to_version"),
            None if current <= 1 => Err(StepError::fatal(ctx.redact(&format!(
                "`{}` has no version before version {current}: name one with `to_version`",
                session.resource()
            )))),
            None => Ok(current - 1),
        }
    }
}

fn fail(ctx: &StepContext) -> impl Fn(Error) -> StepError + '_ {
    move |e| e.into_step_error(|s| ctx.redact(s))
}

#[async_trait]
impl Step for KvRollback {
    fn describe(&self) -> String {
        let target = self.config.target().display();
        match &self.config.to_version {
            Some(v) => format!("roll back Vault secret {target} to version {v}"),
            None => format!("roll back Vault secret {target} to its previous version"),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["version", "replaced", "restored_from", "changed", "sha256"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let meta = session.metadata().await.map_err(fail(ctx))?;
        let target = self.target_version(ctx, &session, meta.current)?;
        let resource = session.resource();
        meta.require_usable(&resource, target).map_err(fail(ctx))?;
        if target == meta.current {
            return Ok(Preview::new(
                format!("{resource} is already at version {target}"),
                Vec::new(),
            ));
        }
        let mut changes = Vec::new();
        if !self.validator.is_empty() {
            changes.push(format!(
                "validate version {target} with {}",
                self.validator.describe()
            ));
        }
        changes.push(format!(
            "write version {target}'s data as version {} of {resource} (check-and-set on version {})",
            meta.current + 1,
            meta.current
        ));
        Ok(Preview::new(
            ctx.redact(&format!(
                "roll back {resource} from version {} to version {target}",
                meta.current
            )),
            changes.iter().map(|c| ctx.redact(c)).collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let session = Session::open(ctx, &self.config.target()).await?;
        let resource = session.resource();
        let dir = ctx.artifact_dir().map_err(|e| {
            StepError::fatal(format!("cannot create the step's artifact folder: {e}"))
        })?;
        let meta = session.metadata().await.map_err(fail(ctx))?;
        let intent = load_intent(&dir)
            .map_err(StepError::fatal)?
            .filter(|i| i.resource == resource);

        let (from, target) = match intent {
            // An earlier attempt of this step decided; its write may have landed.
            Some(intent) if meta.current > intent.from_version => {
                meta.require_usable(&resource, intent.target)
                    .map_err(fail(ctx))?;
                let wanted = session
                    .read_version(intent.target)
                    .await
                    .map_err(fail(ctx))?;
                let live = meta.versions.get(&meta.current) == Some(&VersionState::Live);
                let now = if live {
                    Some(
                        session
                            .read_version(meta.current)
                            .await
                            .map_err(fail(ctx))?,
                    )
                } else {
                    None
                };
                if now.as_ref() == Some(&wanted) {
                    ctx.progress(&format!(
                        "{resource}: version {} already holds version {}'s data (written by an earlier attempt)",
                        meta.current, intent.target
                    ));
                    return Ok(Self::outputs(
                        meta.current,
                        intent.from_version,
                        intent.target,
                        true,
                        data_hash(&wanted),
                    ));
                }
                return Err(fail(ctx)(Error::CasConflict {
                    resource,
                    expected: intent.from_version,
                    found: format!(
                        "now it is at version {} with other data (written since an earlier attempt of this step)",
                        meta.current
                    ),
                }));
            }
            Some(intent) => (intent.from_version, intent.target),
            None => (
                meta.current,
                self.target_version(ctx, &session, meta.current)?,
            ),
        };
        meta.require_usable(&resource, target).map_err(fail(ctx))?;
        let data = session.read_version(target).await.map_err(fail(ctx))?;
        let hash = data_hash(&data);
        if target == from {
            return Ok(Self::outputs(from, from, target, false, hash));
        }
        if meta.versions.get(&from) == Some(&VersionState::Live) {
            let current = session.read_version(from).await.map_err(fail(ctx))?;
            if current == data {
                ctx.progress(&format!(
                    "{resource}: current version {from} already holds version {target}'s data; nothing to write"
                ));
                return Ok(Self::outputs(from, from, target, false, hash));
            }
        }
        let scrubber = Scrubber::new(&data);
        if !self.validator.is_empty() {
            ctx.progress(&format!("validating version {target} of {resource}"));
            if let Err(reason) = self.validator.check(ctx, &data, &scrubber).await? {
                return Err(fail(ctx)(Error::Rejected {
                    resource,
                    version: target,
                    reason,
                }));
            }
        }
        save_intent(
            &dir,
            &Intent {
                resource: resource.clone(),
                from_version: from,
                target,
            },
        )
        .map_err(StepError::fatal)?;
        let written = session.write_cas(&data, from).await.map_err(fail(ctx))?;
        ctx.progress(&format!(
            "{resource}: version {target} written back as version {written} (replacing version {from})"
        ));
        Ok(Self::outputs(written, from, target, true, hash))
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        if outputs.get("changed").and_then(Value::as_bool) != Some(true) {
            return Ok(());
        }
        let number = |name: &str| {
            outputs.get(name).and_then(Value::as_u64).ok_or_else(|| {
                StepError::fatal(format!(
                    "cannot undo: the step's output `{name}` is missing from the journal; restore the secret by hand"
                ))
            })
        };
        let written = number("version")?;
        let replaced = number("replaced")?;
        let session = Session::open(ctx, &self.config.target()).await?;
        let resource = session.resource();
        let meta = session.metadata().await.map_err(fail(ctx))?;
        if meta.current == written {
            meta.require_usable(&resource, replaced)
                .map_err(fail(ctx))?;
            let data = session.read_version(replaced).await.map_err(fail(ctx))?;
            let new = session.write_cas(&data, written).await.map_err(fail(ctx))?;
            ctx.progress(&format!(
                "{resource}: version {replaced} written back as version {new} (undoing the rollback)"
            ));
            return Ok(());
        }
        if meta.current > written
            && meta.versions.get(&meta.current) == Some(&VersionState::Live)
            && meta.versions.get(&replaced) == Some(&VersionState::Live)
        {
            let now = session
                .read_version(meta.current)
                .await
                .map_err(fail(ctx))?;
            let before = session.read_version(replaced).await.map_err(fail(ctx))?;
            if now == before {
                // An earlier undo attempt already put it back.
                return Ok(());
            }
        }
        Err(fail(ctx)(Error::UndoOverwrite {
            resource,
            current: meta.current,
            written,
            replaced,
        }))
    }
}
