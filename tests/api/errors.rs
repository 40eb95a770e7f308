use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .put(app.url("/settings/smtp"))
                .bearer_auth(admin_token())
                .header("Content-Type", "application/json")
                .body("{\"host\": "),
        )
        .await;
    reply.problem(400, "malformed_json");
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_a_422_naming_the_body() {
    let app = spawn_app().await;
    let reply = app.put_smtp(&json!(["smtp.example.com"])).await;
    assert_eq!(
        reply.field_errors(),
        vec![("body".to_string(), "invalid_type".to_string())]
    );
}

#[tokio::test]
async fn a_wrong_content_type_is_a_415_problem() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .put(app.url("/settings/smtp"))
                .bearer_auth(admin_token())
                .header("Content-Type", "text/plain")
                .body("{\"host\": \"smtp.example.com\"}"),
        )
        .await;
    reply.problem(415, "unsupported_media_type");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem() {
    let app = spawn_app().await;
    let big = json!({"host": "smtp.example.com", "from_name": "x".repeat(5 * 1024 * 1024)});
    app.put_smtp(&big).await.problem(413, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405_with_allow() {
    let app = spawn_app().await;
    app.get("/no/such/route", &admin_token())
        .await
        .problem(404, "not_found");
    let reply = app
        .send(
            app.client
                .delete(app.url("/settings/smtp"))
                .bearer_auth(admin_token()),
        )
        .await;
    reply.problem(405, "method_not_allowed");
    assert_eq!(reply.header("allow").as_deref(), Some("GET, PUT"));
    let reply = app
        .send(
            app.client
                .post(app.url("/settings/subjects"))
                .bearer_auth(admin_token()),
        )
        .await;
    assert_eq!(reply.header("allow").as_deref(), Some("GET, PUT, PATCH"));
}

#[tokio::test]
async fn a_bad_query_parameter_is_a_422_problem() {
    let app = spawn_app().await;
    app.get("/settings/audit?limit=abc", &admin_token())
        .await
        .problem(422, "validation_failed");
    let fields = app
        .get("/settings/audit?limit=1000", &admin_token())
        .await
        .field_errors();
    assert_eq!(fields, vec![("limit".to_string(), "out_of_range".to_string())]);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
    let ready = app.send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["database"], "sqlite");
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("MAILROOM_CORS_ORIGINS", "https://admin.example.com")],
    )
    .await
    .unwrap();
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/settings/smtp"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PUT")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, if-match",
            )
    };
    let ok = app.send(preflight("https://admin.example.com")).await;
    assert!(ok.status < 300, "{}", ok.status);
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://admin.example.com")
    );
    let denied = app.send(preflight("https://evil.example.com")).await;
    assert!(denied.header("access-control-allow-origin").is_none());

    // A real request from the allowed origin can read the ETag and error bodies.
    let get = app
        .send(
            app.client
                .get(app.url("/settings/smtp"))
                .header("Origin", "https://admin.example.com")
                .bearer_auth(admin_token()),
        )
        .await;
    assert_eq!(
        get.header("access-control-allow-origin").as_deref(),
        Some("https://admin.example.com")
    );
    assert!(get
        .header("access-control-expose-headers")
        .unwrap()
        .to_lowercase()
        .contains("etag"));
    let unauthorized = app
        .send(
            app.client
                .get(app.url("/settings/smtp"))
                .header("Origin", "https://admin.example.com"),
        )
        .await;
    unauthorized.problem(401, "unauthorized");
    assert_eq!(
        unauthorized.header("access-control-allow-origin").as_deref(),
        Some("https://admin.example.com")
    );
}

/// The contract gaps schemathesis found from outside, each where the document and the server
/// disagreed.
#[tokio::test]
async fn the_server_and_the_document_agree_on_the_shapes_the_review_found_apart() {
    let app = spawn_app().await;
    // `null` is not an object, for the SMTP test as for every other body.
    let null = app
        .send(
            app.client
                .post(app.url("/settings/smtp/test"))
                .bearer_auth(admin_token())
                .header("Content-Type", "application/json")
                .body("null"),
        )
        .await;
    assert_eq!(null.status, 422, "{}", null.text);
    // A nested object given as an array is refused, not read as a sequence of fields.
    let preview = app
        .post(
            "/settings/templates/preview",
            &admin_token(),
            &json!({"event": "access_request_approved", "template": [null, null]}),
        )
        .await;
    assert_eq!(
        preview.field_errors(),
        vec![("template".to_string(), "invalid_type".to_string())],
        "{}",
        preview.text
    );
    // 8256.0 is an integer to JSON Schema, and to the server.
    let port = app
        .put_smtp(
            &json!({"host": "127.0.0.1", "port": 8256.0, "timeout_seconds": 5.0, "security": "none",
                          "from_address": "portal@example.com"}),
        )
        .await;
    assert_eq!(port.status, 200, "{}", port.text);
    assert_eq!(port.json()["port"], 8256);
    // An empty If-Match names no tag: as if absent.
    let empty = app
        .send(
            app.client
                .put(app.url("/settings/admin-email"))
                .bearer_auth(admin_token())
                .header("If-Match", "")
                .json(&json!({"email": "ops@example.com"})),
        )
        .await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    // An invalid body is a 422 whatever If-Match says.
    let invalid = app
        .send(
            app.client
                .patch(app.url("/settings/subjects"))
                .bearer_auth(admin_token())
                .header("If-Match", "\"999\"")
                .json(&json!({})),
        )
        .await;
    assert_eq!(invalid.status, 422, "{}", invalid.text);
    // HEAD is GET without a body.
    let head = app
        .send(
            app.client
                .head(app.url("/settings/smtp"))
                .bearer_auth(admin_token()),
        )
        .await;
    assert_eq!(head.status, 200, "{}", head.text);
    assert!(head.text.is_empty());
    // The document says what the server checks: locale paths, audit cursors, non-empty templates.
    let doc = mailroom::openapi::document();
    let locale = &doc["paths"]["/settings/templates/{event}/{locale}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "locale")
        .unwrap()["schema"];
    assert!(locale["pattern"].is_string(), "{locale}");
    assert_eq!(doc["components"]["schemas"]["TemplateInput"]["minProperties"], 1);
    let keys =
        &doc["components"]["schemas"]["SubjectsInput"]["properties"]["subjects"]["propertyNames"]["enum"];
    assert!(
        keys.as_array()
            .unwrap()
            .contains(&json!("access_request_approved")),
        "{keys}"
    );
}
