//! The dispatcher: claims due notifications in batches, sends them over pooled SMTP connections
//! outside any transaction, and records the outcomes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use rand::Rng;
use tokio::sync::{watch, Notify};

use super::accept::{not_deliverable_reason, NO_ADMIN_EMAIL};
use super::store::{self, Claimed, Deliverability, Outcome, Recorded};
use crate::config::DeliveryConfig;
use crate::db::{now_millis, Db};
use crate::mail::message::{self, Content, Sender};
use crate::mail::transport::{resolve_checked, ConnectError};
use crate::mail::{redact, MailContext, SmtpTarget};
use crate::secrets::SecretCipher;
use crate::settings::{admin_email, smtp};

/// Wakes the dispatcher: a new notification, or changed settings.
#[derive(Default)]
pub struct Signals {
    pub work: Notify,
    pub settings: Notify,
}

/// Where and as whom to send, for one version of the SMTP settings, with its open connections.
struct Route {
    version: i64,
    target: SmtpTarget,
    tls: TlsParameters,
    sender: Sender,
    /// Secrets to scrub from any server reply we store.
    redact: Vec<String>,
    /// Authenticated sessions kept open between messages (at most `concurrency`).
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    mail: MailContext,
    config: DeliveryConfig,
}

pub struct Dispatcher {
    db: Db,
    cipher: Arc<SecretCipher>,
    mail: MailContext,
    config: DeliveryConfig,
    signals: Arc<Signals>,
    owner: String,
    route: Option<Arc<Route>>,
    /// Why nothing can be sent, from the last housekeeping.
    blocked: Option<String>,
    /// Outcomes of the last batch, written while the next batch is being sent.
    unrecorded: Vec<Recorded>,
}

