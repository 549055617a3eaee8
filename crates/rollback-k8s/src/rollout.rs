//! Deployment rollouts: `k8s.rollout_undo` (kubectl rollout undo) and
//! `k8s.wait_rollout` (kubectl rollout status), both with kubectl's semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use serde_json::{json, Value};

use crate::client::{api_error, is_conflict, k8s_config, Conn};
use crate::event::{self, Regarding};

/// The annotation carrying a ReplicaSet's (and its Deployment's) revision.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The label the Deployment controller adds to each ReplicaSet's template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation kubectl apply keeps the last applied configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Annotations `kubectl rollout undo` keeps from the Deployment instead of
/// copying them from the ReplicaSet (kubectl's `annotationsToSkip`).
const ANNOTATIONS_TO_SKIP: &[&str] = &[
    LAST_APPLIED,
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

fn default_conflict_retries() -> u32 {
    5
}

fn default_rollout_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

k8s_config! {
    /// Configuration of `k8s.rollout_undo`.
    pub struct RolloutUndoConfig {
        /// The Deployment to roll back; exclusive with `resource`.
        #[serde(default)]
        pub deployment: String,
        /// A StatefulSet or DaemonSet to roll back through its
        /// ControllerRevisions (`statefulset/NAME`, `daemonset/NAME`);
        /// exclusive with `deployment`.
        #[serde(default)]
        pub resource: Option<String>,
        /// The revision to go back to (`kubectl rollout undo --to-revision`);
        /// the previous revision when unset.
        #[serde(default)]
        pub to_revision: Option<i64>,
        /// How many times to re-read and retry when the Deployment changes
        /// between our read and our patch (default 5).
        #[serde(default = "default_conflict_retries")]
        pub conflict_retries: u32,
    }
}

k8s_config! {
    /// Configuration of `k8s.wait_rollout`.
    pub struct WaitRolloutConfig {
        /// The Deployment whose rollout to wait for.
        pub deployment: String,
        /// How long to wait at most (default `5m`); the plan's budget also
        /// bounds it.
        #[serde(default = "default_rollout_timeout")]
        pub timeout: HumanDuration,
    }
}

/// The `deployment.kubernetes.io/revision` of an object, if it has one.
pub fn revision_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<i64> {
    meta.annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)?
        .parse()
        .ok()
}

/// A label selector in the `a=b,c in (d)` syntax.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The ReplicaSets a Deployment controls (matching its selector and owned by
/// its UID), as kubectl's `GetAllReplicaSets` finds them.
pub async fn owned_replicasets(
    conn: &Conn,
    deployment: &Deployment,
) -> Result<Vec<ReplicaSet>, StepError> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let uid = deployment.metadata.uid.clone().unwrap_or_default();
    let selector = selector_string(&deployment.spec.selector);
    let api: Api<ReplicaSet> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_error(&format!("listing the ReplicaSets of deployment/{name}"), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect())
}

/// A pod template as JSON with the `pod-template-hash` label removed.
pub(crate) fn template_without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    // A missing and an empty map mean the same (apimachinery's semantic equality).
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()) && !v.is_null());
    }
    t
}

/// Which revision an undo goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoTarget {
    /// The previous revision (the second highest).
    Previous,
    /// A revision number.
    Revision(i64),
    /// A ReplicaSet by name: how a re-run after a crash finds the revision it
    /// chose the first time, whose number the rollback itself changed.
    ReplicaSet(String),
}

impl From<Option<i64>> for UndoTarget {
    fn from(r: Option<i64>) -> Self {
        match r {
            Some(r) => UndoTarget::Revision(r),
            None => UndoTarget::Previous,
        }
    }
}

/// What an undo would do.
#[derive(Debug, Clone)]
pub struct UndoPlan {
    /// The Deployment's revision now.
    pub from_revision: Option<i64>,
    /// The revision rolled back to.
    pub to_revision: i64,
    /// The ReplicaSet holding that revision.
    pub to_replicaset: String,
    /// The template already matches: nothing to do.
    pub skip: bool,
    /// The JSON patch (with its resourceVersion guard).
    pub patch: Value,
    /// Images of the target template, `container=image`.
    pub images: Vec<String>,
}

