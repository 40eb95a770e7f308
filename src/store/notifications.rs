//! Notifications as stored: their rows and bodies, lookups and listings, and idempotency keys.

use diesel::prelude::*;

use crate::db::schema::{idempotency_keys, notification_attempts, notification_bodies, notifications};
use crate::db::DbConnection;
use crate::db::StoreError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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

/// The reason of a notification that expired before it could be delivered.
pub const EXPIRED: &str = "expired before it could be delivered";

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

impl NotificationRow {
    /// The row's status. A value no version of mailroom writes is a damaged row, and said so
    /// rather than read as some status.
    pub fn status(&self) -> Result<Status, StoreError> {
        Status::parse(&self.status).ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "notification {} has the unknown status {:?}",
                self.id,
                self.status
            ))
        })
    }
}

// Stored in `notification_attempts.outcome` as `as_str` spells it.
/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Sent,
    /// Will be retried.
    Deferred,
    Failed,
}

impl AttemptOutcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Deferred => "deferred",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "deferred" => Self::Deferred,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Queryable)]
pub struct AttemptRow {
    pub attempted_at: i64,
    pub outcome: String,
    pub smtp_code: Option<i32>,
    pub reply: String,
    pub duration_ms: i64,
}

impl AttemptRow {
    /// The attempt's outcome; an unknown value is a damaged row.
    pub fn outcome(&self) -> Result<AttemptOutcome, StoreError> {
        AttemptOutcome::parse(&self.outcome).ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "an attempt has the unknown outcome {:?}",
                self.outcome
            ))
        })
    }
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
        crate::db::per_backend!(conn, |c| {
            diesel::insert_into(notifications::table)
                .values(rows)
                .execute(c)?;
            diesel::insert_into(notification_bodies::table)
                .values(bodies)
                .execute(c)?
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str) -> NotificationRow {
        NotificationRow {
            id: "n1".into(),
            event: "user_invited".into(),
            recipient: None,
            to_name: None,
            data: "{}".into(),
            subject: String::new(),
            status: status.into(),
            status_reason: None,
            created_at: 0,
            updated_at: 0,
            expires_at: 0,
            next_attempt_at: 0,
            lease_owner: None,
            lease_until: None,
            attempt_count: 0,
            sent_at: None,
            message_id: None,
            smtp_reply: None,
            created_by: String::new(),
            locale: None,
        }
    }

    #[test]
    fn a_row_with_a_status_no_version_writes_is_damaged_not_queued() {
        for status in Status::ALL {
            assert_eq!(row(status.as_str()).status().unwrap(), status);
        }
        let e = row("queued ").status().unwrap_err();
        assert!(e.to_string().contains("unknown status"), "{e}");
    }
}
