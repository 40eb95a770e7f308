//! `GET /settings/audit`: who changed which setting, and SMTP tests, newest first.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::store;
use crate::auth::scope::SettingsRead;
use crate::auth::Authorized;
use crate::db::millis_to_datetime;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    /// The `sub` of the token that acted.
    pub actor: String,
    /// `settings.updated` or `smtp.tested`.
    pub action: String,
    /// `smtp`, `subjects` or `admin_email`.
    pub resource: String,
    /// For updates, `changes`: `[{"field", "change", "old", "new"}]`; secrets appear only as `"change": "changed"`.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List audit entries, newest first.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditPage),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/audit")]
pub async fn list_audit(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<web::Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            "out_of_range",
            "limit must be between 1 and 200",
        ));
    }
    let before = match &query.cursor {
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::field(
                "cursor",
                "invalid_cursor",
                "cursor must be a next_cursor from a previous page",
            )
        })?),
        None => None,
    };
    let rows = state
        .db
        .read(move |conn| store::audit_page(conn, before, limit + 1))
        .await?;
    let more = rows.len() as i64 > limit;
    let entries: Vec<AuditEntry> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(id, at, actor, action, resource, details)| AuditEntry {
            id,
            occurred_at: millis_to_datetime(at),
            actor,
            action,
            resource,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    let next_cursor = if more {
        entries.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(web::Json(AuditPage { entries, next_cursor }))
}
