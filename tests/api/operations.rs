//! What operators see: Prometheus metrics (read with a text-format parser), signed webhooks to a
//! real receiver (retries, a crash in between), and the suppression list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::child::Child;
use crate::helpers::*;
use crate::on_both_backends;
use crate::smtp_server::{Behaviour, SmtpServer};

on_both_backends! {
    signed_webhooks => signed_webhooks_reach_a_receiver_that_fails_the_first_attempts;
    bounce_suppression => a_550_at_rcpt_suppresses_the_address_until_it_is_removed;
}

const WAIT: Duration = Duration::from_secs(30);

// --- A Prometheus text-format parser -------------------------------------------------------

/// Samples by metric name and sorted labels.
#[derive(Debug, Default)]
struct Scrape {
    samples: HashMap<(String, Vec<(String, String)>), f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("labels end with }")),
                ),
                None => (series, Vec::new()),
            };
            scrape.samples.insert((name.to_string(), labels), value);
        }
        scrape
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        self.samples.get(&(name.to_string(), key)).copied().unwrap_or(0.0)
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').to_string(), value));
        rest = after[end..].trim_start_matches(',');
    }
    out.sort();
    out
}

#[test]
fn the_prometheus_parser_reads_labels_with_escapes() {
    let s = Scrape::parse("# TYPE x counter\nx{a=\"1\",b=\"q\\\"z\"} 3\ny 2.5\n");
    assert_eq!(s.get("x", &[("b", "q\"z"), ("a", "1")]), 3.0);
    assert_eq!(s.get("y", &[]), 2.5);
    assert_eq!(s.types["x"], "counter");
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn scrape(base: &str) -> Scrape {
    let (status, text) = call(
        reqwest::Method::GET,
        format!("{base}/metrics"),
        Some(&token("metrics:read")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    Scrape::parse(&text)
}

async fn wait_status(base: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = call(
            reqwest::Method::GET,
            format!("{base}/notifications/{id}"),
            Some(&admin_token()),
            None,
        )
        .await;
        let n: Value = serde_json::from_str(&text).unwrap();
        if n["status"] == status {
            return n;
        }
        assert!(Instant::now() < deadline, "{id} never became {status}: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(base: &str, to: &str) -> Value {
    let (status, text) = call(
        reqwest::Method::POST,
        format!("{base}/notifications"),
        Some(&admin_token()),
        Some(json!({"event": "user_deactivated", "to": to})),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn metrics_count_every_outcome_and_report_the_queue_from_the_database() {
    let server = SmtpServer::start(Behaviour {
        data_replies: [(451, "4.3.0 try again later".to_string())].into(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let child = Child::start(dir.path(), &[]).await;
    let base = child.base.clone();
    let (unauthorized, _) = call(reqwest::Method::GET, format!("{base}/metrics"), None, None).await;
    assert_eq!(unauthorized, 401);
    let before = scrape(&base).await;
    assert_eq!(
        before.get("mailroom_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    let (status, text) = call(
        reqwest::Method::PUT,
        format!("{base}/settings/smtp"),
        Some(&admin_token()),
        Some(json!({"host": "127.0.0.1", "port": server.port, "security": "none", "from_address": "portal@example.com"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // A 451 (deferred, then sent on retry), then a 5.1.1 (failed, suppressed), then suppressed.
    let deferred = post(&base, "ada@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&base, &deferred, "sent").await;
    server
        .behaviour()
        .data_replies
        .push_back((550, "5.1.1 no such user".to_string()));
    let failed = post(&base, "gone@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&base, &failed, "failed").await;
    let suppressed = post(&base, "gone@EXAMPLE.com").await;
    assert_eq!(suppressed["status"], "suppressed");
    let (bad, _) = call(
        reqwest::Method::POST,
        format!("{base}/notifications"),
        Some(&admin_token()),
        Some(json!({"event": "user_deactivated"})),
    )
    .await;
    assert_eq!(bad, 422);

    let after = scrape(&base).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta(
            "mailroom_notifications_accepted_total",
            &[("event", "user_deactivated")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "mailroom_notifications_rejected_total",
            &[("reason", "validation")]
        ),
        1.0
    );
    for (outcome, n) in [
        ("sent", 1.0),
        ("deferred", 1.0),
        ("failed", 1.0),
        ("suppressed", 1.0),
    ] {
        assert_eq!(
            delta("mailroom_deliveries_total", &[("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    for (class, n) in [("2xx", 1.0), ("4xx", 1.0), ("5xx", 1.0)] {
        assert_eq!(
            delta("mailroom_smtp_replies_total", &[("class", class)]),
            n,
            "{class}"
        );
    }
    assert_eq!(after.get("mailroom_queue", &[("status", "sent")]), 1.0);
    assert_eq!(after.get("mailroom_queue", &[("status", "failed")]), 1.0);
    assert_eq!(after.get("mailroom_queue", &[("status", "suppressed")]), 1.0);
    assert_eq!(after.types["mailroom_accept_duration_seconds"], "histogram");
    assert_eq!(after.get("mailroom_accept_duration_seconds_count", &[]), 3.0);
    assert_eq!(after.get("mailroom_delivery_latency_seconds_count", &[]), 1.0);
    assert!(after.get("mailroom_smtp_transaction_seconds_count", &[]) >= 3.0);
    assert!(after.get("mailroom_delivery_latency_seconds_bucket", &[("le", "+Inf")]) >= 1.0);
}

#[tokio::test]
async fn metrics_can_be_public_for_a_private_scraper() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_METRICS_PUBLIC", "true")])
        .await
        .unwrap();
    let reply = app.send(app.client.get(app.url("/metrics"))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text.contains("mailroom_build_info"));
    let private = spawn_app().await;
    private
        .send(private.client.get(private.url("/metrics")))
        .await
        .problem(401, "unauthorized");
    let reply = private.get("/metrics", &token("notifications:read")).await;
    reply.problem(403, "insufficient_scope");
}

// --- A webhook receiver that verifies Standard Webhooks signatures -------------------------

#[derive(Default)]
struct ReceiverState {
    /// Answer 503 to this many calls first.
    fail_first: usize,
    /// Answer 503 while set.
    down: bool,
    calls: usize,
    verified: Vec<Value>,
    bad_signatures: usize,
    secret: String,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/hooks", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = receive(tcp, s).await;
                });
            }
        });
        Self { url, state }
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.state.lock().unwrap().verified.clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} verified webhooks, wanted {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies like the Standard Webhooks libraries: HMAC-SHA256 over `id.timestamp.body` with the
/// base64-decoded secret after `whsec_`, compared with each `v1,` signature.
fn verify(secret: &str, id: &str, timestamp: &str, body: &str, signatures: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    fresh
        && signatures
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn receive(tcp: tokio::net::TcpStream, state: Arc<Mutex<ReceiverState>>) -> std::io::Result<()> {
    let mut io = BufReader::new(tcp);
    let mut headers = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    let body = String::from_utf8(body).unwrap();
    let status = {
        let mut st = state.lock().unwrap();
        st.calls += 1;
        let ok = verify(
            &st.secret,
            headers.get("webhook-id").map_or("", |s| s.as_str()),
            headers.get("webhook-timestamp").map_or("", |s| s.as_str()),
            &body,
            headers.get("webhook-signature").map_or("", |s| s.as_str()),
        );
        if !ok {
            st.bad_signatures += 1;
            401
        } else if st.down || st.calls <= st.fail_first {
            503
        } else {
            let mut payload: Value = serde_json::from_str(&body).unwrap();
            payload["webhook_id"] = json!(headers["webhook-id"]);
            st.verified.push(payload);
            200
        }
    };
    io.get_mut()
        .write_all(
            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    io.get_mut().shutdown().await
}

async fn subscribe(base: &str, receiver: &Receiver, events: Value) -> Value {
    let (status, text) = call(
        reqwest::Method::PUT,
        format!("{base}/settings/webhooks"),
        Some(&admin_token()),
        Some(json!({"endpoints": [{"url": receiver.url, "events": events}]})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    let secret = view["endpoints"][0]["secret"]
        .as_str()
        .expect("a new endpoint's secret is shown once");
    assert!(secret.starts_with("whsec_"));
    receiver.state.lock().unwrap().secret = secret.to_string();
    view
}

async fn signed_webhooks_reach_a_receiver_that_fails_the_first_attempts(app: TestApp) {
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let receiver = Receiver::start().await;
    receiver.state.lock().unwrap().fail_first = 2;
    let view = subscribe(
        &app.address,
        &receiver,
        json!(["notification.sent", "notification.failed"]),
    )
    .await;
    let endpoint_id = view["endpoints"][0]["id"].as_str().unwrap().to_string();
    let again = app.get("/settings/webhooks", &admin_token()).await;
    assert!(
        again.json()["endpoints"][0].get("secret").is_none(),
        "{}",
        again.text
    );
    assert_eq!(again.json()["endpoints"][0]["secret_set"], true);

    let id = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0]["type"], "notification.sent");
    assert_eq!(got[0]["data"]["id"], id);
    assert_eq!(got[0]["data"]["status"], "sent");
    assert_eq!(got[0]["data"]["to"], "ada@example.com");
    assert!(got[0]["timestamp"].is_string());
    assert_eq!(receiver.state.lock().unwrap().bad_signatures, 0);
    let deadline = Instant::now() + WAIT;
    let deliveries = loop {
        let d = app
            .get(
                &format!("/webhooks/deliveries?endpoint={endpoint_id}&status=delivered"),
                &admin_token(),
            )
            .await
            .json();
        if !d["deliveries"].as_array().unwrap().is_empty() {
            break d;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(deliveries["deliveries"][0]["attempts"], 3, "{deliveries}");
    assert_eq!(deliveries["deliveries"][0]["last_status_code"], 200);
    assert_eq!(deliveries["deliveries"][0]["id"], got[0]["webhook_id"]);

    let ping = app
        .post(
            &format!("/settings/webhooks/{endpoint_id}/test"),
            &admin_token(),
            &json!({}),
        )
        .await;
    assert_eq!(ping.json()["ok"], true, "{}", ping.text);
    assert_eq!(ping.json()["status_code"], 200);
}

#[tokio::test]
async fn a_webhook_pending_at_a_crash_is_delivered_after_the_restart() {
    let server = SmtpServer::start(Behaviour::default()).await;
    let receiver = Receiver::start().await;
    receiver.state.lock().unwrap().down = true;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child::start(dir.path(), &[("MAILROOM_DELIVERY_POLL_MILLISECONDS", "100")]).await;
    let base = child.base.clone();
    call(
        reqwest::Method::PUT,
        format!("{base}/settings/smtp"),
        Some(&admin_token()),
        Some(json!({"host": "127.0.0.1", "port": server.port, "security": "none", "from_address": "portal@example.com"})),
    )
    .await;
    subscribe(&base, &receiver, json!(["notification.sent"])).await;
    let id = post(&base, "ada@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&base, &id, "sent").await;
    // The receiver refused at least once: the call is pending in the outbox when the process dies.
    let deadline = Instant::now() + WAIT;
    while receiver.state.lock().unwrap().calls == 0 {
        assert!(Instant::now() < deadline, "no webhook call was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.process.kill().unwrap();
    child.process.wait().unwrap();
    receiver.state.lock().unwrap().down = false;
    let _restarted = Child::start(dir.path(), &[("MAILROOM_DELIVERY_POLL_MILLISECONDS", "100")]).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0]["data"]["id"], id);
}

#[tokio::test]
async fn webhook_urls_follow_the_address_policy() {
    let app = spawn_app().await;
    for url in [
        "https://169.254.169.254/latest/meta-data",
        "https://[64:ff9b::a9fe:a9fe]/hook",
        "http://hooks.example.com/plain-http",
    ] {
        let reply = app
            .put(
                "/settings/webhooks",
                &admin_token(),
                &json!({"endpoints": [{"url": url}]}),
            )
            .await;
        assert_eq!(
            reply.field_errors(),
            [("endpoints[0].url".to_string(), "host_not_allowed".to_string())],
            "{url}"
        );
    }
    let reply = app
        .put(
            "/settings/webhooks",
            &admin_token(),
            &json!({"endpoints": [{"url": "https://hooks.example.com/x", "events": ["notification.nope"], "secret": "whsec_short"}]}),
        )
        .await;
    let mut errors = reply.field_errors();
    errors.sort();
    assert_eq!(
        errors,
        [
            ("endpoints[0].events".to_string(), "unknown_event".to_string()),
            ("endpoints[0].secret".to_string(), "invalid_secret".to_string()),
        ]
    );
}

// --- The suppression list --------------------------------------------------------------------

async fn a_550_at_rcpt_suppresses_the_address_until_it_is_removed(app: TestApp) {
    let server = SmtpServer::start(Behaviour {
        rcpt_reply: Some((550, "no such user here".into())),
        ..Default::default()
    })
    .await;
    app.use_smtp_server(server.port).await;
    let first = app
        .notify(&json!({"event": "user_deactivated", "to": "gone@example.com"}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_for_status(&first, "failed", WAIT).await;
    let list = app.get("/suppressions", &admin_token()).await.json();
    assert_eq!(list["suppressions"][0]["address"], "gone@example.com", "{list}");
    assert_eq!(list["suppressions"][0]["source"], "bounce");
    assert_eq!(list["suppressions"][0]["notification_id"], first);
    assert!(list["suppressions"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no such user"));

    server.behaviour().rcpt_reply = None;
    let again = app
        .notify(&json!({"event": "user_deactivated", "to": "gone@EXAMPLE.COM"}))
        .await
        .json();
    assert_eq!(again["status"], "suppressed", "{again}");
    assert!(again["status_reason"].as_str().unwrap().contains("no such user"));
    let shown = app.notification(again["id"].as_str().unwrap()).await;
    assert_eq!(shown["status"], "suppressed");

    let removed = app
        .send(
            app.client
                .delete(app.url("/suppressions/gone@Example.com"))
                .bearer_auth(admin_token()),
        )
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    let after = app
        .notify(&json!({"event": "user_deactivated", "to": "gone@example.com"}))
        .await
        .json();
    app.wait_for_status(after["id"].as_str().unwrap(), "sent", WAIT)
        .await;
    assert_eq!(server.received().len(), 1, "the suppressed one was never sent");
}

#[tokio::test]
async fn an_address_can_be_suppressed_and_removed_by_hand() {
    let app = spawn_app().await;
    let added = app
        .post(
            "/suppressions",
            &admin_token(),
            &json!({"address": "ada@example.com", "reason": "asked us to stop"}),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
    assert_eq!(added.json()["source"], "manual");
    let twice = app
        .post(
            "/suppressions",
            &admin_token(),
            &json!({"address": "ada@EXAMPLE.com"}),
        )
        .await;
    assert_eq!(twice.status, 200);
    let accepted = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await
        .json();
    assert_eq!(accepted["status"], "suppressed");
    app.post(
        "/suppressions",
        &admin_token(),
        &json!({"address": "not an address"}),
    )
    .await
    .problem(422, "validation_failed");
    app.post(
        "/suppressions",
        &token("notifications:read"),
        &json!({"address": "b@example.com"}),
    )
    .await
    .problem(403, "insufficient_scope");
    let missing = app
        .send(
            app.client
                .delete(app.url("/suppressions/nobody@example.com"))
                .bearer_auth(admin_token()),
        )
        .await;
    missing.problem(404, "not_found");
    let filtered = app.get("/suppressions?address=ada", &admin_token()).await.json();
    assert_eq!(filtered["suppressions"].as_array().unwrap().len(), 1);
}
