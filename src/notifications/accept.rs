//! Accepting a notification: validate against the event, render, and store it in the outbox in
//! the same transaction as its idempotency record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::StoreError;
use crate::db::{millis_to_datetime, DbConnection};
use crate::error::{ApiError, FieldError};
use crate::events::{self, Event, Recipient};
use crate::settings::locale::Locale;
pub use crate::settings::templates::data::{check_data, TemplateData};
use crate::settings::templates::render::{self, Rendered};
use crate::settings::templates::Catalog;
use crate::store::notifications::{self as store, BodyRow, NewNotification, NotificationRow, Status};
use crate::validation::{check_email, check_header_text, Errors, Field};

/// Longest lifetime a caller may ask for.
const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /notifications` body (and each item of a batch).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({
    "event": "access_request_approved", "to": "ada@example.com", "to_name": "Ada Lovelace",
    "data": {"product_name": "Payments API", "user_name": "Ada"}
}))]
pub struct NotificationRequest {
    /// An event from `GET /events`.
    #[serde(default)]
    #[schema(value_type = String, example = "access_request_approved", required = true)]
    pub event: Field<String>,
    /// The recipient. Required for user events; admin events go to the admin address unless given.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email, example = "ada@example.com")]
    pub to: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "Ada Lovelace")]
    pub to_name: Field<String>,
    /// Template variables of the event: strings, numbers or booleans.
    #[serde(default)]
    #[schema(value_type = TemplateData, example = json!({"product_name": "Payments API", "user_name": "Ada"}))]
    pub data: Field<serde_json::Map<String, serde_json::Value>>,
    /// When an undelivered notification stops being worth sending (default: the event's lifetime).
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Field<DateTime<Utc>>,
    /// The language to write in (a BCP 47 tag such as `de` or `pt-BR`); templates fall back from
    /// `pt-BR` to `pt` to the default locale. Default: the default locale.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "de")]
    pub locale: Field<String>,
    /// Alternative to the `Idempotency-Key` header (batch items use this).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub idempotency_key: Field<String>,
}

/// A validated request.
#[derive(Debug)]
pub struct Validated {
    pub event: &'static Event,
    pub to: Option<String>,
    pub to_name: Option<String>,
    pub data: serde_json::Map<String, serde_json::Value>,
    pub expires_at: Option<i64>,
    /// The requested locale in canonical case.
    pub locale: Option<Locale>,
    pub idempotency_key: Option<String>,
    /// Fingerprint of what was asked, to tell a repeat from a conflicting reuse of a key.
    pub request_hash: String,
    /// Subject and bodies, rendered before the notification goes to the committer (so that no
    /// template runs while the write connection is held).
    pub rendered: Option<Rendered>,
}

/// Renders a validated notification with the subjects in effect. A template that cannot render
/// is this notification's own 422; it never fails another.
pub fn render_validated(v: &mut Validated, catalog: &Catalog) -> Result<(), ApiError> {
    match render::render(catalog, v.event, v.locale.as_ref().map(Locale::as_str), &v.data) {
        Ok(r) => {
            v.rendered = Some(r);
            Ok(())
        }
        Err(render::RenderError::Template { event, part, refusal }) => Err(ApiError::field(
            "event",
            refusal.code(),
            format!(
                "the {part} template of {event} cannot be used ({}); fix it with PUT /settings/templates or /settings/subjects",
                refusal.message()
            ),
        )),
        Err(e) => Err(ApiError::Internal(anyhow::Error::new(e))),
    }
}

/// What `202 Accepted` carries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "0192f0c1-7a8e-7b3c-9d1e-2f3a4b5c6d7e")]
    pub id: String,
    pub status: Status,
    /// Why it is `held`, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub event: String,
    /// Null for an admin event while no admin address is configured.
    pub to: Option<String>,
    pub subject: String,
    /// The locale whose templates were used.
    #[serde(default)]
    #[schema(example = "en")]
    pub locale: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: std::collections::BTreeMap<_, _> =
                map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            serde_json::to_value(sorted).unwrap_or_default()
        }
        other => other.clone(),
    }
}

/// `expires_at` in milliseconds: in the future, at most 30 days ahead.
fn expiry(errors: &mut Errors, field: &str, value: Field<DateTime<Utc>>, now: i64) -> Option<i64> {
    let ms = errors
        .optional(field, value, "an RFC 3339 date-time")?
        .timestamp_millis();
    if ms <= now {
        errors.add(field, "in_past", format!("{field} must be in the future"));
    } else if ms - now > MAX_TTL_SECONDS * 1000 {
        errors.add(field, "too_far", format!("{field} must be within 30 days"));
    }
    Some(ms)
}

fn check_idempotency_key(errors: &mut Errors, field: &str, key: &str) {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        errors.add(
            field,
            "invalid_idempotency_key",
            format!("the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"),
        );
    }
}

/// Validates one request; field names are prefixed with `prefix` (batch items: `notifications[3].`).
pub fn validate(
    req: NotificationRequest,
    header_key: Option<&str>,
    prefix: &str,
    now: i64,
) -> Result<Validated, Vec<FieldError>> {
    let f = |name: &str| format!("{prefix}{name}");
    let mut errors = Errors::default();
    let event = match errors.required(&f("event"), req.event, "a string") {
        Some(name) => {
            let found = events::find(&name);
            if found.is_none() {
                errors.add(
                    f("event"),
                    "unknown_event",
                    format!("{name} is not an event; GET /events lists them"),
                );
            }
            found
        }
        None => None,
    };
    let to = errors
        .optional(&f("to"), req.to, "a string")
        .map(|t| t.trim().to_string());
    if let Some(to) = &to {
        check_email(&mut errors, &f("to"), to);
    } else if event.is_some_and(|e| e.recipient == Recipient::User) {
        errors.add(
            f("to"),
            "required",
            format!("{} is required for this event", f("to")),
        );
    }
    let to_name = errors
        .optional(&f("to_name"), req.to_name, "a string")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if let Some(name) = &to_name {
        check_header_text(&mut errors, &f("to_name"), name, 200);
    }

    let data_field = f("data");
    let mut data = errors
        .optional(&data_field, req.data, "an object")
        .unwrap_or_default();
    data.retain(|_, v| !v.is_null());
    if let Some(event) = event {
        check_data(&mut errors, &data_field, event, &data);
    }

    let expires_at = expiry(&mut errors, &f("expires_at"), req.expires_at, now);
    let requested_locale = errors.optional(&f("locale"), req.locale, "a string");
    let locale = requested_locale.as_deref().and_then(Locale::parse);
    if requested_locale.is_some() && locale.is_none() {
        errors.add(
            f("locale"),
            "invalid_locale",
            format!("{} must be a language tag such as en, de or pt-BR", f("locale")),
        );
    }
    let body_key = errors.optional(&f("idempotency_key"), req.idempotency_key, "a string");
    let idempotency_key = header_key.map(str::to_string).or(body_key);
    if let Some(key) = &idempotency_key {
        check_idempotency_key(&mut errors, &f("idempotency_key"), key);
    }
    if !errors.is_empty() {
        return Err(match errors.finish() {
            Err(ApiError::Validation(list)) => list,
            _ => Vec::new(),
        });
    }
    let event = event.ok_or_else(Vec::new)?;
    let fingerprint = canonical(&serde_json::json!({
        "event": event.name, "to": to, "to_name": to_name, "data": data, "expires_at": expires_at,
        "locale": locale,
    }));
    let request_hash = Sha256::digest(fingerprint.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Validated {
        event,
        to,
        to_name,
        data,
        expires_at,
        locale,
        idempotency_key,
        request_hash,
        rendered: None,
    })
}

pub use super::routing::Deliverability as AcceptContext;

/// The outcome of accepting one request.
pub enum Acceptance {
    New(Accepted),
    /// A repeat of an earlier request with the same key and body: its original answer.
    Repeat(Accepted),
}

impl Acceptance {
    pub fn accepted(&self) -> &Accepted {
        match self {
            Self::New(a) | Self::Repeat(a) => a,
        }
    }
}

/// Why a validated notification was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("this Idempotency-Key was already used with a different request body")]
    KeyReused,
    #[error("a request with this Idempotency-Key is being processed; retry it")]
    KeyInUse,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for AcceptError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::KeyReused => ApiError::Conflict {
                code: "idempotency_key_reused",
                detail: e.to_string(),
            },
            AcceptError::KeyInUse => ApiError::Conflict {
                code: "idempotency_key_in_use",
                detail: e.to_string(),
            },
            AcceptError::Store(e) => e.into(),
        }
    }
}

/// Decides a rendered notification's initial status: what to store and the answer.
pub fn prepare(
    ctx: &AcceptContext,
    v: &Validated,
    subject_sub: &str,
    now: i64,
) -> Result<(NewNotification, Accepted), StoreError> {
    let Rendered {
        subject,
        text,
        html,
        locale,
    } = v.rendered.clone().ok_or_else(|| {
        StoreError::Other(anyhow::anyhow!(
            "{} was not rendered before storing",
            v.event.name
        ))
    })?;
    let recipient = ctx.recipient(v.to.as_deref());
    let (status, held_reason) = match ctx.suppression(recipient.as_deref()) {
        Some(reason) => (Status::Suppressed, Some(format!("suppressed: {reason}"))),
        None => match ctx.held_reason(recipient.as_deref()) {
            Some(reason) => (Status::Held, Some(reason)),
            None => (Status::Queued, None),
        },
    };
    let expires_at = v.expires_at.unwrap_or(now + v.event.default_ttl_seconds * 1000);
    let id = uuid::Uuid::now_v7().to_string();
    let row = NotificationRow {
        id: id.clone(),
        event: v.event.name.to_string(),
        recipient: recipient.clone(),
        to_name: v.to_name.clone(),
        data: serde_json::to_string(&v.data)?,
        subject: subject.clone(),
        status: status.as_str().to_string(),
        status_reason: held_reason.clone(),
        created_at: now,
        updated_at: now,
        expires_at,
        next_attempt_at: now,
        lease_owner: None,
        lease_until: None,
        attempt_count: 0,
        sent_at: None,
        message_id: None,
        smtp_reply: None,
        created_by: subject_sub.to_string(),
        locale: Some(locale.clone()),
    };
    let accepted = Accepted {
        id: id.clone(),
        status,
        status_reason: held_reason,
        event: v.event.name.to_string(),
        to: recipient,
        subject,
        locale,
        created_at: millis_to_datetime(now),
        expires_at: millis_to_datetime(expires_at),
    };
    let body = BodyRow {
        notification_id: id,
        text_body: text,
        html_body: html,
    };
    Ok((NewNotification { row, body }, accepted))
}

/// Stores one validated notification (inside the caller's transaction).
pub fn accept(
    conn: &mut DbConnection,
    ctx: &AcceptContext,
    v: Validated,
    subject_sub: &str,
    now: i64,
) -> Result<Acceptance, AcceptError> {
    if let Some(key) = &v.idempotency_key {
        if let Some(previous) = store::find_idempotency(conn, subject_sub, key)? {
            if previous.request_hash != v.request_hash {
                return Err(AcceptError::KeyReused);
            }
            let accepted = serde_json::from_str(&previous.response).map_err(|e| {
                StoreError::Other(anyhow::anyhow!("stored idempotent response unreadable: {e}"))
            })?;
            return Ok(Acceptance::Repeat(accepted));
        }
    }
    let (row, accepted) = prepare(ctx, &v, subject_sub, now)?;
    store::insert(conn, &row)?;
    if let Some(key) = &v.idempotency_key {
        let response = serde_json::to_string(&accepted).map_err(StoreError::from)?;
        store::insert_idempotency(
            conn,
            subject_sub,
            key,
            &v.request_hash,
            &accepted.id,
            &response,
            now,
        )
        .map_err(|e| match e {
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
                AcceptError::KeyInUse
            }
            e => e.into(),
        })?;
    }
    Ok(Acceptance::New(accepted))
}
