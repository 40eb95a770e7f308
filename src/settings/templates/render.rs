//! Rendering at accept time: each part from the operator's template in effect for the locale (in
//! the sandbox), or from the built-in one; the body framed by the layout; branding everywhere.

use crate::events::Event;
use crate::mail::message::one_line;
use crate::sandbox::Part;
pub use crate::sandbox::MAX_RENDERED_SUBJECT_CHARS;
use crate::settings::templates::builtin::environment;
use crate::settings::templates::{context, Catalog, Origin, LAYOUT};

/// A rendered message, stored with the notification and sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The locale whose templates were used: the first of the chain that supplied a part, else
    /// the default locale.
    pub locale: String,
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

/// Why a notification could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An operator's template (code and message from the sandbox).
    #[error("the {part} template of {event} cannot be used: {refusal}")]
    Template {
        event: &'static str,
        part: &'static str,
        refusal: crate::sandbox::Refusal,
    },
    /// A built-in template failed: a bug.
    #[error("rendering a built-in template failed: {0}")]
    BuiltIn(#[from] minijinja::Error),
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

/// One rendering: the catalog, the event, the locale chain's head and the data.
struct Job<'a> {
    catalog: &'a Catalog,
    event: &'static Event,
    locale: &'a str,
    data: &'a serde_json::Map<String, serde_json::Value>,
    /// Locales that supplied a part, in chain order.
    used: Vec<String>,
}

impl Job<'_> {
    /// Renders one part of `target` (the event or the layout) with `data`: the stored template
    /// in effect in the sandbox, else the built-in `builtin` template.
    fn part(
        &mut self,
        target: &'static str,
        part: Part,
        data: &serde_json::Map<String, serde_json::Value>,
        builtin: &str,
    ) -> Result<String, RenderError> {
        let ctx = context(data, &self.catalog.branding, self.locale, part);
        match self.catalog.effective(target, self.locale, part) {
            (Some(source), Origin::Locale(tag)) => {
                if !self.used.contains(&tag) {
                    self.used.push(tag);
                }
                crate::sandbox::render_part(&source, &ctx, part).map_err(|refusal| RenderError::Template {
                    event: self.event.name,
                    part: part.name(),
                    refusal,
                })
            }
            _ => Ok(environment().get_template(builtin)?.render(&ctx)?),
        }
    }

    fn has_custom(&self, target: &str, part: Part) -> bool {
        self.catalog.effective(target, self.locale, part).0.is_some()
    }
}

/// Renders a notification of `event` in `locale` (None: the default locale) with the catalog's
/// templates, layout and branding.
pub fn render(
    catalog: &Catalog,
    event: &'static Event,
    locale: Option<&str>,
    data: &serde_json::Map<String, serde_json::Value>,
) -> Result<Rendered, RenderError> {
    let locale = locale.unwrap_or(&catalog.default_locale);
    let mut job = Job {
        catalog,
        event,
        locale,
        data,
        used: Vec::new(),
    };
    let subject = job.part(
        event.name,
        Part::Subject,
        data,
        &format!("{}.subject", event.name),
    )?;
    let mut subject = one_line(&subject);
    if subject.is_empty() {
        let ctx = context(data, &catalog.branding, locale, Part::Subject);
        subject = one_line(
            &environment()
                .get_template(&format!("{}.subject", event.name))?
                .render(&ctx)?,
        );
    }
    let html_body = job.part(event.name, Part::Html, data, &format!("{}.html", event.name))?;
    // Only an HTML body of its own and no text anywhere on the chain: the text is derived from it,
    // so that every message keeps a plain-text part that says the same.
    let text_body = if job.has_custom(event.name, Part::Html) && !job.has_custom(event.name, Part::Text) {
        html2text::from_read(html_body.as_bytes(), 78).unwrap_or_default()
    } else {
        job.part(event.name, Part::Text, data, &format!("{}.txt", event.name))?
    };
    let mut framed = job.data.clone();
    framed.insert("content".into(), html_body.into());
    let html = job.part(LAYOUT, Part::Html, &framed, "layout.html")?;
    framed.insert("content".into(), text_body.into());
    let text = job.part(LAYOUT, Part::Text, &framed, "layout.txt")?;
    Ok(Rendered {
        subject: cut_subject(subject),
        text: tidy_text(&text),
        html,
        locale: job
            .used
            .first()
            .cloned()
            .unwrap_or_else(|| catalog.default_locale.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EVENTS;

    fn catalog() -> Catalog {
        Catalog {
            default_locale: "en".into(),
            ..Default::default()
        }
    }

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
            let r = render(&catalog(), event, None, &data).unwrap();
            assert!(!r.subject.is_empty());
            for v in event.variables.iter().filter(|v| v.required) {
                let value = data[v.name].as_str().unwrap();
                assert!(r.text.contains(value), "{}: text lacks {}", event.name, v.name);
                if !v.name.ends_with("_url") && !v.name.ends_with("_email") {
                    // HTML escapes what the data says.
                    assert!(
                        r.html
                            .contains(&format!("&lt;b&gt;{}&lt;/b&gt; &amp; co", v.name)),
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
        let r = render(&catalog(), event, None, &data).unwrap();
        assert_eq!(
            r.subject,
            "Your access request for Payments Bcc: eve@example.com was approved"
        );
        assert!(!r.subject.contains(['\r', '\n']));
    }
}
