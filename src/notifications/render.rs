//! Rendering at accept time: subject from the configured template, text and HTML bodies from the
//! built-in templates embedded in the binary (HTML auto-escaped).

use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment};

use crate::events::Event;

/// Every built-in template, by name. A test checks that each event has both parts.
static TEMPLATES: &[(&str, &str)] = &[
    ("layout.txt", include_str!("templates/layout.txt")),
    ("layout.html", include_str!("templates/layout.html")),
    ("password_reset.txt", include_str!("templates/password_reset.txt")),
    (
        "password_reset.html",
        include_str!("templates/password_reset.html"),
    ),
    (
        "access_request_created.txt",
        include_str!("templates/access_request_created.txt"),
    ),
    (
        "access_request_created.html",
        include_str!("templates/access_request_created.html"),
    ),
    (
        "access_request_approved.txt",
        include_str!("templates/access_request_approved.txt"),
    ),
    (
        "access_request_approved.html",
        include_str!("templates/access_request_approved.html"),
    ),
    (
        "access_request_rejected.txt",
        include_str!("templates/access_request_rejected.txt"),
    ),
    (
        "access_request_rejected.html",
        include_str!("templates/access_request_rejected.html"),
    ),
    (
        "user_registration_pending.txt",
        include_str!("templates/user_registration_pending.txt"),
    ),
    (
        "user_registration_pending.html",
        include_str!("templates/user_registration_pending.html"),
    ),
    ("user_invited.txt", include_str!("templates/user_invited.txt")),
    ("user_invited.html", include_str!("templates/user_invited.html")),
    ("user_activated.txt", include_str!("templates/user_activated.txt")),
    (
        "user_activated.html",
        include_str!("templates/user_activated.html"),
    ),
    (
        "user_deactivated.txt",
        include_str!("templates/user_deactivated.txt"),
    ),
    (
        "user_deactivated.html",
        include_str!("templates/user_deactivated.html"),
    ),
    (
        "organization_registration_requested.txt",
        include_str!("templates/organization_registration_requested.txt"),
    ),
    (
        "organization_registration_requested.html",
        include_str!("templates/organization_registration_requested.html"),
    ),
    (
        "organization_registration_approved.txt",
        include_str!("templates/organization_registration_approved.txt"),
    ),
    (
        "organization_registration_approved.html",
        include_str!("templates/organization_registration_approved.html"),
    ),
    (
        "organization_registration_rejected.txt",
        include_str!("templates/organization_registration_rejected.txt"),
    ),
    (
        "organization_registration_rejected.html",
        include_str!("templates/organization_registration_rejected.html"),
    ),
    (
        "change_request_updated.txt",
        include_str!("templates/change_request_updated.txt"),
    ),
    (
        "change_request_updated.html",
        include_str!("templates/change_request_updated.html"),
    ),
];

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source).expect("built-in templates parse");
        }
        // Default subjects, compiled once ("x.subject" is not .html: no escaping).
        for event in crate::events::EVENTS {
            env.add_template_owned(format!("{}.subject", event.name), event.default_subject)
                .expect("default subjects parse");
        }
        env
    })
}

/// A rendered message, stored with the notification and sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// At most one blank line in a row, no trailing space.
fn tidy_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string() + "\n"
}

/// The longest subject sent (RFC 5322 allows 998 octets per header line; a subject is read in a
/// mail client's list long before that). Longer ones are cut with an ellipsis.
pub const MAX_RENDERED_SUBJECT_CHARS: usize = 255;

/// Why a notification could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The operator's subject template for the event (code and message from the sandbox).
    #[error("the subject template of {event} cannot be used: {refusal}")]
    Subject {
        event: &'static str,
        refusal: crate::sandbox::Refusal,
    },
    /// A built-in template failed: a bug.
    #[error("rendering a built-in template failed: {0}")]
    BuiltIn(#[from] minijinja::Error),
}

