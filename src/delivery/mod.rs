//! Delivery: the dispatcher claims due notifications in batches, sends them over pooled SMTP connections
//! outside any transaction, and records the outcomes.

pub mod wakeup;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};

use lettre::transport::smtp::client::TlsParameters;
use tokio::sync::{mpsc, watch};

use crate::state::Signals;
use tokio::task::JoinSet;

use crate::config::DeliveryConfig;
use crate::db::StoreError;
use crate::db::{now_millis, Db};
use crate::mail::message::{self, Content, Sender};
use crate::mail::transport::{resolve_checked, ConnectError, Session};
use crate::mail::{redact, MailContext, SmtpTarget};
use crate::notifications::routing::{not_deliverable_reason, Deliverability, NO_ADMIN_EMAIL};
use crate::secrets::SecretCipher;
use crate::settings::{admin_email, smtp};
use crate::store::queue::housekeeping::{self, Requeue};
use crate::store::queue::outcomes::{self, Outcome, Recorded};
use crate::store::queue::{self, Claimed};
use lettre::transport::smtp::extension::Extension;

/// Where and as whom to send, for one version of the SMTP settings, with its open connections.
struct Route {
    version: i64,
    target: SmtpTarget,
    tls: TlsParameters,
    sender: Sender,
    /// Secrets to scrub from any server reply we store.
    redact: Vec<String>,
    /// Authenticated sessions kept open between messages (at most `concurrency`).
    idle: Mutex<Vec<Session>>,
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
    /// When this dispatcher last failed to reach the database.
    trouble: Arc<DbTrouble>,
}

/// When the database last failed this dispatcher (housekeeping, claims, renewals, outcomes):
/// other owners' expired leases are taken back only a lease after it ([`store::Requeue`]).
#[derive(Debug, Default)]
struct DbTrouble(Mutex<Option<Instant>>);

impl DbTrouble {
    fn seen(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether the database has answered every request for at least `period`.
    fn clear_for(&self, period: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= period)
    }
}

/// A notification being sent by one of the dispatcher's slots.
struct InFlight {
    id: String,
    event: String,
    recipient: Option<String>,
    attempt_count: i32,
    started_at: i64,
    /// The server it is being sent to ([`server_of`]), and how to drop the send when that server
    /// is replaced.
    server: String,
    abort: tokio::task::AbortHandle,
}

