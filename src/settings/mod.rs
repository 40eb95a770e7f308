//! The settings resources (SMTP, subjects, templates, branding, locale, admin address), their
//! storage and their audit trail.

pub mod admin_email;
pub mod audit;
pub mod branding;
pub mod locale;
pub mod smtp;
pub mod subjects;
pub mod templates;
pub mod webhooks;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::error::ApiError;

pub use crate::store::settings::etag;

/// Fails with 412 when the request carries an `If-Match` that does not name the current version.
pub fn check_if_match(if_match: Option<&str>, current_version: i64) -> Result<(), ApiError> {
    if crate::store::settings::if_match_holds(if_match, current_version) {
        Ok(())
    } else {
        Err(ApiError::PreconditionFailed)
    }
}

/// The `If-Match` header; an empty one names no tag and is treated as absent.
pub fn if_match_header(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\"invalid\"").trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_the_current_tag_weak_or_strong_or_a_star() {
        assert!(check_if_match(None, 3).is_ok());
        assert!(check_if_match(Some("\"3\""), 3).is_ok());
        assert!(check_if_match(Some("W/\"3\""), 3).is_ok());
        assert!(check_if_match(Some("\"1\", \"3\""), 3).is_ok());
        assert!(check_if_match(Some("*"), 3).is_ok());
        assert!(matches!(
            check_if_match(Some("\"2\""), 3),
            Err(ApiError::PreconditionFailed)
        ));
    }
}
