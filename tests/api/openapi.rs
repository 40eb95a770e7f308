use crate::helpers::*;

#[tokio::test]
async fn the_committed_openapi_document_matches_what_the_binary_serves() {
    let app = spawn_app().await;
    let served = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(served.status, 200);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .expect("openapi/openapi.json is committed");
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        served.json() == committed,
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn the_document_covers_every_route_with_bearer_security_and_problem_responses() {
    let doc = mailroom::openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/settings/smtp",
        "/settings/subjects",
        "/settings/admin-email",
        "/settings/audit",
        "/events",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let put = &doc["paths"]["/settings/smtp"]["put"];
    assert!(put["security"][0]["bearer"].is_array());
    assert!(put["responses"]["422"]["content"]["application/problem+json"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test]
async fn swagger_ui_is_served_without_the_internet() {
    let app = spawn_app().await;
    let docs = app.send(app.client.get(app.url("/docs/"))).await;
    assert_eq!(docs.status, 200);
    assert!(docs.text.to_lowercase().contains("swagger"));
    // reqwest follows the redirect from /docs to /docs/.
    let bare = app.send(app.client.get(app.url("/docs"))).await;
    assert_eq!(bare.status, 200);
    assert!(bare.text.to_lowercase().contains("swagger"));
}
