//! The OpenAPI document: utoipa collects every handler registered in [`crate::routes::api`].

use actix_web::App;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailroom",
        description = "Email notifications for portals and internal tools: SMTP settings, subjects, \
                       the admin address, and durable delivery.\n\nEvery error is \
                       `application/problem+json` with a stable `code`.",
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "settings", description = "SMTP settings, subjects, admin address, audit log"),
        (name = "events", description = "The notification event catalogue"),
        (name = "notifications", description = "Accept, deliver and report notifications"),
        (name = "ops", description = "Health and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 with MAILROOM_JWT_SECRET, or RS256/ES256 with MAILROOM_JWT_PUBLIC_KEY_FILE). \
                         Scopes in `scope` (space-separated) or `scp` (array): settings:read, settings:write, \
                         smtp:test, notifications:send, notifications:read; `roles: [\"admin\"]` grants all.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The base document, before handlers add their paths.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The complete document, as served at `/openapi.json` and committed under `openapi/`.
pub fn document() -> utoipa::openapi::OpenApi {
    App::new()
        .into_utoipa_app()
        .openapi(base())
        .configure(crate::routes::api)
        .split_for_parts()
        .1
}

/// Pretty JSON with a trailing newline, the form committed to `openapi/openapi.json`.
pub fn to_pretty_json(doc: &utoipa::openapi::OpenApi) -> String {
    let mut json = doc.to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}
