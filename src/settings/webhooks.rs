//! `GET`/`PUT /settings/webhooks` and `POST /settings/webhooks/{id}/test`: the endpoints, their
//! write-only signing secrets, and a test call.

use std::time::Instant;

use actix_web::http::header;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::store::webhooks::{self as outbox, Endpoint, WebhookSettings, EVENT_TYPES, KEY, SECRET_PURPOSE};
use crate::validation::{Errors, Field, Object};

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub secret_set: bool,
    /// The signing secret, only in the answer that set or generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhooksView {
    pub endpoints: Vec<EndpointView>,
}

fn view(settings: &WebhookSettings, revealed: &[(String, String)]) -> WebhooksView {
    WebhooksView {
        endpoints: settings
            .endpoints
            .iter()
            .map(|e| EndpointView {
                id: e.id.clone(),
                url: e.url.clone(),
                events: e.events.clone(),
                enabled: e.enabled,
                secret_set: !e.secret.ciphertext().is_empty(),
                secret: revealed
                    .iter()
                    .find(|(id, _)| *id == e.id)
                    .map(|(_, s)| s.clone()),
            })
            .collect(),
    }
}

fn respond(stored: Option<&Stored<WebhookSettings>>, revealed: &[(String, String)]) -> HttpResponse {
    let empty = WebhookSettings::default();
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .json(view(stored.map_or(&empty, |s| &s.value), revealed))
}

/// The webhook endpoints (secrets only as `secret_set`).
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The endpoints", body = WebhooksView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/webhooks")]
pub async fn get_webhooks(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state
        .db
        .read(|conn| store::load::<WebhookSettings>(conn, KEY))
        .await?;
    Ok(respond(stored.as_ref(), &[]))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EndpointInput {
    /// Keep the id of an existing endpoint to keep its secret (for the same URL: a new URL gets a
    /// new secret unless `secret` is given); a new endpoint gets one. Unique within the request.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub id: Field<String>,
    /// https (or http to a loopback address); never a link-local or metadata address.
    #[serde(default)]
    #[schema(value_type = String, example = "https://portal.example.com/hooks/mailroom", required = true)]
    pub url: Field<String>,
    /// Default: every event.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["notification.sent", "notification.failed"]))]
    pub events: Field<Vec<String>>,
    /// Default true.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub enabled: Field<bool>,
    /// Write-only: `whsec_` and the base64 of 24 to 64 random bytes. Left out: kept for an
    /// existing endpoint at the same URL, generated (and returned once) for a new endpoint or URL.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub secret: Field<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"endpoints": [{"url": "https://portal.example.com/hooks/mailroom",
    "events": ["notification.sent", "notification.failed", "notification.suppressed"]}]}))]
pub struct WebhooksInput {
    #[serde(default)]
    #[schema(value_type = Vec<EndpointInput>, required = true)]
    pub endpoints: Field<Vec<Object<EndpointInput>>>,
}

/// A checked endpoint before sealing: its secret in clear when new.
struct Parsed {
    id: String,
    url: String,
    events: Vec<String>,
    enabled: bool,
    new_secret: Option<String>,
}

fn parse(input: WebhooksInput, current: &WebhookSettings, state: &AppState) -> Result<Vec<Parsed>, ApiError> {
    let mut errors = Errors::default();
    let items = errors
        .required("endpoints", input.endpoints, "an array of endpoints")
        .unwrap_or_default();
    if items.len() > 20 {
        errors.add("endpoints", "too_many", "at most 20 endpoints");
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, Object(item)) in items.into_iter().enumerate() {
        let f = |name: &str| format!("endpoints[{i}].{name}");
        let id = errors.optional(&f("id"), item.id, "a string");
        let url = errors
            .required(&f("url"), item.url, "a string")
            .map(|u| u.trim().to_string());
        if let Some(u) = &url {
            if let Err(e) = crate::outbound::check_url(&state.mail.policy, u) {
                errors.add(f("url"), "host_not_allowed", format!("{}: {e}", f("url")));
            }
        }
        let events = errors
            .optional(&f("events"), item.events, "an array of event names")
            .unwrap_or_else(|| EVENT_TYPES.iter().map(|s| s.to_string()).collect());
        for e in &events {
            if !EVENT_TYPES.contains(&e.as_str()) {
                errors.add(
                    f("events"),
                    "unknown_event",
                    format!("{e} is not one of {}", EVENT_TYPES.join(", ")),
                );
            }
        }
        let enabled = errors
            .optional(&f("enabled"), item.enabled, "true or false")
            .unwrap_or(true);
        let secret = errors.optional(&f("secret"), item.secret, "a string");
        if secret
            .as_deref()
            .is_some_and(|s| crate::webhooks::secret_key(s).is_none())
        {
            errors.add(
                f("secret"),
                "invalid_secret",
                "secret must be whsec_ and the base64 of 24 to 64 bytes",
            );
        }
        if let Some(id) = &id {
            if !seen.insert(id.clone()) {
                errors.add(
                    f("id"),
                    "duplicate_id",
                    format!(
                        "{} {id} is already used by another endpoint of this request",
                        f("id")
                    ),
                );
            }
        }
        // The secret stays with its receiver: an endpoint whose URL changes gets a new one.
        let existing = id.as_ref().and_then(|id| {
            current
                .endpoints
                .iter()
                .find(|e| &e.id == id && Some(&e.url) == url.as_ref())
        });
        let new_secret = match (&secret, existing) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(crate::webhooks::generate_secret()),
        };
        if let Some(url) = url {
            out.push(Parsed {
                id: id.unwrap_or_else(|| format!("ep_{}", uuid::Uuid::new_v4().simple())),
                url,
                events,
                enabled,
                new_secret,
            });
        }
    }
    errors.finish()?;
    Ok(out)
}

