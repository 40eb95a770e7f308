use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer, TestCert};

async fn run_test(app: &TestApp, body: Value) -> Value {
    let reply = app.post("/settings/smtp/test", &admin_token(), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

fn step_names(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect()
}

fn assert_failed(report: &Value, code: &str, step: &str) {
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["error"]["code"], code, "{report}");
    assert_eq!(report["error"]["step"], step, "{report}");
    let last = report["steps"].as_array().unwrap().last().unwrap();
    assert_eq!(last["step"], step, "{report}");
    assert_eq!(last["ok"], false, "{report}");
}

fn plain(port: u16) -> Value {
    json!({"host": "127.0.0.1", "port": port, "security": "none", "from_address": "portal@example.com", "timeout_seconds": 5})
}

/// An app that trusts `cert` (as MAILROOM_SMTP_CA_FILE).
async fn app_trusting(cert: &TestCert) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write_to(dir.path());
    (
        spawn_app_with(Backend::Sqlite, &[("MAILROOM_SMTP_CA_FILE", &ca)])
            .await
            .unwrap(),
        dir,
    )
}

#[tokio::test]
async fn a_plaintext_probe_reports_each_step_and_sends_nothing() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    let report = run_test(&app, json!({"settings": plain(server.port)})).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["error"].is_null());
    assert_eq!(step_names(&report), ["resolve", "connect", "greeting", "ehlo"]);
    assert_eq!(
        report["server"],
        json!({"host": "127.0.0.1", "port": server.port, "security": "none"})
    );
    assert!(report["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1 -> 127.0.0.1"));
    assert_eq!(report["steps"][2]["smtp_code"], 220);
    assert!(report["steps"][3]["detail"]
        .as_str()
        .unwrap()
        .contains("test.local"));
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn starttls_with_auth_plain_passes_with_a_trusted_certificate() {
    let cert = TestCert::new(&["localhost"]);
    let server = SmtpServer::start(Behaviour {
        starttls: Some(cert.acceptor.clone()),
        auth: Some(("mailer".into(), "pw-123456".into())),
        auth_after_tls_only: true,
        ..Default::default()
    })
    .await;
    let (app, _dir) = app_trusting(&cert).await;
    let report = run_test(
        &app,
        json!({"settings": {"host": "localhost", "port": server.port, "security": "starttls", "username": "mailer", "password": "pw-123456"}}),
    )
    .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        step_names(&report),
        ["resolve", "connect", "greeting", "ehlo", "starttls", "auth"]
    );
    assert!(report["steps"][5]["detail"].as_str().unwrap().contains("PLAIN"));
    assert!(!report.to_string().contains("pw-123456"));
}

#[tokio::test]
async fn implicit_tls_with_auth_login_passes() {
    let cert = TestCert::new(&["localhost"]);
    let server = SmtpServer::start(Behaviour {
        implicit_tls: Some(cert.acceptor.clone()),
        auth: Some(("mailer".into(), "pw-123456".into())),
        auth_mechanisms: Some("LOGIN"),
        ..Default::default()
    })
    .await;
    let (app, _dir) = app_trusting(&cert).await;
    let report = run_test(
        &app,
        json!({"settings": {"host": "localhost", "port": server.port, "security": "tls", "username": "mailer", "password": "pw-123456"}}),
    )
    .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(step_names(&report), ["resolve", "connect", "tls", "ehlo", "auth"]);
    assert!(report["steps"][4]["detail"].as_str().unwrap().contains("LOGIN"));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed_with_the_535_and_never_echoed() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        auth: Some(("mailer".into(), "right-password".into())),
        echo_credentials: true,
        ..Default::default()
    })
    .await;
    let mut settings = plain(server.port);
    settings["username"] = json!("mailer");
    settings["password"] = json!("wrong-password-value");
    settings["allow_insecure_auth"] = json!(true);
    let reply = app
        .post(
            "/settings/smtp/test",
            &admin_token(),
            &json!({"settings": settings}),
        )
        .await;
    assert!(
        !reply.text.contains("wrong-password-value"),
        "the password leaked: {}",
        reply.text
    );
    let report = reply.json();
    assert_failed(&report, "auth_failed", "auth");
    assert_eq!(
        report["steps"].as_array().unwrap().last().unwrap()["smtp_code"],
        535
    );
    assert!(report["error"]["hint"].as_str().unwrap().contains("password"));
    assert_eq!(
        server.auth_attempts(),
        [("mailer".to_string(), "wrong-password-value".to_string())]
    );
}

