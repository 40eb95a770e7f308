//! A small HTTP load generator for the benchmarks: posts notifications to mailroom at a fixed
//! concurrency (closed loop) or at a fixed rate (open loop, latency measured from each request's
//! scheduled start, so a stalled server cannot hide its queueing), and prints one JSON line.
//!
//!   cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --token T -n 100000 -c 64
//!   ... --rate 5000          fixed rate instead of fixed concurrency
//!   ... --batch 1000         POST /notifications/batch with this many items per request

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Args {
    url: String,
    token: String,
    count: u64,
    concurrency: u64,
    rate: Option<f64>,
    batch: u64,
    reason_bytes: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        token: String::new(),
        count: 100_000,
        concurrency: 64,
        rate: None,
        batch: 0,
        reason_bytes: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--token" => args.token = value(),
            "-n" => args.count = value().parse().expect("-n N"),
            "-c" => args.concurrency = value().parse().expect("-c N"),
            "--rate" => args.rate = Some(value().parse().expect("--rate R")),
            "--batch" => args.batch = value().parse().expect("--batch N"),
            "--reason-bytes" => args.reason_bytes = value().parse().expect("--reason-bytes N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.token.is_empty(), "--token is required");
    args
}

/// One notification whose rendered message (text + HTML) is about 2 KB.
fn notification(i: u64, reason_bytes: usize) -> serde_json::Value {
    let reason: String = "The product is limited to partners for now. "
        .chars()
        .cycle()
        .take(reason_bytes)
        .collect();
    json!({
        "event": "access_request_rejected",
        "to": format!("user{i}@example.com"),
        "to_name": "Benchmark User",
        "data": {"product_name": "Payments API", "user_name": "Bench", "reason": reason}
    })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    // reqwest is built without a default TLS provider (the service installs ring at start).
    mailroom::startup::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .unwrap();
    let (path, requests) = if args.batch > 0 {
        ("/notifications/batch", args.count.div_ceil(args.batch))
    } else {
        ("/notifications", args.count)
    };
    let endpoint = format!("{}{path}", args.url);
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..requests.min(1000))
            .map(|i| {
                let body = if args.batch > 0 {
                    json!({"notifications": (0..args.batch).map(|j| notification(i * args.batch + j, args.reason_bytes)).collect::<Vec<_>>()})
                } else {
                    notification(i, args.reason_bytes)
                };
                bytes::Bytes::from(serde_json::to_vec(&body).unwrap())
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workers = match args.rate {
        Some(_) => 1,
        None => args.concurrency,
    };
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(requests as usize)));
    let send = {
        let (client, endpoint, token, errors, latencies, bodies) = (
            client.clone(),
            endpoint.clone(),
            args.token.clone(),
            errors.clone(),
            latencies.clone(),
            bodies.clone(),
        );
        move |i: u64, scheduled: Instant| {
            let (client, endpoint, token, errors, latencies, bodies) = (
                client.clone(),
                endpoint.clone(),
                token.clone(),
                errors.clone(),
                latencies.clone(),
                bodies.clone(),
            );
            async move {
                let body = bodies[(i % bodies.len() as u64) as usize].clone();
                let res = client
                    .post(&endpoint)
                    .bearer_auth(&token)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status == 202 || status == 200
                    }
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies
                    .lock()
                    .unwrap()
                    .push(scheduled.elapsed().as_micros() as u64);
            }
        }
    };
    match args.rate {
        None => {
            for _ in 0..workers {
                let (next, send) = (next.clone(), send.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            break;
                        }
                        send(i, Instant::now()).await;
                    }
                }));
            }
        }
        Some(rate) => {
            // Open loop: request i starts at i / rate, whatever happened to the others.
            let interval = Duration::from_secs_f64(1.0 / rate);
            for i in 0..requests {
                let scheduled = started + interval.mul_f64(i as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                tasks.push(tokio::spawn(send(i, scheduled)));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let items = if args.batch > 0 { args.count } else { requests };
    println!(
        "{}",
        json!({
            "requests": requests,
            "notifications": items,
            "errors": errors.load(Ordering::Relaxed),
            "seconds": elapsed,
            "requests_per_second": requests as f64 / elapsed,
            "notifications_per_second": items as f64 / elapsed,
            "p50_ms": percentile(&lat, 50.0),
            "p99_ms": percentile(&lat, 99.0),
            "p999_ms": percentile(&lat, 99.9),
            "max_ms": lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
        })
    );
}
