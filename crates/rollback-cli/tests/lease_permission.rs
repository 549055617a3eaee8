//! `--lease-namespace` with an account that may not read the plan's Lease,
//! against the real API server under RBAC (scripts/testenv/k8s.sh): a
//! permission error, exit 10, naming the verb, resource and namespace, not
//! "locked" (exit 5) with a dump of the API's answer.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// kubectl 1.20 as the admin of the test cluster; `None` (skipped) when the
/// test environment is not there, a panic under CI.
fn kubectl() -> Option<impl Fn(&[&str]) -> String> {
    rollback_core::testing::require_env("ROLLBACK_K8S_TEST")?;
    let bin = rollback_core::testing::require_env("KUBECTL_1_20")?;
    let kubeconfig = rollback_core::testing::require_env("KUBECONFIG")?;
    Some(move |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
}

#[test]
fn a_lease_the_account_may_not_read_exits_10_with_the_missing_grant() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let ns = format!("cli-lease-forbidden-{}", std::process::id());
    kubectl(&["create", "namespace", &ns]);
    struct DeleteNamespace<'a, F: Fn(&[&str]) -> String>(&'a F, &'a str);
    impl<F: Fn(&[&str]) -> String> Drop for DeleteNamespace<'_, F> {
        fn drop(&mut self) {
            (self.0)(&["delete", "namespace", self.1, "--wait=false"]);
        }
    }
    let _cleanup = DeleteNamespace(&kubectl, &ns);
    kubectl(&["-n", &ns, "create", "serviceaccount", "runner"]);
    // The token controller writes the account's token Secret (set-up only).
    let deadline = Instant::now() + Duration::from_secs(60);
    let secret = loop {
        let name = kubectl(&[
            "-n",
            &ns,
            "get",
            "serviceaccount",
            "runner",
            "-o",
            "jsonpath={.secrets[0].name}",
        ]);
        if !name.is_empty() {
            break name;
        }
        assert!(Instant::now() < deadline, "no token secret for runner");
        std::thread::sleep(Duration::from_millis(100));
    };
    let token = kubectl(&[
        "-n",
        &ns,
        "get",
        "secret",
        &secret,
        "-o",
        "jsonpath={.data.token}",
    ]);
    let token = String::from_utf8(base64_decode(token.trim()).expect("a base64 token")).unwrap();
    let admin = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let restricted: Vec<String> = admin
        .lines()
        .map(|line| match line.split_once("token:") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}token: {token}"),
            _ => line.to_string(),
        })
        .collect();

    let sb = Sandbox::new();
    let kubeconfig = sb.write("runner.kubeconfig", &(restricted.join("\n") + "\n"));
    let plan = sb.write(
        "plan.yaml",
        "name: orders\nsteps:\n  - id: hello\n    kind: exec\n    argv: [\"true\"]\n",
    );
    let mut cmd = sb.cmd([
        "run",
        plan.to_str().unwrap(),
        "--reason",
        "drill",
        "--lease-namespace",
        &ns,
    ]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = run_cmd(cmd);
    let text = out.all();
    out.expect_code(10);
    assert!(text.contains("permission denied"), "{text}");
    assert!(
        text.contains(&format!(
            "may not get, create, update leases (API group coordination.k8s.io) in namespace {ns}"
        )),
        "{text}"
    );
    assert!(text.contains("Lease rollback-plan-orders"), "{text}");
    assert!(
        !text.contains("is being run by"),
        "not reported as locked: {text}"
    );
    assert!(
        !text.contains("ErrorResponse") && !text.contains("Status {"),
        "{text}"
    );
}

/// Standard base64 (what `kubectl -o jsonpath={.data.token}` prints),
/// decoded by coreutils' `base64`.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("--decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}