#[tokio::test]
async fn a_server_without_starttls_is_starttls_unsupported() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    let mut settings = plain(server.port);
    settings["security"] = json!("starttls");
    let report = run_test(&app, json!({"settings": settings})).await;
    assert_failed(&report, "starttls_unsupported", "starttls");
    assert!(report["error"]["hint"].is_string());
}

#[tokio::test]
async fn tls_to_a_plaintext_server_fails_quickly_with_a_hint() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    let mut settings = plain(server.port);
    settings["security"] = json!("tls");
    settings["timeout_seconds"] = json!(10);
    let started = Instant::now();
    let report = run_test(&app, json!({"settings": settings})).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_failed(&report, "tls_failed", "tls");
    assert!(report["error"]["hint"].as_str().unwrap().contains("starttls"));
}

#[tokio::test]
async fn plaintext_to_a_tls_server_fails_quickly_with_a_hint() {
    let cert = TestCert::new(&["localhost"]);
    let server = SmtpServer::start(Behaviour {
        implicit_tls: Some(cert.acceptor.clone()),
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    let mut settings = plain(server.port);
    settings["security"] = json!("starttls");
    settings["timeout_seconds"] = json!(10);
    let started = Instant::now();
    let report = run_test(&app, json!({"settings": settings})).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_failed(&report, "timeout", "greeting");
    assert!(
        report["error"]["hint"].as_str().unwrap().contains("\"tls\""),
        "{report}"
    );
}

#[tokio::test]
async fn a_closed_port_is_connection_refused() {
    let app = spawn_app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let report = run_test(&app, json!({"settings": plain(port)})).await;
    assert_failed(&report, "connection_refused", "connect");
}

#[tokio::test]
async fn a_listener_that_never_speaks_times_out_within_the_limit() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        silent: true,
        ..Default::default()
    })
    .await;
    let mut settings = plain(server.port);
    settings["timeout_seconds"] = json!(2);
    let started = Instant::now();
    let report = run_test(&app, json!({"settings": settings})).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert_failed(&report, "timeout", "greeting");
}

#[tokio::test]
async fn a_rejected_recipient_is_recipient_rejected() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        rcpt_reply: Some((550, "5.1.1 User unknown".into())),
        ..Default::default()
    })
    .await;
    let report = run_test(
        &app,
        json!({"settings": plain(server.port), "to": "nobody@example.com"}),
    )
    .await;
    assert_failed(&report, "recipient_rejected", "rcpt_to");
    assert_eq!(
        report["steps"].as_array().unwrap().last().unwrap()["smtp_code"],
        550
    );
    assert!(report["error"]["message"]
        .as_str()
        .unwrap()
        .contains("User unknown"));
}

#[tokio::test]
async fn a_certificate_for_another_name_is_certificate_invalid() {
    let cert = TestCert::new(&["mail.other.example"]);
    let server = SmtpServer::start(Behaviour {
        implicit_tls: Some(cert.acceptor.clone()),
        ..Default::default()
    })
    .await;
    let (app, _dir) = app_trusting(&cert).await;
    let settings = json!({"host": "localhost", "port": server.port, "security": "tls", "timeout_seconds": 5});
    let report = run_test(&app, json!({"settings": settings})).await;
    assert_failed(&report, "certificate_invalid", "tls");
    let hint = report["error"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("MAILROOM_SMTP_CA_FILE") && hint.contains("tls_verify"),
        "{hint}"
    );

    // An untrusted self-signed certificate is refused too, and tls_verify: false accepts it.
    let untrusted = spawn_app().await;
    let report = run_test(&untrusted, json!({"settings": settings})).await;
    assert_failed(&report, "certificate_invalid", "tls");
    let mut lax = settings.clone();
    lax["tls_verify"] = json!(false);
    assert_eq!(run_test(&untrusted, json!({"settings": lax})).await["ok"], true);
}

#[tokio::test]
async fn the_saved_password_is_used_only_for_the_host_port_and_username_it_was_saved_for() {
    let app = spawn_app().await;
    let behaviour = || Behaviour {
        auth: Some(("mailer".into(), "saved-secret".into())),
        ..Default::default()
    };
    let saved_server = SmtpServer::start(behaviour()).await;
    let other_server = SmtpServer::start(behaviour()).await;
    let mut saved = plain(saved_server.port);
    saved["username"] = json!("mailer");
    saved["password"] = json!("saved-secret");
    saved["allow_insecure_auth"] = json!(true);
    assert_eq!(app.put_smtp(&saved).await.status, 200);

    // The saved settings, and a draft for the same account without a password, use it.
    assert_eq!(run_test(&app, json!({})).await["ok"], true);
    let mut same = saved.clone();
    same.as_object_mut().unwrap().remove("password");
    same["timeout_seconds"] = json!(3);
    assert_eq!(run_test(&app, json!({"settings": same})).await["ok"], true);

    // A draft for another port must not carry it there.
    let mut moved = same.clone();
    moved["port"] = json!(other_server.port);
    let report = run_test(&app, json!({"settings": moved})).await;
    assert_failed(&report, "auth_failed", "auth");
    assert!(
        other_server
            .auth_attempts()
            .iter()
            .all(|(_, p)| p != "saved-secret"),
        "{:?}",
        other_server.auth_attempts()
    );
}

