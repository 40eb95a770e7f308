//! The outside security review's findings, each as it was reproduced against the release binary.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);

async fn put_subject(app: &TestApp, event: &str, subject: &str) -> Reply {
    app.put(
        "/settings/subjects",
        &admin_token(),
        &json!({"subjects": {event: subject}}),
    )
    .await
}

fn field_error(reply: &Reply, field: &str) -> String {
    reply
        .field_errors()
        .into_iter()
        .find(|(f, _)| f == field)
        .unwrap_or_else(|| panic!("no error for {field}: {}", reply.text))
        .1
}

/// Stores a subject the way an older version could have: straight into the settings table.
fn store_subjects_directly(app: &TestApp, subjects: Value) {
    let path = app.dir.path().join("mailroom.db");
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query(
        "INSERT INTO settings (key, value, version, updated_at, updated_by) VALUES ('subjects', ?, 1, 0, 'old-version') \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = settings.version + 1",
    )
    .bind::<diesel::sql_types::Text, _>(subjects.to_string())
    .execute(&mut conn)
    .unwrap();
}

#[tokio::test]
async fn subjects_that_would_hang_or_exhaust_memory_are_refused_at_save_and_the_service_stays_up() {
    let app = spawn_app().await;
    for subject in [
        "{% for a in 'x'*99999 %}{% for b in 'x'*99999 %}{% for c in 'x'*99999 %}{% endfor %}{% endfor %}{% endfor %}",
        "{{ 'x' * 100000000 }}",
        "{% set s='x'*99999999 %}{{ s~s~s~s~s~s~s~s }}",
        "{% for a in user_name %}{% for b in user_name %}{% for c in user_name %}{{ a }}{% endfor %}{% endfor %}{% endfor %}",
    ] {
        let started = Instant::now();
        let reply = put_subject(&app, "user_activated", subject).await;
        assert_eq!(
            field_error(&reply, "subjects.user_activated"),
            "template_too_expensive",
            "{subject}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{subject}");
    }
    // Nothing was stored, and notifications of that event still go through.
    let subjects = app.get("/settings/subjects", &admin_token()).await.json();
    assert!(subjects["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["is_default"] == true));
    let reply = app
        .notify(&json!({"event": "user_activated", "to": "ada@example.com", "data": {"user_name": "Ada"}}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(app.get("/readyz", "").await.status, 200);
}

#[tokio::test]
async fn subjects_that_save_but_cannot_render_are_refused_as_invalid_templates() {
    let app = spawn_app().await;
    for subject in [
        "Access to {{ product_name|tojson }}",
        "Welcome {{ user_name | nosuchfilter }}",
    ] {
        let reply = put_subject(&app, "access_request_approved", subject).await;
        assert_eq!(
            field_error(&reply, "subjects.access_request_approved"),
            "invalid_template",
            "{subject}"
        );
    }
    // The filters a subject needs still work.
    let reply = put_subject(
        &app,
        "access_request_approved",
        "Access to {{ product_name | upper }}{% if user_name %} for {{ user_name }}{% endif %}",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn a_stored_subject_that_cannot_render_fails_only_its_own_notifications() {
    let app = spawn_app().await;
    store_subjects_directly(
        &app,
        json!({"user_activated": "Welcome {{ user_name | nosuchfilter }}"}),
    );
    let broken = json!({"event": "user_activated", "to": "ada@example.com", "data": {"user_name": "Ada"}});
    let fine = json!({"event": "user_deactivated", "to": "bob@example.com"});

    let reply = app.notify(&broken).await;
    let body = reply.problem(422, "validation_failed");
    assert_eq!(body["errors"][0]["field"], "event", "{body}");
    assert_eq!(body["errors"][0]["code"], "invalid_template", "{body}");

    let batch = app
        .post(
            "/notifications/batch",
            &admin_token(),
            &json!({"notifications": [fine, broken, fine]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    let statuses: Vec<u64> = batch.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 422, 202]);

    // Concurrent good and broken posts: every good one is accepted.
    let mut handles = Vec::new();
    for i in 0..40 {
        let (client, url, body) = (
            app.client.clone(),
            app.url("/notifications"),
            if i % 4 == 0 { broken.clone() } else { fine.clone() },
        );
        handles.push(tokio::spawn(async move {
            let status = client
                .post(url)
                .bearer_auth(admin_token())
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (i % 4 == 0, status)
        }));
    }
    for h in handles {
        let (is_broken, status) = h.await.unwrap();
        assert_eq!(status, if is_broken { 422 } else { 202 });
    }
}

#[tokio::test]
async fn a_subject_that_renders_empty_goes_out_as_the_rendered_default() {
    let app = spawn_app().await;
    let reply = put_subject(&app, "access_request_approved", "{{ '' }}").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let accepted = app
        .notify(
            &json!({"event": "access_request_approved", "to": "ada@example.com",
                        "data": {"product_name": "Payments"}}),
        )
        .await
        .json();
    assert_eq!(
        accepted["subject"],
        "Your access request for Payments was approved"
    );
}

#[tokio::test]
async fn rendered_subjects_are_cut_to_a_length_a_mail_header_can_carry() {
    let app = spawn_app().await;
    let long = "P".repeat(3000);
    let accepted = app
        .notify(
            &json!({"event": "access_request_approved", "to": "ada@example.com",
                        "data": {"product_name": long}}),
        )
        .await
        .json();
    let subject = accepted["subject"].as_str().unwrap();
    assert!(subject.chars().count() <= 255, "{}", subject.len());
    assert!(subject.ends_with('\u{2026}'));
}

#[tokio::test]
async fn a_bare_cr_in_data_never_reaches_the_wire() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let reply = app
        .notify(&json!({"event": "access_request_approved", "to": "ada@example.com",
                        "data": {"product_name": "Pay", "user_name": "Ada\r.\rMAIL FROM:<evil@example.com>\r"}}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let received = server.wait_for(1, WAIT).await;
    let data = received[0].data.as_bytes();
    for (i, b) in data.iter().enumerate() {
        if *b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "a bare CR at {i}");
        }
    }
}

#[tokio::test]
async fn address_literals_are_refused_at_the_api() {
    let app = spawn_app().await;
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@[127.0.0.1]"}))
        .await;
    assert_eq!(field_error(&reply, "to"), "invalid_email");
    let reply = app
        .put_smtp(&json!({"host": "127.0.0.1", "port": 25, "security": "none",
                         "from_address": "portal@[127.0.0.1]"}))
        .await;
    assert_eq!(field_error(&reply, "from_address"), "invalid_email");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let url = format!("sqlite://{}", data.join("mailroom.db").display());
    let data_str = data.display().to_string();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("MAILROOM_DATABASE_URL", &url), ("MAILROOM_DATA_DIR", &data_str)],
    )
    .await
    .unwrap();
    // A write, so that the WAL exists.
    app.put(
        "/settings/admin-email",
        &admin_token(),
        &json!({"email": "ops@example.com"}),
    )
    .await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.clone()), 0o700);
    for file in ["mailroom.db", "mailroom.db-wal", "mailroom.db-shm"] {
        assert_eq!(mode(data.join(file)), 0o600, "{file}");
    }
}

#[tokio::test]
async fn a_cursor_that_no_page_handed_out_is_invalid_everywhere() {
    let app = spawn_app().await;
    for path in ["/notifications?cursor=garbage", "/settings/audit?cursor=garbage"] {
        let reply = app.get(path, &admin_token()).await;
        assert_eq!(field_error(&reply, "cursor"), "invalid_cursor", "{path}");
    }
}

#[tokio::test]
async fn the_smtp_test_refuses_a_null_body_as_the_document_does_and_names_its_own_size_limit() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .post(app.url("/settings/smtp/test"))
                .bearer_auth(admin_token())
                .header("content-type", "application/json")
                .body("null"),
        )
        .await;
    // The document's body is an object (or no body at all, which tests the saved settings).
    assert_eq!(
        reply.field_errors(),
        vec![("body".to_string(), "invalid_type".to_string())],
        "{}",
        reply.text
    );
    let none = app
        .send(
            app.client
                .post(app.url("/settings/smtp/test"))
                .bearer_auth(admin_token()),
        )
        .await;
    none.problem(409, "smtp_not_configured");
    let reply = app
        .send(
            app.client
                .post(app.url("/settings/smtp/test"))
                .bearer_auth(admin_token())
                .header("content-type", "application/json")
                .body(vec![b' '; 300 * 1024]),
        )
        .await;
    let body = reply.problem(413, "payload_too_large");
    assert!(body["detail"].as_str().unwrap().contains("262144"), "{body}");
}

