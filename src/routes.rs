//! Every API route, in one place, and the JSON error handling around them.

use actix_web::dev::ResourceDef;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest, HttpResponse};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;
use crate::{events, health, notifications, settings};

/// Registers the documented API. Only `.service(...)` calls reach the OpenAPI document.
pub fn api(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(events::list_events)
        .service(settings::smtp::get_smtp)
        .service(settings::smtp::put_smtp)
        .service(settings::smtp_test::test_smtp)
        .service(settings::subjects::get_subjects)
        .service(settings::subjects::put_subjects)
        .service(settings::subjects::patch_subjects)
        .service(settings::admin_email::get_admin_email)
        .service(settings::admin_email::put_admin_email)
        .service(settings::audit::list_audit)
        // `stats` before `{id}`: actix matches in registration order.
        .service(notifications::http::stats)
        .service(notifications::http::flush_queue)
        .service(notifications::http::post_notification)
        .service(notifications::http::post_batch)
        .service(notifications::http::list_notifications)
        .service(notifications::http::get_notification)
        .service(notifications::http::retry_notification);
}

/// Body limit for JSON requests (batches of notifications need room).
pub const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// Body limit for handlers that read raw bytes (the SMTP test).
pub const BYTES_LIMIT: usize = 256 * 1024;

pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::new(BYTES_LIMIT)
}

/// The body limit that applies to `path`, for the 413 answer.
pub fn body_limit(path: &str) -> usize {
    if path == "/settings/smtp/test" {
        BYTES_LIMIT
    } else {
        JSON_LIMIT
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT)
        .error_handler(|err, _req| json_error(err).into())
}

pub fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("send the body as JSON with Content-Type: application/json".into())
        }
        // Type errors inside fields are collected per field; this is a body of the wrong shape.
        // The serde message is not echoed: it can quote the submitted values.
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::field(
            "body",
            "invalid_type",
            "the body must be a JSON object with the documented fields",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::BadRequest {
            code: "malformed_json",
            detail: format!(
                "the body is not valid JSON ({} at line {}, column {})",
                if e.is_eof() {
                    "unexpected end"
                } else {
                    "syntax error"
                },
                e.line(),
                e.column()
            ),
        },
        _ => ApiError::BadRequest {
            code: "invalid_body",
            detail: "the request body could not be read".into(),
        },
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let detail = match &err {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            _ => "invalid query string".to_string(),
        };
        ApiError::field(
            "query",
            "invalid_query",
            format!("the query string is invalid: {detail}"),
        )
        .into()
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err: PathError, req| {
        ApiError::NotFound(format!("no resource at {}", req.path())).into()
    })
}

/// Known paths and their methods, taken from the OpenAPI document, to tell 404 from 405.
pub struct RouteTable(Vec<(ResourceDef, Vec<String>)>);

impl RouteTable {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut routes: Vec<(ResourceDef, Vec<String>)> = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let json = serde_json::to_value(item).unwrap_or_default();
                let methods = [
                    "get", "put", "post", "patch", "delete", "head", "options", "trace",
                ]
                .into_iter()
                .filter(|m| json.get(m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect();
                (ResourceDef::new(path.as_str()), methods)
            })
            .collect();
        routes.push((ResourceDef::new("/openapi.json"), vec!["GET".into()]));
        routes.push((ResourceDef::new("/docs"), vec!["GET".into()]));
        Self(routes)
    }
}

/// Answers requests no route took: 405 with `Allow` for a known path, else 404.
pub async fn fallback(req: HttpRequest, table: web::Data<RouteTable>) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    Err(match table.0.iter().find(|(def, _)| def.is_match(path)) {
        Some((_, methods)) => ApiError::MethodNotAllowed {
            allow: methods.clone(),
        },
        None => ApiError::NotFound(format!("no resource at {path}")),
    })
}

/// `/docs` is where people look for the API documentation; Swagger UI lives at `/docs/`.
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}
