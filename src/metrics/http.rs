//! `GET /metrics` in the Prometheus text format.

use actix_web::{get, web, FromRequest, HttpRequest, HttpResponse};

use crate::auth::scope::MetricsRead;
use crate::auth::Authorized;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Metrics for Prometheus. Needs `metrics:read`, unless `MAILROOM_METRICS_PUBLIC=true`.
#[utoipa::path(
    tag = "ops",
    security(("bearer" = ["metrics:read"])),
    responses(
        (status = 200, description = "Prometheus text format (version 0.0.4)", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `metrics:read`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/metrics")]
pub async fn get_metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if !state.config.metrics_public {
        Authorized::<MetricsRead>::extract(&req).await?;
    }
    let handle = super::handle();
    let now = crate::db::now_millis();
    let depth = state.db.read(crate::store::stats::queue_depth).await?;
    for (status, n) in &depth.counts {
        ::metrics::gauge!("mailroom_queue", "status" => status.as_str()).set(*n as f64);
    }
    ::metrics::gauge!("mailroom_queue_oldest_age_seconds").set(
        depth
            .oldest_queued_age_ms(now)
            .map_or(0.0, |ms| ms as f64 / 1000.0),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render()))
}
