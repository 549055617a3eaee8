//! The Vault kinds against the stand-in Vault server (tests/support): results,
//! errors, and the exact requests sent (contract).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rollback_core::{
    Executor, FileJournal, Outputs, Plan, Registry, RunOptions, Step, StepContext, Verifier,
};
use rollback_vault::{KvRead, KvRollback, KvSnapshot, KvVersion};
use serde_json::{json, Value};
use support::StandIn;

const TOKEN: &str = "hvs.standin-root-token-7f3a9c";
const PASSWORD_V1: &str = "first-pass-81723";
const PASSWORD_V2: &str = "second-pass-99812";
const PASSWORD_V3: &str = "third-pass-55120";

fn config(password: &str, replicas: u64) -> Value {
    json!({ "db_password": password, "replicas": replicas, "feature_x": replicas > 2 })
}

struct Fixture {
    vault: StandIn,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Fixture {
    /// A stand-in holding versions 1..=3 of secret/app/config.
    async fn new() -> Fixture {
        let vault = StandIn::start(&[TOKEN]).await;
        vault.put("", "secret", "app/config", config(PASSWORD_V1, 2));
        vault.put("", "secret", "app/config", config(PASSWORD_V2, 3));
        vault.put("", "secret", "app/config", config(PASSWORD_V3, 4));
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Fixture {
            vault,
            dir,
            token_file,
        }
    }

    fn ctx(&self, step: &str) -> StepContext {
        StepContext::standalone(step, self.dir.path().join("run"))
    }

    fn base(&self, extra: Value) -> Value {
        let mut base = json!({
            "address": self.vault.address(),
            "auth": { "token": format!("${{file:{}}}", self.token_file.display()) },
            "mount": "secret",
            "path": "app/config",
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    }

    fn rollback(&self, extra: Value) -> KvRollback {
        KvRollback::new(serde_json::from_value(self.base(extra)).unwrap()).unwrap()
    }
}

fn num(outputs: &Outputs, name: &str) -> u64 {
    outputs[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {outputs:?}"))
}

#[tokio::test]
async fn rolls_back_to_the_previous_version_with_exact_requests() {
    let f = Fixture::new().await;
    let out = f.rollback(json!({})).run(&f.ctx("config")).await.unwrap();
    assert_eq!(num(&out, "version"), 4);
    assert_eq!(num(&out, "replaced"), 3);
    assert_eq!(num(&out, "restored_from"), 2);
    assert_eq!(out["changed"], json!(true));
    assert_eq!(
        f.vault.current("", "secret", "app/config"),
        (4, config(PASSWORD_V2, 3))
    );

    // Contract: metadata, target version, current version, check-and-set write.
    let requests = f.vault.requests();
    let lines: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(
        lines,
        vec![
            "GET /v1/secret/metadata/app/config",
            "GET /v1/secret/data/app/config?version=2",
            "GET /v1/secret/data/app/config?version=3",
            "POST /v1/secret/data/app/config",
        ]
    );
    for r in &requests {
        assert_eq!(
            r.headers.get("x-vault-token").map(String::as_str),
            Some(TOKEN)
        );
        assert_eq!(
            r.headers.get("x-vault-request").map(String::as_str),
            Some("true")
        );
        assert!(!r.headers.contains_key("x-vault-namespace"));
    }
    assert_eq!(
        requests[3].json(),
        json!({ "data": config(PASSWORD_V2, 3), "options": { "cas": 3 } })
    );
    // vaultrs sends no Content-Type; Vault parses the body as JSON regardless.
    let names: Vec<&str> = requests[3].headers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "accept",
            "content-length",
            "host",
            "x-vault-request",
            "x-vault-token"
        ]
    );
}

#[tokio::test]
async fn rolls_back_to_a_given_version_once_even_when_run_again() {
    let f = Fixture::new().await;
    let step = f.rollback(json!({ "to_version": "${var:v}" }));
    let ctx = f
        .ctx("config")
        .with_vars(BTreeMap::from([("v".to_string(), "1".to_string())]));
    let first = step.run(&ctx).await.unwrap();
    assert_eq!(
        (num(&first, "version"), num(&first, "restored_from")),
        (4, 1)
    );
    assert_eq!(
        f.vault.current("", "secret", "app/config"),
        (4, config(PASSWORD_V1, 2))
    );
    // Same step, same run (as after a crash before the journal saw the end):
    // no second write, same outputs.
    f.vault.clear_requests();
    let again = step.run(&ctx).await.unwrap();
    assert_eq!(again, first);
    assert!(f.vault.requests().iter().all(|r| r.method == "GET"));
    assert_eq!(f.vault.current("", "secret", "app/config").0, 4);
}

#[tokio::test]
async fn a_concurrent_write_is_detected_and_reported() {
    let f = Fixture::new().await;
    f.vault.write_concurrently_before_next_write(
        "secret",
        "app/config",
        json!({ "hotfix": "yes" }),
    );
    let err = f
        .rollback(json!({}))
        .run(&f.ctx("config"))
        .await
        .unwrap_err();
    let msg = err.message();
    assert!(!err.is_retryable());
    assert!(
        msg.contains("changed while rolling back")
            && msg.contains("version 3 when read")
            && msg.contains("now it is at version 4")
            && msg.contains("nothing was written"),
        "{msg}"
    );
    // The other client's write stands.
    assert_eq!(
        f.vault.current("", "secret", "app/config"),
        (4, json!({ "hotfix": "yes" }))
    );
}

#[tokio::test]
async fn a_rejecting_validator_leaves_vault_untouched_and_hides_values() {
    let f = Fixture::new().await;
    // The validator echoes what it read to stderr, then refuses.
    let step = f.rollback(json!({
        "validate": { "argv": ["sh", "-c", "echo \"refused: $(cat)\" >&2; exit 3"] }
    }));
    let err = step.run(&f.ctx("config")).await.unwrap_err();
    let msg = err.full_message();
    assert!(
        msg.contains("validation rejected version 2 of `secret/app/config`")
            && msg.contains("exited with code 3")
            && msg.contains("refused:")
            && msg.contains("Vault was not changed"),
        "{msg}"
    );
    assert!(!msg.contains(PASSWORD_V2), "secret value leaked: {msg}");
    assert!(f.vault.requests().iter().all(|r| r.method == "GET"));
    assert_eq!(f.vault.current("", "secret", "app/config").0, 3);

    // An accepting validator sees the JSON on stdin.
    let seen = f.dir.path().join("seen.json");
    let step = f.rollback(json!({
        "validate": { "argv": ["sh", "-c", format!("cat > {}", seen.display())] }
    }));
    step.run(&f.ctx("config2")).await.unwrap();
    let seen: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(seen, config(PASSWORD_V2, 3));
}

#[tokio::test]
async fn a_json_schema_is_checked_before_writing() {
    let f = Fixture::new().await;
    let schema = f.dir.path().join("config.schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["db_password","replicas"],
            "properties":{"replicas":{"type":"integer","minimum":3},
                          "db_password":{"type":"string","pattern":"^second"}}}"#,
    )
    .unwrap();
    let schema = schema.display().to_string();
    // Version 1 has 2 replicas and a password the pattern refuses.
    let err = f
        .rollback(json!({ "to_version": 1, "schema": schema }))
        .run(&f.ctx("config"))
        .await
        .unwrap_err();
    let msg = err.message();
    assert!(
        msg.contains("does not match schema") && msg.contains("/replicas"),
        "{msg}"
    );
    assert!(!msg.contains(PASSWORD_V1), "secret value leaked: {msg}");
    assert_eq!(f.vault.current("", "secret", "app/config").0, 3);
    // Version 2 matches.
    let out = f
        .rollback(json!({ "to_version": 2, "schema": schema }))
        .run(&f.ctx("config2"))
        .await
        .unwrap();
    assert_eq!(num(&out, "version"), 4);
}

#[tokio::test]
async fn undo_writes_back_what_was_current_once() {
    let f = Fixture::new().await;
    let step = f.rollback(json!({}));
    let ctx = f.ctx("config");
    let out = step.run(&ctx).await.unwrap();
    f.vault.clear_requests();
    step.undo(&ctx, &out).await.unwrap();
    assert_eq!(
        f.vault.current("", "secret", "app/config"),
        (5, config(PASSWORD_V3, 4))
    );
    let post = f
        .vault
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(
        post.json(),
        json!({ "data": config(PASSWORD_V3, 4), "options": { "cas": 4 } })
    );
    // Again: already undone, nothing written.
    step.undo(&ctx, &out).await.unwrap();
    assert_eq!(f.vault.current("", "secret", "app/config").0, 5);

    // Someone wrote after the rollback: undo refuses to overwrite it.
    let g = Fixture::new().await;
    let step = g.rollback(json!({}));
    let out = step.run(&g.ctx("config")).await.unwrap();
    g.vault
        .put("", "secret", "app/config", json!({ "later": "change" }));
    let err = step.undo(&g.ctx("config"), &out).await.unwrap_err();
    assert!(
        err.message().contains("not overwriting it"),
        "{}",
        err.message()
    );
    assert_eq!(g.vault.current("", "secret", "app/config").0, 5);
}

#[tokio::test]
async fn deleted_and_destroyed_versions_name_the_usable_ones() {
    let f = Fixture::new().await;
    f.vault
        .put("", "secret", "app/config", config("fourth-pass-1", 5));
    f.vault.delete_versions("secret", "app/config", &[3]);
    f.vault.destroy_versions("secret", "app/config", &[1]);
    let err = f.rollback(json!({})).run(&f.ctx("a")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "version 3 of `secret/app/config` is deleted (at 2025-01-15T12:00:05.000000Z): its data cannot be read \
         (it can be brought back with `vault kv undelete -versions=3`); versions that can be used: 2, 4"
    );
    let err = f
        .rollback(json!({ "to_version": 1 }))
        .run(&f.ctx("b"))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("version 1 of `secret/app/config` is destroyed")
            && err.message().ends_with("versions that can be used: 2, 4"),
        "{}",
        err.message()
    );
    let err = f
        .rollback(json!({ "to_version": 9 }))
        .run(&f.ctx("c"))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("version 9 of `secret/app/config` does not exist"),
        "{}",
        err.message()
    );
    // Nothing was read beyond the metadata, nothing written.
    assert!(f
        .vault
        .requests()
        .iter()
        .all(|r| r.target == "/v1/secret/metadata/app/config"));
}

