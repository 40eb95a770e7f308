//! Works the webhook outbox: claims due calls, posts them signed (a few at a time, each bounded
//! in time, never in the way of mail delivery), and records each answer with backoff for retries.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{secret_key, sign};
use crate::config::DeliveryConfig;
use crate::db::{now_millis, Db, StoreError};
use crate::outbound::policy::HostPolicy;
use crate::secrets::SecretCipher;
use crate::store::webhooks::{
    self as outbox, claim, record, CallResult, Due, Endpoint, WebhookDeliveryStatus, SECRET_PURPOSE,
};

/// Calls in flight at once.
const CONCURRENCY: i64 = 8;
/// Attempts before a call is `failed`.
pub const MAX_ATTEMPTS: i32 = 10;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sender {
    pub db: Db,
    pub cipher: Arc<SecretCipher>,
    pub policy: HostPolicy,
    pub config: DeliveryConfig,
}

impl Sender {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            // A round in progress is abandoned at shutdown: its calls keep their lease, which
            // runs out, and they are sent again (at least once), so stopping stays within the
            // grace whatever the receivers do.
            let round = tokio::select! {
                r = self.round() => r,
                _ = shutdown.changed() => return,
            };
            let worked = match round {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "webhook round failed");
                    0
                }
            };
            if worked == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// One batch: claim, post, record. Returns how many calls were made.
    async fn round(&self) -> Result<usize, StoreError> {
        let now = now_millis();
        let lease_until = now + (TIMEOUT.as_millis() as i64) * 3;
        let due = self
            .db
            .write(move |conn| claim(conn, now, lease_until, CONCURRENCY).map_err(StoreError::from))
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let endpoints = Arc::new(self.db.read(outbox::load).await?.endpoints);
        let mut calls = JoinSet::new();
        for d in due {
            let (endpoints, cipher, policy, config) = (
                endpoints.clone(),
                self.cipher.clone(),
                self.policy.clone(),
                self.config.clone(),
            );
            calls.spawn(async move {
                let endpoint = endpoints.iter().find(|e| e.id == d.endpoint_id).cloned();
                call(d, endpoint, &cipher, &policy, &config).await
            });
        }
        let mut results = Vec::new();
        while let Some(r) = calls.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
        let n = results.len();
        self.db
            .write(move |conn| record(conn, &results).map_err(StoreError::from))
            .await?;
        Ok(n)
    }
}

/// Posts one call and says how it went.
async fn call(
    d: Due,
    endpoint: Option<Endpoint>,
    cipher: &SecretCipher,
    policy: &HostPolicy,
    config: &DeliveryConfig,
) -> CallResult {
    let at = now_millis();
    let retry = |status_code: Option<u16>, error: String| {
        let (status, next) = if d.attempts >= MAX_ATTEMPTS {
            (WebhookDeliveryStatus::Failed, at)
        } else {
            let delay = config.backoff(d.attempts.max(1) as u32);
            (WebhookDeliveryStatus::Pending, at + delay.as_millis() as i64)
        };
        tracing::info!(id = %d.id, endpoint = %d.endpoint_id, attempt = d.attempts, status_code, error = %error, outcome = status.as_str(), "webhook call");
        CallResult {
            id: d.id.clone(),
            status,
            status_code,
            error: Some(error),
            next_attempt_at: next,
            at,
        }
    };
    let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
        return CallResult {
            id: d.id.clone(),
            status: WebhookDeliveryStatus::Failed,
            status_code: None,
            error: Some("the endpoint was removed or disabled".into()),
            next_attempt_at: at,
            at,
        };
    };
    let key = match cipher
        .decrypt(SECRET_PURPOSE, &endpoint.secret)
        .ok()
        .and_then(|s| secret_key(s.expose_secret()))
    {
        Some(k) => k,
        None => return retry(None, "the endpoint's signing secret cannot be read".into()),
    };
    match post(&d.id, &d.payload, &endpoint.url, &key, policy).await {
        Ok(code) if (200..300).contains(&code) => {
            tracing::info!(id = %d.id, endpoint = %d.endpoint_id, attempt = d.attempts, status_code = code, outcome = "delivered", "webhook call");
            CallResult {
                id: d.id.clone(),
                status: WebhookDeliveryStatus::Delivered,
                status_code: Some(code),
                error: None,
                next_attempt_at: at,
                at,
            }
        }
        Ok(code) => retry(Some(code), format!("the receiver answered {code}")),
        Err(e) => retry(None, e),
    }
}

/// One signed POST; the receiver's status code.
pub async fn post(id: &str, body: &str, url: &str, key: &[u8], policy: &HostPolicy) -> Result<u16, String> {
    let (client, url) = crate::outbound::client_for(policy, url, TIMEOUT).await?;
    let timestamp = chrono::Utc::now().timestamp();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(key, id, timestamp, body))
        .header("user-agent", concat!("mailroom/", env!("CARGO_PKG_VERSION")))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("the request failed: {}", crate::outbound::cause(&e)))?;
    Ok(response.status().as_u16())
}
