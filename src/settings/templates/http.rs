//! `GET /settings/templates`, and `GET`, `PUT`, `DELETE /settings/templates/{event}/{locale}`.

use actix_web::http::header;
use actix_web::{delete, get, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    entry_key, Catalog, Origin, StoredTemplate, Target, TemplateInput, TemplateParts, Templates, KEY,
};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::db::{millis_to_datetime, now_millis, DbConnection};
use crate::error::{ApiError, Problem};
use crate::sandbox::Part;
use crate::settings::subjects::{self, CustomSubjects};
use crate::settings::templates::CatalogCache;
use crate::settings::{check_if_match, etag, if_match_header, locale};
use crate::state::AppState;
use crate::store::settings as store;
use crate::validation::{Errors, Object};

/// Which parts a stored template sets.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartsSet {
    pub subject: bool,
    pub text: bool,
    pub html: bool,
}

impl From<&TemplateParts> for PartsSet {
    fn from(p: &TemplateParts) -> Self {
        Self {
            subject: p.get(Part::Subject).is_some(),
            text: p.get(Part::Text).is_some(),
            html: p.get(Part::Html).is_some(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSummary {
    /// An event, or `layout`.
    #[schema(example = "access_request_approved")]
    pub event: String,
    #[schema(example = "de")]
    pub locale: String,
    pub parts: PartsSet,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateSummary>,
}

/// The template in effect for one part after fallback.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectivePart {
    /// The template source.
    pub template: Option<String>,
    /// The locale it is stored for, or `builtin`.
    #[schema(example = "builtin")]
    pub source: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveParts {
    pub subject: Option<EffectivePart>,
    pub text: EffectivePart,
    pub html: EffectivePart,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub event: String,
    pub locale: String,
    /// What is stored for exactly this event and locale.
    pub stored: TemplateParts,
    /// What each part renders with, after the fallback `locale -> language -> default -> builtin`.
    pub effective: EffectiveParts,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// The event (or `layout`) and locale of a path, checked.
fn target_and_locale(path: (String, String)) -> Result<(Target, String), ApiError> {
    let (event, tag) = path;
    let target = Target::find(&event)
        .ok_or_else(|| ApiError::NotFound(format!("{event} is not an event (GET /events) or `layout`")))?;
    let locale = locale::Locale::parse(&tag)
        .map(locale::Locale::into_string)
        .ok_or_else(|| {
            ApiError::field(
                "locale",
                "invalid_locale",
                "locale must be a language tag such as en, de or pt-BR",
            )
        })?;
    Ok((target, locale))
}

fn effective(catalog: &Catalog, target: Target, locale: &str, part: Part) -> EffectivePart {
    match catalog.effective(target.name(), locale, part) {
        (Some(template), Origin::Locale(tag)) => EffectivePart {
            template: Some(template),
            source: tag,
        },
        _ => EffectivePart {
            template: match (target, part) {
                (Target::Event(e), Part::Subject) => Some(e.default_subject.to_string()),
                (_, Part::Subject) => None,
                (t, p) => {
                    let ext = if p == Part::Html { "html" } else { "txt" };
                    crate::settings::templates::builtin::source(&format!("{}.{ext}", t.name()))
                        .map(str::to_string)
                }
            },
            source: "builtin".into(),
        },
    }
}

fn view(catalog: &Catalog, target: Target, locale: &str) -> TemplateView {
    let entry = catalog.templates.get(&entry_key(target.name(), locale));
    TemplateView {
        event: target.name().to_string(),
        locale: locale.to_string(),
        stored: catalog.stored(target.name(), locale),
        effective: EffectiveParts {
            subject: matches!(target, Target::Event(_))
                .then(|| effective(catalog, target, locale, Part::Subject)),
            text: effective(catalog, target, locale, Part::Text),
            html: effective(catalog, target, locale, Part::Html),
        },
        updated_at: entry.map(|e| millis_to_datetime(e.updated_at)),
        updated_by: entry.map(|e| e.updated_by.clone()),
    }
}

fn respond(catalog: &Catalog, target: Target, locale: &str) -> HttpResponse {
    let version = catalog
        .templates
        .get(&entry_key(target.name(), locale))
        .map_or(0, |e| e.version);
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(version)))
        .json(view(catalog, target, locale))
}

/// Every event and locale with a stored template, and which parts it sets.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "The stored templates (the default locale's subjects included)", body = TemplateList),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/templates")]
pub async fn list_templates(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<TemplateList>, ApiError> {
    let catalog = state.db.read(Catalog::load).await?;
    let mut keys: Vec<(String, String)> = catalog
        .templates
        .keys()
        .filter_map(|k| k.split_once('/').map(|(e, l)| (e.to_string(), l.to_string())))
        .collect();
    keys.extend(
        catalog
            .subjects
            .keys()
            .map(|e| (e.clone(), catalog.default_locale.clone())),
    );
    keys.sort();
    keys.dedup();
    let templates = keys
        .into_iter()
        .map(|(event, locale)| {
            let entry = catalog.templates.get(&entry_key(&event, &locale));
            TemplateSummary {
                parts: PartsSet::from(&catalog.stored(&event, &locale)),
                updated_at: entry.map(|e| millis_to_datetime(e.updated_at)),
                updated_by: entry.map(|e| e.updated_by.clone()),
                event,
                locale,
            }
        })
        .filter(|t| t.parts.subject || t.parts.text || t.parts.html)
        .collect();
    Ok(web::Json(TemplateList { templates }))
}

/// One template: what is stored for this event and locale, and what each part renders with.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    params(
        ("event" = String, Path, description = "An event from `GET /events`, or `layout`"),
        ("locale" = String, Path, description = "A BCP 47 language tag: `en`, `de`, `pt-BR`", pattern = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$", max_length = 35),
    ),
    responses(
        (status = 200, description = "Stored and effective parts", body = TemplateView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a language tag (`invalid_locale`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/templates/{event}/{locale}")]
pub async fn get_template(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (target, locale) = target_and_locale(path.into_inner())?;
    let catalog = state.db.read(Catalog::load).await?;
    Ok(respond(&catalog, target, &locale))
}

/// Replaces the stored parts of one template and writes the next version of both documents
/// (the default locale's subject lives in the subjects document).
fn write_entry(
    conn: &mut DbConnection,
    target: Target,
    locale: &str,
    parts: Option<TemplateParts>,
    if_match: Option<&str>,
    actor: &str,
) -> Result<Catalog, ApiError> {
    let current = super::load(conn)?;
    let doc_version = current.as_ref().map_or(0, |c| c.version);
    let mut docs: Templates = current.map(|c| c.value).unwrap_or_default();
    let key = entry_key(target.name(), locale);
    let entry_version = docs.get(&key).map_or(0, |t| t.version);
    check_if_match(if_match, entry_version)?;
    // The default locale's subject lives in the subjects document.
    let default_locale = locale::default_locale(conn)?;
    let subjects_doc = if locale == default_locale {
        Some(store::load::<CustomSubjects>(conn, subjects::KEY)?)
    } else {
        None
    };
    let has_subject = subjects_doc
        .as_ref()
        .and_then(|d| d.as_ref())
        .is_some_and(|d| d.value.contains_key(target.name()));
    if parts.is_none() && !docs.contains_key(&key) && !has_subject {
        return Err(ApiError::NotFound(format!("no template is stored for {key}")));
    }
    let mut stored = parts.clone().unwrap_or_default();
    if let Some(subjects_doc) = subjects_doc {
        let version = subjects_doc.as_ref().map_or(0, |s| s.version);
        let mut custom = subjects_doc.map(|s| s.value).unwrap_or_default();
        let changed = match stored.subject.take() {
            Some(s) => custom.insert(target.name().to_string(), s.clone()).as_ref() != Some(&s),
            None => custom.remove(target.name()).is_some(),
        };
        if changed {
            store::save(conn, subjects::KEY, custom, version, actor)?;
        }
    }
    match &parts {
        Some(_) => {
            docs.insert(
                key.clone(),
                StoredTemplate {
                    parts: stored,
                    version: entry_version + 1,
                    updated_at: now_millis(),
                    updated_by: actor.to_string(),
                },
            );
        }
        None => {
            docs.remove(&key);
        }
    }
    store::save(conn, KEY, docs, doc_version, actor)?;
    let (action, set) = match &parts {
        Some(p) => ("template.updated", PartsSet::from(p)),
        None => ("template.deleted", PartsSet::from(&TemplateParts::default())),
    };
    store::audit(
        conn,
        actor,
        action,
        &format!("templates/{key}"),
        serde_json::json!({ "parts": set }),
    )?;
    Ok(Catalog::load(conn)?)
}

/// Store a template for one event (or `layout`) and locale. Every part is rendered against the
/// event's example data before it is saved; parts left out fall back along the locale chain.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = TemplateInput,
    params(
        ("event" = String, Path, description = "An event from `GET /events`, or `layout`"),
        ("locale" = String, Path, description = "A BCP 47 language tag: `en`, `de`, `pt-BR`", pattern = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$", max_length = 35),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if this template changed since"),
    ),
    responses(
        (status = 200, description = "The saved template", body = TemplateView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change won (`concurrent_update`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A part that does not render (`invalid_template`, with line and message) or would take too much work or memory (`template_too_expensive`), named by its field (`subject`, `text`, `html`); no part at all (`empty`); a bad locale", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/templates/{event}/{locale}")]
pub async fn put_template(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    cache: web::Data<CatalogCache>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Object<TemplateInput>>,
) -> Result<HttpResponse, ApiError> {
    let (target, locale) = target_and_locale(path.into_inner())?;
    let input = body.into_inner().0;
    let parts = crate::error::blocking(move || {
        let mut errors = Errors::default();
        let parts = input.parse(target, "", &mut errors);
        errors.finish()?;
        Ok(parts)
    })
    .await?;
    if parts.is_empty() {
        return Err(ApiError::field(
            "body",
            "empty",
            "give at least one of subject, text and html (DELETE removes a template)",
        ));
    }
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let tag = locale.clone();
    let catalog = state
        .db
        .write(move |conn| write_entry(conn, target, &tag, Some(parts), if_match.as_deref(), &actor))
        .await?;
    cache.invalidate();
    tracing::info!(actor = %auth.sub(), event = target.name(), %locale, "template saved");
    Ok(respond(&catalog, target, &locale))
}

/// Remove the template for one event and locale: its parts fall back along the locale chain.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    params(
        ("event" = String, Path, description = "An event from `GET /events`, or `layout`"),
        ("locale" = String, Path, description = "A BCP 47 language tag", pattern = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$", max_length = 35),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if this template changed since"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event, or nothing stored for it in this locale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a language tag (`invalid_locale`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/settings/templates/{event}/{locale}")]
pub async fn delete_template(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (target, locale) = target_and_locale(path.into_inner())?;
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    state
        .db
        .write(move |conn| write_entry(conn, target, &locale, None, if_match.as_deref(), &actor))
        .await?;
    catalog.invalidate();
    Ok(HttpResponse::NoContent().finish())
}
