//! Plan files: every mistake reported at its line and column, with the field
//! and the nearest valid name.

use std::collections::BTreeMap;

use rollback_core::{Diagnostic, Error, FailurePolicy, Plan, Registry};

fn load(text: &str) -> Result<Plan, Vec<Diagnostic>> {
    match Plan::from_yaml(
        text,
        "plan.yaml",
        &Registry::with_core_kinds(),
        &BTreeMap::new(),
    ) {
        Ok(p) => Ok(p),
        Err(Error::InvalidPlan { diagnostics, .. }) => Err(diagnostics),
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn one(text: &str) -> Diagnostic {
    let diags = load(text).expect_err("plan must be rejected");
    assert_eq!(diags.len(), 1, "{diags:#?}");
    diags.into_iter().next().unwrap()
}

#[test]
fn a_valid_plan_loads_with_defaults_and_dependencies() {
    let plan = load(
        "name: ok\non_failure: compensate\nsteps:\n  - id: a\n    kind: wait\n    duration: 1s\n  - id: b\n    kind: exec\n    after: a\n    argv: [echo, \"${steps.a.nothing_needed}\"]\n",
    );
    // `wait` declares no outputs: referencing one is an error even when ordered.
    let diags = plan.expect_err("wait has no outputs");
    assert!(
        diags[0].message.contains("has no output `nothing_needed`"),
        "{diags:#?}"
    );

    let plan = load("name: ok\nsteps:\n  - id: a\n    kind: exec\n    argv: [true]\n  - id: b\n    kind: exec\n    after: a\n    argv: [echo, \"${steps.a.stdout}\"]\n").unwrap();
    assert_eq!(plan.steps[1].after, vec!["a".to_string()]);
    assert_eq!(plan.budget, Some(std::time::Duration::from_secs(300)));
    assert_eq!(plan.on_failure, FailurePolicy::Abort);
    assert!(plan.source.digest.starts_with("sha256:"));
}

#[test]
fn unknown_kind_points_at_the_kind_and_suggests() {
    let d = one("name: p\nsteps:\n  - id: a\n    kind: exce\n    argv: [true]\n");
    assert_eq!((d.line, d.column), (4, 5));
    assert_eq!(d.field, "steps[0].kind");
    assert_eq!(d.hint.as_deref(), Some("did you mean `exec`?"));
}

#[test]
fn misspelt_kind_field_points_at_the_key() {
    let d = one("name: p\nsteps:\n  - id: a\n    kind: exec\n    argvv: [true]\n");
    assert_eq!((d.line, d.column), (5, 5));
    assert_eq!(d.field, "steps[0].argvv");
    assert!(d.hint.as_deref().unwrap().contains("`argv`"), "{d:?}");
}

#[test]
fn misspelt_plan_field_and_bad_duration() {
    let diags = load("name: p\nbudjet: 5m\nsteps:\n  - id: a\n    kind: wait\n    duration: 1s\n    timeout: 30\n").unwrap_err();
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert_eq!((diags[0].line, diags[0].field.as_str()), (2, "budjet"));
    assert_eq!(diags[0].hint.as_deref(), Some("did you mean `budget`?"));
    assert_eq!(
        (diags[1].line, diags[1].field.as_str()),
        (7, "steps[0].timeout")
    );
    assert!(diags[1].message.contains("no unit"));
}

#[test]
fn a_cycle_is_named_in_full() {
    let d = one(
        "name: p\nsteps:\n  - id: a\n    kind: wait\n    duration: 1s\n    after: c\n  - id: b\n    kind: wait\n    duration: 1s\n    after: a\n  - id: c\n    kind: wait\n    duration: 1s\n    after: b\n",
    );
    assert!(
        d.message.contains("cycle: a → c → b → a") || d.message.contains("cycle: a → b → c → a"),
        "{d:?}"
    );
    assert!(d.line >= 3);
}

#[test]
fn a_reference_in_a_variable_is_refused_where_it_stands() {
    let d = one(
        "name: p\nvars:\n  db: ${env:DB_URL}\n  literal: cost $${HOME}\nsteps:\n  - id: a\n    kind: exec\n    argv: [echo, \"${var:db}\", \"${var:literal}\"]\n",
    );
    assert_eq!(d.field, "vars.db", "{d:?}");
    assert_eq!((d.line, d.column), (3, 7), "{d:?}");
    assert!(d.message.contains("not resolved in `vars:`"), "{d:?}");
    assert!(
        d.hint
            .as_deref()
            .is_some_and(|h| h.contains("where it is used")),
        "{d:?}"
    );
}

#[test]
fn references_are_checked_before_the_run() {
    let text = "name: p\nvars:\n  ns: prod\nsteps:\n  - id: a\n    kind: exec\n    argv: [echo, \"${var:nss}\"]\n  - id: b\n    kind: exec\n    argv: [echo, \"${steps.a.stdout}\"]\n  - id: c\n    kind: exec\n    after: a\n    argv: [echo, \"${steps.a.stdot}\", \"${nope}\"]\n";
    let diags = load(text).unwrap_err();
    let messages: Vec<String> = diags
        .iter()
        .map(|d| format!("{}:{} {} {:?}", d.line, d.field, d.message, d.hint))
        .collect();
    assert_eq!(diags.len(), 4, "{messages:#?}");
    assert!(
        messages[0].starts_with("7:steps[0].argv[1]") && messages[0].contains("did you mean `ns`"),
        "{messages:#?}"
    );
    assert!(
        messages[1].starts_with("10:steps[1].argv[1]")
            && messages[1].contains("does not run after `a`"),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("no output `stdot`") && m.contains("`stdout`")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`${nope}` is not a reference")),
        "{messages:#?}"
    );
}

#[test]
fn syntax_errors_and_duplicates_have_positions() {
    let d = one("name: p\nsteps:\n  - id: a\n    kind: [wait\n");
    assert_eq!(d.field, "(syntax)");
    assert!(d.line >= 4, "{d:?}");
    let d = one("name: p\nsteps:\n  - id: a\n    kind: wait\n    duration: 1s\n    duration: 2s\n");
    assert_eq!(d.line, 6);
    assert!(d.message.contains("duplicate key"));
}

#[test]
fn variables_need_values_and_overrides_must_be_declared() {
    let text = "name: p\nvars:\n  service:\nsteps:\n  - id: a\n    kind: exec\n    argv: [echo, \"${var:service}\"]\n";
    let d = one(text);
    assert_eq!((d.line, d.field.as_str()), (3, "vars.service"));
    assert_eq!(d.hint.as_deref(), Some("pass --var service=VALUE"));
    let registry = Registry::with_core_kinds();
    let good = BTreeMap::from([("service".to_string(), "orders".to_string())]);
    let plan = Plan::from_yaml(text, "plan.yaml", &registry, &good).unwrap();
    assert_eq!(plan.vars["service"], "orders");
    let typo = BTreeMap::from([("servcie".to_string(), "orders".to_string())]);
    let err = Plan::from_yaml(text, "plan.yaml", &registry, &typo)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no variable `servcie`") && err.contains("did you mean `service`"),
        "{err}"
    );
}

#[test]
fn kind_constructor_errors_name_the_field() {
    let d = one("name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: []\n");
    assert_eq!(d.field, "steps[0].argv");
    assert_eq!(d.line, 5);
}

#[test]
fn the_rendered_error_is_file_line_column() {
    let err = Plan::from_yaml(
        "name: p\nsteps:\n  - id: a\n    kind: exce\n",
        "plans/x.yaml",
        &Registry::with_core_kinds(),
        &BTreeMap::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("plans/x.yaml:4:5: steps[0].kind: unknown step kind `exce`"),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `exec`?"));
}

#[test]
fn approvals_name_existing_steps() {
    let ok = load("name: p\napprovals:\n  - role: engineering-manager\n    before: [b]\nsteps:\n  - id: a\n    kind: wait\n    duration: 1s\n  - id: b\n    kind: wait\n    duration: 1s\n").unwrap();
    assert_eq!(
        ok.roles_before("b"),
        vec!["engineering-manager".to_string()]
    );
    assert!(ok.roles_before("a").is_empty());
    let d = one("name: p\napprovals:\n  - role: cto\n    before: [bb]\nsteps:\n  - id: b\n    kind: wait\n    duration: 1s\n");
    assert_eq!((d.line, d.field.as_str()), (4, "approvals[0].before[0]"));
    assert_eq!(d.hint.as_deref(), Some("did you mean `b`?"));
}
