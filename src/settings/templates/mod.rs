//! Email templates as data: a subject, a text and an HTML part per event and locale, any of them
//! optional, looked up along the locale chain (`pt-BR` -> `pt` -> default locale -> built-in). The
//! pseudo-event `layout` is the frame around every body (`{{ content }}`).
//!
//! The subjects of the default locale are the subjects document of `PUT /settings/subjects`, so
//! that endpoint keeps working unchanged; every other part lives in the templates document.

pub mod builtin;
pub mod data;
pub mod http;
pub mod preview;
pub mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::branding::{self, Branding};
use super::locale;
use super::subjects::{self, CustomSubjects};
use crate::db::DbConnection;
use crate::db::StoreError;
use crate::error::FieldError;
use crate::events::{self, Event, MAX_VALUE_CHARS};
use crate::sandbox::{self, Part, Refusal};
use crate::store::settings::{self as store, Stored};
use crate::validation::{check_header_text, Errors, Field};

pub const KEY: &str = "templates";
/// The pseudo-event of the layout.
pub const LAYOUT: &str = "layout";
/// Longest template source per part.
const MAX_SOURCE_CHARS: usize = 100_000;

/// The parts of one template; an absent part falls back along the locale chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateParts {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl TemplateParts {
    pub fn get(&self, part: Part) -> Option<&str> {
        match part {
            Part::Subject => self.subject.as_deref(),
            Part::Text => self.text.as_deref(),
            Part::Html => self.html.as_deref(),
        }
        .filter(|s| !s.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        [Part::Subject, Part::Text, Part::Html]
            .into_iter()
            .all(|p| self.get(p).is_none())
    }
}

/// One stored template with its own version (its ETag) and author.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTemplate {
    #[serde(flatten)]
    pub parts: TemplateParts,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Stored templates by `event/locale`.
pub type Templates = BTreeMap<String, StoredTemplate>;

pub fn entry_key(event: &str, locale: &str) -> String {
    format!("{event}/{locale}")
}

/// What a template may be stored for: an event of the catalogue, or the layout.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Event(&'static Event),
    Layout,
}

impl Target {
    pub fn find(name: &str) -> Option<Self> {
        if name == LAYOUT {
            Some(Self::Layout)
        } else {
            events::find(name).map(Self::Event)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Event(e) => e.name,
            Self::Layout => LAYOUT,
        }
    }

    fn has_variable(self, name: &str) -> bool {
        matches!(name, "branding" | "locale")
            || match self {
                Self::Event(e) => e.has_variable(name),
                Self::Layout => name == "content" || events::COMMON_VARIABLES.iter().any(|v| v.name == name),
            }
    }

    fn variable_names(self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = match self {
            Self::Event(e) => e.all_variables().map(|v| v.name).collect(),
            Self::Layout => {
                let mut n: Vec<&'static str> = events::COMMON_VARIABLES.iter().map(|v| v.name).collect();
                n.push("content");
                n
            }
        };
        names.extend(["branding", "locale"]);
        names
    }

    /// Example data (`longest`: every value at its longest) for checking a template at save.
    fn data(self, part: Part, longest: bool) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Event(e) if longest => e.longest_data(),
            Self::Event(e) => e.example_data(),
            Self::Layout => {
                let mut data: serde_json::Map<String, serde_json::Value> = events::COMMON_VARIABLES
                    .iter()
                    .map(|v| (v.name.to_string(), v.example.into()))
                    .collect();
                let body = match part {
                    Part::Html => "<p>Hello Ada,</p><p>An example message.</p>",
                    _ => "Hello Ada,\n\nAn example message.",
                };
                let body = if longest {
                    body.repeat(MAX_VALUE_CHARS / body.len())
                } else {
                    body.to_string()
                };
                data.insert("content".into(), body.into());
                data
            }
        }
    }
}

/// Everything rendering needs, read once per request: default locale, the default locale's
/// subjects, the stored templates and the branding.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub default_locale: String,
    pub subjects: CustomSubjects,
    pub templates: Templates,
    pub branding: Branding,
}

