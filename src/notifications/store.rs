//! Outbox queries: insert, claim with a lease, record outcomes, and the maintenance sweeps.
//!
//! Claiming is one short `UPDATE ... RETURNING` (PostgreSQL adds `FOR UPDATE SKIP LOCKED` so
//! instances never claim the same row) and a read of the claimed rows' bodies; sending happens
//! outside any transaction; each outcome is written in another short transaction, guarded by the
//! lease owner.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use super::routing::{Deliverability, NO_ADMIN_EMAIL};
use crate::db::schema::{idempotency_keys, notification_attempts, notification_bodies, notifications};
use crate::db::DbConnection;
use crate::db::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted but not deliverable yet (no SMTP settings, no From address, no admin address).
    Held,
    /// Waiting for its next attempt.
    Queued,
    /// Claimed by a dispatcher, being sent.
    Sending,
    Sent,
    /// Rejected permanently, or out of attempts.
    Failed,
    /// Not delivered before `expires_at`; never sent late.
    Expired,
    /// The recipient is on the suppression list: accepted, never sent.
    Suppressed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => Self::Held,
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            "suppressed" => Self::Suppressed,
            _ => return None,
        })
    }

    pub const ALL: [Status; 7] = [
        Self::Held,
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Expired,
        Self::Suppressed,
    ];
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notifications)]
pub struct NotificationRow {
    pub id: String,
    pub event: String,
    pub recipient: Option<String>,
    pub to_name: Option<String>,
    pub data: String,
    pub subject: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub attempt_count: i32,
    pub sent_at: Option<i64>,
    pub message_id: Option<String>,
    pub smtp_reply: Option<String>,
    pub created_by: String,
    /// The locale whose templates were used (null for notifications from before locales).
    pub locale: Option<String>,
}

/// A notification's bodies, in a table of their own: claims and outcomes update the
/// notification's row twice per message, and would otherwise copy both bodies each time.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = notification_bodies)]
pub struct BodyRow {
    pub notification_id: String,
    pub text_body: String,
    pub html_body: String,
}

/// A notification to store: its row and its bodies.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub row: NotificationRow,
    pub body: BodyRow,
}

#[derive(Debug, Clone, Queryable)]
pub struct AttemptRow {
    pub attempted_at: i64,
    pub outcome: String,
    pub smtp_code: Option<i32>,
    pub reply: String,
    pub duration_ms: i64,
}

pub fn insert(conn: &mut DbConnection, new: &NewNotification) -> Result<(), StoreError> {
    insert_many(conn, std::slice::from_ref(new))?;
    Ok(())
}

