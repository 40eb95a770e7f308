//! Parsing request bodies into domain types while collecting every failing field at once.
//!
//! Request fields are declared as [`Field<T>`]: a wrong JSON type becomes a field error instead of
//! aborting deserialisation, so a client learns about all its mistakes in one 422.

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use validator::ValidateEmail;

use crate::error::{ApiError, FieldError};

/// A JSON member that may be missing, `null`, a value of the right type or a value of the wrong type.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Missing,
    Null,
    Value(T),
    Invalid,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Field::Null);
        }
        Ok(serde_json::from_value(value).map_or(Field::Invalid, Field::Value))
    }
}

/// An integer as JSON Schema counts them: `8256` and `8256.0` alike (a client's JSON encoder may
/// write either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(deserializer)?;
        if let Some(i) = n.as_i64() {
            return Ok(Whole(i));
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Whole(f as i64)),
            _ => Err(serde::de::Error::custom("not an integer")),
        }
    }
}

/// A request body that must be a JSON object (serde would otherwise fill a struct from an array).
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        T::deserialize(serde_json::Value::Object(map))
            .map(Object)
            .map_err(serde::de::Error::custom)
    }
}

/// Collects field errors; the request fails once, with all of them.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            code: code.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }

    /// A value that must be present and of type `T` (`expected` describes the type to the client).
    pub fn required<T>(&mut self, field: &str, value: Field<T>, expected: &str) -> Option<T> {
        match value {
            Field::Value(v) => Some(v),
            Field::Missing | Field::Null => {
                self.add(field, "required", format!("{field} is required"));
                None
            }
            Field::Invalid => {
                self.add(field, "invalid_type", format!("{field} must be {expected}"));
                None
            }
        }
    }

    /// A value that may be absent or null.
    pub fn optional<T>(&mut self, field: &str, value: Field<T>, expected: &str) -> Option<T> {
        match value {
            Field::Value(v) => Some(v),
            Field::Missing | Field::Null => None,
            Field::Invalid => {
                self.add(field, "invalid_type", format!("{field} must be {expected}"));
                None
            }
        }
    }
}

/// True when the text would let a value escape its header line.
pub fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// Checks a single-line text (names, subjects): no control characters, bounded length.
pub fn check_header_text(errors: &mut Errors, field: &str, value: &str, max_chars: usize) -> bool {
    if has_line_break(value) {
        errors.add(field, "line_break", format!("{field} must not contain CR or LF"));
        false
    } else if value.chars().any(char::is_control) {
        errors.add(
            field,
            "control_character",
            format!("{field} must not contain control characters"),
        );
        false
    } else if value.chars().count() > max_chars {
        errors.add(
            field,
            "too_long",
            format!("{field} must be at most {max_chars} characters"),
        );
        false
    } else {
        true
    }
}

/// Strict address check: a bare `local@domain` that both the validator crate and lettre accept,
/// with a dotted domain (or `localhost`), and nothing that could reach a header as a second line.
pub fn check_email(errors: &mut Errors, field: &str, value: &str) -> bool {
    if has_line_break(value) {
        errors.add(field, "line_break", format!("{field} must not contain CR or LF"));
        return false;
    }
    let valid = value.validate_email() && crate::mail::address::EmailAddress::parse(value).is_ok();
    if !valid {
        errors.add(
            field,
            "invalid_email",
            format!("{field} must be a single email address such as name@example.com"),
        );
    }
    valid
}

/// A host name or IP literal, without scheme, port or path.
pub fn check_host(errors: &mut Errors, field: &str, value: &str) -> bool {
    let host = value.trim_end_matches('.');
    if value.contains("://") {
        errors.add(
            field,
            "invalid_host",
            format!("{field} takes a host name only, without a scheme: e.g. smtp.example.com"),
        );
        return false;
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let valid = !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok);
    if !valid {
        let hint = if host.contains(':') {
            " (give the port in the port field)"
        } else {
            ""
        };
        errors.add(
            field,
            "invalid_host",
            format!("{field} must be a host name or IP address such as smtp.example.com{hint}"),
        );
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_json_type_is_kept_as_invalid_instead_of_failing_the_whole_body() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            port: Field<u16>,
            #[serde(default)]
            host: Field<String>,
            #[serde(default)]
            name: Field<String>,
        }
        let body: Body = serde_json::from_str(r#"{"port": "abc", "host": null}"#).unwrap();
        assert_eq!(body.port, Field::Invalid);
        assert_eq!(body.host, Field::Null);
        assert_eq!(body.name, Field::Missing);
    }

    #[test]
    fn email_checks_refuse_display_names_lists_and_line_breaks() {
        for bad in [
            "Ada <ada@example.com>",
            "ada@example.com, eve@example.com",
            "ada@example.com\r\nBcc: eve@example.com",
            "ada",
            "ada@",
            "ada@example",
            "a b@example.com",
        ] {
            let mut errors = Errors::default();
            assert!(!check_email(&mut errors, "email", bad), "{bad}");
            assert!(errors.has("email"));
        }
        let mut errors = Errors::default();
        assert!(check_email(
            &mut errors,
            "email",
            "ada.lovelace+portal@example.co.uk"
        ));
        assert!(check_email(&mut errors, "email", "root@localhost"));
        assert!(errors.is_empty());
    }

    #[test]
    fn hosts_must_not_carry_a_scheme_or_port() {
        let mut errors = Errors::default();
        assert!(check_host(&mut errors, "host", "smtp.example.com"));
        assert!(check_host(&mut errors, "host", "127.0.0.1"));
        assert!(check_host(&mut errors, "host", "::1"));
        assert!(!check_host(&mut errors, "host", "smtp://smtp.example.com"));
        assert!(!check_host(&mut errors, "host", "smtp.example.com:587"));
        assert!(!check_host(&mut errors, "host", ""));
        assert!(!check_host(&mut errors, "host", "bad host"));
    }
}