/// The default subject of `event`, rendered.
fn default_subject(event: &Event, data: &minijinja::Value) -> Result<String, minijinja::Error> {
    environment()
        .get_template(&format!("{}.subject", event.name))?
        .render(data)
}

/// Cuts `s` to [`MAX_RENDERED_SUBJECT_CHARS`] characters.
fn cut_subject(s: String) -> String {
    if s.chars().count() <= MAX_RENDERED_SUBJECT_CHARS {
        return s;
    }
    let mut cut: String = s.chars().take(MAX_RENDERED_SUBJECT_CHARS - 1).collect();
    cut.push('\u{2026}');
    cut
}

/// Renders a subject template (one line, cut to length; an empty result falls back to the
/// event's default subject, rendered).
pub fn render_subject(
    event: &'static Event,
    subject_template: &str,
    data: &minijinja::Value,
) -> Result<String, RenderError> {
    let subject = if subject_template == event.default_subject {
        default_subject(event, data)?
    } else {
        crate::sandbox::render(subject_template, data).map_err(|refusal| RenderError::Subject {
            event: event.name,
            refusal,
        })?
    };
    let mut subject = crate::mail::message::one_line(&subject);
    if subject.is_empty() {
        subject = crate::mail::message::one_line(&default_subject(event, data)?);
    }
    Ok(cut_subject(subject))
}

pub fn render(
    event: &'static Event,
    subject_template: &str,
    data: &serde_json::Map<String, serde_json::Value>,
) -> Result<Rendered, RenderError> {
    let env = environment();
    let data = minijinja::Value::from(minijinja::value::Serde(data));
    let subject = render_subject(event, subject_template, &data)?;
    let text = env.get_template(&format!("{}.txt", event.name))?.render(&data)?;
    let html = env.get_template(&format!("{}.html", event.name))?.render(&data)?;
    Ok(Rendered {
        subject,
        text: tidy_text(&text),
        html,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EVENTS;

    fn sample_data(event: &Event) -> serde_json::Map<String, serde_json::Value> {
        event
            .all_variables()
            .map(|v| {
                let value = if v.name.ends_with("_url") {
                    format!("https://portal.example.com/{}", v.name)
                } else if v.name.ends_with("_email") {
                    "ada@example.com".to_string()
                } else {
                    format!("<b>{}</b> & co", v.name)
                };
                (v.name.to_string(), serde_json::Value::String(value))
            })
            .collect()
    }

    #[test]
    fn every_event_renders_a_text_and_an_html_part_with_its_variables() {
        for event in EVENTS {
            let data = sample_data(event);
            let r = render(event, event.default_subject, &data).unwrap();
            assert!(!r.subject.is_empty());
            for v in event.variables.iter().filter(|v| v.required) {
                let value = data[v.name].as_str().unwrap();
                assert!(r.text.contains(value), "{}: text lacks {}", event.name, v.name);
                if !v.name.ends_with("_url") && !v.name.ends_with("_email") {
                    // HTML escapes what the data says.
                    assert!(
                        r.html
                            .contains(&format!("&lt;b&gt;{}&lt;&#x2f;b&gt; &amp; co", v.name)),
                        "{}: {}",
                        event.name,
                        r.html
                    );
                    assert!(!r.html.contains(value), "{}: unescaped {}", event.name, v.name);
                }
            }
        }
    }

    #[test]
    fn subjects_are_one_line_whatever_the_data_says() {
        let event = crate::events::find("access_request_approved").unwrap();
        let mut data = serde_json::Map::new();
        data.insert("product_name".into(), "Payments\r\nBcc: eve@example.com".into());
        let r = render(event, event.default_subject, &data).unwrap();
        assert_eq!(
            r.subject,
            "Your access request for Payments Bcc: eve@example.com was approved"
        );
        assert!(!r.subject.contains(['\r', '\n']));
    }
}
