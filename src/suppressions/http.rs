//! `GET` and `POST /suppressions`, `DELETE /suppressions/{address}`.

use actix_web::{delete, get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::scope::{NotificationsRead, NotificationsSend};
use crate::auth::Authorized;
use crate::db::{millis_to_datetime, now_millis};
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::suppressions::{self as store, Suppression};
use crate::validation::{check_email, Errors, Field, Object};

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionView {
    #[schema(example = "ada@example.com")]
    pub address: String,
    /// The server's reply that caused it, or what the person who added it wrote.
    pub reason: String,
    /// `bounce` (a permanent failure naming the recipient) or `manual`.
    #[schema(example = "bounce")]
    pub source: String,
    /// The notification whose failure added it.
    pub notification_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        Self {
            address: s.address,
            reason: s.reason,
            source: s.source,
            notification_id: s.notification_id,
            created_at: millis_to_datetime(s.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionPage {
    pub suppressions: Vec<SuppressionView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionQuery {
    /// Only addresses containing this text.
    pub address: Option<String>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// The suppressed addresses, in address order.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:read"])),
    params(SuppressionQuery),
    responses(
        (status = 200, description = "A page of suppressed addresses", body = SuppressionPage),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:read`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/suppressions")]
pub async fn list_suppressions(
    _auth: Authorized<NotificationsRead>,
    state: web::Data<AppState>,
    query: web::Query<SuppressionQuery>,
) -> Result<web::Json<SuppressionPage>, ApiError> {
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            "out_of_range",
            "limit must be between 1 and 200",
        ));
    }
    let rows = state
        .db
        .read(move |conn| store::list(conn, q.address.as_deref(), q.cursor.as_deref(), limit + 1))
        .await?;
    let more = rows.len() as i64 > limit;
    let suppressions: Vec<SuppressionView> = rows
        .into_iter()
        .take(limit as usize)
        .map(SuppressionView::from)
        .collect();
    let next_cursor = more
        .then(|| suppressions.last().map(|s| s.address.clone()))
        .flatten();
    Ok(web::Json(SuppressionPage {
        suppressions,
        next_cursor,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"address": "ada@example.com", "reason": "asked not to be mailed"}))]
pub struct SuppressionInput {
    #[serde(default)]
    #[schema(value_type = String, format = Email, required = true)]
    pub address: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub reason: Field<String>,
}

/// Suppress an address by hand: notifications to it are accepted as `suppressed` and never sent.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    request_body = SuppressionInput,
    responses(
        (status = 201, description = "Suppressed", body = SuppressionView),
        (status = 200, description = "Already suppressed (the existing entry)", body = SuppressionView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `address`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/suppressions")]
pub async fn add_suppression(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    body: web::Json<Object<SuppressionInput>>,
) -> Result<HttpResponse, ApiError> {
    let input = body.into_inner().0;
    let mut errors = Errors::default();
    let address = errors
        .required("address", input.address, "a string")
        .map(|a| a.trim().to_string());
    if let Some(a) = &address {
        check_email(&mut errors, "address", a);
    }
    let reason = errors
        .optional("reason", input.reason, "a string")
        .map(|r| r.chars().take(500).collect::<String>())
        .unwrap_or_else(|| format!("added by {}", auth.sub()));
    errors.finish()?;
    let address = address.unwrap_or_default();
    let (added, entry) = state
        .db
        .write(move |conn| {
            let added = store::add(conn, &address, &reason, "manual", None, now_millis())?;
            let entry = store::find(conn, &address)?
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("suppression vanished")))?;
            Ok::<_, ApiError>((added, entry))
        })
        .await?;
    let mut response = if added {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(SuppressionView::from(entry)))
}

/// Remove an address from the list (after the user fixed their mailbox).
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    params(("address" = String, Path, description = "The suppressed address")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not suppressed", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/suppressions/{address}")]
pub async fn delete_suppression(
    _auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    address: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let address = address.into_inner();
    let shown = address.clone();
    let removed = state.db.write(move |conn| store::remove(conn, &address)).await?;
    if removed {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("{shown} is not suppressed")))
    }
}
