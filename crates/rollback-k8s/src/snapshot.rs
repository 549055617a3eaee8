//! `k8s.snapshot` / `k8s.restore` / `k8s.snapshot_cleanup`: capture
//! Deployments, Services, ConfigMaps and Secrets before a deploy and put them
//! back exactly, so a rollback restores the config that shipped with the code.
//!
//! The snapshot is a file in the step's artifact folder (mode 0600) holding
//! the non-secret objects. Secrets stay where they are already protected:
//! their captured copies go into one Secret in the cluster, owned by the run
//! (`rollback-snapshot-RUN-STEP`, labelled `rollback.dev/run` and
//! `rollback.dev/step`), and the file holds for each Secret only a reference
//! to it: no value in any encoding, nor a hash of one. `k8s.restore` reads
//! them back; `k8s.snapshot_cleanup` deletes that Secret once the restore is
//! done. The journal only sees the file's path, the object names and the
//! file's digest.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use serde_json::{json, Value};
use sha2::Digest;

use crate::client::{api_error, is_not_found, k8s_config, Conn};
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

k8s_config! {
    /// Configuration of `k8s.snapshot_cleanup`.
    pub struct SnapshotCleanupConfig {
        /// The snapshot file whose Secret copies to delete, usually
        /// `${steps.ID.path}` of the `k8s.snapshot` step.
        pub from: String,
    }
}

/// The label naming the run that owns a snapshot Secret.
pub const RUN_LABEL: &str = "rollback.dev/run";
/// The label naming the step that took the snapshot.
pub const STEP_LABEL: &str = "rollback.dev/step";
/// The field of a snapshot file entry that points at the Secret holding the
/// captured Secret (in place of its data).
const DATA_REF: &str = "dataRef";

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
                // Service-account tokens belong to the token controller; the
                // copies kept by earlier snapshots are not config.
                if kind.kind == "Secret"
                    && (v["type"] == "kubernetes.io/service-account-token" || is_keeper(&v))
                {
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
                let mut objects = self.capture(ctx, &conn).await?;
                keep_secrets(&conn, ctx, &mut objects).await?;
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

/// A name part or label value: lowercase alphanumerics and `-`.
fn dns_part(text: &str) -> String {
    let part: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    part.trim_matches('-').to_string()
}

/// A label value (at most 63 characters, alphanumeric at both ends).
fn label_value(text: &str) -> String {
    let value: String = dns_part(text).chars().take(63).collect();
    value.trim_end_matches('-').to_string()
}

/// The name of the Secret that keeps the Secrets captured by a snapshot step
/// of a run; a digest of both ids stands in for what a name cannot hold.
pub fn snapshot_secret_name(run_id: &str, step_id: &str) -> String {
    let name = format!(
        "rollback-snapshot-{}-{}",
        dns_part(run_id),
        dns_part(step_id)
    );
    if name.len() <= 253 {
        return name;
    }
    let digest = hex::encode(&sha2::Sha256::digest(format!("{run_id}/{step_id}"))[..6]);
    format!("{}-{digest}", name[..239].trim_end_matches('-'))
}

/// Whether a Secret (as JSON) is one that keeps a snapshot's Secrets.
fn is_keeper(secret: &Value) -> bool {
    let labels = secret.pointer("/metadata/labels");
    labels.and_then(|l| l.get(RUN_LABEL)).is_some()
        && labels.and_then(|l| l.get("app.kubernetes.io/managed-by")) == Some(&json!("rollback"))
}

/// Moves the captured Secrets of `objects` into the run's snapshot Secret
/// and leaves in their place a reference (`dataRef`) naming where they are.
async fn keep_secrets(
    conn: &Conn,
    ctx: &StepContext,
    objects: &mut [Value],
) -> Result<(), StepError> {
    let name = snapshot_secret_name(ctx.run_id(), ctx.step_id());
    let mut data = BTreeMap::new();
    for obj in objects.iter_mut().filter(|o| o["kind"] == "Secret") {
        let key = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let copy = serde_json::to_vec(obj).expect("object serializes");
        data.insert(key.clone(), ByteString(copy));
        *obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": key},
                      DATA_REF: {"namespace": conn.namespace, "secret": name, "key": key}});
    }
    if data.is_empty() {
        return Ok(());
    }
    let labels = BTreeMap::from([
        (RUN_LABEL.to_string(), label_value(ctx.run_id())),
        (STEP_LABEL.to_string(), label_value(ctx.step_id())),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "rollback".to_string(),
        ),
    ]);
    let mut keeper = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    };
    let what = format!("keeping the snapshot's Secrets in secret/{name}");
    let api: Api<Secret> = Api::namespaced(conn.client.clone(), &conn.namespace);
    match api.create(&PostParams::default(), &keeper).await {
        Ok(_) => Ok(()),
        // A re-run after a crash before the file was written: keep this capture.
        Err(e) if crate::client::is_conflict(&e) => {
            let current = api.get(&name).await.map_err(|e| api_error(&what, e))?;
            keeper.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &keeper)
                .await
                .map(|_| ())
                .map_err(|e| api_error(&what, e))
        }
        Err(e) => Err(api_error(&what, e)),
    }
}

