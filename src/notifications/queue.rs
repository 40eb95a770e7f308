//! `POST /notifications/{id}/retry`, `POST /notifications/flush` and `GET /notifications/stats`:
//! working the queue and watching it.

use std::collections::BTreeMap;

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::accept::Accepted;
use super::http::accepted_response;
use crate::auth::scope::{NotificationsRead, NotificationsSend};
use crate::auth::Authorized;
use crate::db::{millis_to_datetime, now_millis};
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::notifications::{self as store, Status};
use crate::store::{queue, stats as queue_stats};

/// Send a notification now: a `failed` or `expired` one is queued again with a new lifetime and
/// a fresh attempt count; a `queued` one (waiting for its next retry) becomes due at once.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued and due now (or held, if settings are missing)", body = Accepted),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Only queued, failed or expired notifications can be retried (`not_retryable`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications/{id}/retry")]
pub async fn retry_notification(
    _auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let now = now_millis();
    let accepted = state
        .db
        .write(move |conn| {
            let row =
                store::find(conn, &id)?.ok_or_else(|| ApiError::NotFound(format!("no notification {id}")))?;
            let status = row.status()?;
            if status == Status::Queued {
                // Waiting for its next attempt: make it due now, keeping its lifetime and attempts.
                store::make_due(conn, &id, now)?;
                return Ok(Accepted {
                    id: row.id,
                    status: Status::Queued,
                    status_reason: row.status_reason,
                    event: row.event,
                    to: row.recipient,
                    subject: row.subject,
                    locale: row.locale.unwrap_or_default(),
                    created_at: millis_to_datetime(row.created_at),
                    expires_at: millis_to_datetime(row.expires_at),
                });
            }
            if !matches!(status, Status::Failed | Status::Expired) {
                return Err(ApiError::Conflict {
                    code: "not_retryable",
                    detail: format!(
                        "the notification is {}; only queued, failed or expired ones can be retried",
                        status.as_str()
                    ),
                });
            }
            let ttl = crate::events::find(&row.event).map_or(3 * 24 * 3600, |e| e.default_ttl_seconds);
            let expires_at = now + ttl * 1000;
            store::requeue(conn, &id, now, expires_at)?;
            Ok(Accepted {
                id: row.id,
                status: Status::Queued,
                status_reason: None,
                event: row.event,
                to: row.recipient,
                subject: row.subject,
                locale: row.locale.unwrap_or_default(),
                created_at: millis_to_datetime(row.created_at),
                expires_at: millis_to_datetime(expires_at),
            })
        })
        .await?;
    // The dispatcher's housekeeping holds it again if settings are missing.
    state.wake_dispatcher();
    Ok(accepted_response(&accepted))
}

/// The answer to a flush.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flushed {
    /// How many queued notifications were waiting for a later retry and are now due.
    pub flushed: usize,
}

/// Make every deferred notification due now (like `postqueue -f`), for example once a problem
/// at the SMTP server is fixed. Attempts already made still count.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    responses(
        (status = 200, description = "The deferred notifications are due now", body = Flushed),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications/flush")]
pub async fn flush_queue(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
) -> Result<web::Json<Flushed>, ApiError> {
    let now = now_millis();
    let flushed = state
        .db
        .write(move |conn| Ok::<_, ApiError>(queue::make_queued_due(conn, now, false)?))
        .await?;
    tracing::info!(actor = %auth.sub(), flushed, "queue flushed");
    state.wake_dispatcher();
    Ok(web::Json(Flushed { flushed }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastEvent {
    pub at: DateTime<Utc>,
    /// The notification concerned; null for a failure of the service itself (a full disk).
    pub notification_id: Option<String>,
    pub reply: Option<String>,
}

/// Notifications per status (the shape of `Stats.counts`, which has every status).
#[derive(ToSchema)]
#[allow(dead_code)] // only describes the map `stats` builds from `Status::ALL`
pub struct StatusCounts {
    held: u64,
    queued: u64,
    sending: u64,
    sent: u64,
    failed: u64,
    expired: u64,
    suppressed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Count per status; every status is present.
    #[schema(value_type = StatusCounts)]
    pub counts: BTreeMap<String, i64>,
    /// Age of the oldest queued notification, in seconds (null when none is queued).
    pub oldest_queued_age_seconds: Option<i64>,
    pub last_success: Option<LastEvent>,
    /// The last attempt that did not deliver (deferred or failed), or, when newer, the last
    /// write the database refused for lack of space.
    pub last_error: Option<LastEvent>,
}

/// Whether mail is flowing: counts by status, queue age, last success and last error.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:read"])),
    responses(
        (status = 200, description = "Delivery statistics", body = Stats),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/notifications/stats")]
pub async fn stats(
    _auth: Authorized<NotificationsRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<Stats>, ApiError> {
    let now = now_millis();
    let storage = state.db.storage_failure();
    let stats = state
        .db
        .read(move |conn| {
            let depth = queue_stats::queue_depth(conn)?;
            let last_success = queue_stats::last_attempt(conn, true)?;
            let last_error = queue_stats::last_attempt(conn, false)?;
            let last = |r: Option<(i64, String, String)>| {
                r.map(|(at, notification_id, reply)| LastEvent {
                    at: millis_to_datetime(at),
                    notification_id: Some(notification_id),
                    reply: Some(reply),
                })
            };
            Ok::<_, ApiError>(Stats {
                counts: depth
                    .counts
                    .iter()
                    .map(|(s, n)| (s.as_str().to_string(), *n))
                    .collect(),
                oldest_queued_age_seconds: depth.oldest_queued_age_ms(now).map(|ms| ms / 1000),
                last_success: last(last_success),
                last_error: match (last(last_error), storage) {
                    (Some(e), Some(full)) if e.at.timestamp_millis() >= full.at => Some(e),
                    (_, Some(full)) => Some(LastEvent {
                        at: millis_to_datetime(full.at),
                        notification_id: None,
                        reply: Some(format!("database writes fail: the disk is full ({})", full.cause)),
                    }),
                    (e, None) => e,
                },
            })
        })
        .await?;
    Ok(web::Json(stats))
}
