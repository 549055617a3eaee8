//! Test support: a throwaway Compose project per test on the real Docker
//! engine, using the images built by `scripts/testenv/docker.sh`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rollback_core::testing::require_env;

/// The images the testenv script built.
pub struct Images {
    /// `rollback-test/web:v1`: answers 200 `version=v1` on /cgi-bin/health.
    pub good: String,
    /// `rollback-test/web:v2`: answers 500, its healthcheck fails.
    pub bad: String,
    /// `rollback-test/box:1`: busybox sleeping, a database stand-in.
    pub box_image: String,
    /// The Compose command the script found (`docker compose` or `docker-compose`).
    pub compose: Vec<String>,
}

/// The images, or `None` (test skipped) when the testenv script has not run.
pub fn images() -> Option<Images> {
    let compose = require_env("DOCKER_COMPOSE_CMD")?;
    Some(Images {
        good: require_env("ROLLBACK_TEST_WEB_GOOD")?,
        bad: require_env("ROLLBACK_TEST_WEB_BAD")?,
        box_image: require_env("ROLLBACK_TEST_BOX")?,
        compose: compose.split_whitespace().map(str::to_string).collect(),
    })
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A compose file with one `web` service on `image`, published on `port`.
pub fn web_compose(image: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n"
    )
}

/// A Compose project in a temporary folder, taken down (`down -v`) on drop.
pub struct Project {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub compose: Vec<String>,
    pub port: u16,
}

impl Project {
    /// A project named `rbt-TEST-PID` with `docker-compose.yml` holding `yaml`.
    pub fn new(test: &str, images: &Images, port: u16, yaml: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("docker-compose.yml"), yaml).expect("write compose file");
        Project {
            name: format!("rbt-{test}-{}", std::process::id()),
            dir,
            compose: images.compose.clone(),
            port,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("docker-compose.yml")
    }

    /// The fields every compose kind takes, for this project.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(map) = serde_json::json!({
            "project": self.name,
            "files": ["docker-compose.yml"],
            "cwd": self.path().to_str().unwrap(),
        }) else {
            unreachable!()
        };
        map
    }

    /// The common fields plus `extra`.
    pub fn config(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut map = self.fields();
        if let serde_json::Value::Object(extra) = extra {
            map.extend(extra);
        }
        serde_json::Value::Object(map)
    }

    /// Runs a compose command synchronously and returns its stdout; panics on failure.
    pub fn compose(&self, args: &[&str]) -> String {
        let output = Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["-p", &self.name, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("start compose");
        assert!(
            output.status.success(),
            "compose {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `docker inspect -f FORMAT` of the service's first container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.compose(&["ps", "-a", "-q", service]);
        let id = id.lines().next().expect("a container").trim().to_string();
        let output = Command::new("docker")
            .args(["inspect", "-f", format, &id])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args([
                "-p",
                &self.name,
                "-f",
                "docker-compose.yml",
                "down",
                "-v",
                "-t",
                "0",
                "--remove-orphans",
            ])
            .current_dir(self.path())
            .output();
    }
}

/// GET `path` on 127.0.0.1:`port`: `Some((status, body))`, `None` when the
/// connection fails.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