#[tokio::test]
async fn permission_denied_and_missing_paths_say_what_to_check() {
    let f = Fixture::new().await;
    let bad = f.dir.path().join("bad-token");
    std::fs::write(&bad, "hvs.wrong-token-000111").unwrap();
    let mut cfg = f.base(json!({}));
    cfg["auth"] = json!({ "token": format!("${{file:{}}}", bad.display()) });
    let step = KvRollback::new(serde_json::from_value(cfg).unwrap()).unwrap();
    let err = step.run(&f.ctx("a")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "Vault denied reading the metadata on `secret/app/config` (403 permission denied): check that the token \
         (or AppRole) is valid, not expired, and has a policy allowing it"
    );
    assert!(!err.full_message().contains("wrong-token"));

    let step =
        KvRollback::new(serde_json::from_value(f.base(json!({ "path": "app/missing" }))).unwrap())
            .unwrap();
    let err = step.run(&f.ctx("b")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "secret `secret/app/missing` does not exist (404): check `mount` and `path` (a KV v2 path is written \
         without `data/`)"
    );
    assert!(!err.is_retryable());

    // Nothing listens: retryable, names the address.
    let step = KvRollback::new(
        serde_json::from_value(f.base(json!({ "address": "http://127.0.0.1:9" }))).unwrap(),
    )
    .unwrap();
    let err = step.run(&f.ctx("c")).await.unwrap_err();
    assert!(err.is_retryable());
    assert!(
        err.message()
            .contains("cannot reach Vault at http://127.0.0.1:9"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn namespaces_are_sent_as_a_header() {
    let f = Fixture::new().await;
    f.vault
        .put("team-a", "kv", "svc", json!({ "k": "ns-value-1" }));
    f.vault
        .put("team-a", "kv", "svc", json!({ "k": "ns-value-2" }));
    f.vault.clear_requests();
    let cfg = f.base(json!({ "namespace": "team-a", "mount": "kv", "path": "svc" }));
    let step = KvRollback::new(serde_json::from_value(cfg).unwrap()).unwrap();
    let out = step.run(&f.ctx("ns")).await.unwrap();
    assert_eq!(num(&out, "version"), 3);
    assert_eq!(
        f.vault.current("team-a", "kv", "svc"),
        (3, json!({ "k": "ns-value-1" }))
    );
    let requests = f.vault.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.headers.get("x-vault-namespace").map(String::as_str),
            Some("team-a")
        );
    }
    // Without the namespace the secret is not found, and the message says so.
    let cfg = f.base(json!({ "mount": "kv", "path": "svc" }));
    let step = KvRollback::new(serde_json::from_value(cfg).unwrap()).unwrap();
    let err = step.run(&f.ctx("root")).await.unwrap_err();
    assert!(
        err.message().contains("does not exist (404)"),
        "{}",
        err.message()
    );
    let cfg = f.base(json!({ "namespace": "team-b", "mount": "kv", "path": "svc" }));
    let step = KvRollback::new(serde_json::from_value(cfg).unwrap()).unwrap();
    let err = step.run(&f.ctx("b")).await.unwrap_err();
    assert!(
        err.message().contains("in namespace `team-b`"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn approle_logs_in_and_uses_the_issued_token() {
    let f = Fixture::new().await;
    f.vault.add_approle(
        "role-1234",
        "secret-id-5678-abcd",
        "hvs.issued-by-approle-42",
    );
    let secret_file = f.dir.path().join("secret-id");
    std::fs::write(&secret_file, "secret-id-5678-abcd\n").unwrap();
    let mut cfg = f.base(json!({}));
    cfg["auth"] = json!({ "approle": {
        "role_id": "role-1234",
        "secret_id": format!("${{file:{}}}", secret_file.display()),
    }});
    let step = KvSnapshot::new(serde_json::from_value(cfg.clone()).unwrap()).unwrap();
    let out = step.run(&f.ctx("snap")).await.unwrap();
    assert_eq!(num(&out, "version"), 3);
    let requests = f.vault.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/v1/auth/approle/login");
    assert_eq!(
        requests[0].json(),
        json!({ "role_id": "role-1234", "secret_id": "secret-id-5678-abcd" })
    );
    assert!(!requests[0].headers.contains_key("x-vault-token"));
    assert_eq!(requests[1].target, "/v1/secret/metadata/app/config");
    assert_eq!(
        requests[1].headers.get("x-vault-token").map(String::as_str),
        Some("hvs.issued-by-approle-42")
    );

    std::fs::write(&secret_file, "secret-id-wrong-0000\n").unwrap();
    let step = KvSnapshot::new(serde_json::from_value(cfg).unwrap()).unwrap();
    let err = step.run(&f.ctx("snap2")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "AppRole login at `auth/approle/login` failed (400: invalid role or secret ID): check role_id and \
         secret_id (a secret_id may have expired or reached its use limit) and the auth mount"
    );
}

#[tokio::test]
async fn kv_read_outputs_keys_and_hash_and_writes_a_private_file() {
    let f = Fixture::new().await;
    let file = f.dir.path().join("config.json");
    let step = KvRead::new(
        serde_json::from_value(
            f.base(json!({ "version": 2, "write_to": file.display().to_string() })),
        )
        .unwrap(),
    )
    .unwrap();
    let out = step.run(&f.ctx("read")).await.unwrap();
    assert_eq!(num(&out, "version"), 2);
    assert_eq!(out["keys"], json!(["db_password", "feature_x", "replicas"]));
    assert!(out["sha256"].as_str().unwrap().starts_with("sha256:"));
    assert!(!serde_json::to_string(&out).unwrap().contains(PASSWORD_V2));
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, config(PASSWORD_V2, 3));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Reading the current version hashes differently.
    let current = KvRead::new(serde_json::from_value(f.base(json!({}))).unwrap())
        .unwrap()
        .run(&f.ctx("read2"))
        .await
        .unwrap();
    assert_eq!(num(&current, "version"), 3);
    assert_ne!(current["sha256"], out["sha256"]);
}

#[tokio::test]
async fn kv_snapshot_records_metadata_without_data() {
    let f = Fixture::new().await;
    f.vault.delete_versions("secret", "app/config", &[1]);
    let step = KvSnapshot::new(serde_json::from_value(f.base(json!({}))).unwrap()).unwrap();
    let out = step.run(&f.ctx("snap")).await.unwrap();
    assert_eq!(num(&out, "version"), 3);
    assert_eq!(out["usable_versions"], json!("2, 3"));
    let file = PathBuf::from(out["file"].as_str().unwrap());
    assert!(file.starts_with(f.dir.path().join("run").join("artifacts").join("snap")));
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["current_version"], json!(3));
    assert_eq!(
        saved["metadata"]["versions"]["1"]["deletion_time"],
        json!("2025-01-15T12:00:04.000000Z")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(PASSWORD_V3) && !text.contains(TOKEN));
    // Only metadata was read.
    assert!(f
        .vault
        .requests()
        .iter()
        .all(|r| r.target.contains("/metadata/")));
}

#[tokio::test]
async fn kv_version_checks_equals_and_at_least() {
    let f = Fixture::new().await;
    let check =
        |extra: Value| KvVersion::new(serde_json::from_value(f.base(extra)).unwrap()).unwrap();
    let ctx = f.ctx("check");
    let m = check(json!({ "equals": 3 })).check(&ctx).await.unwrap();
    assert!(m.passed);
    assert_eq!(
        (m.observed.as_str(), m.expected.as_str()),
        ("version 3", "version 3")
    );
    assert!(
        !check(json!({ "equals": 2 }))
            .check(&ctx)
            .await
            .unwrap()
            .passed
    );
    assert!(
        check(json!({ "at_least": 2 }))
            .check(&ctx)
            .await
            .unwrap()
            .passed
    );
    let m = check(json!({ "at_least": "4" })).check(&ctx).await.unwrap();
    assert!(!m.passed);
    assert_eq!(m.expected, "version >= 4");
    assert!(KvVersion::new(serde_json::from_value(f.base(json!({}))).unwrap()).is_err());
}

fn all_text_under(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_text_under(&path, out);
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
}

#[tokio::test]
async fn secrets_never_reach_the_journal() {
    let f = Fixture::new().await;
    let state = f.dir.path().join("state");
    let exported = f.dir.path().join("exported.json");
    let plan_text = format!(
        r#"
name: vault-config
budget: 1m
on_failure: compensate
vars:
  version: "2"
steps:
  - id: snapshot
    kind: vault.kv_snapshot
    address: {addr}
    auth: {{ token: "${{file:{token}}}" }}
    path: app/config
  - id: config
    kind: vault.kv_rollback
    after: [snapshot]
    address: {addr}
    auth: {{ token: "${{file:{token}}}" }}
    path: app/config
    to_version: ${{var:version}}
    validate:
      argv: [sh, -c, "cat >&2"]
  - id: read
    kind: vault.kv_read
    after: [config]
    address: {addr}
    auth: {{ token: "${{file:{token}}}" }}
    path: app/config
    write_to: {exported}
verify:
  - kind: vault.kv_version
    address: {addr}
    auth: {{ token: "${{file:{token}}}" }}
    path: app/config
    equals: ${{steps.config.version}}
"#,
        addr = f.vault.address(),
        token = f.token_file.display(),
        exported = exported.display(),
    );
    let mut registry = Registry::with_core_kinds();
    rollback_vault::register(&mut registry);
    let plan =
        Plan::from_yaml(&plan_text, "vault-config.yaml", &registry, &BTreeMap::new()).unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(&state)));
    let report = executor
        .run(
            &plan,
            RunOptions::new("bad config in 2.4.1").operator("tester"),
        )
        .await
        .unwrap();
    assert_eq!(
        report.status,
        Some(rollback_core::RunStatus::Succeeded),
        "{report:?}"
    );
    assert_eq!(
        f.vault.current("", "secret", "app/config"),
        (4, config(PASSWORD_V2, 3))
    );
    let mut everything = String::new();
    all_text_under(&state, &mut everything);
    assert!(everything.contains("vault.kv_rollback"), "journal was read");
    assert!(
        everything.contains("\"restored_from\""),
        "outputs were journaled"
    );
    for secret in [TOKEN, PASSWORD_V1, PASSWORD_V2, PASSWORD_V3] {
        assert!(
            !everything.contains(secret),
            "`{secret}` reached the state directory"
        );
    }
    let report_text = format!("{report:?}");
    for secret in [TOKEN, PASSWORD_V2, PASSWORD_V3] {
        assert!(
            !report_text.contains(secret),
            "`{secret}` reached the report"
        );
    }
}

