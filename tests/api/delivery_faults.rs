//! Delivery under misbehaving servers, slow servers, crashes and fixed settings: nothing stalls,
//! nothing is sent twice by live instances, a crash is recovered in seconds, and a fix or a flush
//! brings deferred mail back at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use serde_json::{json, Value};

use crate::child::{wait_ready, Child};
use crate::helpers::*;
use crate::smtp_server::{Behaviour, SmtpServer};

const WAIT: Duration = Duration::from_secs(30);

/// Posts a notification that must be accepted; its id.
async fn notify_id(app: &TestApp, body: &Value) -> String {
    let reply = app.notify(body).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_string()
}

fn plain_settings(port: u16, timeout_seconds: u32) -> Value {
    json!({"host": "127.0.0.1", "port": port, "security": "none",
           "from_address": "portal@example.com", "timeout_seconds": timeout_seconds})
}

/// A `mailroom serve` process in `dir` whose SMTP settings point at `server`.
async fn child_sending_to(dir: &std::path::Path, server: &SmtpServer, extra: &[(&str, &str)]) -> Child {
    let child = Child::start(dir, extra).await;
    assert_eq!(
        child
            .put("/settings/smtp", &plain_settings(server.port, 60))
            .await
            .status(),
        200
    );
    child
}

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
}

fn stored_row(dir: &std::path::Path, id: &str) -> Row {
    let mut conn = SqliteConnection::establish(dir.join("mailroom.db").to_str().unwrap()).unwrap();
    diesel::sql_query("SELECT status, lease_owner FROM notifications WHERE id = ?")
        .bind::<Text, _>(id)
        .get_result(&mut conn)
        .unwrap()
}

