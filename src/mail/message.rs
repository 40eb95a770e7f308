//! Building the MIME message for a notification: the sender's From and Reply-To, the rest as
//! rendered at accept time.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::address::EmailAddress;

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
    /// None when `from_address` is not an address: nothing is sent without one.
    pub fn new(from_address: &str, from_name: Option<&str>, reply_to: Option<&str>) -> Option<Self> {
        let address = EmailAddress::from_stored(from_address).ok()?.into_wire();
        // Message-IDs are ASCII: the domain is the A-label already.
        let domain = address.domain().to_string();
        let reply_to = reply_to
            .and_then(|r| EmailAddress::from_stored(r).ok())
            .map(|a| Mailbox::new(None, a.into_wire()));
        Some(Self {
            from: Mailbox::new(from_name.map(one_line), address),
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
    pub to: &'a EmailAddress,
    pub to_name: Option<&'a str>,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
}

/// Every line ending as CRLF: a bare CR or LF in a body (from the data) must not reach the wire,
/// where lenient relays may read it as the end of a line (an ingredient of SMTP smuggling).
pub fn crlf(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 32);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// A multipart/alternative message (plain text first, then HTML). lettre encodes every header
/// value, so names and subjects cannot add header lines.
pub fn build(sender: &Sender, content: &Content<'_>) -> anyhow::Result<Message> {
    let mut builder = Message::builder()
        .from(sender.from.clone())
        .to(Mailbox::new(
            content.to_name.map(one_line),
            content.to.wire().clone(),
        ))
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
                    .body(crlf(content.text)),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(crlf(content.html)),
            ),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender::new(
            "portal@example.com",
            Some("Developer Portal"),
            Some("support@example.com"),
        )
        .unwrap()
    }

    #[test]
    fn a_name_with_line_breaks_cannot_add_a_header() {
        let sender = sender();
        let message = build(
            &sender,
            &Content {
                notification_id: "n1",
                to: &EmailAddress::parse("ada@example.com").unwrap(),
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
    fn no_bare_cr_or_lf_reaches_the_wire() {
        let sender = sender();
        let message = build(
            &sender,
            &Content {
                notification_id: "n1",
                to: &EmailAddress::parse("ada@example.com").unwrap(),
                to_name: None,
                subject: "Hi",
                text: "Ada\r.\rMAIL FROM:<evil@example.com>\r\nnext\nlast",
                html: "<p>Ada\r.\r</p>",
            },
        )
        .unwrap();
        let raw = message.formatted();
        for (i, b) in raw.iter().enumerate() {
            if *b == b'\r' {
                assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if *b == b'\n' {
                assert!(i > 0 && raw[i - 1] == b'\r', "bare LF at {i}");
            }
        }
    }

    #[test]
    fn an_internationalised_from_domain_is_punycode_in_the_message_id() {
        let sender = Sender::new("portal@bücher.example", None, None).unwrap();
        assert_eq!(sender.message_id("n1"), "<n1@xn--bcher-kva.example>");
        let message = build(
            &sender,
            &Content {
                notification_id: "n1",
                to: &EmailAddress::parse("ada@example.com").unwrap(),
                to_name: None,
                subject: "Hi",
                text: "t",
                html: "h",
            },
        )
        .unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("Message-ID: <n1@xn--bcher-kva.example>"), "{raw}");
    }

    #[test]
    fn no_sender_without_a_valid_from_address() {
        assert!(Sender::new("not an address", None, None).is_none());
    }
}
