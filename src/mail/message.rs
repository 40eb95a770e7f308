//! Building the MIME message for a notification: From and Reply-To from the current settings,
//! the rest as rendered at accept time.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use crate::settings::smtp::SmtpSettings;

/// Header text on one line: runs of control characters (CR, LF, tabs) become one space. Used for
/// rendered subjects, and again when building a message as the second line of defence (lettre
/// panics on a line break in a display name).
pub fn one_line(s: &str) -> String {
    s.split(char::is_control)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sending identity from the SMTP settings.
#[derive(Debug, Clone)]
pub struct Sender {
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    /// Right-hand side of generated Message-IDs.
    pub domain: String,
}

impl Sender {
    /// None while no `from_address` is configured: nothing is sent without one.
    pub fn from_settings(settings: &SmtpSettings) -> Option<Self> {
        let address: Address = settings.from_address.as_deref()?.parse().ok()?;
        let domain = address.domain().to_string();
        let reply_to = settings
            .reply_to
            .as_deref()
            .and_then(|r| r.parse::<Address>().ok())
            .map(|a| Mailbox::new(None, a));
        Some(Self {
            from: Mailbox::new(settings.from_name.as_deref().map(one_line), address),
            reply_to,
            domain,
        })
    }

    pub fn message_id(&self, notification_id: &str) -> String {
        format!("<{notification_id}@{}>", self.domain)
    }
}

pub struct Content<'a> {
    pub notification_id: &'a str,
    pub to: &'a str,
    pub to_name: Option<&'a str>,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
}

/// A multipart/alternative message (plain text first, then HTML). lettre encodes every header
/// value, so names and subjects cannot add header lines.
pub fn build(sender: &Sender, content: &Content<'_>) -> anyhow::Result<Message> {
    let to: Address = content.to.parse()?;
    let mut builder = Message::builder()
        .from(sender.from.clone())
        .to(Mailbox::new(content.to_name.map(one_line), to))
        .subject(one_line(content.subject))
        .message_id(Some(sender.message_id(content.notification_id)))
        .date_now();
    if let Some(reply_to) = &sender.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    Ok(builder.multipart(
        MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(content.text.to_string()),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(content.html.to_string()),
            ),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::smtp::Security;

    fn settings() -> SmtpSettings {
        SmtpSettings {
            host: "smtp.example.com".into(),
            port: 587,
            security: Security::Starttls,
            username: None,
            password: None,
            from_address: Some("portal@example.com".into()),
            from_name: Some("Developer Portal".into()),
            reply_to: Some("support@example.com".into()),
            timeout_seconds: 10,
            tls_verify: true,
            allow_insecure_auth: false,
        }
    }

    #[test]
    fn a_name_with_line_breaks_cannot_add_a_header() {
        let sender = Sender::from_settings(&settings()).unwrap();
        let message = build(
            &sender,
            &Content {
                notification_id: "n1",
                to: "ada@example.com",
                to_name: Some("Ada\r\nBcc: eve@example.com"),
                subject: "Hi\r\nBcc: eve@example.com",
                text: "text",
                html: "<p>html</p>",
            },
        )
        .unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(
            !raw.lines().any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{raw}"
        );
        assert!(raw.contains("Message-ID: <n1@example.com>"));
        assert!(raw.contains("Reply-To: support@example.com"));
    }

    #[test]
    fn no_sender_without_a_from_address() {
        let mut s = settings();
        s.from_address = None;
        assert!(Sender::from_settings(&s).is_none());
    }
}