/// Inserts many rows with multi-row INSERTs (written per backend: diesel's batch insert does not
/// go through the MultiConnection enum).
pub fn insert_many(conn: &mut DbConnection, items: &[NewNotification]) -> Result<(), diesel::result::Error> {
    // 20 columns x 400 rows stays well under SQLite's 32,766 bound parameters.
    for chunk in items.chunks(400) {
        let rows: Vec<&NotificationRow> = chunk.iter().map(|n| &n.row).collect();
        let bodies: Vec<&BodyRow> = chunk.iter().map(|n| &n.body).collect();
        match conn {
            DbConnection::Sqlite(c) => {
                diesel::insert_into(notifications::table)
                    .values(rows)
                    .execute(c)?;
                diesel::insert_into(notification_bodies::table)
                    .values(bodies)
                    .execute(c)?
            }
            DbConnection::Postgres(c) => {
                diesel::insert_into(notifications::table)
                    .values(rows)
                    .execute(c)?;
                diesel::insert_into(notification_bodies::table)
                    .values(bodies)
                    .execute(c)?
            }
        };
    }
    Ok(())
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<NotificationRow>, StoreError> {
    Ok(notifications::table
        .find(id)
        .select(NotificationRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn attempts(conn: &mut DbConnection, id: &str) -> Result<Vec<AttemptRow>, StoreError> {
    Ok(notification_attempts::table
        .filter(notification_attempts::notification_id.eq(id))
        .order(notification_attempts::id.asc())
        .select((
            notification_attempts::attempted_at,
            notification_attempts::outcome,
            notification_attempts::smtp_code,
            notification_attempts::reply,
            notification_attempts::duration_ms,
        ))
        .load(conn)?)
}

/// Filters of `GET /notifications`; `before_id` is the cursor (ids are UUIDv7, ordered by time).
pub struct ListFilter {
    pub status: Option<String>,
    pub event: Option<String>,
    pub to: Option<String>,
    pub since: Option<i64>,
    pub before_id: Option<String>,
}

/// Up to `limit` notifications matching `f`, newest first.
pub fn list(conn: &mut DbConnection, f: &ListFilter, limit: i64) -> Result<Vec<NotificationRow>, StoreError> {
    let mut sql = notifications::table.into_boxed();
    if let Some(s) = &f.status {
        sql = sql.filter(notifications::status.eq(s));
    }
    if let Some(e) = &f.event {
        sql = sql.filter(notifications::event.eq(e));
    }
    if let Some(to) = &f.to {
        sql = sql.filter(notifications::recipient.eq(to));
    }
    if let Some(since) = f.since {
        sql = sql.filter(notifications::created_at.ge(since));
    }
    if let Some(c) = &f.before_id {
        sql = sql.filter(notifications::id.lt(c));
    }
    Ok(sql
        .order(notifications::id.desc())
        .limit(limit)
        .select(NotificationRow::as_select())
        .load(conn)?)
}

/// Makes one queued notification due now, keeping its lifetime and attempts.
pub fn make_due(conn: &mut DbConnection, id: &str, now: i64) -> Result<(), StoreError> {
    diesel::update(
        notifications::table
            .find(id)
            .filter(notifications::status.eq(Status::Queued.as_str())),
    )
    .set((
        notifications::next_attempt_at.eq(now),
        notifications::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(())
}

/// Queues a failed or expired notification again, due now, with a new lifetime and no attempts.
pub fn requeue(conn: &mut DbConnection, id: &str, now: i64, expires_at: i64) -> Result<(), StoreError> {
    diesel::update(notifications::table.find(id))
        .set((
            notifications::status.eq(Status::Queued.as_str()),
            notifications::status_reason.eq(None::<String>),
            notifications::next_attempt_at.eq(now),
            notifications::expires_at.eq(expires_at),
            notifications::attempt_count.eq(0),
            notifications::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// How many notifications each status holds (statuses without any are absent).
pub fn count_by_status(conn: &mut DbConnection) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(notifications::table
        .group_by(notifications::status)
        .select((notifications::status, diesel::dsl::count_star()))
        .load(conn)?)
}

/// When the oldest queued notification was created.
pub fn oldest_queued_created_at(conn: &mut DbConnection) -> Result<Option<i64>, StoreError> {
    Ok(notifications::table
        .filter(notifications::status.eq(Status::Queued.as_str()))
        .select(diesel::dsl::min(notifications::created_at))
        .first(conn)?)
}

/// The newest attempt that delivered (`sent`), or that did not: time, notification, reply.
/// Each outcome is one lookup in `notification_attempts_outcome` (an `outcome <> 'sent'` filter
/// would scan every attempt ever made, on each call of the statistics).
pub fn last_attempt(
    conn: &mut DbConnection,
    sent: bool,
) -> Result<Option<(i64, String, String)>, StoreError> {
    let outcomes: &[&str] = if sent { &["sent"] } else { &["deferred", "failed"] };
    let mut newest: Option<(i64, (i64, String, String))> = None;
    for outcome in outcomes {
        let found = notification_attempts::table
            .filter(notification_attempts::outcome.eq(outcome))
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

/// The attempts of several notifications, by notification id, each in order.
pub fn attempts_of(
    conn: &mut DbConnection,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<AttemptRow>>, StoreError> {
    let mut by_id: std::collections::HashMap<String, Vec<AttemptRow>> = Default::default();
    if ids.is_empty() {
        return Ok(by_id);
    }
    let rows: Vec<(String, AttemptRow)> = notification_attempts::table
        .filter(notification_attempts::notification_id.eq_any(ids))
        .order(notification_attempts::id.asc())
        .select((
            notification_attempts::notification_id,
            (
                notification_attempts::attempted_at,
                notification_attempts::outcome,
                notification_attempts::smtp_code,
                notification_attempts::reply,
                notification_attempts::duration_ms,
            ),
        ))
        .load(conn)?;
    for (id, row) in rows {
        by_id.entry(id).or_default().push(row);
    }
    Ok(by_id)
}

/// The stored answer to an earlier request with this idempotency key.
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub response: String,
}

pub fn find_idempotency(
    conn: &mut DbConnection,
    subject: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    Ok(idempotency_keys::table
        .filter(
            idempotency_keys::subject
                .eq(subject)
                .and(idempotency_keys::key.eq(key)),
        )
        .select((idempotency_keys::request_hash, idempotency_keys::response))
        .first::<(String, String)>(conn)
        .optional()?
        .map(|(request_hash, response)| IdempotencyRecord {
            request_hash,
            response,
        }))
}

pub fn insert_idempotency(
    conn: &mut DbConnection,
    subject: &str,
    key: &str,
    request_hash: &str,
    notification_id: &str,
    response: &str,
    now: i64,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::subject.eq(subject),
            idempotency_keys::key.eq(key),
            idempotency_keys::request_hash.eq(request_hash),
            idempotency_keys::notification_id.eq(notification_id),
            idempotency_keys::response.eq(response),
            idempotency_keys::created_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// What a dispatcher needs to send a claimed notification.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub event: String,
    pub recipient: Option<String>,
    pub to_name: Option<String>,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub expires_at: i64,
    pub attempt_count: i32,
    pub created_at: i64,
}

/// What the claiming UPDATE returns; the bodies are read after it, by id.
#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    event: String,
    #[diesel(sql_type = Nullable<Text>)]
    recipient: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    to_name: Option<String>,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = BigInt)]
    expires_at: i64,
    #[diesel(sql_type = Integer)]
    attempt_count: i32,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

const CLAIM_SQL: &str = "UPDATE notifications \
     SET status = 'sending', lease_owner = $1, lease_until = $2, updated_at = $3, \
         attempt_count = attempt_count + 1 \
     WHERE id IN (SELECT id FROM notifications \
                  WHERE status = 'queued' AND next_attempt_at <= $3 \
                    AND EXISTS (SELECT 1 FROM settings WHERE key = 'smtp' AND version = $5) \
                  ORDER BY next_attempt_at LIMIT $4 {LOCK}) \
     RETURNING id, event, recipient, to_name, subject, expires_at, attempt_count, created_at";

/// Claims up to `limit` due notifications for `owner` until `lease_until`, but only while the SMTP
/// settings are still at `settings_version` (the version the caller will send with): mail made
/// due by a settings change is never tried once more with the settings it was waiting to escape.
pub fn claim(
    conn: &mut DbConnection,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
    settings_version: i64,
) -> Result<Vec<Claimed>, diesel::result::Error> {
    let rows: Vec<ClaimedRow> = match conn {
        DbConnection::Postgres(c) => {
            let sql = CLAIM_SQL.replace("{LOCK}", "FOR UPDATE SKIP LOCKED");
            diesel::sql_query(sql)
                .bind::<Text, _>(owner)
                .bind::<BigInt, _>(lease_until)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(limit)
                .bind::<BigInt, _>(settings_version)
                .load(c)?
        }
        // One writer at a time: the UPDATE is atomic without row locks.
        DbConnection::Sqlite(c) => {
            let sql = CLAIM_SQL.replace("{LOCK}", "").replace('$', "?");
            diesel::sql_query(sql)
                .bind::<Text, _>(owner)
                .bind::<BigInt, _>(lease_until)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(limit)
                .bind::<BigInt, _>(settings_version)
                .load(c)?
        }
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut bodies: std::collections::HashMap<String, (String, String)> = notification_bodies::table
        .filter(notification_bodies::notification_id.eq_any(&ids))
        .select((
            notification_bodies::notification_id,
            notification_bodies::text_body,
            notification_bodies::html_body,
        ))
        .load::<(String, String, String)>(conn)?
        .into_iter()
        .map(|(id, text, html)| (id, (text, html)))
        .collect();
    rows.into_iter()
        .map(|r| {
            // Stored in the same transaction as the row, and deleted only with it.
            let (text_body, html_body) = bodies.remove(&r.id).ok_or(diesel::result::Error::NotFound)?;
            Ok(Claimed {
                id: r.id,
                event: r.event,
                recipient: r.recipient,
                to_name: r.to_name,
                subject: r.subject,
                text_body,
                html_body,
                expires_at: r.expires_at,
                attempt_count: r.attempt_count,
                created_at: r.created_at,
            })
        })
        .collect()
}

/// Extends the lease on everything `owner` is still sending, so that a slow server never makes a
/// live owner's claim look abandoned. Returns how many rows were renewed.
pub fn renew(
    conn: &mut DbConnection,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<usize, diesel::result::Error> {
    use crate::db::schema::notifications::dsl;
    diesel::update(
        dsl::notifications.filter(
            dsl::status
                .eq(Status::Sending.as_str())
                .and(dsl::lease_owner.eq(owner)),
        ),
    )
    .set((dsl::lease_until.eq(lease_until), dsl::updated_at.eq(now)))
    .execute(conn)
}

/// Makes every queued notification due now, like `postqueue -f`. With `reset_attempts`, the
/// failures so far stop counting towards the attempt limit (they were caused by settings that
/// have just been replaced). Returns how many rows were touched.
pub fn make_queued_due(
    conn: &mut DbConnection,
    now: i64,
    reset_attempts: bool,
) -> Result<usize, diesel::result::Error> {
    use crate::db::schema::notifications::dsl;
    let queued = dsl::notifications.filter(dsl::status.eq(Status::Queued.as_str()));
    if reset_attempts {
        diesel::update(queued.filter(dsl::attempt_count.gt(0).or(dsl::next_attempt_at.gt(now))))
            .set((
                dsl::next_attempt_at.eq(now),
                dsl::attempt_count.eq(0),
                dsl::updated_at.eq(now),
            ))
            .execute(conn)
    } else {
        diesel::update(queued.filter(dsl::next_attempt_at.gt(now)))
            .set((dsl::next_attempt_at.eq(now), dsl::updated_at.eq(now)))
            .execute(conn)
    }
}

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
    hooks: &crate::webhooks::WebhookSettings,
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
        Outcome::Expired => Some((
            "notification.expired",
            Status::Expired,
            Some("expired before it could be delivered"),
        )),
        Outcome::Held { .. } | Outcome::Released => None,
    };
    if let Some((event_type, status, status_reason)) = hook {
        let data = crate::webhooks::NotificationData {
            id: &r.id,
            event: &r.event,
            to: r.recipient.as_deref(),
            status: status.as_str(),
            status_reason,
            smtp_code: code,
            smtp_reply: (!reply.is_empty()).then_some(reply),
            attempt: None,
        };
        crate::webhooks::enqueue(conn, hooks, event_type, &data, now)?;
    }
    Ok(())
}

/// Writes outcomes in one transaction. Each update is guarded by the lease owner, so a worker whose
/// lease expired and was taken over cannot overwrite the newer owner's result.
pub fn record(conn: &mut DbConnection, owner: &str, results: &[Recorded]) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        // Webhook calls go in the same transaction as the status changes that cause them.
        let hooks = crate::webhooks::load(conn)?;
        let mut attempts = Vec::with_capacity(results.len());
        let mut sent = Vec::new();
        for r in results {
            let now = r.attempted_at + r.duration_ms;
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
            let (attempt, code, reply): (Option<&str>, Option<u16>, &str) = match &r.outcome {
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
                    (Some("sent"), Some(*code), reply)
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
                    (Some("deferred"), *code, reply)
                }
                Outcome::Failed {
                    code,
                    reply,
                    reason,
                    suppress,
                } => {
                    if *suppress {
                        if let Some(to) = &r.recipient {
                            crate::suppressions::add(conn, to, reply, "bounce", Some(&r.id), now)?;
                        }
                    }
                    diesel::update(mine)
                        .set((
                            notifications::status.eq(Status::Failed.as_str()),
                            notifications::status_reason.eq(reason),
                            notifications::smtp_reply.eq(reply),
                            no_lease,
                        ))
                        .execute(conn)?;
                    (Some("failed"), *code, reply)
                }
                Outcome::Expired => {
                    diesel::update(mine)
                        .set((
                            notifications::status.eq(Status::Expired.as_str()),
                            notifications::status_reason.eq("expired before it could be delivered"),
                            notifications::attempt_count.eq(notifications::attempt_count - 1),
                            no_lease,
                        ))
                        .execute(conn)?;
                    (None, None, "")
                }
                Outcome::Held { reason } => {
                    diesel::update(mine)
                        .set((
                            notifications::status.eq(Status::Held.as_str()),
                            notifications::status_reason.eq(reason),
                            notifications::attempt_count.eq(notifications::attempt_count - 1),
                            no_lease,
                        ))
                        .execute(conn)?;
                    (None, None, "")
                }
                Outcome::Released => {
                    diesel::update(mine)
                        .set((
                            notifications::status.eq(Status::Queued.as_str()),
                            notifications::attempt_count.eq(notifications::attempt_count - 1),
                            no_lease,
                        ))
                        .execute(conn)?;
                    (None, None, "")
                }
            };
            enqueue_hook(conn, &hooks, r, code, reply, now)?;
            if let Some(outcome) = attempt {
                attempts.push(NewAttempt {
                    notification_id: &r.id,
                    attempted_at: r.attempted_at,
                    outcome,
                    smtp_code: code.map(i32::from),
                    reply,
                    duration_ms: r.duration_ms,
                });
            }
        }
        mark_sent(conn, owner, &sent)?;
        // One multi-row INSERT per backend instead of a round trip per attempt.
        for chunk in attempts.chunks(1000) {
            match conn {
                DbConnection::Sqlite(c) => diesel::insert_into(notification_attempts::table)
                    .values(chunk)
                    .execute(c)?,
                DbConnection::Postgres(c) => diesel::insert_into(notification_attempts::table)
                    .values(chunk)
                    .execute(c)?,
            };
        }
        Ok(())
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

/// Whose expired leases housekeeping may take back. An expired lease alone is no proof that its
/// owner is gone: while the database was away, no owner could renew or record, and one that
/// sent a message meanwhile still holds its outcome. So a live owner's own rows are never taken
/// (it records or releases every one of them itself), and other owners' rows only once the
/// database has been up, and reachable from here, for longer than a lease: time for their
/// owners to come back and write what they hold.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub owner: String,
    /// Nothing here failed to reach the database for at least one lease.
    pub reachable_for_a_lease: bool,
    pub lease_ms: i64,
}

/// How long the database server has been running, where it says (PostgreSQL); None on SQLite,
/// where the file is the database and there is nothing to restart.
fn database_uptime_ms(conn: &mut DbConnection) -> Result<Option<i64>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Uptime {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }
    match conn {
        DbConnection::Postgres(c) => {
            let up: Uptime = diesel::sql_query(
                "SELECT (EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time())) * 1000)::bigint AS ms",
            )
            .get_result(c)?;
            Ok(Some(up.ms))
        }
        DbConnection::Sqlite(_) => Ok(None),
    }
}

/// Periodic housekeeping: expire what is overdue, requeue abandoned leases (under the
/// [`Requeue`] rule), and move notifications between `held` and `queued` as the settings allow.
/// Returns how many rows became queued.
pub fn maintain(
    conn: &mut DbConnection,
    now: i64,
    d: &Deliverability,
    requeue: &Requeue,
) -> Result<usize, StoreError> {
    conn.transaction(|conn| {
        use crate::db::schema::notifications::dsl::*;
        let overdue = notifications.filter(
            status
                .eq_any([Status::Queued.as_str(), Status::Held.as_str()])
                .and(expires_at.le(now)),
        );
        let expiring: Vec<(String, String, Option<String>)> =
            overdue.select((id, event, recipient)).load(conn)?;
        if !expiring.is_empty() {
            let ids: Vec<&String> = expiring.iter().map(|(i, _, _)| i).collect();
            diesel::update(notifications.filter(id.eq_any(ids)))
                .set((
                    status.eq(Status::Expired.as_str()),
                    status_reason.eq("expired before it could be delivered"),
                    updated_at.eq(now),
                ))
                .execute(conn)?;
            let hooks = crate::webhooks::load(conn)?;
            for (nid, ev, to) in &expiring {
                let payload = crate::webhooks::NotificationData {
                    id: nid,
                    event: ev,
                    to: to.as_deref(),
                    status: Status::Expired.as_str(),
                    status_reason: Some("expired before it could be delivered"),
                    smtp_code: None,
                    smtp_reply: None,
                    attempt: None,
                };
                crate::webhooks::enqueue(conn, &hooks, "notification.expired", &payload, now)?;
            }
        }
        let take_others =
            requeue.reachable_for_a_lease && database_uptime_ms(conn)?.is_none_or(|up| up > requeue.lease_ms);
        let mut queued = if take_others {
            diesel::update(
                notifications.filter(
                    status
                        .eq(Status::Sending.as_str())
                        .and(lease_until.lt(now))
                        .and(lease_owner.ne(&requeue.owner)),
                ),
            )
            .set((
                status.eq(Status::Queued.as_str()),
                status_reason.eq("requeued: the worker sending it stopped before recording a result"),
                lease_owner.eq(None::<String>),
                lease_until.eq(None::<i64>),
                next_attempt_at.eq(now),
                updated_at.eq(now),
            ))
            .execute(conn)?
        } else {
            0
        };
        match &d.blocked {
            Some(reason) => {
                // Queued ones go back on hold; held ones get the current reason.
                diesel::update(
                    notifications.filter(
                        status.eq(Status::Queued.as_str()).or(status
                            .eq(Status::Held.as_str())
                            .and(status_reason.is_null().or(status_reason.ne(reason)))),
                    ),
                )
                .set((
                    status.eq(Status::Held.as_str()),
                    status_reason.eq(reason),
                    updated_at.eq(now),
                ))
                .execute(conn)?;
            }
            None => {
                queued += diesel::update(
                    notifications.filter(status.eq(Status::Held.as_str()).and(recipient.is_not_null())),
                )
                .set((
                    status.eq(Status::Queued.as_str()),
                    status_reason.eq(None::<String>),
                    next_attempt_at.eq(now),
                    updated_at.eq(now),
                ))
                .execute(conn)?;
                if d.admin_email.is_none() {
                    diesel::update(
                        notifications.filter(
                            status
                                .eq(Status::Held.as_str())
                                .and(recipient.is_null())
                                .and(status_reason.is_null().or(status_reason.ne(NO_ADMIN_EMAIL))),
                        ),
                    )
                    .set((status_reason.eq(NO_ADMIN_EMAIL), updated_at.eq(now)))
                    .execute(conn)?;
                }
                if let Some(admin) = &d.admin_email {
                    queued += diesel::update(
                        notifications.filter(status.eq(Status::Held.as_str()).and(recipient.is_null())),
                    )
                    .set((
                        status.eq(Status::Queued.as_str()),
                        status_reason.eq(None::<String>),
                        recipient.eq(admin),
                        next_attempt_at.eq(now),
                        updated_at.eq(now),
                    ))
                    .execute(conn)?;
                }
            }
        }
        Ok(queued)
    })
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;

    use super::*;
    use crate::db::DbConnection;

    /// A row being sent by `owner` whose lease ran out a while ago.
    fn expired_lease(conn: &mut DbConnection, owner: &str) {
        conn.batch_execute(&format!(
            "INSERT INTO notifications (id, event, recipient, data, subject, status, created_at, \
             updated_at, expires_at, next_attempt_at, created_by, lease_owner, lease_until, attempt_count) \
             VALUES ('n1', 'user_deactivated', 'ada@example.com', '{{}}', 'Bye', 'sending', 1, 1, \
             9999999999999, 1, 'test', '{owner}', 1000, 1)"
        ))
        .unwrap();
    }

    fn status(conn: &mut DbConnection) -> String {
        crate::db::schema::notifications::table
            .select(crate::db::schema::notifications::status)
            .first::<String>(conn)
            .unwrap()
    }

    fn maintain_as(conn: &mut DbConnection, owner: &str, reachable: bool) -> String {
        let d = Deliverability {
            blocked: None,
            admin_email: None,
            suppressed: Default::default(),
        };
        let requeue = Requeue {
            owner: owner.into(),
            reachable_for_a_lease: reachable,
            lease_ms: 1000,
        };
        maintain(conn, crate::db::now_millis(), &d, &requeue).unwrap();
        status(conn)
    }

    /// The review's duplicates: an owner that could not record (disk full, database away) lost
    /// its rows to housekeeping, its own or another instance's, as soon as the lease ran out.
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(conn: &mut DbConnection) {
        crate::db::run_migrations(conn).unwrap();
        expired_lease(conn, "a");
        assert_eq!(
            maintain_as(conn, "a", true),
            "sending",
            "its own owner took it back"
        );
        assert_eq!(
            maintain_as(conn, "b", false),
            "sending",
            "taken right after the database came back"
        );
        assert_eq!(
            maintain_as(conn, "b", true),
            "queued",
            "an owner that is gone loses it"
        );
    }

    #[test]
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        let mut conn = DbConnection::Sqlite(SqliteConnection::establish(path.to_str().unwrap()).unwrap());
        expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(&mut conn);
    }

    #[test]
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back_on_postgres() {
        let Ok(admin) = std::env::var("MAILROOM_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("MAILROOM_TEST_REQUIRE_POSTGRES").is_none());
            eprintln!("SKIPPED: MAILROOM_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!("mailroom_leases_{}", uuid::Uuid::new_v4().simple());
        let mut server = PgConnection::establish(&admin).unwrap();
        server.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let base = admin.split('?').next().unwrap_or(&admin);
        let (host, _) = base.rsplit_once('/').unwrap();
        let mut conn = DbConnection::Postgres(PgConnection::establish(&format!("{host}/{name}")).unwrap());
        // The server has been up for longer than the one-second lease.
        expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(&mut conn);
        assert_eq!(
            database_uptime_ms(&mut conn).unwrap().map(|ms| ms > 1000),
            Some(true)
        );
        drop(conn);
        server
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .unwrap();
    }
}