#[tokio::test]
async fn a_session_stalled_after_data_holds_back_no_other_message() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour {
        hang_for_rcpt: Some("stuck@example.com".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(app.put_smtp(&plain_settings(server.port, 5)).await.status, 200);
    let stuck = notify_id(
        &app,
        &json!({"event": "user_deactivated", "to": "stuck@example.com"}),
    )
    .await;
    server.wait_for_data_started(1, WAIT).await;

    // The stalled session is bounded by 2 x 5 s; the others must not wait for it.
    let started = Instant::now();
    for i in 0..5 {
        let reply = app
            .notify(&json!({"event": "user_deactivated", "to": format!("user{i}@example.com")}))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    server.wait_for(5, Duration::from_secs(8)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // The stalled one times out, is dropped without waiting for QUIT, and is deferred.
    let deadline = Instant::now() + WAIT;
    let n = loop {
        let n = app.notification(&stuck).await;
        if n["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            break n;
        }
        assert!(Instant::now() < deadline, "no attempt was recorded: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n["status"], "queued", "{n}");
    assert_eq!(n["attempts"][0]["outcome"], "deferred", "{n}");
    let stats = app.get("/notifications/stats", &admin_token()).await.json();
    assert_eq!(stats["last_error"]["notification_id"], stuck, "{stats}");
    assert!(
        stats["last_error"]["reply"].as_str().unwrap().contains("within"),
        "{stats}"
    );
}

#[tokio::test]
async fn sigterm_stops_within_the_grace_whatever_the_server_does_and_releases_the_claim() {
    let server = SmtpServer::start(Behaviour {
        hang_in_data: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = child_sending_to(dir.path(), &server, &[("MAILROOM_SHUTDOWN_GRACE_SECONDS", "2")]).await;
    let id = child
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await;
    for i in 0..4 {
        child
            .notify(&json!({"event": "user_deactivated", "to": format!("user{i}@example.com")}))
            .await;
    }
    server.wait_for_data_started(5, WAIT).await;
    // An idle keep-alive connection and one in the middle of a request's headers.
    let addr = child.base.trim_start_matches("http://").to_string();
    let _idle = std::net::TcpStream::connect(&addr).unwrap();
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut half, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A request in flight that waits on a silent server.
    let silent = SmtpServer::start(Behaviour {
        silent: true,
        ..Default::default()
    })
    .await;
    let base = child.base.clone();
    let silent_port = silent.port;
    let probe = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/settings/smtp/test"))
            .bearer_auth(admin_token())
            .json(&json!({"settings": {"host": "127.0.0.1", "port": silent_port, "security": "none", "timeout_seconds": 30}}))
            .send()
            .await
    });
    silent.wait_for_connections(1, WAIT).await;

    child.signal("-TERM");
    let took = child.wait_exit(Duration::from_secs(8));
    eprintln!("measured: SIGTERM to exit with a stalled session took {took:?} (grace 2 s)");
    // The grace is the whole bound (plus the moment the process takes to exit).
    assert!(took < Duration::from_millis(2300), "shutdown took {took:?}");
    drop(probe);
    let row = stored_row(dir.path(), &id);
    assert_eq!(row.status, "queued", "the claim was not released: {row:?}");
    assert_eq!(row.lease_owner, None);
}

/// How many notifications have each status, and how many attempts those still queued have used.
fn status_counts(dir: &std::path::Path) -> (i64, i64, i64, i64) {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        sending: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        sent: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        queued: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        queued_attempts: i64,
    }
    let mut conn = SqliteConnection::establish(dir.join("mailroom.db").to_str().unwrap()).unwrap();
    let c: Counts = diesel::sql_query(
        "SELECT COALESCE(SUM(status = 'sending'), 0) AS sending, \
         COALESCE(SUM(status = 'sent'), 0) AS sent, COALESCE(SUM(status = 'queued'), 0) AS queued, \
         COALESCE(SUM(CASE WHEN status = 'queued' THEN attempt_count ELSE 0 END), 0) AS queued_attempts \
         FROM notifications",
    )
    .get_result(&mut conn)
    .unwrap();
    (c.sending, c.sent, c.queued, c.queued_attempts)
}

// Multi-threaded: the in-process server must keep answering while this test blocks waiting for
// the child to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_back_claimed_mail_still_waiting_for_a_slot_without_spending_an_attempt() {
    // Two slots, each message takes 2 s: the dispatcher claims the next round while both slots
    // are busy, so at SIGTERM two messages are on the wire and two more are claimed but unsent.
    let server = SmtpServer::start(Behaviour {
        data_delay: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = child_sending_to(
        dir.path(),
        &server,
        &[
            ("MAILROOM_DELIVERY_CONCURRENCY", "2"),
            ("MAILROOM_SHUTDOWN_GRACE_SECONDS", "10"),
        ],
    )
    .await;
    for i in 0..6 {
        child
            .notify(&json!({"event": "user_deactivated", "to": format!("user{i}@example.com")}))
            .await;
    }
    server.wait_for_data_started(2, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while status_counts(dir.path()).0 < 4 {
        assert!(
            Instant::now() < deadline,
            "the next round was never claimed: {:?}",
            status_counts(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.data_started(), 2, "only two slots may be sending");

    child.signal("-TERM");
    child.wait_exit(Duration::from_secs(15));
    let (sending, sent, queued, queued_attempts) = status_counts(dir.path());
    assert_eq!(
        (sending, sent, queued),
        (0, 2, 4),
        "the two on the wire finish, the other four wait in the queue"
    );
    assert_eq!(queued_attempts, 0, "a claim given back unsent is not an attempt");
    assert_eq!(server.data_started(), 2, "nothing was started after SIGTERM");
}

#[tokio::test]
async fn after_kill_9_the_claimed_mail_goes_out_within_seconds_of_a_restart_with_default_settings() {
    // The first DATA is never answered (the process dies in it); every later one is accepted.
    let server = SmtpServer::start(Behaviour {
        hang_first: 1,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = child_sending_to(dir.path(), &server, &[]).await;
    let id = child
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await;
    server.wait_for_data_started(1, WAIT).await;
    child.signal("-KILL");
    child.wait_exit(WAIT);
    assert_eq!(stored_row(dir.path(), &id).status, "sending");

    let restarted_at = Instant::now();
    let _child = Child::start(dir.path(), &[]).await;
    let received = server.wait_for(1, Duration::from_secs(15)).await;
    let recovery = restarted_at.elapsed();
    eprintln!("measured: kill -9 to delivery after restart took {recovery:?}");
    assert!(recovery < Duration::from_secs(10), "recovery took {recovery:?}");
    assert_eq!(received[0].rcpt_to, ["ada@example.com"]);
}

/// Two instances on one database and a server that takes longer per message than the lease:
/// each message still goes out once.
async fn two_live_instances_never_send_each_others_slow_messages(database_url: String) {
    let server = SmtpServer::start(Behaviour {
        data_delay: Some(Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    let extra = [
        ("MAILROOM_DATABASE_URL", database_url.as_str()),
        ("MAILROOM_DELIVERY_LEASE_SECONDS", "1"),
        ("MAILROOM_DELIVERY_CONCURRENCY", "4"),
    ];
    let a = spawn_app_with(Backend::Sqlite, &extra).await.unwrap();
    let b = spawn_app_with(Backend::Sqlite, &extra).await.unwrap();
    a.use_smtp_server(server.port).await;
    a.accept_batch_for_users(0..12).await;
    server.wait_for(12, Duration::from_secs(60)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = b.get("/notifications/stats", &admin_token()).await.json();
        if stats["counts"]["sent"] == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = server.received();
    let mut ids: Vec<String> = received.iter().map(|m| m.header("Message-ID").unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert_eq!(received.len(), 12, "{} duplicates went out", received.len() - 12);
    assert_eq!(server.data_started(), 12, "a message was transmitted twice");
    eprintln!(
        "measured: two instances, 3 s per message, 1 s lease: {} transmissions for 12 notifications",
        server.data_started()
    );
}

#[tokio::test]
async fn two_live_instances_on_postgres_never_send_each_others_slow_messages() {
    let Some(pg) = PgDatabase::create() else {
        return; // `create` said why
    };
    two_live_instances_never_send_each_others_slow_messages(pg.url.clone()).await;
}

#[tokio::test]
async fn two_live_instances_on_one_sqlite_file_never_send_each_others_slow_messages() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    two_live_instances_never_send_each_others_slow_messages(url).await;
}

/// An app whose retries are an hour apart, so only a fix or a flush can bring mail back soon.
async fn app_with_slow_retries() -> TestApp {
    spawn_app_with(
        Backend::Sqlite,
        &[
            ("MAILROOM_DELIVERY_RETRY_BASE_SECONDS", "3600"),
            ("MAILROOM_DELIVERY_RETRY_MAX_SECONDS", "7200"),
            ("MAILROOM_DELIVERY_MAX_ATTEMPTS", "2"),
        ],
    )
    .await
    .unwrap()
}

async fn wait_for_attempts(app: &TestApp, id: &str, n: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = app.notification(id).await;
        if v["attempts"].as_array().is_some_and(|a| a.len() >= n) && v["status"] != "sending" {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never had {n} attempts: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fixing_the_settings_sends_deferred_mail_at_once_without_spending_its_attempts() {
    let app = app_with_slow_retries().await;
    let server = SmtpServer::start(Behaviour {
        auth: Some(("mailer".into(), "right-password".into())),
        ..Default::default()
    })
    .await;
    let mut settings = plain_settings(server.port, 5);
    settings["username"] = json!("mailer");
    settings["password"] = json!("wrong-password");
    settings["allow_insecure_auth"] = json!(true);
    assert_eq!(app.put_smtp(&settings).await.status, 200);
    let id = notify_id(
        &app,
        &json!({"event": "user_deactivated", "to": "ada@example.com"}),
    )
    .await;
    let deferred = wait_for_attempts(&app, &id, 1).await;
    assert_eq!(deferred["status"], "queued", "{deferred}");

    // The fix; the server then defers once more. With the old failure still counted, that 451
    // would be the last of two attempts and the notification would fail.
    server
        .behaviour()
        .data_replies
        .push_back((451, "4.3.0 try again later".into()));
    settings["password"] = json!("right-password");
    let fixed_at = Instant::now();
    assert_eq!(app.put_smtp(&settings).await.status, 200);
    let after_fix = wait_for_attempts(&app, &id, 2).await;
    assert!(
        fixed_at.elapsed() < Duration::from_secs(10),
        "{:?}",
        fixed_at.elapsed()
    );
    eprintln!(
        "measured: settings fix to the next attempt took {:?}",
        fixed_at.elapsed()
    );
    assert_eq!(after_fix["status"], "queued", "{after_fix}");
    assert_eq!(after_fix["attempts"][1]["smtp_code"], 451, "{after_fix}");

    // And a flush, like `postqueue -f`, sends it now instead of in an hour.
    let reply = app.post("/notifications/flush", &admin_token(), &json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["flushed"], 1, "{}", reply.text);
    app.wait_for_status(&id, "sent", Duration::from_secs(10)).await;
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn retrying_a_queued_notification_sends_it_now() {
    let app = app_with_slow_retries().await;
    let server = SmtpServer::start(Behaviour {
        data_replies: [(451, "4.3.0 try again later".to_string())].into(),
        ..Default::default()
    })
    .await;
    app.use_smtp_server(server.port).await;
    let id = notify_id(
        &app,
        &json!({"event": "user_deactivated", "to": "ada@example.com"}),
    )
    .await;
    let deferred = wait_for_attempts(&app, &id, 1).await;
    assert_eq!(deferred["status"], "queued", "{deferred}");
    let reply = app
        .post(&format!("/notifications/{id}/retry"), &admin_token(), &json!({}))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    app.wait_for_status(&id, "sent", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn flushing_needs_the_send_scope() {
    let app = spawn_app().await;
    let reply = app
        .post("/notifications/flush", &token("notifications:read"), &json!({}))
        .await;
    reply.problem(403, "insufficient_scope");
}

#[tokio::test]
async fn the_list_shows_each_notifications_attempts() {
    let app = spawn_app().await;
    let server = SmtpServer::start(Behaviour::default()).await;
    app.use_smtp_server(server.port).await;
    let id = notify_id(
        &app,
        &json!({"event": "user_deactivated", "to": "ada@example.com"}),
    )
    .await;
    app.wait_for_status(&id, "sent", WAIT).await;
    let list = app.get("/notifications", &admin_token()).await.json();
    let item = &list["notifications"][0];
    assert_eq!(item["id"], id);
    assert_eq!(item["attempts"][0]["outcome"], "sent", "{list}");
}

/// Runs the binary in its own mount namespace with its data directory on a 2 MB tmpfs, fills the
/// disk from outside (through /proc/PID/root) and frees it again. Needs root for `unshare -m`.
#[tokio::test]
async fn a_full_disk_is_507_and_not_ready_with_the_cause_in_stats_until_space_returns() {
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        skipped(
            "`unshare -m` is not permitted here (needs root), so the full-disk test passes without running",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("unshare");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILROOM_")) {
        cmd.env_remove(k);
    }
    let db_url = format!("sqlite://{}", data.join("mailroom.db").display());
    let script = format!(
        "mount -t tmpfs -o size=2m tmpfs '{}' && exec '{}' serve",
        data.display(),
        env!("CARGO_BIN_EXE_mailroom")
    );
    let process = cmd
        .args(["-m", "sh", "-c", &script])
        .envs(base_vars(&data, &db_url))
        .env("MAILROOM_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Child {
        process,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(&child.base).await;
    let client = reqwest::Client::new();
    // `sh` exec'd into mailroom: same pid, and its root shows the tmpfs.
    let filler = format!("/proc/{}/root{}/filler", child.process.id(), data.display());
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let big = "y".repeat(190);
    let post = || async {
        let res = client
            .post(format!("{}/notifications", child.base))
            .bearer_auth(admin_token())
            .json(&json!({"event": "user_deactivated", "to": "ada@example.com", "to_name": big.clone()}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, content_type, res.text().await.unwrap())
    };
    let mut refused = None;
    for _ in 0..5000 {
        let (status, content_type, body) = post().await;
        if status != 202 {
            refused = Some((status, content_type, body));
            break;
        }
    }
    let (status, content_type, body) = refused.expect("the disk never filled up");
    assert_eq!(status, 507, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "insufficient_storage", "{problem}");

    let ready = client.get(format!("{}/readyz", child.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let stats: Value = client
        .get(format!("{}/notifications/stats", child.base))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stats["last_error"]["reply"]
            .as_str()
            .is_some_and(|r| r.contains("disk is full")),
        "{stats}"
    );

    // Space comes back: the next write succeeds and the service is ready again.
    std::fs::remove_file(&filler).unwrap();
    let (status, _, body) = post().await;
    assert_eq!(status, 202, "{body}");
    let ready = client.get(format!("{}/readyz", child.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn with_the_database_gone_posts_and_readiness_answer_503_within_about_a_second() {
    let Some(pg) = PgDatabase::create() else {
        return; // `create` said why
    };
    let app = spawn_app_on(&pg.url).await;
    assert_eq!(app.get("/readyz", "").await.status, 200);
    // Dropping the database (WITH FORCE) closes every connection and refuses new ones.
    drop(pg);
    for path in ["/readyz", "/notifications"] {
        let started = Instant::now();
        let reply = if path == "/readyz" {
            app.get(path, "").await
        } else {
            app.notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
                .await
        };
        let took = started.elapsed();
        reply.problem(503, "unavailable");
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
    }
}

#[tokio::test]
async fn a_send_stalled_on_a_server_the_settings_replace_is_dropped_and_its_message_goes_to_the_new_one_at_once(
) {
    let stalled = SmtpServer::start(Behaviour {
        hang_in_data: true,
        ..Default::default()
    })
    .await;
    let app = spawn_app().await;
    app.use_smtp_server(stalled.port).await;
    let reply = app
        .notify(&json!({"event": "user_deactivated", "to": "ada@example.com"}))
        .await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    stalled.wait_for_data_started(1, WAIT).await;

    let healthy = SmtpServer::start(Behaviour::default()).await;
    let replaced_at = Instant::now();
    app.use_smtp_server(healthy.port).await;
    let sent = app.wait_for_status(&id, "sent", WAIT).await;
    let took = replaced_at.elapsed();
    eprintln!("measured: from the settings change to sent through the new server: {took:?}");
    // The session timeout is 5 s, so waiting for the stalled session would take 10 s and a
    // deferral the retry delay on top.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(healthy.received().len(), 1);
    let attempts = sent["attempts"].as_array().unwrap();
    assert!(
        attempts.iter().all(|a| a["outcome"] != "deferred"),
        "the dropped send is not a failed attempt: {sent}"
    );
}
