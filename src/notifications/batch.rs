//! `POST /notifications/batch`: up to 1000 notifications, each answered on its own.

use actix_web::{post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::accept::{self, Acceptance, Accepted, NotificationRequest};
use super::http::count_acceptance;
use super::intake::Intake;
use crate::auth::scope::NotificationsSend;
use crate::auth::Authorized;
use crate::db::now_millis;
use crate::error::{ApiError, FieldError, Problem};
use crate::settings::templates::CatalogCache;
use crate::state::AppState;
use crate::store::notifications::Status;
use crate::validation::{Field, Object};

pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Up to 1000 notifications, each validated and answered on its own.
    #[serde(default)]
    #[schema(value_type = Vec<NotificationRequest>, required = true, min_items = 1, max_items = 1000)]
    pub notifications: Field<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    pub index: usize,
    /// 202 for an accepted item, 409 or 422 for a refused one.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Accepted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<BatchItemResult>,
}

/// Accept up to 1000 notifications in one request; each item is validated and answered on its
/// own, and the accepted ones are stored in one transaction.
#[utoipa::path(
    tag = "notifications",
    security(("bearer" = ["notifications:send"])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `notifications:send`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 4 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`notifications` missing, empty or longer than 1000", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/notifications/batch")]
pub async fn post_batch(
    auth: Authorized<NotificationsSend>,
    state: web::Data<AppState>,
    catalog: web::Data<CatalogCache>,
    intake: web::Data<Intake>,
    body: web::Json<Object<BatchRequest>>,
) -> Result<web::Json<BatchResponse>, ApiError> {
    let started = std::time::Instant::now();
    let now = now_millis();
    let items = batch_items(body.into_inner().0)?;
    let _permit = state
        .batch_permits
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the service is shutting down".into()))?;
    let (mut results, valid) = validate_items(items, now);
    // Rendered off the async threads and before the committer; a failure is the item's own.
    let valid = if valid.is_empty() {
        valid
    } else {
        let catalog = CatalogCache::current(catalog.into_inner(), &state.db).await?;
        render_items(valid, catalog, &mut results).await?
    };
    // Through the group committer, like single posts: each item is answered on its own.
    let (sub, intake) = (auth.sub(), &**intake);
    let outcomes =
        futures_util::future::join_all(valid.into_iter().map(|(index, v)| async move {
            (index, intake.accept(v, sub, now).await.map_err(ApiError::from))
        }))
        .await;
    let mut wake = false;
    for (index, outcome) in outcomes {
        count_acceptance(outcome.as_ref().map(|a| a.accepted()), started);
        results[index] = Some(match outcome {
            Ok(acceptance) => {
                wake |= matches!(&acceptance, Acceptance::New(a) if a.status == Status::Queued);
                BatchItemResult {
                    index,
                    status: 202,
                    notification: Some(acceptance.accepted().clone()),
                    error: None,
                }
            }
            Err(e) => refused(index, &e),
        });
    }
    if wake {
        state.wake_dispatcher();
    }
    let results: Vec<BatchItemResult> = results.into_iter().flatten().collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    Ok(web::Json(BatchResponse {
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

/// The item of a refused notification.
fn refused(index: usize, e: &ApiError) -> BatchItemResult {
    BatchItemResult {
        index,
        status: actix_web::ResponseError::status_code(e).as_u16(),
        notification: None,
        error: Some(e.problem()),
    }
}

/// The items, when there are between one and [`MAX_BATCH`].
fn batch_items(body: BatchRequest) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut errors = crate::validation::Errors::default();
    let items = errors
        .required("notifications", body.notifications, "an array of notifications")
        .unwrap_or_default();
    if items.is_empty() && !errors.has("notifications") {
        errors.add(
            "notifications",
            "empty",
            "notifications must hold at least one item",
        );
    }
    if items.len() > MAX_BATCH {
        errors.add(
            "notifications",
            "too_many",
            format!("at most {MAX_BATCH} notifications per batch"),
        );
    }
    errors.finish()?;
    Ok(items)
}

type Results = Vec<Option<BatchItemResult>>;

/// Validates each item on its own: the invalid ones get their result, the valid ones go on.
fn validate_items(items: Vec<serde_json::Value>, now: i64) -> (Results, Vec<(usize, accept::Validated)>) {
    let mut results: Results = Vec::with_capacity(items.len());
    let mut valid = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let prefix = format!("notifications[{index}].");
        let not_an_object = || {
            vec![FieldError {
                field: format!("notifications[{index}]"),
                code: "invalid_type".into(),
                message: "each notification must be an object".into(),
            }]
        };
        let parsed = match item {
            serde_json::Value::Object(_) => {
                serde_json::from_value::<NotificationRequest>(item).map_err(|_| not_an_object())
            }
            _ => Err(not_an_object()),
        };
        match parsed.and_then(|r| accept::validate(r, None, &prefix, now)) {
            Ok(v) => {
                results.push(None);
                valid.push((index, v));
            }
            Err(field_errors) => results.push(Some(refused(index, &ApiError::Validation(field_errors)))),
        }
    }
    (results, valid)
}

/// Renders the valid items on a blocking thread; those that fail get their result.
async fn render_items(
    valid: Vec<(usize, accept::Validated)>,
    catalog: std::sync::Arc<crate::settings::templates::Catalog>,
    results: &mut Results,
) -> Result<Vec<(usize, accept::Validated)>, ApiError> {
    let rendered = crate::error::blocking(move || {
        Ok(valid
            .into_iter()
            .map(|(index, mut v)| (index, accept::render_validated(&mut v, &catalog).map(|()| v)))
            .collect::<Vec<_>>())
    })
    .await?;
    let mut ok = Vec::with_capacity(rendered.len());
    for (index, r) in rendered {
        match r {
            Ok(v) => ok.push((index, v)),
            Err(e) => results[index] = Some(refused(index, &e)),
        }
    }
    Ok(ok)
}
