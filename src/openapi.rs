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
pub fn document() -> serde_json::Value {
    let doc = App::new()
        .into_utoipa_app()
        .openapi(base())
        .configure(crate::routes::api)
        .split_for_parts()
        .1;
    let mut json = serde_json::to_value(&doc).expect("the document serializes");
    polish(&mut json);
    json
}

/// Rules every operation follows, applied in one place rather than repeated on ~40 handlers,
/// in the form code generators (openapi-typescript, openapi-python-client) handle well:
/// - header parameters are plain strings (utoipa writes an optional one as `["string", "null"]`,
///   and a generated client then passes `None` where the header should be left out);
/// - an optional request body is its schema, not `oneOf [schema, null]`;
/// - every body may be answered 413 (too large) and 415 (not JSON);
/// - a 401 carries `WWW-Authenticate`, a 429 `Retry-After`;
/// - subject keys are the events' names.
fn polish(doc: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        })
    };
    // Subjects are keyed by event: the names the server takes, not any string.
    if let Some(keys) = doc.pointer_mut("/components/schemas/SubjectsInput/properties/subjects/propertyNames")
    {
        let names: Vec<&str> = crate::events::EVENTS.iter().map(|e| e.name).collect();
        *keys = json!({"enum": names});
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut().filter_map(Value::as_object_mut) {
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for param in params.iter_mut().filter(|p| p["in"] == "header") {
                    if let Some(types) = param.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
                        types.retain(|t| t != "null");
                        if types.len() == 1 {
                            param["schema"]["type"] = types[0].clone();
                        }
                    }
                }
            }
            let has_body = op.contains_key("requestBody");
            if let Some(body) = op.get_mut("requestBody") {
                if let Some(schema) = body.pointer_mut("/content/application~1json/schema") {
                    let optional = schema["oneOf"]
                        .as_array()
                        .filter(|alts| alts.len() == 2 && alts.iter().any(|a| a["type"] == "null"))
                        .and_then(|alts| alts.iter().find(|a| a["type"] != "null").cloned());
                    if let Some(inner) = optional {
                        *schema = inner;
                        body["required"] = Value::Bool(false);
                    }
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            if has_body {
                let limit = crate::extract::body_limit(path);
                responses
                    .entry("413")
                    .or_insert_with(|| problem(&format!("The body is larger than {} KiB", limit / 1024)));
                responses
                    .entry("415")
                    .or_insert_with(|| problem("A body that is not application/json"));
            }
            if let Some(r) = responses.get_mut("401").and_then(Value::as_object_mut) {
                r.entry("headers").or_insert_with(|| json!({})).as_object_mut().map(|h| {
                    h.insert(
                        "WWW-Authenticate".into(),
                        json!({"description": "`Bearer`, with `error=\"invalid_token\"` when a token was sent", "schema": {"type": "string"}}),
                    )
                });
            }
            if let Some(r) = responses.get_mut("429").and_then(Value::as_object_mut) {
                r.entry("headers").or_insert_with(|| json!({})).as_object_mut().map(|h| {
                    h.insert(
                        "Retry-After".into(),
                        json!({"description": "Seconds until a retry can succeed", "schema": {"type": "integer", "minimum": 0}}),
                    )
                });
            }
        }
    }
}

/// Pretty JSON with a trailing newline, the form committed to `openapi/openapi.json`.
pub fn to_pretty_json(doc: &serde_json::Value) -> String {
    let mut json = serde_json::to_string_pretty(doc).unwrap_or_default();
    json.push('\n');
    json
}