/// Computes `kubectl rollout undo` for a Deployment already read.
pub async fn plan_undo(
    conn: &Conn,
    deployment: &Deployment,
    to: impl Into<UndoTarget>,
) -> Result<UndoPlan, StepError> {
    let to = to.into();
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let spec = deployment.spec.clone();
    if spec.paused == Some(true) {
        return Err(StepError::fatal(format!(
            "you cannot rollback a paused deployment; resume it first with `kubectl rollout resume \
             deployment/{name}` (or a `k8s.annotate`-free resume step) and try again"
        )));
    }
    let replicasets = owned_replicasets(conn, deployment).await?;
    let mut by_revision: BTreeMap<i64, &ReplicaSet> = BTreeMap::new();
    for rs in &replicasets {
        if let Some(v) = revision_of(&rs.metadata) {
            by_revision.insert(v, rs);
        }
    }
    let target = match &to {
        UndoTarget::ReplicaSet(rs_name) => replicasets
            .iter()
            .find(|rs| rs.metadata.name.as_deref() == Some(rs_name.as_str()))
            .ok_or_else(|| {
                StepError::fatal(format!(
                    "the ReplicaSet {rs_name} this rollback chose for deployment/{name} is gone (pruned by \
                     revisionHistoryLimit?); roll back with an explicit `to_revision` in a new run"
                ))
            })?,
        UndoTarget::Revision(wanted) => by_revision.get(wanted).copied().ok_or_else(|| {
            let kept: Vec<String> = by_revision.keys().map(i64::to_string).collect();
            let limit = spec
                .revision_history_limit
                .map(|l| l.to_string())
                .unwrap_or_else(|| "10 (default)".into());
            StepError::fatal(format!(
                "unable to find revision {wanted} of deployment/{name}: it keeps revisions {} \
                 (revisionHistoryLimit {limit}); pick one of those with `to_revision`",
                if kept.is_empty() { "none".into() } else { kept.join(", ") }
            ))
        })?,
        _ => {
            // kubectl: the second highest revision.
            let mut revs = by_revision.iter().rev();
            revs.next();
            match revs.next() {
                Some((_, rs)) => *rs,
                None => {
                    return Err(StepError::fatal(format!(
                        "no rollout history found for deployment/{name}: it has a single revision, nothing to go \
                         back to"
                    )))
                }
            }
        }
    };
    let target_revision = revision_of(&target.metadata).unwrap_or_default();
    let target_template = serde_json::to_value(target.spec.template.clone().unwrap_or_default())
        .expect("template serializes");
    let current_template = serde_json::to_value(&spec.template).expect("template serializes");
    let template = template_without_hash(&target_template);
    let images = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    format!(
                        "{}={}",
                        c["name"].as_str().unwrap_or(""),
                        c["image"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let skip = template == template_without_hash(&current_template);

    let mut annotations = serde_json::Map::new();
    let own = deployment.metadata.annotations.clone().unwrap_or_default();
    for key in ANNOTATIONS_TO_SKIP {
        if let Some(v) = own.get(*key) {
            annotations.insert((*key).into(), Value::String(v.clone()));
        }
    }
    for (k, v) in target.metadata.annotations.iter().flatten() {
        if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
            annotations.insert(k.clone(), Value::String(v.clone()));
        }
    }
    // kubectl sends the template with the hash label deleted (not the pruned copy).
    let mut patched_template = target_template.clone();
    if let Some(labels) = patched_template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let patch = json!([
        // Carrying the resourceVersion we read makes the API server refuse the
        // patch with 409 Conflict if the Deployment changed since (optimistic
        // concurrency, like an update); we then re-read and recompute.
        {"op": "replace", "path": "/metadata/resourceVersion", "value": deployment.metadata.resource_version},
        {"op": "replace", "path": "/spec/template", "value": patched_template},
        {"op": if deployment.metadata.annotations.is_some() { "replace" } else { "add" },
         "path": "/metadata/annotations", "value": annotations},
    ]);
    Ok(UndoPlan {
        from_revision: revision_of(&deployment.metadata),
        to_revision: target_revision,
        to_replicaset: target.metadata.name.clone().unwrap_or_default(),
        skip,
        patch,
        images,
    })
}

/// The result of an undo.
#[derive(Debug, Clone)]
pub struct UndoDone {
    /// The plan carried out.
    pub plan: UndoPlan,
    /// Attempts that hit a concurrent edit and were retried.
    pub conflicts: u32,
    /// The Deployment's UID.
    pub uid: Option<String>,
}

/// Rolls a Deployment back like `kubectl rollout undo`, re-reading and
/// retrying when the Deployment changed between read and patch.
pub async fn undo_deployment(
    conn: &Conn,
    name: &str,
    to: impl Into<UndoTarget>,
    retries: u32,
) -> Result<UndoDone, StepError> {
    undo_deployment_with(conn, name, to, retries, &|_| Box::pin(async {})).await
}

/// A hook run between reading the Deployment and patching it, given the
/// attempt number (0 first): lets tests and embedders exercise the conflict path.
pub type BeforePatch = dyn Fn(u32) -> futures::future::BoxFuture<'static, ()> + Send + Sync;

/// [`undo_deployment`] with a hook between read and patch.
pub async fn undo_deployment_with(
    conn: &Conn,
    name: &str,
    to: impl Into<UndoTarget>,
    retries: u32,
    before_patch: &BeforePatch,
) -> Result<UndoDone, StepError> {
    let to = to.into();
    let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let mut conflicts = 0;
    loop {
        let deployment = api
            .get(name)
            .await
            .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
        let plan = plan_undo(conn, &deployment, to.clone()).await?;
        if plan.skip {
            return Ok(UndoDone {
                plan,
                conflicts,
                uid: deployment.metadata.uid,
            });
        }
        before_patch(conflicts).await;
        let patch: json_patch::Patch =
            serde_json::from_value(plan.patch.clone()).expect("a JSON patch");
        match api
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(d) => return Ok(UndoDone { plan, conflicts, uid: d.metadata.uid }),
            Err(e) if is_conflict(&e) && conflicts < retries => {
                conflicts += 1;
            }
            Err(e) if is_conflict(&e) => {
                return Err(StepError::retryable(format!(
                    "deployment/{name} kept changing while rolling it back ({} conflicts): someone else is \
                     editing it; stop the other writer and run again",
                    conflicts + 1
                ))
                .with_source(e))
            }
            Err(e) => return Err(api_error(&format!("patching deployment/{name}"), e)),
        }
    }
}

