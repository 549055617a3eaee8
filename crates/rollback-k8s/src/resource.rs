//! `kind/name` references (`deployment/web`, `svc/shop`) as kubectl takes them.

use kube::api::{Api, ApiResource, DynamicObject};
use rollback_core::ConfigError;

use crate::client::Conn;

/// A kind this crate can address by its short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownKind {
    /// API group ("" for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Namespaced?
    pub namespaced: bool,
    /// Has a pod template at `spec.template`.
    pub workload: bool,
}

const KINDS: &[(&[&str], KnownKind)] = &[
    (
        &["deployment", "deployments", "deploy"],
        KnownKind {
            group: "apps",
            version: "v1",
            kind: "Deployment",
            plural: "deployments",
            namespaced: true,
            workload: true,
        },
    ),
    (
        &["statefulset", "statefulsets", "sts"],
        KnownKind {
            group: "apps",
            version: "v1",
            kind: "StatefulSet",
            plural: "statefulsets",
            namespaced: true,
            workload: true,
        },
    ),
    (
        &["daemonset", "daemonsets", "ds"],
        KnownKind {
            group: "apps",
            version: "v1",
            kind: "DaemonSet",
            plural: "daemonsets",
            namespaced: true,
            workload: true,
        },
    ),
    (
        &["replicaset", "replicasets", "rs"],
        KnownKind {
            group: "apps",
            version: "v1",
            kind: "ReplicaSet",
            plural: "replicasets",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["service", "services", "svc"],
        KnownKind {
            group: "",
            version: "v1",
            kind: "Service",
            plural: "services",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["configmap", "configmaps", "cm"],
        KnownKind {
            group: "",
            version: "v1",
            kind: "ConfigMap",
            plural: "configmaps",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["secret", "secrets"],
        KnownKind {
            group: "",
            version: "v1",
            kind: "Secret",
            plural: "secrets",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["pod", "pods", "po"],
        KnownKind {
            group: "",
            version: "v1",
            kind: "Pod",
            plural: "pods",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["serviceaccount", "serviceaccounts", "sa"],
        KnownKind {
            group: "",
            version: "v1",
            kind: "ServiceAccount",
            plural: "serviceaccounts",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["job", "jobs"],
        KnownKind {
            group: "batch",
            version: "v1",
            kind: "Job",
            plural: "jobs",
            namespaced: true,
            workload: false,
        },
    ),
    (
        &["ingress", "ingresses", "ing"],
        KnownKind {
            group: "networking.k8s.io",
            version: "v1",
            kind: "Ingress",
            plural: "ingresses",
            namespaced: true,
            workload: false,
        },
    ),
];

impl KnownKind {
    /// Looks a kind up by kubectl's names (`deployment`, `deploy`, `Deployment`).
    pub fn parse(kind: &str) -> Option<KnownKind> {
        let k = kind.to_ascii_lowercase();
        let k = k.split('.').next().unwrap_or(&k).to_string();
        KINDS
            .iter()
            .find(|(names, _)| names.contains(&k.as_str()))
            .map(|(_, kk)| *kk)
    }

    /// The kube description of this kind.
    pub fn api_resource(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version,
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// A dynamic API for this kind in the connection's namespace.
    pub fn api(&self, conn: &Conn) -> Api<DynamicObject> {
        let ar = self.api_resource();
        if self.namespaced {
            Api::namespaced_with(conn.client.clone(), &conn.namespace, &ar)
        } else {
            Api::all_with(conn.client.clone(), &ar)
        }
    }

    /// `apps/v1`, `v1`…
    pub fn api_version(&self) -> String {
        self.api_resource().api_version
    }
}

/// A `kind/name` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    /// The kind.
    pub kind: KnownKind,
    /// The name (may hold `${...}` templates).
    pub name: String,
}

fn known_names() -> String {
    KINDS
        .iter()
        .map(|(n, _)| n[0])
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a kind alone (`deployment`).
pub fn parse_kind(field: &str, kind: &str) -> Result<KnownKind, ConfigError> {
    KnownKind::parse(kind).ok_or_else(|| {
        ConfigError::field(
            field,
            format!("unknown kind `{kind}`: use one of {}", known_names()),
        )
    })
}

/// Parses `kind/name`; `workload` requires a kind with a pod template.
pub fn parse_ref(field: &str, text: &str, workload: bool) -> Result<ResourceRef, ConfigError> {
    let Some((kind, name)) = text.split_once('/') else {
        return Err(ConfigError::field(
            field,
            format!("`{text}` is not `kind/name`: write e.g. `deployment/{text}`"),
        ));
    };
    let kind = parse_kind(field, kind)?;
    if workload && !kind.workload {
        return Err(ConfigError::field(
            field,
            format!(
                "{} has no pod template: use a deployment, statefulset or daemonset",
                kind.kind
            ),
        ));
    }
    if name.trim().is_empty() {
        return Err(ConfigError::field(field, "the name after `/` is empty"));
    }
    Ok(ResourceRef {
        kind,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubectl_style_references() {
        let r = parse_ref("resource", "deploy/web", true).unwrap();
        assert_eq!(r.kind.kind, "Deployment");
        assert_eq!(r.name, "web");
        assert_eq!(
            parse_ref("resource", "svc/shop", false)
                .unwrap()
                .kind
                .plural,
            "services"
        );
        assert!(parse_ref("resource", "web", false)
            .unwrap_err()
            .message
            .contains("deployment/web"));
        assert!(parse_ref("resource", "svc/shop", true)
            .unwrap_err()
            .message
            .contains("no pod template"));
        assert!(parse_ref("resource", "gizmo/x", false)
            .unwrap_err()
            .message
            .contains("unknown kind"));
    }
}