#[tokio::test]
async fn a_draft_that_weakens_tls_never_receives_the_saved_password() {
    let cert = TestCert::new(&["localhost"]);
    let (app, _ca) = app_trusting(&cert).await;
    let server = SmtpServer::start(Behaviour {
        starttls: Some(cert.acceptor.clone()),
        auth: Some(("mailer".into(), "saved-secret".into())),
        ..Default::default()
    })
    .await;
    let saved = json!({"host": "localhost", "port": server.port, "security": "starttls",
        "username": "mailer", "password": "saved-secret", "from_address": "portal@example.com",
        "timeout_seconds": 5});
    assert_eq!(app.put_smtp(&saved).await.status, 200);
    assert_eq!(
        run_test(&app, json!({})).await["ok"],
        true,
        "the saved settings work"
    );
    let before = server.auth_attempts().len();

    // A token that may only test (not read or write settings) tries to pull the password out in
    // clear text, then to an unverified certificate.
    let tester = token("smtp:test");
    let mut plaintext = saved.clone();
    plaintext.as_object_mut().unwrap().remove("password");
    plaintext["security"] = json!("none");
    plaintext["allow_insecure_auth"] = json!(true);
    let mut unverified = saved.clone();
    unverified.as_object_mut().unwrap().remove("password");
    unverified["tls_verify"] = json!(false);
    for draft in [plaintext, unverified] {
        let reply = app
            .post("/settings/smtp/test", &tester, &json!({"settings": draft}))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json()["ok"], false, "{}", reply.text);
    }
    let leaked: Vec<_> = server.auth_attempts()[before..]
        .iter()
        .filter(|(_, p)| p == "saved-secret")
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "the saved password was sent: {leaked:?}");
}

#[tokio::test]
async fn a_put_that_weakens_tls_drops_the_stored_password() {
    let app = spawn_app().await;
    let saved = json!({"host": "smtp.example.com", "port": 587, "security": "starttls",
        "username": "mailer", "password": "saved-secret", "from_address": "portal@example.com"});
    for (field, value) in [("security", json!("none")), ("tls_verify", json!(false))] {
        assert_eq!(app.put_smtp(&saved).await.json()["password_set"], true);
        let mut weaker = saved.clone();
        weaker.as_object_mut().unwrap().remove("password");
        weaker[field] = value;
        weaker["allow_insecure_auth"] = json!(true);
        let reply = app.put_smtp(&weaker).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.json()["password_set"],
            false,
            "changing {field} must drop the stored password"
        );
    }
}

