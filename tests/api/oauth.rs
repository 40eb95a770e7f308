//! SMTP with OAuth 2.0: a real token endpoint on 127.0.0.1 (HTTP/1.1, form posts) and the test
//! SMTP server verifying `AUTH XOAUTH2` bearer tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);
const GOOGLE_KEY: &str = include_str!("../fixtures/google-test-key.pem");
const GOOGLE_PUBLIC_KEY: &str = include_str!("../fixtures/google-test-key.pub.pem");

/// What the endpoint answers: a token (`tok-1`, `tok-2`, ... per request), or an error.
#[derive(Clone)]
enum Answer {
    Token {
        expires_in: u64,
        rotate: bool,
    },
    Error {
        status: u16,
        body: Value,
    },
    /// A JSON body that never ends (1.5 GB were sent in the review), with or without a length.
    Endless {
        declared: bool,
    },
}

struct EndpointState {
    answer: Answer,
    requests: Vec<HashMap<String, String>>,
    /// When set, a JWT-bearer assertion must verify with this public key for this audience.
    verify_assertion: Option<String>,
}

#[derive(Clone)]
struct TokenEndpoint {
    url: String,
    state: Arc<Mutex<EndpointState>>,
}

impl TokenEndpoint {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/oauth2/token",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(EndpointState {
            answer,
            requests: Vec::new(),
            verify_assertion: None,
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, s).await;
                });
            }
        });
        Self { url, state }
    }

    fn requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn form_decode(body: &str) -> HashMap<String, String> {
    url_decode_pairs(body)
}

fn url_decode_pairs(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<EndpointState>>) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    let form = form_decode(&String::from_utf8_lossy(&body));
    let (status, json) = {
        let mut st = state.lock().unwrap();
        st.requests.push(form.clone());
        let n = st.requests.len();
        let assertion_ok = match (&st.verify_assertion, form.get("assertion")) {
            (Some(audience), Some(assertion)) => verify_google_assertion(assertion, audience).is_ok(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if !assertion_ok {
            (
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            )
        } else {
            match &st.answer {
                Answer::Token { expires_in, rotate } => {
                    let mut t = json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in});
                    if *rotate {
                        t["refresh_token"] = json!(format!("refresh-{n}"));
                    }
                    (200, t)
                }
                Answer::Error { status, body } => (*status, body.clone()),
                // Status 0: not a JSON answer, sent below (the lock is not held across it).
                Answer::Endless { declared } => (0, json!(declared)),
            }
        }
    };
    if status == 0 {
        return endless(io, json == json!(true)).await;
    }
    let body = json.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    io.get_mut().write_all(response.as_bytes()).await?;
    io.get_mut().shutdown().await
}

/// Sends a token answer padded with spaces until the client hangs up.
async fn endless(mut io: BufReader<tokio::net::TcpStream>, declared: bool) -> std::io::Result<()> {
    let length = if declared {
        "Content-Length: 1500000000\r\n"
    } else {
        ""
    };
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n{{\"access_token\": \"tok-1\", \"padding\": \"");
    io.get_mut().write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..(1_500_000_000 / chunk.len()) {
        io.get_mut().write_all(&chunk).await?;
    }
    Ok(())
}

fn verify_google_assertion(assertion: &str, audience: &str) -> Result<(), String> {
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(GOOGLE_PUBLIC_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["mailer@project.iam.gserviceaccount.com"]);
    let data = jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|e| e.to_string())?;
    let claims = data.claims;
    if claims["sub"] != "portal@contoso.example" || claims["scope"] != "https://mail.google.com/" {
        return Err(format!("unexpected claims {claims}"));
    }
    Ok(())
}

fn oauth_settings(smtp_port: u16, oauth2: Value) -> Value {
    json!({"host": "127.0.0.1", "port": smtp_port, "security": "none", "allow_insecure_auth": true,
           "username": "portal@contoso.example", "auth": "oauth2", "oauth2": oauth2,
           "from_address": "portal@contoso.example", "timeout_seconds": 5})
}

fn microsoft(endpoint: &TokenEndpoint) -> Value {
    json!({"provider": "microsoft", "tenant_id": "contoso-tenant", "client_id": "app-123",
           "client_secret": "app-secret-value", "token_url": endpoint.url})
}

