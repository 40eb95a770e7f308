//! Locales: BCP 47 language tags (`en`, `de`, `pt-BR`) in canonical case, the default locale
//! setting, and the fallback chain a template is looked up along.

pub mod http;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::db::StoreError;
use crate::store::settings as store;
use crate::validation::Field;

pub const KEY: &str = "locale";
pub const BUILTIN_DEFAULT: &str = "en";

/// A well-formed language tag, always in canonical case: two values that name the same locale
/// are equal. Made only by [`Locale::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Locale(String);

impl Locale {
    /// The tag in canonical case; None when `tag` is not a well-formed tag (`_` is read as `-`).
    pub fn parse(tag: &str) -> Option<Self> {
        canonical(tag).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Locale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A language tag in canonical case: language lower (`pt`), script title (`Latn`), region upper
/// (`BR`), anything else lower. None when `tag` is not a well-formed tag.
fn canonical(tag: &str) -> Option<String> {
    let tag = tag.trim().replace('_', "-");
    let parts: Vec<&str> = tag.split('-').collect();
    let language = parts.first()?;
    if !(2..=3).contains(&language.len()) || !language.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut out = vec![language.to_ascii_lowercase()];
    for part in &parts[1..] {
        if part.is_empty() || part.len() > 8 || !part.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let canonical = match part.len() {
            4 if part.chars().all(|c| c.is_ascii_alphabetic()) => {
                let lower = part.to_ascii_lowercase();
                lower[..1].to_ascii_uppercase() + &lower[1..]
            }
            2 if part.chars().all(|c| c.is_ascii_alphabetic()) => part.to_ascii_uppercase(),
            _ => part.to_ascii_lowercase(),
        };
        out.push(canonical);
    }
    (tag.len() <= 35).then(|| out.join("-"))
}

/// Where a template is looked up for `locale`, most specific first: the tag, its language, the
/// default locale (and its language). Each appears once.
pub fn chain(locale: &str, default_locale: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |tag: &str| {
        if !tag.is_empty() && !out.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            out.push(tag.to_string());
        }
    };
    for tag in [locale, default_locale] {
        push(tag);
        if let Some((language, _)) = tag.split_once('-') {
            push(language);
        }
    }
    out
}

/// The stored document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocaleSettings {
    pub default_locale: String,
}

/// `PUT /settings/locale` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LocaleInput {
    /// The locale used when a notification names none, and the last step before the built-in
    /// templates in every fallback chain. `PUT /settings/subjects` edits this locale's subjects.
    #[serde(default)]
    #[schema(value_type = String, example = "en", required = true, pattern = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$", max_length = 35)]
    pub default_locale: Field<String>,
}

/// The default locale (`en` until set).
pub fn default_locale(conn: &mut DbConnection) -> Result<String, StoreError> {
    Ok(store::load::<LocaleSettings>(conn, KEY)?
        .map(|s| s.value.default_locale)
        .unwrap_or_else(|| BUILTIN_DEFAULT.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_compared_in_canonical_case() {
        assert_eq!(canonical("PT-br").as_deref(), Some("pt-BR"));
        assert_eq!(canonical("zh-hant-tw").as_deref(), Some("zh-Hant-TW"));
        assert_eq!(canonical("de_AT").as_deref(), Some("de-AT"));
        assert_eq!(canonical("EN").as_deref(), Some("en"));
        for bad in ["", "e", "english", "de--AT", "de AT", "12", "de-ÄT"] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_chain_goes_from_the_tag_to_its_language_to_the_default() {
        assert_eq!(chain("pt-BR", "en"), ["pt-BR", "pt", "en"]);
        assert_eq!(chain("de", "de"), ["de"]);
        assert_eq!(chain("fr", "en-GB"), ["fr", "en-GB", "en"]);
    }
}
