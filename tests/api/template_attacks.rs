//! The template sandbox under the outside review's reproductions, each sent to a real `mailroom
//! serve` process (the release build in CI, through `MAILROOM_TEST_BINARY`): every one is refused
//! with a 422 naming its part within a second, and the process still answers `/healthz` after it.
//! A stack overflow or a failed allocation aborts the process, which these tests would see.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{json, Value};

use crate::child::Child;
use crate::helpers::*;

const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// The longest template body stored (src/settings/templates/mod.rs).
const MAX_SOURCE_CHARS: usize = 100_000;

struct Attacked {
    child: Child,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Attacked {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Child::start(dir.path(), &[]).await;
        Self {
            child,
            client: reqwest::Client::new(),
            dir,
        }
    }

    /// Sends `body` to `path` with `token`; the status, the JSON answer and how long it took.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (u16, Value, Duration) {
        let started = Instant::now();
        let reply = self
            .client
            .request(method, format!("{}{path}", self.child.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: no answer ({e}); did the process abort?"));
        let status = reply.status().as_u16();
        let json = reply.json().await.unwrap_or(Value::Null);
        (status, json, started.elapsed())
    }

    async fn assert_alive(&self, after: &str) {
        let reply = self
            .client
            .get(format!("{}/healthz", self.child.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/healthz does not answer after {after}: {e}"));
        assert_eq!(reply.status().as_u16(), 200, "after {after}");
    }

    /// Previews `text` as the draft text part with a `settings:read` token: it must be refused.
    async fn preview_refused(&self, text: &str, data: Option<Value>) -> (String, String) {
        let mut body = json!({"event": "access_request_approved", "template": {"text": text}});
        if let Some(data) = data {
            body["data"] = data;
        }
        let shown: String = text.chars().take(60).collect();
        let (status, answer, took) = self
            .send(
                reqwest::Method::POST,
                "/settings/templates/preview",
                &token("settings:read"),
                &body,
            )
            .await;
        self.assert_alive(&shown).await;
        assert_eq!(status, 422, "{shown}: {answer}");
        assert!(took < REFUSED_WITHIN, "{shown}: refused after {took:?}");
        let error = &answer["errors"][0];
        (
            error["field"].as_str().unwrap_or_default().to_string(),
            error["code"].as_str().unwrap_or_default().to_string(),
        )
    }
}

fn long_user_name() -> Value {
    json!({"user_name": "W".repeat(10_000), "product_name": "Payments"})
}

#[tokio::test]
async fn every_reproduction_of_the_sandbox_review_is_refused_quickly_and_the_process_stays_up() {
    let app = Attacked::start().await;
    let doubling = "{% set s = s ~ s %}".repeat(4);
    let depth = 80_000; // ten times the reported overflow
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{{# ' #}}{{% set s = \"x\" * 100000000 %}}{doubling}{{{{ s|length }}}}{{# ' #}}"),
            "template_too_expensive",
        ),
        (
            "{# ' #}{% macro m(n) %}{{ n }}{% endmacro %}{{ m(7) }}{# ' #}".into(),
            "invalid_template",
        ),
        (
            "{{ ({'a':{}} and \"y\" * 3000)|length }}".into(),
            "template_too_expensive",
        ),
        (
            "{% if user_name == \"boom\" %}{{ \"x\" * 100000000 }}{% endif %}".into(),
            "template_too_expensive",
        ),
        (
            format!("{{{{ {}1 }}}}", "-".repeat(depth)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ {}true }}}}", "not ".repeat(depth)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ {}true }}}}", "not ".repeat(24_000)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ user_name{} }}}}", ".a".repeat(300_000)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ user_name{} }}}}", ".a".repeat(49_000)),
            "template_too_expensive",
        ),
        (
            format!("{}x{}", "{% if 1 %}".repeat(4_500), "{% endif %}".repeat(4_500)),
            "template_too_expensive",
        ),
        (
            format!(
                "{}x{}",
                "{% if true %}".repeat(depth),
                "{% endif %}".repeat(depth)
            ),
            "template_too_expensive",
        ),
        (
            format!("{{% if a %}}{}{{% endif %}}", "{% elif a %}".repeat(depth)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ user_name{} }}}}", " ~ user_name".repeat(6_000)),
            "template_too_expensive",
        ),
        (
            format!("{{{{ user_name{} }}}}", " ~ user_name".repeat(90)),
            "template_too_expensive",
        ),
    ];
    for (text, code) in &cases {
        for data in [None, Some(long_user_name())] {
            let (field, got) = app.preview_refused(text, data).await;
            let shown = &text[..text.len().min(60)];
            assert_eq!(field, "template.text", "{shown}");
            // Beyond the longest template allowed, the length is refused first.
            let expected = if text.chars().count() > MAX_SOURCE_CHARS {
                "too_long"
            } else {
                code
            };
            assert_eq!(got, expected, "{shown}");
        }
    }
}

#[tokio::test]
async fn a_stored_template_cannot_abort_the_process_for_one_chosen_data_value() {
    let mut app = Attacked::start().await;
    let admin = admin_token();
    let put = |text: String| json!({"text": text});
    let path = "/settings/templates/access_request_approved/en";
    // Refused at save, though the example data never takes the branch.
    for payload in [
        "{% set s = \"x\" * 100000000 %}{% set s = s ~ s %}{{ s|length }}".to_string(),
        format!("{{{{ user_name{} }}}}", " ~ user_name".repeat(2_500)),
    ] {
        let body = put(format!("{{% if user_name == \"boom\" %}}{payload}{{% endif %}}"));
        let (status, answer, took) = app.send(reqwest::Method::PUT, path, &admin, &body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["errors"][0]["field"], "text", "{answer}");
        assert_eq!(answer["errors"][0]["code"], "template_too_expensive", "{answer}");
        assert!(took < REFUSED_WITHIN, "{took:?}");
        app.assert_alive("a refused PUT").await;
    }

    // One stored by an older version, which checked less: it is checked again when it renders.
    let body = put("{% if user_name == \"boom\" %}BOOM{% endif %}Hi {{ user_name }}".into());
    let (status, answer, _) = app.send(reqwest::Method::PUT, path, &admin, &body).await;
    assert_eq!(status, 200, "{answer}");
    // Stopped while the file is changed, so that the next process reads it from the start.
    drop(app.child);
    let db = app.dir.path().join("mailroom.db");
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    let payload = r#"{% set s = \"x\" * 100000000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s|length }}"#;
    let changed = diesel::sql_query(
        "UPDATE settings SET value = replace(value, 'BOOM', ?), version = version + 1 WHERE key = 'templates'",
    )
    .bind::<diesel::sql_types::Text, _>(payload)
    .execute(&mut conn)
    .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    app.child = Child::start(app.dir.path(), &[]).await;
    let notify = |user: &str| {
        json!({"event": "access_request_approved", "to": "ada@example.com",
               "data": {"product_name": "Payments", "user_name": user}})
    };
    let (status, answer, took) = app
        .send(reqwest::Method::POST, "/notifications", &admin, &notify("boom"))
        .await;
    app.assert_alive("POST /notifications with the chosen value")
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["code"], "template_too_expensive", "{answer}");
    let message = answer["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("text template"), "{message}");
    assert!(took < REFUSED_WITHIN, "{took:?}");
}
