//! `mailroom serve` as a child process with its own SQLite file: for crashes, signals, and
//! counters that belong to one process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until `base` answers `/readyz`.
pub async fn wait_ready(base: &str) {
    // reqwest needs the process-wide TLS provider even for plain HTTP, also when this is the
    // only test that runs.
    mailroom::startup::install_crypto_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the child process did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The binary under test: this build's, or the one `MAILROOM_TEST_BINARY` names (CI runs the
/// attack tests against the release build with it, since stack frames differ between profiles).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("MAILROOM_TEST_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_mailroom").into())
}

/// A `mailroom serve` child process, killed when dropped.
pub struct Child {
    pub process: std::process::Child,
    pub base: String,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Child {
    pub async fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Self {
        let db_url = format!("sqlite://{}", dir.join("mailroom.db").display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(binary());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILROOM_")) {
            cmd.env_remove(k);
        }
        let mut vars = base_vars(dir, &db_url);
        // The production defaults for leases and housekeeping, unless a test says otherwise.
        vars.remove("MAILROOM_DELIVERY_POLL_MILLISECONDS");
        vars.insert("MAILROOM_BIND".into(), format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        let process = cmd
            .arg("serve")
            .envs(vars)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("MAILROOM_TEST_CHILD_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let child = Self {
            process,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_ready(&child.base).await;
        child
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .put(format!("{}{path}", self.base))
            .bearer_auth(admin_token())
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn notify(&self, body: &Value) -> String {
        let reply: Value = reqwest::Client::new()
            .post(format!("{}/notifications", self.base))
            .bearer_auth(admin_token())
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["id"].as_str().unwrap().to_string()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.process.try_wait().unwrap().is_some() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "the process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
