use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;
use crate::smtp_server::{Behaviour, SmtpServer, TestCert};

const WAIT: Duration = Duration::from_secs(20);

/// Data with every variable of `event` filled, as a portal would send it.
fn sample_data(event: &Value) -> Value {
    let mut data = serde_json::Map::new();
    for v in event["variables"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let value = if name.ends_with("_url") {
            json!(format!("https://portal.example.com/{name}"))
        } else if name.ends_with("_email") {
            json!("grace@example.com")
        } else if name == "expires_in_minutes" {
            json!(30)
        } else {
            json!(format!("{name} value"))
        };
        data.insert(name.to_string(), value);
    }
    Value::Object(data)
}

async fn every_event_is_delivered_with_the_right_headers_and_both_parts(app: TestApp) {
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    app.put(
        "/settings/admin-email",
        &admin_token(),
        &json!({"email": "admins@example.com"}),
    )
    .await;
    let events = app.send(app.client.get(app.url("/events"))).await.json()["events"]
        .as_array()
        .unwrap()
        .clone();
    let mut ids = Vec::new();
    for event in &events {
        let name = event["event"].as_str().unwrap();
        let mut body = json!({"event": name, "data": sample_data(event)});
        if event["recipient"] == "user" {
            body["to"] = json!("ada@example.com");
            body["to_name"] = json!("Ada Lovelace");
        }
        let reply = app.notify(&body).await;
        assert_eq!(reply.status, 202, "{name}: {}", reply.text);
        let accepted = reply.json();
        assert_eq!(
            reply.header("location"),
            Some(format!("/notifications/{}", accepted["id"].as_str().unwrap()))
        );
        assert_eq!(accepted["status"], "queued");
        ids.push((name.to_string(), event["recipient"].clone(), accepted));
    }
    let received = server.wait_for(events.len(), WAIT).await;
    assert_eq!(received.len(), events.len());
    for (name, recipient, accepted) in &ids {
        let id = accepted["id"].as_str().unwrap();
        let n = app.wait_for_status(id, "sent", WAIT).await;
        let message_id = n["message_id"].as_str().unwrap().to_string();
        assert_eq!(message_id, format!("<{id}@example.com>"));
        let msg = received
            .iter()
            .find(|m| m.header("Message-ID").as_deref() == Some(message_id.as_str()))
            .unwrap_or_else(|| panic!("{name} was not received"));
        assert_eq!(msg.mail_from, "portal@example.com");
        assert_eq!(
            msg.header("From").unwrap(),
            "\"Developer Portal\" <portal@example.com>"
        );
        assert_eq!(msg.header("Reply-To").unwrap(), "support@example.com");
        if recipient == "user" {
            assert_eq!(msg.rcpt_to, ["ada@example.com"]);
            assert_eq!(msg.header("To").unwrap(), "\"Ada Lovelace\" <ada@example.com>");
        } else {
            assert_eq!(msg.rcpt_to, ["admins@example.com"]);
            assert_eq!(msg.header("To").unwrap(), "admins@example.com");
        }
        assert_eq!(
            msg.header("Subject").unwrap(),
            accepted["subject"].as_str().unwrap(),
            "{name}"
        );
        assert!(msg.header("Date").is_some());
        assert!(msg
            .header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"));
        assert!(msg.data.contains("Content-Type: text/plain"), "{name}");
        assert!(msg.data.contains("Content-Type: text/html"), "{name}");
        assert_eq!(n["attempts"][0]["outcome"], "sent");
        assert_eq!(n["attempts"][0]["smtp_code"], 250);
        assert!(n["smtp_reply"].as_str().unwrap().contains("queued as TEST"));
    }
}

async fn a_notification_is_held_until_settings_exist_then_sent(app: TestApp) {
    let server = SmtpServer::start(Behaviour::default()).await;
    let reply = app
        .notify(&json!({"event": "user_invited", "to": "ada@example.com", "data": {"invite_url": "https://p.example.com/i/1"}}))
        .await;
    assert_eq!(reply.status, 202);
    let accepted = reply.json();
    assert_eq!(accepted["status"], "held");
    assert!(accepted["status_reason"].as_str().unwrap().contains("SMTP"));
    let id = accepted["id"].as_str().unwrap();

    // SMTP without a From address: still held, now for the From address.
    app.put_smtp(&json!({"host": "127.0.0.1", "port": server.port, "security": "none"}))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = app.notification(id).await;
        assert_eq!(n["status"], "held");
        if n["status_reason"].as_str().unwrap().contains("From") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.received().is_empty());

    app.use_smtp_server(server.port).await;
    server.wait_for(1, WAIT).await;
    app.wait_for_status(id, "sent", WAIT).await;
}

