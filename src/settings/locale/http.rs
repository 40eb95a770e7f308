//! `GET` and `PUT /settings/locale`.

use actix_web::http::header;
use actix_web::{get, put, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Locale, LocaleInput, LocaleSettings, BUILTIN_DEFAULT, KEY};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::settings::templates::CatalogCache;
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::validation::{Errors, Object};

#[derive(Debug, Serialize, ToSchema)]
pub struct LocaleView {
    #[schema(example = "en")]
    pub default_locale: String,
}

fn respond(stored: Option<&Stored<LocaleSettings>>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .json(LocaleView {
            default_locale: stored
                .map_or_else(|| BUILTIN_DEFAULT.to_string(), |s| s.value.default_locale.clone()),
        })
}

/// Read the default locale.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The default locale (`en` until set)", body = LocaleView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/locale")]
pub async fn get_locale(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state
        .db
        .read(|conn| store::load::<LocaleSettings>(conn, KEY))
        .await?;
    Ok(respond(stored.as_ref()))
}

/// Set the default locale.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = LocaleInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if it changed since")),
    responses(
        (status = 200, description = "The saved default locale", body = LocaleView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`default_locale` missing or not a language tag (`invalid_locale`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/locale")]
pub async fn put_locale(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    body: web::Json<Object<LocaleInput>>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Errors::default();
    let tag = errors.required("default_locale", body.into_inner().0.default_locale, "a string");
    let locale = tag.as_deref().and_then(Locale::parse);
    if tag.is_some() && locale.is_none() {
        errors.add(
            "default_locale",
            "invalid_locale",
            "default_locale must be a language tag such as en, de or pt-BR",
        );
    }
    errors.finish()?;
    let value = LocaleSettings {
        default_locale: locale.map(Locale::into_string).unwrap_or_default(),
    };
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let stored = state
        .db
        .write(move |conn| {
            store::update(conn, KEY, if_match.as_deref(), &actor, &[], |_| {
                Ok::<_, ApiError>(value)
            })
        })
        .await?;
    catalog.invalidate();
    Ok(respond(Some(&stored)))
}
