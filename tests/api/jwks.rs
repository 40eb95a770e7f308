//! Tokens of an OpenID Connect provider, verified with the keys it publishes at
//! `MAILROOM_JWT_JWKS_URL` (a provider on 127.0.0.1 here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const FIRST_KEY: &str = include_str!("../fixtures/google-test-key.pem");
const SECOND_KEY: &str = include_str!("../fixtures/oidc-test-key.pem");

/// A provider that publishes the first fixture key as `k1`; returns its issuer URL and a count
/// of key-set requests.
async fn provider() -> (String, Arc<AtomicUsize>) {
    let moduli: Value = serde_json::from_str(include_str!("../fixtures/oidc-test-moduli.json")).unwrap();
    let body = json!({"keys": [
        {"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": moduli["first"], "e": "AQAB"}
    ]})
    .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    (issuer, hits)
}

async fn app_for(issuer: &str) -> TestApp {
    let jwks = format!("{issuer}/jwks");
    spawn_app_with(
        Backend::Sqlite,
        &[("MAILROOM_JWT_JWKS_URL", &jwks), ("MAILROOM_JWT_ISSUER", issuer)],
    )
    .await
    .unwrap()
}

fn provider_token(pem: &str, kid: Option<&str>, issuer: &str, scope: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let claims =
        json!({"sub": "ada@idp", "iss": issuer, "exp": exp, "scope": format!("openid profile {scope}")});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_signed_with_a_key_the_issuer_publishes_is_accepted_with_its_scopes() {
    let (issuer, hits) = provider().await;
    let app = app_for(&issuer).await;
    let token = provider_token(FIRST_KEY, Some("k1"), &issuer, "settings:read");
    for _ in 0..3 {
        let reply = app.get("/settings/smtp", &token).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the key set is cached");
    let write = app
        .put(
            "/settings/admin-email",
            &token,
            &json!({"email": "ops@example.com"}),
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.text);
    // Tokens of the configured secret still work beside the provider's (with its issuer).
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let minted = token_with(json!({"sub": "admin", "iss": issuer, "exp": exp, "scope": "settings:read"}));
    let reply = app.get("/settings/smtp", &minted).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn tokens_the_issuers_keys_do_not_verify_are_refused() {
    let (issuer, _) = provider().await;
    let app = app_for(&issuer).await;
    let cases = [
        (
            "a key the issuer does not publish",
            provider_token(SECOND_KEY, Some("k1"), &issuer, "settings:read"),
        ),
        (
            "a key id the issuer does not publish",
            provider_token(FIRST_KEY, Some("k2"), &issuer, "settings:read"),
        ),
        (
            "another issuer",
            provider_token(FIRST_KEY, Some("k1"), "https://evil.example", "settings:read"),
        ),
    ];
    for (what, token) in cases {
        let reply = app.get("/settings/smtp", &token).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text);
        assert_eq!(reply.json()["code"], "unauthorized", "{what}");
    }
}

#[tokio::test]
async fn an_hs256_token_naming_a_published_key_is_refused() {
    let (issuer, hits) = provider().await;
    let app = app_for(&issuer).await;
    let moduli: Value = serde_json::from_str(include_str!("../fixtures/oidc-test-moduli.json")).unwrap();
    // The algorithm-confusion attack: the public key's bytes used as an HMAC secret.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let claims = json!({"sub": "eve", "iss": issuer, "exp": exp, "scope": "settings:write"});
    let secret = moduli["first"].as_str().unwrap().as_bytes();
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
    let reply = app.get("/settings/smtp", &token).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no key set is fetched for an HMAC token"
    );
}

#[tokio::test]
async fn a_jwks_url_at_a_metadata_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let mut vars = base_vars(dir.path(), &url);
    vars.insert(
        "MAILROOM_JWT_JWKS_URL".into(),
        "http://169.254.169.254/latest/keys".into(),
    );
    let config = mailroom::config::Config::from_vars(&vars).unwrap();
    let error = mailroom::startup::Application::build(config)
        .await
        .err()
        .expect("the start is refused");
    assert!(
        format!("{error:#}").contains("MAILROOM_JWT_JWKS_URL"),
        "{error:#}"
    );
}
