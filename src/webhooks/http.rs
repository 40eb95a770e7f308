//! `GET /webhooks/deliveries`: the outbox of webhook calls and how each went.

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
use crate::store::webhooks::{self as outbox, WebhookDeliveryStatus};
use crate::validation::Errors;

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryView {
    pub id: String,
    pub endpoint_id: String,
    #[schema(example = "notification.sent")]
    pub event_type: String,
    pub notification_id: Option<String>,
    pub status: WebhookDeliveryStatus,
    pub attempts: i32,
    /// The receiver's last HTTP status.
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// When a pending call is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveries {
    pub deliveries: Vec<WebhookDeliveryView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only this endpoint's calls.
    pub endpoint: Option<String>,
    #[param(value_type = Option<WebhookDeliveryStatus>)]
    pub status: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Webhook calls, newest first, with attempts and the receiver's last answer.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:read"])),
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "The newest webhook calls", body = WebhookDeliveries),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:read`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/webhooks/deliveries")]
pub async fn list_deliveries(
    _auth: Authorized<NotificationsRead>,
    state: web::Data<AppState>,
    query: web::Query<DeliveriesQuery>,
) -> Result<web::Json<WebhookDeliveries>, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    let mut errors = Errors::default();
    if !(1..=200).contains(&limit) {
        errors.add("limit", "out_of_range", "limit must be between 1 and 200");
    }
    let status = q.status.as_deref().map(WebhookDeliveryStatus::parse);
    if status.is_some_and(|s| s.is_none()) {
        errors.add(
            "status",
            "invalid_choice",
            "status must be pending, delivered or failed",
        );
    }
    errors.finish()?;
    let rows = state
        .db
        .read(move |conn| outbox::list(conn, q.endpoint.as_deref(), status.flatten(), limit))
        .await?;
    Ok(web::Json(WebhookDeliveries {
        deliveries: rows
            .into_iter()
            .map(|r| {
                let status = r.status()?;
                Ok(WebhookDeliveryView {
                    next_attempt_at: (status == WebhookDeliveryStatus::Pending)
                        .then(|| millis_to_datetime(r.next_attempt_at)),
                    id: r.id,
                    endpoint_id: r.endpoint_id,
                    event_type: r.event_type,
                    notification_id: r.notification_id,
                    status,
                    attempts: r.attempts,
                    last_status_code: r.last_status_code,
                    last_error: r.last_error,
                    created_at: millis_to_datetime(r.created_at),
                    updated_at: millis_to_datetime(r.updated_at),
                })
            })
            .collect::<Result<_, StoreError>>()?,
    }))
}