/// The `k8s.rollout_undo` step.
#[derive(Debug)]
pub struct RolloutUndo {
    config: RolloutUndoConfig,
    workload: Option<crate::resource::ResourceRef>,
}

impl RolloutUndo {
    /// Checks the configuration.
    pub fn new(config: RolloutUndoConfig) -> Result<Self, ConfigError> {
        let workload =
            match (&config.resource, config.deployment.trim().is_empty()) {
                (None, true) => return Err(ConfigError::field(
                    "deployment",
                    "name the Deployment to roll back (or a StatefulSet/DaemonSet with `resource`)",
                )),
                (Some(_), false) => {
                    return Err(ConfigError::field(
                        "resource",
                        "give either `deployment` or `resource`, not both",
                    ))
                }
                (None, false) => None,
                (Some(r), true) => {
                    let r = crate::resource::parse_ref("resource", r, true)?;
                    match r.kind.kind {
                        "Deployment" => None,
                        _ => Some(r),
                    }
                }
            };
        if let Some(r) = config.to_revision {
            if r <= 0 {
                return Err(ConfigError::field(
                    "to_revision",
                    "revisions start at 1; leave `to_revision` out to go to the previous revision",
                ));
            }
        }
        let config = match (&workload, &config.resource) {
            // `resource: deployment/NAME` is the same as `deployment: NAME`.
            (None, Some(r)) => RolloutUndoConfig {
                deployment: r
                    .split_once('/')
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_default(),
                resource: None,
                ..config
            },
            _ => config,
        };
        Ok(RolloutUndo { config, workload })
    }

    async fn run_history(
        &self,
        ctx: &StepContext,
        r: &crate::resource::ResourceRef,
    ) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&r.name)?;
        let intent = read_intent(ctx);
        let to = match intent
            .as_ref()
            .and_then(|i| i["to_revision_object"].as_str())
        {
            Some(n) => UndoTarget::ReplicaSet(n.to_string()),
            None => UndoTarget::from(self.config.to_revision),
        };
        let done = crate::history::undo_with_history(
            &conn,
            r.kind,
            &name,
            &to,
            self.config.conflict_retries,
        )
        .await?;
        let from = intent
            .as_ref()
            .and_then(|i| i["from_revision"].as_i64())
            .or(done.from_revision);
        if intent.is_none() {
            write_intent(
                ctx,
                &json!({"to_revision_object": done.to_name, "from_revision": from}),
            );
        }
        if !done.skip {
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: "apps/v1",
                    kind: r.kind.kind,
                    name: &name,
                    uid: done.uid.as_deref(),
                },
                "RolledBack",
                "Rollback",
                &format!(
                    "rolled back from revision {} to revision {}",
                    from.map(|r| r.to_string()).unwrap_or("?".into()),
                    done.to_revision
                ),
            )
            .await;
        }
        let mut out = Outputs::new();
        out.insert("from_revision".into(), json!(from));
        out.insert("to_revision".into(), json!(done.to_revision));
        out.insert("skipped".into(), json!(done.skip));
        out.insert("images".into(), json!([]));
        out.insert("conflicts_retried".into(), json!(done.conflicts));
        Ok(out)
    }
}

