//! Changes to workloads (Deployments, StatefulSets, DaemonSets), each as
//! kubectl does it: `k8s.scale`, `k8s.set_image`, `k8s.set_env`, `k8s.restart`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use kube::api::{DynamicObject, Patch, PatchParams};
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use serde_json::{json, Value};

use crate::client::{api_error, k8s_config, Conn};
use crate::event::{self, Regarding};
use crate::resource::{parse_ref, ResourceRef};

/// kubectl's restart annotation on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

k8s_config! {
    /// Configuration of `k8s.scale`.
    pub struct ScaleConfig {
        /// `deployment/NAME` or `statefulset/NAME`.
        pub resource: String,
        /// The number of replicas to set.
        pub replicas: i32,
    }
}

k8s_config! {
    /// Configuration of `k8s.set_image`.
    pub struct SetImageConfig {
        /// `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`.
        pub resource: String,
        /// Container name to image, e.g. `{app: registry/app:1.4.2}`; `*`
        /// means every container (as in `kubectl set image`).
        pub images: BTreeMap<String, String>,
    }
}

k8s_config! {
    /// Configuration of `k8s.set_env`.
    pub struct SetEnvConfig {
        /// `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`.
        pub resource: String,
        /// Variables to set; `null` removes one (`kubectl set env NAME-`).
        pub env: BTreeMap<String, Option<String>>,
        /// Only this container; every container when unset.
        #[serde(default)]
        pub container: Option<String>,
    }
}

k8s_config! {
    /// Configuration of `k8s.restart`.
    pub struct RestartConfig {
        /// `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`.
        pub resource: String,
    }
}

async fn get(conn: &Conn, r: &ResourceRef, name: &str) -> Result<DynamicObject, StepError> {
    r.kind.api(conn).get(name).await.map_err(|e| {
        api_error(
            &format!("reading {}/{name}", r.kind.kind.to_ascii_lowercase()),
            e,
        )
    })
}

async fn strategic(
    conn: &Conn,
    r: &ResourceRef,
    name: &str,
    patch: &Value,
) -> Result<DynamicObject, StepError> {
    r.kind
        .api(conn)
        .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| {
            api_error(
                &format!("patching {}/{name}", r.kind.kind.to_ascii_lowercase()),
                e,
            )
        })
}

fn containers(obj: &DynamicObject) -> Vec<Value> {
    obj.data
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn display(r: &ResourceRef, name: &str) -> String {
    format!("{}/{name}", r.kind.kind.to_ascii_lowercase())
}

async fn record(
    conn: &Conn,
    ctx: &StepContext,
    r: &ResourceRef,
    obj: &DynamicObject,
    reason: &str,
    note: &str,
) {
    event::record(
        conn,
        ctx,
        Regarding {
            api_version: &r.kind.api_version(),
            kind: r.kind.kind,
            name: obj.metadata.name.as_deref().unwrap_or(""),
            uid: obj.metadata.uid.as_deref(),
        },
        reason,
        "Rollback",
        note,
    )
    .await;
}

// ------------------------------------------------------------------ scale

/// The `k8s.scale` step.
#[derive(Debug)]
pub struct Scale {
    config: ScaleConfig,
    target: ResourceRef,
}

impl Scale {
    /// Checks the configuration.
    pub fn new(config: ScaleConfig) -> Result<Self, ConfigError> {
        let target = parse_ref("resource", &config.resource, true)?;
        if target.kind.kind == "DaemonSet" {
            return Err(ConfigError::field(
                "resource",
                "a DaemonSet cannot be scaled",
            ));
        }
        if config.replicas < 0 {
            return Err(ConfigError::field(
                "replicas",
                "replicas cannot be negative",
            ));
        }
        Ok(Scale { config, target })
    }

    async fn set(
        &self,
        ctx: &StepContext,
        replicas: i32,
    ) -> Result<(i64, bool, Conn, DynamicObject), StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        let previous = obj
            .data
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if previous == i64::from(replicas) {
            return Ok((previous, false, conn, obj));
        }
        let obj = strategic(
            &conn,
            &self.target,
            &name,
            &json!({"spec": {"replicas": replicas}}),
        )
        .await?;
        Ok((previous, true, conn, obj))
    }
}