/// Which server a route sends to: a new one in the settings replaces it.
fn server_of(route: &Route) -> String {
    let t = &route.target;
    format!(
        "{:?}|{}|{}|{:?}|{:?}",
        t.security,
        t.host.to_ascii_lowercase(),
        t.port,
        t.username,
        t.tls_verify
    )
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
            trouble: Arc::default(),
        }
    }

    /// Runs until `shutdown` turns true: then stops claiming, releases what was claimed but not
    /// started, gives the sends in flight the shutdown grace, drops those still running and
    /// releases their claims.
    ///
    /// Each of `concurrency` slots sends one message at a time; a slot that frees up takes the
    /// next claimed message at once, so one slow or stalled server session holds back nothing
    /// but its own slot. Claims run beside the sends, sized to about a tenth of a second of the
    /// current pace (few transactions when the queue is long, small claims when the server is
    /// slow, so that other instances still find work). Outcomes are recorded as they come by a
    /// separate task, and the leases of everything claimed are renewed while it is held: a claim
    /// stays with a live owner, and after a crash only what was on the wire, or accepted by the
    /// server with its outcome not yet committed, can be sent twice.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, concurrency = self.config.concurrency, lease = ?self.config.lease, "dispatcher started");
        if let Some(url) = self.db.postgres_url() {
            let signals = self.signals.clone();
            wakeup::listen(
                url.to_string(),
                move || signals.work.notify_one(),
                shutdown.clone(),
            );
        }
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel::<Recorded>();
        let recorder = tokio::spawn(record_outcomes(
            self.db.clone(),
            self.owner.clone(),
            outcomes_rx,
            self.trouble.clone(),
        ));
        let (claims_tx, mut claims_rx) = mpsc::unbounded_channel::<ClaimResult>();
        let mut work = Work::default();
        let renew_every = (self.config.lease / 3).max(Duration::from_millis(100));
        let mut next_maintenance = Instant::now();
        let mut next_renewal = Instant::now() + renew_every;
        // After a failed claim (database trouble), wait a poll interval instead of spinning.
        let mut claim_paused_until = Instant::now();
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if stop_deadline.is_none() && *shutdown.borrow() {
                // Sends in flight get the grace less a moment to release the claims of those
                // still running: the grace bounds the whole shutdown.
                let release = (self.config.shutdown_grace / 4).min(Duration::from_millis(500));
                stop_deadline = Some(Instant::now() + self.config.shutdown_grace - release);
                tracing::info!(in_flight = work.slots.len(), grace = ?self.config.shutdown_grace, "dispatcher stopping");
                give_back(work.ready.drain(..), &outcomes);
            }
            if let Some(deadline) = stop_deadline {
                if work.slots.is_empty() && !work.claiming {
                    break;
                }
                if Instant::now() >= deadline {
                    self.abandon(&mut work, &mut claims_rx, &outcomes).await;
                    break;
                }
            }
            let now = Instant::now();
            if stop_deadline.is_none() && now >= next_maintenance {
                if let Err(e) = self.maintain().await {
                    self.trouble.seen();
                    tracing::error!(error = format!("{e:#}"), "dispatcher housekeeping failed");
                }
                next_maintenance = Instant::now() + self.config.poll_interval;
            }
            if now >= next_renewal {
                if !work.in_flight.is_empty() || !work.ready.is_empty() {
                    self.renew().await;
                }
                next_renewal = Instant::now() + renew_every;
            }
            // Claimed with settings that have since changed: back to the queue, to be claimed
            // again with the new ones.
            let current = self.route.as_ref().map(|r| r.version);
            if current != work.ready_version {
                give_back(work.ready.drain(..), &outcomes);
                work.ready_version = current;
                // Sends to a server the settings no longer name are dropped at once: stalled
                // ones would hold their slots for up to twice the timeout. Their messages are
                // released, due again at once, for the new server.
                if let Some(route) = &self.route {
                    let server = server_of(route);
                    for info in work.in_flight.values().filter(|i| i.server != server) {
                        tracing::info!(id = %info.id, "the SMTP server was replaced: dropping its send in flight");
                        info.abort.abort();
                    }
                }
            }
            if let Some(route) = &self.route {
                work.start_slots(route, self.config.concurrency, &outcomes);
            }
            if stop_deadline.is_none()
                && self.blocked.is_none()
                && Instant::now() >= claim_paused_until
                && work.wants_claim(self.config.concurrency)
            {
                if let Some(route) = self.route.clone() {
                    let limit = work.claim_size(&self.config);
                    work.claiming = true;
                    let (this, claims) = (self.claimer(), claims_tx.clone());
                    let version = route.version;
                    tokio::spawn(async move {
                        let result = this.claim(limit, version).await;
                        let _ = claims.send(ClaimResult {
                            version,
                            limit,
                            result,
                        });
                    });
                }
            }
            let wake_at = match stop_deadline {
                Some(deadline) => deadline.min(next_renewal),
                None => next_maintenance.min(next_renewal),
            };
            tokio::select! {
                Some(joined) = work.slots.join_next_with_id(), if !work.slots.is_empty() => {
                    self.finished(joined, &mut work.in_flight, &outcomes);
                    work.pace.finished();
                    work.something_happened();
                }
                Some(claimed) = claims_rx.recv() => {
                    work.claiming = false;
                    match claimed.result {
                        Ok(rows) => {
                            work.queue = if rows.len() == claimed.limit {
                                QueueHint::MoreDue
                            } else {
                                QueueHint::LooksEmpty
                            };
                            if stop_deadline.is_none() && Some(claimed.version) == work.ready_version {
                                work.ready.extend(rows);
                            } else {
                                give_back(rows, &outcomes);
                            }
                        }
                        Err(e) => {
                            self.trouble.seen();
                            tracing::error!(error = format!("{e:#}"), "claiming notifications failed");
                            claim_paused_until = Instant::now() + self.config.poll_interval;
                        }
                    }
                }
                _ = self.signals.work.notified(), if stop_deadline.is_none() => {
                    work.queue = QueueHint::MoreDue;
                }
                _ = self.signals.settings.notified(), if stop_deadline.is_none() => {
                    next_maintenance = Instant::now();
                    work.something_happened();
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    work.something_happened();
                }
                _ = shutdown.changed(), if stop_deadline.is_none() => {}
            }
        }
        drop(outcomes);
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "the outcome recorder failed");
        }
        tracing::info!(owner = %self.owner, "dispatcher stopped");
    }

    /// The shutdown grace is over: drops the SMTP sessions still in flight and releases their
    /// claims, and those of a claim still being made.
    async fn abandon(
        &self,
        work: &mut Work,
        claims_rx: &mut mpsc::UnboundedReceiver<ClaimResult>,
        outcomes: &mpsc::UnboundedSender<Recorded>,
    ) {
        tracing::warn!(
            in_flight = work.slots.len(),
            "shutdown grace is over: dropping the SMTP sessions still in flight and releasing their claims"
        );
        work.slots.abort_all();
        while let Some(joined) = work.slots.join_next_with_id().await {
            self.finished(joined, &mut work.in_flight, outcomes);
        }
        if work.claiming {
            if let Some(ClaimResult { result: Ok(rows), .. }) = claims_rx.recv().await {
                give_back(rows, outcomes);
            }
            work.claiming = false;
        }
        give_back(work.ready.drain(..), outcomes);
    }

    /// What a claim needs, without borrowing the dispatcher across the spawn.
    fn claimer(&self) -> Claimer {
        Claimer {
            db: self.db.clone(),
            owner: self.owner.clone(),
            lease: self.config.lease,
        }
    }

    /// Accounts for a finished slot. A send that completed has sent its own outcome; one that was
    /// dropped at shutdown is released; one that panicked is deferred like a network error.
    fn finished(
        &self,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        in_flight: &mut HashMap<tokio::task::Id, InFlight>,
        outcomes: &mpsc::UnboundedSender<Recorded>,
    ) {
        let (task, error) = match joined {
            Ok((task, ())) => (task, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(info) = in_flight.remove(&task) else {
            return;
        };
        let Some(error) = error else {
            return;
        };
        let attempted_at = now_millis();
        let outcome = if error.is_cancelled() {
            tracing::info!(id = %info.id, event = %info.event, outcome = "released", "delivery dropped (shutdown or a replaced server); it will be sent again");
            Outcome::Released
        } else {
            tracing::error!(id = %info.id, event = %info.event, error = %error, "a send task panicked");
            Outcome::Deferred {
                code: None,
                reply: "internal error while sending".into(),
                next_attempt_at: attempted_at
                    + self.config.backoff(info.attempt_count.max(1) as u32).as_millis() as i64,
            }
        };
        let _ = outcomes.send(Recorded {
            id: info.id,
            event: info.event,
            recipient: info.recipient,
            outcome,
            attempted_at: info.started_at,
            duration_ms: attempted_at - info.started_at,
        });
    }

    async fn renew(&self) {
        let now = now_millis();
        let lease_until = now + self.config.lease.as_millis() as i64;
        let owner = self.owner.clone();
        if let Err(e) = self
            .db
            .write(move |conn| queue::renew(conn, &owner, now, lease_until).map_err(StoreError::from))
            .await
        {
            self.trouble.seen();
            tracing::error!(error = format!("{e:#}"), "renewing the leases in flight failed");
        }
    }

    /// Refreshes the route from the settings and moves rows between held, queued and expired.
    async fn maintain(&mut self) -> Result<(), StoreError> {
        self.store_rotated_refresh_token().await;
        let db = self.db.clone();
        let (smtp, admin) = db
            .read(|conn| Ok::<_, StoreError>((smtp::load(conn)?, admin_email::load(conn)?)))
            .await?;
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
            suppressed: Default::default(),
        };
        let now = now_millis();
        let requeue = Requeue {
            owner: self.owner.clone(),
            reachable_for_a_lease: self.trouble.clear_for(self.config.lease),
            lease_ms: self.config.lease.as_millis() as i64,
        };
        let queued = db
            .write(move |conn| housekeeping::maintain(conn, now, d.routing(), &requeue))
            .await?;
        if queued > 0 {
            tracing::info!(queued, "notifications released for delivery");
        }
        Ok(())
    }

    /// Saves a refresh token the provider rotated, so that a restart does not fall back to the
    /// old one (which the provider may no longer accept).
    async fn store_rotated_refresh_token(&self) {
        let Some(route) = &self.route else { return };
        let Some(source) = &route.target.oauth else { return };
        let Some(token) = self.mail.tokens.rotated_refresh_token(source) else {
            return;
        };
        let (cipher, version) = (self.cipher.clone(), route.version);
        let saved = self
            .db
            .write(move |conn| smtp::store_rotated_refresh_token(conn, &cipher, version, &token))
            .await;
        match saved {
            Ok(true) => tracing::info!("stored the refresh token the OAuth provider rotated"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "storing a rotated refresh token failed"),
        }
    }

    async fn build_route(
        &self,
        stored: &crate::store::settings::Stored<smtp::SmtpSettings>,
    ) -> Result<Route, String> {
        let settings = &stored.value;
        let sender = settings.sender().ok_or("no default From address is configured")?;
        let password = settings
            .unseal_password(&self.cipher)
            .map_err(|e| format!("{e:#}"))?;
        let oauth = settings
            .token_source(&self.cipher)
            .map_err(|e| format!("{e:#}"))?;
        let target = settings.target(password, oauth);
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
}

/// The result of a claim made beside the sends.
struct ClaimResult {
    /// The settings version it was claimed for.
    version: i64,
    limit: usize,
    result: Result<Vec<Claimed>, StoreError>,
}

struct Claimer {
    db: Db,
    owner: String,
    lease: Duration,
}

impl Claimer {
    async fn claim(self, limit: usize, settings_version: i64) -> Result<Vec<Claimed>, StoreError> {
        let now = now_millis();
        let lease_until = now + self.lease.as_millis() as i64;
        let owner = self.owner;
        self.db
            .write(move |conn| {
                queue::claim(conn, &owner, now, lease_until, limit as i64, settings_version)
                    .map_err(StoreError::from)
            })
            .await
    }
}

/// What the dispatcher holds: sends in flight, claimed notifications waiting for a slot, and
/// whether a claim is under way.
#[derive(Default)]
struct Work {
    slots: JoinSet<()>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    ready: VecDeque<Claimed>,
    /// The settings version everything in `ready` was claimed for (the current route's).
    ready_version: Option<i64>,
    claiming: bool,
    queue: QueueHint,
    pace: Pace,
}

/// What the dispatcher knows about the queue beyond what it holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum QueueHint {
    /// The last claim got all it asked for, or new work was announced: claim again soon.
    MoreDue,
    /// Claim when a useful share of the slots is idle.
    #[default]
    Unknown,
    /// The last claim got less than it asked for: ask again only after something happens (a
    /// send finished, the settings changed, the poll interval passed), not at once.
    LooksEmpty,
}