/// Where an effective part comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Stored for this locale of the chain.
    Locale(String),
    Builtin,
}

impl Catalog {
    pub fn load(conn: &mut DbConnection) -> Result<Self, StoreError> {
        Ok(Self {
            default_locale: locale::default_locale(conn)?,
            subjects: subjects::load(conn)?,
            templates: load(conn)?.map(|s| s.value).unwrap_or_default(),
            branding: branding::load(conn)?,
        })
    }

    /// The parts stored for exactly `target`/`locale` (the default locale's subject included).
    pub fn stored(&self, target: &str, locale: &str) -> TemplateParts {
        let mut parts = self
            .templates
            .get(&entry_key(target, locale))
            .map(|t| t.parts.clone())
            .unwrap_or_default();
        if locale == self.default_locale {
            parts.subject = self.subjects.get(target).cloned();
        }
        parts
    }

    /// The template in effect for one part, and where it comes from (None: the built-in).
    pub fn effective(&self, target: &str, locale: &str, part: Part) -> (Option<String>, Origin) {
        for tag in locale::chain(locale, &self.default_locale) {
            if let Some(source) = self.stored(target, &tag).get(part) {
                return (Some(source.to_string()), Origin::Locale(tag));
            }
        }
        (None, Origin::Builtin)
    }

    /// With `draft` standing in for what is stored for exactly `target`/`locale` (a preview).
    pub fn with_draft(&self, target: &str, locale: &str, draft: TemplateParts) -> Self {
        let mut next = self.clone();
        if locale == self.default_locale {
            match &draft.subject {
                Some(s) => next.subjects.insert(target.to_string(), s.clone()),
                None => next.subjects.remove(target),
            };
        }
        next.templates.insert(
            entry_key(target, locale),
            StoredTemplate {
                parts: draft,
                version: 0,
                updated_at: 0,
                updated_by: String::new(),
            },
        );
        next
    }
}

/// The catalog every accepted notification renders with, read again only when one of its four
/// documents changed (it is parsed JSON, templates included: too much to redo per request).
#[derive(Default)]
pub struct CatalogCache(std::sync::Mutex<Option<Cached>>);

/// A catalog, the document versions it was read at, and when they were last compared.
struct Cached {
    versions: Vec<(String, i64)>,
    catalog: std::sync::Arc<Catalog>,
    /// None once a write through this process made it unusable until compared again.
    checked: Option<std::time::Instant>,
    /// Since when one request has been comparing versions after the fresh window ended.
    refreshing: Option<std::time::Instant>,
}

