//! Any object: `k8s.annotate`, `k8s.delete`, `k8s.apply` (server-side apply of
//! last-known-good manifests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use serde_json::{json, Value};

use crate::client::{api_error, is_not_found, k8s_config, Conn};
use crate::event::{self, Regarding};
use crate::resource::{parse_kind, parse_ref, ResourceRef};

k8s_config! {
    /// Configuration of `k8s.annotate`.
    pub struct AnnotateConfig {
        /// `kind/name`, e.g. `service/orders-db`.
        pub resource: String,
        /// Annotations to set; `null` removes one (`kubectl annotate KEY-`).
        pub annotations: BTreeMap<String, Option<String>>,
    }
}

k8s_config! {
    /// Configuration of `k8s.delete`.
    pub struct DeleteConfig {
        /// `kind/name` of one object (`deployment/shop-green`), or a kind
        /// alone (`deployment`) with `selector`, as `kubectl delete deployment
        /// -l version=canary`.
        pub resource: String,
        /// Label selector, e.g. `version=canary`; requires `resource` to be a
        /// kind alone.
        #[serde(default)]
        pub selector: Option<String>,
        /// Grace period for the pods going away (kubectl `--grace-period`).
        #[serde(default)]
        pub grace_period: Option<HumanDuration>,
    }
}

k8s_config! {
    /// Configuration of `k8s.apply`.
    pub struct ApplyConfig {
        /// A manifest file (YAML, several documents allowed, or JSON) or a
        /// folder of them (`*.yaml`, `*.yml`, `*.json`, sorted by name).
        /// Relative to the working directory. Give `path` or `manifest`.
        #[serde(default)]
        pub path: String,
        /// One object written inline in the plan (e.g. a ConfigMap whose data
        /// is `${file:...}` of a file an earlier step wrote); references in
        /// its strings are resolved when it is applied.
        #[serde(default)]
        pub manifest: Option<serde_json::Value>,
        /// The field manager of the server-side apply (default `rollback`).
        #[serde(default)]
        pub field_manager: Option<String>,
        /// Take fields owned by other managers (default true: a rollback must
        /// win over the release it undoes).
        #[serde(default)]
        pub force: Option<bool>,
    }
}

// ------------------------------------------------------------------ annotate

/// The `k8s.annotate` step.
#[derive(Debug)]
pub struct Annotate {
    config: AnnotateConfig,
    target: ResourceRef,
}

impl Annotate {
    /// Checks the configuration.
    pub fn new(config: AnnotateConfig) -> Result<Self, ConfigError> {
        let target = parse_ref("resource", &config.resource, false)?;
        if config.annotations.is_empty() {
            return Err(ConfigError::field(
                "annotations",
                "give at least one `key: value` (or `key: null`)",
            ));
        }
        Ok(Annotate { config, target })
    }

    async fn apply(
        &self,
        ctx: &StepContext,
        wanted: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, Option<String>>, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let api = self.target.kind.api(&conn);
        let obj = api
            .get(&name)
            .await
            .map_err(|e| api_error(&format!("reading {}/{name}", self.target.kind.plural), e))?;
        let current = obj.metadata.annotations.clone().unwrap_or_default();
        let mut resolved = BTreeMap::new();
        for (k, v) in wanted {
            resolved.insert(k.clone(), v.as_deref().map(|v| ctx.resolve(v)).transpose()?);
        }
        let previous: BTreeMap<String, Option<String>> = resolved
            .keys()
            .map(|k| (k.clone(), current.get(k).cloned()))
            .collect();
        if previous != resolved {
            let patch = json!({"metadata": {"annotations": resolved}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| {
                    api_error(&format!("annotating {}/{name}", self.target.kind.plural), e)
                })?;
            let text: Vec<String> = resolved
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => format!("{k}-"),
                })
                .collect();
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: &self.target.kind.api_version(),
                    kind: self.target.kind.kind,
                    name: &name,
                    uid: obj.metadata.uid.as_deref(),
                },
                "Annotated",
                "Rollback",
                &format!("annotated {}", text.join(", ")),
            )
            .await;
        }
        Ok(previous)
    }
}

