//! `GET` and `PUT /settings/branding`.

use actix_web::http::header;
use actix_web::{get, put, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Branding, BrandingInput, KEY};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::settings::templates::CatalogCache;
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::validation::Object;

#[derive(Debug, Serialize, ToSchema)]
pub struct BrandingView {
    #[serde(flatten)]
    pub branding: Branding,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_by: Option<String>,
}

fn respond(stored: Option<&Stored<Branding>>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .json(BrandingView {
            branding: stored.map(|s| s.value.clone()).unwrap_or_default(),
            updated_at: stored.map(|s| crate::db::millis_to_datetime(s.updated_at)),
            updated_by: stored.map(|s| s.updated_by.clone()),
        })
}

/// Read the branding every template sees as `branding.*`.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The branding (all fields null before it is set)", body = BrandingView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/branding")]
pub async fn get_branding(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state.db.read(|conn| store::load::<Branding>(conn, KEY)).await?;
    Ok(respond(stored.as_ref()))
}

/// Replace the branding. The built-in layout shows the logo, colour, product link, footer and
/// support address; custom templates use `branding.*`.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = BrandingInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the branding changed since")),
    responses(
        (status = 200, description = "The saved branding", body = BrandingView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields: `logo_url` not https, `primary_color` not #rrggbb, ...", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/branding")]
pub async fn put_branding(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    body: web::Json<Object<BrandingInput>>,
) -> Result<HttpResponse, ApiError> {
    let branding = body.into_inner().0.parse()?;
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let stored = state
        .db
        .write(move |conn| {
            store::update(conn, KEY, if_match.as_deref(), &actor, &[], |_| {
                Ok::<_, ApiError>(branding)
            })
        })
        .await?;
    catalog.invalidate();
    Ok(respond(Some(&stored)))
}