#[async_trait]
impl Step for Scale {
    fn describe(&self) -> String {
        format!(
            "scale {} to {} replicas",
            self.config.resource, self.config.replicas
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["previous_replicas", "replicas"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        let now = obj
            .data
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let changes = if now == i64::from(self.config.replicas) {
            vec![]
        } else {
            vec![format!("spec.replicas: {now} -> {}", self.config.replicas)]
        };
        Ok(Preview::new(
            format!(
                "scale {} in {}",
                display(&self.target, &name),
                conn.namespace
            ),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        // A re-run after a crash must not record the already-scaled count as "previous".
        let intent = ctx.artifact_dir().ok().map(|d| d.join("previous_replicas"));
        let (mut previous, changed, conn, obj) = self.set(ctx, self.config.replicas).await?;
        if let Some(path) = &intent {
            if changed {
                let _ = std::fs::write(path, previous.to_string());
            } else if let Some(p) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.parse().ok())
            {
                previous = p;
            }
        }
        if changed {
            let note = format!(
                "scaled from {previous} to {} replicas",
                self.config.replicas
            );
            record(&conn, ctx, &self.target, &obj, "Scaled", &note).await;
        }
        let mut out = Outputs::new();
        out.insert("previous_replicas".into(), json!(previous));
        out.insert("replicas".into(), json!(self.config.replicas));
        Ok(out)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let previous = outputs
            .get("previous_replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| StepError::fatal("the scale step recorded no previous replica count"))?;
        self.set(ctx, previous as i32).await?;
        Ok(())
    }
}

// ------------------------------------------------------------------ set_image

/// The `k8s.set_image` step.
#[derive(Debug)]
pub struct SetImage {
    config: SetImageConfig,
    target: ResourceRef,
}

impl SetImage {
    /// Checks the configuration.
    pub fn new(config: SetImageConfig) -> Result<Self, ConfigError> {
        let target = parse_ref("resource", &config.resource, true)?;
        if config.images.is_empty() {
            return Err(ConfigError::field(
                "images",
                "give at least one `container: image`",
            ));
        }
        Ok(SetImage { config, target })
    }

    /// Container -> image wanted, resolved against the object's containers.
    fn wanted(
        &self,
        ctx: &StepContext,
        images: &BTreeMap<String, String>,
        obj: &DynamicObject,
        name: &str,
    ) -> Result<BTreeMap<String, String>, StepError> {
        let present: Vec<String> = containers(obj)
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let mut wanted = BTreeMap::new();
        for (container, image) in images {
            let image = ctx.resolve(image)?;
            if container == "*" {
                for c in &present {
                    wanted.insert(c.clone(), image.clone());
                }
            } else if present.contains(container) {
                wanted.insert(container.clone(), image);
            } else {
                return Err(StepError::fatal(format!(
                    "container `{container}` not found in {} (it has: {}); fix `images`",
                    display(&self.target, name),
                    present.join(", ")
                )));
            }
        }
        Ok(wanted)
    }

    async fn apply(
        &self,
        ctx: &StepContext,
        images: &BTreeMap<String, String>,
    ) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        let wanted = self.wanted(ctx, images, &obj, &name)?;
        let current: BTreeMap<String, String> = containers(&obj)
            .iter()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    c["image"].as_str()?.to_string(),
                ))
            })
            .collect();
        let previous: BTreeMap<&String, &String> = wanted
            .keys()
            .filter_map(|k| current.get(k).map(|v| (k, v)))
            .collect();
        let changes: Vec<Value> = wanted
            .iter()
            .filter(|(c, i)| current.get(*c) != Some(*i))
            .map(|(c, i)| json!({"name": c, "image": i}))
            .collect();
        if !changes.is_empty() {
            let obj = strategic(
                &conn,
                &self.target,
                &name,
                &json!({"spec": {"template": {"spec": {"containers": changes}}}}),
            )
            .await?;
            let note = format!(
                "image set to {}",
                wanted
                    .iter()
                    .map(|(c, i)| format!("{c}={i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            record(&conn, ctx, &self.target, &obj, "ImageSet", &note).await;
        }
        let mut out = Outputs::new();
        out.insert("previous_images".into(), json!(previous));
        out.insert("images".into(), json!(wanted));
        Ok(out)
    }
}

#[async_trait]
impl Step for SetImage {
    fn describe(&self) -> String {
        let images: Vec<String> = self
            .config
            .images
            .iter()
            .map(|(c, i)| format!("{c}={i}"))
            .collect();
        format!(
            "set image of {} to {}",
            self.config.resource,
            images.join(", ")
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["previous_images", "images"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        let wanted = self.wanted(ctx, &self.config.images, &obj, &name)?;
        let current: BTreeMap<String, String> = containers(&obj)
            .iter()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    c["image"].as_str()?.to_string(),
                ))
            })
            .collect();
        let changes = wanted
            .iter()
            .filter(|(c, i)| current.get(*c) != Some(*i))
            .map(|(c, i)| {
                format!(
                    "{c}: {} -> {i}",
                    current.get(c).map(String::as_str).unwrap_or("?")
                )
            })
            .collect();
        Ok(Preview::new(
            format!(
                "set image of {} in {}",
                display(&self.target, &name),
                conn.namespace
            ),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        // After a crash, keep the images from before the first attempt.
        let saved = ctx
            .artifact_dir()
            .ok()
            .map(|d| d.join("previous_images.json"));
        let earlier: Option<Value> = saved
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut out = self.apply(ctx, &self.config.images).await?;
        match earlier {
            Some(prev) => {
                out.insert("previous_images".into(), prev);
            }
            None => {
                if let Some(p) = &saved {
                    let _ = std::fs::write(p, out["previous_images"].to_string());
                }
            }
        }
        Ok(out)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let previous: BTreeMap<String, String> = outputs
            .get("previous_images")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| StepError::fatal("the set_image step recorded no previous images"))?;
        self.apply(ctx, &previous).await?;
        Ok(())
    }
}

// ------------------------------------------------------------------ set_env

/// The `k8s.set_env` step.
#[derive(Debug)]
pub struct SetEnv {
    config: SetEnvConfig,
    target: ResourceRef,
}

impl SetEnv {
    /// Checks the configuration.
    pub fn new(config: SetEnvConfig) -> Result<Self, ConfigError> {
        let target = parse_ref("resource", &config.resource, true)?;
        if config.env.is_empty() {
            return Err(ConfigError::field("env", "give at least one `NAME: value`"));
        }
        Ok(SetEnv { config, target })
    }

