//! Talking SMTP: where mail may go, the transport built from settings, and the messages sent.

pub mod message;
pub mod probe;
pub mod transport;

pub use transport::{MailContext, SmtpTarget};

/// Replaces every secret in `text` (a server reply or an error) with `[redacted]`; a server may
/// echo what it was sent.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}
