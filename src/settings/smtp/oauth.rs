//! SMTP with OAuth 2.0 (`"auth": "oauth2"`): the provider settings, their write-only secrets
//! (sealed like the password, kept only for the same SMTP server and account and the same
//! provider, token URL, tenant and client), and
//! the token source they describe for `mail`.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{ApiError, FieldError};
use crate::mail::oauth::{check_token_url, Grant, TokenSource};
use crate::mail::MailContext;
use crate::secrets::{Sealed, SecretCipher};
use crate::validation::{check_header_text, Errors, Field};

/// Associated data of each sealed OAuth secret.
const SECRET_PURPOSE: &str = "smtp.oauth2";

/// How the SMTP session authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// `username` and `password` (AUTH PLAIN or LOGIN).
    #[default]
    Password,
    /// `username` is the mailbox; an OAuth access token is sent with AUTH XOAUTH2.
    Oauth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft 365: client credentials of an app registration.
    Microsoft,
    /// Google Workspace: a service account with domain-wide delegation.
    Google,
    /// Any provider: a refresh token.
    Generic,
}

impl Provider {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "microsoft" => Some(Self::Microsoft),
            "google" => Some(Self::Google),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

/// The stored provider settings; the three secrets are sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuth2Settings {
    pub provider: Provider,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub token_url: Option<String>,
    pub client_secret: Option<Sealed>,
    pub service_account_json: Option<Sealed>,
    pub refresh_token: Option<Sealed>,
}

impl OAuth2Settings {
    /// Whether stored secrets may be used for `other`: the same provider, token URL, tenant and
    /// client (so that no secret is ever sent to an endpoint it was not entered for).
    fn same_client(&self, other: &OAuth2Draft) -> bool {
        self.provider == other.provider
            && self.token_url == other.token_url
            && self.tenant_id == other.tenant_id
            && self.client_id == other.client_id
    }

    /// The token endpoint in effect.
    pub fn token_url(&self) -> String {
        match (&self.token_url, self.provider) {
            (Some(url), _) => url.clone(),
            (None, Provider::Microsoft) => format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant_id.as_deref().unwrap_or("common")
            ),
            (None, Provider::Google) => "https://oauth2.googleapis.com/token".into(),
            (None, Provider::Generic) => String::new(),
        }
    }

    /// Where tokens come from, with the secrets unsealed (the one place they are).
    pub fn token_source(
        &self,
        cipher: &SecretCipher,
        username: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<TokenSource> {
        let unseal = |sealed: &Option<Sealed>| -> anyhow::Result<Option<SecretString>> {
            sealed
                .as_ref()
                .map(|s| cipher.decrypt(SECRET_PURPOSE, s))
                .transpose()
        };
        let missing = |what: &str| anyhow::anyhow!("stored OAuth settings lack {what}");
        let grant = match self.provider {
            Provider::Microsoft => Grant::ClientCredentials {
                client_id: self.client_id.clone().ok_or_else(|| missing("client_id"))?,
                client_secret: unseal(&self.client_secret)?.ok_or_else(|| missing("client_secret"))?,
                scope: self
                    .scope
                    .clone()
                    .unwrap_or_else(|| "https://outlook.office365.com/.default".into()),
            },
            Provider::Google => {
                let json =
                    unseal(&self.service_account_json)?.ok_or_else(|| missing("service_account_json"))?;
                let key: ServiceAccountKey = serde_json::from_str(json.expose_secret())
                    .map_err(|_| missing("a readable service account key"))?;
                Grant::JwtBearer {
                    client_email: key.client_email,
                    private_key_pem: SecretString::from(key.private_key),
                    subject: username.to_string(),
                    scope: self
                        .scope
                        .clone()
                        .unwrap_or_else(|| "https://mail.google.com/".into()),
                }
            }
            Provider::Generic => Grant::RefreshToken {
                client_id: self.client_id.clone().ok_or_else(|| missing("client_id"))?,
                client_secret: unseal(&self.client_secret)?,
                refresh_token: unseal(&self.refresh_token)?.ok_or_else(|| missing("refresh_token"))?,
                scope: self.scope.clone(),
            },
        };
        // The ciphertexts change whenever a secret is entered again, so a new secret never
        // reuses a token cached for the old one.
        let fingerprint = serde_json::to_string(self).unwrap_or_default() + username;
        let cache_key = Sha256::digest(fingerprint.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(TokenSource {
            token_url: self.token_url(),
            grant,
            cache_key,
            timeout,
        })
    }

    /// The same settings with a rotated refresh token sealed in.
    pub fn with_refresh_token(&self, cipher: &SecretCipher, token: &SecretString) -> anyhow::Result<Self> {
        Ok(Self {
            refresh_token: Some(cipher.encrypt(SECRET_PURPOSE, token.expose_secret())?),
            ..self.clone()
        })
    }
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
}

/// The `oauth2` object of `PUT /settings/smtp`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct OAuth2Input {
    /// `microsoft`, `google` or `generic`.
    #[serde(default)]
    #[schema(value_type = Provider)]
    pub provider: Field<String>,
    /// Microsoft: the Directory (tenant) ID.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tenant_id: Field<String>,
    /// Microsoft: the Application (client) ID. Generic: the client id.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_id: Field<String>,
    /// Write-only. Microsoft and generic. Kept when left out, for the same SMTP host, port,
    /// username, security and tls_verify, and the same provider, token URL, tenant and client id.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub client_secret: Field<String>,
    /// Write-only. Google: the service account's JSON key file, as a string. Kept as client_secret is.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub service_account_json: Field<String>,
    /// Write-only. Generic: the refresh token. Kept as client_secret is.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub refresh_token: Field<String>,
    /// Default: `https://outlook.office365.com/.default` (Microsoft), `https://mail.google.com/`
    /// (Google); none (generic).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub scope: Field<String>,
    /// Overrides the provider's token endpoint (sovereign clouds, a proxy); required for
    /// `generic`. https, or http to a loopback address; never a link-local or metadata address.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub token_url: Field<String>,
}