    /// Sets (or removes, for `None`) variables; returns the previous values
    /// of the first selected container.
    async fn apply(
        &self,
        ctx: &StepContext,
        env: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, Option<String>>, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        let only = self
            .config
            .container
            .as_deref()
            .map(|c| ctx.resolve(c))
            .transpose()?;
        let selected: Vec<Value> = containers(&obj)
            .into_iter()
            .filter(|c| {
                only.as_deref()
                    .is_none_or(|o| c["name"].as_str() == Some(o))
            })
            .collect();
        if selected.is_empty() {
            return Err(StepError::fatal(format!(
                "container `{}` not found in {}; fix `container`",
                only.unwrap_or_default(),
                display(&self.target, &name)
            )));
        }
        let mut resolved = BTreeMap::new();
        for (k, v) in env {
            resolved.insert(k.clone(), v.as_deref().map(|v| ctx.resolve(v)).transpose()?);
        }
        let current_of = |c: &Value| -> BTreeMap<String, Option<String>> {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_string(),
                        e["value"].as_str().map(str::to_string),
                    ))
                })
                .collect()
        };
        let previous: BTreeMap<String, Option<String>> = {
            let cur = current_of(&selected[0]);
            resolved
                .keys()
                .map(|k| (k.clone(), cur.get(k).cloned().flatten()))
                .collect()
        };
        let mut patch_containers = Vec::new();
        for c in &selected {
            let cur = current_of(c);
            let entries: Vec<Value> = resolved
                .iter()
                .filter(|(k, v)| match v {
                    Some(v) => cur.get(*k) != Some(&Some(v.clone())),
                    None => cur.contains_key(*k),
                })
                .map(|(k, v)| match v {
                    Some(v) => json!({"name": k, "value": v}),
                    None => json!({"name": k, "$patch": "delete"}),
                })
                .collect();
            if !entries.is_empty() {
                patch_containers.push(json!({"name": c["name"], "env": entries}));
            }
        }
        if !patch_containers.is_empty() {
            let obj = strategic(
                &conn,
                &self.target,
                &name,
                &json!({"spec": {"template": {"spec": {"containers": patch_containers}}}}),
            )
            .await?;
            let names: Vec<&String> = resolved.keys().collect();
            let note = format!(
                "environment changed: {}",
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            record(&conn, ctx, &self.target, &obj, "EnvSet", &note).await;
        }
        Ok(previous)
    }
}

