//! Outcomes of delivery attempts, written as many per transaction as have arrived.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::schema::{notification_attempts, notifications};
use crate::db::DbConnection;
use crate::db::StoreError;
use crate::store::notifications::{AttemptOutcome, Status, EXPIRED};
use crate::store::webhooks::NotificationData;

#[derive(Insertable)]
#[diesel(table_name = notification_attempts)]
struct NewAttempt<'a> {
    notification_id: &'a str,
    attempted_at: i64,
    outcome: &'a str,
    smtp_code: Option<i32>,
    reply: &'a str,
    duration_ms: i64,
}

/// The result of one delivery attempt (or of deciding not to attempt).
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent {
        code: u16,
        reply: String,
        message_id: String,
    },
    /// Try again at `next_attempt_at`.
    Deferred {
        code: Option<u16>,
        reply: String,
        next_attempt_at: i64,
    },
    Failed {
        code: Option<u16>,
        reply: String,
        reason: String,
        /// The failure names the recipient: the address goes on the suppression list.
        suppress: bool,
    },
    Expired,
    /// Not deliverable after all (settings changed since it was queued); not an attempt.
    Held {
        reason: String,
    },
    /// Shutting down before the send started; not an attempt.
    Released,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub event: String,
    pub recipient: Option<String>,
    pub outcome: Outcome,
    pub attempted_at: i64,
    pub duration_ms: i64,
}

/// The webhook calls an outcome causes (in the caller's transaction).
fn enqueue_hook(
    conn: &mut DbConnection,
    hooks: &crate::store::webhooks::WebhookSettings,
    r: &Recorded,
    code: Option<u16>,
    reply: &str,
    now: i64,
) -> Result<(), diesel::result::Error> {
    let hook = match &r.outcome {
        Outcome::Sent { .. } => Some(("notification.sent", Status::Sent, None)),
        Outcome::Deferred { .. } => Some(("notification.deferred", Status::Queued, None)),
        Outcome::Failed { reason, .. } => {
            Some(("notification.failed", Status::Failed, Some(reason.as_str())))
        }
        Outcome::Expired => Some(("notification.expired", Status::Expired, Some(EXPIRED))),
        Outcome::Held { .. } | Outcome::Released => None,
    };
    if let Some((event_type, status, status_reason)) = hook {
        let data = NotificationData::change(&r.id, &r.event, r.recipient.as_deref(), status, status_reason)
            .with_reply(code, reply);
        crate::store::webhooks::enqueue(conn, hooks, event_type, &data, now)?;
    }
    Ok(())
}

/// Writes outcomes in one transaction. Each update is guarded by the lease owner, so a worker whose
/// lease expired and was taken over cannot overwrite the newer owner's result.
pub fn record(conn: &mut DbConnection, owner: &str, results: &[Recorded]) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        // Webhook calls go in the same transaction as the status changes that cause them.
        let hooks = crate::store::webhooks::load(conn)?;
        let mut attempts = Vec::with_capacity(results.len());
        let mut sent = Vec::new();
        for r in results {
            let now = r.attempted_at + r.duration_ms;
            let (attempt, code, reply) = write_outcome(conn, owner, r, now, &mut sent)?;
            enqueue_hook(conn, &hooks, r, code, reply, now)?;
            if let Some(outcome) = attempt {
                attempts.push(NewAttempt {
                    notification_id: &r.id,
                    attempted_at: r.attempted_at,
                    outcome: outcome.as_str(),
                    smtp_code: code.map(i32::from),
                    reply,
                    duration_ms: r.duration_ms,
                });
            }
        }
        mark_sent(conn, owner, &sent)?;
        // One multi-row INSERT per backend instead of a round trip per attempt.
        for chunk in attempts.chunks(1000) {
            crate::db::per_backend!(conn, |c| diesel::insert_into(notification_attempts::table)
                .values(chunk)
                .execute(c))?;
        }
        Ok(())
    })
}

/// What an outcome leaves in the attempts table: its name (None: not an attempt), reply code
/// and reply.
type AttemptOf<'a> = (Option<AttemptOutcome>, Option<u16>, &'a str);

