//! Operator-written templates (subjects, bodies, layouts) run here: a minijinja environment with
//! only the features a message needs, bounded work (fuel), bounded recursion and bounded output, so
//! that no template and no data value can hang a thread, exhaust memory or overflow the stack.
//!
//! Fuel counts instructions, not bytes: minijinja builds `'x' * 99999999` or a long `~` chain in
//! single instructions, before any output limit could see them. So every template is first
//! checked on minijinja's own tokens and AST ([`check`]): nesting bounded before the parse, only
//! `if` and `for`, a short list of filters and tests, and a static bound on the string work of one
//! render with the longest data. Then fuel bounds loops and the output writer bounds what is
//! written.

pub mod check;
pub use check::check;

use std::io::Write;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

/// Instructions one render may execute.
const FUEL: u64 = 20_000;
/// Nesting of loops and conditions.
const RECURSION_LIMIT: usize = 20;
/// The longest subject sent (RFC 5322 allows 998 octets per header line; a subject is read in a
/// mail client's list long before that). Longer ones are cut with an ellipsis.
pub const MAX_RENDERED_SUBJECT_CHARS: usize = 255;
/// Bytes one render of a subject may write (subjects are cut much shorter afterwards).
pub const MAX_SUBJECT_OUTPUT: usize = 64 * 1024;
/// Bytes one render of a body (text or HTML) may write.
pub const MAX_BODY_OUTPUT: usize = 512 * 1024;

/// Which part of a message a template renders: it decides escaping and the output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    Text,
    /// Auto-escaped: data can never add markup.
    Html,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Text => "text",
            Self::Html => "html",
        }
    }

    fn max_output(self) -> usize {
        match self {
            Self::Subject => MAX_SUBJECT_OUTPUT,
            Self::Text | Self::Html => MAX_BODY_OUTPUT,
        }
    }
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Would take too much work or memory (`template_too_expensive`).
    TooExpensive(String),
    /// Does not parse, or does not render (`invalid_template`).
    Invalid(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooExpensive(_) => "template_too_expensive",
            Self::Invalid(_) => "invalid_template",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::TooExpensive(m) | Self::Invalid(m) => m,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// The environment for operator templates: no builtins but a short list of filters that never
/// make a string longer than their input and arguments. HTML is auto-escaped, text and subjects
/// are not.
pub fn environment(part: Part) -> &'static Environment<'static> {
    static PLAIN: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    static HTML: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    let (cell, escape) = match part {
        Part::Html => (&HTML, AutoEscape::Html),
        Part::Subject | Part::Text => (&PLAIN, AutoEscape::None),
    };
    cell.get_or_init(|| build_environment(escape))
}

fn build_environment(escape: AutoEscape) -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_auto_escape_callback(move |_| escape.clone());
    env.set_formatter(html_formatter);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.add_filter("upper", minijinja::filters::upper);
    env.add_filter("lower", minijinja::filters::lower);
    env.add_filter("title", minijinja::filters::title);
    env.add_filter("capitalize", minijinja::filters::capitalize);
    env.add_filter("trim", minijinja::filters::trim);
    env.add_filter("default", minijinja::filters::default);
    env.add_filter("d", minijinja::filters::default);
    env.add_filter("length", minijinja::filters::length);
    env.add_filter("first", minijinja::filters::first);
    env.add_filter("last", minijinja::filters::last);
    env.add_filter("string", minijinja::filters::string);
    env.add_filter("escape", escape_filter);
    env.add_filter("e", escape_filter);
    env.add_filter("truncate", truncate);
    env.add_test("defined", minijinja::tests::is_defined);
    env.add_test("undefined", minijinja::tests::is_undefined);
    env.add_test("none", minijinja::tests::is_none);
    env
}