#[async_trait]
impl Step for SetEnv {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.config.env.keys().map(String::as_str).collect();
        format!("set env {} on {}", names.join(", "), self.config.resource)
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["previous_env"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        get(&conn, &self.target, &name).await?;
        let changes = self
            .config
            .env
            .iter()
            .map(|(k, v)| match v {
                Some(_) => format!("set {k}"),
                None => format!("remove {k}"),
            })
            .collect();
        Ok(Preview::new(
            format!(
                "set env on {} in {}",
                display(&self.target, &name),
                conn.namespace
            ),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let saved = ctx.artifact_dir().ok().map(|d| d.join("previous_env.json"));
        let earlier: Option<Value> = saved
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let previous = self.apply(ctx, &self.config.env).await?;
        let previous = match earlier {
            Some(prev) => prev,
            None => {
                let v = json!(previous);
                if let Some(p) = &saved {
                    let _ = std::fs::write(p, v.to_string());
                }
                v
            }
        };
        let mut out = Outputs::new();
        out.insert("previous_env".into(), previous);
        Ok(out)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let previous: BTreeMap<String, Option<String>> = outputs
            .get("previous_env")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| StepError::fatal("the set_env step recorded no previous values"))?;
        self.apply(ctx, &previous).await?;
        Ok(())
    }
}

// ------------------------------------------------------------------ restart

/// The `k8s.restart` step (`kubectl rollout restart`).
#[derive(Debug)]
pub struct Restart {
    config: RestartConfig,
    target: ResourceRef,
}

impl Restart {
    /// Checks the configuration.
    pub fn new(config: RestartConfig) -> Result<Self, ConfigError> {
        let target = parse_ref("resource", &config.resource, true)?;
        Ok(Restart { config, target })
    }
}

/// kubectl's restart patch for a given timestamp.
pub fn restart_patch(restarted_at: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}})
}

#[async_trait]
impl Step for Restart {
    fn describe(&self) -> String {
        format!("restart the pods of {}", self.config.resource)
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["restarted_at"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        get(&conn, &self.target, &name).await?;
        Ok(Preview::new(
            format!(
                "restart {} in {}",
                display(&self.target, &name),
                conn.namespace
            ),
            vec![format!(
                "spec.template.metadata.annotations.{RESTARTED_AT} := now"
            )],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.target.name)?;
        let obj = get(&conn, &self.target, &name).await?;
        if obj.data.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
            return Err(StepError::fatal(format!(
                "can't restart paused {} (run `kubectl rollout resume` first)",
                display(&self.target, &name)
            )));
        }
        // A re-run after a crash reuses the first attempt's timestamp: if the
        // template already carries it, the restart was done.
        let saved = ctx.artifact_dir().ok().map(|d| d.join("restarted_at"));
        let earlier = saved.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let current = obj
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(RESTARTED_AT))
            .and_then(Value::as_str)
            .map(str::to_string);
        let stamp = match earlier {
            Some(e) if current.as_deref() == Some(e.as_str()) => {
                let mut out = Outputs::new();
                out.insert("restarted_at".into(), json!(e));
                return Ok(out);
            }
            Some(e) => e,
            None => {
                // kubectl: time.Now().Format(time.RFC3339)
                let s = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                if let Some(p) = &saved {
                    let _ = std::fs::write(p, &s);
                }
                s
            }
        };
        let obj = strategic(&conn, &self.target, &name, &restart_patch(&stamp)).await?;
        record(
            &conn,
            ctx,
            &self.target,
            &obj,
            "Restarted",
            &format!("pods restarted (restartedAt {stamp})"),
        )
        .await;
        let mut out = Outputs::new();
        out.insert("restarted_at".into(), json!(stamp));
        Ok(out)
    }
}