/// A secret as a request gives it.
#[derive(Debug)]
pub enum SecretChange {
    Keep,
    Set(SecretString),
}

/// Validated provider settings from a request, before the keep rule is applied.
#[derive(Debug)]
pub struct OAuth2Draft {
    pub provider: Provider,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub token_url: Option<String>,
    pub client_secret: SecretChange,
    pub service_account_json: SecretChange,
    pub refresh_token: SecretChange,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl OAuth2Input {
    pub fn parse(self, prefix: &str, errors: &mut Errors) -> Option<OAuth2Draft> {
        let f = |name: &str| format!("{prefix}{name}");
        let provider = errors
            .required(&f("provider"), self.provider, "a string")
            .and_then(|p| {
                let parsed = Provider::parse(&p);
                if parsed.is_none() {
                    errors.add(
                        f("provider"),
                        "invalid_choice",
                        format!("{} must be one of microsoft, google, generic", f("provider")),
                    );
                }
                parsed
            });
        let text = |errors: &mut Errors, name: &str, value: Field<String>| {
            let v = non_empty(errors.optional(&f(name), value, "a string"));
            if let Some(v) = &v {
                check_header_text(errors, &f(name), v, 2000);
            }
            v
        };
        let tenant_id = text(errors, "tenant_id", self.tenant_id);
        let client_id = text(errors, "client_id", self.client_id);
        let scope = text(errors, "scope", self.scope);
        let token_url = text(errors, "token_url", self.token_url);
        let secret = |errors: &mut Errors, name: &str, value: Field<String>| match value {
            Field::Value(s) if !s.is_empty() => {
                if s.len() > 20_000 || s.contains('\0') {
                    errors.add(
                        f(name),
                        "invalid_secret",
                        format!("{} is too long or holds NUL", f(name)),
                    );
                }
                SecretChange::Set(SecretString::from(s))
            }
            Field::Invalid => {
                errors.add(f(name), "invalid_type", format!("{} must be a string", f(name)));
                SecretChange::Keep
            }
            _ => SecretChange::Keep,
        };
        let client_secret = secret(errors, "client_secret", self.client_secret);
        let service_account_json = secret(errors, "service_account_json", self.service_account_json);
        let refresh_token = secret(errors, "refresh_token", self.refresh_token);
        if let SecretChange::Set(json) = &service_account_json {
            if serde_json::from_str::<ServiceAccountKey>(json.expose_secret()).is_err() {
                errors.add(
                    f("service_account_json"),
                    "invalid_service_account",
                    "service_account_json must be the service account's JSON key file (with client_email and private_key)",
                );
            }
        }
        let provider = provider?;
        let require = |errors: &mut Errors, name: &str, v: &Option<String>| {
            if v.is_none() {
                errors.add(
                    f(name),
                    "required",
                    format!("{} is required for {provider:?}", f(name)).to_lowercase(),
                );
            }
        };
        match provider {
            Provider::Microsoft => {
                require(errors, "tenant_id", &tenant_id);
                require(errors, "client_id", &client_id);
            }
            Provider::Google => {}
            Provider::Generic => {
                require(errors, "token_url", &token_url);
                require(errors, "client_id", &client_id);
            }
        }
        Some(OAuth2Draft {
            provider,
            tenant_id,
            client_id,
            scope,
            token_url,
            client_secret,
            service_account_json,
            refresh_token,
        })
    }
}

impl OAuth2Draft {
    /// The token URL against the address policy (and, when it resolves, every address it
    /// resolves to): a refused one is a field error on `oauth2.token_url`.
    pub async fn check_token_url(&self, ctx: &MailContext, field: &str) -> Result<(), ApiError> {
        let Some(url) = &self.token_url else {
            return Ok(());
        };
        let (_, host, port) = check_token_url(&ctx.policy, url)
            .map_err(|e| ApiError::field(field, "host_not_allowed", format!("{field}: {e}")))?;
        if let Ok(Ok(Err(refused))) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::outbound::policy::resolve_checked(&ctx.policy, &host, port),
        )
        .await
        {
            return Err(ApiError::field(
                field,
                "host_not_allowed",
                format!("{field}: {refused}"),
            ));
        }
        Ok(())
    }

