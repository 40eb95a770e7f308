//! What the dispatcher holds between its steps: sends in flight, claimed notifications waiting
//! for a slot, the pace of sending, claims made beside the sends, and database trouble.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::route::{server_of, Route};
use crate::config::DeliveryConfig;
use crate::db::{now_millis, Db, StoreError};
use crate::store::queue::outcomes::{Outcome, Recorded};
use crate::store::queue::{self, Claimed};

/// When the database last failed this dispatcher (housekeeping, claims, renewals, outcomes):
/// other owners' expired leases are taken back only a lease after it ([`store::Requeue`]).
#[derive(Debug, Default)]
pub(super) struct DbTrouble(Mutex<Option<Instant>>);

impl DbTrouble {
    pub(super) fn seen(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether the database has answered every request for at least `period`.
    pub(super) fn clear_for(&self, period: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= period)
    }
}

/// A notification being sent by one of the dispatcher's slots.
pub(super) struct InFlight {
    pub(super) id: String,
    pub(super) event: String,
    pub(super) recipient: Option<String>,
    pub(super) attempt_count: i32,
    pub(super) started_at: i64,
    /// The server it is being sent to ([`server_of`]), and how to drop the send when that server
    /// is replaced.
    pub(super) server: String,
    pub(super) abort: tokio::task::AbortHandle,
}

/// The result of a claim made beside the sends.
pub(super) struct ClaimResult {
    /// The settings version it was claimed for.
    pub(super) version: i64,
    pub(super) limit: usize,
    pub(super) result: Result<Vec<Claimed>, StoreError>,
}

pub(super) struct Claimer {
    pub(super) db: Db,
    pub(super) owner: String,
    pub(super) lease: Duration,
}

impl Claimer {
    pub(super) async fn claim(self, limit: usize, settings_version: i64) -> Result<Vec<Claimed>, StoreError> {
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
pub(super) struct Work {
    pub(super) slots: JoinSet<()>,
    pub(super) in_flight: HashMap<tokio::task::Id, InFlight>,
    pub(super) ready: VecDeque<Claimed>,
    /// The settings version everything in `ready` was claimed for (the current route's).
    pub(super) ready_version: Option<i64>,
    pub(super) claiming: bool,
    pub(super) queue: QueueHint,
    pub(super) pace: Pace,
}

/// What the dispatcher knows about the queue beyond what it holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueHint {
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
    pub(super) fn wants_claim(&self, concurrency: usize) -> bool {
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
    pub(super) fn something_happened(&mut self) {
        if self.queue == QueueHint::LooksEmpty {
            self.queue = QueueHint::Unknown;
        }
    }

    /// About a tenth of a second of sending at the current pace, at least a round of slots, at
    /// most the configured batch.
    pub(super) fn claim_size(&self, config: &DeliveryConfig) -> usize {
        (self.pace.per_second() / 10)
            .max(config.concurrency)
            .min(config.batch_size.max(1) as usize)
    }

    /// Starts a send for each idle slot while claimed notifications wait.
    pub(super) fn start_slots(
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
pub(super) fn give_back(rows: impl IntoIterator<Item = Claimed>, outcomes: &mpsc::UnboundedSender<Recorded>) {
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
pub(super) struct Pace {
    pub(super) since: Instant,
    pub(super) count: usize,
    pub(super) last: usize,
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
    pub(super) fn finished(&mut self) {
        let elapsed = self.since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.last = (self.count as f64 / elapsed.as_secs_f64()) as usize;
            self.count = 0;
            self.since = Instant::now();
        }
        self.count += 1;
    }

    pub(super) fn per_second(&self) -> usize {
        // A stalled pace does not keep claiming at the old rate.
        if self.since.elapsed() >= Duration::from_secs(2) {
            return self.count;
        }
        self.last.max(self.count)
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
}
