//! Claim cost against queue depth: time to claim a batch of 100 with 1k, 100k and 1M queued.
//! The claim must stay flat (an index range scan), not grow with the queue.
//!
//!   cargo bench --bench claim                      # SQLite in a temporary directory
//!   MAILROOM_BENCH_POSTGRES_URL=postgres://... cargo bench --bench claim
//!
//! Prints one JSON line per depth.

use std::time::Instant;

use diesel::prelude::*;
use mailroom::config::DatabaseUrl;
use mailroom::db::{now_millis, Db};
use mailroom::store::notifications::{self as store, BodyRow, NewNotification, NotificationRow};
use mailroom::store::queue;

const BATCH: i64 = 100;
const SAMPLES: usize = 20;

fn notification(i: u64, now: i64) -> NewNotification {
    let id = uuid::Uuid::now_v7().to_string();
    let body = BodyRow {
        notification_id: id.clone(),
        text_body: "x".repeat(900),
        html_body: "y".repeat(1100),
    };
    NewNotification {
        row: row(id, i, now),
        body,
    }
}

fn row(id: String, i: u64, now: i64) -> NotificationRow {
    NotificationRow {
        id,
        event: "access_request_rejected".into(),
        recipient: Some(format!("user{i}@example.com")),
        to_name: Some("Benchmark User".into()),
        data: r#"{"product_name":"Payments API"}"#.into(),
        subject: "Your access request for Payments API was rejected".into(),
        status: "queued".into(),
        status_reason: None,
        created_at: now,
        updated_at: now,
        expires_at: now + 86_400_000,
        next_attempt_at: now - (i as i64 % 1000),
        lease_owner: None,
        lease_until: None,
        attempt_count: 0,
        sent_at: None,
        message_id: None,
        smtp_reply: None,
        created_by: "bench".into(),
        locale: Some("en".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match std::env::var("MAILROOM_BENCH_POSTGRES_URL") {
        Ok(url) => DatabaseUrl::Postgres(url),
        Err(_) => DatabaseUrl::Sqlite(dir.path().join("claim.db")),
    };
    let backend = url.backend_name();
    let db = Db::connect(&url, 2)?;
    let mut conn = db.write_conn().map_err(|e| anyhow::anyhow!("{e}"))?;
    if backend == "postgres" {
        diesel::sql_query("TRUNCATE notifications, settings CASCADE").execute(&mut *conn)?;
    }
    // Claims only happen under the current SMTP settings version.
    diesel::sql_query(
        "INSERT INTO settings (key, value, version, updated_at, updated_by) VALUES ('smtp', '{}', 1, 0, 'bench')",
    )
    .execute(&mut *conn)?;
    let now = now_millis();
    let mut queued = 0u64;
    for depth in [1_000u64, 100_000, 1_000_000] {
        let started = Instant::now();
        while queued < depth {
            let chunk = (depth - queued).min(10_000);
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                let items: Vec<NewNotification> =
                    (queued..queued + chunk).map(|i| notification(i, now)).collect();
                store::insert_many(conn, &items)
            })?;
            queued += chunk;
        }
        let fill = started.elapsed();
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let claimed = conn.transaction::<_, diesel::result::Error, _>(|conn| {
                queue::claim(conn, "bench", now_millis(), now_millis() + 60_000, BATCH, 1)
            })?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(claimed.len() as i64, BATCH);
            // Put them back so every sample sees the same depth.
            let ids: Vec<String> = claimed.into_iter().map(|c| c.id).collect();
            use mailroom::db::schema::notifications::dsl as n;
            diesel::update(n::notifications.filter(n::id.eq_any(&ids)))
                .set((
                    n::status.eq("queued"),
                    n::lease_owner.eq(None::<String>),
                    n::lease_until.eq(None::<i64>),
                ))
                .execute(&mut *conn)?;
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        println!(
            "{}",
            serde_json::json!({
                "backend": backend,
                "queued": depth,
                "claim_batch": BATCH,
                "claim_ms_median": samples[SAMPLES / 2],
                "claim_ms_p90": samples[SAMPLES * 9 / 10],
                "fill_seconds": fill.as_secs_f64(),
            })
        );
    }
    Ok(())
}