/// Exponential backoff with equal jitter: half the delay fixed, half random.
pub fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = config
        .retry_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(config.retry_max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

impl Dispatcher {
    pub fn new(
        db: Db,
        cipher: Arc<SecretCipher>,
        mail: MailContext,
        config: DeliveryConfig,
        signals: Arc<Signals>,
    ) -> Self {
        Self {
            db,
            cipher,
            mail,
            config,
            signals,
            owner: uuid::Uuid::new_v4().to_string(),
            route: None,
            blocked: None,
            unrecorded: Vec::new(),
        }
    }

    /// Runs until `shutdown` turns true: then stops claiming, finishes what is being sent, and
    /// releases what was claimed but not started.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, concurrency = self.config.concurrency, "dispatcher started");
        let mut last_maintenance: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_maintenance.is_none_or(|t| t.elapsed() >= self.config.poll_interval) {
                if let Err(e) = self.maintain().await {
                    tracing::error!(error = ?e, "dispatcher housekeeping failed");
                }
                last_maintenance = Some(Instant::now());
            }
            let sent = if self.blocked.is_none() {
                match self.claim_and_send(&shutdown).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!(error = ?e, "dispatcher batch failed");
                        0
                    }
                }
            } else {
                if let Err(e) = self.flush().await {
                    tracing::error!(error = ?e, "recording outcomes failed");
                }
                0
            };
            if sent > 0 {
                continue;
            }
            tokio::select! {
                _ = self.signals.work.notified() => {}
                _ = self.signals.settings.notified() => last_maintenance = None,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = ?e, "recording the last outcomes failed; their leases will expire and they will be retried");
        }
        tracing::info!(owner = %self.owner, "dispatcher stopped");
    }

    /// Refreshes the route from the settings and moves rows between held, queued and expired.
    async fn maintain(&mut self) -> anyhow::Result<()> {
        let db = self.db.clone();
        let (smtp, admin) = db
            .read(|conn| Ok((smtp::load(conn)?, admin_email::load(conn)?)))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut blocked = not_deliverable_reason(smtp.as_ref().map(|s| &s.value));
        match (&smtp, blocked.is_none()) {
            (Some(stored), true) if self.route.as_ref().is_none_or(|r| r.version != stored.version) => {
                match self.build_route(stored).await {
                    Ok(route) => self.route = Some(Arc::new(route)),
                    Err(reason) => {
                        self.route = None;
                        blocked = Some(reason);
                    }
                }
            }
            (_, false) => self.route = None,
            _ => {}
        }
        if blocked != self.blocked {
            match &blocked {
                Some(reason) => tracing::warn!(%reason, "delivery is on hold"),
                None => tracing::info!("delivery is possible"),
            }
        }
        self.blocked = blocked.clone();
        let d = Deliverability {
            blocked,
            admin_email: admin,
        };
        let now = now_millis();
        let queued = db
            .write(move |conn| Ok(store::maintain(conn, now, &d)?))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if queued > 0 {
            tracing::info!(queued, "notifications released for delivery");
        }
        Ok(())
    }

    async fn build_route(
        &self,
        stored: &crate::settings::store::Stored<smtp::SmtpSettings>,
    ) -> Result<Route, String> {
        let settings = &stored.value;
        let sender = Sender::from_settings(settings).ok_or("no default From address is configured")?;
        let target = SmtpTarget::from_settings(settings, &self.cipher).map_err(|e| format!("{e:#}"))?;
        // A DNS failure may be temporary: keep trying to send; each attempt reports it.
        if let Ok(Err(refused)) = resolve_checked(&self.mail, &target.host, target.port).await {
            return Err(format!("refusing to connect: {refused}"));
        }
        let tls = target
            .tls_parameters(&self.mail)
            .map_err(|e| format!("cannot set up TLS for the SMTP server: {e}"))?;
        Ok(Route {
            version: stored.version,
            tls,
            redact: target.secret_forms(),
            target,
            sender,
            idle: Mutex::new(Vec::new()),
            mail: self.mail.clone(),
            config: self.config.clone(),
        })
    }

    /// Claims a batch and sends it. The outcomes of the previous batch are written while this
    /// batch is on the wire, so the database round trip does not leave the SMTP sessions idle.
    async fn claim_and_send(&mut self, shutdown: &watch::Receiver<bool>) -> anyhow::Result<usize> {
        let Some(route) = self.route.clone() else {
            self.flush().await?;
            return Ok(0);
        };
        let now = now_millis();
        let lease_until = now + self.config.lease.as_millis() as i64;
        let (owner, limit) = (self.owner.clone(), self.config.batch_size);
        let claimed = self
            .db
            .write(move |conn| Ok(store::claim(conn, &owner, now, lease_until, limit)?))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if claimed.is_empty() {
            self.flush().await?;
            return Ok(0);
        }
        let count = claimed.len();
        let concurrency = self.config.concurrency;
        let shutdown = shutdown.clone();
        // Each send is its own task, so sends run on every runtime thread.
        let batch = tokio::spawn(async move {
            stream::iter(claimed)
                .map(|n| {
                    let (route, shutdown) = (route.clone(), shutdown.clone());
                    tokio::spawn(async move { route.deliver(n, &shutdown).await })
                })
                .buffer_unordered(concurrency)
                .filter_map(|joined| async move {
                    // A panicked send leaves its row claimed; the lease expiry requeues it.
                    joined
                        .map_err(|e| tracing::error!(error = %e, "a send task failed"))
                        .ok()
                })
                .collect::<Vec<Recorded>>()
                .await
        });
        let flushed = self.flush().await;
        match batch.await {
            Ok(results) => self.unrecorded = results,
            Err(e) => tracing::error!(error = %e, "a send batch failed"),
        }
        flushed?;
        Ok(count)
    }

    /// Writes the outcomes not yet recorded.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let results = std::mem::take(&mut self.unrecorded);
        let owner = self.owner.clone();
        self.db
            .write(move |conn| Ok(store::record(conn, &owner, &results)?))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Route {
    async fn deliver(&self, n: Claimed, shutdown: &watch::Receiver<bool>) -> Recorded {
        let attempted_at = now_millis();
        let started = Instant::now();
        let outcome = if *shutdown.borrow() {
            Outcome::Released
        } else if n.expires_at <= attempted_at {
            Outcome::Expired
        } else {
            match &n.recipient {
                None => Outcome::Held {
                    reason: NO_ADMIN_EMAIL.into(),
                },
                Some(to) => self.send(&n, to).await,
            }
        };
        Recorded {
            id: n.id,
            outcome,
            attempted_at,
            duration_ms: started.elapsed().as_millis() as i64,
        }
    }

    async fn send(&self, n: &Claimed, to: &str) -> Outcome {
        let content = Content {
            notification_id: &n.id,
            to,
            to_name: n.to_name.as_deref(),
            subject: &n.subject,
            text: &n.text_body,
            html: &n.html_body,
        };
        let message = match message::build(&self.sender, &content) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Failed {
                    code: None,
                    reply: format!("cannot build the message: {e}"),
                    reason: "the message could not be built".into(),
                }
            }
        };
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        match self.transmit(&envelope, &bytes).await {
            Ok(response) => Outcome::Sent {
                code: u16::from(response.code()),
                reply: redact(&response.message().collect::<Vec<_>>().join(" "), &self.redact),
                message_id: self.sender.message_id(&n.id),
            },
            Err(failure) => {
                let (code, reply, permanent) = match &failure {
                    SendFailure::Smtp(e) => (e.status().map(u16::from), e.to_string(), e.is_permanent()),
                    // Connection, TLS and AUTH problems are the server's or the settings', not
                    // the message's: retry, so that fixed settings still deliver it.
                    SendFailure::Connect(e) => (None, format!("cannot open an SMTP session: {e}"), false),
                    SendFailure::Timeout(secs) => (
                        None,
                        format!("the server did not accept the message within {secs} s"),
                        false,
                    ),
                };
                let reply = redact(&reply, &self.redact);
                let attempts = n.attempt_count.max(1) as u32;
                if permanent {
                    Outcome::Failed {
                        code,
                        reason: format!("rejected by the SMTP server: {reply}"),
                        reply,
                    }
                } else if attempts >= self.config.max_attempts {
                    Outcome::Failed {
                        code,
                        reason: format!("gave up after {attempts} attempts; last error: {reply}"),
                        reply,
                    }
                } else {
                    let delay = backoff(&self.config, attempts);
                    Outcome::Deferred {
                        code,
                        reply,
                        next_attempt_at: now_millis() + delay.as_millis() as i64,
                    }
                }
            }
        }
    }

    /// Sends over a pooled session, opening one when none is idle. A pooled session the server
    /// has meanwhile closed fails before MAIL FROM is answered; then one fresh session is tried.
    async fn transmit(
        &self,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<lettre::transport::smtp::response::Response, SendFailure> {
        let limit = self.target.timeout * 2;
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut conn, mut reused) = match pooled {
            Some(conn) => (conn, true),
            None => (
                self.target
                    .connect(&self.mail, &self.tls)
                    .await
                    .map_err(SendFailure::Connect)?,
                false,
            ),
        };
        loop {
            match tokio::time::timeout(limit, conn.send(envelope, bytes)).await {
                Ok(Ok(response)) => {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if !conn.has_broken() && idle.len() < self.config.concurrency {
                        idle.push(conn);
                    }
                    return Ok(response);
                }
                Ok(Err(e)) if reused && e.status().is_none() && !e.is_timeout() => {
                    reused = false;
                    conn = self
                        .target
                        .connect(&self.mail, &self.tls)
                        .await
                        .map_err(SendFailure::Connect)?;
                }
                Ok(Err(e)) => return Err(SendFailure::Smtp(e)),
                Err(_) => {
                    conn.abort().await;
                    return Err(SendFailure::Timeout(limit.as_secs()));
                }
            }
        }
    }
}

