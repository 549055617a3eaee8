//! Core's generic kinds: what any rollback needs whatever it runs on.
//!
//! | kind          | step | verifier | module      |
//! |---------------|------|----------|-------------|
//! | `exec`        | yes  | yes      | [`exec`]    |
//! | `http`        | yes  | yes      | [`http`]    |
//! | `wait`        | yes  |          | [`wait`]    |
//! | `confirm`     | yes  |          | [`confirm`] |
//! | `git.restore` | yes  |          | [`git`]     |
//! | `tcp`         |      | yes      | [`tcp`]     |
//!
//! Each kind's configuration is a struct deserialized from the plan entry
//! (minus the common fields the plan loader handles). Strings may hold
//! `${...}` references, resolved when the step runs, previews or checks.

pub mod confirm;
pub mod exec;
pub mod file;
pub mod git;
pub mod http;
pub mod prometheus;
pub mod tcp;
pub mod wait;

use crate::registry::Registry;

/// How much of a program's stdout or stderr, or of a response body, a kind
/// keeps (64 KiB).
pub(crate) const OUTPUT_CAP: usize = crate::process::OUTPUT_CAP;

/// Registers core's kinds: steps `exec`, `http`, `wait`, `confirm`,
/// `git.restore`; verifiers `exec`, `http`, `tcp`.
pub fn register(registry: &mut Registry) {
    registry
        .step(
            "exec",
            "Run a program with its arguments (no shell) and check its exit code",
            exec::Exec::new,
        )
        .step(
            "http",
            "Send an HTTP request and check the response status",
            http::Http::new,
        )
        .step(
            "wait",
            "Pause for a fixed time (cancelled when the run is interrupted)",
            wait::Wait::new,
        )
        .step(
            "confirm",
            "Ask the operator for a go-ahead before going on",
            confirm::Confirm::new,
        )
        .step(
            "git.restore",
            "Restore files of a git working tree from a revision, keeping backups for undo",
            git::GitRestore::new,
        );
    registry
        .verifier(
            "exec",
            "Pass when a program exits with an expected code",
            exec::ExecCheck::new,
        )
        .verifier(
            "http",
            "Check an HTTP endpoint's status, body and latency",
            http::HttpCheck::new,
        )
        .verifier(
            "prometheus",
            "Run a Prometheus instant query and compare the value with at_most / at_least",
            prometheus::PrometheusCheck::new,
        )
        .verifier(
            "file",
            "Pass when a file exists, is recent (max_age) and not smaller than min_size",
            file::FileCheck::new,
        )
        .verifier(
            "tcp",
            "Pass when host:port accepts TCP connections",
            tcp::TcpCheck::new,
        );
}

/// `a` or `one of a, b, c`, for messages about expected values.
pub(crate) fn one_of<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        _ => {
            let list: Vec<String> = items.iter().map(ToString::to_string).collect();
            format!("one of {}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_core_kind() {
        let mut registry = Registry::empty();
        register(&mut registry);
        let steps: Vec<&str> = registry.step_kinds().into_iter().map(|(k, _)| k).collect();
        assert_eq!(steps, ["confirm", "exec", "git.restore", "http", "wait"]);
        let verifiers: Vec<&str> = registry
            .verifier_kinds()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(verifiers, ["exec", "file", "http", "prometheus", "tcp"]);
    }

    #[test]
    fn schemas_describe_every_field() {
        let mut registry = Registry::empty();
        register(&mut registry);
        let entries = registry
            .steps
            .values()
            .map(|e| &e.schema)
            .chain(registry.verifiers.values().map(|e| &e.schema));
        for schema in entries {
            let props = schema["properties"]
                .as_object()
                .expect("config schema has properties");
            for (name, prop) in props {
                assert!(
                    prop.get("description").is_some(),
                    "field `{name}` has no description in {schema}"
                );
            }
            assert_eq!(
                schema["additionalProperties"],
                serde_json::json!(false),
                "{schema}"
            );
        }
    }

    #[test]
    fn builds_from_plan_values() {
        let registry = Registry::with_core_kinds();
        let exec = registry.steps["exec"].build(serde_json::json!({"argv": ["true"]}));
        assert!(exec.is_ok());
        let empty = registry.steps["exec"].build(serde_json::json!({"argv": []}));
        assert!(
            matches!(empty, Err(crate::registry::BuildError::Config(e)) if e.field.as_deref() == Some("argv"))
        );
        let typo = registry.steps["wait"].build(serde_json::json!({"duraton": "1s"}));
        assert!(matches!(
            typo,
            Err(crate::registry::BuildError::Shape { .. })
        ));
    }

    #[test]
    fn one_of_lists() {
        assert_eq!(one_of(&[0]), "0");
        assert_eq!(one_of(&[0, 2]), "one of 0, 2");
    }
}
