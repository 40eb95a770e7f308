//! Liveness and readiness probes.

use actix_web::{get, web};
use diesel::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
}

/// The process is up.
#[utoipa::path(tag = "ops", responses((status = 200, description = "Up", body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// The database answers a query.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The database is unreachable, or its disk is full", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<web::Json<Readiness>, ApiError> {
    let database = state.db.backend();
    if let Some(full) = state.db.storage_failure() {
        return Err(ApiError::Unavailable(format!(
            "database writes fail: the disk is full ({})",
            full.cause
        )));
    }
    state
        .db
        .read(|conn| {
            diesel::sql_query("SELECT 1")
                .execute(conn)
                .map_err(|e| ApiError::Unavailable(format!("database query failed: {e}")))
        })
        .await?;
    Ok(web::Json(Readiness {
        status: "ready",
        database,
    }))
}

/// Where to start: the service's name and version and links to its documentation.
#[derive(Serialize, ToSchema)]
pub struct ServiceIndex {
    #[schema(example = "mailroom")]
    pub name: &'static str,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
    /// Swagger UI.
    #[schema(example = "/docs/")]
    pub docs: &'static str,
    /// This API's OpenAPI 3.1 document.
    #[schema(example = "/openapi.json")]
    pub openapi: &'static str,
    #[schema(example = "/healthz")]
    pub health: &'static str,
    /// The admin console (a browser app on this API).
    #[schema(example = "/console/")]
    pub console: &'static str,
}

/// The service's name, version and where its documentation is; needs no token.
#[utoipa::path(tag = "ops", responses((status = 200, description = "Links to the documentation", body = ServiceIndex)))]
#[get("/")]
pub async fn index() -> web::Json<ServiceIndex> {
    web::Json(ServiceIndex {
        name: "mailroom",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs/",
        openapi: "/openapi.json",
        health: "/healthz",
        console: "/console/",
    })
}
