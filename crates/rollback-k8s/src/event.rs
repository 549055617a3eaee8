//! Kubernetes Events recording who rolled back what and why, so that
//! `kubectl describe` shows it (kubectl itself no longer does).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use rollback_core::StepContext;

use crate::client::Conn;

/// The `reportingController` of our Events.
pub const REPORTING_CONTROLLER: &str = "rollback.rs/rollback";

/// What an Event is about.
#[derive(Debug, Clone)]
pub struct Regarding<'a> {
    /// `apps/v1`, `v1`…
    pub api_version: &'a str,
    /// `Deployment`, `Service`…
    pub kind: &'a str,
    /// Object name.
    pub name: &'a str,
    /// Object UID, if known.
    pub uid: Option<&'a str>,
}

/// Records a Normal event (events.k8s.io/v1) on the object naming the run's
/// operator and reason. A failure to record is reported as progress and never
/// fails the step: the change itself is done.
pub async fn record(
    conn: &Conn,
    ctx: &StepContext,
    regarding: Regarding<'_>,
    reason: &str,
    action: &str,
    note: &str,
) {
    let note = ctx.redact(&format!(
        "{note} by {} (run {}, step {}): {}",
        ctx.operator(),
        ctx.run_id(),
        ctx.step_id(),
        ctx.reason()
    ));
    // The API caps notes at 1 KiB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        metadata: ObjectMeta {
            // client-go's naming: NAME.HEX(unix nanos); 1.20 rejects a generateName ending in '.'.
            name: Some(format!(
                "{}.{:x}",
                regarding.name,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            )),
            namespace: Some(conn.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some(action.to_string()),
        reason: Some(reason.to_string()),
        note: Some(note),
        type_: Some("Normal".into()),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance()),
        regarding: Some(ObjectReference {
            api_version: Some(regarding.api_version.into()),
            kind: Some(regarding.kind.into()),
            name: Some(regarding.name.into()),
            namespace: Some(conn.namespace.clone()),
            uid: regarding.uid.map(str::to_string),
            ..ObjectReference::default()
        }),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(conn.client.clone(), &conn.namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        ctx.progress(&format!(
            "could not record a Kubernetes Event on {} {}: {e} (the change itself is done; grant `create` on \
             events.k8s.io events)",
            regarding.kind, regarding.name
        ));
    }
}

fn instance() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
    let host = host.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    });
    // reportingInstance is at most 128 characters.
    format!("{REPORTING_CONTROLLER}-{host}")
        .chars()
        .take(128)
        .collect()
}