/// Applies one outcome to its row, if this owner still holds it. Deliveries are only collected
/// in `sent`, to be marked in groups by [`mark_sent`].
fn write_outcome<'a>(
    conn: &mut DbConnection,
    owner: &str,
    r: &'a Recorded,
    now: i64,
    sent: &mut Vec<SentRow<'a>>,
) -> QueryResult<AttemptOf<'a>> {
    let mine = notifications::table.filter(
        notifications::id
            .eq(&r.id)
            .and(notifications::lease_owner.eq(owner))
            .and(notifications::status.eq(Status::Sending.as_str())),
    );
    let no_lease = (
        notifications::lease_owner.eq(None::<String>),
        notifications::lease_until.eq(None::<i64>),
        notifications::updated_at.eq(now),
    );
    // Not an attempt: the count the claim added is taken back.
    let uncounted = notifications::attempt_count.eq(notifications::attempt_count - 1);
    Ok(match &r.outcome {
        Outcome::Sent {
            code,
            reply,
            message_id,
        } => {
            sent.push(SentRow {
                id: &r.id,
                at: now,
                message_id,
                reply,
            });
            (Some(AttemptOutcome::Sent), Some(*code), reply)
        }
        Outcome::Deferred {
            code,
            reply,
            next_attempt_at,
        } => {
            diesel::update(mine)
                .set((
                    notifications::status.eq(Status::Queued.as_str()),
                    notifications::status_reason.eq(format!("deferred: {reply}")),
                    notifications::next_attempt_at.eq(next_attempt_at),
                    notifications::smtp_reply.eq(reply),
                    no_lease,
                ))
                .execute(conn)?;
            (Some(AttemptOutcome::Deferred), *code, reply)
        }
        Outcome::Failed {
            code,
            reply,
            reason,
            suppress,
        } => {
            if let Some(to) = r.recipient.as_deref().filter(|_| *suppress) {
                crate::store::suppressions::add(conn, to, reply, "bounce", Some(&r.id), now)?;
            }
            diesel::update(mine)
                .set((
                    notifications::status.eq(Status::Failed.as_str()),
                    notifications::status_reason.eq(reason),
                    notifications::smtp_reply.eq(reply),
                    no_lease,
                ))
                .execute(conn)?;
            (Some(AttemptOutcome::Failed), *code, reply)
        }
        Outcome::Expired | Outcome::Held { .. } => {
            let (status, reason) = match &r.outcome {
                Outcome::Held { reason } => (Status::Held, reason.as_str()),
                _ => (Status::Expired, EXPIRED),
            };
            diesel::update(mine)
                .set((
                    notifications::status.eq(status.as_str()),
                    notifications::status_reason.eq(reason),
                    uncounted,
                    no_lease,
                ))
                .execute(conn)?;
            (None, None, "")
        }
        Outcome::Released => {
            diesel::update(mine)
                .set((
                    notifications::status.eq(Status::Queued.as_str()),
                    uncounted,
                    no_lease,
                ))
                .execute(conn)?;
            (None, None, "")
        }
    })
}

/// A delivered notification, for [`mark_sent`].
struct SentRow<'a> {
    id: &'a str,
    at: i64,
    message_id: &'a str,
    reply: &'a str,
}

/// Marks delivered notifications `sent` with one statement per 500 (instead of a statement, and
/// on PostgreSQL a round trip, per notification), guarded by the lease owner like every outcome.
fn mark_sent(conn: &mut DbConnection, owner: &str, rows: &[SentRow<'_>]) -> QueryResult<()> {
    for chunk in rows.chunks(500) {
        match conn {
            DbConnection::Sqlite(c) => {
                sent_update::<diesel::sqlite::Sqlite>(owner, chunk, |_| "?".into()).execute(c)?
            }
            DbConnection::Postgres(c) => {
                sent_update::<diesel::pg::Pg>(owner, chunk, |i| format!("${i}")).execute(c)?
            }
        };
    }
    Ok(())
}

/// `WITH v AS (VALUES ...) UPDATE ... FROM v`: valid on PostgreSQL and on SQLite since 3.33.
/// `placeholder(n)` writes the n-th (1-based) bind parameter in the backend's syntax.
fn sent_update<'a, DB>(
    owner: &'a str,
    rows: &'a [SentRow<'a>],
    placeholder: impl Fn(usize) -> String,
) -> diesel::query_builder::BoxedSqlQuery<'a, DB, diesel::query_builder::SqlQuery>
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<Text>
        + diesel::sql_types::HasSqlType<BigInt>,
    &'a str: diesel::serialize::ToSql<Text, DB>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
{
    let mut n = 0;
    let mut next = || {
        n += 1;
        placeholder(n)
    };
    let values: Vec<String> = rows
        .iter()
        .map(|_| format!("({}, {}, {}, {})", next(), next(), next(), next()))
        .collect();
    let sql = format!(
        "WITH v(id, at, message_id, reply) AS (VALUES {}) \
         UPDATE notifications SET status = 'sent', status_reason = NULL, sent_at = v.at, \
         message_id = v.message_id, smtp_reply = v.reply, lease_owner = NULL, lease_until = NULL, \
         updated_at = v.at \
         FROM v WHERE notifications.id = v.id AND notifications.lease_owner = {} \
         AND notifications.status = 'sending'",
        values.join(", "),
        next()
    );
    let mut query = diesel::sql_query(sql).into_boxed::<DB>();
    for r in rows {
        query = query
            .bind::<Text, _>(r.id)
            .bind::<BigInt, _>(r.at)
            .bind::<Text, _>(r.message_id)
            .bind::<Text, _>(r.reply);
    }
    query.bind::<Text, _>(owner)
}