on_both_backends! {
    every_event => every_event_is_delivered_with_the_right_headers_and_both_parts;
    held_then_sent => a_notification_is_held_until_settings_exist_then_sent;
}

#[tokio::test]
async fn an_admin_event_waits_for_the_admin_address_and_goes_to_it() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let accepted = app
        .notify(&json!({"event": "user_registration_pending", "data": {"user_name": "Ada", "user_email": "ada@example.com"}}))
        .await
        .json();
    assert_eq!(accepted["status"], "held");
    assert!(accepted["to"].is_null());
    assert!(accepted["status_reason"].as_str().unwrap().contains("admin"));
    app.put(
        "/settings/admin-email",
        &admin_token(),
        &json!({"email": "admins@example.com"}),
    )
    .await;
    let received = server.wait_for(1, WAIT).await;
    assert_eq!(received[0].rcpt_to, ["admins@example.com"]);
    let n = app
        .wait_for_status(accepted["id"].as_str().unwrap(), "sent", WAIT)
        .await;
    assert_eq!(n["to"], "admins@example.com");
}

#[tokio::test]
async fn an_expired_notification_is_never_sent() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(700);
    let doomed = app
        .notify(&json!({"event": "password_reset", "to": "ada@example.com", "data": {"reset_url": "https://p.example.com/r"},
                        "expires_at": expires.to_rfc3339()}))
        .await
        .json();
    assert_eq!(doomed["status"], "held");
    let n = app
        .wait_for_status(doomed["id"].as_str().unwrap(), "expired", WAIT)
        .await;
    assert!(n["attempts"].as_array().unwrap().is_empty());

    app.use_smtp_server(server.port).await;
    let sentinel = app
        .notify(&json!({"event": "password_reset", "to": "bob@example.com", "data": {"reset_url": "https://p.example.com/r"}}))
        .await
        .json();
    app.wait_for_status(sentinel["id"].as_str().unwrap(), "sent", WAIT)
        .await;
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["bob@example.com"]);
    assert_eq!(
        app.notification(doomed["id"].as_str().unwrap()).await["status"],
        "expired"
    );
}

#[tokio::test]
async fn a_451_is_retried_and_then_delivered() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        data_replies: [(451, "4.3.0 Try again later".to_string())].into(),
        ..Default::default()
    })
    .await;
    app.use_smtp_server(server.port).await;
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_for(1, WAIT).await;
    let n = app.wait_for_status(&id, "sent", WAIT).await;
    let attempts = n["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{n}");
    assert_eq!(
        (attempts[0]["outcome"].clone(), attempts[0]["smtp_code"].clone()),
        (json!("deferred"), json!(451))
    );
    assert!(attempts[0]["reply"].as_str().unwrap().contains("Try again later"));
    assert_eq!(attempts[1]["outcome"], "sent");
}