#[async_trait]
impl Step for Annotate {
    fn describe(&self) -> String {
        let text: Vec<String> = self
            .config
            .annotations
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => format!("{k}-"),
            })
            .collect();
        format!("annotate {} {}", self.config.resource, text.join(" "))
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["previous"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj =
            self.target.kind.api(&conn).get(&name).await.map_err(|e| {
                api_error(&format!("reading {}/{name}", self.target.kind.plural), e)
            })?;
        let current = obj.metadata.annotations.unwrap_or_default();
        let changes = self
            .config
            .annotations
            .iter()
            .filter(|(k, v)| current.get(*k) != v.as_ref())
            .map(|(k, v)| match v {
                Some(v) => format!(
                    "{k}: {} -> {v}",
                    current.get(k).map(String::as_str).unwrap_or("(unset)")
                ),
                None => format!("remove {k}"),
            })
            .collect();
        Ok(Preview::new(self.describe(), changes))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let saved = ctx.artifact_dir().ok().map(|d| d.join("previous.json"));
        let earlier: Option<Value> = saved
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let previous = json!(self.apply(ctx, &self.config.annotations).await?);
        let previous = match earlier {
            Some(e) => e,
            None => {
                if let Some(p) = &saved {
                    let _ = std::fs::write(p, previous.to_string());
                }
                previous
            }
        };
        let mut out = Outputs::new();
        out.insert("previous".into(), previous);
        Ok(out)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let previous: BTreeMap<String, Option<String>> = outputs
            .get("previous")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| StepError::fatal("the annotate step recorded no previous values"))?;
        self.apply(ctx, &previous).await?;
        Ok(())
    }
}

// ------------------------------------------------------------------ delete

/// The `k8s.delete` step.
#[derive(Debug)]
pub struct Delete {
    config: DeleteConfig,
    kind: crate::resource::KnownKind,
    name: Option<String>,
}

impl Delete {
    /// Checks the configuration.
    pub fn new(config: DeleteConfig) -> Result<Self, ConfigError> {
        match (config.resource.contains('/'), &config.selector) {
            (true, None) => {
                let ResourceRef { kind, name } = parse_ref("resource", &config.resource, false)?;
                Ok(Delete { kind, name: Some(name), config })
            }
            (false, Some(s)) if !s.trim().is_empty() => {
                let kind = parse_kind("resource", &config.resource)?;
                Ok(Delete { kind, name: None, config })
            }
            (true, Some(_)) => Err(ConfigError::field(
                "selector",
                "give either `resource: kind/name` or `resource: kind` with `selector`, not both",
            )),
            _ => Err(ConfigError::field(
                "resource",
                "give `resource: kind/name`, or `resource: kind` with `selector` (e.g. resource: deployment, \
                 selector: version=canary)",
            )),
        }
    }

    async fn targets(&self, ctx: &StepContext, conn: &Conn) -> Result<Vec<String>, StepError> {
        match &self.name {
            Some(n) => {
                let n = ctx.resolve(n)?;
                match self.kind.api(conn).get_metadata_opt(&n).await {
                    Ok(Some(_)) => Ok(vec![n]),
                    Ok(None) => Ok(vec![]),
                    Err(e) => Err(api_error(&format!("reading {}/{n}", self.kind.plural), e)),
                }
            }
            None => {
                let selector = ctx.resolve(self.config.selector.as_deref().unwrap_or_default())?;
                let list = self
                    .kind
                    .api(conn)
                    .list_metadata(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| {
                        api_error(&format!("listing {} with {selector}", self.kind.plural), e)
                    })?;
                Ok(list
                    .items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .collect())
            }
        }
    }
}

#[async_trait]
impl Step for Delete {
    fn describe(&self) -> String {
        match &self.config.selector {
            None => format!("delete {}", self.config.resource),
            Some(s) => format!("delete {} with {s}", self.kind.plural),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["deleted"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let names = self.targets(ctx, &conn).await?;
        Ok(Preview::new(
            format!("{} in {}", self.describe(), conn.namespace),
            names
                .iter()
                .map(|n| format!("delete {}/{n}", self.kind.kind.to_ascii_lowercase()))
                .collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let names = self.targets(ctx, &conn).await?;
        let mut dp = DeleteParams::background();
        if let Some(g) = &self.config.grace_period {
            dp = dp.grace_period(g.0.as_secs() as u32);
        }
        let api = self.kind.api(&conn);
        let deletions = names.iter().map(|n| {
            let api = api.clone();
            let dp = dp.clone();
            async move {
                match api.delete(n, &dp).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(e) => Err(api_error(&format!("deleting {}/{n}", self.kind.plural), e)),
                }
            }
        });
        futures::future::try_join_all(deletions).await?;
        for n in &names {
            // Recorded on the object that went away, for `kubectl get events`.
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: &self.kind.api_version(),
                    kind: self.kind.kind,
                    name: n,
                    uid: None,
                },
                "Deleted",
                "Rollback",
                "deleted",
            )
            .await;
        }
        let mut out = Outputs::new();
        out.insert("deleted".into(), json!(names));
        Ok(out)
    }
}

// ------------------------------------------------------------------ apply

/// Reads manifests from a file or a folder into objects.
pub fn read_manifests(path: &Path) -> Result<Vec<Value>, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read folder {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml") | Some("json")
                )
            })
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| format!("{} is not valid YAML: {e}", file.display()))?;
            match v {
                Value::Null => {}
                Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                    out.extend(
                        m.get("items")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                v => out.push(v),
            }
        }
    }
    Ok(out)
}