async fn deliver(app: &TestApp, server: &SmtpServer, n: usize) {
    for i in 0..n {
        let reply = app
            .notify(&json!({"event": "user_deactivated", "to": format!("user{i}@example.com")}))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    server.wait_for(n, WAIT).await;
}

#[tokio::test]
async fn microsoft_client_credentials_send_many_messages_with_one_token() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec!["tok-1".into()]),
        ..Default::default()
    })
    .await;
    let reply = app
        .put_smtp(&oauth_settings(server.port, microsoft(&endpoint)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let view = reply.json();
    assert_eq!(view["auth"], "oauth2");
    assert_eq!(view["oauth2"]["client_secret_set"], true);
    assert!(!reply.text.contains("app-secret-value"), "{}", reply.text);

    deliver(&app, &server, 30).await;
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 1, "one token for every message");
    assert_eq!(requests[0]["grant_type"], "client_credentials");
    assert_eq!(requests[0]["client_id"], "app-123");
    assert_eq!(requests[0]["client_secret"], "app-secret-value");
    assert_eq!(requests[0]["scope"], "https://outlook.office365.com/.default");
    assert!(server
        .auth_attempts()
        .iter()
        .all(|(user, token)| user == "portal@contoso.example" && token == "tok-1"));
    assert!(server
        .received()
        .iter()
        .all(|m| m.authenticated_as.as_deref() == Some("portal@contoso.example")));
}

#[tokio::test]
async fn a_google_service_account_signs_an_assertion_the_endpoint_verifies() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    endpoint.state.lock().unwrap().verify_assertion = Some(endpoint.url.clone());
    let server = SmtpServer::start(Behaviour {
        // The SMTP test fetches its own token (tok-1), delivery then another (tok-2).
        xoauth2_tokens: Some(vec!["tok-1".into(), "tok-2".into()]),
        ..Default::default()
    })
    .await;
    let key = json!({"type": "service_account", "client_email": "mailer@project.iam.gserviceaccount.com",
                     "private_key": GOOGLE_KEY, "token_uri": "https://oauth2.googleapis.com/token"});
    let reply = app
        .put_smtp(&oauth_settings(
            server.port,
            json!({"provider": "google", "service_account_json": key.to_string(), "token_url": endpoint.url}),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(!reply.text.contains("PRIVATE KEY"));
    let report = app
        .post("/settings/smtp/test", &admin_token(), &json!({}))
        .await
        .json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["steps"][0]["step"], "oauth_token");
    deliver(&app, &server, 2).await;
    let requests = endpoint.requests();
    assert_eq!(
        requests.len(),
        2,
        "one token for the test, one shared by both messages"
    );
    assert!(requests
        .iter()
        .all(|r| r["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"));
}

#[tokio::test]
async fn a_refresh_token_is_used_rotated_and_stored_and_short_tokens_are_fetched_again() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 1,
        rotate: true,
    })
    .await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some((1..10).map(|n| format!("tok-{n}")).collect()),
        ..Default::default()
    })
    .await;
    let reply = app
        .put_smtp(&oauth_settings(
            server.port,
            json!({"provider": "generic", "token_url": endpoint.url, "client_id": "cli",
                   "client_secret": "cli-secret", "refresh_token": "refresh-original", "scope": "mail"}),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    deliver(&app, &server, 1).await;
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "second@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_for_status(&id, "sent", WAIT).await;
    let requests = endpoint.requests();
    assert!(requests.len() >= 2, "an expired token is fetched again");
    assert_eq!(requests[0]["grant_type"], "refresh_token");
    assert_eq!(requests[0]["refresh_token"], "refresh-original");
    assert_eq!(requests[0]["client_secret"], "cli-secret");
    assert_eq!(
        requests[1]["refresh_token"], "refresh-1",
        "the rotated refresh token is used"
    );
    // The rotated token is stored: a restart would use it (the settings document changed).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let audit_free = app.get("/settings/smtp", &admin_token()).await.json();
        if audit_free["updated_by"] == "mailroom" {
            assert_eq!(audit_free["oauth2"]["refresh_token_set"], true);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{audit_free}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_token_the_server_rejects_is_fetched_again_once_before_the_attempt_fails() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec!["tok-2".into()]),
        ..Default::default()
    })
    .await;
    app.put_smtp(&oauth_settings(server.port, microsoft(&endpoint)))
        .await;
    deliver(&app, &server, 1).await;
    assert_eq!(endpoint.requests().len(), 2);
    let tokens: Vec<String> = server.auth_attempts().into_iter().map(|(_, t)| t).collect();
    assert_eq!(tokens, ["tok-1", "tok-2"]);
}