#[tokio::test]
async fn a_webhook_endpoint_gets_a_new_secret_when_its_url_changes_and_ids_are_unique() {
    let app = spawn_app().await;
    let first = app
        .put(
            "/settings/webhooks",
            &admin_token(),
            &json!({"endpoints": [{"id": "portal", "url": "http://127.0.0.1:9/hooks"}]}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let secret = first.json()["endpoints"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Same id and URL: the secret is kept and not shown again.
    let same = app
        .put(
            "/settings/webhooks",
            &admin_token(),
            &json!({"endpoints": [{"id": "portal", "url": "http://127.0.0.1:9/hooks", "enabled": false}]}),
        )
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    assert!(same.json()["endpoints"][0]["secret"].is_null(), "{}", same.text);

    // A new URL: a new secret, returned once, never the old one.
    let moved = app
        .put(
            "/settings/webhooks",
            &admin_token(),
            &json!({"endpoints": [{"id": "portal", "url": "http://127.0.0.1:10/elsewhere"}]}),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    let new_secret = moved.json()["endpoints"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_secret, secret);

    let twice = app
        .put(
            "/settings/webhooks",
            &admin_token(),
            &json!({"endpoints": [{"id": "portal", "url": "http://127.0.0.1:9/a"},
                                  {"id": "portal", "url": "http://127.0.0.1:9/b"}]}),
        )
        .await;
    assert_eq!(
        field_error(&twice, "endpoints[1].id"),
        "duplicate_id",
        "{}",
        twice.text
    );
}

#[tokio::test]
async fn a_request_body_that_trickles_in_is_cut_off_with_408_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_BODY_TIMEOUT_SECONDS", "1")])
        .await
        .unwrap();
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = json!({"admin_email": "ops@example.com"}).to_string();
    let head = format!(
        "PUT /settings/admin-email HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        admin_token(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 200 ms, as the review's client did (it sent one every 2 s).
    let mut answer = Vec::new();
    for byte in body.bytes() {
        if tcp.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    }
    // Whatever is left of the answer, up to the close.
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stored = app.get("/settings/admin-email", &admin_token()).await;
    assert!(!stored.text.contains("ops@example.com"), "{}", stored.text);
}

#[tokio::test]
async fn an_internationalised_domain_is_sent_as_its_a_label_and_a_unicode_local_part_is_refused_at_accept() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@bücher.example"}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    app.wait_for_status(&id, "sent", WAIT).await;
    let received = server.received();
    assert!(
        received[0].rcpt_to[0].contains("ada@xn--bcher-kva.example"),
        "{:?}",
        received[0].rcpt_to
    );
    let to = received[0].header("To").unwrap();
    assert!(to.contains("ada@xn--bcher-kva.example"), "{to}");

    // Local parts must be ASCII (as validator checks them): refused at accept, never sent.
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "jürgen@example.com"}))
        .await;
    assert_eq!(field_error(&reply, "to"), "invalid_email", "{}", reply.text);
    let list = app.get("/suppressions", &admin_token()).await.json();
    assert_eq!(list["suppressions"], json!([]), "{list}");

    // A refusal about encoding names our doing, not the address: failed, never suppressed.
    let strict = SmtpServer::start(Behaviour {
        rcpt_reply: Some((500, "strict ASCII mode".into())),
        ..Default::default()
    })
    .await;
    app.use_smtp_server(strict.port).await;
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "bob@bücher.example"}))
        .await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    app.wait_for_status(&id, "failed", WAIT).await;
    let list = app.get("/suppressions", &admin_token()).await.json();
    assert_eq!(list["suppressions"], json!([]), "{list}");

    // A domain that has no A-label is refused at accept.
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@xn--a.example"}))
        .await;
    assert_eq!(field_error(&reply, "to"), "invalid_email", "{}", reply.text);
}

