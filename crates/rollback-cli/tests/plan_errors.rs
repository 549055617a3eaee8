//! `rollback validate` reports each mistake in a plan at FILE:LINE:COLUMN
//! with the field at fault and, where there is one, what was meant.

mod common;

use common::*;

/// Validates `yaml` (written to a file); expects exit 2 and returns the
/// file's path and stderr.
fn invalid(sb: &Sandbox, yaml: &str) -> (String, String) {
    let path = sb.write("plan.yaml", yaml);
    let path = path.to_str().expect("UTF-8 path").to_string();
    let out = sb.run(["validate", &path]);
    out.expect_code(2);
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    (path, out.stderr)
}

/// The diagnostic line `FILE:LINE:COL: FIELD: ...` for `line` and `field`,
/// with the hint line after it, if any. Fails when there is none.
#[track_caller]
fn diagnostic(stderr: &str, file: &str, line: usize, field: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let l = l.strip_prefix("error: ").unwrap_or(l);
        let Some(rest) = l.strip_prefix(&format!("{file}:{line}:")) else {
            continue;
        };
        let Some((col, rest)) = rest.split_once(':') else {
            continue;
        };
        let col: usize = col
            .parse()
            .unwrap_or_else(|_| panic!("column is not a number in `{l}`"));
        assert!(col >= 1, "column counts from 1: `{l}`");
        if rest.trim_start().starts_with(&format!("{field}:")) {
            let mut found = l.to_string();
            if let Some(hint) = lines
                .get(i + 1)
                .filter(|h| h.trim_start().starts_with("hint:"))
            {
                found.push('\n');
                found.push_str(hint);
            }
            return found;
        }
    }
    panic!("no diagnostic at {file}:{line}:COL for field `{field}` in:\n{stderr}");
}

#[test]
fn unknown_kind_suggests_the_nearest() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nsteps:\n  - id: a\n    kind: exce\n    argv: [\"true\"]\n",
    );
    let d = diagnostic(&err, &file, 4, "steps[0].kind");
    assert!(d.contains("unknown step kind `exce`"), "{d}");
    assert!(d.contains("hint: did you mean `exec`?"), "{d}");
}

#[test]
fn misspelt_kind_field_suggests_the_right_one() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nsteps:\n  - id: a\n    kind: exec\n    argvv: [\"true\"]\n",
    );
    let d = diagnostic(&err, &file, 5, "steps[0].argvv");
    assert!(d.contains("unknown field `argvv`"), "{d}");
    assert!(d.contains("hint: did you mean `argv`?"), "{d}");
}

#[test]
fn unknown_top_level_field_suggests_budget() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nbudjet: 1m\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let d = diagnostic(&err, &file, 2, "budjet");
    assert!(d.contains(&format!("{file}:2:1:")), "{d}");
    assert!(d.contains("unknown field `budjet`"), "{d}");
    assert!(d.contains("hint: did you mean `budget`?"), "{d}");
}

const CYCLE: &str = "name: p
steps:
  - id: a
    kind: exec
    argv: [\"true\"]
    after: [c]
  - id: b
    kind: exec
    argv: [\"true\"]
    after: [a]
  - id: c
    kind: exec
    argv: [\"true\"]
    after: [b]
";

#[test]
fn a_cycle_is_named_in_full() {
    let sb = Sandbox::new();
    let (_file, err) = invalid(&sb, CYCLE);
    let line = err
        .lines()
        .find(|l| l.contains("cycle"))
        .unwrap_or_else(|| panic!("no cycle reported:\n{err}"));
    assert!(line.contains("after"), "the field is an `after:`: {line}");
    // The cycle starts and ends with the same step and names all three.
    let cycle = line
        .split("cycle: ")
        .nth(1)
        .and_then(|c| c.split(" (").next())
        .unwrap_or_else(|| panic!("cannot find the cycle in `{line}`"));
    let names: Vec<&str> = cycle.split(" → ").collect();
    assert_eq!(names.len(), 4, "{cycle}");
    assert_eq!(names.first(), names.last(), "{cycle}");
    let mut inner = names[..3].to_vec();
    inner.sort();
    assert_eq!(inner, ["a", "b", "c"], "{cycle}");
    assert!(cycle.starts_with("a → "), "{cycle}");
    assert!(
        err.contains("hint: remove one of these `after:` entries"),
        "{err}"
    );
}

/// The message says "each runs after the next", so the arrow must follow the
/// `after:` edges: here a after c, c after b, b after a.
#[test]
fn a_cycle_is_named_in_the_direction_it_describes() {
    let sb = Sandbox::new();
    let (_file, err) = invalid(&sb, CYCLE);
    assert!(
        err.contains("a → c → b → a (each runs after the next)"),
        "{err}"
    );
}

#[test]
fn after_naming_no_step() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n    after: [nope]\n",
    );
    let d = diagnostic(&err, &file, 6, "steps[0].after[0]");
    assert!(d.contains("no step with id `nope`"), "{d}");
}

#[test]
fn reference_to_an_output_the_kind_does_not_have() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p
steps:
  - id: x
    kind: exec
    argv: [\"true\"]
  - id: z
    kind: exec
    after: [x]
    argv:
      - echo
      - \"${steps.x.nope}\"
",
    );
    let d = diagnostic(&err, &file, 11, "steps[1].argv[1]");
    assert!(
        d.contains("`${steps.x.nope}`: a `exec` step has no output `nope`"),
        "{d}"
    );
    assert!(
        d.contains("hint: its outputs: stdout, stderr, exit_code"),
        "{d}"
    );
}

