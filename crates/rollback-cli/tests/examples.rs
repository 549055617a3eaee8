//! Every example plan in `examples/` validates with the `rollback` binary as
//! built (all adapters compiled in), so no example can name a kind or field
//! that does not exist. Required variables get a placeholder value; the
//! Python example needs its Python step kind and is checked by rollback-py.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn plans(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read examples") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "python") {
                plans(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "yaml")
            && std::fs::read_to_string(&path)
                .expect("read example")
                .lines()
                .any(|l| l == "steps:")
        {
            found.push(path);
        }
    }
}

/// `--var NAME=placeholder` for every variable the plan leaves without a value.
fn placeholders(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut in_vars = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_vars = line == "vars:";
            continue;
        }
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        if !in_vars || rest.starts_with(' ') || rest.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = rest.split_once(':') {
            let value = value.split('#').next().unwrap_or("").trim();
            if value.is_empty() {
                args.push("--var".to_string());
                args.push(format!("{}=placeholder", name.trim()));
            }
        }
    }
    args
}

#[test]
fn every_example_plan_validates_with_all_adapters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut found = Vec::new();
    plans(&root, &mut found);
    found.sort();
    assert!(found.len() >= 14, "example plans found: {found:#?}");
    let sb = Sandbox::new();
    let mut failures = Vec::new();
    for plan in &found {
        let text = std::fs::read_to_string(plan).expect("read plan");
        let mut args = vec!["validate".to_string(), plan.display().to_string()];
        args.extend(placeholders(&text));
        let out = sb.run(&args);
        if out.code != 0 {
            failures.push(format!("{}:\n{}{}", plan.display(), out.stdout, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "examples that do not validate:\n{}",
        failures.join("\n")
    );
}

#[test]
fn placeholders_fill_only_the_variables_without_a_value() {
    let text = "name: p\nvars:\n  service:   # the Deployment\n  namespace: production\n  empty: \"\"\nsteps:\n  - id: a\n";
    assert_eq!(placeholders(text), ["--var", "service=placeholder"]);
}
