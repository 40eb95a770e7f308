//! `GET`, `PUT` and `PATCH /settings/subjects`.

use actix_web::http::header;
use actix_web::{get, patch, put, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{apply, subject_for, CustomSubjects, SubjectsInput, KEY};
use crate::auth::scope::{SettingsRead, SettingsWrite};
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::events::{Recipient, Variable, EVENTS};
use crate::settings::templates::CatalogCache;
use crate::settings::{etag, if_match_header};
use crate::state::AppState;
use crate::store::settings::{self as store, Stored};
use crate::validation::Object;

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectEntry {
    #[schema(example = "access_request_approved")]
    pub event: &'static str,
    /// The subject template in effect.
    pub subject: String,
    pub default_subject: &'static str,
    pub is_default: bool,
    pub recipient: Recipient,
    /// Variables the template may use.
    pub variables: Vec<Variable>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectsView {
    /// One entry per event in the catalogue.
    pub subjects: Vec<SubjectEntry>,
}

fn view(custom: &CustomSubjects) -> SubjectsView {
    SubjectsView {
        subjects: EVENTS
            .iter()
            .map(|e| SubjectEntry {
                event: e.name,
                subject: subject_for(custom, e).to_string(),
                default_subject: e.default_subject,
                is_default: !custom.contains_key(e.name),
                recipient: e.recipient,
                variables: e.all_variables().copied().collect(),
            })
            .collect(),
    }
}

fn respond(stored: Option<&Stored<CustomSubjects>>) -> HttpResponse {
    let empty = CustomSubjects::new();
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(stored.map_or(0, |s| s.version))))
        .json(view(stored.map_or(&empty, |s| &s.value)))
}

/// Read the subject of every event: the custom one or the default.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:read"])),
    responses(
        (status = 200, description = "One entry per event", body = SubjectsView, headers(("ETag" = String))),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/settings/subjects")]
pub async fn get_subjects(
    _auth: Authorized<SettingsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stored = state
        .db
        .read(|conn| store::load::<CustomSubjects>(conn, KEY))
        .await?;
    Ok(respond(stored.as_ref()))
}

/// Replace all custom subjects; events left out go back to their default.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = SubjectsInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the subjects changed since")),
    responses(
        (status = 200, description = "The subjects now in effect", body = SubjectsView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event, empty or too long subject, CR/LF, a template that does not render (`invalid_template`) or would take too much work or memory (`template_too_expensive`), unknown variable (field `subjects.<event>`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/settings/subjects")]
pub async fn put_subjects(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    body: web::Json<Object<SubjectsInput>>,
) -> Result<HttpResponse, ApiError> {
    write(auth, state, catalog, req, body.into_inner().0, true).await
}

/// Change some subjects; `null` resets an event to its default.
///
/// The answer is the whole document (every event, as `GET` returns it, with the new `ETag`), not
/// only the events sent: an admin form shows all subjects and refreshes from this one answer,
/// and the ETag belongs to the whole document. It is about 5 KB.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = ["settings:write"])),
    request_body = SubjectsInput,
    params(("If-Match" = Option<String>, Header, description = "ETag from a previous GET; 412 if the subjects changed since")),
    responses(
        (status = 200, description = "The subjects now in effect", body = SubjectsView, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `settings:write`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match the current ETag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid entries (field `subjects.<event>`), as for PUT", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/settings/subjects")]
pub async fn patch_subjects(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    body: web::Json<Object<SubjectsInput>>,
) -> Result<HttpResponse, ApiError> {
    write(auth, state, catalog, req, body.into_inner().0, false).await
}

async fn write(
    auth: Authorized<SettingsWrite>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    req: HttpRequest,
    input: SubjectsInput,
    replace: bool,
) -> Result<HttpResponse, ApiError> {
    let if_match = if_match_header(&req);
    let actor = auth.sub().to_string();
    let stored = state
        .db
        .write(move |conn| {
            store::update(
                conn,
                KEY,
                if_match.as_deref(),
                &actor,
                &[],
                |current: Option<&CustomSubjects>| {
                    apply(input, current.unwrap_or(&CustomSubjects::new()), replace)
                },
            )
        })
        .await?;
    catalog.invalidate();
    state.settings_changed();
    Ok(respond(Some(&stored)))
}
