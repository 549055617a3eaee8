//! Whether a Deployment's `ProgressDeadlineExceeded` condition is about its
//! current rollout or left over from one a rollback has since replaced.
//!
//! The Deployment controller (1.20's `syncRolloutStatus` and
//! `getNewReplicaSet`) writes that condition with the message
//! `ReplicaSet "NAME" has timed out progressing.`, naming the ReplicaSet that
//! was the Deployment's new one at the time. When an undo brings back an
//! existing ReplicaSet the controller keeps the condition (same reason, so it
//! is not rewritten) until the revived ReplicaSet makes progress; a rollout to
//! a template without a ReplicaSet replaces it at once (`NewReplicaSetCreated`).
//! So the condition is about the current rollout exactly when the ReplicaSet
//! it names is the one whose template is the Deployment's: a rule on names,
//! not on clocks. `kubectl rollout status` fails on any such condition; a
//! leftover is where we differ from it.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use rollback_core::StepError;
use serde_json::Value;

use crate::client::Conn;
use crate::rollout::{owned_replicasets, template_without_hash};

/// The reason the controller gives a rollout that ran out of time.
pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";

/// The Deployment's `Progressing` condition when it says the progress deadline
/// was exceeded.
pub fn deadline_condition(d: &Deployment) -> Option<&DeploymentCondition> {
    d.status.as_ref()?.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some(TIMED_OUT_REASON)
    })
}

/// The ReplicaSet a `ProgressDeadlineExceeded` message names
/// (`ReplicaSet "web-5d8f" has timed out progressing.`); `None` for the
/// controller's other wording (`Deployment "web" ...`, written when it had no
/// new ReplicaSet) or a message it did not write.
pub fn timed_out_replicaset(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("ReplicaSet \"")?;
    let (name, tail) = rest.split_once('"')?;
    (!name.is_empty() && tail.starts_with(" has timed out")).then_some(name)
}

/// The Deployment's new ReplicaSet as the controller's `FindNewReplicaSet`
/// picks it: the oldest owned one whose template equals the Deployment's,
/// ignoring `pod-template-hash`.
pub fn new_replicaset<'a>(d: &Deployment, owned: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let want = template_without_hash(&serde_json::to_value(&d.spec.template).unwrap_or_default());
    owned
        .iter()
        .filter(|rs| {
            let template = rs
                .spec
                .template
                .as_ref()
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .unwrap_or(Value::Null);
            template_without_hash(&template) == want
        })
        .min_by(|a, b| {
            let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.clone().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// Whether the condition naming `timed_out` is a leftover, given the name of
/// the Deployment's new ReplicaSet (`None`: it has none yet, so the
/// controller will create one and replace the condition).
pub fn is_leftover(timed_out: &str, new_replicaset: Option<&str>) -> bool {
    new_replicaset != Some(timed_out)
}

/// Whether the Deployment's `ProgressDeadlineExceeded` condition, if it has
/// one, is left over from an earlier rollout. Lists the ReplicaSets only when
/// such a condition is there and the controller has seen the current spec
/// (before that the rollout is waiting anyway). A message that names no
/// ReplicaSet is taken as current, as kubectl takes every such condition.
pub async fn deadline_is_leftover(conn: &Conn, d: &Deployment) -> Result<bool, StepError> {
    let Some(condition) = deadline_condition(d) else {
        return Ok(false);
    };
    let observed = d
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    if d.metadata.generation.unwrap_or(0) > observed {
        return Ok(false);
    }
    let Some(timed_out) = condition.message.as_deref().and_then(timed_out_replicaset) else {
        return Ok(false);
    };
    let owned = owned_replicasets(conn, d).await?;
    let current = new_replicaset(d, &owned).and_then(|rs| rs.metadata.name.as_deref());
    Ok(is_leftover(timed_out, current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_timed_out_replicaset_is_read_from_the_controllers_message() {
        assert_eq!(
            timed_out_replicaset("ReplicaSet \"web-5d8f7c9b4\" has timed out progressing."),
            Some("web-5d8f7c9b4")
        );
        assert_eq!(
            timed_out_replicaset("Deployment \"web\" has timed out progressing."),
            None
        );
        assert_eq!(
            timed_out_replicaset("ReplicaSet \"web-1\" is progressing."),
            None
        );
        assert_eq!(timed_out_replicaset(""), None);
    }

    fn replicaset(name: &str, image: &str, hash: &str, created: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"selector": {}, "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_new_replicaset_is_the_one_with_the_deployments_template() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "web:v1"}]}}}
        }))
        .unwrap();
        let owned = [
            replicaset("web-bad", "web:bad", "bad", "2026-12-01T10:01:00Z"),
            replicaset("web-v1", "web:v1", "v1", "2026-12-01T10:00:00Z"),
        ];
        let new = new_replicaset(&d, &owned).and_then(|rs| rs.metadata.name.as_deref());
        assert_eq!(new, Some("web-v1"));
        // After an undo to web-v1, a deadline naming web-bad is a leftover;
        // one naming web-v1 is about this rollout.
        assert!(is_leftover("web-bad", new));
        assert!(!is_leftover("web-v1", new));
        // No ReplicaSet for the template yet: the controller will make one
        // and replace the condition.
        assert!(is_leftover("web-bad", None));
    }
}
