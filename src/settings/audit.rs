//! `GET /settings/audit`: who changed which setting, and SMTP tests, newest first.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::scope::SettingsRead;
use crate::auth::Authorized;
use crate::db::millis_to_datetime;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::settings as store;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    /// The `sub` of the token that acted.
    pub actor: String,
    /// `settings.updated`, `smtp.tested`, `template.updated` or `template.deleted`.
    pub action: String,
    /// The settings document (`smtp`, `subjects`, `admin_email`, `branding`, `locale`,
    /// `webhooks`) or `templates/{event}/{locale}`.
    pub resource: String,
    #[schema(value_type = AuditDetails)]
    pub details: serde_json::Value,
}

/// What an audit entry records; which members are present depends on `action`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON the stores write
pub struct AuditDetails {
    /// `settings.updated`: the fields that changed.
    changes: Option<Vec<FieldChange>>,
    /// `template.updated` and `template.deleted`: which parts the template now sets.
    parts: Option<crate::settings::templates::http::PartsSet>,
    /// `smtp.tested`: the server tested.
    server: Option<crate::mail::probe::ServerInfo>,
    /// `smtp.tested`: whether unsaved settings were tested.
    draft: Option<bool>,
    /// `smtp.tested`: whether every step passed.
    ok: Option<bool>,
    /// `smtp.tested`: the failure's code.
    #[schema(value_type = Option<crate::mail::probe::ErrorCode>)]
    error_code: Option<String>,
    /// `smtp.tested`: the step that failed.
    #[schema(value_type = Option<crate::mail::probe::StepName>)]
    error_step: Option<String>,
    /// `smtp.tested`: whether a test message was accepted.
    message_sent: Option<bool>,
}

/// One changed field of a settings document. Secrets appear without `old` and `new`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON `store::diff_fields` writes
pub struct FieldChange {
    field: String,
    /// Always `changed`.
    #[schema(example = "changed")]
    change: String,
    /// The value before (absent for secrets).
    old: Option<serde_json::Value>,
    /// The value after (absent for secrets).
    new: Option<serde_json::Value>,
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
