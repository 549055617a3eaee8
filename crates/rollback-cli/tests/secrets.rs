//! `${env:...}` and `${file:...}` secrets reach the programs that need them
//! and nothing else: not the journal, the stored plan, the drill reports, the
//! command's output or `show`.

mod common;

use std::path::Path;

use common::*;

const TOKEN: &str = "s3cr3t-t0ken-value";
const FILE_SECRET: &str = "f1le-s3cret-passw0rd";

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [TOKEN, FILE_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} leaks the secret `{secret}`:\n{text}"
        );
    }
}

#[test]
fn secrets_are_used_but_never_recorded() {
    let sb = Sandbox::new();
    sb.write("secret.txt", &format!("{FILE_SECRET}\n"));
    let received = sb.file("received.txt");
    let receive = sb.write(
        "receive.sh",
        &format!("#!/bin/sh\nprintf '%s\\n' \"$1\" > {}\n", qp(&received)),
    );
    let plan = sb.write(
        "plan.yaml",
        &format!(
            r#"name: secrets
budget: 1m
steps:
  - id: echo_env
    kind: exec
    argv: [echo, "token=${{env:ROLLBACK_TEST_TOKEN}}"]
  - id: env_var
    kind: exec
    env:
      TOKEN: "${{env:ROLLBACK_TEST_TOKEN}}"
    argv: [sh, -c, 'echo "$TOKEN"']
  - id: from_file
    kind: exec
    argv: [echo, "file=${{file:secret.txt}}"]
  - id: pass_on
    kind: exec
    after: [echo_env]
    argv: [sh, {receive}, "${{steps.echo_env.stdout}}"]
verify:
  - name: secret-check
    kind: exec
    argv: [sh, -c, 'test -n "$1"', sh, "${{env:ROLLBACK_TEST_TOKEN}}"]
"#,
            receive = qp(&receive),
        ),
    );

    let mut cmd = sb.cmd(["drill".as_ref(), plan.as_os_str()]);
    cmd.env("ROLLBACK_TEST_TOKEN", TOKEN);
    let out = run_cmd(cmd);
    out.expect_code(0);
    assert!(out.stdout.contains("Drill PASS"), "{}", out.stdout);
    assert_no_secret("stdout", &out.stdout);
    assert_no_secret("stderr", &out.stderr);

    // The programs did get the real values: a later step received the first
    // step's real output.
    assert_eq!(
        std::fs::read_to_string(&received).expect("received.txt"),
        format!("token={TOKEN}\n")
    );

    let run_id = sb.only_run_id();
    let dir = sb.run_dir(&run_id);

    // The stored plan keeps the references, not the values.
    let stored = std::fs::read_to_string(dir.join("plan.yaml")).expect("plan.yaml");
    assert!(stored.contains("${env:ROLLBACK_TEST_TOKEN}"), "{stored}");
    assert!(stored.contains("${file:secret.txt}"), "{stored}");

    // Reports exist; no file of the state directory holds a secret: not the
    // journal, the stored plan, drill.md, drill.json, nor anything else.
    for name in ["journal.jsonl", "plan.yaml", "drill.md", "drill.json"] {
        assert!(dir.join(name).exists(), "{name} missing");
    }
    let files = files_under(&sb.state);
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).to_string();
        assert_no_secret(&path.display().to_string(), &text);
    }

    // Where the secret was printed, the journal shows `***`.
    let records = sb.records(&run_id);
    let stdout_of = |id: &str| {
        events(&records, "step_finished")
            .into_iter()
            .find(|r| r["step"] == id)
            .unwrap_or_else(|| panic!("no step_finished for {id}"))["outputs"]["stdout"]
            .clone()
    };
    assert_eq!(stdout_of("echo_env"), "token=***");
    assert_eq!(stdout_of("env_var"), "***");
    assert_eq!(stdout_of("from_file"), "file=***");
    assert!(sb.journal(&run_id).contains("***"));

    let shown = sb.run(["-o", "json", "show", &run_id]);
    shown.expect_code(0);
    assert_no_secret("show -o json", &shown.stdout);
    let report = shown.json();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(step(&report, "echo_env")["outputs"]["stdout"], "token=***");
    let human = sb.run(["show", &run_id]);
    human.expect_code(0);
    assert_no_secret("show", &human.all());
    let history = sb.run(["-o", "json", "history"]);
    assert_no_secret("history", &history.all());
}

#[test]
fn a_secret_in_a_failure_message_is_redacted_too() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        r#"name: secret-failure
steps:
  - id: leak_on_failure
    kind: exec
    argv: [sh, -c, 'echo "bad token $1" >&2; exit 3', sh, "${env:ROLLBACK_TEST_TOKEN}"]
"#,
    );
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "t".as_ref(),
    ]);
    cmd.env("ROLLBACK_TEST_TOKEN", TOKEN);
    let out = run_cmd(cmd);
    out.expect_code(1);
    assert_no_secret("output", &out.all());
    assert!(out.stderr.contains("bad token ***"), "{}", out.stderr);
    let run_id = sb.only_run_id();
    let journal = sb.journal(&run_id);
    assert_no_secret("journal", &journal);
    assert!(journal.contains("bad token ***"), "{journal}");
}

#[test]
fn an_unset_secret_fails_the_step_with_its_name() {
    let sb = Sandbox::new();
    let plan = sb.write(
        "plan.yaml",
        "name: unset-secret\nsteps:\n  - id: s\n    kind: exec\n    argv: [echo, \"${env:ROLLBACK_TEST_UNSET_VARIABLE}\"]\n",
    );
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "t".as_ref(),
    ]);
    cmd.env_remove("ROLLBACK_TEST_UNSET_VARIABLE");
    let out = run_cmd(cmd);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("environment variable `ROLLBACK_TEST_UNSET_VARIABLE` is not set"),
        "{}",
        out.stderr
    );
}

/// After a resume, completed steps' outputs come from the journal, where
/// secrets are `***`: a later step must get the real value (or the run must
/// fail saying why), never `***` silently.
#[test]
fn a_secret_output_is_not_replaced_by_stars_after_a_resume() {
    let sb = Sandbox::new();
    let fixed = sb.file("fixed");
    let got = sb.file("got.txt");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: secret-resume
steps:
  - id: a
    kind: exec
    argv: [echo, \"${{env:ROLLBACK_TEST_TOKEN}}\"]
  - id: b
    kind: exec
    after: [a]
    argv: [test, -e, {fixed}]
  - id: c
    kind: exec
    after: [b]
    argv: [sh, -c, 'printf %s \"$1\" > \"$0\"', {got}, \"${{steps.a.stdout}}\"]
",
            fixed = qp(&fixed),
            got = qp(&got),
        ),
    );
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "t".as_ref(),
    ]);
    cmd.env("ROLLBACK_TEST_TOKEN", TOKEN);
    run_cmd(cmd).expect_code(1);
    std::fs::write(&fixed, "").expect("fix");
    let mut cmd = sb.cmd(["resume", "last"]);
    cmd.env("ROLLBACK_TEST_TOKEN", TOKEN);
    let out = run_cmd(cmd);
    assert_no_secret("resume output", &out.all());
    match std::fs::read_to_string(&got) {
        Ok(value) => assert_eq!(value, TOKEN, "step c got a redacted value"),
        Err(_) => assert_ne!(out.code, 0, "c did not run, yet the resume succeeded"),
    }
}