#[test]
fn reference_to_a_step_that_does_not_run_before() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p
steps:
  - id: x
    kind: exec
    argv: [\"true\"]
  - id: y
    kind: exec
    argv: [\"true\"]
  - id: z
    kind: exec
    after: [x]
    argv: [echo, \"${steps.y.stdout}\"]
",
    );
    let d = diagnostic(&err, &file, 12, "steps[2].argv[1]");
    assert!(d.contains("step `z` does not run after `y`"), "{d}");
    assert!(d.contains("hint: add `y` to this step's `after:`"), "{d}");
}

#[test]
fn a_transitive_dependency_may_be_referenced() {
    let sb = Sandbox::new();
    let path = sb.write(
        "plan.yaml",
        "name: p
steps:
  - id: x
    kind: exec
    argv: [\"true\"]
  - id: y
    kind: exec
    after: [x]
    argv: [\"true\"]
  - id: z
    kind: exec
    after: [y]
    argv: [echo, \"${steps.x.stdout}\"]
",
    );
    let out = sb.run(["validate".as_ref(), path.as_os_str()]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("plan p is valid: 3 steps"),
        "{}",
        out.stdout
    );
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n  - id: : b\n",
    );
    let d = diagnostic(&err, &file, 6, "(syntax)");
    assert!(!d.is_empty());
}

#[test]
fn duration_without_unit() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n    timeout: 30\n",
    );
    let d = diagnostic(&err, &file, 6, "steps[0].timeout");
    assert!(d.contains("`30` has no unit"), "{d}");
    assert!(d.contains("hint: write `30s` or `30ms`"), "{d}");
}

#[test]
fn every_mistake_is_reported_in_one_go() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nbudjet: 1m\nsteps:\n  - id: a\n    kind: exce\n  - id: b\n    kind: exec\n    argv: [\"true\"]\n    timeout: 5\n",
    );
    diagnostic(&err, &file, 2, "budjet");
    diagnostic(&err, &file, 5, "steps[0].kind");
    diagnostic(&err, &file, 9, "steps[1].timeout");
}

#[test]
fn json_diagnostics_carry_line_column_and_field() {
    let sb = Sandbox::new();
    let path = sb.write(
        "plan.yaml",
        "name: p\nbudjet: 1m\nsteps:\n  - id: a\n    kind: exec\n    argv: [\"true\"]\n    timeout: 30\n",
    );
    let path = path.to_str().expect("UTF-8").to_string();
    let out = sb.run(["-o", "json", "validate", &path]);
    out.expect_code(2);
    let doc = out.json();
    let error = &doc["error"];
    assert_eq!(error["exit_code"], 2);
    assert_eq!(error["file"], path.as_str());
    let diags = error["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diags.len(), 2, "{doc:#}");
    // Sorted by position.
    assert_eq!(diags[0]["line"], 2);
    assert_eq!(diags[0]["column"], 1);
    assert_eq!(diags[0]["field"], "budjet");
    assert_eq!(diags[0]["hint"], "did you mean `budget`?");
    assert_eq!(diags[1]["line"], 7);
    assert!(diags[1]["column"].as_u64().expect("column") >= 1);
    assert_eq!(diags[1]["field"], "steps[0].timeout");
    assert_eq!(diags[1]["message"], "`30` has no unit");
}

#[test]
fn var_for_an_undeclared_variable_is_refused() {
    let sb = Sandbox::new();
    let path = sb.write(
        "plan.yaml",
        "name: p\nvars:\n  service: orders\nsteps:\n  - id: a\n    kind: exec\n    argv: [echo, \"${var:service}\"]\n",
    );
    let path = path.to_str().expect("UTF-8").to_string();
    let ok = sb.run(["validate", &path, "--var", "service=payments"]);
    ok.expect_code(0);

    let out = sb.run(["validate", &path, "--var", "servce=payments"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("the plan declares no variable `servce`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `service`?"),
        "{}",
        out.stderr
    );

    let out = sb.run(["validate", &path, "--var", "service"]);
    out.expect_code(2);
    assert!(out.stderr.contains("write NAME=VALUE"), "{}", out.stderr);
}

#[test]
fn required_variable_without_value() {
    let sb = Sandbox::new();
    let (file, err) = invalid(
        &sb,
        "name: p\nvars:\n  repo:\nsteps:\n  - id: a\n    kind: exec\n    argv: [ls, \"${var:repo}\"]\n",
    );
    let d = diagnostic(&err, &file, 3, "vars.repo");
    assert!(d.contains("variable `repo` has no value"), "{d}");
    assert!(d.contains("hint: pass --var repo=VALUE"), "{d}");
}

#[test]
fn a_missing_plan_file_is_invalid_input() {
    let sb = Sandbox::new();
    let out = sb.run(["validate", "does-not-exist.yaml"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("cannot read plan file does-not-exist.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_invalid_plan_is_not_run() {
    let sb = Sandbox::new();
    let marker = sb.file("ran.marker");
    let path = sb.write(
        "plan.yaml",
        &format!(
            "name: p\nsteps:\n  - id: a\n    kind: exec\n    argv: [touch, {}]\n  - id: b\n    kind: exce\n",
            qp(&marker)
        ),
    );
    let out = sb.run([
        "run".as_ref(),
        path.as_os_str(),
        "--reason".as_ref(),
        "t".as_ref(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("unknown step kind `exce`"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists(), "no step of an invalid plan may run");
    assert!(sb.history().is_empty());
}
