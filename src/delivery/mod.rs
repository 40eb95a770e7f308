//! Delivery: the dispatcher claims due notifications in batches, sends them over pooled SMTP
//! sessions outside any transaction ([`route`]), and records the outcomes ([`recorder`]); what
//! it holds meanwhile is in [`work`].

mod recorder;
mod route;
pub mod wakeup;
mod work;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use route::{server_of, Route};
use work::{give_back, ClaimResult, Claimer, DbTrouble, InFlight, QueueHint, Work};

use crate::config::DeliveryConfig;
use crate::db::{now_millis, Db, StoreError};
use crate::mail::MailContext;
use crate::notifications::routing::{not_deliverable_reason, Deliverability};
use crate::secrets::SecretCipher;
use crate::settings::{admin_email, smtp};
use crate::state::Signals;
use crate::store::queue;
use crate::store::queue::housekeeping::{self, Requeue};
use crate::store::queue::outcomes::{Outcome, Recorded};

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

/// When the dispatcher's periodic work is due, and when it must stop.
struct Clock {
    renew_every: Duration,
    next_maintenance: Instant,
    next_renewal: Instant,
    /// After a failed claim (database trouble), wait a poll interval instead of spinning.
    claim_paused_until: Instant,
    stop_deadline: Option<Instant>,
}

impl Clock {
    fn new(config: &DeliveryConfig) -> Self {
        let renew_every = (config.lease / 3).max(Duration::from_millis(100));
        let now = Instant::now();
        Self {
            renew_every,
            next_maintenance: now,
            next_renewal: now + renew_every,
            claim_paused_until: now,
            stop_deadline: None,
        }
    }

