//! The portal's branding: product name and link, logo, colour, footer and support address. Every
//! template sees it as `branding.*`; the built-in layout uses it.

pub mod http;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::error::ApiError;
use crate::store::settings as store;
use crate::validation::{check_email, check_header_text, Errors, Field};

pub const KEY: &str = "branding";

/// The stored document (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Branding {
    #[schema(example = "Developer Portal")]
    pub product_name: Option<String>,
    #[schema(example = "https://portal.example.com")]
    pub product_url: Option<String>,
    /// https only.
    #[schema(example = "https://portal.example.com/logo.png")]
    pub logo_url: Option<String>,
    /// `#rrggbb`.
    #[schema(example = "#0b5fff")]
    pub primary_color: Option<String>,
    #[schema(example = "Example Corp, 1 Main Street, Springfield")]
    pub footer_text: Option<String>,
    #[schema(example = "support@example.com")]
    pub support_email: Option<String>,
}

/// `PUT /settings/branding` body: the whole document (fields left out or null are cleared).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"product_name": "Developer Portal", "product_url": "https://portal.example.com",
    "logo_url": "https://portal.example.com/logo.png", "primary_color": "#0b5fff",
    "footer_text": "Example Corp, 1 Main Street, Springfield", "support_email": "support@example.com"}))]
pub struct BrandingInput {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub product_name: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub product_url: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub logo_url: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^#[0-9a-fA-F]{6}$")]
    pub primary_color: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub footer_text: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email)]
    pub support_email: Field<String>,
}

fn is_url(s: &str, https_only: bool) -> bool {
    use validator::ValidateUrl;
    let scheme_ok = s.starts_with("https://") || (!https_only && s.starts_with("http://"));
    scheme_ok && s.validate_url() && !s.chars().any(|c| c.is_whitespace() || c == '"')
}

impl BrandingInput {
    /// Validates every field at once.
    pub fn parse(self) -> Result<Branding, ApiError> {
        let mut errors = Errors::default();
        let text = |errors: &mut Errors, name: &str, value: Field<String>, max: usize| {
            let v = errors
                .optional(name, value, "a string")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty());
            if let Some(v) = &v {
                if v.chars().count() > max {
                    errors.add(
                        name,
                        "too_long",
                        format!("{name} must be at most {max} characters"),
                    );
                }
            }
            v
        };
        let product_name = text(&mut errors, "product_name", self.product_name, 100);
        if let Some(n) = &product_name {
            check_header_text(&mut errors, "product_name", n, 100);
        }
        let product_url = text(&mut errors, "product_url", self.product_url, 2000);
        if product_url.as_deref().is_some_and(|u| !is_url(u, false)) {
            errors.add(
                "product_url",
                "invalid_url",
                "product_url must be an http:// or https:// URL",
            );
        }
        let logo_url = text(&mut errors, "logo_url", self.logo_url, 2000);
        if logo_url.as_deref().is_some_and(|u| !is_url(u, true)) {
            errors.add("logo_url", "invalid_url", "logo_url must be an https:// URL");
        }
        let primary_color = text(&mut errors, "primary_color", self.primary_color, 7);
        let is_color =
            |c: &str| c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|h| h.is_ascii_hexdigit());
        if primary_color.as_deref().is_some_and(|c| !is_color(c)) {
            errors.add(
                "primary_color",
                "invalid_color",
                "primary_color must look like #0b5fff",
            );
        }
        let footer_text = text(&mut errors, "footer_text", self.footer_text, 1000);
        let support_email = text(&mut errors, "support_email", self.support_email, 254);
        if let Some(e) = &support_email {
            check_email(&mut errors, "support_email", e);
        }
        errors.finish()?;
        Ok(Branding {
            product_name,
            product_url,
            logo_url,
            primary_color: primary_color.map(|c| c.to_ascii_lowercase()),
            footer_text,
            support_email,
        })
    }
}

/// The branding in effect (empty until set).
pub fn load(conn: &mut DbConnection) -> Result<Branding, crate::db::StoreError> {
    Ok(store::load::<Branding>(conn, KEY)?
        .map(|s| s.value)
        .unwrap_or_default())
}