impl Work {
    /// Claim when less than a round of work is waiting, and either more is known to be due or
    /// a useful share of the slots is idle (an empty queue is not asked once per finished send).
    fn wants_claim(&self, concurrency: usize) -> bool {
        if self.claiming || self.ready.len() >= concurrency {
            return false;
        }
        let idle = concurrency.saturating_sub(self.slots.len() + self.ready.len());
        match self.queue {
            QueueHint::MoreDue => true,
            QueueHint::Unknown => self.slots.is_empty() || idle >= concurrency.div_ceil(4),
            QueueHint::LooksEmpty => false,
        }
    }

    /// An empty-looking queue may have been filled since.
    fn something_happened(&mut self) {
        if self.queue == QueueHint::LooksEmpty {
            self.queue = QueueHint::Unknown;
        }
    }

    /// About a tenth of a second of sending at the current pace, at least a round of slots, at
    /// most the configured batch.
    fn claim_size(&self, config: &DeliveryConfig) -> usize {
        (self.pace.per_second() / 10)
            .max(config.concurrency)
            .min(config.batch_size.max(1) as usize)
    }

    /// Starts a send for each idle slot while claimed notifications wait.
    fn start_slots(
        &mut self,
        route: &Arc<Route>,
        concurrency: usize,
        outcomes: &mpsc::UnboundedSender<Recorded>,
    ) {
        while self.slots.len() < concurrency {
            let Some(n) = self.ready.pop_front() else {
                return;
            };
            let (id, event, recipient, attempt_count) = (
                n.id.clone(),
                n.event.clone(),
                n.recipient.clone(),
                n.attempt_count,
            );
            let server = server_of(route);
            let (route, outcomes) = (route.clone(), outcomes.clone());
            let abort = self.slots.spawn(async move {
                let recorded = route.deliver(n).await;
                let _ = outcomes.send(recorded);
            });
            let info = InFlight {
                id,
                event,
                recipient,
                attempt_count,
                started_at: now_millis(),
                server,
                abort: abort.clone(),
            };
            self.in_flight.insert(abort.id(), info);
        }
    }
}

