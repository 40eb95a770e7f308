//! `POST /notifications`: one notification, validated, rendered and stored before the 202.
//! The other routes: [`super::batch`], [`super::views`] (reading) and [`super::queue`].

use actix_web::http::header;
use actix_web::{post, web, HttpRequest, HttpResponse};

use super::accept::{self, Acceptance, Accepted, NotificationRequest};
use super::intake::Intake;
use crate::auth::scope::NotificationsSend;
use crate::auth::Authorized;
use crate::db::now_millis;
use crate::error::{ApiError, Problem};
use crate::settings::templates::CatalogCache;
use crate::state::AppState;
use crate::store::notifications::Status;
use crate::validation::Object;

fn idempotency_header(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::field(
                    "idempotency_key",
                    "invalid_idempotency_key",
                    "the Idempotency-Key header must be printable ASCII",
                )
            })
        })
        .transpose()
}

pub(super) fn accepted_response(a: &Accepted) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/notifications/{}", a.id)))
        .json(a)
}

/// Accept a notification: validated, rendered and stored durably before the answer.
///
/// A notification that cannot be delivered yet (no SMTP settings, no From address, no admin address
/// for an admin event) is accepted as `held` and goes out once the settings allow.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    request_body = NotificationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat with the same key and body returns the original answer and creates nothing")),
    responses(
        (status = 202, description = "Accepted and stored", body = Accepted,
         headers(("Location" = String, description = "/notifications/{id}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body (`idempotency_key_reused`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 4 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event, missing `to`, bad `data` (fields like `data.product_name`), or a subject template of the event that cannot render (field `event`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications")]
pub async fn post_notification(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    intake: web::Data<Intake>,
    req: HttpRequest,
    body: web::Json<Object<NotificationRequest>>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let result = accept_one(
        &auth,
        &state,
        &intake,
        catalog.into_inner(),
        &req,
        body.into_inner().0,
    )
    .await;
    count_acceptance(result.as_ref().map(|a| a.accepted()), started);
    let acceptance = result?;
    Ok(accepted_response(acceptance.accepted()))
}

/// The accept counters and duration, for one notification's answer.
pub(super) fn count_acceptance(result: Result<&Accepted, &ApiError>, started: std::time::Instant) {
    match result {
        Ok(a) => {
            crate::metrics::accepted(&a.event);
            if a.status == Status::Suppressed {
                crate::metrics::delivery("suppressed");
            }
            crate::metrics::accept_duration(started.elapsed());
        }
        Err(e) => crate::metrics::rejected(match e {
            ApiError::Validation(_) | ApiError::BadRequest { .. } => "validation",
            ApiError::Conflict { .. } => "conflict",
            ApiError::InsufficientStorage(_) => "storage",
            _ => "unavailable",
        }),
    }
}

async fn accept_one(
    auth: &Authorized<NotificationsSend>,
    state: &AppState,
    intake: &Intake,
    catalog: std::sync::Arc<CatalogCache>,
    req: &HttpRequest,
    body: NotificationRequest,
) -> Result<Acceptance, ApiError> {
    let now = now_millis();
    let key = idempotency_header(req)?;
    let validated = accept::validate(body, key.as_deref(), "", now).map_err(ApiError::Validation)?;
    let catalog = CatalogCache::current(catalog, &state.db).await?;
    // Rendered here, on the HTTP worker: bounded by the sandbox (fuel, output size), and a hop to
    // a blocking thread per request cost more than the rendering itself.
    let mut validated = validated;
    accept::render_validated(&mut validated, &catalog)?;
    let acceptance = intake.accept(validated, auth.sub(), now).await?;
    if let Acceptance::New(a) = &acceptance {
        if a.status == Status::Queued {
            state.wake_dispatcher();
        }
    }
    Ok(acceptance)
}