/// Where an interrupted step remembers what it set out to do, so that running
/// it again after a crash finishes the same change instead of flipping again.
fn intent_path(ctx: &StepContext) -> Option<std::path::PathBuf> {
    ctx.artifact_dir().ok().map(|d| d.join("intent.json"))
}

fn read_intent(ctx: &StepContext) -> Option<Value> {
    let path = intent_path(ctx)?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_intent(ctx: &StepContext, value: &Value) {
    if let Some(path) = intent_path(ctx) {
        let _ = std::fs::write(path, value.to_string());
    }
}

fn undo_outputs(done: &UndoDone) -> Outputs {
    let mut out = Outputs::new();
    out.insert("from_revision".into(), json!(done.plan.from_revision));
    out.insert("to_revision".into(), json!(done.plan.to_revision));
    out.insert("skipped".into(), json!(done.plan.skip));
    out.insert("images".into(), json!(done.plan.images));
    out.insert("conflicts_retried".into(), json!(done.conflicts));
    out
}

#[async_trait]
impl Step for RolloutUndo {
    fn describe(&self) -> String {
        let what = match &self.config.resource {
            Some(r) => r.clone(),
            None => format!("deployment/{}", self.config.deployment),
        };
        match self.config.to_revision {
            Some(r) => format!("roll back {what} to revision {r}"),
            None => format!("roll back {what} to its previous revision"),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "from_revision",
            "to_revision",
            "skipped",
            "images",
            "conflicts_retried",
        ])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        if let Some(r) = &self.workload {
            return Ok(Preview::new(
                format!("{} (through its ControllerRevisions)", self.describe()),
                vec![format!("{}: pod template -> the chosen revision", r.name)],
            ));
        }
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.deployment)?;
        let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let deployment = api
            .get(&name)
            .await
            .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
        let plan = plan_undo(&conn, &deployment, self.config.to_revision).await?;
        let summary = format!(
            "roll back deployment/{name} in {} from revision {} to revision {}",
            conn.namespace,
            plan.from_revision
                .map(|r| r.to_string())
                .unwrap_or("?".into()),
            plan.to_revision
        );
        let changes = if plan.skip {
            vec![]
        } else {
            vec![format!(
                "pod template -> revision {} ({})",
                plan.to_revision,
                plan.images.join(", ")
            )]
        };
        Ok(Preview::new(summary, changes))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        if let Some(r) = &self.workload {
            return self.run_history(ctx, r).await;
        }
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.deployment)?;
        // After a crash, go to the revision chosen the first time: "previous"
        // would now mean the revision we left.
        let intent = read_intent(ctx);
        let to = match intent.as_ref().and_then(|i| i["to_replicaset"].as_str()) {
            Some(rs) => UndoTarget::ReplicaSet(rs.to_string()),
            None => UndoTarget::from(self.config.to_revision),
        };
        if intent.is_none() {
            let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
            let deployment = api
                .get(&name)
                .await
                .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
            let plan = plan_undo(&conn, &deployment, to.clone()).await?;
            write_intent(
                ctx,
                &json!({"to_replicaset": plan.to_replicaset, "to_revision": plan.to_revision,
                        "from_revision": plan.from_revision}),
            );
        }
        let mut done = undo_deployment(&conn, &name, to, self.config.conflict_retries).await?;
        if let Some(from) = intent.as_ref().and_then(|i| i["from_revision"].as_i64()) {
            done.plan.from_revision = Some(from);
        }
        if done.plan.skip {
            ctx.progress(&format!(
                "deployment/{name} already runs the template of revision {}: skipped",
                done.plan.to_revision
            ));
        } else {
            let uid = done.uid.clone();
            event::record(
                &conn,
                ctx,
                Regarding {
                    api_version: "apps/v1",
                    kind: "Deployment",
                    name: &name,
                    uid: uid.as_deref(),
                },
                "RolledBack",
                "Rollback",
                &format!(
                    "rolled back from revision {} to revision {}",
                    done.plan
                        .from_revision
                        .map(|r| r.to_string())
                        .unwrap_or("?".into()),
                    done.plan.to_revision
                ),
            )
            .await;
        }
        Ok(undo_outputs(&done))
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let Some(from) = outputs.get("from_revision").and_then(Value::as_i64) else {
            return Err(StepError::fatal(
                "the rollback recorded no revision to return to",
            ));
        };
        if outputs.get("skipped").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let conn = self.config.target().connect(ctx).await?;
        if let Some(r) = &self.workload {
            let name = ctx.resolve(&r.name)?;
            crate::history::undo_with_history(
                &conn,
                r.kind,
                &name,
                &UndoTarget::Revision(from),
                self.config.conflict_retries,
            )
            .await?;
            return Ok(());
        }
        let name = ctx.resolve(&self.config.deployment)?;
        undo_deployment(&conn, &name, Some(from), self.config.conflict_retries).await?;
        Ok(())
    }
}