/// Gives back claimed notifications that were never started (not an attempt).
fn give_back(rows: impl IntoIterator<Item = Claimed>, outcomes: &mpsc::UnboundedSender<Recorded>) {
    let now = now_millis();
    for n in rows {
        let _ = outcomes.send(Recorded {
            id: n.id,
            event: n.event,
            recipient: n.recipient,
            outcome: Outcome::Released,
            attempted_at: now,
            duration_ms: 0,
        });
    }
}

/// Sends finished per second, over the last whole second.
struct Pace {
    since: Instant,
    count: usize,
    last: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            count: 0,
            last: 0,
        }
    }
}

impl Pace {
    fn finished(&mut self) {
        let elapsed = self.since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.last = (self.count as f64 / elapsed.as_secs_f64()) as usize;
            self.count = 0;
            self.since = Instant::now();
        }
        self.count += 1;
    }

    fn per_second(&self) -> usize {
        // A stalled pace does not keep claiming at the old rate.
        if self.since.elapsed() >= Duration::from_secs(2) {
            return self.count;
        }
        self.last.max(self.count)
    }
}

/// Writes outcomes as they arrive, as many per transaction as are waiting. A failed write is
/// retried (the leases of rows still waiting here keep being renewed); once the dispatcher has
/// stopped, a few more tries are made before giving up (their leases then expire and the rows are
/// retried: at least once, never lost).
async fn record_outcomes(
    db: Db,
    owner: String,
    mut rx: mpsc::UnboundedReceiver<Recorded>,
    trouble: Arc<DbTrouble>,
) {
    let mut pending: Vec<Recorded> = Vec::new();
    let mut closed = false;
    let mut failures_after_close = 0;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
        }
        while pending.len() < 1000 {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let batch = Arc::new(std::mem::take(&mut pending));
        let (owner2, to_write) = (owner.clone(), batch.clone());
        let result = db
            .write(move |conn| outcomes::record(conn, &owner2, &to_write))
            .await;
        if let Err(e) = result {
            trouble.seen();
            tracing::error!(
                error = format!("{e:#}"),
                "recording delivery outcomes failed; retrying"
            );
            pending = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
            if closed || rx.is_closed() {
                failures_after_close += 1;
                if failures_after_close >= 3 {
                    tracing::error!(
                        unrecorded = pending.len(),
                        "giving up on recording outcomes; their leases will expire and they will be sent again"
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Route {
    async fn deliver(&self, n: Claimed) -> Recorded {
        let attempted_at = now_millis();
        let started = Instant::now();
        let outcome = if n.expires_at <= attempted_at {
            Outcome::Expired
        } else {
            match &n.recipient {
                None => Outcome::Held {
                    reason: NO_ADMIN_EMAIL.into(),
                },
                Some(to) => self.send(&n, to).await,
            }
        };
        log_outcome(&n, &outcome, started.elapsed());
        count_outcome(&n, &outcome);
        Recorded {
            id: n.id,
            event: n.event,
            recipient: n.recipient,
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
                    suppress: false,
                }
            }
        };
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let started = Instant::now();
        let transmitted = self.transmit(&envelope, &bytes).await;
        crate::metrics::smtp_transaction(started.elapsed());
        crate::metrics::smtp_reply(match &transmitted {
            Ok(_) => "2xx",
            Err(f) => failure_class(f),
        });
        match transmitted {
            Ok(response) => Outcome::Sent {
                code: u16::from(response.code()),
                reply: redact(&response.message().collect::<Vec<_>>().join(" "), &self.redact),
                message_id: self.sender.message_id(&n.id),
            },
            Err(failure) => {
                let at_rcpt = matches!(failure, SendFailure::Smtp(Stage::Rcpt, _));
                let (code, reply, permanent) = match &failure {
                    SendFailure::Smtp(_, e) => (e.status().map(u16::from), e.to_string(), e.is_permanent()),
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
                        suppress: crate::suppressions::names_the_recipient(at_rcpt, code, &reply),
                        reply,
                    }
                } else if attempts >= self.config.max_attempts {
                    Outcome::Failed {
                        code,
                        reason: format!("gave up after {attempts} attempts; last error: {reply}"),
                        reply,
                        suppress: false,
                    }
                } else {
                    let delay = self.config.backoff(attempts);
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
            match tokio::time::timeout(limit, transaction(&mut conn, envelope, bytes)).await {
                Ok(Ok(response)) => {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if !conn.conn.has_broken() && idle.len() < self.config.concurrency {
                        idle.push(conn);
                    }
                    return Ok(response);
                }
                Ok(Err((_, e))) if reused && e.status().is_none() && !e.is_timeout() => {
                    reused = false;
                    conn = self
                        .target
                        .connect(&self.mail, &self.tls)
                        .await
                        .map_err(SendFailure::Connect)?;
                }
                Ok(Err((stage, e))) => return Err(SendFailure::Smtp(stage, e)),
                Err(_) => {
                    // Dropped, not closed: a server that stopped answering would not answer QUIT
                    // either, and waiting for it would hold this slot (and shutdown) hostage.
                    drop(conn);
                    return Err(SendFailure::Timeout(limit.as_secs()));
                }
            }
        }
    }
}

/// The delivery counters and the latency from accept to sent.
fn count_outcome(n: &Claimed, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { .. } => {
            crate::metrics::delivery("sent");
            crate::metrics::delivery_latency((now_millis() - n.created_at) as f64 / 1000.0);
        }
        Outcome::Deferred { .. } => crate::metrics::delivery("deferred"),
        Outcome::Failed { .. } => crate::metrics::delivery("failed"),
        Outcome::Expired => crate::metrics::delivery("expired"),
        Outcome::Held { .. } | Outcome::Released => {}
    }
}

/// The class of what the server (or the network) answered, for `mailroom_smtp_replies_total`.
fn failure_class(failure: &SendFailure) -> &'static str {
    let smtp = |e: &lettre::transport::smtp::Error| match e.status().map(u16::from) {
        Some(530 | 534 | 535 | 538) => "auth",
        Some(code) => crate::metrics::reply_class(Some(code)),
        None if e.is_tls() => "tls",
        None => "network",
    };
    match failure {
        SendFailure::Smtp(_, e) => smtp(e),
        SendFailure::Connect(ConnectError::Smtp(e)) => smtp(e),
        SendFailure::Connect(ConnectError::OAuth(_) | ConnectError::TokenRejected { .. }) => "auth",
        SendFailure::Connect(_) | SendFailure::Timeout(_) => "network",
    }
}

/// One line per attempt, so that an operator can follow a notification in the log.
fn log_outcome(n: &Claimed, outcome: &Outcome, took: Duration) {
    let ms = took.as_millis() as u64;
    match outcome {
        Outcome::Sent { code, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "sent", smtp_code = code, ms, "delivery attempt")
        }
        Outcome::Deferred { code, reply, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "deferred", smtp_code = code, ms, reply = %reply, "delivery attempt")
        }
        Outcome::Failed { code, reply, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "failed", smtp_code = code, ms, reply = %reply, "delivery attempt")
        }
        Outcome::Expired => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "expired", "delivery attempt")
        }
        Outcome::Held { reason } => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "held", reason = %reason, "delivery attempt")
        }
        Outcome::Released => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "released", "delivery attempt")
        }
    }
}

