use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

fn full_settings() -> serde_json::Value {
    json!({
        "host": "email-smtp.us-west-2.amazonaws.com",
        "port": 587,
        "security": "starttls",
        "username": "AKIAEXAMPLE",
        "password": "hunter2-very-secret",
        "from_address": "portal@example.com",
        "from_name": "Developer Portal",
        "reply_to": "support@example.com",
        "timeout_seconds": 20
    })
}

async fn get_before_put_answers_unconfigured(app: TestApp) {
    let reply = app.get("/settings/smtp", &admin_token()).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["configured"], false);
    assert_eq!(body["password_set"], false);
    assert_eq!(body["timeout_seconds"], 10);
    assert!(reply.header("etag").is_some());
}

async fn put_then_get_round_trips_every_field_but_never_the_password(app: TestApp) {
    let put = app.put_smtp(&full_settings()).await;
    assert_eq!(put.status, 200, "{}", put.text);
    let get = app.get("/settings/smtp", &admin_token()).await;
    for reply in [&put, &get] {
        assert!(!reply.text.contains("hunter2"), "password leaked: {}", reply.text);
        let body = reply.json();
        assert!(body.get("password").is_none());
        assert_eq!(body["configured"], true);
        assert_eq!(body["password_set"], true);
        assert_eq!(body["host"], "email-smtp.us-west-2.amazonaws.com");
        assert_eq!(body["port"], 587);
        assert_eq!(body["security"], "starttls");
        assert_eq!(body["username"], "AKIAEXAMPLE");
        assert_eq!(body["from_address"], "portal@example.com");
        assert_eq!(body["from_name"], "Developer Portal");
        assert_eq!(body["reply_to"], "support@example.com");
        assert_eq!(body["timeout_seconds"], 20);
        assert_eq!(body["updated_by"], "test-admin");
        assert!(body["updated_at"].is_string());
    }
}

async fn a_put_without_password_keeps_it_only_for_the_same_host_port_and_username(app: TestApp) {
    app.put_smtp(&full_settings()).await;
    let mut same = full_settings();
    same.as_object_mut().unwrap().remove("password");
    same["from_name"] = json!("Renamed Portal");
    assert_eq!(app.put_smtp(&same).await.json()["password_set"], true);

    // An empty password from a form field also means "keep".
    same["password"] = json!("");
    assert_eq!(app.put_smtp(&same).await.json()["password_set"], true);

    for (field, value) in [
        ("host", json!("smtp.attacker.example")),
        ("port", json!(2525)),
        ("username", json!("other")),
    ] {
        app.put_smtp(&full_settings()).await;
        let mut changed = full_settings();
        changed.as_object_mut().unwrap().remove("password");
        changed[field] = value;
        let body = app.put_smtp(&changed).await.json();
        assert_eq!(
            body["password_set"], false,
            "changing {field} must drop the stored password"
        );
    }

    // null removes it explicitly.
    app.put_smtp(&full_settings()).await;
    let mut removed = full_settings();
    removed["password"] = json!(null);
    assert_eq!(app.put_smtp(&removed).await.json()["password_set"], false);
}

async fn a_stale_if_match_gets_412_and_the_current_etag_succeeds(app: TestApp) {
    let first = app.get("/settings/smtp", &admin_token()).await;
    let etag = first.header("etag").unwrap();
    let put = app
        .send(
            app.client
                .put(app.url("/settings/smtp"))
                .bearer_auth(admin_token())
                .header("If-Match", &etag)
                .json(&full_settings()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let new_etag = put.header("etag").unwrap();
    assert_ne!(new_etag, etag);
    let stale = app
        .send(
            app.client
                .put(app.url("/settings/smtp"))
                .bearer_auth(admin_token())
                .header("If-Match", &etag)
                .json(&full_settings()),
        )
        .await;
    stale.problem(412, "precondition_failed");
    assert_eq!(
        app.get("/settings/smtp", &admin_token()).await.header("etag"),
        Some(new_etag)
    );
}

async fn every_change_is_audited_with_secrets_shown_only_as_changed(app: TestApp) {
    app.put_smtp(&full_settings()).await;
    let mut next = full_settings();
    next["host"] = json!("smtp.example.com");
    next["password"] = json!("another-secret-value");
    app.put_smtp(&next).await;
    app.put(
        "/settings/admin-email",
        &admin_token(),
        &json!({"email": "admins@example.com"}),
    )
    .await;

    let reply = app.get("/settings/audit?limit=2", &admin_token()).await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text.contains("secret-value") && !reply.text.contains("hunter2"),
        "{}",
        reply.text
    );
    let page = reply.json();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["resource"], "admin_email");
    assert_eq!(entries[1]["resource"], "smtp");
    assert_eq!(entries[1]["actor"], "test-admin");
    let changes = entries[1]["details"]["changes"].as_array().unwrap();
    let host = changes.iter().find(|c| c["field"] == "host").unwrap();
    assert_eq!(host["old"], "email-smtp.us-west-2.amazonaws.com");
    assert_eq!(host["new"], "smtp.example.com");
    let password = changes.iter().find(|c| c["field"] == "password").unwrap();
    assert_eq!(password, &json!({"field": "password", "change": "changed"}));
    assert!(
        changes.iter().all(|c| c["field"] != "port"),
        "unchanged fields are not listed"
    );

    // The cursor leads to the older first entry, and then the end.
    let cursor = page["next_cursor"].as_str().unwrap();
    let older = app
        .get(
            &format!("/settings/audit?limit=2&cursor={cursor}"),
            &admin_token(),
        )
        .await
        .json();
    assert_eq!(older["entries"].as_array().unwrap().len(), 1);
    assert!(older["next_cursor"].is_null());
}

