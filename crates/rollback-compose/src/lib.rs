#![doc = include_str!("../README.md")]

use rollback_core::Registry;

/// Defines a kind's configuration struct with the fields every compose kind
/// shares (`project`, `files`, `cwd`, `compose`) followed by its own.
/// (`#[serde(flatten)]` cannot be combined with `deny_unknown_fields`.)
macro_rules! compose_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The Compose project name, passed as `-p`; Compose derives it from
            /// the folder when absent.
            #[serde(default)]
            pub project: Option<String>,
            /// Compose files, each passed as `-f`, relative to `cwd`; Compose's
            /// defaults (`compose.yaml`, `docker-compose.yml`) when empty.
            #[serde(default)]
            pub files: Vec<String>,
            /// The folder Compose runs in; the runner's own when absent.
            #[serde(default)]
            pub cwd: Option<String>,
            /// The Compose command, e.g. `["docker", "compose"]` or
            /// `["docker-compose"]`; found at run time when absent (the plugin
            /// first).
            #[serde(default)]
            pub compose: Option<Vec<String>>,
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $name {
            #[allow(dead_code)]
            pub(crate) fn project_spec(&self) -> $crate::project::ProjectSpec {
                $crate::project::ProjectSpec {
                    project: self.project.clone(),
                    files: self.files.clone(),
                    cwd: self.cwd.clone(),
                    compose: self.compose.clone(),
                }
            }
        }
    };
}

pub mod container;
pub mod exec;
pub mod health;
pub mod lifecycle;
mod project;
pub mod rollback;

pub use project::find_compose;

/// Registers this crate's kinds: steps `compose.rollback`, `compose.stop`,
/// `compose.start`, `compose.restart`, `compose.up`, `compose.exec`; verifier
/// `compose.healthy`.
pub fn register(registry: &mut Registry) {
    registry
        .step(
            "compose.rollback",
            "Put a Compose service back on its previous image or compose file and wait until it is healthy",
            rollback::ComposeRollback::new,
        )
        .step(
            "compose.stop",
            "Stop Compose services (undo starts them again)",
            lifecycle::Lifecycle::stop,
        )
        .step(
            "compose.start",
            "Start stopped Compose services and wait until they are healthy (undo stops them)",
            lifecycle::Lifecycle::start,
        )
        .step(
            "compose.restart",
            "Restart Compose services and wait until they are healthy",
            lifecycle::Lifecycle::restart,
        )
        .step(
            "compose.up",
            "Create and start Compose services (`up -d`) and wait until they are healthy",
            lifecycle::Up::new,
        )
        .step(
            "compose.exec",
            "Run a command inside a service's running container (`exec -T`)",
            exec::ComposeExec::new,
        );
    registry.verifier(
        "compose.healthy",
        "Pass when services' containers run and their own healthchecks pass",
        health::ComposeHealthy::new,
    );
}

fn default_timeout() -> rollback_core::HumanDuration {
    rollback_core::HumanDuration(std::time::Duration::from_secs(120))
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_kind_with_documented_fields() {
        let mut registry = Registry::empty();
        register(&mut registry);
        let steps: Vec<&str> = registry.step_kinds().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            steps,
            [
                "compose.exec",
                "compose.restart",
                "compose.rollback",
                "compose.start",
                "compose.stop",
                "compose.up"
            ]
        );
        let verifiers: Vec<&str> = registry
            .verifier_kinds()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(verifiers, ["compose.healthy"]);
        let schema = rollback_core::schema::plan_schema(&registry);
        let text = schema.to_string();
        assert!(text.contains("compose.rollback"), "{text}");
    }
}
