//! `k8s.snapshot` / `k8s.restore`: capture Deployments, Services, ConfigMaps and
//! Secrets before a deploy and put them back exactly, so a rollback restores
//! the config that shipped with the code.
//!
//! The snapshot is a file in the step's artifact folder (mode 0600); the
//! journal only sees its path, the object names and a digest, never Secret
//! data.

use std::path::Path;

use async_trait::async_trait;
use kube::api::{DynamicObject, ListParams, PostParams};
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use serde_json::{json, Value};
use sha2::Digest;

use crate::client::{api_error, k8s_config, Conn};
use crate::event::{self, Regarding};
use crate::resource::{parse_kind, KnownKind};

fn default_kinds() -> Vec<String> {
    ["deployments", "services", "configmaps", "secrets"]
        .map(String::from)
        .to_vec()
}

k8s_config! {
    /// Configuration of `k8s.snapshot`.
    pub struct SnapshotConfig {
        /// Kinds to capture (default deployments, services, configmaps,
        /// secrets).
        #[serde(default = "default_kinds")]
        pub kinds: Vec<String>,
        /// Only objects with these labels, e.g. `app=orders`.
        #[serde(default)]
        pub selector: Option<String>,
    }
}

k8s_config! {
    /// Configuration of `k8s.restore`.
    pub struct RestoreConfig {
        /// The snapshot file, usually `${steps.ID.path}` of a `k8s.snapshot`
        /// step.
        pub from: String,
        /// Only these kinds from the snapshot (default: all it holds).
        #[serde(default)]
        pub kinds: Vec<String>,
    }
}

/// Removes what the server owns, so the object can be created or replaced.
pub fn clean(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
        ] {
            meta.remove(k);
        }
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    obj
}