#[tokio::test]
async fn token_endpoint_failures_defer_delivery_with_the_providers_words() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Error {
        status: 401,
        body: json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
    })
    .await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec![]),
        ..Default::default()
    })
    .await;
    app.put_smtp(&oauth_settings(server.port, microsoft(&endpoint)))
        .await;
    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    let n = loop {
        let n = app.notification(&id).await;
        if n["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            break n;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n["attempts"][0]["outcome"], "deferred", "{n}");
    let reply = n["attempts"][0]["reply"].as_str().unwrap();
    assert!(
        reply.contains("invalid_client") && reply.contains("AADSTS7000215"),
        "{reply}"
    );
    assert!(!reply.contains("app-secret-value"));
}

async fn smtp_test_error(answer: Answer) -> Value {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(answer).await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec![]),
        ..Default::default()
    })
    .await;
    let reply = app
        .put_smtp(&oauth_settings(server.port, microsoft(&endpoint)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let report = app
        .post("/settings/smtp/test", &admin_token(), &json!({}))
        .await
        .json();
    assert_eq!(report["ok"], false, "{report}");
    report
}

#[tokio::test]
async fn the_smtp_test_explains_each_token_failure() {
    for (answer, code, hint) in [
        (
            Answer::Error {
                status: 401,
                body: json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            },
            "oauth_invalid_client",
            "client secret is wrong or expired",
        ),
        (
            Answer::Error {
                status: 400,
                body: json!({"error": "unauthorized_client", "error_description": "AADSTS700016: Application not found in the directory."}),
            },
            "oauth_invalid_client",
            "not found in this tenant",
        ),
        (
            Answer::Error {
                status: 400,
                body: json!({"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}),
            },
            "oauth_token_failed",
            "tenant is not found",
        ),
        (
            Answer::Error {
                status: 400,
                body: json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
            },
            "oauth_invalid_grant",
            "refresh token or assertion was refused",
        ),
    ] {
        let report = smtp_test_error(answer).await;
        assert_eq!(report["error"]["step"], "oauth_token", "{report}");
        assert_eq!(report["error"]["code"], code, "{report}");
        assert!(
            report["error"]["hint"].as_str().unwrap().contains(hint),
            "{report}"
        );
    }
    // A token endpoint nobody listens on.
    let app = spawn_app().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut oauth = json!({"provider": "microsoft", "tenant_id": "t", "client_id": "c", "client_secret": "s",
                           "token_url": format!("http://127.0.0.1:{closed}/token")});
    let draft = oauth_settings(2525, oauth.take());
    let report = app
        .post("/settings/smtp/test", &admin_token(), &json!({"settings": draft}))
        .await
        .json();
    assert_eq!(report["error"]["code"], "oauth_unreachable", "{report}");
}

#[tokio::test]
async fn a_token_answer_larger_than_64_kib_is_refused_without_reading_it_all() {
    for declared in [true, false] {
        let started = std::time::Instant::now();
        let report = smtp_test_error(Answer::Endless { declared }).await;
        assert_eq!(report["error"]["step"], "oauth_token", "{report}");
        assert!(
            report["error"]["message"]
                .as_str()
                .unwrap()
                .contains("larger than 64 KiB"),
            "{report}"
        );
        // Reading 1.5 GB over loopback would take far longer than refusing after 64 KiB.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_refused_xoauth2_token_is_explained_from_the_servers_challenge() {
    let report = smtp_test_error(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    assert_eq!(report["error"]["step"], "auth", "{report}");
    assert_eq!(report["error"]["code"], "auth_failed", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("https://mail.google.com/") && message.contains("401"),
        "{message}"
    );
    assert!(
        !report.to_string().contains("tok-1"),
        "the access token leaked: {report}"
    );
}

#[tokio::test]
async fn oauth_secrets_are_kept_only_for_the_same_provider_and_client() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    assert_eq!(
        app.put_smtp(&oauth_settings(2525, microsoft(&endpoint)))
            .await
            .status,
        200
    );
    let mut same = microsoft(&endpoint);
    same.as_object_mut().unwrap().remove("client_secret");
    let reply = app.put_smtp(&oauth_settings(2525, same.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["oauth2"]["client_secret_set"], true);
    for (field, value) in [
        ("client_id", json!("another-app")),
        ("tenant_id", json!("another-tenant")),
        ("token_url", json!("http://127.0.0.1:9/other")),
    ] {
        let mut changed = same.clone();
        changed[field] = value;
        let reply = app.put_smtp(&oauth_settings(2525, changed)).await;
        assert_eq!(
            reply.field_errors(),
            [("oauth2.client_secret".to_string(), "required".to_string())],
            "changing {field} must not carry the secret over"
        );
    }
    let get = app.get("/settings/smtp", &admin_token()).await;
    assert!(!get.text.contains("app-secret-value"));
}

#[tokio::test]
async fn oauth_secrets_follow_the_smtp_server_and_account_like_the_password() {
    let app = spawn_app().await;
    let endpoint = TokenEndpoint::start(Answer::Token {
        expires_in: 3600,
        rotate: false,
    })
    .await;
    let server = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec!["tok-1".into()]),
        ..Default::default()
    })
    .await;
    let stored = oauth_settings(server.port, microsoft(&endpoint));
    assert_eq!(app.put_smtp(&stored).await.status, 200);
    let mut no_secret = microsoft(&endpoint);
    no_secret.as_object_mut().unwrap().remove("client_secret");

    // The caller's own server, which echoes whatever it is sent.
    let attacker = SmtpServer::start(Behaviour {
        xoauth2_tokens: Some(vec![]),
        echo_credentials: true,
        ..Default::default()
    })
    .await;
    let mut drafts = Vec::new();
    for (field, value) in [
        ("port", json!(attacker.port)),
        ("host", json!("localhost")),
        ("username", json!("eve@contoso.example")),
        ("security", json!("starttls")),
        ("tls_verify", json!(false)),
    ] {
        let mut draft = oauth_settings(server.port, no_secret.clone());
        draft[field] = value;
        drafts.push((field, draft));
    }
    for (field, draft) in &drafts {
        let reply = app.put_smtp(draft).await;
        assert_eq!(
            reply.field_errors(),
            [("oauth2.client_secret".to_string(), "required".to_string())],
            "a new {field} must not carry the secret over: {}",
            reply.text
        );
        let test = app
            .post(
                "/settings/smtp/test",
                &token("smtp:test"),
                &json!({"settings": draft}),
            )
            .await;
        assert_eq!(test.status, 422, "a test with a new {field}: {}", test.text);
    }
    assert!(
        endpoint.requests().is_empty(),
        "no token was fetched with the stored secret"
    );
    assert!(
        attacker.auth_attempts().is_empty(),
        "nothing reached the caller's server"
    );
    let view = app.get("/settings/smtp", &admin_token()).await.json();
    assert_eq!(view["port"], server.port, "the stored settings are unchanged");
    assert_eq!(view["oauth2"]["client_secret_set"], true);

    // With a secret of its own, the draft is tested; the echoed token is redacted everywhere.
    let draft = oauth_settings(attacker.port, microsoft(&endpoint));
    let report = app
        .post(
            "/settings/smtp/test",
            &token("smtp:test"),
            &json!({"settings": draft}),
        )
        .await;
    assert_eq!(report.json()["ok"], false, "{}", report.text);
    assert_eq!(attacker.auth_attempts().len(), 1);
    let sent = &attacker.auth_attempts()[0].1;
    use base64::Engine;
    let blob = format!("user=portal@contoso.example\x01auth=Bearer {sent}\x01\x01");
    for form in [
        sent.clone(),
        base64::engine::general_purpose::STANDARD.encode(&blob),
        base64::engine::general_purpose::STANDARD.encode(sent),
    ] {
        assert!(!report.text.contains(&form), "{form} leaked: {}", report.text);
    }
    assert!(report.text.contains("[redacted]"), "{}", report.text);

    // The audit log names the secrets, never their sealed values.
    let audit = app.get("/settings/audit", &admin_token()).await;
    assert!(!audit.text.contains("v1:"), "{}", audit.text);
    assert!(audit.text.contains("oauth2.client_secret"), "{}", audit.text);
}

#[tokio::test]
async fn token_urls_outside_the_address_policy_are_refused_at_save() {
    let app = spawn_app().await;
    for url in [
        "https://169.254.169.254/token",
        "https://[::ffff:169.254.169.254]/token",
        "http://login.example.com/token",
    ] {
        let oauth = json!({"provider": "microsoft", "tenant_id": "t", "client_id": "c",
                           "client_secret": "s", "token_url": url});
        let reply = app.put_smtp(&oauth_settings(2525, oauth)).await;
        assert_eq!(
            reply.field_errors(),
            [("oauth2.token_url".to_string(), "host_not_allowed".to_string())],
            "{url}"
        );
    }
    let missing = app
        .put_smtp(&oauth_settings(
            2525,
            json!({"provider": "generic", "client_id": "c"}),
        ))
        .await;
    let mut errors = missing.field_errors();
    errors.sort();
    assert_eq!(errors, [("oauth2.token_url".to_string(), "required".to_string())]);
}
