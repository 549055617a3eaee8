//! A 403 from the API server as a permission error that names what is
//! missing (verb, resource, API group, namespace) and the RBAC rule that
//! grants it, instead of a retry, a "not found" or a raw API dump.

use kube::core::Status;

/// Where the least-privilege Role of this crate's kinds lives.
pub const EXAMPLE_ROLE: &str = "examples/k8s/rbac.yaml";

/// What a 403 says the account may not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The user the API server authenticated (`system:serviceaccount:NS:NAME`).
    pub user: String,
    /// The verbs refused (`get`, `create`, `watch`, ...).
    pub verbs: Vec<String>,
    /// The resource, with its subresource (`leases`, `pods/log`).
    pub resource: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The namespace; `None` for a cluster-scoped request.
    pub namespace: Option<String>,
}

impl Forbidden {
    /// Reads the API server's message (`User "U" cannot VERB resource "R" in
    /// API group "G" in the namespace "N"`, apiserver's `forbiddenMessage`).
    pub fn parse(message: &str) -> Option<Forbidden> {
        let re = regex::Regex::new(
            r#"User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(?: in the namespace "([^"]*)")?"#,
        )
        .expect("a valid pattern");
        let c = re.captures(message)?;
        Some(Forbidden {
            user: c[1].to_string(),
            verbs: vec![c[2].to_string()],
            resource: c[3].to_string(),
            group: c[4].to_string(),
            namespace: c.get(5).map(|m| m.as_str().to_string()),
        })
    }

    /// The RBAC rule that grants it, in the Role's YAML flow style.
    pub fn rule(&self) -> String {
        let verbs: Vec<String> = self.verbs.iter().map(|v| format!("\"{v}\"")).collect();
        format!(
            "{{apiGroups: [\"{}\"], resources: [\"{}\"], verbs: [{}]}}",
            self.group,
            self.resource,
            verbs.join(", ")
        )
    }

    /// Which permission is missing and how to grant it.
    pub fn explain(&self) -> String {
        let group = if self.group.is_empty() {
            "the core API group".to_string()
        } else {
            format!("API group {}", self.group)
        };
        let (scope, holder) = match &self.namespace {
            Some(ns) => (format!("in namespace {ns}"), format!("a Role in {ns}")),
            None => ("cluster-wide".to_string(), "a ClusterRole".to_string()),
        };
        format!(
            "{} may not {} {} ({group}) {scope}; add the rule {} to {holder} bound to it (see {EXAMPLE_ROLE})",
            self.user,
            self.verbs.join(", "),
            self.resource,
            self.rule()
        )
    }
}

/// Whether a kube error is an HTTP 403.
pub fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

/// What to tell about a 403 `status`: the missing verb, resource and
/// namespace with the rule to add, or, for a message of another shape, the
/// API server's own words and where the Role is.
pub fn explain_status(status: &Status) -> String {
    match Forbidden::parse(&status.message) {
        Some(f) => f.explain(),
        None => format!(
            "{}: grant the account this access (see {EXAMPLE_ROLE})",
            status.message
        ),
    }
}

/// The explanation of a 403 inside a watch's error, if that is what it is.
pub fn watch_forbidden(e: &kube::runtime::watcher::Error) -> Option<String> {
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(kube::Error::Api(s))
        | W::WatchStartFailed(kube::Error::Api(s))
        | W::WatchFailed(kube::Error::Api(s))
            if s.code == 403 =>
        {
            Some(explain_status(s))
        }
        W::WatchError(s) if s.code == 403 => Some(explain_status(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_message_names_verb_resource_group_and_namespace() {
        let f = Forbidden::parse(
            "leases.coordination.k8s.io \"rollback-plan-orders\" is forbidden: User \
             \"system:serviceaccount:ops:runner\" cannot get resource \"leases\" in API group \
             \"coordination.k8s.io\" in the namespace \"ops\"",
        )
        .unwrap();
        assert_eq!(f.verbs, ["get"]);
        assert_eq!(f.resource, "leases");
        assert_eq!(f.group, "coordination.k8s.io");
        assert_eq!(f.namespace.as_deref(), Some("ops"));
        let text = f.explain();
        assert!(text.contains("may not get leases"), "{text}");
        assert!(text.contains("in namespace ops"), "{text}");
        assert!(
            text.contains(
                r#"{apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get"]}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn core_group_subresources_and_cluster_scope_are_named() {
        let f = Forbidden::parse(
            "pods \"web-1\" is forbidden: User \"bob\" cannot get resource \"pods/log\" in API group \"\" \
             in the namespace \"shop\": RBAC: role not found",
        )
        .unwrap();
        assert_eq!(f.resource, "pods/log");
        assert!(f
            .explain()
            .contains("(the core API group) in namespace shop"));
        let f = Forbidden::parse(
            "nodes is forbidden: User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
        )
        .unwrap();
        assert_eq!(f.namespace, None);
        assert!(f.explain().contains("cluster-wide"), "{}", f.explain());
        assert!(f.explain().contains("ClusterRole"), "{}", f.explain());
    }
}
