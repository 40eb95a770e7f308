//! `spawn_app`: the real application on port 0 with its own database, plus request helpers.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::Connection;
use mailroom::config::Config;
use mailroom::startup::Application;
use secrecy::SecretString;
use serde_json::Value;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const ALL_SCOPES: &str = "settings:read settings:write smtp:test notifications:send notifications:read";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Says that a test was skipped where the user sees it: libtest shows a passing test's
/// `eprintln!` output to no one, so this writes to the process's stderr directly, once per reason.
pub fn skipped(reason: &str) {
    use std::io::Write;
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|r| r == reason) {
        seen.push(reason.to_string());
        let _ = writeln!(std::io::stderr().lock(), "\nSKIPPED: {reason}");
    }
}

/// A PostgreSQL database created for one test and dropped with it.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    /// None (with a note on stderr) when `MAILROOM_TEST_POSTGRES_URL` is not set.
    pub fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("MAILROOM_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("MAILROOM_TEST_REQUIRE_POSTGRES").is_none(),
                "MAILROOM_TEST_REQUIRE_POSTGRES is set but MAILROOM_TEST_POSTGRES_URL is not"
            );
            skipped("MAILROOM_TEST_POSTGRES_URL is not set, so the PostgreSQL tests pass without running");
            return None;
        };
        let name = format!("mailroom_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("MAILROOM_TEST_POSTGRES_URL is set but unreachable: {e}"));
        conn.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let (server, _) = base
            .rsplit_once('/')
            .expect("a postgres URL with a database name");
        let url = format!("{server}/{name}");
        Some(Self { admin_url, name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    handle: actix_web::dev::ServerHandle,
    _pg: Option<PgDatabase>,
}

/// Variables every test app starts with; `extra` overrides.
pub fn base_vars(dir: &std::path::Path, database_url: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert("MAILROOM_BIND".into(), "127.0.0.1:0".into());
    vars.insert("MAILROOM_DATABASE_URL".into(), database_url.into());
    vars.insert("MAILROOM_DATA_DIR".into(), dir.display().to_string());
    vars.insert("MAILROOM_JWT_SECRET".into(), JWT_SECRET.into());
    // Fast delivery for tests: retries after about a second, housekeeping every 100 ms.
    vars.insert("MAILROOM_DELIVERY_RETRY_BASE_SECONDS".into(), "1".into());
    vars.insert("MAILROOM_DELIVERY_RETRY_MAX_SECONDS".into(), "2".into());
    vars.insert("MAILROOM_DELIVERY_POLL_MILLISECONDS".into(), "100".into());
    vars
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, &[])
        .await
        .expect("SQLite always runs")
}

/// Another instance on a database that already exists (a second instance of a fleet).
pub async fn spawn_app_on(database_url: &str) -> TestApp {
    spawn_app_with(Backend::Sqlite, &[("MAILROOM_DATABASE_URL", database_url)])
        .await
        .expect("the database URL is given")
}

/// Starts the app on `backend`; None when that backend is not available (PostgreSQL without its URL).
pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("mailroom.db").display()),
            None,
        ),
        Backend::Postgres => {
            let pg = PgDatabase::create()?;
            (pg.url.clone(), Some(pg))
        }
    };
    let mut vars = base_vars(dir.path(), &url);
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_vars(&vars).expect("test configuration is valid");
    let app = Application::build(config).await.expect("the app starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.server_handle();
    tokio::spawn(app.run_until_stopped());
    Some(TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        dir,
        handle,
        _pg: pg,
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the server so that its database can be dropped.
        let handle = self.handle.clone();
        let _ =
            tokio::runtime::Handle::try_current().map(|rt| rt.spawn(async move { handle.stop(false).await }));
    }
}

pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn token(scopes: &str) -> String {
    mailroom::auth::mint_token(
        &SecretString::from(JWT_SECRET.to_string()),
        "test-admin",
        &scopes.split_whitespace().map(str::to_string).collect::<Vec<_>>(),
        Duration::from_secs(600),
        None,
        None,
    )
    .unwrap()
}

pub fn admin_token() -> String {
    token(ALL_SCOPES)
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts an RFC 9457 body with the given status and code, and returns it.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status);
        assert!(body["type"].is_string() && body["title"].is_string(), "{body}");
        body
    }

    /// The `(field, code)` pairs of a 422.
    pub fn field_errors(&self) -> Vec<(String, String)> {
        let body = self.problem(422, "validation_failed");
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap().to_string(),
                    e["code"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request sent");
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(self.client.put(self.url(path)).bearer_auth(token).json(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(self.client.patch(self.url(path)).bearer_auth(token).json(body))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).bearer_auth(token).json(body))
            .await
    }

    /// Points the SMTP settings at a test server (plain SMTP on 127.0.0.1) with a From address.
    pub async fn use_smtp_server(&self, port: u16) {
        let reply = self
            .put_smtp(&serde_json::json!({
                "host": "127.0.0.1", "port": port, "security": "none",
                "from_address": "portal@example.com", "from_name": "Developer Portal",
                "reply_to": "support@example.com", "timeout_seconds": 5
            }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    pub async fn notify(&self, body: &Value) -> Reply {
        self.post("/notifications", &admin_token(), body).await
    }

    /// Queues `user_deactivated` for `user{i}@example.com`, each `i` in `users`, in one batch
    /// that must be accepted whole.
    pub async fn accept_batch_for_users(&self, users: std::ops::Range<usize>) {
        let count = users.len();
        let items: Vec<Value> = users
            .map(|i| serde_json::json!({"event": "user_deactivated", "to": format!("user{i}@example.com")}))
            .collect();
        let reply = self
            .post(
                "/notifications/batch",
                &admin_token(),
                &serde_json::json!({"notifications": items}),
            )
            .await;
        assert_eq!(reply.json()["accepted"], count, "{}", reply.text);
    }

    pub async fn notification(&self, id: &str) -> Value {
        let reply = self.get(&format!("/notifications/{id}"), &admin_token()).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()
    }

    /// Polls the notification until its status is `status` (panics after `timeout`).
    pub async fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.notification(id).await;
            if n["status"] == status {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not become {status} in {timeout:?}: {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn put_smtp(&self, body: &Value) -> Reply {
        self.put("/settings/smtp", &admin_token(), body).await
    }
}

/// Runs a test body once on SQLite and once on PostgreSQL (skipped, saying so, without its URL).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident => $body:path;)*) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test]
                async fn on_sqlite() {
                    let app = $crate::helpers::spawn_app_with($crate::helpers::Backend::Sqlite, &[]).await.unwrap();
                    $body(app).await;
                }
                #[tokio::test]
                async fn on_postgres() {
                    match $crate::helpers::spawn_app_with($crate::helpers::Backend::Postgres, &[]).await {
                        Some(app) => $body(app).await,
                        None => {} // `PgDatabase::create` said why

                    }
                }
            }
        )*
    };
}