#[tokio::test]
async fn a_550_fails_at_once_without_retry() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        rcpt_reply: Some((550, "5.1.1 No such user".into())),
        ..Default::default()
    })
    .await;
    app.use_smtp_server(server.port).await;
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "nobody@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let n = app.wait_for_status(&id, "failed", WAIT).await;
    assert_eq!(n["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(n["attempts"][0]["smtp_code"], 550);
    assert!(n["status_reason"].as_str().unwrap().contains("No such user"));

    // An admin can queue it again once the problem is fixed.
    server.behaviour().rcpt_reply = None;
    let retry = app
        .post(&format!("/notifications/{id}/retry"), &admin_token(), &json!({}))
        .await;
    assert_eq!(retry.status, 202, "{}", retry.text);
    let n = app.wait_for_status(&id, "sent", WAIT).await;
    assert_eq!(n["attempts"].as_array().unwrap().len(), 2);
    app.post(&format!("/notifications/{id}/retry"), &admin_token(), &json!({}))
        .await
        .problem(409, "not_retryable");
}

#[tokio::test]
async fn mail_waits_while_the_server_is_down_and_goes_out_when_it_is_back() {
    let app = spawn_app().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    app.use_smtp_server(port).await;
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = app.notification(&id).await;
        if n["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "deferred")
        {
            assert_eq!(n["status"], "queued");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no deferred attempt: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let server = SmtpServer::serve(listener, Behaviour::default());
    server.wait_for(1, WAIT).await;
    app.wait_for_status(&id, "sent", WAIT).await;
}

#[tokio::test]
async fn delivery_uses_starttls_with_a_verified_certificate_and_auth() {
    let cert = TestCert::new(&["localhost"]);
    let server = SmtpServer::start(Behaviour {
        starttls: Some(cert.acceptor.clone()),
        auth: Some(("mailer".into(), "s3cret-pass".into())),
        auth_after_tls_only: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write_to(dir.path());
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_SMTP_CA_FILE", &ca)])
        .await
        .unwrap();
    let reply = app
        .put_smtp(
            &json!({"host": "localhost", "port": server.port, "security": "starttls", "username": "mailer",
                          "password": "s3cret-pass", "from_address": "portal@example.com"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let received = server.wait_for(1, WAIT).await;
    assert!(received[0].tls);
    assert_eq!(received[0].authenticated_as.as_deref(), Some("mailer"));
    app.wait_for_status(&id, "sent", WAIT).await;
}

#[tokio::test]
async fn a_repeat_with_the_same_idempotency_key_returns_the_original_and_creates_nothing() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let body = json!({"event": "access_request_approved", "to": "ada@example.com", "data": {"product_name": "Payments API"}});
    let send = |body: Value, key: &'static str| {
        let req = app
            .client
            .post(app.url("/notifications"))
            .bearer_auth(admin_token())
            .header("Idempotency-Key", key)
            .json(&body);
        app.send(req)
    };
    let first = send(body.clone(), "order-42").await;
    assert_eq!(first.status, 202);
    let again = send(body.clone(), "order-42").await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), first.json());
    assert_eq!(again.header("location"), first.header("location"));

    let mut other = body.clone();
    other["data"]["product_name"] = json!("Other API");
    send(other, "order-42")
        .await
        .problem(409, "idempotency_key_reused");

    // The key may also travel in the body.
    let mut in_body = body.clone();
    in_body["idempotency_key"] = json!("order-43");
    let a = app.notify(&in_body).await.json();
    let b = app.notify(&in_body).await.json();
    assert_eq!(a["id"], b["id"]);

    let list = app.get("/notifications?limit=200", &admin_token()).await.json();
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2);
    server.wait_for(2, WAIT).await;
}

#[tokio::test]
async fn two_instances_on_one_postgres_racing_the_same_idempotency_keys_create_one_notification_per_key_and_no_server_error(
) {
    let Some(pg) = PgDatabase::create() else {
        return; // `create` said why
    };
    let a = spawn_app_on(&pg.url).await;
    let b = spawn_app_on(&pg.url).await;
    racing_idempotency_keys(&a, &b).await;
}

#[tokio::test]
async fn two_instances_on_one_sqlite_file_racing_the_same_idempotency_keys_create_one_notification_per_key() {
    let a = spawn_app().await;
    let url = format!("sqlite://{}", a.dir.path().join("mailroom.db").display());
    let b = spawn_app_on(&url).await;
    racing_idempotency_keys(&a, &b).await;
}

/// Several requests per key at once, split between two instances, keys arriving in every
/// order: each key yields exactly one notification, and every answer is that notification (202)
/// or "in use, retry" (409). Without one order for the keys in a transaction, two PostgreSQL
/// transactions each waiting for a key the other holds deadlock, and one group fails with 503.
async fn racing_idempotency_keys(a: &TestApp, b: &TestApp) {
    const KEYS: usize = 24;
    const COPIES: usize = 8;
    let mut tasks = Vec::new();
    for copy in 0..COPIES {
        for k in 0..KEYS {
            // Each round walks the keys in a different order.
            let k = if copy % 2 == 0 { k } else { KEYS - 1 - k };
            let app = if (copy + k) % 2 == 0 { a } else { b };
            let req = app
                .client
                .post(app.url("/notifications"))
                .bearer_auth(admin_token())
                .header("Idempotency-Key", format!("race-{k}"))
                .json(&json!({"event": "user_deactivated", "to": format!("user{k}@example.com")}));
            tasks.push(tokio::spawn(async move {
                let res = req.send().await.expect("request sent");
                let status = res.status().as_u16();
                (k, status, res.json::<Value>().await.unwrap())
            }));
        }
    }
    let mut ids: Vec<Option<String>> = vec![None; KEYS];
    for task in tasks {
        let (k, status, body) = task.await.unwrap();
        match status {
            202 => {
                let id = body["id"].as_str().unwrap().to_string();
                let first = ids[k].get_or_insert_with(|| id.clone());
                assert_eq!(*first, id, "key {k} answered with two different notifications");
            }
            409 => assert_eq!(body["code"], "idempotency_key_in_use", "{body}"),
            other => panic!("key {k}: {other} {body}"),
        }
    }
    assert!(
        ids.iter().all(Option::is_some),
        "a key never got its 202: {ids:?}"
    );
    let list = a.get("/notifications?limit=200", &admin_token()).await.json();
    assert_eq!(list["notifications"].as_array().unwrap().len(), KEYS);
}

#[tokio::test]
async fn a_batch_answers_each_item_on_its_own() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let reply = app
        .post(
            "/notifications/batch",
            &admin_token(),
            &json!({"notifications": [
                {"event": "user_deactivated", "to": "a@example.com"},
                {"event": "no_such_event", "to": "b@example.com"},
                {"event": "user_deactivated", "to": "c@example.com"},
                "not an object"
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(2), json!(2))
    );
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 422, 202, 422]);
    assert_eq!(
        body["results"][1]["error"]["errors"][0]["field"],
        "notifications[1].event"
    );
    let received = server.wait_for(2, WAIT).await;
    let mut to: Vec<String> = received.iter().map(|m| m.rcpt_to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["a@example.com", "c@example.com"]);

    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"event": "user_deactivated", "to": "a@example.com"}))
        .collect();
    let fields = app
        .post(
            "/notifications/batch",
            &admin_token(),
            &json!({"notifications": too_many}),
        )
        .await
        .field_errors();
    assert_eq!(
        fields,
        vec![("notifications".to_string(), "too_many".to_string())]
    );
}

