//! The `/notifications` routes.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::accept::{self, Acceptance, Accepted, NotificationRequest};
use super::intake::Intake;
use crate::auth::scope::{NotificationsRead, NotificationsSend};
use crate::auth::Authorized;
use crate::db::{millis_to_datetime, now_millis};
use crate::error::{ApiError, FieldError, Problem};
use crate::settings::templates::CatalogCache;
use crate::state::AppState;
use crate::store::notifications::{self as store, Status};
use crate::store::{queue, stats as queue_stats};
use crate::validation::{Field, Object};

pub const MAX_BATCH: usize = 1000;

fn idempotency_header(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::field(
                    "idempotency_key",
                    "invalid_idempotency_key",
                    "the Idempotency-Key header must be printable ASCII",
                )
            })
        })
        .transpose()
}

fn accepted_response(a: &Accepted) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/notifications/{}", a.id)))
        .json(a)
}

/// Accept a notification: validated, rendered and stored durably before the answer.
///
/// A notification that cannot be delivered yet (no SMTP settings, no From address, no admin address
/// for an admin event) is accepted as `held` and goes out once the settings allow.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    request_body = NotificationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat with the same key and body returns the original answer and creates nothing")),
    responses(
        (status = 202, description = "Accepted and stored", body = Accepted,
         headers(("Location" = String, description = "/notifications/{id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body (`idempotency_key_reused`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 4 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event, missing `to`, bad `data` (fields like `data.product_name`), or a subject template of the event that cannot render (field `event`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications")]
pub async fn post_notification(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    intake: web::Data<Intake>,
    req: HttpRequest,
    body: web::Json<Object<NotificationRequest>>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let result = accept_one(
        &auth,
        &state,
        &intake,
        catalog.into_inner(),
        &req,
        body.into_inner().0,
    )
    .await;
    count_acceptance(result.as_ref().map(|a| a.accepted()), started);
    let acceptance = result?;
    Ok(accepted_response(acceptance.accepted()))
}

/// The accept counters and duration, for one notification's answer.
fn count_acceptance(result: Result<&Accepted, &ApiError>, started: std::time::Instant) {
    match result {
        Ok(a) => {
            crate::metrics::accepted(&a.event);
            if a.status == Status::Suppressed {
                crate::metrics::delivery("suppressed");
            }
            crate::metrics::accept_duration(started.elapsed());
        }
        Err(e) => crate::metrics::rejected(match e {
            ApiError::Validation(_) | ApiError::BadRequest { .. } => "validation",
            ApiError::Conflict { .. } => "conflict",
            ApiError::InsufficientStorage(_) => "storage",
            _ => "unavailable",
        }),
    }
}

async fn accept_one(
    auth: &Authorized<NotificationsSend>,
    state: &AppState,
    intake: &Intake,
    catalog: std::sync::Arc<CatalogCache>,
    req: &HttpRequest,
    body: NotificationRequest,
) -> Result<Acceptance, ApiError> {
    let now = now_millis();
    let key = idempotency_header(req)?;
    let validated = accept::validate(body, key.as_deref(), "", now).map_err(ApiError::Validation)?;
    let catalog = CatalogCache::current(catalog, &state.db).await?;
    // Rendered here, on the HTTP worker: bounded by the sandbox (fuel, output size), and a hop to
    // a blocking thread per request cost more than the rendering itself.
    let mut validated = validated;
    accept::render_validated(&mut validated, &catalog)?;
    let acceptance = intake.accept(validated, auth.sub(), now).await?;
    if let Acceptance::New(a) = &acceptance {
        if a.status == Status::Queued {
            state.wake_dispatcher();
        }
    }
    Ok(acceptance)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Up to 1000 notifications, each validated and answered on its own.
    #[serde(default)]
    #[schema(value_type = Vec<NotificationRequest>, required = true, min_items = 1, max_items = 1000)]
    pub notifications: Field<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    pub index: usize,
    /// 202 for an accepted item, 409 or 422 for a refused one.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Accepted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<BatchItemResult>,
}

/// Accept up to 1000 notifications in one request; each item is validated and answered on its
/// own, and the accepted ones are stored in one transaction.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 4 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`notifications` missing, empty or longer than 1000", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications/batch")]
pub async fn post_batch(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    intake: web::Data<Intake>,
    body: web::Json<Object<BatchRequest>>,
) -> Result<web::Json<BatchResponse>, ApiError> {
    let started = std::time::Instant::now();
    let now = now_millis();
    let mut errors = crate::validation::Errors::default();
    let items = errors
        .required(
            "notifications",
            body.into_inner().0.notifications,
            "an array of notifications",
        )
        .unwrap_or_default();
    if items.is_empty() && !errors.has("notifications") {
        errors.add(
            "notifications",
            "empty",
            "notifications must hold at least one item",
        );
    }
    if items.len() > MAX_BATCH {
        errors.add(
            "notifications",
            "too_many",
            format!("at most {MAX_BATCH} notifications per batch"),
        );
    }
    errors.finish()?;
    let _permit = state
        .batch_permits
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the service is shutting down".into()))?;

    let mut results: Vec<Option<BatchItemResult>> = Vec::with_capacity(items.len());
    let mut valid = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let prefix = format!("notifications[{index}].");
        let parsed = match item {
            serde_json::Value::Object(_) => {
                serde_json::from_value::<NotificationRequest>(item).map_err(|_| {
                    vec![FieldError {
                        field: format!("notifications[{index}]"),
                        code: "invalid_type".into(),
                        message: "each notification must be an object".into(),
                    }]
                })
            }
            _ => Err(vec![FieldError {
                field: format!("notifications[{index}]"),
                code: "invalid_type".into(),
                message: "each notification must be an object".into(),
            }]),
        };
        match parsed.and_then(|r| accept::validate(r, None, &prefix, now)) {
            Ok(v) => {
                results.push(None);
                valid.push((index, v));
            }
            Err(field_errors) => results.push(Some(BatchItemResult {
                index,
                status: 422,
                notification: None,
                error: Some(ApiError::Validation(field_errors).problem()),
            })),
        }
    }
    // Rendered off the async threads and before the committer; a failure is the item's own.
    if !valid.is_empty() {
        let catalog = CatalogCache::current(catalog.into_inner(), &state.db).await?;
        let rendered = crate::error::blocking(move || {
            Ok(valid
                .into_iter()
                .map(|(index, mut v)| (index, accept::render_validated(&mut v, &catalog).map(|()| v)))
                .collect::<Vec<_>>())
        })
        .await?;
        valid = Vec::with_capacity(rendered.len());
        for (index, r) in rendered {
            match r {
                Ok(v) => valid.push((index, v)),
                Err(e) => {
                    results[index] = Some(BatchItemResult {
                        index,
                        status: actix_web::ResponseError::status_code(&e).as_u16(),
                        notification: None,
                        error: Some(e.problem()),
                    })
                }
            }
        }
    }
    // Through the group committer, like single posts: each item is answered on its own.
    let (sub, intake) = (auth.sub(), &**intake);
    let outcomes =
        futures_util::future::join_all(valid.into_iter().map(|(index, v)| async move {
            (index, intake.accept(v, sub, now).await.map_err(ApiError::from))
        }))
        .await;
    let mut wake = false;
    for (index, outcome) in outcomes {
        count_acceptance(outcome.as_ref().map(|a| a.accepted()), started);
        results[index] = Some(match outcome {
            Ok(acceptance) => {
                wake |= matches!(&acceptance, Acceptance::New(a) if a.status == Status::Queued);
                BatchItemResult {
                    index,
                    status: 202,
                    notification: Some(acceptance.accepted().clone()),
                    error: None,
                }
            }
            Err(e) => BatchItemResult {
                index,
                status: actix_web::ResponseError::status_code(&e).as_u16(),
                notification: None,
                error: Some(e.problem()),
            },
        });
    }
    if wake {
        state.wake_dispatcher();
    }
    let results: Vec<BatchItemResult> = results.into_iter().flatten().collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    Ok(web::Json(BatchResponse {
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

/// How one delivery attempt ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Sent,
    /// Will be retried.
    Deferred,
    Failed,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub at: DateTime<Utc>,
    #[schema(value_type = AttemptOutcome)]
    pub outcome: String,
    pub smtp_code: Option<i32>,
    /// The server's reply, or what went wrong on the way.
    pub reply: String,
    pub duration_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub event: String,
    pub to: Option<String>,
    pub to_name: Option<String>,
    #[schema(value_type = super::accept::TemplateData)]
    pub data: serde_json::Value,
    pub subject: String,
    /// The locale whose templates were used.
    pub locale: Option<String>,
    pub status: Status,
    pub status_reason: Option<String>,
    pub attempts: Vec<AttemptView>,
    /// When the next attempt is due (queued notifications).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub message_id: Option<String>,
    /// The SMTP server's last reply.
    pub smtp_reply: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The `sub` of the token that posted it.
    pub created_by: String,
}

fn view(row: store::NotificationRow, attempts: Vec<store::AttemptRow>) -> NotificationView {
    let status = Status::parse(&row.status).unwrap_or(Status::Queued);
    NotificationView {
        id: row.id,
        event: row.event,
        to: row.recipient,
        to_name: row.to_name,
        data: serde_json::from_str(&row.data).unwrap_or_default(),
        subject: row.subject,
        locale: row.locale,
        status,
        status_reason: row.status_reason,
        attempts: attempts
            .into_iter()
            .map(|a| AttemptView {
                at: millis_to_datetime(a.attempted_at),
                outcome: a.outcome,
                smtp_code: a.smtp_code,
                reply: a.reply,
                duration_ms: a.duration_ms,
            })
            .collect(),
        next_attempt_at: (status == Status::Queued).then(|| millis_to_datetime(row.next_attempt_at)),
        sent_at: row.sent_at.map(millis_to_datetime),
        message_id: row.message_id,
        smtp_reply: row.smtp_reply,
        created_at: millis_to_datetime(row.created_at),
        updated_at: millis_to_datetime(row.updated_at),
        expires_at: millis_to_datetime(row.expires_at),
        created_by: row.created_by,
    }
}

/// A notification's delivery status and attempt history.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:read"])),
    params(("id" = String, Path, description = "The id from the 202 answer")),
    responses(
        (status = 200, description = "The notification", body = NotificationView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/notifications/{id}")]
pub async fn get_notification(
    _auth: Authorized<NotificationsRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<NotificationView>, ApiError> {
    let id = id.into_inner();
    let (row, attempts) = state
        .db
        .read(move |conn| {
            let row =
                store::find(conn, &id)?.ok_or_else(|| ApiError::NotFound(format!("no notification {id}")))?;
            let attempts = store::attempts(conn, &id)?;
            Ok::<_, ApiError>((row, attempts))
        })
        .await?;
    Ok(web::Json(view(row, attempts)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// held, queued, sending, sent, failed or expired.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// An event from `GET /events`.
    #[param(schema_with = event_name_schema)]
    pub event: Option<String>,
    /// Recipient address.
    pub to: Option<String>,
    /// Only notifications created at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// The event names, as an enum in the OpenAPI document.
fn event_name_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::events::EVENTS.iter().map(|e| e.name)))
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationView>,
    pub next_cursor: Option<String>,
}

/// List notifications, newest first.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:read"])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of notifications, each with its attempts", body = NotificationPage),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:read`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/notifications")]
pub async fn list_notifications(
    _auth: Authorized<NotificationsRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<NotificationPage>, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    let mut errors = crate::validation::Errors::default();
    if !(1..=200).contains(&limit) {
        errors.add("limit", "out_of_range", "limit must be between 1 and 200");
    }
    if let Some(s) = &q.status {
        if Status::parse(s).is_none() {
            errors.add(
                "status",
                "invalid_choice",
                "status must be one of held, queued, sending, sent, failed, expired",
            );
        }
    }
    if let Some(e) = &q.event {
        if crate::events::find(e).is_none() {
            errors.add("event", "unknown_event", format!("{e} is not an event"));
        }
    }
    if let Some(c) = &q.cursor {
        // The same rule as the audit log: a cursor is only what a previous page handed out.
        if uuid::Uuid::parse_str(c).is_err() {
            errors.add(
                "cursor",
                "invalid_cursor",
                "cursor must be a next_cursor from a previous page",
            );
        }
    }
    errors.finish()?;
    let rows = state
        .db
        .read(move |conn| {
            let filter = store::ListFilter {
                status: q.status,
                event: q.event,
                to: q.to,
                since: q.since.map(|s| s.timestamp_millis()),
                before_id: q.cursor,
            };
            store::list(conn, &filter, limit + 1)
        })
        .await?;
    let more = rows.len() as i64 > limit;
    let mut rows = rows;
    rows.truncate(limit as usize);
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut attempts = state.db.read(move |conn| store::attempts_of(conn, &ids)).await?;
    let notifications: Vec<NotificationView> = rows
        .into_iter()
        .map(|r| {
            let a = attempts.remove(&r.id).unwrap_or_default();
            view(r, a)
        })
        .collect();
    let next_cursor = if more {
        notifications.last().map(|n| n.id.clone())
    } else {
        None
    };
    Ok(web::Json(NotificationPage {
        notifications,
        next_cursor,
    }))
}

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
            let status = Status::parse(&row.status);
            if status == Some(Status::Queued) {
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
            if !matches!(status, Some(Status::Failed | Status::Expired)) {
                return Err(ApiError::Conflict {
                    code: "not_retryable",
                    detail: format!(
                        "the notification is {}; only queued, failed or expired ones can be retried",
                        row.status
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
