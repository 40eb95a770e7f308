//! `GET` and `PUT /settings/admin-email`.

use actix_web::http::header;
use actix_web::{get, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AdminEmail, AdminEmailInput, KEY};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::db::millis_to_datetime;
use crate::error::{ApiError, Problem};
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::validation::{check_email, Errors, Field, Object};

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminEmailView {
    pub configured: bool,
    pub email: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

fn respond(stored: Option<&Stored<Option<AdminEmail>>>) -> HttpResponse {
    let email = stored.and_then(|s| s.value.as_ref()).map(|v| v.email.clone());
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .json(AdminEmailView {
            configured: email.is_some(),
            email,
            updated_at: stored.map(|s| millis_to_datetime(s.updated_at)),
            updated_by: stored.map(|s| s.updated_by.clone()),
        })
}

/// Read the admin notification address.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The admin address (`configured: false` before it is set)", body = AdminEmailView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/admin-email")]
pub async fn get_admin_email(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state
        .db
        .read(|conn| store::load::<Option<AdminEmail>>(conn, KEY))
        .await?;
    Ok(respond(stored.as_ref()))
}

/// Set the admin notification address.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = AdminEmailInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the address changed since")),
    responses(
        (status = 200, description = "The saved address", body = AdminEmailView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or invalid `email`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/admin-email")]
pub async fn put_admin_email(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Object<AdminEmailInput>>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Errors::default();
    let next = match body.into_inner().0.email {
        Field::Null => None,
        email => {
            let email = errors
                .required("email", email, "a string")
                .map(|e| e.trim().to_string());
            if let Some(e) = &email {
                check_email(&mut errors, "email", e);
            }
            email.map(|email| AdminEmail { email })
        }
    };
    errors.finish()?;
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let stored = state
        .db
        .write(move |conn| {
            store::update(conn, KEY, if_match.as_deref(), &actor, &[], |_| {
                Ok::<_, ApiError>(next)
            })
        })
        .await?;
    state.settings_changed();
    Ok(respond(Some(&stored)))
}
