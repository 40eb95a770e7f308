//! SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write when the server offers it, one
//! command at a time when it does not, and a refused command in a pipelined batch.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);

async fn send(app: &TestApp, to: &str) -> String {
    let reply = app.notify(&json!({"event": "user_deactivated", "to": to})).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_server_that_offers_pipelining_gets_mail_rcpt_and_data_in_one_write() {
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    app.use_smtp_server(server.port).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send(&app, &format!("user{i}@example.com")).await);
    }
    for id in &ids {
        app.wait_for_status(id, "sent", WAIT).await;
    }
    let received = server.received();
    assert_eq!(received.len(), 5);
    assert!(received.iter().all(|m| m.data.contains("Subject: ")));
    // Every transaction arrived as one batch: RCPT and DATA were waiting when MAIL was read.
    assert_eq!(server.pipelined(), 5, "transactions pipelined");
}

#[tokio::test]
async fn a_server_without_pipelining_gets_each_command_only_after_its_reply() {
    let server = SmtpServer::start(Behaviour::default()).await;
    let app = spawn_app().await;
    app.use_smtp_server(server.port).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&app, &format!("user{i}@example.com")).await);
    }
    for id in &ids {
        app.wait_for_status(id, "sent", WAIT).await;
    }
    assert_eq!(server.received().len(), 3);
    assert_eq!(
        server.pipelined(),
        0,
        "pipelined to a server that did not offer it"
    );
}

#[tokio::test]
async fn a_550_to_one_pipelined_rcpt_fails_that_notification_and_the_others_are_delivered() {
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        reject_rcpt: Some(("gone@example.com".into(), 550, "5.1.1 no such user here".into())),
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    app.use_smtp_server(server.port).await;
    let before = send(&app, "ada@example.com").await;
    let gone = send(&app, "gone@example.com").await;
    let after = send(&app, "grace@example.com").await;
    let failed = app.wait_for_status(&gone, "failed", WAIT).await;
    app.wait_for_status(&before, "sent", WAIT).await;
    app.wait_for_status(&after, "sent", WAIT).await;
    // The refusal is read as RCPT's (not DATA's 554 that follows it in the batch).
    assert_eq!(failed["attempts"][0]["smtp_code"], 550, "{failed}");
    assert!(
        failed["attempts"][0]["reply"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{failed}"
    );
    let list = app.get("/suppressions", &admin_token()).await.json();
    assert_eq!(list["suppressions"][0]["address"], "gone@example.com", "{list}");
    let delivered: Vec<String> = server.received().iter().map(|m| m.rcpt_to.join(",")).collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(!delivered.iter().any(|r| r.contains("gone")), "{delivered:?}");
}

#[tokio::test]
async fn a_451_to_a_pipelined_rcpt_defers_and_the_retry_is_delivered() {
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        reject_rcpt: Some(("busy@example.com".into(), 451, "4.3.0 try again later".into())),
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    app.use_smtp_server(server.port).await;
    let id = send(&app, "busy@example.com").await;
    // Deferred with the server's reply, then sent once the server takes the address.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = app.notification(&id).await;
        if n["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(n["status"], "queued", "{n}");
            assert_eq!(n["attempts"][0]["outcome"], "deferred", "{n}");
            assert_eq!(n["attempts"][0]["smtp_code"], 451, "{n}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.behaviour().reject_rcpt = None;
    app.wait_for_status(&id, "sent", WAIT).await;
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_pipelined_mail_refused_with_a_5xx_fails_without_sending_data() {
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        mail_reply: Some((553, "5.7.1 sender not allowed".into())),
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    app.use_smtp_server(server.port).await;
    let id = send(&app, "ada@example.com").await;
    let failed = app.wait_for_status(&id, "failed", WAIT).await;
    assert_eq!(failed["attempts"][0]["smtp_code"], 553, "{failed}");
    assert_eq!(server.data_started(), 0);
    // A refused sender is not the recipient's fault: nothing is suppressed.
    let list = app.get("/suppressions", &admin_token()).await.json();
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 0, "{list}");
}