    /// The document to store: new secrets sealed, stored ones carried over under the keep rule;
    /// a secret the provider needs and nobody gave is a field error.
    pub fn to_settings(
        &self,
        saved: Option<&OAuth2Settings>,
        cipher: &SecretCipher,
        prefix: &str,
    ) -> Result<OAuth2Settings, ApiError> {
        let keep = saved.filter(|s| s.same_client(self));
        let seal = |change: &SecretChange, stored: Option<&Sealed>| -> Result<Option<Sealed>, ApiError> {
            match change {
                SecretChange::Set(s) => Ok(Some(cipher.encrypt(SECRET_PURPOSE, s.expose_secret())?)),
                SecretChange::Keep => Ok(stored.cloned()),
            }
        };
        let client_secret = seal(&self.client_secret, keep.and_then(|s| s.client_secret.as_ref()))?;
        let service_account_json = seal(
            &self.service_account_json,
            keep.and_then(|s| s.service_account_json.as_ref()),
        )?;
        let refresh_token = seal(&self.refresh_token, keep.and_then(|s| s.refresh_token.as_ref()))?;
        let needed: &[(&str, bool)] = match self.provider {
            Provider::Microsoft => &[("client_secret", client_secret.is_some())],
            Provider::Google => &[("service_account_json", service_account_json.is_some())],
            Provider::Generic => &[("refresh_token", refresh_token.is_some())],
        };
        let missing: Vec<FieldError> = needed
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| FieldError {
                field: format!("{prefix}{name}"),
                code: "required".into(),
                message: format!("{prefix}{name} is required (none is stored for this server, account, provider and client)"),
            })
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::Validation(missing));
        }
        Ok(OAuth2Settings {
            provider: self.provider,
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            scope: self.scope.clone(),
            token_url: self.token_url.clone(),
            client_secret,
            service_account_json,
            refresh_token,
        })
    }
}

/// The provider settings as the API shows them: secrets only as `*_set`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuth2View {
    pub provider: Provider,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    /// The token endpoint in effect.
    pub token_url: String,
    pub client_secret_set: bool,
    pub service_account_json_set: bool,
    pub refresh_token_set: bool,
}

impl From<&OAuth2Settings> for OAuth2View {
    fn from(s: &OAuth2Settings) -> Self {
        Self {
            provider: s.provider,
            tenant_id: s.tenant_id.clone(),
            client_id: s.client_id.clone(),
            scope: s.scope.clone(),
            token_url: s.token_url(),
            client_secret_set: s.client_secret.is_some(),
            service_account_json_set: s.service_account_json.is_some(),
            refresh_token_set: s.refresh_token.is_some(),
        }
    }
}