/// Escapes text for HTML: `&`, `<`, `>`, `"` and `'`, which is all that is needed in element
/// content and quoted attributes. minijinja's own escaping also turns `/` into `&#x2f;`, valid
/// but noise in every link of every mail's source.
/// Written straight into `out`, in runs between the characters it replaces (no copy per value).
pub fn escape_html(text: &str, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#x27;",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

/// The output formatter of every environment: strings in an HTML-escaped context go through
/// [`escape_html`]; everything else (safe strings, numbers, plain-text contexts) as minijinja does.
pub fn html_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(text) if matches!(state.auto_escape(), AutoEscape::Html) && !value.is_safe() => {
            escape_html(text, out).map_err(minijinja::Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// `escape` / `e`: marks the value safe after [`escape_html`] (a safe value stays as it is).
fn escape_filter(value: &Value) -> Value {
    if value.is_safe() {
        return value.clone();
    }
    let text = value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    let mut escaped = String::with_capacity(text.len());
    // Writing into a String cannot fail.
    let _ = escape_html(&text, &mut escaped);
    Value::from_safe_string(escaped)
}

/// `truncate(length=255, end='...')`: cut to `length` characters, ending in `end`.
fn truncate(value: String, length: Option<usize>, end: Option<String>) -> String {
    let length = length.unwrap_or(255);
    if value.chars().count() <= length {
        return value;
    }
    let end = end.unwrap_or_else(|| "...".into());
    let keep = length.saturating_sub(end.chars().count());
    value.chars().take(keep).chain(end.chars()).collect()
}

/// Stops writing after its limit.
struct Capped(Vec<u8>, usize);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(std::io::Error::other("output limit reached"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a subject template (see [`render_part`]).
pub fn render(source: &str, data: &Value) -> Result<String, Refusal> {
    render_part(source, data, Part::Subject)
}

/// Renders `source` as `part` with `data`, within the bounds. The template is checked first,
/// also when it was stored: one saved by an older version may not pass today's check.
pub fn render_part(source: &str, data: &Value, part: Part) -> Result<String, Refusal> {
    check(source)?;
    let env = environment(part);
    let template = env
        .template_from_str(source)
        .map_err(|e| Refusal::Invalid(describe(&e)))?;
    let limit = part.max_output();
    let mut out = Capped(Vec::new(), limit);
    match template.render_captured_to(data, &mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out.0).into_owned()),
        Err(e) => Err(match e.kind() {
            ErrorKind::OutOfFuel => {
                Refusal::TooExpensive("rendering takes too many steps (too many loop iterations)".into())
            }
            ErrorKind::WriteFailure => Refusal::TooExpensive(format!(
                "the rendered {} is longer than {} KiB",
                part.name(),
                limit / 1024
            )),
            _ if e.to_string().contains("recursion") => {
                Refusal::TooExpensive("the template nests too deeply".into())
            }
            _ => Refusal::Invalid(describe(&e)),
        }),
    }
}

pub fn describe(e: &minijinja::Error) -> String {
    let detail = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    match e.kind() {
        ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction => format!(
            "{detail}; templates may use the filters {}",
            check::FILTERS.join(", ")
        ),
        _ => detail,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_escaping_leaves_slashes_alone_but_escapes_markup_and_quotes() {
        let env = environment(Part::Html);
        let out = env
            .render_str(
                "<a href=\"{{ url }}\">{{ name }}</a> {{ name|e }}",
                minijinja::context! { url => "https://x.example/a?b=1&c='2'", name => "<b>\"A\" & B</b>" },
            )
            .unwrap();
        assert_eq!(
            out,
            "<a href=\"https://x.example/a?b=1&amp;c=&#x27;2&#x27;\">&lt;b&gt;&quot;A&quot; &amp; B&lt;/b&gt;</a> \
             &lt;b&gt;&quot;A&quot; &amp; B&lt;/b&gt;"
        );
    }

    use super::*;

    fn data() -> Value {
        Value::from(minijinja::value::Serde(
            serde_json::json!({"user_name": "Ada", "product_name": "Payments"}),
        ))
    }

    #[test]
    fn ordinary_subjects_render() {
        assert_eq!(
            render("Welcome {{ user_name | upper }} to {{ product_name }}", &data()).unwrap(),
            "Welcome ADA to Payments"
        );
        assert_eq!(
            render(
                "{% if user_name %}Hi {{ user_name }}{% else %}Hi{% endif %}",
                &data()
            )
            .unwrap(),
            "Hi Ada"
        );
        assert_eq!(render("{{ missing | default('x') }}", &data()).unwrap(), "x");
        assert_eq!(
            render("{{ product_name | truncate(5, '.') }}", &data()).unwrap(),
            "Paym."
        );
    }

    #[test]
    fn templates_that_would_hang_or_exhaust_memory_are_too_expensive() {
        for source in [
            "{% for a in 'x'*99999 %}{% for b in 'x'*99999 %}{% endfor %}{% endfor %}",
            "{{ 'x' * 100000000 }}",
            "{% set s='x'*99999999 %}{{ s~s~s~s~s~s~s~s }}",
            "{{ 'x' * 10 }}",
            "{% for a in user_name %}{{ 123456 }}{% endfor %}",
        ] {
            let refusal = render(source, &data()).unwrap_err();
            assert_eq!(refusal.code(), "template_too_expensive", "{source}: {refusal}");
        }
        // Loops within the numbers allowed still run out of fuel, not time.
        let nested = "{% for a in [1,2,3,4,5,6,7,8,9,10] %}".repeat(6) + &"{% endfor %}".repeat(6);
        assert_eq!(
            render(&nested, &data()).unwrap_err().code(),
            "template_too_expensive"
        );
    }

    #[test]
    fn templates_that_cannot_render_are_invalid() {
        for source in [
            "Access to {{ product_name|tojson }}",
            "Welcome {{ user_name | nosuchfilter }}",
            "{% set a = 1 %}{{ a }}",
            "{% macro m() %}x{% endmacro %}",
            "{{ range(10) }}",
            "{{ user_name",
        ] {
            let refusal = render(source, &data()).unwrap_err();
            assert_eq!(refusal.code(), "invalid_template", "{source}: {refusal}");
        }
    }

    #[test]
    fn operators_inside_string_literals_are_only_text() {
        assert_eq!(render("{{ 'a*b 99999' }} 5*5", &data()).unwrap(), "a*b 99999 5*5");
    }
}
