//! The delivery queue: claims with a lease, lease renewal, and making queued mail due.
//!
//! Claiming is one short `UPDATE ... RETURNING` (PostgreSQL adds `FOR UPDATE SKIP LOCKED` so
//! instances never claim the same row) and a read of the claimed rows' bodies; sending happens
//! outside any transaction; each outcome is written in another short transaction
//! ([`outcomes`]), guarded by the lease owner; [`housekeeping`] expires, requeues and holds.

pub mod housekeeping;
pub mod outcomes;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use super::notifications::Status;
use crate::db::schema::notification_bodies;
use crate::db::DbConnection;

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
