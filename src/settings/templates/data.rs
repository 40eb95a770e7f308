//! The data a notification carries for its event's templates: what it may hold, and its schema.

use utoipa::ToSchema;
use validator::ValidateUrl;

use crate::events::{Event, MAX_VALUE_CHARS};
use crate::validation::{check_email, Errors};

/// The variables of an event (`GET /events` lists them): each a string, number or boolean.
pub struct TemplateData;

impl utoipa::PartialSchema for TemplateData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
        let value = OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Template variables of the event (`GET /events` lists them): strings, numbers or booleans.",
            ))
            .additional_properties(Some(Schema::OneOf(value.build())))
            .into()
    }
}

impl ToSchema for TemplateData {}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.validate_url()
}

/// Checks an event's data: only its variables, scalar values within length, URLs and addresses
/// where the name says so, and every required variable present.
pub fn check_data(
    errors: &mut Errors,
    data_field: &str,
    event: &Event,
    data: &serde_json::Map<String, serde_json::Value>,
) {
    let mut keys: Vec<_> = data.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let field = format!("{data_field}.{key}");
        if !event.has_variable(&key) {
            let allowed: Vec<&str> = event.all_variables().map(|v| v.name).collect();
            errors.add(
                &field,
                "unknown_variable",
                format!(
                    "{} has no variable {key}; it accepts: {}",
                    event.name,
                    allowed.join(", ")
                ),
            );
            continue;
        }
        match &data[&key] {
            serde_json::Value::String(s) => {
                if s.chars().count() > MAX_VALUE_CHARS {
                    errors.add(
                        &field,
                        "too_long",
                        format!("{field} must be at most {MAX_VALUE_CHARS} characters"),
                    );
                } else if key.ends_with("_url") && !is_http_url(s) {
                    errors.add(
                        &field,
                        "invalid_url",
                        format!("{field} must be an http:// or https:// URL"),
                    );
                } else if key.ends_with("_email") {
                    check_email(errors, &field, s);
                }
            }
            serde_json::Value::Number(_) | serde_json::Value::Bool(_)
                if !key.ends_with("_url") && !key.ends_with("_email") => {}
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                errors.add(&field, "invalid_type", format!("{field} must be a string"));
            }
            _ => errors.add(
                &field,
                "not_scalar",
                format!("{field} must be a string, number or boolean"),
            ),
        }
    }
    for var in event.variables.iter().filter(|v| v.required) {
        if !data.contains_key(var.name) {
            errors.add(
                format!("{data_field}.{}", var.name),
                "required",
                format!("{} requires {}", event.name, var.name),
            );
        }
    }
}