on_both_backends! {
    unconfigured_get => get_before_put_answers_unconfigured;
    round_trip => put_then_get_round_trips_every_field_but_never_the_password;
    stored_password_rule => a_put_without_password_keeps_it_only_for_the_same_host_port_and_username;
    if_match => a_stale_if_match_gets_412_and_the_current_etag_succeeds;
    audit => every_change_is_audited_with_secrets_shown_only_as_changed;
}

#[tokio::test]
async fn every_invalid_field_is_listed_at_once() {
    let app = spawn_app().await;
    let reply = app
        .put_smtp(&json!({
            "host": "smtp://smtp.example.com",
            "port": 70000,
            "security": "ssl",
            "username": "user\r\nX-Injected: 1",
            "password": 12345,
            "from_address": "Portal <portal@example.com>",
            "from_name": "Portal\nBcc: eve@example.com",
            "reply_to": "not-an-address",
            "timeout_seconds": 0,
            "tls_verify": "yes"
        }))
        .await;
    let mut fields = reply.field_errors();
    fields.sort();
    let expected: Vec<(String, String)> = [
        ("from_address", "invalid_email"),
        ("from_name", "line_break"),
        ("host", "invalid_host"),
        ("password", "invalid_type"),
        ("port", "out_of_range"),
        ("reply_to", "invalid_email"),
        ("security", "invalid_choice"),
        ("timeout_seconds", "out_of_range"),
        ("tls_verify", "invalid_type"),
        ("username", "line_break"),
    ]
    .iter()
    .map(|(f, c)| (f.to_string(), c.to_string()))
    .collect();
    assert_eq!(fields, expected);
    assert!(
        !reply.text.contains("12345"),
        "the rejected password is echoed: {}",
        reply.text
    );
}

#[tokio::test]
async fn host_is_required_and_port_and_security_default_sensibly() {
    let app = spawn_app().await;
    assert_eq!(
        app.put_smtp(&json!({})).await.field_errors(),
        vec![("host".to_string(), "required".to_string())]
    );
    let body = app.put_smtp(&json!({"host": "smtp.example.com"})).await.json();
    assert_eq!(
        (body["port"].clone(), body["security"].clone()),
        (json!(587), json!("starttls"))
    );
    let body = app
        .put_smtp(&json!({"host": "smtp.example.com", "port": 465}))
        .await
        .json();
    assert_eq!(body["security"], "tls");
    let body = app
        .put_smtp(&json!({"host": "smtp.example.com", "security": "none"}))
        .await
        .json();
    assert_eq!(body["port"], 25);
}

#[tokio::test]
async fn a_username_without_tls_is_refused_unless_insecure_auth_is_allowed() {
    let app = spawn_app().await;
    let plain =
        json!({"host": "relay.internal", "port": 25, "security": "none", "username": "u", "password": "p"});
    let fields = app.put_smtp(&plain).await.field_errors();
    assert_eq!(
        fields,
        vec![("security".to_string(), "insecure_auth".to_string())]
    );
    let mut allowed = plain.clone();
    allowed["allow_insecure_auth"] = json!(true);
    let reply = app.put_smtp(&allowed).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["allow_insecure_auth"], true);
}

#[tokio::test]
async fn a_password_without_a_username_is_refused() {
    let app = spawn_app().await;
    let fields = app
        .put_smtp(&json!({"host": "smtp.example.com", "password": "p"}))
        .await
        .field_errors();
    assert_eq!(
        fields,
        vec![("password".to_string(), "password_without_username".to_string())]
    );
}

#[tokio::test]
async fn the_password_is_stored_encrypted_not_in_clear_text() {
    let app = spawn_app().await;
    assert_eq!(app.put_smtp(&full_settings()).await.status, 200);
    // Read every file of the database (main file and WAL) as raw bytes.
    let mut all = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("mailroom.db")
        {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    let hay = String::from_utf8_lossy(&all);
    assert!(
        hay.contains("AKIAEXAMPLE"),
        "the settings row was not found in the database files"
    );
    assert!(
        !hay.contains("hunter2-very-secret"),
        "clear-text password in the database"
    );
    // And it is really stored: a new PUT for the same account still has it.
    let mut keep = full_settings();
    keep.as_object_mut().unwrap().remove("password");
    assert_eq!(app.put_smtp(&keep).await.json()["password_set"], true);
}