#[tokio::test]
async fn link_local_and_metadata_addresses_are_refused_before_connecting() {
    let app = spawn_app().await;
    // Literals are refused as the draft is read, like a PUT, before anything resolves or connects.
    for host in ["169.254.169.254", "fe80::1", "fd00:ec2::254"] {
        let reply = app
            .post(
                "/settings/smtp/test",
                &admin_token(),
                &json!({"settings": {"host": host, "port": 25, "security": "none"}}),
            )
            .await;
        assert_eq!(
            reply.field_errors(),
            [("settings.host".to_string(), "host_not_allowed".to_string())],
            "{host}: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn the_allow_list_is_the_only_place_tests_may_connect_to() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("MAILROOM_SMTP_ALLOWED_HOSTS", "smtp.example.com")],
    )
    .await
    .unwrap();
    let server = SmtpServer::start(Behaviour::default()).await;
    let report = run_test(&app, json!({"settings": plain(server.port)})).await;
    assert_failed(&report, "host_not_allowed", "resolve");
    assert!(report["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("MAILROOM_SMTP_ALLOWED_HOSTS"));
}

#[tokio::test]
async fn tests_are_rate_limited_per_token_subject() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_SMTP_TEST_RATE_PER_MINUTE", "2")])
        .await
        .unwrap();
    let server = SmtpServer::start(Behaviour::default()).await;
    let body = json!({"settings": plain(server.port)});
    for _ in 0..2 {
        assert_eq!(
            app.post("/settings/smtp/test", &admin_token(), &body)
                .await
                .status,
            200
        );
    }
    let limited = app.post("/settings/smtp/test", &admin_token(), &body).await;
    limited.problem(429, "rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    // Another subject has its own budget.
    let other = token_with(
        json!({"sub": "someone-else", "exp": jsonwebtoken::get_current_timestamp() + 600, "scope": "smtp:test"}),
    );
    assert_eq!(app.post("/settings/smtp/test", &other, &body).await.status, 200);
}

#[tokio::test]
async fn a_test_message_arrives_with_the_expected_headers_and_the_test_is_audited() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    let mut settings = plain(server.port);
    settings["from_name"] = json!("Developer Portal");
    let report = run_test(&app, json!({"settings": settings, "to": "admin@example.com"})).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["message_sent"], true);
    assert_eq!(
        step_names(&report),
        [
            "resolve",
            "connect",
            "greeting",
            "ehlo",
            "mail_from",
            "rcpt_to",
            "data"
        ]
    );
    assert!(report["steps"][6]["detail"]
        .as_str()
        .unwrap()
        .contains("queued as TEST1"));
    let received = server.wait_for(1, Duration::from_secs(5)).await;
    let msg = &received[0];
    assert_eq!(msg.rcpt_to, ["admin@example.com"]);
    assert_eq!(
        msg.header("From").unwrap(),
        "\"Developer Portal\" <portal@example.com>"
    );
    assert!(msg.header("Subject").unwrap().contains("mailroom test"));
    assert!(msg.header("Message-ID").is_some() && msg.header("Date").is_some());
    assert!(msg.data.contains(&format!("127.0.0.1:{}", server.port)));

    let audit = app.get("/settings/audit", &admin_token()).await;
    assert!(
        !audit.text.contains("admin@example.com"),
        "the recipient is in the audit log"
    );
    let entry = &audit.json()["entries"][0];
    assert_eq!(entry["action"], "smtp.tested");
    assert_eq!(entry["actor"], "test-admin");
    assert_eq!(entry["details"]["ok"], true);
    assert_eq!(entry["details"]["server"]["port"], server.port);
}

#[tokio::test]
async fn without_saved_settings_or_a_draft_the_test_is_a_409_and_bad_drafts_are_422() {
    let app = spawn_app().await;
    app.post("/settings/smtp/test", &admin_token(), &json!({}))
        .await
        .problem(409, "smtp_not_configured");
    let empty = app
        .send(
            app.client
                .post(app.url("/settings/smtp/test"))
                .bearer_auth(admin_token()),
        )
        .await;
    empty.problem(409, "smtp_not_configured");
    let mut fields = app
        .post(
            "/settings/smtp/test",
            &admin_token(),
            &json!({"settings": {"host": "", "port": 0}, "to": "nope"}),
        )
        .await
        .field_errors();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("settings.host", "invalid_host"),
            ("settings.port", "out_of_range"),
            ("to", "invalid_email")
        ]
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect::<Vec<_>>()
    );
    app.post("/settings/smtp/test", &token("settings:write"), &json!({}))
        .await
        .problem(403, "insufficient_scope");
}

/// The test walks the session delivery uses: against a server that offers PIPELINING, its message
/// goes as delivery's do (MAIL, RCPT and DATA in one write), and each step is still reported.
#[tokio::test]
async fn the_test_message_is_pipelined_like_delivery_when_the_server_offers_it() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        ..Default::default()
    })
    .await;
    let report = run_test(
        &app,
        json!({"settings": plain(server.port), "to": "ada@example.com"}),
    )
    .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["message_sent"], true, "{report}");
    assert_eq!(
        step_names(&report),
        [
            "resolve",
            "connect",
            "greeting",
            "ehlo",
            "mail_from",
            "rcpt_to",
            "data"
        ],
        "{report}"
    );
    assert_eq!(server.pipelined(), 1, "the test message was not pipelined");
    assert_eq!(server.received().len(), 1);
}

/// A pipelined refusal is still reported at the step it belongs to.
#[tokio::test]
async fn a_recipient_refused_in_a_pipelined_batch_is_recipient_rejected() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        pipelining: true,
        rcpt_reply: Some((550, "5.1.1 User unknown".into())),
        ..Default::default()
    })
    .await;
    let report = run_test(
        &app,
        json!({"settings": plain(server.port), "to": "nobody@example.com"}),
    )
    .await;
    assert_failed(&report, "recipient_rejected", "rcpt_to");
    assert_eq!(server.pipelined(), 1, "{report}");
}