/// Replace the webhook endpoints. A new endpoint without `secret` gets a generated one, returned
/// only in this answer.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = WebhooksInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the endpoints changed since")),
    responses(
        (status = 200, description = "The saved endpoints, with any secret set by this request", body = WebhooksView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A URL the address policy refuses (`host_not_allowed`), an unknown event, a bad secret, an id used twice (`duplicate_id`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/webhooks")]
pub async fn put_webhooks(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Object<WebhooksInput>>,
) -> Result<HttpResponse, ApiError> {
    let current = state.db.read(outbox::load).await?;
    let parsed = parse(body.into_inner().0, &current, &state)?;
    let revealed: Vec<(String, String)> = parsed
        .iter()
        .filter_map(|p| p.new_secret.clone().map(|s| (p.id.clone(), s)))
        .collect();
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let app = state.clone();
    let stored = state
        .db
        .write(move |conn| {
            store::update(
                conn,
                KEY,
                if_match.as_deref(),
                &actor,
                &["endpoints"],
                |saved: Option<&WebhookSettings>| {
                    let mut endpoints = Vec::new();
                    for p in parsed {
                        let secret = match &p.new_secret {
                            Some(s) => app.cipher.encrypt(SECRET_PURPOSE, s)?,
                            None => saved
                                .and_then(|s| s.endpoints.iter().find(|e| e.id == p.id && e.url == p.url))
                                .map(|e| e.secret.clone())
                                .ok_or_else(|| ApiError::Conflict {
                                    code: "concurrent_update",
                                    detail: format!(
                                        "endpoint {} was changed by another request at the same time; read the endpoints again and retry",
                                        p.id
                                    ),
                                })?,
                        };
                        endpoints.push(Endpoint {
                            id: p.id,
                            url: p.url,
                            events: p.events,
                            enabled: p.enabled,
                            secret,
                        });
                    }
                    Ok::<_, ApiError>(WebhookSettings { endpoints })
                },
            )
        })
        .await?;
    Ok(respond(Some(&stored), &revealed))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PingResult {
    pub ok: bool,
    /// The receiver's HTTP status.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Send a signed `webhook.ping` to one endpoint and report the answer.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The ping was made; `ok` says whether the receiver took it", body = PingResult),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/settings/webhooks/{id}/test")]
pub async fn test_webhook(
    _auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<PingResult>, ApiError> {
    let id = id.into_inner();
    let settings = state.db.read(outbox::load).await?;
    let endpoint = settings
        .endpoints
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no webhook endpoint {id}")))?;
    let secret = state.cipher.decrypt(SECRET_PURPOSE, &endpoint.secret)?;
    let key = crate::webhooks::secret_key(secret.expose_secret())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored webhook secret unreadable")))?;
    let msg_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let body = serde_json::json!({"type": "webhook.ping",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"endpoint_id": endpoint.id}})
    .to_string();
    let started = Instant::now();
    let result = crate::webhooks::sender::post(&msg_id, &body, &endpoint.url, &key, &state.mail.policy).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    Ok(web::Json(match result {
        Ok(code) => PingResult {
            ok: (200..300).contains(&code),
            status_code: Some(code),
            error: None,
            duration_ms,
        },
        Err(e) => PingResult {
            ok: false,
            status_code: None,
            error: Some(e),
            duration_ms,
        },
    }))
}