enum SendFailure {
    Connect(ConnectError),
    Smtp(Stage, lettre::transport::smtp::Error),
    Timeout(u64),
}

/// Where in the mail transaction a server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mail,
    Rcpt,
    Data,
}

/// MAIL, RCPT for each recipient, DATA and the message; an error says at which stage (a 5xx at
/// RCPT names the recipient). When the server offers PIPELINING (RFC 2920), MAIL, the RCPTs and
/// DATA go out in one write and their replies are read in order, one round trip instead of
/// three; otherwise each command waits for its reply. After any failed reply the session is
/// dropped by the caller, so replies still unread never confuse a later transaction. Like
/// lettre's `send`, SMTPUTF8 and 8BITMIME are asked for when the envelope or message need them.
async fn transaction(
    session: &mut Session,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
) -> Result<lettre::transport::smtp::response::Response, (Stage, lettre::transport::smtp::Error)> {
    use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
    use lettre::transport::smtp::extension::{MailBodyParameter, MailParameter};
    let mut options = Vec::new();
    let server = session.conn.server_info();
    if needs_smtputf8(envelope) && server.supports_feature(Extension::SmtpUtfEight) {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() && server.supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(envelope.from().cloned(), options);
    let rcpts = envelope.to().iter().map(|to| Rcpt::new(to.clone(), vec![]));
    let conn = &mut session.conn;
    if session.pipelining {
        let mut batch = mail.to_string();
        for rcpt in rcpts {
            batch.push_str(&rcpt.to_string());
        }
        batch.push_str(&Data.to_string());
        // `command` writes the whole batch in one write and reads the first reply (MAIL's).
        conn.command(Verbatim(batch))
            .await
            .map_err(|e| (Stage::Mail, e))?;
        for _ in envelope.to() {
            conn.read_response().await.map_err(|e| (Stage::Rcpt, e))?;
        }
        conn.read_response().await.map_err(|e| (Stage::Data, e))?;
    } else {
        conn.command(mail).await.map_err(|e| (Stage::Mail, e))?;
        for rcpt in rcpts {
            conn.command(rcpt).await.map_err(|e| (Stage::Rcpt, e))?;
        }
        conn.command(Data).await.map_err(|e| (Stage::Data, e))?;
    }
    conn.message(bytes).await.map_err(|e| (Stage::Data, e))
}

/// Whether an envelope address is not ASCII. Domains are A-labels already
/// ([`message::wire_address`]) and accepted local parts are ASCII, so this is for the From
/// address of settings saved before both held.
fn needs_smtputf8(envelope: &lettre::address::Envelope) -> bool {
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a))
}

