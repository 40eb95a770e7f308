//! Queue statistics, for `GET /notifications/stats` and `/metrics` alike.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::notifications::{AttemptOutcome, Status};
use crate::db::schema::{notification_attempts, notifications};
use crate::db::DbConnection;
use crate::db::StoreError;

/// How much the queue holds: a count for every status (zero where none), and when the oldest
/// queued notification was created.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    pub counts: BTreeMap<Status, i64>,
    pub oldest_queued_created_at: Option<i64>,
}

impl QueueDepth {
    /// Age of the oldest queued notification at `now`, in milliseconds (None when none is queued).
    pub fn oldest_queued_age_ms(&self, now: i64) -> Option<i64> {
        self.oldest_queued_created_at.map(|o| (now - o).max(0))
    }
}

pub fn queue_depth(conn: &mut DbConnection) -> Result<QueueDepth, StoreError> {
    let mut counts: BTreeMap<Status, i64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    let rows: Vec<(String, i64)> = notifications::table
        .group_by(notifications::status)
        .select((notifications::status, diesel::dsl::count_star()))
        .load(conn)?;
    for (name, n) in rows {
        if let Some(status) = Status::parse(&name) {
            counts.insert(status, n);
        }
    }
    let oldest_queued_created_at = notifications::table
        .filter(notifications::status.eq(Status::Queued.as_str()))
        .select(diesel::dsl::min(notifications::created_at))
        .first(conn)?;
    Ok(QueueDepth {
        counts,
        oldest_queued_created_at,
    })
}

/// The newest attempt that delivered (`sent`), or that did not: time, notification, reply.
/// Each outcome is one lookup in `notification_attempts_outcome` (an `outcome <> 'sent'` filter
/// would scan every attempt ever made, on each call of the statistics).
pub fn last_attempt(
    conn: &mut DbConnection,
    sent: bool,
) -> Result<Option<(i64, String, String)>, StoreError> {
    let outcomes: &[AttemptOutcome] = if sent {
        &[AttemptOutcome::Sent]
    } else {
        &[AttemptOutcome::Deferred, AttemptOutcome::Failed]
    };
    let mut newest: Option<(i64, (i64, String, String))> = None;
    for outcome in outcomes {
        let found = notification_attempts::table
            .filter(notification_attempts::outcome.eq(outcome.as_str()))
            .order(notification_attempts::id.desc())
            .select((
                notification_attempts::id,
                (
                    notification_attempts::attempted_at,
                    notification_attempts::notification_id,
                    notification_attempts::reply,
                ),
            ))
            .first::<(i64, (i64, String, String))>(conn)
            .optional()?;
        if let Some(found) = found {
            if newest.as_ref().is_none_or(|(id, _)| found.0 > *id) {
                newest = Some(found);
            }
        }
    }
    Ok(newest.map(|(_, row)| row))
}