/// Where a Deployment's rollout stands, as `kubectl rollout status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Still rolling out; the message says what it waits for.
    Waiting(String),
    /// Done.
    Complete(String),
    /// `ProgressDeadlineExceeded`: the message is the condition's.
    Failed(String),
}

/// kubectl's `DeploymentStatusViewer.Status`.
pub fn rollout_state(d: &Deployment) -> RolloutState {
    rollout_state_with(d, false)
}

/// [`rollout_state`], except that a `ProgressDeadlineExceeded` condition
/// known to be left over from a rollout that a rollback has since replaced
/// ([`crate::progress::deadline_is_leftover`]) does not fail the new rollout:
/// the controller keeps that condition until the revived ReplicaSet makes
/// progress.
pub fn rollout_state_with(d: &Deployment, deadline_leftover: bool) -> RolloutState {
    let name = d.metadata.name.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return RolloutState::Waiting("waiting for deployment spec update to be observed".into());
    }
    if let Some(c) = crate::progress::deadline_condition(d) {
        if !deadline_leftover {
            return RolloutState::Failed(format!(
                "deployment/{name} exceeded its progress deadline (ProgressDeadlineExceeded): {}",
                c.message.clone().unwrap_or_default()
            ));
        }
    }
    let want = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return RolloutState::Waiting(format!(
            "waiting for deployment/{name} rollout to finish: {updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return RolloutState::Waiting(format!(
            "waiting for deployment/{name} rollout to finish: {} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutState::Waiting(format!(
            "waiting for deployment/{name} rollout to finish: {available} of {updated} updated replicas are available"
        ));
    }
    RolloutState::Complete(format!("deployment/{name} successfully rolled out"))
}