fn label(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?").to_ascii_lowercase(),
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// The `k8s.snapshot` step.
#[derive(Debug)]
pub struct Snapshot {
    config: SnapshotConfig,
    kinds: Vec<KnownKind>,
}

impl Snapshot {
    /// Checks the configuration.
    pub fn new(config: SnapshotConfig) -> Result<Self, ConfigError> {
        let kinds = config
            .kinds
            .iter()
            .map(|k| parse_kind("kinds", k))
            .collect::<Result<Vec<_>, _>>()?;
        if kinds.is_empty() {
            return Err(ConfigError::field(
                "kinds",
                "name at least one kind to capture",
            ));
        }
        Ok(Snapshot { config, kinds })
    }

    async fn capture(&self, ctx: &StepContext, conn: &Conn) -> Result<Vec<Value>, StepError> {
        let selector = self
            .config
            .selector
            .as_deref()
            .map(|s| ctx.resolve(s))
            .transpose()?;
        let mut objects = Vec::new();
        for kind in &self.kinds {
            let mut lp = ListParams::default();
            if let Some(s) = &selector {
                lp = lp.labels(s);
            }
            let list = kind
                .api(conn)
                .list(&lp)
                .await
                .map_err(|e| api_error(&format!("listing {}", kind.plural), e))?;
            for item in list.items {
                let mut v = serde_json::to_value(&item).expect("object serializes");
                v["apiVersion"] = json!(kind.api_version());
                v["kind"] = json!(kind.kind);
                // Service-account tokens belong to the token controller.
                if kind.kind == "Secret" && v["type"] == "kubernetes.io/service-account-token" {
                    continue;
                }
                objects.push(clean(v));
            }
        }
        Ok(objects)
    }
}

#[async_trait]
impl Step for Snapshot {
    fn describe(&self) -> String {
        format!("snapshot {}", self.config.kinds.join(", "))
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["path", "objects", "sha256"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let objects = self.capture(ctx, &conn).await?;
        Ok(Preview::new(
            format!(
                "capture {} objects from {} into the run's artifacts",
                objects.len(),
                conn.namespace
            ),
            vec![],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let dir = ctx
            .artifact_dir()
            .map_err(|e| StepError::fatal(format!("cannot create the artifact folder: {e}")))?;
        let path = dir.join("snapshot.json");
        // A re-run after a crash keeps the snapshot taken first: the cluster
        // may already have changed since.
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let conn = self.config.target().connect(ctx).await?;
                let objects = self.capture(ctx, &conn).await?;
                let bytes = serde_json::to_vec_pretty(&objects).expect("snapshot serializes");
                write_private(&path, &bytes).map_err(|e| {
                    StepError::fatal(format!("cannot write {}: {e}", path.display()))
                })?;
                bytes
            }
        };
        let objects: Vec<Value> = serde_json::from_slice(&bytes).unwrap_or_default();
        let mut out = Outputs::new();
        out.insert("path".into(), json!(path.display().to_string()));
        out.insert(
            "objects".into(),
            json!(objects.iter().map(label).collect::<Vec<_>>()),
        );
        out.insert(
            "sha256".into(),
            json!(hex::encode(sha2::Sha256::digest(&bytes))),
        );
        Ok(out)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The `k8s.restore` step.
#[derive(Debug)]
pub struct Restore {
    config: RestoreConfig,
    kinds: Vec<KnownKind>,
}

impl Restore {
    /// Checks the configuration.
    pub fn new(config: RestoreConfig) -> Result<Self, ConfigError> {
        let kinds = config
            .kinds
            .iter()
            .map(|k| parse_kind("kinds", k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Restore { config, kinds })
    }

    fn objects(&self, ctx: &StepContext) -> Result<Vec<(KnownKind, Value)>, StepError> {
        let path = ctx.resolve(&self.config.from)?;
        let bytes = std::fs::read(&path).map_err(|e| {
            StepError::fatal(format!("cannot read snapshot {path}: {e}; fix `from`"))
        })?;
        let objects: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|e| StepError::fatal(format!("{path} is not a k8s.snapshot file: {e}")))?;
        let mut out = Vec::new();
        for obj in objects {
            let Some(kind) = obj["kind"].as_str().and_then(KnownKind::parse) else {
                continue;
            };
            if self.kinds.is_empty() || self.kinds.contains(&kind) {
                out.push((kind, obj));
            }
        }
        Ok(out)
    }
}

/// Puts one object back as it was: replaced (with the current
/// resourceVersion) when it exists, created when it was deleted since.
async fn restore_one(
    conn: &Conn,
    kind: &KnownKind,
    obj: &Value,
) -> Result<(bool, DynamicObject), StepError> {
    let api = kind.api(conn);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut wanted = clean(obj.clone());
    if let Some(meta) = wanted.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), json!(conn.namespace));
    }
    for attempt in 0..5 {
        let current = api
            .get_opt(&name)
            .await
            .map_err(|e| api_error(&format!("reading {}/{name}", kind.plural), e))?;
        match current {
            Some(cur) => {
                let mut w = wanted.clone();
                w["metadata"]["resourceVersion"] = json!(cur.metadata.resource_version);
                if kind.kind == "Service" {
                    // The cluster IP is immutable: keep the one it has now.
                    for k in ["clusterIP", "clusterIPs"] {
                        if let Some(v) = cur.data.pointer(&format!("/spec/{k}")) {
                            w["spec"][k] = v.clone();
                        }
                    }
                }
                let w: DynamicObject = serde_json::from_value(w).expect("object");
                match api.replace(&name, &PostParams::default(), &w).await {
                    Ok(o) => return Ok((false, o)),
                    Err(e) if crate::client::is_conflict(&e) && attempt < 4 => continue,
                    Err(e) => {
                        return Err(api_error(&format!("restoring {}/{name}", kind.plural), e))
                    }
                }
            }
            None => {
                let mut w = wanted.clone();
                if kind.kind == "Service" {
                    if let Some(spec) = w.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.remove("clusterIP");
                        spec.remove("clusterIPs");
                    }
                }
                let w: DynamicObject = serde_json::from_value(w).expect("object");
                match api.create(&PostParams::default(), &w).await {
                    Ok(o) => return Ok((true, o)),
                    Err(e) if crate::client::is_conflict(&e) && attempt < 4 => continue,
                    Err(e) => {
                        return Err(api_error(&format!("re-creating {}/{name}", kind.plural), e))
                    }
                }
            }
        }
    }
    Err(StepError::retryable(format!(
        "{}/{name} kept changing while being restored",
        kind.plural
    )))
}

#[async_trait]
impl Step for Restore {
    fn describe(&self) -> String {
        format!("restore the objects of snapshot {}", self.config.from)
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["restored", "created"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let objects = self.objects(ctx)?;
        Ok(Preview::new(
            format!("restore {} objects into {}", objects.len(), conn.namespace),
            objects
                .iter()
                .map(|(_, o)| format!("restore {}", label(o)))
                .collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let objects = self.objects(ctx)?;
        let results = futures::future::try_join_all(
            objects
                .iter()
                .map(|(kind, obj)| restore_one(&conn, kind, obj)),
        )
        .await?;
        let mut restored = Vec::new();
        let mut created = Vec::new();
        for ((kind, obj), (was_created, after)) in objects.iter().zip(&results) {
            restored.push(label(obj));
            if *was_created {
                created.push(label(obj));
            }
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: &kind.api_version(),
                    kind: kind.kind,
                    name: after.metadata.name.as_deref().unwrap_or(""),
                    uid: after.metadata.uid.as_deref(),
                },
                "Restored",
                "Rollback",
                "restored from the pre-deploy snapshot",
            )
            .await;
        }
        let mut out = Outputs::new();
        out.insert("restored".into(), json!(restored));
        out.insert("created".into(), json!(created));
        Ok(out)
    }
}
