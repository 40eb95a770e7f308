//! Prometheus metrics: counters and histograms recorded where things happen (accepting,
//! delivering, talking SMTP), gauges of the queue read from the database at each scrape so that
//! every instance of a fleet reports the same queue.

pub mod http;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Seconds, from a millisecond to a few minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process-wide recorder (installed once, also when several apps run in one test process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        metrics::gauge!("mailroom_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "mailroom_notifications_accepted_total",
        "Notifications accepted (202), by event"
    );
    describe_counter!(
        "mailroom_notifications_rejected_total",
        "Notifications refused, by reason"
    );
    describe_counter!(
        "mailroom_deliveries_total",
        "Delivery outcomes: sent, deferred, failed, expired, suppressed"
    );
    describe_counter!(
        "mailroom_smtp_replies_total",
        "SMTP answers by class: 2xx, 4xx, 5xx, network, tls, auth"
    );
    describe_gauge!("mailroom_queue", "Notifications by status, from the database");
    describe_gauge!(
        "mailroom_queue_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest queued notification"
    );
    describe_gauge!("mailroom_build_info", "The running version");
    describe_histogram!(
        "mailroom_accept_duration_seconds",
        Unit::Seconds,
        "Request to durable 202"
    );
    describe_histogram!(
        "mailroom_delivery_latency_seconds",
        Unit::Seconds,
        "Accepted to sent"
    );
    describe_histogram!(
        "mailroom_smtp_transaction_seconds",
        Unit::Seconds,
        "One SMTP mail transaction"
    );
}

pub fn accepted(event: &str) {
    metrics::counter!("mailroom_notifications_accepted_total", "event" => event.to_string()).increment(1);
}

/// `reason`: `validation`, `suppressed` is not a refusal (it is accepted), `unavailable`,
/// `storage`, `conflict`.
pub fn rejected(reason: &'static str) {
    metrics::counter!("mailroom_notifications_rejected_total", "reason" => reason).increment(1);
}

pub fn delivery(outcome: &'static str) {
    metrics::counter!("mailroom_deliveries_total", "outcome" => outcome).increment(1);
}

pub fn smtp_reply(class: &'static str) {
    metrics::counter!("mailroom_smtp_replies_total", "class" => class).increment(1);
}

pub fn accept_duration(d: Duration) {
    metrics::histogram!("mailroom_accept_duration_seconds").record(d.as_secs_f64());
}

pub fn delivery_latency(seconds: f64) {
    metrics::histogram!("mailroom_delivery_latency_seconds").record(seconds.max(0.0));
}

pub fn smtp_transaction(d: Duration) {
    metrics::histogram!("mailroom_smtp_transaction_seconds").record(d.as_secs_f64());
}

/// The class of an SMTP answer, for `mailroom_smtp_replies_total`.
pub fn reply_class(code: Option<u16>) -> &'static str {
    match code {
        Some(200..=299) => "2xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "network",
    }
}
