//! The JSON Schema of plan files (`rollback schema`), built from the kinds in a
//! registry, so editors can complete and check plans.

use serde_json::{json, Map, Value};

use crate::event::Event;
use crate::registry::{KindEntry, Registry};

fn duration() -> Value {
    json!({ "type": "string", "description": "A duration: 500ms, 30s, 5m, 1h 30m" })
}

/// One `oneOf` branch per kind: the kind's own fields plus the common ones.
/// An array whose items are one of the kinds' branches; with no kinds
/// compiled in, an array that must stay empty (`oneOf: []` is invalid).
fn kind_array(branches: Vec<Value>) -> Value {
    if branches.is_empty() {
        json!({ "type": "array", "maxItems": 0 })
    } else {
        json!({ "type": "array", "items": { "oneOf": branches } })
    }
}

fn branches<T: ?Sized>(
    kinds: &std::collections::BTreeMap<String, KindEntry<T>>,
    common: &Map<String, Value>,
    required: &[&str],
) -> Vec<Value> {
    kinds
        .iter()
        .map(|(kind, entry)| {
            let mut props = entry
                .schema
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (k, v) in common {
                props.insert(k.clone(), v.clone());
            }
            props.insert(
                "kind".into(),
                json!({ "const": kind, "description": entry.summary }),
            );
            let mut req: Vec<Value> = entry
                .schema
                .get("required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            req.extend(required.iter().map(|r| json!(r)));
            json!({
                "title": kind,
                "description": entry.summary,
                "type": "object",
                "properties": props,
                "required": req,
                "additionalProperties": false,
            })
        })
        .collect()
}

/// The schema of a plan file using the kinds of `registry`.
pub fn plan_schema(registry: &Registry) -> Value {
    let step_common = json!({
        "id": { "type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "Unique step id" },
        "after": { "description": "Steps that must succeed first", "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" } } ] },
        "timeout": duration(),
        "retries": { "type": "integer", "minimum": 0, "description": "Further attempts after a retryable error or a timeout" },
        "backoff": duration(),
    });
    let check_common = json!({
        "name": { "type": "string", "description": "Name shown in reports (default: the kind)" },
        "timeout": duration(),
        "within": duration(),
        "interval": duration(),
    });
    let notify_common = json!({
        "events": { "type": "array", "items": { "enum": Event::NOTIFIABLE } },
        "timeout": duration(),
        "retries": { "type": "integer", "minimum": 0 },
    });
    let as_map = |v: Value| v.as_object().cloned().unwrap_or_default();
    let mut trigger_common = as_map(check_common.clone());
    trigger_common.insert("for".into(), json!({ "type": "string", "description": "How long the check must fail before the plan runs, e.g. 10m" }));
    let triggers = kind_array(branches(
        &registry.verifiers,
        &trigger_common,
        &["kind", "for"],
    ));
    let checks = kind_array(branches(
        &registry.verifiers,
        &as_map(check_common),
        &["kind"],
    ));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rollback plan",
        "type": "object",
        "required": ["name", "steps"],
        "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z0-9._-]+$" },
            "description": { "type": "string" },
            "budget": duration(),
            "on_failure": { "enum": ["abort", "continue", "compensate"] },
            "on_budget_exceeded": { "enum": ["abort", "continue"] },
            "concurrency": { "type": "integer", "minimum": 1 },
            "vars": { "type": "object", "additionalProperties": { "type": ["string", "number", "boolean", "null"] } },
            "steps": { "type": "array", "minItems": 1, "items": { "oneOf": branches(&registry.steps, &as_map(step_common), &["id", "kind"]) } },
            "verify": checks.clone(),
            "preflight": checks,
            "approvals": { "type": "array", "items": { "type": "object", "additionalProperties": false, "required": ["role", "before"],
                "properties": { "role": { "type": "string" }, "before": { "type": "array", "items": { "type": "string" } } } } },
            "triggers": triggers,
            "watch": { "type": "object", "additionalProperties": false, "properties": { "interval": duration(), "cooldown": duration() } },
            "notify": kind_array(branches(&registry.notifiers, &as_map(notify_common), &["kind"])),
        }
    })
}
