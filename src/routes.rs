//! Every API route, in one place, and the answers for requests no route takes.

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest, HttpResponse};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;
use crate::{events, health, notifications, settings};

/// Registers the documented API. Only `.service(...)` calls reach the OpenAPI document.
pub fn api(cfg: &mut ServiceConfig) {
    cfg.service(health::index)
        .service(health::healthz)
        .service(health::readyz)
        .service(events::http::list_events)
        .service(settings::smtp::http::get_smtp)
        .service(settings::smtp::http::put_smtp)
        .service(settings::smtp::probe::test_smtp)
        .service(settings::subjects::http::get_subjects)
        .service(settings::subjects::http::put_subjects)
        .service(settings::subjects::http::patch_subjects)
        .service(settings::admin_email::http::get_admin_email)
        .service(settings::admin_email::http::put_admin_email)
        .service(settings::audit::list_audit)
        .service(settings::locale::http::get_locale)
        .service(settings::locale::http::put_locale)
        .service(settings::branding::http::get_branding)
        .service(settings::branding::http::put_branding)
        .service(settings::templates::http::list_templates)
        .service(settings::templates::preview::preview)
        .service(settings::templates::http::get_template)
        .service(settings::templates::http::put_template)
        .service(settings::templates::http::delete_template)
        .service(settings::webhooks::get_webhooks)
        .service(settings::webhooks::put_webhooks)
        .service(settings::webhooks::test_webhook)
        .service(crate::webhooks::http::list_deliveries)
        .service(crate::suppressions::http::list_suppressions)
        .service(crate::suppressions::http::add_suppression)
        .service(crate::suppressions::http::delete_suppression)
        .service(crate::metrics::http::get_metrics)
        // `stats` before `{id}`: actix matches in registration order.
        .service(notifications::queue::stats)
        .service(notifications::queue::flush_queue)
        .service(notifications::http::post_notification)
        .service(notifications::batch::post_batch)
        .service(notifications::views::list_notifications)
        .service(notifications::views::get_notification)
        .service(notifications::queue::retry_notification);
}

/// Known paths and their methods, taken from the OpenAPI document, to tell 404 from 405.
pub struct RouteTable(Vec<(ResourceDef, Vec<String>)>);

impl RouteTable {
    pub fn from_openapi(doc: &serde_json::Value) -> Self {
        let empty = serde_json::Map::new();
        let paths = doc["paths"].as_object().unwrap_or(&empty);
        let mut routes: Vec<(ResourceDef, Vec<String>)> = paths
            .iter()
            .map(|(path, json)| {
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
