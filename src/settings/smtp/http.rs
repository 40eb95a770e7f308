//! `GET` and `PUT /settings/smtp`.

use actix_web::http::header;
use actix_web::{get, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::oauth::{AuthKind, OAuth2View};
use super::{load, Security, SmtpSettings, SmtpSettingsInput, DEFAULT_TIMEOUT_SECONDS, KEY};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::db::millis_to_datetime;
use crate::error::{ApiError, Problem};
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::validation::{Errors, Object};

/// SMTP settings as the API shows them: never the password, only whether one is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct SmtpSettingsView {
    /// False until the first successful PUT.
    pub configured: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub security: Option<Security>,
    pub username: Option<String>,
    pub password_set: bool,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub timeout_seconds: u32,
    pub tls_verify: bool,
    pub allow_insecure_auth: bool,
    /// `password` or `oauth2`.
    pub auth: AuthKind,
    /// The OAuth provider (secrets only as `*_set`), for `"auth": "oauth2"`.
    pub oauth2: Option<OAuth2View>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The `sub` of the token that made the last change.
    pub updated_by: Option<String>,
}

impl SmtpSettingsView {
    fn from_stored(stored: Option<&Stored<SmtpSettings>>) -> Self {
        match stored {
            None => Self {
                configured: false,
                host: None,
                port: None,
                security: None,
                username: None,
                password_set: false,
                from_address: None,
                from_name: None,
                reply_to: None,
                timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
                tls_verify: true,
                allow_insecure_auth: false,
                auth: AuthKind::Password,
                oauth2: None,
                updated_at: None,
                updated_by: None,
            },
            Some(s) => {
                let v = &s.value;
                Self {
                    configured: true,
                    host: Some(v.host.clone()),
                    port: Some(v.port),
                    security: Some(v.security),
                    username: v.username.clone(),
                    password_set: v.password.is_some(),
                    from_address: v.from_address.clone(),
                    from_name: v.from_name.clone(),
                    reply_to: v.reply_to.clone(),
                    timeout_seconds: v.timeout_seconds,
                    tls_verify: v.tls_verify,
                    allow_insecure_auth: v.allow_insecure_auth,
                    auth: v.auth,
                    oauth2: v.oauth2.as_ref().map(OAuth2View::from),
                    updated_at: Some(millis_to_datetime(s.updated_at)),
                    updated_by: Some(s.updated_by.clone()),
                }
            }
        }
    }
}

fn respond(stored: Option<&Stored<SmtpSettings>>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(SmtpSettingsView::from_stored(stored))
}

/// Read the SMTP settings. The password is never returned; `password_set` says whether one is stored.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The SMTP settings (`configured: false` before the first PUT)", body = SmtpSettingsView,
         headers(("ETag" = String, description = "Pass as If-Match to a PUT to avoid overwriting a concurrent change"))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/smtp")]
pub async fn get_smtp(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state.db.read(load).await?;
    Ok(respond(stored.as_ref()))
}

/// Replace the SMTP settings.
///
/// Without `password`, the stored password is kept only if `host`, `port`, `username`, `security`
/// and `tls_verify` are unchanged; otherwise it is dropped, so neither a changed host nor a weaker
/// transport ever receives the old credentials.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = SmtpSettingsInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the settings changed since")),
    responses(
        (status = 200, description = "The saved settings", body = SmtpSettingsView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change won (`concurrent_update`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, all listed in `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/smtp")]
pub async fn put_smtp(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Object<SmtpSettingsInput>>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Errors::default();
    let draft = body.into_inner().0.parse("", &mut errors);
    errors.finish()?;
    let draft = draft.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("validated draft missing")))?;
    if let Some(oauth) = &draft.oauth2 {
        oauth.check_token_url(&state.mail, "oauth2.token_url").await?;
    }
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let app = state.clone();
    let stored = state
        .db
        .write(move |conn| {
            let stored = store::update(conn, KEY, if_match.as_deref(), &actor, &["password"], |saved| {
                draft.into_settings(saved, &app.cipher)
            })?;
            // Mail deferred under the old settings is due at once under the new ones, and the
            // failures the old settings caused stop counting towards its attempt limit.
            let due = (app.hooks.smtp_replaced)(conn, crate::db::now_millis())?;
            Ok::<_, ApiError>((stored, due))
        })
        .await?;
    let (stored, due) = stored;
    state.settings_changed();
    tracing::info!(actor = %auth.sub(), host = %stored.value.host, deferred_now_due = due, "SMTP settings updated");
    Ok(respond(Some(&stored)))
}