#[tokio::test]
async fn bad_notifications_are_field_errors() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"event": "nope", "to": "a@example.com"}),
            vec![("event", "unknown_event")],
        ),
        (
            json!({"event": "access_request_approved", "data": {"product_name": "P"}}),
            vec![("to", "required")],
        ),
        (
            json!({"event": "access_request_approved", "to": "a@example.com"}),
            vec![("data.product_name", "required")],
        ),
        (
            json!({"event": "access_request_approved", "to": "a@example.com", "data": {"product_name": "P", "colour": "red"}}),
            vec![("data.colour", "unknown_variable")],
        ),
        (
            json!({"event": "access_request_approved", "to": "a@example.com", "data": {"product_name": ["P"]}}),
            vec![("data.product_name", "not_scalar")],
        ),
        (
            json!({"event": "password_reset", "to": "a@example.com", "data": {"reset_url": "javascript:alert(1)"}}),
            vec![("data.reset_url", "invalid_url")],
        ),
        (
            json!({"event": "user_deactivated", "to": "a@example.com", "to_name": "Ada\r\nBcc: eve@example.com"}),
            vec![("to_name", "line_break")],
        ),
        (
            json!({"event": "user_deactivated", "to": "a@example.com", "expires_at": "2001-01-01T00:00:00Z"}),
            vec![("expires_at", "in_past")],
        ),
        (
            json!({"event": "user_deactivated", "to": "not an address"}),
            vec![("to", "invalid_email")],
        ),
    ];
    for (body, expected) in cases {
        let mut got = app.notify(&body).await.field_errors();
        got.sort();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, c)| (f.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, expected, "{body}");
    }
}

