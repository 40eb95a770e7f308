//! `POST /settings/smtp/test`: probe saved or draft SMTP settings, optionally sending a message.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::scope::SmtpTest;
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::mail::probe::{self, ProbeRequest, TestReport};
use crate::settings::smtp::{self, SmtpDraft, SmtpSettings, SmtpSettingsInput};
use crate::state::AppState;
use crate::store::settings as store;
use crate::validation::{check_email, Errors, Field, Object};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"to": "ops@example.com"}))]
pub struct SmtpTestRequest {
    /// Unsaved settings to test, with the fields and validation of `PUT /settings/smtp`.
    /// Absent: the saved settings. Without `password`, the saved password is used only when
    /// host, port and username equal the saved ones.
    #[serde(default)]
    #[schema(value_type = Option<SmtpSettingsInput>)]
    pub settings: Field<Object<SmtpSettingsInput>>,
    /// Send a real test message to this address after the connection checks.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email)]
    pub to: Field<String>,
}

fn parse_body(req: &HttpRequest, body: &[u8]) -> Result<SmtpTestRequest, ApiError> {
    // No body: test the saved settings. A JSON body must be an object, `null` included.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SmtpTestRequest::default());
    }
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as JSON with Content-Type: application/json".into(),
        ));
    }
    serde_json::from_slice::<Object<SmtpTestRequest>>(body)
        .map(|o| o.0)
        .map_err(|e| crate::extract::json_error(actix_web::error::JsonPayloadError::Deserialize(e)))
}

/// Test SMTP settings (saved or a draft) and say exactly which step failed.
///
/// Answers 200 whenever the test ran, whatever the SMTP outcome: read `ok` and `error`.
/// Steps in order, as far as they get: resolve, connect, tls or greeting, ehlo, starttls, auth,
/// and with `to`: mail_from, rcpt_to, data. Each test is recorded in the audit log.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["smtp:test"])),
    request_body(content = Option<SmtpTestRequest>, description = "Optional: a draft and/or a recipient"),
    responses(
        (status = 200, description = "The test ran; `ok` says whether it passed", body = TestReport),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `smtp:test`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No draft given and nothing saved (`smtp_not_configured`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid draft fields (`settings.host`, ...) or `to`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "More than the allowed tests per minute for this token subject; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/settings/smtp/test")]
pub async fn test_smtp(
    auth: Authorized<SmtpTest>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input = parse_body(&req, &body)?;
    let mut errors = Errors::default();
    let draft = match input.settings {
        Field::Missing | Field::Null => None,
        Field::Invalid => {
            errors.add("settings", "invalid_type", "settings must be an object");
            None
        }
        Field::Value(Object(s)) => s.parse("settings.", &mut errors),
    };
    let to = errors
        .optional("to", input.to, "a string")
        .map(|t| t.trim().to_string());
    if let Some(to) = &to {
        check_email(&mut errors, "to", to);
    }
    errors.finish()?;

    if let Some(oauth) = draft.as_ref().and_then(|d| d.oauth2.as_ref()) {
        oauth
            .check_token_url(&state.mail, "settings.oauth2.token_url")
            .await?;
    }
    let saved = state.db.read(smtp::load).await?.map(|s| s.value);
    let (settings, password) = settings_to_test(draft.as_ref(), saved, &state.cipher)?;
    let smtp::Connection {
        target,
        sender,
        redact,
    } = settings.connection(password, &state.cipher)?;
    if to.is_some() && sender.is_none() {
        let field = if draft.is_some() {
            "settings.from_address"
        } else {
            "from_address"
        };
        return Err(ApiError::field(
            field,
            "required",
            "sending a test message needs a from_address",
        ));
    }
    if let Err(retry_after) = state.smtp_test_limiter.check(auth.sub()) {
        return Err(ApiError::TooManyRequests { retry_after });
    }

    let to_address = to
        .as_deref()
        .map(crate::mail::address::EmailAddress::parse)
        .transpose()
        .map_err(|_| ApiError::field("to", "invalid_email", "to is not a valid address"))?;
    let report: TestReport = probe::run(
        &state.mail,
        ProbeRequest {
            target: &target,
            sender: sender.as_ref(),
            to: to_address.as_ref(),
            redact: &redact,
        },
    )
    .await;
    let actor = auth.sub().to_string();
    let details = serde_json::json!({
        "server": report.server,
        "draft": draft.is_some(),
        "ok": report.ok,
        "error_code": report.error.as_ref().map(|e| e.code),
        "error_step": report.error.as_ref().map(|e| e.step),
        "message_sent": report.message_sent,
    });
    state
        .db
        .write(move |conn| store::audit(conn, &actor, "smtp.tested", smtp::KEY, details))
        .await?;
    tracing::info!(
        actor = %auth.sub(), host = %target.host, port = target.port, ok = report.ok,
        code = report.error.as_ref().map_or("ok", |e| e.code), "SMTP test"
    );
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(report))
}

/// The settings a test uses: the draft (with the saved secrets where the keep rules allow), else
/// the saved settings; and the password to use with them.
fn settings_to_test(
    draft: Option<&SmtpDraft>,
    saved: Option<SmtpSettings>,
    cipher: &crate::secrets::SecretCipher,
) -> Result<(SmtpSettings, Option<secrecy::SecretString>), ApiError> {
    Ok(match draft {
        Some(d) => {
            let mut settings = d.to_settings();
            settings.oauth2 = d.oauth_settings(saved.as_ref(), cipher)?;
            (settings, d.password_for_test(saved.as_ref(), cipher)?)
        }
        None => {
            let s = saved.ok_or_else(|| ApiError::Conflict {
                code: "smtp_not_configured",
                detail: "no SMTP settings are saved: PUT /settings/smtp first, or send a draft in `settings`"
                    .into(),
            })?;
            let password = s.unseal_password(cipher)?;
            (s, password)
        }
    })
}
