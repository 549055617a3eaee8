//! Against the real Docker engine, with the images `scripts/testenv/docker.sh`
//! builds: each test has its own Compose project and port and takes it down
//! afterwards.

mod support;

use std::process::Command;

use rollback_compose::exec::ComposeExec;
use rollback_compose::health::ComposeHealthy;
use rollback_compose::lifecycle::{Lifecycle, Up};
use rollback_compose::rollback::ComposeRollback;
use rollback_core::{Step, StepContext, Verifier};
use support::{free_port, http_get, images, web_compose, Project};

const HEALTH: &str = "/cgi-bin/health";

fn rollback(config: serde_json::Value) -> ComposeRollback {
    ComposeRollback::new(serde_json::from_value(config).expect("config")).expect("valid")
}

fn healthy(project: &Project, services: &[&str]) -> ComposeHealthy {
    ComposeHealthy::new(
        serde_json::from_value(project.config(serde_json::json!({"services": services}))).unwrap(),
    )
    .unwrap()
}

fn up(project: &Project, wait: bool) -> Up {
    Up::new(serde_json::from_value(project.config(serde_json::json!({"wait": wait}))).unwrap())
        .unwrap()
}

#[tokio::test]
async fn bad_v2_is_rolled_back_to_v1_that_answers_and_undo_puts_v2_back() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("image", &images, port, &web_compose(&images.bad, port));
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("rollback_web", state.path());

    // The bad release is deployed and fails its health check.
    up(&project, false).run(&ctx).await.expect("up v2");
    let before = healthy(&project, &["web"]).check(&ctx).await.unwrap();
    assert!(!before.passed, "{before:?}");
    assert!(before.observed.contains(&images.bad), "{before:?}");

    let step = rollback(project.config(serde_json::json!({
        "service": "web",
        "to_image": images.good,
        "timeout": "60s",
    })));
    let preview = step.preview(&ctx).await.unwrap();
    assert_eq!(preview.changes.len(), 1, "{preview:?}");
    assert!(preview.changes[0].contains(&images.good), "{preview:?}");
    assert_eq!(
        project.inspect("web", "{{.Config.Image}}"),
        images.bad,
        "preview changed nothing"
    );

    let outputs = step.run(&ctx).await.expect("rollback");
    assert_eq!(outputs["previous_image"], images.bad.as_str());
    assert_eq!(outputs["image"], images.good.as_str());
    assert_eq!(
        project.inspect("web", "{{.State.Health.Status}}"),
        "healthy"
    );
    let (status, body) = http_get(port, HEALTH).expect("v1 answers");
    assert_eq!((status, body.trim()), (200, "version=v1"));
    let after = healthy(&project, &["web"]).check(&ctx).await.unwrap();
    assert!(after.passed, "{after:?}");
    // The compose file is untouched: the image comes from the override.
    assert_eq!(
        std::fs::read_to_string(project.file()).unwrap(),
        web_compose(&images.bad, port)
    );

    // Idempotent: a second run (a resumed run) changes nothing and reports the same.
    let id = project.inspect("web", "{{.Id}}");
    let again = step.run(&ctx).await.expect("second run");
    assert_eq!(again["previous_image"], images.bad.as_str());
    assert_eq!(
        project.inspect("web", "{{.Id}}"),
        id,
        "container not recreated"
    );
    assert!(step.preview(&ctx).await.unwrap().changes.is_empty());

    // Undo puts back what was running (the bad v2).
    step.undo(&ctx, &outputs).await.expect("undo");
    assert_eq!(project.inspect("web", "{{.Config.Image}}"), images.bad);
    step.undo(&ctx, &outputs).await.expect("undo again");
    assert_eq!(project.inspect("web", "{{.Config.Image}}"), images.bad);
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

#[tokio::test]
async fn compose_file_from_git_revision_then_undo_restores_the_file() {
    let Some(images) = images() else { return };
    let port = free_port();
    let good = web_compose(&images.good, port);
    let bad = web_compose(&images.bad, port);
    let project = Project::new("git", &images, port, &good);
    git(project.path(), &["init", "-q"]);
    git(project.path(), &["add", "docker-compose.yml"]);
    git(project.path(), &["commit", "-q", "-m", "v1"]);
    std::fs::write(project.file(), &bad).unwrap();
    git(project.path(), &["commit", "-q", "-am", "v2"]);
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("rollback_git", state.path());
    up(&project, false).run(&ctx).await.expect("up v2");

    let step = rollback(project.config(serde_json::json!({
        "service": "web",
        "git_revision": "HEAD~1",
        "timeout": "60s",
    })));
    let outputs = step.run(&ctx).await.expect("rollback from git");
    assert_eq!(std::fs::read_to_string(project.file()).unwrap(), good);
    assert_eq!(outputs["previous_image"], images.bad.as_str());
    assert_eq!(outputs["image"], images.good.as_str());
    let (status, body) = http_get(port, HEALTH).expect("v1 answers");
    assert_eq!((status, body.trim()), (200, "version=v1"));

    step.undo(&ctx, &outputs).await.expect("undo");
    assert_eq!(std::fs::read_to_string(project.file()).unwrap(), bad);
    assert_eq!(project.inspect("web", "{{.Config.Image}}"), images.bad);

    let missing = rollback(project.config(serde_json::json!({
        "service": "web", "git_revision": "HEAD~7",
    })));
    let err = missing.run(&ctx).await.unwrap_err();
    assert!(err.message().contains("git_revision"), "{}", err.message());
}