/// Waits, driven by a watch, until the Deployment's rollout completes or fails.
pub async fn wait_deployment(
    conn: &Conn,
    ctx: &StepContext,
    name: &str,
    timeout: Duration,
) -> Result<Deployment, StepError> {
    let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let timeout = ctx.remaining().map_or(timeout, |r| r.min(timeout));
    let stream = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(stream);
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut last = format!(
        "deployment/{name} not seen yet (does it exist in {}?)",
        conn.namespace
    );
    loop {
        tokio::select! {
            _ = &mut sleep => {
                return Err(StepError::fatal(format!(
                    "timed out after {} waiting for deployment/{name}: {last}",
                    humanize(timeout)
                )));
            }
            _ = ctx.cancellation().cancelled() => {
                return Err(StepError::interrupted(format!("cancelled while waiting for deployment/{name}: {last}")));
            }
            item = stream.try_next() => match item {
                // A deadline condition counts only if it names the ReplicaSet
                // of the current template: one left from before an undo does not.
                Ok(Some(d)) => match rollout_state_with(&d, crate::progress::deadline_is_leftover(conn, &d).await?) {
                    RolloutState::Complete(_) => return Ok(d),
                    RolloutState::Failed(msg) => return Err(StepError::fatal(format!(
                        "{msg}; see `kubectl describe deployment/{name}` and its pods, then roll back"
                    ))),
                    RolloutState::Waiting(msg) => {
                        if msg != last {
                            ctx.progress(&msg);
                        }
                        last = msg;
                    }
                },
                Ok(None) => return Err(StepError::retryable(format!("the watch on deployment/{name} ended"))),
                Err(e) => {
                    if let Some(why) = crate::permission::watch_forbidden(&e) {
                        return Err(StepError::fatal(format!("watching deployment/{name}: permission denied: {why}")));
                    }
                    // default_backoff retries transient errors; this one is persistent.
                    return Err(StepError::retryable(format!("watching deployment/{name}: {e}")));
                }
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The `k8s.wait_rollout` step.
#[derive(Debug)]
pub struct WaitRollout {
    config: WaitRolloutConfig,
}

impl WaitRollout {
    /// Checks the configuration.
    pub fn new(config: WaitRolloutConfig) -> Result<Self, ConfigError> {
        if config.deployment.trim().is_empty() {
            return Err(ConfigError::field(
                "deployment",
                "name the Deployment to wait for",
            ));
        }
        Ok(WaitRollout { config })
    }
}

#[async_trait]
impl Step for WaitRollout {
    fn describe(&self) -> String {
        format!(
            "wait for deployment/{} to finish rolling out",
            self.config.deployment
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["revision", "available_replicas"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.deployment)?;
        let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let d = api
            .get(&name)
            .await
            .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
        let state = match rollout_state(&d) {
            RolloutState::Waiting(m) | RolloutState::Complete(m) | RolloutState::Failed(m) => m,
        };
        Ok(Preview::new(
            format!(
                "wait up to {} for deployment/{name}: now {state}",
                self.config.timeout
            ),
            vec![],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let conn = self.config.target().connect(ctx).await?;
        let name = ctx.resolve(&self.config.deployment)?;
        let api: Api<Deployment> = Api::namespaced(conn.client.clone(), &conn.namespace);
        api.get(&name)
            .await
            .map_err(|e| api_error(&format!("reading deployment/{name}"), e))?;
        let d = wait_deployment(&conn, ctx, &name, self.config.timeout.0).await?;
        let mut out = Outputs::new();
        out.insert("revision".into(), json!(revision_of(&d.metadata)));
        out.insert(
            "available_replicas".into(),
            json!(d.status.and_then(|s| s.available_replicas).unwrap_or(0)),
        );
        Ok(out)
    }
}

/// Names of the containers of a pod template.
pub fn container_names(d: &Deployment) -> BTreeSet<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_deadline_does_not_fail_the_rollout_a_current_one_does() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 2, "availableReplicas": 2,
                       "conditions": [{"type": "Progressing", "status": "False",
                                       "reason": "ProgressDeadlineExceeded",
                                       "message": "ReplicaSet \"web-bad\" has timed out progressing."}]}
        }))
        .unwrap();
        assert!(matches!(
            rollout_state_with(&d, true),
            RolloutState::Waiting(m) if m.contains("2 old replicas")
        ));
        assert!(matches!(
            rollout_state_with(&d, false),
            RolloutState::Failed(m) if m.contains("web-bad")
        ));
    }

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selector_string_renders_labels_and_expressions() {
        let s = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert_eq!(selector_string(&s), "app=web,tier in (a,b)");
    }

    #[test]
    fn template_comparison_ignores_the_hash_label() {
        let a =
            json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {}});
        let b = json!({"metadata": {"labels": {"app": "web"}, "annotations": {}}, "spec": {}});
        assert_eq!(template_without_hash(&a), template_without_hash(&b));
    }

    #[test]
    fn status_follows_kubectl() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1}
        }))
        .unwrap();
        assert!(matches!(rollout_state(&d), RolloutState::Waiting(m) if m.contains("spec update")));
        d.status = serde_json::from_value(json!({
            "observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2
        }))
        .unwrap();
        assert!(
            matches!(rollout_state(&d), RolloutState::Waiting(m) if m.contains("1 old replicas"))
        );
        d.status = serde_json::from_value(json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2
        }))
        .unwrap();
        assert!(matches!(rollout_state(&d), RolloutState::Complete(_)));
        d.status = serde_json::from_value(json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"web-1\" has timed out progressing."}]
        }))
        .unwrap();
        assert!(
            matches!(rollout_state(&d), RolloutState::Failed(m) if m.contains("timed out progressing"))
        );
    }
}
