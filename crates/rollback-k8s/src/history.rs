//! `kubectl rollout undo` for StatefulSets and DaemonSets: their revisions are
//! ControllerRevisions whose `data` is the strategic merge patch that restores
//! the pod template; kubectl applies it as is.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use rollback_core::StepError;
use serde_json::Value;

use crate::client::{api_error, is_conflict, Conn};
use crate::resource::KnownKind;
use crate::rollout::{selector_string, UndoTarget};

/// What an undo through ControllerRevisions did.
#[derive(Debug, Clone)]
pub struct HistoryUndo {
    /// The highest revision before the undo.
    pub from_revision: Option<i64>,
    /// The revision gone back to.
    pub to_revision: i64,
    /// The ControllerRevision holding it (stable across the renumbering the
    /// controller does when it reuses it).
    pub to_name: String,
    /// The template already matched.
    pub skip: bool,
    /// Conflicting writes retried.
    pub conflicts: u32,
    /// The object's UID.
    pub uid: Option<String>,
}

fn template(obj: &DynamicObject) -> Value {
    obj.data
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Rolls a StatefulSet or DaemonSet back like `kubectl rollout undo`.
pub async fn undo_with_history(
    conn: &Conn,
    kind: KnownKind,
    name: &str,
    to: &UndoTarget,
    retries: u32,
) -> Result<HistoryUndo, StepError> {
    let api = kind.api(conn);
    let what = format!("{}/{name}", kind.kind.to_ascii_lowercase());
    let revisions: Api<ControllerRevision> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let mut conflicts = 0;
    loop {
        let obj = api
            .get(name)
            .await
            .map_err(|e| api_error(&format!("reading {what}"), e))?;
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        let selector: LabelSelector = serde_json::from_value(
            obj.data
                .pointer("/spec/selector")
                .cloned()
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let history: Vec<ControllerRevision> = revisions
            .list(&ListParams::default().labels(&selector_string(&selector)))
            .await
            .map_err(|e| api_error(&format!("listing the ControllerRevisions of {what}"), e))?
            .items
            .into_iter()
            .filter(|r| {
                r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .collect();
        let by_revision: BTreeMap<i64, &ControllerRevision> = history
            .iter()
            .filter_map(|r| Some((r.revision?, r)))
            .collect();
        let from_revision = by_revision.keys().next_back().copied();
        let target = match to {
            UndoTarget::ReplicaSet(n) => history
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(n.as_str()))
                .ok_or_else(|| StepError::fatal(format!("the revision {n} this rollback chose for {what} is gone")))?,
            UndoTarget::Revision(wanted) => by_revision.get(wanted).copied().ok_or_else(|| {
                let kept: Vec<String> = by_revision.keys().map(i64::to_string).collect();
                let limit = obj
                    .data
                    .pointer("/spec/revisionHistoryLimit")
                    .and_then(Value::as_i64)
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "10 (default)".into());
                StepError::fatal(format!(
                    "unable to find revision {wanted} of {what}: it keeps revisions {} (revisionHistoryLimit \
                     {limit}); pick one of those with `to_revision`",
                    if kept.is_empty() { "none".into() } else { kept.join(", ") }
                ))
            })?,
            UndoTarget::Previous => {
                let mut it = by_revision.values().rev();
                it.next();
                *it.next().ok_or_else(|| {
                    StepError::fatal(format!("no rollout history found for {what}: nothing to go back to"))
                })?
            }
        };
        let mut patch = target.data.0.clone();
        if !patch.is_object() {
            return Err(StepError::fatal(format!(
                "ControllerRevision {} of {what} holds no patch",
                target.metadata.name.clone().unwrap_or_default()
            )));
        }
        // Skip when the template already matches: ask the API server what the
        // patch would produce (a dry run), as kubectl computes it locally.
        let dry = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let would = api
            .patch(name, &dry, &Patch::Strategic(&patch))
            .await
            .map_err(|e| api_error(&format!("dry-running the undo of {what}"), e))?;
        let result = |skip: bool, conflicts: u32| HistoryUndo {
            from_revision,
            to_revision: target.revision.unwrap_or_default(),
            to_name: target.metadata.name.clone().unwrap_or_default(),
            skip,
            conflicts,
            uid: obj.metadata.uid.clone(),
        };
        if template(&would) == template(&obj) {
            return Ok(result(true, conflicts));
        }
        // The resourceVersion we read: 409 if the object changed since.
        patch["metadata"] = serde_json::json!({"resourceVersion": obj.metadata.resource_version});
        match api
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => return Ok(result(false, conflicts)),
            Err(e) if is_conflict(&e) && conflicts < retries => conflicts += 1,
            Err(e) => return Err(api_error(&format!("patching {what}"), e)),
        }
    }
}
