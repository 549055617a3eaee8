//! The plans in examples/compose/ load, and run end to end against the real
//! Docker engine on a copy of the example project (own project name and port).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use support::{free_port, http_get, images, Images};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/compose")
}

fn registry() -> Registry {
    let mut registry = Registry::with_core_kinds();
    rollback_compose::register(&mut registry);
    registry
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_example_plan_loads() {
    let registry = registry();
    for name in [
        "app-rollback.yaml",
        "db-rollback.yaml",
        "config-rollback.yaml",
    ] {
        let plan = Plan::load(examples().join(name), &registry, &BTreeMap::new());
        assert!(
            plan.is_ok(),
            "{name}: {}",
            plan.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
}

/// A copy of examples/compose/app in a temporary folder, taken down on drop.
struct App {
    dir: tempfile::TempDir,
    project: String,
    port: u16,
    compose: Vec<String>,
}

impl App {
    fn new(test: &str, images: &Images, web_image: Option<&str>) -> App {
        let dir = tempfile::tempdir().unwrap();
        for file in ["docker-compose.yml", ".env.production", "nginx.conf"] {
            std::fs::copy(examples().join("app").join(file), dir.path().join(file)).unwrap();
        }
        let port = free_port();
        // `.env` feeds Compose's own ${...} interpolation.
        let mut env = format!("WEB_PORT={port}\n");
        if let Some(image) = web_image {
            env.push_str(&format!("WEB_IMAGE={image}\n"));
        }
        std::fs::write(dir.path().join(".env"), env).unwrap();
        App {
            dir,
            project: format!("rbx-{test}-{}", std::process::id()),
            port,
            compose: images.compose.clone(),
        }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn compose(&self, args: &[&str]) -> String {
        let output = Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn run(&self, plan: &str, vars: BTreeMap<String, String>) -> rollback_core::RunReport {
        let plan = Plan::load(examples().join(plan), &registry(), &vars).expect("plan loads");
        let state = tempfile::tempdir().unwrap();
        let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
        executor
            .run(&plan, RunOptions::new("example test"))
            .await
            .expect("run")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args([
                "-p",
                &self.project,
                "-f",
                "docker-compose.yml",
                "down",
                "-v",
                "-t",
                "0",
            ])
            .current_dir(self.dir.path())
            .output();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[tokio::test]
async fn app_rollback_example_rolls_back_a_bad_release() {
    let Some(images) = images() else { return };
    let app = App::new("app", &images, Some(&images.bad));
    app.compose(&["up", "-d"]);
    let port = app.port.to_string();
    let report = app
        .run(
            "app-rollback.yaml",
            vars(&[
                ("dir", app.path()),
                ("project", &app.project),
                ("port", &port),
                ("previous_image", &images.good),
            ]),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let (status, body) = http_get(app.port, "/cgi-bin/health").expect("answers");
    assert_eq!((status, body.trim()), (200, "version=v1"));
}

#[tokio::test]
async fn db_rollback_example_restores_with_the_app_stopped() {
    let Some(images) = images() else { return };
    let app = App::new("db", &images, None);
    app.compose(&["up", "-d"]);
    app.compose(&[
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        "echo schema_version=2 > /data/current.db",
    ]);
    app.compose(&[
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        "echo schema_version=1 > /backups/target.db",
    ]);
    let report = app
        .run(
            "db-rollback.yaml",
            vars(&[("dir", app.path()), ("project", &app.project)]),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    assert_eq!(
        app.compose(&["exec", "-T", "db", "cat", "/data/current.db"])
            .trim(),
        "schema_version=1"
    );
    assert_eq!(
        app.compose(&["exec", "-T", "db", "cat", "/backups/safety.db"])
            .trim(),
        "schema_version=2"
    );
    assert_eq!(
        http_get(app.port, "/cgi-bin/health").map(|r| r.0),
        Some(200)
    );
}

#[tokio::test]
async fn config_rollback_example_restores_files_from_git_and_restarts() {
    let Some(images) = images() else { return };
    let app = App::new("config", &images, None);
    let dir = app.dir.path();
    git(dir, &["init", "-q"]);
    git(
        dir,
        &["add", "docker-compose.yml", ".env.production", "nginx.conf"],
    );
    git(dir, &["commit", "-q", "-m", "good config"]);
    // The bad change: a new image, a flag flipped, an nginx edit.
    let compose = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        compose.replace("${WEB_IMAGE:-rollback-test/web:v1}", &images.bad),
    )
    .unwrap();
    std::fs::write(
        dir.join(".env.production"),
        "APP_MODE=production\nFEATURE_NEW_CHECKOUT=true\n",
    )
    .unwrap();
    std::fs::write(dir.join("nginx.conf"), "broken {\n").unwrap();
    git(dir, &["commit", "-q", "-am", "bad config"]);
    app.compose(&["up", "-d"]);

    let report = app
        .run(
            "config-rollback.yaml",
            vars(&[("repo", app.path()), ("project", &app.project)]),
        )
        .await;
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    assert_eq!(
        http_get(app.port, "/cgi-bin/health").map(|r| r.1.trim().to_string()),
        Some("version=v1".into())
    );
    let env = app.compose(&["exec", "-T", "web", "env"]);
    assert!(
        env.lines().any(|l| l == "FEATURE_NEW_CHECKOUT=false"),
        "{env}"
    );
    let nginx = app.compose(&["exec", "-T", "proxy", "cat", "/etc/nginx/nginx.conf"]);
    assert!(nginx.contains("upstream app"), "{nginx}");
}