/// How long a catalog is used without asking the database whether its documents changed. Writes
/// through this process end the window at once ([`CatalogCache::invalidate`]); a write through
/// another instance sharing the database is seen within this time.
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A comparison that has not finished in this time is presumed lost, and another request makes
/// one.
const REFRESH_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl CatalogCache {
    /// The catalog without touching the database, while it is known to be fresh. When the fresh
    /// window has just ended, one caller gets None (and compares versions with [`Self::get`])
    /// while the others keep using the catalog for the few milliseconds that takes: without
    /// this, every request in flight reads the database at once each second, and on PostgreSQL
    /// (one pool for reads and writes) the committer waits for a connection behind them. After
    /// [`Self::invalidate`] every caller gets None.
    pub fn fresh(&self) -> Option<std::sync::Arc<Catalog>> {
        let mut cached = self.lock();
        let c = cached.as_mut()?;
        let checked = c.checked?;
        if checked.elapsed() < FRESH_FOR {
            return Some(c.catalog.clone());
        }
        match c.refreshing {
            Some(since) if since.elapsed() < REFRESH_LOST_AFTER => Some(c.catalog.clone()),
            _ => {
                c.refreshing = Some(std::time::Instant::now());
                None
            }
        }
    }

    /// The catalog: from memory while it is fresh, else checked against the database (which a
    /// request for every notification would otherwise pay).
    pub async fn current(
        cache: std::sync::Arc<Self>,
        db: &crate::db::Db,
    ) -> Result<std::sync::Arc<Catalog>, StoreError> {
        if let Some(catalog) = cache.fresh() {
            return Ok(catalog);
        }
        db.read(move |conn| cache.get(conn)).await
    }

    /// The catalog, read again only when one of its documents changed.
    pub fn get(&self, conn: &mut DbConnection) -> Result<std::sync::Arc<Catalog>, StoreError> {
        let result = self.compare_and_load(conn);
        if let Some(c) = &mut *self.lock() {
            c.refreshing = None;
        }
        result
    }

    fn compare_and_load(&self, conn: &mut DbConnection) -> Result<std::sync::Arc<Catalog>, StoreError> {
        let versions = store::versions(conn, &[locale::KEY, subjects::KEY, KEY, branding::KEY])?;
        let now = std::time::Instant::now();
        if let Some(c) = &mut *self.lock() {
            if c.versions == versions {
                c.checked = Some(now);
                return Ok(c.catalog.clone());
            }
        }
        // Read after the versions: at worst newer than they say, and then reloaded next time.
        let catalog = std::sync::Arc::new(Catalog::load(conn)?);
        *self.lock() = Some(Cached {
            versions,
            catalog: catalog.clone(),
            checked: Some(now),
            refreshing: None,
        });
        Ok(catalog)
    }

    /// After a write of one of the catalog's documents (called once it has committed): the next
    /// `get` compares versions again.
    pub fn invalidate(&self) {
        if let Some(c) = &mut *self.lock() {
            c.checked = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn cache_checked_at(at: Option<Instant>) -> CatalogCache {
        CatalogCache(std::sync::Mutex::new(Some(Cached {
            versions: vec![],
            catalog: Default::default(),
            checked: at,
            refreshing: None,
        })))
    }

    #[test]
    fn when_the_fresh_window_ends_one_caller_compares_and_the_others_keep_the_catalog() {
        let cache = cache_checked_at(Some(Instant::now() - FRESH_FOR - Duration::from_millis(1)));
        assert!(cache.fresh().is_none(), "the first caller compares versions");
        for _ in 0..10 {
            assert!(cache.fresh().is_some(), "the others do not all read the database");
        }
    }

    #[test]
    fn a_comparison_presumed_lost_is_made_again_by_the_next_caller() {
        let cache = cache_checked_at(Some(Instant::now() - FRESH_FOR - Duration::from_millis(1)));
        assert!(cache.fresh().is_none());
        if let Some(c) = &mut *cache.lock() {
            c.refreshing = Some(Instant::now() - REFRESH_LOST_AFTER);
        }
        assert!(cache.fresh().is_none());
    }

    #[test]
    fn after_a_local_write_no_caller_uses_the_old_catalog() {
        let cache = cache_checked_at(Some(Instant::now()));
        assert!(cache.fresh().is_some());
        cache.invalidate();
        for _ in 0..3 {
            assert!(cache.fresh().is_none());
        }
    }
}

pub fn load(conn: &mut DbConnection) -> Result<Option<Stored<Templates>>, StoreError> {
    store::load::<Templates>(conn, KEY)
}

/// `PUT /settings/templates/{event}/{locale}` body and the `template` of a preview.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({
    "subject": "Zugang zu {{ product_name }} genehmigt",
    "text": "Hallo {{ user_name }},\n\nIhr Zugang zu {{ product_name }} wurde genehmigt.",
    "html": "<p>Hallo {{ user_name }},</p><p>Ihr Zugang zu <b>{{ product_name }}</b> wurde genehmigt.</p>"
}), min_properties = 1)]
pub struct TemplateInput {
    /// One line; no HTML.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub subject: Field<String>,
    /// The plain-text body.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub text: Field<String>,
    /// The HTML body (auto-escaped: data cannot add markup).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub html: Field<String>,
}

