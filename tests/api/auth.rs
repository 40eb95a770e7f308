use serde_json::json;

use crate::helpers::*;

/// Every protected route with a body that would pass validation, and the scope it needs.
fn protected_routes() -> Vec<(&'static str, &'static str, serde_json::Value, &'static str)> {
    vec![
        ("GET", "/settings/smtp", json!(null), "settings:read"),
        (
            "PUT",
            "/settings/smtp",
            json!({"host": "smtp.example.com"}),
            "settings:write",
        ),
        ("GET", "/settings/subjects", json!(null), "settings:read"),
        (
            "PUT",
            "/settings/subjects",
            json!({"subjects": {}}),
            "settings:write",
        ),
        (
            "PATCH",
            "/settings/subjects",
            json!({"subjects": {}}),
            "settings:write",
        ),
        ("GET", "/settings/admin-email", json!(null), "settings:read"),
        (
            "PUT",
            "/settings/admin-email",
            json!({"email": "admins@example.com"}),
            "settings:write",
        ),
        ("GET", "/settings/audit", json!(null), "settings:read"),
    ]
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Reply {
    let mut req = app.client.request(method.parse().unwrap(), app.url(path));
    if !body.is_null() {
        req = req.json(body);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

fn assert_invalid_token(reply: &Reply) {
    reply.problem(401, "unauthorized");
    let challenge = reply
        .header("www-authenticate")
        .expect("a WWW-Authenticate header");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn every_protected_route_answers_401_with_a_bearer_challenge_without_a_token() {
    let app = spawn_app().await;
    for (method, path, body, _) in protected_routes() {
        let reply = call(&app, method, path, &body, None).await;
        assert_invalid_token(&reply);
        let reply = app
            .send(
                app.client
                    .request(method.parse().unwrap(), app.url(path))
                    .header("Authorization", "Basic YTpi"),
            )
            .await;
        assert_invalid_token(&reply);
    }
}

#[tokio::test]
async fn each_route_answers_403_without_its_scope_and_200_with_it() {
    let app = spawn_app().await;
    for (method, path, body, scope) in protected_routes() {
        let others: Vec<&str> = ALL_SCOPES.split(' ').filter(|s| *s != scope).collect();
        let reply = call(&app, method, path, &body, Some(&token(&others.join(" ")))).await;
        reply.problem(403, "insufficient_scope");
        assert!(reply
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope"));
        let reply = call(&app, method, path, &body, Some(&token(scope))).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text);
    }
}

#[tokio::test]
async fn expired_future_unsigned_and_foreign_tokens_are_rejected() {
    let app = spawn_app().await;
    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        token_with(json!({"sub": "a", "scope": ALL_SCOPES, "exp": now - 3600})),
        token_with(json!({"sub": "a", "scope": ALL_SCOPES, "exp": now + 3600, "nbf": now + 3600})),
        token_with(json!({"sub": "a", "scope": ALL_SCOPES})),
        token_with(json!({"scope": ALL_SCOPES, "exp": now + 3600})),
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "a", "scope": ALL_SCOPES, "exp": now + 3600}),
            &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-some-other-secret"),
        )
        .unwrap(),
        "not-a-jwt".to_string(),
    ];
    for token in cases {
        assert_invalid_token(&app.get("/settings/smtp", &token).await);
    }
}

#[tokio::test]
async fn scopes_can_come_from_an_scp_array_and_the_admin_role_grants_all() {
    let app = spawn_app().await;
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let scp = token_with(json!({"sub": "bot", "exp": exp, "scp": ["settings:read"]}));
    assert_eq!(app.get("/settings/smtp", &scp).await.status, 200);
    app.put("/settings/admin-email", &scp, &json!({"email": "a@example.com"}))
        .await
        .problem(403, "insufficient_scope");
    let admin = token_with(json!({"sub": "root", "exp": exp, "roles": ["admin"]}));
    assert_eq!(
        app.put(
            "/settings/admin-email",
            &admin,
            &json!({"email": "a@example.com"})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("MAILROOM_JWT_ISSUER", "https://idp.example.com"),
            ("MAILROOM_JWT_AUDIENCE", "mailroom"),
        ],
    )
    .await
    .unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let good = token_with(
        json!({"sub": "a", "exp": exp, "scope": "settings:read", "iss": "https://idp.example.com", "aud": "mailroom"}),
    );
    assert_eq!(app.get("/settings/smtp", &good).await.status, 200);
    for bad in [
        json!({"sub": "a", "exp": exp, "scope": "settings:read", "iss": "https://evil.example.com", "aud": "mailroom"}),
        json!({"sub": "a", "exp": exp, "scope": "settings:read", "iss": "https://idp.example.com", "aud": "other"}),
        json!({"sub": "a", "exp": exp, "scope": "settings:read"}),
    ] {
        assert_invalid_token(&app.get("/settings/smtp", &token_with(bad)).await);
    }
}

#[tokio::test]
async fn an_es256_public_key_verifies_tokens_signed_by_its_private_key() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("jwt.pub.pem");
    std::fs::write(&pem_path, key.public_key_pem()).unwrap();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("MAILROOM_JWT_PUBLIC_KEY_FILE", pem_path.to_str().unwrap())],
    )
    .await
    .unwrap();
    let claims = json!({"sub": "idp-user", "exp": jsonwebtoken::get_current_timestamp() + 600, "scope": "settings:read"});
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let es256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &signing,
    )
    .unwrap();
    assert_eq!(app.get("/settings/smtp", &es256).await.status, 200);
    // The HS256 secret still works beside the key, and a token from another key does not.
    assert_eq!(
        app.get("/settings/smtp", &token("settings:read")).await.status,
        200
    );
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged_key = jsonwebtoken::EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &forged_key,
    )
    .unwrap();
    assert_invalid_token(&app.get("/settings/smtp", &forged).await);
}
