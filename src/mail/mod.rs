//! Talking SMTP: where mail may go, how a session is opened, the test of a server, and the
//! messages sent. Knows nothing of settings storage: callers describe the transport.

pub mod address;
pub mod message;
pub mod oauth;
pub mod probe;
pub mod smtp;

pub use smtp::{MailContext, Security, SmtpTarget};

/// Replaces every secret in `text` (a server reply or an error) with `[redacted]`; a server may
/// echo what it was sent.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

/// An error with its sources, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    collapse_repeats(&text)
}

/// lettre's errors repeat their kind at each level ("Connection error: Connection error: ...");
/// a reader needs it once.
fn collapse_repeats(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Installs ring as the one rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kind_repeated_at_each_level_of_an_error_is_said_once() {
        assert_eq!(
            super::collapse_repeats(
                "Connection error: Connection error: received fatal alert: HandshakeFailure"
            ),
            "Connection error: received fatal alert: HandshakeFailure"
        );
        assert_eq!(super::collapse_repeats("a: b: a"), "a: b: a");
    }

    #[test]
    fn an_echoed_access_token_is_redacted_in_every_form_it_is_sent() {
        let token = secrecy::SecretString::from("ya29.secret-token".to_string());
        let forms = super::smtp::xoauth2::token_forms("ada@example.com", &token);
        let echoed = format!(
            "535 you sent {} which is {} with {}",
            forms[0], forms[1], forms[3]
        );
        let clean = super::redact(&echoed, &forms);
        assert!(!clean.contains("ya29"), "{clean}");
        assert!(!clean.contains(&forms[0][..20]), "{clean}");
    }
}