/// Server-side applies one object; `dry_run` for previews.
pub async fn apply_object(
    conn: &Conn,
    obj: &Value,
    manager: &str,
    force: bool,
    dry_run: bool,
) -> Result<(String, DynamicObject), StepError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() || name.is_empty() {
        return Err(StepError::fatal(format!(
            "a manifest lacks apiVersion, kind or metadata.name: {}",
            obj.to_string().chars().take(200).collect::<String>()
        )));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(&conn.client, &gvk)
        .await
        .map_err(|e| api_error(&format!("looking up {api_version} {kind}"), e))?;
    let mut clean = obj.clone();
    if let Some(meta) = clean.get_mut("metadata").and_then(Value::as_object_mut) {
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
    if let Some(m) = clean.as_object_mut() {
        m.remove("status");
    }
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(&conn.namespace);
            Api::namespaced_with(conn.client.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(conn.client.clone(), &ar),
    };
    let mut pp = PatchParams::apply(manager);
    pp.force = force;
    pp.dry_run = dry_run;
    let label = format!("{}/{name}", kind.to_ascii_lowercase());
    let applied = api
        .patch(name, &pp, &Patch::Apply(&clean))
        .await
        .map_err(|e| api_error(&format!("applying {label}"), e))?;
    Ok((label, applied))
}

/// The `k8s.apply` step.
#[derive(Debug)]
pub struct Apply {
    config: ApplyConfig,
}

impl Apply {
    /// Checks the configuration.
    pub fn new(config: ApplyConfig) -> Result<Self, ConfigError> {
        match (config.path.trim().is_empty(), &config.manifest) {
            (true, None) => {
                return Err(ConfigError::field(
                    "path",
                    "give the manifest file or folder (`path`), or an inline `manifest`",
                ))
            }
            (false, Some(_)) => {
                return Err(ConfigError::field(
                    "manifest",
                    "give `path` or `manifest`, not both",
                ))
            }
            (true, Some(m))
                if !m.is_object() || m.get("kind").is_none() || m.get("apiVersion").is_none() =>
            {
                return Err(ConfigError::field(
                    "manifest",
                    "an inline manifest is one object with `apiVersion`, `kind` and `metadata`",
                ))
            }
            _ => {}
        }
        Ok(Apply { config })
    }

    fn objects(&self, ctx: &StepContext) -> Result<Vec<Value>, StepError> {
        if let Some(manifest) = &self.config.manifest {
            return Ok(vec![ctx.resolve_json(manifest)?]);
        }
        let path = ctx.resolve(&self.config.path)?;
        let objects = read_manifests(Path::new(&path))
            .map_err(|m| StepError::fatal(format!("{m}: fix `path`")))?;
        if objects.is_empty() {
            return Err(StepError::fatal(format!(
                "no manifests in {path}: fix `path`"
            )));
        }
        Ok(objects)
    }
}

#[async_trait]
impl Step for Apply {
    fn describe(&self) -> String {
        match &self.config.manifest {
            Some(m) => format!(
                "server-side apply of {} {}",
                m.get("kind").and_then(Value::as_str).unwrap_or("object"),
                m.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("(inline)")
            ),
            None => format!("server-side apply {}", self.config.path),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["applied", "changed"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let manager = self
            .config
            .field_manager
            .clone()
            .unwrap_or_else(|| "rollback".into());
        let mut changes = Vec::new();
        for obj in self.objects(ctx)? {
            // A server-side dry run: validated by the API server, nothing stored.
            let (label, _) = apply_object(
                &conn,
                &obj,
                &manager,
                self.config.force.unwrap_or(true),
                true,
            )
            .await?;
            changes.push(format!("apply {label}"));
        }
        Ok(Preview::new(
            format!(
                "server-side apply {} in {}",
                self.config.path, conn.namespace
            ),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let manager = self
            .config
            .field_manager
            .clone()
            .unwrap_or_else(|| "rollback".into());
        let force = self.config.force.unwrap_or(true);
        let objects = self.objects(ctx)?;
        let applies = objects
            .iter()
            .map(|obj| apply_object(&conn, obj, &manager, force, false));
        let results = futures::future::try_join_all(applies).await?;
        let mut applied = Vec::new();
        for (label, obj) in &results {
            applied.push(label.clone());
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            let api_version = obj
                .types
                .as_ref()
                .map(|t| t.api_version.clone())
                .unwrap_or_default();
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: &api_version,
                    kind: &kind,
                    name: obj.metadata.name.as_deref().unwrap_or(""),
                    uid: obj.metadata.uid.as_deref(),
                },
                "Applied",
                "Rollback",
                &format!("last-known-good manifest applied from {}", self.config.path),
            )
            .await;
        }
        let mut out = Outputs::new();
        out.insert("applied".into(), json!(applied));
        out.insert("changed".into(), json!(applied.len()));
        Ok(out)
    }
}