/// Where a snapshot file entry's Secret is kept: (namespace, Secret, key).
fn data_ref(obj: &Value) -> Option<(String, String, String)> {
    let r = obj.get(DATA_REF)?;
    let field = |k: &str| r[k].as_str().map(str::to_string);
    Some((field("namespace")?, field("secret")?, field("key")?))
}

/// Reads a snapshot file.
fn read_snapshot(ctx: &StepContext, from: &str) -> Result<(String, Vec<Value>), StepError> {
    let path = ctx.resolve(from)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| StepError::fatal(format!("cannot read snapshot {path}: {e}; fix `from`")))?;
    let objects: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|e| StepError::fatal(format!("{path} is not a k8s.snapshot file: {e}")))?;
    Ok((path, objects))
}

/// Puts the kept copies of a snapshot's Secrets in place of their references.
/// Errors never quote Secret data.
async fn fetch_kept(conn: &Conn, path: &str, objects: &mut [Value]) -> Result<(), StepError> {
    let mut kept: BTreeMap<(String, String), BTreeMap<String, ByteString>> = BTreeMap::new();
    for obj in objects.iter_mut() {
        let Some((ns, secret, key)) = data_ref(obj) else {
            continue;
        };
        let id = (ns.clone(), secret.clone());
        if !kept.contains_key(&id) {
            let api: Api<Secret> = Api::namespaced(conn.client.clone(), &ns);
            let found = api.get_opt(&secret).await.map_err(|e| {
                api_error(
                    &format!("reading secret/{secret} in {ns}, which keeps the Secrets of snapshot {path}"),
                    e,
                )
            })?;
            let Some(found) = found else {
                return Err(StepError::fatal(format!(
                    "the Secrets of snapshot {path} were kept in secret/{secret} in namespace {ns}, which is gone                      (deleted by k8s.snapshot_cleanup or by hand): nothing was restored; restore the other                      objects with `kinds` (without secrets), and the Secrets from their source"
                )));
            };
            kept.insert(id.clone(), found.data.unwrap_or_default());
        }
        let copy = kept[&id].get(&key).ok_or_else(|| {
            StepError::fatal(format!(
                "secret/{secret} in namespace {ns} holds no copy of secret/{key} of snapshot {path} (edited by                  hand?): nothing was restored; restore the other objects with `kinds` (without secrets)"
            ))
        })?;
        *obj = serde_json::from_slice(&copy.0).map_err(|_| {
            StepError::fatal(format!(
                "the copy of secret/{key} in secret/{secret} (namespace {ns}) is not a Secret: nothing was restored"
            ))
        })?;
    }
    Ok(())
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

    /// The snapshot's objects to restore, the Secrets read back from where
    /// the snapshot kept them.
    async fn objects(
        &self,
        ctx: &StepContext,
        conn: &Conn,
    ) -> Result<Vec<(KnownKind, Value)>, StepError> {
        let (path, objects) = read_snapshot(ctx, &self.config.from)?;
        let mut chosen = Vec::new();
        for obj in objects {
            let Some(kind) = obj["kind"].as_str().and_then(KnownKind::parse) else {
                continue;
            };
            if self.kinds.is_empty() || self.kinds.contains(&kind) {
                chosen.push((kind, obj));
            }
        }
        let mut values: Vec<Value> = chosen.iter().map(|(_, o)| o.clone()).collect();
        fetch_kept(conn, &path, &mut values).await?;
        Ok(chosen
            .into_iter()
            .zip(values)
            .map(|((kind, _), obj)| (kind, obj))
            .collect())
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
        let objects = self.objects(ctx, &conn).await?;
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
        let objects = self.objects(ctx, &conn).await?;
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

/// The `k8s.snapshot_cleanup` step: deletes the Secret in which a snapshot
/// kept its Secrets, once the restore that needed them is done. A step
/// rather than something a restore does by itself: placed `after:` the
/// restore (and the waits) it runs only when they succeeded, it shows in the
/// preview and the journal, and a snapshot that a later run may still restore
/// is kept until a plan says otherwise.
#[derive(Debug)]
pub struct SnapshotCleanup {
    config: SnapshotCleanupConfig,
}

impl SnapshotCleanup {
    /// Checks the configuration.
    pub fn new(config: SnapshotCleanupConfig) -> Result<Self, ConfigError> {
        if config.from.trim().is_empty() {
            return Err(ConfigError::field(
                "from",
                "give the snapshot file, e.g. `${steps.snapshot.path}`",
            ));
        }
        Ok(SnapshotCleanup { config })
    }

    /// The Secrets (namespace, name) that keep the snapshot's Secrets.
    fn keepers(&self, ctx: &StepContext) -> Result<Vec<(String, String)>, StepError> {
        let (_, objects) = read_snapshot(ctx, &self.config.from)?;
        let mut keepers: Vec<(String, String)> = objects
            .iter()
            .filter_map(data_ref)
            .map(|(ns, secret, _)| (ns, secret))
            .collect();
        keepers.sort();
        keepers.dedup();
        Ok(keepers)
    }
}

/// Deletes one snapshot Secret if it is still there and still one of ours
/// (labelled by a run): a hand-edited file cannot make it delete another.
async fn delete_keeper(conn: &Conn, ns: &str, name: &str) -> Result<bool, StepError> {
    let api: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
    let what = format!("deleting the snapshot's secret/{name} in {ns}");
    let Some(found) = api.get_opt(name).await.map_err(|e| api_error(&what, e))? else {
        return Ok(false);
    };
    let as_json = json!({"metadata": {"labels": found.metadata.labels}});
    if !is_keeper(&as_json) {
        return Err(StepError::fatal(format!(
            "secret/{name} in {ns} is not a snapshot Secret (no {RUN_LABEL} label, not managed by rollback): \
             left alone; check `from`"
        )));
    }
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: found.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(api_error(&what, e)),
    }
}

#[async_trait]
impl Step for SnapshotCleanup {
    fn describe(&self) -> String {
        format!(
            "delete the Secret copies kept for snapshot {}",
            self.config.from
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["deleted"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let keepers = self.keepers(ctx)?;
        Ok(Preview::new(
            format!("delete {} snapshot Secret(s)", keepers.len()),
            keepers
                .iter()
                .map(|(ns, name)| format!("delete secret/{name} in {ns}"))
                .collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let mut deleted = Vec::new();
        for (ns, name) in self.keepers(ctx)? {
            if delete_keeper(&conn, &ns, &name).await? {
                deleted.push(format!("{ns}/secret/{name}"));
            }
        }
        let mut out = Outputs::new();
        out.insert("deleted".into(), json!(deleted));
        Ok(out)
    }
}