#[tokio::test]
async fn header_injection_through_names_subjects_or_data_is_impossible() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    app.patch(
        "/settings/subjects",
        &admin_token(),
        &json!({"subjects": {"access_request_approved": "Access to {{ product_name }} for {{ user_name }}"}}),
    )
    .await;
    let reply = app
        .notify(&json!({"event": "access_request_approved", "to": "ada@example.com", "to_name": "Ada \"The Countess\" Lovelace",
                        "data": {"product_name": "Payments\r\nBcc: eve@example.com", "user_name": "Ada\nX-Evil: 1"}}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let received = server.wait_for(1, WAIT).await;
    let msg = &received[0];
    let head = msg.data.split("\r\n\r\n").next().unwrap();
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.starts_with("bcc:") && !lower.starts_with("x-evil:"),
            "injected header: {line}"
        );
    }
    assert_eq!(msg.rcpt_to, ["ada@example.com"]);
    assert_eq!(
        msg.header("Subject").unwrap(),
        "Access to Payments Bcc: eve@example.com for Ada X-Evil: 1"
    );
}

#[tokio::test]
async fn listing_filters_and_pages_and_stats_count_by_status() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    for i in 0..3 {
        app.notify(&json!({"event": "user_deactivated", "to": format!("u{i}@example.com")}))
            .await;
    }
    let stats = app.get("/notifications/stats", &admin_token()).await.json();
    assert_eq!(stats["counts"]["held"], 3);
    assert_eq!(stats["counts"]["sent"], 0);
    assert!(stats["last_success"].is_null());

    app.use_smtp_server(server.port).await;
    server.wait_for(3, WAIT).await;
    let page1 = app
        .get("/notifications?status=sent&limit=2", &admin_token())
        .await;
    // All three become sent; poll the filter until it shows them.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut page1 = page1.json();
    while page1["notifications"].as_array().unwrap().len() < 2 || page1["next_cursor"].is_null() {
        assert!(tokio::time::Instant::now() < deadline, "{page1}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        page1 = app
            .get("/notifications?status=sent&limit=2", &admin_token())
            .await
            .json();
    }
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = app
        .get(
            &format!("/notifications?status=sent&limit=2&cursor={cursor}"),
            &admin_token(),
        )
        .await
        .json();
    assert_eq!(page2["notifications"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let to = app
        .get("/notifications?to=u1@example.com", &admin_token())
        .await
        .json();
    assert_eq!(to["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(to["notifications"][0]["to"], "u1@example.com");
    app.get("/notifications?status=lost", &admin_token())
        .await
        .problem(422, "validation_failed");

    let stats = app.get("/notifications/stats", &admin_token()).await.json();
    assert_eq!(stats["counts"]["sent"], 3);
    assert_eq!(stats["counts"]["held"], 0);
    assert!(stats["last_success"]["at"].is_string());
    assert!(stats["oldest_queued_age_seconds"].is_null());
}

#[tokio::test]
async fn notification_routes_need_their_scopes() {
    let app = spawn_app().await;
    let body = json!({"event": "user_deactivated", "to": "a@example.com"});
    app.post("/notifications", &token("notifications:read"), &body)
        .await
        .problem(403, "insufficient_scope");
    let id = app
        .post("/notifications", &token("notifications:send"), &body)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.get(&format!("/notifications/{id}"), &token("notifications:send"))
        .await
        .problem(403, "insufficient_scope");
    assert_eq!(
        app.get(&format!("/notifications/{id}"), &token("notifications:read"))
            .await
            .status,
        200
    );
    app.get("/notifications/stats", &token("settings:read"))
        .await
        .problem(403, "insufficient_scope");
    let unauth = app.send(app.client.get(app.url("/notifications"))).await;
    unauth.problem(401, "unauthorized");
    app.get("/notifications/does-not-exist", &admin_token())
        .await
        .problem(404, "not_found");
}

#[tokio::test]
async fn consecutive_messages_reuse_one_smtp_session() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_DELIVERY_CONCURRENCY", "1")])
        .await
        .unwrap();
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    for i in 0..5 {
        let reply = app
            .notify(&json!({"event": "user_deactivated", "to": format!("u{i}@example.com")}))
            .await;
        assert_eq!(reply.status, 202);
        server.wait_for(i + 1, WAIT).await;
    }
    assert_eq!(server.connections(), 1, "each message opened its own connection");
}