enum SendFailure {
    Connect(ConnectError),
    Smtp(lettre::transport::smtp::Error),
    Timeout(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: u64, max: u64) -> DeliveryConfig {
        DeliveryConfig {
            enabled: true,
            concurrency: 1,
            max_attempts: 10,
            retry_base: Duration::from_secs(base),
            retry_max: Duration::from_secs(max),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            batch_size: 10,
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_maximum() {
        let c = config(120, 8 * 3600);
        for attempt in 1..=12u32 {
            let full = Duration::from_secs(120 * 2u64.pow(attempt - 1)).min(c.retry_max);
            let d = backoff(&c, attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        // Ten attempts with the defaults span roughly a day.
        let total: Duration = (1..10u32)
            .map(|a| Duration::from_secs(120 * 2u64.pow(a - 1)).min(c.retry_max))
            .sum();
        assert!(
            total > Duration::from_secs(16 * 3600) && total < Duration::from_secs(30 * 3600),
            "{total:?}"
        );
    }

    #[test]
    fn redaction_removes_passwords_and_their_auth_encodings() {
        use secrecy::SecretString;
        let target = SmtpTarget {
            host: "h".into(),
            port: 25,
            security: crate::settings::smtp::Security::None,
            username: Some("user".into()),
            password: Some(SecretString::from("hunter2".to_string())),
            timeout: Duration::from_secs(1),
            tls_verify: true,
        };
        let forms = target.secret_forms();
        let echoed = format!("535 bad credentials {} for hunter2 ({})", forms[0], forms[1]);
        let clean = redact(&echoed, &forms);
        assert!(
            !clean.contains("hunter2") && !clean.contains(&forms[0]) && !clean.contains(&forms[1]),
            "{clean}"
        );
    }
}
