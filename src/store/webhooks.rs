//! The webhook endpoints (a settings document whose signing secrets are sealed) and the durable
//! outbox of calls, written in the transaction of the status change that causes them.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use serde::{Deserialize, Serialize};

use crate::db::schema::webhook_deliveries;
use crate::db::DbConnection;
use crate::db::StoreError;
use crate::store::notifications::Status;
use crate::store::settings as store;

pub const KEY: &str = "webhooks";
/// Associated data of a sealed signing secret.
pub const SECRET_PURPOSE: &str = "webhooks.secret";
/// Every event an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 5] = [
    "notification.sent",
    "notification.failed",
    "notification.expired",
    "notification.deferred",
    "notification.suppressed",
];

/// One endpoint as stored (the secret sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub secret: crate::secrets::Sealed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WebhookSettings {
    pub endpoints: Vec<Endpoint>,
}

pub fn load(conn: &mut DbConnection) -> Result<WebhookSettings, StoreError> {
    Ok(store::load::<WebhookSettings>(conn, KEY)?
        .map(|s| s.value)
        .unwrap_or_default())
}

/// What a notification webhook says about the notification.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationData<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub to: Option<&'a str>,
    pub status: &'a str,
    pub status_reason: Option<&'a str>,
    pub smtp_code: Option<u16>,
    pub smtp_reply: Option<&'a str>,
    pub attempt: Option<i32>,
}

impl<'a> NotificationData<'a> {
    /// A notification's new status, as every webhook about it says it.
    pub fn change(
        id: &'a str,
        event: &'a str,
        to: Option<&'a str>,
        status: Status,
        status_reason: Option<&'a str>,
    ) -> Self {
        Self {
            id,
            event,
            to,
            status: status.as_str(),
            status_reason,
            smtp_code: None,
            smtp_reply: None,
            attempt: None,
        }
    }

    /// With the server's reply to the attempt that caused it (an empty reply is none).
    pub fn with_reply(self, code: Option<u16>, reply: &'a str) -> Self {
        Self {
            smtp_code: code,
            smtp_reply: (!reply.is_empty()).then_some(reply),
            ..self
        }
    }
}

/// Writes one call per enabled endpoint subscribed to `event_type` (in the caller's transaction).
pub fn enqueue(
    conn: &mut DbConnection,
    settings: &WebhookSettings,
    event_type: &str,
    data: &NotificationData<'_>,
    now: i64,
) -> Result<usize, diesel::result::Error> {
    let wanted = |e: &&Endpoint| e.enabled && e.events.iter().any(|t| t == event_type);
    // Most installations have no webhooks: nothing to serialize for every delivered message.
    if !settings.endpoints.iter().any(|e| wanted(&e)) {
        return Ok(0);
    }
    let timestamp = crate::db::millis_to_datetime(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let payload = serde_json::json!({"type": event_type, "timestamp": timestamp, "data": data}).to_string();
    let mut n = 0;
    for endpoint in settings.endpoints.iter().filter(wanted) {
        diesel::insert_into(webhook_deliveries::table)
            .values((
                webhook_deliveries::id.eq(format!("msg_{}", uuid::Uuid::now_v7().simple())),
                webhook_deliveries::endpoint_id.eq(&endpoint.id),
                webhook_deliveries::event_type.eq(event_type),
                webhook_deliveries::notification_id.eq(data.id),
                webhook_deliveries::payload.eq(&payload),
                webhook_deliveries::status.eq(WebhookDeliveryStatus::Pending.as_str()),
                webhook_deliveries::attempts.eq(0),
                webhook_deliveries::next_attempt_at.eq(now),
                webhook_deliveries::created_at.eq(now),
                webhook_deliveries::updated_at.eq(now),
            ))
            .execute(conn)?;
        n += 1;
    }
    Ok(n)
}

/// A webhook call claimed for sending.
#[derive(Debug, Clone, QueryableByName)]
pub struct Due {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub endpoint_id: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

const CLAIM_SQL: &str = "UPDATE webhook_deliveries SET lease_until = $1, attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM webhook_deliveries \
                  WHERE status = 'pending' AND next_attempt_at <= $2 \
                    AND (lease_until IS NULL OR lease_until < $2) \
                  ORDER BY next_attempt_at LIMIT $3 {LOCK}) \
     RETURNING id, endpoint_id, payload, attempts";

/// Claims up to `limit` due calls until `lease_until` (a crashed sender's claims come back then).
pub fn claim(
    conn: &mut DbConnection,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Due>, diesel::result::Error> {
    match conn {
        DbConnection::Postgres(c) => diesel::sql_query(CLAIM_SQL.replace("{LOCK}", "FOR UPDATE SKIP LOCKED"))
            .bind::<BigInt, _>(lease_until)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(c),
        DbConnection::Sqlite(c) => diesel::sql_query(CLAIM_SQL.replace("{LOCK}", "").replace('$', "?"))
            .bind::<BigInt, _>(lease_until)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(c),
    }
}

// Stored in `webhook_deliveries.status` as `as_str` spells it.
/// Where a webhook call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDeliveryStatus {
    /// Not yet taken by the receiver; tried again at `next_attempt_at`.
    Pending,
    Delivered,
    /// Out of attempts.
    Failed,
}

impl WebhookDeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// How a call went.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub id: String,
    /// Pending: retry at `next_attempt_at`.
    pub status: WebhookDeliveryStatus,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub next_attempt_at: i64,
    pub at: i64,
}

pub fn record(conn: &mut DbConnection, results: &[CallResult]) -> Result<(), diesel::result::Error> {
    for r in results {
        diesel::update(webhook_deliveries::table.find(&r.id))
            .set((
                webhook_deliveries::status.eq(r.status.as_str()),
                webhook_deliveries::last_status_code.eq(r.status_code.map(i32::from)),
                webhook_deliveries::last_error.eq(&r.error),
                webhook_deliveries::next_attempt_at.eq(r.next_attempt_at),
                webhook_deliveries::lease_until.eq(None::<i64>),
                webhook_deliveries::updated_at.eq(r.at),
            ))
            .execute(conn)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Queryable)]
pub struct DeliveryRow {
    pub id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub notification_id: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeliveryRow {
    /// The call's status; an unknown value is a damaged row.
    pub fn status(&self) -> Result<WebhookDeliveryStatus, StoreError> {
        WebhookDeliveryStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "webhook call {} has the unknown status {:?}",
                self.id,
                self.status
            ))
        })
    }
}

/// The newest calls, optionally for one endpoint and in one status.
pub fn list(
    conn: &mut DbConnection,
    endpoint: Option<&str>,
    status: Option<WebhookDeliveryStatus>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    use crate::db::schema::webhook_deliveries::dsl as w;
    let mut q = w::webhook_deliveries.into_boxed();
    if let Some(e) = endpoint {
        q = q.filter(w::endpoint_id.eq(e.to_string()));
    }
    if let Some(s) = status {
        q = q.filter(w::status.eq(s.as_str()));
    }
    Ok(q.order(w::id.desc())
        .limit(limit)
        .select((
            w::id,
            w::endpoint_id,
            w::event_type,
            w::notification_id,
            w::status,
            w::attempts,
            w::last_status_code,
            w::last_error,
            w::next_attempt_at,
            w::created_at,
            w::updated_at,
        ))
        .load(conn)?)
}