#[tokio::test]
async fn kept_copy_of_the_compose_file() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("kept", &images, port, &web_compose(&images.bad, port));
    let kept = project.path().join("docker-compose.yml.last-good");
    std::fs::write(&kept, web_compose(&images.good, port)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("rollback_kept", state.path());
    up(&project, false).run(&ctx).await.expect("up v2");

    let step = rollback(project.config(serde_json::json!({
        "service": "web",
        "previous_file": kept.to_str().unwrap(),
        "timeout": "60s",
    })));
    let outputs = step.run(&ctx).await.expect("rollback from kept copy");
    assert_eq!(
        std::fs::read_to_string(project.file()).unwrap(),
        web_compose(&images.good, port)
    );
    assert_eq!(http_get(port, HEALTH).map(|r| r.0), Some(200));
    let saved = outputs["saved_file"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(saved).unwrap(),
        web_compose(&images.bad, port)
    );
}

#[tokio::test]
async fn rolling_back_onto_a_bad_image_fails_with_its_health_evidence() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("bad", &images, port, &web_compose(&images.good, port));
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("rollback_bad", state.path());
    up(&project, true).run(&ctx).await.expect("up v1");
    let step = rollback(project.config(serde_json::json!({
        "service": "web", "to_image": images.bad, "timeout": "60s",
    })));
    let err = step.run(&ctx).await.unwrap_err();
    assert!(
        err.message().contains("will not become healthy"),
        "{}",
        err.message()
    );
    assert!(!err.is_retryable());
    let detail = err.detail().unwrap_or_default();
    assert!(detail.contains("last healthcheck"), "{detail}");
}

#[tokio::test]
async fn stop_start_restart_and_undo() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("life", &images, port, &web_compose(&images.good, port));
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("life", state.path());
    up(&project, true).run(&ctx).await.expect("up");
    let lifecycle =
        |extra: serde_json::Value| serde_json::from_value(project.config(extra)).unwrap();

    let stop = Lifecycle::stop(lifecycle(
        serde_json::json!({"services": ["web"], "stop_timeout": 0}),
    ))
    .unwrap();
    let stopped = stop.run(&ctx).await.expect("stop");
    assert_eq!(stopped["was_running"], "web");
    assert_eq!(project.inspect("web", "{{.State.Status}}"), "exited");
    assert!(
        http_get(port, HEALTH).is_none(),
        "nothing answers after stop"
    );
    let check = healthy(&project, &[]).check(&ctx).await.unwrap();
    assert!(
        !check.passed && check.observed.contains("exited"),
        "{check:?}"
    );
    // Stopping again changes nothing.
    assert!(stop.preview(&ctx).await.unwrap().changes.is_empty());
    stop.run(&ctx).await.expect("stop again");

    // Undo of the stop starts it again.
    stop.undo(&ctx, &stopped).await.expect("undo stop");
    assert!(
        healthy(&project, &["web"])
            .check(&ctx)
            .await
            .unwrap()
            .passed
    );

    let start = Lifecycle::start(lifecycle(serde_json::json!({}))).unwrap();
    project.compose(&["stop", "-t", "0"]);
    let started = start.run(&ctx).await.expect("start");
    assert_eq!(started["was_running"], "");
    assert_eq!(
        project.inspect("web", "{{.State.Health.Status}}"),
        "healthy"
    );
    assert_eq!(http_get(port, HEALTH).map(|r| r.0), Some(200));
    start.undo(&ctx, &started).await.expect("undo start");
    assert_eq!(project.inspect("web", "{{.State.Status}}"), "exited");
    start.run(&ctx).await.expect("start again");

    let restart = Lifecycle::restart(lifecycle(serde_json::json!({"stop_timeout": 0}))).unwrap();
    let before = project.inspect("web", "{{.State.StartedAt}}");
    restart.run(&ctx).await.expect("restart");
    assert_ne!(project.inspect("web", "{{.State.StartedAt}}"), before);
    assert_eq!(
        project.inspect("web", "{{.State.Health.Status}}"),
        "healthy"
    );
    assert_eq!(http_get(port, HEALTH).map(|r| r.0), Some(200));
}

