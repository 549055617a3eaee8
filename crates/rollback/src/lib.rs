#![doc = include_str!("../README.md")]

mod journal;
mod stored;

pub use journal::{Journal, JournalOptions};
pub use stored::{stored_run, StoredPlan};

use rollback_core::Registry;

/// The adapters compiled into this build, by feature name.
pub const ADAPTERS: &[&str] = &[
    #[cfg(feature = "notify")]
    "notify",
    #[cfg(feature = "vault")]
    "vault",
    #[cfg(feature = "compose")]
    "compose",
    #[cfg(feature = "db")]
    "db",
    #[cfg(feature = "k8s")]
    "k8s",
];

/// Core's kinds and those of every adapter compiled in.
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::with_core_kinds();
    #[cfg(feature = "notify")]
    rollback_notify::register(&mut registry);
    #[cfg(feature = "vault")]
    rollback_vault::register(&mut registry);
    #[cfg(feature = "compose")]
    rollback_compose::register(&mut registry);
    #[cfg(feature = "db")]
    rollback_db::register(&mut registry);
    #[cfg(feature = "k8s")]
    rollback_k8s::register(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_has_a_kind_of_every_adapter_compiled_in() {
        let registry = registry();
        let steps: Vec<&str> = registry.step_kinds().into_iter().map(|(k, _)| k).collect();
        let notifiers: Vec<&str> = registry
            .notifier_kinds()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(steps.contains(&"exec"));
        for (adapter, kind) in [
            ("vault", "vault.kv_rollback"),
            ("compose", "compose.rollback"),
            ("db", "db.restore"),
            ("k8s", "k8s.rollout_undo"),
        ] {
            assert_eq!(
                steps.contains(&kind),
                ADAPTERS.contains(&adapter),
                "{kind} and feature {adapter}"
            );
        }
        assert_eq!(notifiers.contains(&"slack"), ADAPTERS.contains(&"notify"));
    }
}
