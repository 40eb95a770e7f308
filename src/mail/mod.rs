//! Talking SMTP: where mail may go, how a session is opened, the test of a server, and the
//! messages sent. Knows nothing of settings storage: callers describe the transport.

pub mod message;
pub mod oauth;
pub mod policy;
pub mod probe;
pub mod transport;

pub use transport::{MailContext, Security, SmtpTarget};

/// Replaces every secret in `text` (a server reply or an error) with `[redacted]`; a server may
/// echo what it was sent.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

/// Installs ring as the one rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
