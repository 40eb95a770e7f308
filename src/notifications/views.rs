//! `GET /notifications` and `GET /notifications/{id}`: notifications and their attempts.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::scope::NotificationsRead;
use crate::auth::Authorized;
use crate::db::millis_to_datetime;
use crate::db::StoreError;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::notifications::{self as store, AttemptOutcome, Status};

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
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

fn view(
    row: store::NotificationRow,
    attempts: Vec<store::AttemptRow>,
) -> Result<NotificationView, StoreError> {
    let status = row.status()?;
    let attempts = attempts
        .into_iter()
        .map(|a| {
            Ok(AttemptView {
                at: millis_to_datetime(a.attempted_at),
                outcome: a.outcome()?,
                smtp_code: a.smtp_code,
                reply: a.reply,
                duration_ms: a.duration_ms,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(NotificationView {
        id: row.id,
        event: row.event,
        to: row.recipient,
        to_name: row.to_name,
        data: serde_json::from_str(&row.data).unwrap_or_default(),
        subject: row.subject,
        locale: row.locale,
        status,
        status_reason: row.status_reason,
        attempts,
        next_attempt_at: (status == Status::Queued).then(|| millis_to_datetime(row.next_attempt_at)),
        sent_at: row.sent_at.map(millis_to_datetime),
        message_id: row.message_id,
        smtp_reply: row.smtp_reply,
        created_at: millis_to_datetime(row.created_at),
        updated_at: millis_to_datetime(row.updated_at),
        expires_at: millis_to_datetime(row.expires_at),
        created_by: row.created_by,
    })
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
    Ok(web::Json(view(row, attempts)?))
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
        .collect::<Result<_, StoreError>>()?;
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