/// Commands already formatted, CRLF included, written as they are.
struct Verbatim(String);

impl std::fmt::Display for Verbatim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
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
            shutdown_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_maximum() {
        let c = config(120, 8 * 3600);
        for attempt in 1..=12u32 {
            let full = Duration::from_secs(120 * 2u64.pow(attempt - 1)).min(c.retry_max);
            let d = c.backoff(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        // Ten attempts with the defaults span roughly a day, whatever the jitter draws.
        for _ in 0..20 {
            let total: Duration = (1..10u32).map(|a| c.backoff(a)).sum();
            assert!(
                total > Duration::from_secs(8 * 3600) && total < Duration::from_secs(30 * 3600),
                "{total:?}"
            );
        }
    }

    #[test]
    fn claims_follow_the_pace_between_a_round_of_slots_and_the_batch_size() {
        let mut c = config(1, 1);
        c.concurrency = 8;
        c.batch_size = 100;
        let mut work = Work::default();
        assert_eq!(work.claim_size(&c), 8, "no pace yet: one round of slots");
        work.pace.last = 50;
        assert_eq!(work.claim_size(&c), 8);
        work.pace.last = 700;
        assert_eq!(work.claim_size(&c), 70, "a tenth of a second at 700/s");
        work.pace.last = 5000;
        assert_eq!(work.claim_size(&c), 100, "never more than the batch size");
        work.pace.since = Instant::now() - Duration::from_secs(3);
        work.pace.count = 0;
        assert_eq!(work.claim_size(&c), 8, "a pace that stopped is forgotten");
    }

    #[test]
    fn an_empty_queue_is_not_asked_again_until_something_happens() {
        let mut work = Work::default();
        assert!(work.wants_claim(4), "idle slots and nothing claimed");
        work.claiming = true;
        assert!(!work.wants_claim(4), "one claim at a time");
        work.claiming = false;
        work.queue = QueueHint::LooksEmpty;
        assert!(!work.wants_claim(4), "the last claim came back short");
        work.something_happened();
        assert!(work.wants_claim(4));
    }

    #[test]
    fn redaction_removes_passwords_and_their_auth_encodings() {
        use secrecy::SecretString;
        let target = SmtpTarget {
            host: "h".into(),
            port: 25,
            security: crate::mail::Security::None,
            username: Some("user".into()),
            password: Some(SecretString::from("hunter2".to_string())),
            timeout: Duration::from_secs(1),
            tls_verify: true,
            oauth: None,
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