#[tokio::test]
async fn metadata_link_local_and_unspecified_literals_are_refused_at_save_in_every_spelling() {
    let app = spawn_app().await;
    for host in [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "::ffff:169.254.169.254",
        "fe80::1",
        "100.100.100.200",
        "0",
        "0.0.0.0",
        "::",
    ] {
        let reply = app
            .put_smtp(
                &json!({"host": host, "port": 25, "security": "none", "from_address": "portal@example.com"}),
            )
            .await;
        assert_eq!(
            field_error(&reply, "host"),
            "host_not_allowed",
            "{host}: {}",
            reply.text
        );
        let test = app
            .post(
                "/settings/smtp/test",
                &admin_token(),
                &json!({"settings": {"host": host, "port": 25, "security": "none"}}),
            )
            .await;
        assert_eq!(
            field_error(&test, "settings.host"),
            "host_not_allowed",
            "{host}: {}",
            test.text
        );
    }
    for url in [
        "https://0.0.0.0/hook",
        "https://0/hook",
        "https://[::]/hook",
        "http://0.0.0.0:8080/hook",
    ] {
        let reply = app
            .put(
                "/settings/webhooks",
                &admin_token(),
                &json!({"endpoints": [{"url": url}]}),
            )
            .await;
        assert_eq!(
            field_error(&reply, "endpoints[0].url"),
            "host_not_allowed",
            "{url}: {}",
            reply.text
        );
    }
    // Local relays stay allowed.
    let local = app
        .put_smtp(&json!({"host": "127.0.0.1", "port": 25, "security": "none", "from_address": "portal@example.com"}))
        .await;
    assert_eq!(local.status, 200, "{}", local.text);
}
