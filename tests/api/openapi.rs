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

/// The document as code generators read it (issue: typed TypeScript and Python clients).
#[test]
fn the_document_is_shaped_for_code_generators() {
    let doc = mailroom::openapi::document();
    let schemas = &doc["components"]["schemas"];
    // Free-form objects become `Record<string, never>` in TypeScript: each has a real shape.
    assert!(schemas["TemplateData"]["additionalProperties"].is_object());
    assert_eq!(
        schemas["NotificationRequest"]["properties"]["data"]["$ref"],
        "#/components/schemas/TemplateData"
    );
    assert_eq!(
        schemas["Stats"]["properties"]["counts"]["$ref"],
        "#/components/schemas/StatusCounts"
    );
    assert_eq!(
        schemas["AuditEntry"]["properties"]["details"]["$ref"],
        "#/components/schemas/AuditDetails"
    );
    for (schema, field) in [("SmtpSettingsInput", "host"), ("NotificationRequest", "event")] {
        let required = schemas[schema]["required"].as_array().unwrap();
        assert!(
            required.iter().any(|r| r == field),
            "{schema}.{field} is not required"
        );
    }
    for name in ["StepName", "ErrorCode", "AttemptOutcome", "WebhookDeliveryStatus"] {
        assert!(
            schemas[name]["enum"].is_array() || schemas[name]["oneOf"].is_array(),
            "{name}"
        );
    }
    let test_body = &doc["paths"]["/settings/smtp/test"]["post"]["requestBody"];
    assert_eq!(test_body["required"], false);
    assert_eq!(
        test_body["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SmtpTestRequest"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "header" {
                    assert_eq!(p["schema"]["type"], "string", "{method} {path} {}", p["name"]);
                }
            }
            let responses = &op["responses"];
            if op.get("requestBody").is_some() {
                for code in ["413", "415"] {
                    assert!(responses.get(code).is_some(), "{method} {path} lacks {code}");
                }
            }
            if let Some(r) = responses.get("401") {
                assert!(r["headers"]["WWW-Authenticate"].is_object(), "{method} {path}");
            }
            if let Some(r) = responses.get("429") {
                assert!(r["headers"]["Retry-After"].is_object(), "{method} {path}");
            }
        }
    }
}