    fn wake_at(&self) -> Instant {
        match self.stop_deadline {
            Some(deadline) => deadline.min(self.next_renewal),
            None => self.next_maintenance.min(self.next_renewal),
        }
    }
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
        let recorder = tokio::spawn(recorder::record_outcomes(
            self.db.clone(),
            self.owner.clone(),
            outcomes_rx,
            self.trouble.clone(),
        ));
        let (claims_tx, mut claims_rx) = mpsc::unbounded_channel::<ClaimResult>();
        let mut work = Work::default();
        let mut clock = Clock::new(&self.config);
        loop {
            if clock.stop_deadline.is_none() && *shutdown.borrow() {
                self.begin_stop(&mut work, &mut clock, &outcomes);
            }
            if let Some(deadline) = clock.stop_deadline {
                if work.slots.is_empty() && !work.claiming {
                    break;
                }
                if Instant::now() >= deadline {
                    self.abandon(&mut work, &mut claims_rx, &outcomes).await;
                    break;
                }
            }
            self.chores(&mut work, &mut clock).await;
            self.follow_route(&mut work, &outcomes);
            if let Some(route) = &self.route {
                work.start_slots(route, self.config.concurrency, &outcomes);
            }
            if clock.stop_deadline.is_none()
                && self.blocked.is_none()
                && Instant::now() >= clock.claim_paused_until
            {
                self.start_claim(&mut work, &claims_tx);
            }
            tokio::select! {
                Some(joined) = work.slots.join_next_with_id(), if !work.slots.is_empty() => {
                    self.finished(joined, &mut work.in_flight, &outcomes);
                    work.pace.finished();
                    work.something_happened();
                }
                Some(claimed) = claims_rx.recv() => self.claimed(claimed, &mut work, &mut clock, &outcomes),
                _ = self.signals.work.notified(), if clock.stop_deadline.is_none() => {
                    work.queue = QueueHint::MoreDue;
                }
                _ = self.signals.settings.notified(), if clock.stop_deadline.is_none() => {
                    clock.next_maintenance = Instant::now();
                    work.something_happened();
                }
                _ = tokio::time::sleep_until(clock.wake_at().into()) => {
                    work.something_happened();
                }
                _ = shutdown.changed(), if clock.stop_deadline.is_none() => {}
            }
        }
        drop(outcomes);
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "the outcome recorder failed");
        }
        tracing::info!(owner = %self.owner, "dispatcher stopped");
    }

    /// Shutdown: sends in flight get the grace less a moment to release the claims of those
    /// still running (the grace bounds the whole shutdown); what waits for a slot goes back.
    fn begin_stop(&self, work: &mut Work, clock: &mut Clock, outcomes: &mpsc::UnboundedSender<Recorded>) {
        let release = (self.config.shutdown_grace / 4).min(Duration::from_millis(500));
        clock.stop_deadline = Some(Instant::now() + self.config.shutdown_grace - release);
        tracing::info!(in_flight = work.slots.len(), grace = ?self.config.shutdown_grace, "dispatcher stopping");
        give_back(work.ready.drain(..), outcomes);
    }

    /// Housekeeping every poll interval (not while stopping) and lease renewal while anything is
    /// held.
    async fn chores(&mut self, work: &mut Work, clock: &mut Clock) {
        let now = Instant::now();
        if clock.stop_deadline.is_none() && now >= clock.next_maintenance {
            if let Err(e) = self.maintain().await {
                self.trouble.seen();
                tracing::error!(error = format!("{e:#}"), "dispatcher housekeeping failed");
            }
            clock.next_maintenance = Instant::now() + self.config.poll_interval;
        }
        if now >= clock.next_renewal {
            if !work.in_flight.is_empty() || !work.ready.is_empty() {
                self.renew().await;
            }
            clock.next_renewal = Instant::now() + clock.renew_every;
        }
    }

    /// Claimed with settings that have since changed: back to the queue, to be claimed again with
    /// the new ones. Sends to a server the settings no longer name are dropped at once (stalled
    /// ones would hold their slots for up to twice the timeout); their messages are released,
    /// due again at once, for the new server.
    fn follow_route(&self, work: &mut Work, outcomes: &mpsc::UnboundedSender<Recorded>) {
        let current = self.route.as_ref().map(|r| r.version);
        if current == work.ready_version {
            return;
        }
        give_back(work.ready.drain(..), outcomes);
        work.ready_version = current;
        if let Some(route) = &self.route {
            let server = server_of(route);
            for info in work.in_flight.values().filter(|i| i.server != server) {
                tracing::info!(id = %info.id, "the SMTP server was replaced: dropping its send in flight");
                info.abort.abort();
            }
        }
    }

    /// Claims beside the sends when the slots will want more work.
    fn start_claim(&self, work: &mut Work, claims: &mpsc::UnboundedSender<ClaimResult>) {
        if !work.wants_claim(self.config.concurrency) {
            return;
        }
        let Some(route) = self.route.clone() else {
            return;
        };
        let limit = work.claim_size(&self.config);
        work.claiming = true;
        let (this, claims) = (self.claimer(), claims.clone());
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

    /// A claim came back: its rows wait for slots, unless the route changed or we are stopping.
    fn claimed(
        &self,
        claimed: ClaimResult,
        work: &mut Work,
        clock: &mut Clock,
        outcomes: &mpsc::UnboundedSender<Recorded>,
    ) {
        work.claiming = false;
        match claimed.result {
            Ok(rows) => {
                work.queue = if rows.len() == claimed.limit {
                    QueueHint::MoreDue
                } else {
                    QueueHint::LooksEmpty
                };
                if clock.stop_deadline.is_none() && Some(claimed.version) == work.ready_version {
                    work.ready.extend(rows);
                } else {
                    give_back(rows, outcomes);
                }
            }
            Err(e) => {
                self.trouble.seen();
                tracing::error!(error = format!("{e:#}"), "claiming notifications failed");
                // Wait a poll interval instead of spinning.
                clock.claim_paused_until = Instant::now() + self.config.poll_interval;
            }
        }
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
        let connection = settings
            .unseal_password(&self.cipher)
            .and_then(|password| settings.connection(password, &self.cipher))
            .map_err(|e| format!("{e:#}"))?;
        let smtp::Connection {
            target,
            sender,
            redact,
        } = connection;
        let sender = sender.ok_or("no default From address is configured")?;
        // A DNS failure may be temporary: keep trying to send; each attempt reports it.
        if let Ok(Err(refused)) =
            crate::outbound::policy::resolve_checked(&self.mail.policy, &target.host, target.port).await
        {
            return Err(format!("refusing to connect: {refused}"));
        }
        let tls = target
            .tls_parameters(&self.mail)
            .map_err(|e| format!("cannot set up TLS for the SMTP server: {e}"))?;
        Ok(Route {
            version: stored.version,
            tls,
            redact,
            target,
            sender,
            idle: Mutex::new(Vec::new()),
            mail: self.mail.clone(),
            config: self.config.clone(),
        })
    }
}
