#![doc = include_str!("../README.md")]

pub mod client;
pub mod event;
pub mod history;
pub mod lease;
pub mod objects;
pub mod permission;
pub mod progress;
pub mod resource;
pub mod rollout;
pub mod selector;
pub mod snapshot;
pub mod verify;
pub mod workload;

use rollback_core::Registry;

pub use client::{install_crypto_provider, Conn, Target};
pub use lease::LeaseLocker;

/// Registers this crate's kinds.
pub fn register(registry: &mut Registry) {
    registry
        .step(
            "k8s.rollout_undo",
            "roll a Deployment back to its previous (or a given) revision, as kubectl rollout undo",
            rollout::RolloutUndo::new,
        )
        .step(
            "k8s.wait_rollout",
            "wait (by watch) until a Deployment finished rolling out, as kubectl rollout status",
            rollout::WaitRollout::new,
        )
        .step(
            "k8s.switch_selector",
            "blue-green: switch a Service's selector once the target pods are ready, then wait for its endpoints",
            selector::SwitchSelector::new,
        )
        .step("k8s.scale", "set a Deployment's or StatefulSet's replicas", workload::Scale::new)
        .step("k8s.set_image", "set container images of a workload", workload::SetImage::new)
        .step("k8s.set_env", "set or remove environment variables of a workload", workload::SetEnv::new)
        .step("k8s.restart", "restart a workload's pods, as kubectl rollout restart", workload::Restart::new)
        .step("k8s.annotate", "set or remove annotations (e.g. a maintenance flag)", objects::Annotate::new)
        .step("k8s.delete", "delete an object, or objects by label selector, with a grace period", objects::Delete::new)
        .step("k8s.apply", "server-side apply last-known-good manifests from a file or folder", objects::Apply::new)
        .step(
            "k8s.snapshot",
            "capture Deployments, Services, ConfigMaps and Secrets before a deploy",
            snapshot::Snapshot::new,
        )
        .step("k8s.restore", "put back the objects of a k8s.snapshot exactly", snapshot::Restore::new)
        .step(
            "k8s.snapshot_cleanup",
            "delete the Secret in which a k8s.snapshot kept the captured Secrets, once restored",
            snapshot::SnapshotCleanup::new,
        )
        .verifier("k8s.available", "a Deployment finished rolling out and is available", verify::Available::new)
        .verifier("k8s.endpoints", "a Service has ready endpoints", verify::EndpointsReady::new)
        .verifier("k8s.pods_ready", "pods under a label selector are ready", verify::PodsReady::new)
        .verifier(
            "k8s.pod_log_errors",
            "lines matching a pattern in pods' recent logs stay under a threshold",
            verify::PodLogErrors::new,
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_kind() {
        let mut r = Registry::empty();
        register(&mut r);
        let steps: Vec<&str> = r.step_kinds().into_iter().map(|(k, _)| k).collect();
        assert_eq!(steps.len(), 13, "{steps:?}");
        assert_eq!(r.verifier_kinds().len(), 4);
    }
}
