//! `POST /settings/templates/preview`: renders a notification exactly as accepting it would,
//! without storing or sending it.

use actix_web::{post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::data::check_data;
use super::render::{self, Rendered};
use super::{Catalog, CatalogCache, Target, TemplateInput};
use crate::auth::scope::SettingsRead;
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::events;
use crate::settings::locale;
use crate::state::AppState;
use crate::validation::{Errors, Field, Object};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"event": "access_request_approved", "locale": "de"}))]
pub struct PreviewRequest {
    /// An event from `GET /events`.
    #[serde(default)]
    #[schema(value_type = String, example = "access_request_approved", required = true)]
    pub event: Field<String>,
    /// Default: the default locale.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "de")]
    pub locale: Field<String>,
    /// The event's variables, as in `POST /notifications`. Default: the event's example values.
    #[serde(default)]
    #[schema(value_type = Option<super::data::TemplateData>)]
    pub data: Field<serde_json::Map<String, serde_json::Value>>,
    /// An unsaved draft for this event and locale, checked like a PUT and used in place of what is
    /// stored for exactly them.
    #[serde(default)]
    #[schema(value_type = Option<TemplateInput>)]
    pub template: Field<Object<TemplateInput>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The locale whose templates were used.
    #[schema(example = "de")]
    pub locale_used: String,
}

/// Render a notification without storing or sending it: what `POST /notifications` with the same
/// event, locale and data would send.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    request_body = PreviewRequest,
    responses(
        (status = 200, description = "The rendered subject and parts", body = Preview),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event, bad locale or data, a draft part that does not render (`template.html`, ...), or a stored template that does not render (`event`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/settings/templates/preview")]
pub async fn preview(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    body: web::Json<Object<PreviewRequest>>,
) -> Result<web::Json<Preview>, ApiError> {
    let req = body.into_inner().0;
    let catalog = CatalogCache::current(catalog.into_inner(), &state.db).await?;
    let rendered: Rendered = crate::error::blocking(move || render_preview(req, catalog)).await?;
    Ok(web::Json(Preview {
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        locale_used: rendered.locale,
    }))
}

fn render_preview(req: PreviewRequest, catalog: std::sync::Arc<Catalog>) -> Result<Rendered, ApiError> {
    let mut errors = Errors::default();
    let event = errors.required("event", req.event, "a string").and_then(|name| {
        let found = events::find(&name);
        if found.is_none() {
            errors.add(
                "event",
                "unknown_event",
                format!("{name} is not an event; GET /events lists them"),
            );
        }
        found
    });
    let tag = errors.optional("locale", req.locale, "a string");
    let locale = tag
        .as_deref()
        .and_then(locale::Locale::parse)
        .map(locale::Locale::into_string);
    if tag.is_some() && locale.is_none() {
        errors.add(
            "locale",
            "invalid_locale",
            "locale must be a language tag such as en, de or pt-BR",
        );
    }
    let data = errors.optional("data", req.data, "an object");
    let draft = errors
        .optional("template", req.template, "an object")
        .map(|o| o.0);
    let Some(event) = event else {
        errors.finish()?;
        return Err(ApiError::field("event", "required", "event is required"));
    };
    let data = match data {
        Some(mut d) => {
            d.retain(|_, v| !v.is_null());
            check_data(&mut errors, "data", event, &d);
            d
        }
        None => event.example_data(),
    };
    let locale = locale.unwrap_or_else(|| catalog.default_locale.clone());
    let drafted;
    let catalog: &Catalog = match draft {
        Some(draft) => {
            let parts = draft.parse(Target::Event(event), "template.", &mut errors);
            drafted = catalog.with_draft(event.name, &locale, parts);
            &drafted
        }
        None => &catalog,
    };
    errors.finish()?;
    render::render(catalog, event, Some(&locale), &data).map_err(|e| match e {
        render::RenderError::Template { event, part, refusal } => ApiError::field(
            "event",
            refusal.code(),
            format!(
                "the {part} template of {event} cannot be used: {}",
                refusal.message()
            ),
        ),
        e => ApiError::Internal(anyhow::Error::new(e)),
    })
}