#[test]
fn the_example_plan_loads_with_the_kubernetes_kinds() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vault/config-rollback.yaml");
    let mut registry = Registry::with_core_kinds();
    rollback_vault::register(&mut registry);
    rollback_k8s::register(&mut registry);
    let plan = Plan::load(&path, &registry, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "vault.kv_snapshot",
            "vault.kv_rollback",
            "vault.kv_read",
            "k8s.apply",
            "k8s.restart"
        ]
    );
    // Run end to end in tests/config_rollback.rs.
}

#[tokio::test]
async fn https_with_a_ca_file() {
    let (vault, ca_pem) = StandIn::start_tls(&[TOKEN]).await;
    vault.put("", "secret", "app/config", json!({ "k": "tls-value-1" }));
    vault.put("", "secret", "app/config", json!({ "k": "tls-value-2" }));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let cfg = |ca_file: Option<&Path>| {
        let mut c = json!({
            "address": vault.address(),
            "auth": { "token": format!("${{file:{}}}", token.display()) },
            "path": "app/config",
            "equals": 2,
        });
        if let Some(ca) = ca_file {
            c["ca_file"] = json!(ca.display().to_string());
        }
        KvVersion::new(serde_json::from_value(c).unwrap()).unwrap()
    };
    let ctx = StepContext::standalone("tls", dir.path());
    assert!(vault.address().starts_with("https://127.0.0.1:"));
    let m = cfg(Some(&ca)).check(&ctx).await.unwrap();
    assert!(m.passed, "{m:?}");
    // The system store does not know the stand-in's CA.
    let err = cfg(None).check(&ctx).await.unwrap_err();
    assert!(
        err.message()
            .contains("cannot reach Vault at https://127.0.0.1")
            && err.message().to_lowercase().contains("certificate"),
        "{}",
        err.message()
    );
}