impl TemplateInput {
    /// Checks every part against `target` (rendering each against example data and against the
    /// longest data); field errors are prefixed with `prefix`.
    pub fn parse(self, target: Target, prefix: &str, errors: &mut Errors) -> TemplateParts {
        let part = |errors: &mut Errors, value: Field<String>, p: Part| {
            let field = format!("{prefix}{}", p.name());
            let source = errors
                .optional(&field, value, "a string")
                .filter(|s| !s.trim().is_empty())?;
            check_part(errors, &field, target, p, &source).then_some(source)
        };
        TemplateParts {
            subject: part(errors, self.subject, Part::Subject),
            text: part(errors, self.text, Part::Text),
            html: part(errors, self.html, Part::Html),
        }
    }
}

/// Checks one part of a template at save; on failure adds a field error and returns false.
pub fn check_part(errors: &mut Errors, field: &str, target: Target, part: Part, source: &str) -> bool {
    if part == Part::Subject {
        let Target::Event(event) = target else {
            errors.add(field, "not_allowed", "the layout has no subject");
            return false;
        };
        if !check_header_text(errors, field, source, subjects::MAX_SUBJECT_CHARS) {
            return false;
        }
        return match subjects::check_subject_rendering(event, source) {
            Ok(()) => true,
            Err(e) => {
                // One code for every template that does not render, whatever the part.
                let code = if e.code == "unknown_variable" {
                    "invalid_template"
                } else {
                    e.code.as_str()
                };
                errors.add(field, code, format!("{field}: {}", e.message));
                false
            }
        };
    }
    if source.chars().count() > MAX_SOURCE_CHARS {
        errors.add(
            field,
            "too_long",
            format!("{field} must be at most {MAX_SOURCE_CHARS} characters"),
        );
        return false;
    }
    match check_body(target, part, source) {
        Ok(()) => true,
        Err(e) => {
            errors.add(field, &e.code, format!("{field}: {}", e.message));
            false
        }
    }
}

/// Syntax, variables, and renders against example and longest data within the sandbox's bounds.
fn check_body(target: Target, part: Part, source: &str) -> Result<(), FieldError> {
    let refused = |r: Refusal| FieldError {
        field: String::new(),
        code: r.code().to_string(),
        message: r.message().to_string(),
    };
    sandbox::check(source).map_err(refused)?;
    let template = sandbox::environment(part)
        .template_from_str(source)
        .map_err(|e| refused(Refusal::Invalid(sandbox::describe(&e))))?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !target.has_variable(v))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(FieldError {
            field: String::new(),
            code: "invalid_template".into(),
            message: format!(
                "unknown variable {} for {}; it may use: {}",
                unknown.join(", "),
                target.name(),
                target.variable_names().join(", ")
            ),
        });
    }
    for longest in [false, true] {
        let ctx = context(&target.data(part, longest), &example_branding(), "en", part);
        sandbox::render_part(source, &ctx, part).map_err(refused)?;
    }
    Ok(())
}

fn example_branding() -> Branding {
    Branding {
        product_name: Some("Developer Portal".into()),
        product_url: Some("https://portal.example.com".into()),
        logo_url: Some("https://portal.example.com/logo.png".into()),
        primary_color: Some("#0b5fff".into()),
        footer_text: Some("Example Corp".into()),
        support_email: Some("support@example.com".into()),
    }
}

/// What a template sees: the data, `branding.*` and `locale`. In the HTML layout `content` is
/// the rendered HTML body, marked safe so that it is not escaped twice.
pub fn context(
    data: &serde_json::Map<String, serde_json::Value>,
    branding: &Branding,
    locale: &str,
    part: Part,
) -> minijinja::Value {
    let mut map: BTreeMap<String, minijinja::Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), minijinja::Value::from(minijinja::value::Serde(v))))
        .collect();
    if part == Part::Html {
        if let Some(serde_json::Value::String(content)) = data.get("content") {
            map.insert(
                "content".into(),
                minijinja::Value::from_safe_string(content.clone()),
            );
        }
    }
    map.insert(
        "branding".into(),
        minijinja::Value::from(minijinja::value::Serde(branding)),
    );
    map.insert("locale".into(), minijinja::Value::from(locale));
    minijinja::Value::from(map)
}
