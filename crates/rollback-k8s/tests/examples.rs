//! The example plans in examples/k8s load against the registry (so they cannot
//! rot), and the Job's Role grants what the kinds use.

use std::collections::BTreeMap;
use std::path::Path;

use rollback_core::{Plan, Registry};

#[test]
fn example_plans_load() {
    let mut registry = Registry::with_core_kinds();
    rollback_k8s::register(&mut registry);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/k8s");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "rbac.yaml" || name == "job.yaml" || !name.ends_with(".yaml") {
            continue;
        }
        let vars: BTreeMap<String, String> = match name.as_str() {
            "event-schema-rollback.yaml" => BTreeMap::from([("version".into(), "3".into())]),
            "emergency-rollback.yaml" => BTreeMap::new(),
            _ => BTreeMap::from([("service".into(), "order-service".into())]),
        };
        let plan = Plan::load(&path, &registry, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!plan.steps.is_empty(), "{name}");
        loaded += 1;
    }
    assert_eq!(loaded, 4);
}

#[test]
fn the_role_grants_what_the_kinds_use() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/k8s");
    let rbac = rollback_k8s::objects::read_manifests(&dir.join("rbac.yaml")).unwrap();
    let role = rbac.iter().find(|o| o["kind"] == "Role").unwrap();
    let grants = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == group)
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
        })
    };
    for (group, resource, verb) in [
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "watch"),
        ("apps", "replicasets", "list"),
        ("apps", "deployments/scale", "patch"),
        ("", "services", "patch"),
        ("", "pods", "list"),
        ("", "endpoints", "watch"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        // k8s.snapshot keeps Secrets in a snapshot Secret; cleanup deletes it.
        ("", "secrets", "create"),
        ("", "secrets", "get"),
        ("", "secrets", "delete"),
    ] {
        assert!(grants(group, resource, verb), "{group}/{resource} {verb}");
    }
    assert!(
        !grants("", "pods", "delete") && !grants("", "configmaps", "delete"),
        "least privilege: nothing deleted that no kind deletes"
    );
    let job = rollback_k8s::objects::read_manifests(&dir.join("job.yaml")).unwrap();
    assert_eq!(
        job[0]["spec"]["template"]["spec"]["serviceAccountName"],
        "rollback"
    );
}