#[tokio::test]
async fn exec_runs_argv_inside_the_container() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("exec", &images, port, &web_compose(&images.good, port));
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("exec", state.path());
    up(&project, true).run(&ctx).await.expect("up");
    let exec = |extra: serde_json::Value| {
        ComposeExec::new(serde_json::from_value(project.config(extra)).unwrap()).unwrap()
    };

    let out = exec(serde_json::json!({"service": "web", "argv": ["cat", "/www/version"]}))
        .run(&ctx)
        .await
        .expect("exec");
    assert_eq!(out["stdout"], "version=v1");
    assert_eq!(out["exit_code"], 0);

    // Arguments are argv: a `;` is a plain argument, not a shell separator.
    let out = exec(serde_json::json!({
        "service": "web", "argv": ["echo", "a;", "touch", "/tmp/pwned"], "workdir": "/www",
        "env": {"GREETING": "hello"},
    }))
    .run(&ctx)
    .await
    .expect("echo");
    assert_eq!(out["stdout"], "a; touch /tmp/pwned");
    let out =
        exec(serde_json::json!({"service": "web", "argv": ["env"], "env": {"GREETING": "hello"}}))
            .run(&ctx)
            .await
            .expect("env");
    assert!(
        out["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == "GREETING=hello"),
        "{out:?}"
    );

    let err = exec(serde_json::json!({"service": "web", "argv": ["ls", "/no-such-dir"]}))
        .run(&ctx)
        .await
        .unwrap_err();
    assert!(err.message().contains("exited with"), "{}", err.message());
    assert!(
        err.detail().unwrap_or_default().contains("no-such-dir"),
        "{:?}",
        err.detail()
    );

    // Undo runs the compensating command.
    let step = exec(serde_json::json!({
        "service": "web", "argv": ["touch", "/www/flag"], "undo": ["rm", "-f", "/www/flag"],
    }));
    let outputs = step.run(&ctx).await.unwrap();
    assert!(
        exec(serde_json::json!({"service": "web", "argv": ["test", "-e", "/www/flag"]}))
            .run(&ctx)
            .await
            .is_ok()
    );
    step.undo(&ctx, &outputs).await.unwrap();
    assert!(
        exec(serde_json::json!({"service": "web", "argv": ["test", "-e", "/www/flag"]}))
            .run(&ctx)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn healthy_verifier_counts_missing_and_unhealthy_containers() {
    let Some(images) = images() else { return };
    let port = free_port();
    let yaml = format!(
        "{}  db:\n    image: {}\n",
        web_compose(&images.good, port),
        images.box_image
    );
    let project = Project::new("verify", &images, port, &yaml);
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("verify", state.path());
    let none = healthy(&project, &[]).check(&ctx).await.unwrap();
    assert!(!none.passed);
    assert!(none.observed.contains("db: no container"), "{none:?}");

    up(&project, true).run(&ctx).await.expect("up");
    let all = healthy(&project, &[]).check(&ctx).await.unwrap();
    assert!(all.passed, "{all:?}");

    // The stand-in database's own healthcheck fails once /data/corrupt exists.
    project.compose(&["exec", "-T", "db", "touch", "/data/corrupt"]);
    let start = std::time::Instant::now();
    loop {
        let check = healthy(&project, &["db"]).check(&ctx).await.unwrap();
        if !check.passed {
            assert!(check.observed.contains("unhealthy"), "{check:?}");
            break;
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "db never turned unhealthy: {check:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        healthy(&project, &["web"])
            .check(&ctx)
            .await
            .unwrap()
            .passed
    );
}

#[tokio::test]
async fn explicit_compose_command_is_used() {
    let Some(images) = images() else { return };
    let port = free_port();
    let project = Project::new("explicit", &images, port, &web_compose(&images.good, port));
    let state = tempfile::tempdir().unwrap();
    let ctx = StepContext::standalone("explicit", state.path());
    let config = project.config(serde_json::json!({"compose": images.compose, "wait": true}));
    Up::new(serde_json::from_value(config).unwrap())
        .unwrap()
        .run(&ctx)
        .await
        .expect("up");
    assert_eq!(http_get(port, HEALTH).map(|r| r.0), Some(200));
    let config = project.config(serde_json::json!({"compose": ["rollback-no-such-compose"]}));
    let err = ComposeHealthy::new(serde_json::from_value(config).unwrap())
        .unwrap()
        .check(&ctx)
        .await
        .unwrap_err();
    assert!(err.message().contains("not found"), "{}", err.message());
}
