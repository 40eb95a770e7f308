//! Crashes and several instances: nothing accepted is lost, nothing is sent twice in normal operation.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_dispatcher_killed_mid_send_loses_nothing_and_the_mail_still_goes_out() {
    let hanging = SmtpServer::start(Behaviour {
        hang_in_data: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("mailroom.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailroom"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILROOM_")) {
        cmd.env_remove(k);
    }
    let child = Child(
        cmd.arg("serve")
            .envs(base_vars(dir.path(), &db_url))
            .env("MAILROOM_BIND", format!("127.0.0.1:{port}"))
            .env("MAILROOM_DELIVERY_LEASE_SECONDS", "2")
            .env("MAILROOM_DELIVERY_POLL_MILLISECONDS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child process did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let put = client
        .put(format!("{base}/settings/smtp"))
        .bearer_auth(admin_token())
        .json(&json!({"host": "127.0.0.1", "port": hanging.port, "security": "none", "from_address": "portal@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let accepted: serde_json::Value = client
        .post(format!("{base}/notifications"))
        .bearer_auth(admin_token())
        .json(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();

    // The message is on the wire when the process dies (SIGKILL: no cleanup runs).
    hanging.wait_for_data_started(1, WAIT).await;
    let mut child = child;
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let good = SmtpServer::start(Behaviour::default()).await;
    let dir_str = dir.path().display().to_string();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("MAILROOM_DATABASE_URL", &db_url),
            ("MAILROOM_DATA_DIR", &dir_str),
            ("MAILROOM_DELIVERY_LEASE_SECONDS", "2"),
        ],
    )
    .await
    .unwrap();
    let before = app.notification(&id).await;
    assert_eq!(before["status"], "sending", "the crash left it claimed: {before}");
    app.use_smtp_server(good.port).await;
    let received = good.wait_for(1, WAIT).await;
    assert_eq!(received[0].rcpt_to, ["ada@example.com"]);
    let n = app.wait_for_status(&id, "sent", WAIT).await;
    assert_eq!(n["message_id"], format!("<{id}@example.com>"));
}

#[tokio::test]
async fn two_instances_on_one_postgres_deliver_each_of_500_notifications_exactly_once() {
    let Some(pg) = PgDatabase::create() else {
        return; // `create` said why
    };
    let server = SmtpServer::start(Behaviour::default()).await;
    let a = spawn_app_on(&pg.url).await;
    let b = spawn_app_on(&pg.url).await;
    a.use_smtp_server(server.port).await;
    a.accept_batch_for_users(0..250).await;
    b.accept_batch_for_users(250..500).await;
    server.wait_for(500, Duration::from_secs(120)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = a.get("/notifications/stats", &admin_token()).await.json();
        if stats["counts"]["sent"] == 500 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = server.received();
    let mut ids: Vec<String> = received.iter().map(|m| m.header("Message-ID").unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(received.len(), 500, "some notification was delivered twice");
    assert_eq!(ids.len(), 500);
}

#[tokio::test]
async fn on_postgres_a_notification_accepted_by_one_instance_wakes_an_idle_one_at_once() {
    let Some(pg) = PgDatabase::create() else {
        return; // `create` said why
    };
    let server = SmtpServer::start(Behaviour::default()).await;
    // `front` only accepts; `worker` delivers, and on its own would look again only every 60 s
    // (poll interval and lease renewal both far away).
    let front = spawn_app_with(
        Backend::Sqlite,
        &[
            ("MAILROOM_DATABASE_URL", &pg.url),
            ("MAILROOM_DELIVERY_ENABLED", "false"),
        ],
    )
    .await
    .unwrap();
    front.use_smtp_server(server.port).await;
    let worker = spawn_app_with(
        Backend::Sqlite,
        &[
            ("MAILROOM_DATABASE_URL", &pg.url),
            ("MAILROOM_DELIVERY_POLL_MILLISECONDS", "60000"),
            ("MAILROOM_DELIVERY_LEASE_SECONDS", "300"),
        ],
    )
    .await
    .unwrap();
    // A first notification, delivered: afterwards the worker is idle, waiting.
    let first = front
        .notify(&json!({"event": "user_deactivated", "to": "first@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    worker.wait_for_status(&first, "sent", WAIT).await;
    let started = tokio::time::Instant::now();
    let id = front
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_for(2, Duration::from_secs(10)).await;
    let took = started.elapsed();
    eprintln!("measured: accepted by one instance, sent by the other after {took:?}");
    assert!(took < Duration::from_secs(5), "the idle instance waited {took:?}");
    worker.wait_for_status(&id, "sent", WAIT).await;
}

#[tokio::test]
async fn committed_notifications_reach_the_database_file_without_a_commit_checkpointing_them() {
    let app = spawn_app().await;
    let file = app.dir.path().join("mailroom.db");
    let before = std::fs::metadata(&file).unwrap().len();
    // A few hundred WAL pages: far below the size at which a commit would checkpoint itself.
    app.accept_batch_for_users(0..200).await;
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::metadata(&file).unwrap().len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the committed rows never left the WAL ({before} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
