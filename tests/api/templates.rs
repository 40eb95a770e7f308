//! Templates per event and locale, branding, the layout and preview, against a real SMTP server.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;
use crate::smtp_server::{Behaviour, Received, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);

/// The decoded text and HTML parts of a received multipart/alternative message, with CRLF as LF.
fn parts(msg: &Received) -> (String, String) {
    let content_type = msg.header("Content-Type").unwrap();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_string();
    let (mut text, mut html) = (String::new(), String::new());
    for part in msg.data.split(&format!("--{boundary}")) {
        let Some((head, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let head_lower = head.to_ascii_lowercase();
        let decoded = if head_lower.contains("content-transfer-encoding: base64") {
            let clean: String = body.split_whitespace().collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(clean).unwrap()).unwrap()
        } else if head_lower.contains("content-transfer-encoding: quoted-printable") {
            decode_qp(body)
        } else {
            body.to_string()
        };
        let decoded = decoded.replace("\r\n", "\n").trim_end().to_string();
        if head_lower.contains("content-type: text/plain") {
            text = decoded;
        } else if head_lower.contains("content-type: text/html") {
            html = decoded;
        }
    }
    (text, html)
}

fn decode_qp(body: &str) -> String {
    let joined = body.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
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

async fn put_template(app: &TestApp, event: &str, locale: &str, body: Value) -> Reply {
    app.put(
        &format!("/settings/templates/{event}/{locale}"),
        &admin_token(),
        &body,
    )
    .await
}

fn german() -> Value {
    json!({
        "subject": "Zugang zu {{ product_name }} genehmigt",
        "text": "Hallo {{ user_name }},\n\nIhr Zugang zu {{ product_name }} wurde genehmigt.",
        "html": "<p>Hallo {{ user_name }},</p><p>Ihr Zugang zu <b>{{ product_name }}</b> wurde genehmigt.</p>"
    })
}

fn approved(locale: Option<&str>) -> Value {
    let mut body = json!({"event": "access_request_approved", "to": "ada@example.com",
        "data": {"product_name": "Payments API", "user_name": "Ada"}});
    if let Some(l) = locale {
        body["locale"] = json!(l);
    }
    body
}

async fn a_template_is_used_along_the_locale_chain_and_deleting_it_restores_the_builtin(app: TestApp) {
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let reply = put_template(&app, "access_request_approved", "de", german()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let view = reply.json();
    assert_eq!(view["effective"]["html"]["source"], "de");
    assert_eq!(view["effective"]["subject"]["source"], "de");

    let mut expected = Vec::new();
    for (locale, subject, used) in [
        (Some("de"), "Zugang zu Payments API genehmigt", "de"),
        (Some("DE-at"), "Zugang zu Payments API genehmigt", "de"),
        (
            Some("fr"),
            "Your access request for Payments API was approved",
            "en",
        ),
        (None, "Your access request for Payments API was approved", "en"),
    ] {
        let reply = app.notify(&approved(locale)).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        let accepted = reply.json();
        assert_eq!(accepted["subject"], subject, "{locale:?}");
        assert_eq!(accepted["locale"], used, "{locale:?}");
        let id = accepted["id"].as_str().unwrap().to_string();
        assert_eq!(app.notification(&id).await["locale"], used);
        expected.push((id, subject));
    }
    let received = server.wait_for(expected.len(), WAIT).await;
    for (id, subject) in &expected {
        let msg = received
            .iter()
            .find(|m| m.header("Message-ID").unwrap().contains(id.as_str()))
            .unwrap();
        assert_eq!(msg.header("Subject").unwrap(), *subject);
    }
    let german_mail = received
        .iter()
        .find(|m| m.header("Message-ID").unwrap().contains(expected[0].0.as_str()))
        .unwrap();
    let (text, html) = parts(german_mail);
    assert!(
        text.contains("Ihr Zugang zu Payments API wurde genehmigt."),
        "{text}"
    );
    assert!(html.contains("Ihr Zugang zu <b>Payments API</b>"), "{html}");

    let list = app.get("/settings/templates", &admin_token()).await.json();
    assert_eq!(
        list["templates"][0],
        json!({"event": "access_request_approved", "locale": "de",
               "parts": {"subject": true, "text": true, "html": true},
               "updated_at": list["templates"][0]["updated_at"], "updated_by": "test-admin"})
    );

    let deleted = app
        .send(
            app.client
                .delete(app.url("/settings/templates/access_request_approved/de"))
                .bearer_auth(admin_token()),
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let accepted = app.notify(&approved(Some("de"))).await.json();
    assert_eq!(
        accepted["subject"],
        "Your access request for Payments API was approved"
    );
    let view = app
        .get("/settings/templates/access_request_approved/de", &admin_token())
        .await
        .json();
    assert_eq!(view["effective"]["html"]["source"], "builtin");
}

async fn preview_equals_what_is_then_delivered(app: TestApp) {
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    app.put(
        "/settings/branding",
        &admin_token(),
        &json!({"product_name": "Developer Portal", "logo_url": "https://portal.example.com/logo.png",
                "primary_color": "#0B5FFF", "footer_text": "Example Corp, 1 Main Street",
                "support_email": "support@example.com"}),
    )
    .await;
    assert_eq!(
        put_template(&app, "access_request_approved", "de", german())
            .await
            .status,
        200
    );
    let data = json!({"product_name": "Payments <API> & more", "user_name": "Ada"});
    let preview = app
        .post(
            "/settings/templates/preview",
            &token("settings:read"),
            &json!({"event": "access_request_approved", "locale": "de", "data": data}),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.text);
    let preview = preview.json();
    assert_eq!(preview["locale_used"], "de");
    let reply = app
        .notify(
            &json!({"event": "access_request_approved", "to": "ada@example.com",
                        "locale": "de", "data": data}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let msg = &server.wait_for(1, WAIT).await[0];
    let (text, html) = parts(msg);
    assert_eq!(msg.header("Subject").unwrap(), preview["subject"]);
    assert_eq!(text, preview["text"].as_str().unwrap().trim_end());
    assert_eq!(html, preview["html"].as_str().unwrap().trim_end());
    // The data is escaped in HTML, not in text; the branding frames both.
    assert!(html.contains("Payments &lt;API&gt; &amp; more"), "{html}");
    assert!(text.contains("Payments <API> & more"), "{text}");
    // Links stay readable in the mail's source: `/` is not escaped.
    assert!(html.contains("https://portal.example.com/logo.png"), "{html}");
    assert!(!html.contains("&#x2f;"), "{html}");
    assert!(html.contains("#0b5fff"), "{html}");
    assert!(text.contains("Example Corp, 1 Main Street"), "{text}");
    assert!(text.contains("support@example.com"), "{text}");
}

on_both_backends! {
    locale_chain => a_template_is_used_along_the_locale_chain_and_deleting_it_restores_the_builtin;
    preview_matches => preview_equals_what_is_then_delivered;
}

#[tokio::test]
async fn branding_alone_frames_the_builtin_mail_in_both_parts() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let reply = app
        .put(
            "/settings/branding",
            &admin_token(),
            &json!({"product_name": "Acme Portal", "product_url": "https://acme.example.com",
                    "logo_url": "https://acme.example.com/logo.png", "primary_color": "#ff6600",
                    "footer_text": "Acme Inc.", "support_email": "help@acme.example.com"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        app.get("/settings/branding", &admin_token()).await.json()["primary_color"],
        "#ff6600"
    );
    app.notify(&approved(None)).await;
    let (text, html) = parts(&server.wait_for(1, WAIT).await[0]);
    assert!(
        html.contains("<img src=\"https://acme.example.com/logo.png\""),
        "{html}"
    );
    assert!(html.contains("#ff6600") && html.contains("Acme Inc."), "{html}");
    assert!(
        text.contains("Acme Inc.") && text.contains("help@acme.example.com"),
        "{text}"
    );
    assert!(
        text.contains("Your request for access to Payments API was approved."),
        "{text}"
    );
}

#[tokio::test]
async fn bad_branding_is_refused_field_by_field() {
    let app = spawn_app().await;
    let reply = app
        .put(
            "/settings/branding",
            &admin_token(),
            &json!({"logo_url": "http://acme.example.com/logo.png", "primary_color": "orange",
                    "support_email": "not an address", "product_url": "javascript:alert(1)"}),
        )
        .await;
    let mut errors = reply.field_errors();
    errors.sort();
    assert_eq!(
        errors,
        [
            ("logo_url".to_string(), "invalid_url".to_string()),
            ("primary_color".to_string(), "invalid_color".to_string()),
            ("product_url".to_string(), "invalid_url".to_string()),
            ("support_email".to_string(), "invalid_email".to_string()),
        ]
    );
}

#[tokio::test]
async fn templates_that_do_not_render_or_cost_too_much_are_refused_naming_the_part() {
    let app = spawn_app().await;
    for (body, field, code) in [
        (
            json!({"html": "<p>{{ user_name </p>"}),
            "html",
            "invalid_template",
        ),
        (
            json!({"text": "Hi {{ user_name | nosuchfilter }}"}),
            "text",
            "invalid_template",
        ),
        (
            json!({"html": "<p>{{ organization_name }}</p>"}),
            "html",
            "invalid_template",
        ),
        (
            json!({"subject": "{{ product_name|tojson }}"}),
            "subject",
            "invalid_template",
        ),
        (
            json!({"html": "{{ 'x' * 100000000 }}"}),
            "html",
            "template_too_expensive",
        ),
        (
            json!({"text": "{% for a in user_name %}{% for b in user_name %}{% for c in user_name %}.{% endfor %}{% endfor %}{% endfor %}"}),
            "text",
            "template_too_expensive",
        ),
        (
            json!({"subject": "A\r\nBcc: eve@example.com"}),
            "subject",
            "line_break",
        ),
        (json!({}), "body", "empty"),
    ] {
        let reply = put_template(&app, "access_request_approved", "de", body.clone()).await;
        let errors = reply.field_errors();
        assert!(
            errors.contains(&(field.to_string(), code.to_string())),
            "{body}: {errors:?}"
        );
    }
    let syntax = put_template(
        &app,
        "access_request_approved",
        "de",
        json!({"html": "<p>\n{{ user_name </p>"}),
    )
    .await;
    assert!(
        syntax.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{}",
        syntax.text
    );
    let layout_subject = put_template(&app, "layout", "de", json!({"subject": "x"})).await;
    assert_eq!(layout_subject.field_errors()[0].1, "not_allowed");
    assert_eq!(
        put_template(&app, "no_such_event", "de", german()).await.status,
        404
    );
    put_template(&app, "access_request_approved", "not a tag", german())
        .await
        .problem(422, "validation_failed");
    let list = app.get("/settings/templates", &admin_token()).await.json();
    assert_eq!(list["templates"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_custom_layout_frames_every_body_and_html_only_templates_get_a_derived_text_part() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let layout = json!({"html": "<div class=\"frame\">{{ content }}</div><footer>{{ branding.product_name }}</footer>",
                        "text": "{{ content }}\n-- the portal team"});
    assert_eq!(put_template(&app, "layout", "en", layout).await.status, 200);
    let reply = put_template(
        &app,
        "access_request_approved",
        "en",
        json!({"html": "<p>Access to <b>{{ product_name }}</b> granted.</p>"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    app.notify(&approved(None)).await;
    let (text, html) = parts(&server.wait_for(1, WAIT).await[0]);
    assert!(
        html.starts_with("<div class=\"frame\"><p>Access to <b>Payments API</b> granted.</p></div>"),
        "{html}"
    );
    assert!(
        text.contains("Access to") && text.contains("Payments API") && text.contains("granted"),
        "{text}"
    );
    assert!(!text.contains("<b>"), "{text}");
    assert!(text.trim_end().ends_with("-- the portal team"), "{text}");
}

#[tokio::test]
async fn a_template_edited_after_accept_does_not_change_the_accepted_notification() {
    let app = spawn_app().await;
    assert_eq!(
        put_template(
            &app,
            "access_request_approved",
            "en",
            json!({"subject": "First {{ product_name }}"})
        )
        .await
        .status,
        200
    );
    // No SMTP settings yet: the notification is held, already rendered.
    let accepted = app.notify(&approved(None)).await.json();
    assert_eq!(accepted["status"], "held");
    assert_eq!(
        put_template(
            &app,
            "access_request_approved",
            "en",
            json!({"subject": "Second {{ product_name }}"})
        )
        .await
        .status,
        200
    );
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let msg = &server.wait_for(1, WAIT).await[0];
    assert_eq!(msg.header("Subject").unwrap(), "First Payments API");
    // The subject of the default locale is the one `PUT /settings/subjects` edits.
    let subjects = app.get("/settings/subjects", &admin_token()).await.json();
    let entry = subjects["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "access_request_approved")
        .unwrap()
        .clone();
    assert_eq!(entry["subject"], "Second {{ product_name }}");
}

#[tokio::test]
async fn the_default_locale_is_a_setting_in_canonical_case() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/settings/locale", &admin_token()).await.json()["default_locale"],
        "en"
    );
    let reply = app
        .put(
            "/settings/locale",
            &admin_token(),
            &json!({"default_locale": "DE-at"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["default_locale"], "de-AT");
    let bad = app
        .put(
            "/settings/locale",
            &admin_token(),
            &json!({"default_locale": "german!"}),
        )
        .await;
    assert_eq!(
        bad.field_errors(),
        [("default_locale".to_string(), "invalid_locale".to_string())]
    );
    let bad = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com", "locale": "xx yy"}))
        .await;
    assert_eq!(
        bad.field_errors(),
        [("locale".to_string(), "invalid_locale".to_string())]
    );
}

#[tokio::test]
async fn preview_without_data_uses_the_example_values_and_checks_drafts() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/settings/templates/preview",
            &admin_token(),
            &json!({"event": "password_reset", "template": {"subject": "Reset for {{ user_name }}"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let preview = reply.json();
    assert_eq!(preview["subject"], "Reset for Ada Lovelace");
    assert!(preview["html"]
        .as_str()
        .unwrap()
        .contains("reset-password?token=3b9e1f"));
    let bad = app
        .post(
            "/settings/templates/preview",
            &admin_token(),
            &json!({"event": "password_reset", "template": {"html": "{{ reset_url | nosuch }}"}}),
        )
        .await;
    assert_eq!(
        bad.field_errors(),
        [("template.html".to_string(), "invalid_template".to_string())]
    );
    // Nothing was stored by a preview.
    let list = app.get("/settings/templates", &admin_token()).await.json();
    assert_eq!(list["templates"], json!([]));
}
