//! Subject templates per event: custom ones stored, the catalogue's defaults otherwise.

pub mod http;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::error::{ApiError, FieldError};
use crate::events;
use crate::store::settings as store;
use crate::validation::{check_header_text, Errors, Field};

pub const KEY: &str = "subjects";
pub const MAX_SUBJECT_CHARS: usize = 200;

/// Custom subjects by event name; events not present use their default.
pub type CustomSubjects = BTreeMap<String, String>;

/// `PUT` and `PATCH /settings/subjects` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubjectsInput {
    /// Subject templates by event, e.g. `{"access_request_approved": "Access to {{ product_name }} granted"}`.
    /// PUT: events left out use their default. PATCH: only the events given change; `null` resets one.
    #[serde(default)]
    #[schema(value_type = HashMap<String, Option<String>>, required = true,
             example = json!({"access_request_approved": "Access to {{ product_name }} granted"}))]
    pub subjects: Field<HashMap<String, Field<String>>>,
}

/// Checks a subject template for `event`; on failure adds a field error and returns false.
pub fn check_subject(errors: &mut Errors, field: &str, event: &'static events::Event, subject: &str) -> bool {
    if subject.trim().is_empty() {
        errors.add(field, "empty", format!("{field} must not be empty"));
        return false;
    }
    if !check_header_text(errors, field, subject, MAX_SUBJECT_CHARS) {
        return false;
    }
    match check_subject_rendering(event, subject) {
        Ok(()) => true,
        Err(e) => {
            errors.add(field, &e.code, format!("{field}: {}", e.message));
            false
        }
    }
}

/// Beyond syntax and variables, a subject is rendered at save time against example data and
/// against the longest data a notification may carry: what fails to render, or exceeds the
/// sandbox's bounds on work and size, is refused here instead of failing every notification later.
/// The error's `field` is left empty for the caller.
pub fn check_subject_rendering(event: &'static events::Event, subject: &str) -> Result<(), FieldError> {
    let fail = |code: &str, message: String| FieldError {
        field: String::new(),
        code: code.to_string(),
        message,
    };
    crate::sandbox::check(subject).map_err(|r| fail(r.code(), r.to_string()))?;
    let env = crate::sandbox::environment(crate::sandbox::Part::Subject);
    let template = env.template_from_str(subject).map_err(|e| {
        fail(
            "invalid_template",
            format!("not a valid template: {}", crate::sandbox::describe(&e)),
        )
    })?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !event.has_variable(v) && !matches!(v.as_str(), "branding" | "locale"))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        let allowed: Vec<&str> = event.all_variables().map(|v| v.name).collect();
        return Err(fail(
            "unknown_variable",
            format!(
                "uses {} that {} does not have; it may use: {}, branding, locale",
                unknown.join(", "),
                event.name,
                allowed.join(", ")
            ),
        ));
    }
    // Bounds first (the longest data), then the length with typical data.
    let mut example = String::new();
    for (data, typical) in [(event.longest_data(), false), (event.example_data(), true)] {
        let ctx = minijinja::Value::from(minijinja::value::Serde(&data));
        let rendered = crate::sandbox::render(subject, &ctx)
            .map_err(|r| fail(r.code(), format!("cannot be used: {r}")))?;
        if typical {
            example = rendered;
        }
    }
    let chars = crate::mail::message::one_line(&example).chars().count();
    if chars > crate::sandbox::MAX_RENDERED_SUBJECT_CHARS {
        return Err(fail(
            "too_long",
            format!(
                "renders to {chars} characters with example data; subjects are cut at {}",
                crate::sandbox::MAX_RENDERED_SUBJECT_CHARS
            ),
        ));
    }
    Ok(())
}

/// The subject template in effect for `event`.
pub fn subject_for<'a>(custom: &'a CustomSubjects, event: &'static events::Event) -> &'a str {
    custom
        .get(event.name)
        .map_or(event.default_subject, String::as_str)
}

pub fn load(conn: &mut DbConnection) -> Result<CustomSubjects, crate::db::StoreError> {
    Ok(store::load::<CustomSubjects>(conn, KEY)?
        .map(|s| s.value)
        .unwrap_or_default())
}

/// Applies the body to `current`: `replace` for PUT, merge for PATCH. Every bad entry is reported.
pub fn apply(
    input: SubjectsInput,
    current: &CustomSubjects,
    replace: bool,
) -> Result<CustomSubjects, ApiError> {
    let mut errors = Errors::default();
    let Some(entries) = errors.required(
        "subjects",
        input.subjects,
        "an object mapping event names to subjects",
    ) else {
        errors.finish()?;
        return Ok(current.clone());
    };
    let mut next = if replace {
        CustomSubjects::new()
    } else {
        current.clone()
    };
    let mut names: Vec<_> = entries.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in names {
        let field = format!("subjects.{name}");
        let Some(event) = events::find(&name) else {
            errors.add(
                &field,
                "unknown_event",
                format!("{name} is not an event; GET /events lists them"),
            );
            continue;
        };
        match value {
            Field::Null | Field::Missing => {
                next.remove(event.name);
            }
            Field::Invalid => errors.add(
                &field,
                "invalid_type",
                format!("{field} must be a string or null"),
            ),
            Field::Value(subject) => {
                if check_subject(&mut errors, &field, event, &subject) {
                    if subject == event.default_subject {
                        next.remove(event.name);
                    } else {
                        next.insert(event.name.to_string(), subject);
                    }
                }
            }
        }
    }
    errors.finish()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> SubjectsInput {
        serde_json::from_value(json).unwrap()
    }

    fn field_codes(err: ApiError) -> Vec<(String, String)> {
        match err {
            ApiError::Validation(errors) => errors.into_iter().map(|e| (e.field, e.code)).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_subject_is_reported_with_its_own_field_and_code() {
        let long = "x".repeat(201);
        let err = apply(
            input(serde_json::json!({"subjects": {
                "no_such_event": "Hi",
                "password_reset": "",
                "user_invited": long,
                "user_activated": "Hi\r\nBcc: eve@example.com",
                "user_deactivated": "Bye {{ user_name",
                "access_request_approved": "Access to {{ organization_name }}",
                "organization_registration_rejected": 42,
            }})),
            &CustomSubjects::new(),
            true,
        )
        .unwrap_err();
        let mut got = field_codes(err);
        got.sort();
        let expected = [
            ("subjects.access_request_approved", "unknown_variable"),
            ("subjects.no_such_event", "unknown_event"),
            ("subjects.organization_registration_rejected", "invalid_type"),
            ("subjects.password_reset", "empty"),
            ("subjects.user_activated", "line_break"),
            ("subjects.user_deactivated", "invalid_template"),
            ("subjects.user_invited", "too_long"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, c)| (f.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn put_replaces_and_patch_merges_with_null_resetting() {
        let mut current = CustomSubjects::new();
        current.insert("user_invited".into(), "Join {{ portal_name }}".into());
        let put = apply(
            input(serde_json::json!({"subjects": {"user_activated": "Welcome {{ user_name }}"}})),
            &current,
            true,
        )
        .unwrap();
        assert_eq!(put.len(), 1);
        assert!(put.contains_key("user_activated"));
        let patched = apply(
            input(serde_json::json!({"subjects": {"user_activated": "Welcome {{ user_name }}", "user_invited": null}})),
            &current,
            false,
        )
        .unwrap();
        assert_eq!(patched.len(), 1);
        assert!(!patched.contains_key("user_invited"));
    }
}
