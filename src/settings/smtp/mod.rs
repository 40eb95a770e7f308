//! SMTP settings: host, port, security, credentials, default From, Reply-To, timeouts.

pub mod http;
pub mod oauth;
pub mod probe;

use self::oauth::{AuthKind, OAuth2Draft, OAuth2Input, OAuth2Settings};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::error::ApiError;
use crate::mail::message::Sender;
use crate::mail::SmtpTarget;
use crate::secrets::{Sealed, SecretCipher};
use crate::store::settings::{self as store, Stored};
use crate::validation::{check_email, check_header_text, check_host, Errors, Field, Object, Whole};

pub const KEY: &str = "smtp";
/// Associated data for the password ciphertext.
pub const PASSWORD_PURPOSE: &str = "smtp.password";
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10;

pub use crate::mail::Security;

/// The stored document. `password` is AES-256-GCM ciphertext and never leaves the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<Sealed>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub timeout_seconds: u32,
    pub tls_verify: bool,
    pub allow_insecure_auth: bool,
    /// Password (default) or OAuth 2.0; documents from before OAuth read as password.
    #[serde(default)]
    pub auth: AuthKind,
    #[serde(default)]
    pub oauth2: Option<OAuth2Settings>,
}

/// Settings turned into what opens a session ([`SmtpSettings::connection`]).
pub struct Connection {
    pub target: SmtpTarget,
    pub sender: Option<Sender>,
    /// The password's forms on the wire, to redact from replies and errors.
    pub redact: Vec<String>,
}

impl SmtpSettings {
    /// The stored password, unsealed. The one place a sealed SMTP password is opened.
    pub fn unseal_password(&self, cipher: &SecretCipher) -> anyhow::Result<Option<SecretString>> {
        unseal(cipher, self.password.as_ref())
    }

    /// Where tokens come from, when the account uses OAuth (secrets unsealed here).
    pub fn token_source(
        &self,
        cipher: &SecretCipher,
    ) -> anyhow::Result<Option<crate::mail::oauth::TokenSource>> {
        match (&self.auth, &self.oauth2) {
            (AuthKind::Oauth2, Some(o)) => Ok(Some(o.token_source(
                cipher,
                self.username.as_deref().unwrap_or(""),
                std::time::Duration::from_secs(self.timeout_seconds.into()),
            )?)),
            _ => Ok(None),
        }
    }

    /// Where and how to connect, with `password` (already unsealed, or a draft's own) or, for
    /// OAuth, the token source.
    pub fn target(
        &self,
        password: Option<SecretString>,
        oauth: Option<crate::mail::oauth::TokenSource>,
    ) -> SmtpTarget {
        SmtpTarget {
            oauth,
            host: self.host.clone(),
            port: self.port,
            security: self.security,
            username: self.username.clone(),
            password,
            timeout: std::time::Duration::from_secs(self.timeout_seconds.into()),
            tls_verify: self.tls_verify,
        }
    }

    /// The sending identity; None while no `from_address` is configured.
    pub fn sender(&self) -> Option<Sender> {
        Sender::new(
            self.from_address.as_deref()?,
            self.from_name.as_deref(),
            self.reply_to.as_deref(),
        )
    }

    /// What a session needs from these settings, for delivery and the test alike: the target
    /// (with `password`, the saved one or a draft's, and the OAuth secrets unsealed), the From
    /// identity if one is set, and every form of the secrets to scrub from what a server says.
    pub fn connection(
        &self,
        password: Option<SecretString>,
        cipher: &SecretCipher,
    ) -> anyhow::Result<Connection> {
        let target = self.target(password, self.token_source(cipher)?);
        Ok(Connection {
            redact: target.secret_forms(),
            sender: self.sender(),
            target,
        })
    }

    /// Whether the stored password may be used with `draft`: only for the same server, account and
    /// transport protection. A change of `security` or `tls_verify` alone would otherwise send the
    /// password in clear text or to an unverified peer.
    pub fn same_account(&self, draft: &SmtpSettings) -> bool {
        self.host
            .trim_end_matches('.')
            .eq_ignore_ascii_case(draft.host.trim_end_matches('.'))
            && self.port == draft.port
            && self.username == draft.username
            && self.security == draft.security
            && self.tls_verify == draft.tls_verify
    }
}

/// `PUT /settings/smtp` body (also the `settings` draft of `POST /settings/smtp/test`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({
    "host": "smtp.example.com", "port": 587, "security": "starttls",
    "username": "mailer@example.com", "from_address": "portal@example.com",
    "from_name": "Developer Portal", "timeout_seconds": 10, "tls_verify": true
}))]
pub struct SmtpSettingsInput {
    /// SMTP server host name or IP address, without scheme or port.
    #[serde(default)]
    #[schema(value_type = String, example = "smtp.example.com", required = true)]
    pub host: Field<String>,
    /// Defaults to 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    #[schema(value_type = Option<u16>, minimum = 1, maximum = 65535, example = 587)]
    pub port: Field<Whole>,
    /// Defaults to `tls` on port 465 and `starttls` otherwise.
    #[serde(default)]
    #[schema(value_type = Option<Security>)]
    pub security: Field<String>,
    /// Absent, null or empty: no SMTP AUTH.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "mailer@example.com")]
    pub username: Field<String>,
    /// Write-only. Absent or empty: keep the stored password, but only if host, port, username,
    /// security and tls_verify are unchanged. `null`: remove the stored password.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Field<String>,
    /// The default From address. No notification is sent while it is unset.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email, example = "portal@example.com")]
    pub from_address: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "Developer Portal")]
    pub from_name: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email)]
    pub reply_to: Field<String>,
    /// Per-step network timeout, 1 to 120 seconds (default 10).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 120, example = 10)]
    pub timeout_seconds: Field<Whole>,
    /// Verify the server certificate (default true). Turn off only for internal relays with
    /// self-signed certificates; prefer `MAILROOM_SMTP_CA_FILE`.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub tls_verify: Field<bool>,
    /// Required to send a username and password over a connection without TLS.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub allow_insecure_auth: Field<bool>,
    /// `password` (default) or `oauth2` (then `username` is the mailbox and `oauth2` is required).
    #[serde(default)]
    #[schema(value_type = Option<AuthKind>)]
    pub auth: Field<String>,
    /// The OAuth provider, for `"auth": "oauth2"`.
    #[serde(default)]
    #[schema(value_type = Option<OAuth2Input>)]
    pub oauth2: Field<Object<OAuth2Input>>,
}

/// What a request wants done with the stored password.
#[derive(Debug)]
pub enum PasswordChange {
    Keep,
    Remove,
    Set(SecretString),
}

/// Validated SMTP settings from a request, before the stored password rule is applied.
#[derive(Debug)]
pub struct SmtpDraft {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: PasswordChange,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub timeout_seconds: u32,
    pub tls_verify: bool,
    pub allow_insecure_auth: bool,
    pub auth: AuthKind,
    pub oauth2: Option<OAuth2Draft>,
}

/// `auth` and `oauth2`: the provider is required (and `username`, the mailbox) for OAuth.
fn parse_auth(
    prefix: &str,
    auth: Field<String>,
    oauth2: Field<Object<OAuth2Input>>,
    has_username: bool,
    errors: &mut Errors,
) -> (AuthKind, Option<OAuth2Draft>) {
    let f = |name: &str| format!("{prefix}{name}");
    let auth = match errors.optional(&f("auth"), auth, "a string").as_deref() {
        None | Some("password") => AuthKind::Password,
        Some("oauth2") => AuthKind::Oauth2,
        Some(_) => {
            errors.add(
                f("auth"),
                "invalid_choice",
                format!("{} must be password or oauth2", f("auth")),
            );
            AuthKind::Password
        }
    };
    let oauth2 = match oauth2 {
        Field::Value(Object(o)) if auth == AuthKind::Oauth2 => o.parse(&f("oauth2."), errors),
        Field::Invalid => {
            errors.add(
                f("oauth2"),
                "invalid_type",
                format!("{} must be an object", f("oauth2")),
            );
            None
        }
        _ if auth == AuthKind::Oauth2 => {
            errors.add(
                f("oauth2"),
                "required",
                format!("{} is required for \"auth\": \"oauth2\"", f("oauth2")),
            );
            None
        }
        _ => None,
    };
    if auth == AuthKind::Oauth2 && !has_username {
        errors.add(
            f("username"),
            "required",
            "username (the mailbox) is required for \"auth\": \"oauth2\"",
        );
    }
    (auth, oauth2)
}

/// Empty strings from form fields mean "not set".
fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The host, checked as a name or literal; a literal that spells a link-local, metadata or
/// unspecified address is refused here (it would be refused at connect), so it is never saved.
fn parse_host(field: &str, value: Field<String>, errors: &mut Errors) -> Option<String> {
    let host = errors
        .required(field, value, "a string")
        .map(|h| h.trim().to_string());
    if let Some(h) = &host {
        if check_host(errors, field, h) {
            let forbidden = crate::outbound::policy::ip_literal(h)
                .filter(|ip| crate::outbound::policy::is_forbidden_address(*ip));
            if let Some(ip) = forbidden {
                errors.add(
                    field,
                    "host_not_allowed",
                    format!("{field}: {h} is {ip}, a link-local, metadata or unspecified address"),
                );
            }
        }
    }
    host
}

/// `security`: one of none, starttls, tls.
fn parse_security(field: &str, value: Field<String>, errors: &mut Errors) -> Option<Security> {
    let s = errors.optional(field, value, "a string")?;
    let parsed = Security::parse(&s);
    if parsed.is_none() {
        errors.add(
            field,
            "invalid_choice",
            format!("{field} must be one of none, starttls, tls"),
        );
    }
    parsed
}

/// `password`: absent or empty keeps the saved one, null removes it. The value itself is never
/// echoed in a message.
fn parse_password(field: &str, value: Field<String>, errors: &mut Errors) -> PasswordChange {
    match value {
        Field::Missing => PasswordChange::Keep,
        Field::Null => PasswordChange::Remove,
        Field::Value(p) if p.is_empty() => PasswordChange::Keep,
        Field::Value(p) => {
            if p.contains('\0') || p.len() > 1024 {
                errors.add(
                    field,
                    "invalid_password",
                    format!("{field} must be at most 1024 bytes without NUL characters"),
                );
            }
            PasswordChange::Set(SecretString::from(p))
        }
        Field::Invalid => {
            errors.add(field, "invalid_type", format!("{field} must be a string"));
            PasswordChange::Keep
        }
    }
}

/// `timeout_seconds`: 1 to 120, by default [`DEFAULT_TIMEOUT_SECONDS`].
fn parse_timeout(field: &str, value: Field<Whole>, errors: &mut Errors) -> u32 {
    match errors.optional(field, value, "an integer").map(|w| w.0) {
        Some(t) if (1..=120).contains(&t) => t as u32,
        Some(_) => {
            errors.add(
                field,
                "out_of_range",
                format!("{field} must be between 1 and 120"),
            );
            DEFAULT_TIMEOUT_SECONDS
        }
        None => DEFAULT_TIMEOUT_SECONDS,
    }
}

impl SmtpSettingsInput {
    /// Validates every field, reporting each failure with its name (prefixed with `prefix`).
    pub fn parse(self, prefix: &str, errors: &mut Errors) -> Option<SmtpDraft> {
        let f = |name: &str| format!("{prefix}{name}");
        let host = parse_host(&f("host"), self.host, errors);
        let security = parse_security(&f("security"), self.security, errors);
        let port = match errors.optional(&f("port"), self.port, "an integer").map(|w| w.0) {
            Some(p) if (1..=65535).contains(&p) => Some(p as u16),
            Some(_) => {
                errors.add(
                    f("port"),
                    "out_of_range",
                    format!("{} must be between 1 and 65535", f("port")),
                );
                None
            }
            None => None,
        };
        let security_or_default = security.unwrap_or(if port == Some(465) {
            Security::Tls
        } else {
            Security::Starttls
        });
        let port = port.unwrap_or(security_or_default.default_port());

        let username = non_empty(errors.optional(&f("username"), self.username, "a string"));
        if let Some(u) = &username {
            check_header_text(errors, &f("username"), u, 256);
        }
        let password = parse_password(&f("password"), self.password, errors);
        if matches!(password, PasswordChange::Set(_)) && username.is_none() {
            errors.add(
                f("password"),
                "password_without_username",
                "a password needs a username: set username too, or leave password out",
            );
        }
        let mut email = |name: &str, value: Field<String>| {
            let v = non_empty(errors.optional(&f(name), value, "a string"));
            if let Some(addr) = &v {
                check_email(errors, &f(name), addr);
            }
            v
        };
        let from_address = email("from_address", self.from_address);
        let reply_to = email("reply_to", self.reply_to);
        let from_name = non_empty(errors.optional(&f("from_name"), self.from_name, "a string"));
        if let Some(n) = &from_name {
            check_header_text(errors, &f("from_name"), n, 200);
        }
        let timeout_seconds = parse_timeout(&f("timeout_seconds"), self.timeout_seconds, errors);
        let tls_verify = errors
            .optional(&f("tls_verify"), self.tls_verify, "true or false")
            .unwrap_or(true);
        let allow_insecure_auth = errors
            .optional(
                &f("allow_insecure_auth"),
                self.allow_insecure_auth,
                "true or false",
            )
            .unwrap_or(false);
        let (auth, oauth2) = parse_auth(prefix, self.auth, self.oauth2, username.is_some(), errors);
        if security == Some(Security::None) && username.is_some() && !allow_insecure_auth {
            errors.add(
                f("security"),
                "insecure_auth",
                "sending a username and password without TLS exposes them on the network: use starttls or tls, or set allow_insecure_auth to true",
            );
        }
        Some(SmtpDraft {
            host: host?,
            port,
            security: security.unwrap_or(security_or_default),
            username,
            password,
            from_address,
            from_name,
            reply_to,
            timeout_seconds,
            tls_verify,
            allow_insecure_auth,
            auth,
            oauth2,
        })
    }
}

fn unseal(cipher: &SecretCipher, sealed: Option<&Sealed>) -> anyhow::Result<Option<SecretString>> {
    sealed
        .map(|sealed| cipher.decrypt(PASSWORD_PURPOSE, sealed))
        .transpose()
}

/// The password a draft may use: its own, or the saved one when it targets the same account.
pub enum PasswordSource<'a> {
    New(&'a SecretString),
    Saved(&'a Sealed),
    None,
}

impl SmtpDraft {
    pub fn password_source<'a>(&'a self, saved: Option<&'a SmtpSettings>) -> PasswordSource<'a> {
        match &self.password {
            PasswordChange::Set(p) => PasswordSource::New(p),
            PasswordChange::Remove => PasswordSource::None,
            PasswordChange::Keep => match saved {
                Some(s) if s.same_account(&self.to_settings()) => s
                    .password
                    .as_ref()
                    .map_or(PasswordSource::None, PasswordSource::Saved),
                _ => PasswordSource::None,
            },
        }
    }

    /// The password a test of this draft uses, unsealed: its own, or the saved one under the
    /// same-account rule.
    pub fn password_for_test(
        &self,
        saved: Option<&SmtpSettings>,
        cipher: &SecretCipher,
    ) -> Result<Option<SecretString>, ApiError> {
        match self.password_source(saved) {
            PasswordSource::New(p) => Ok(Some(p.clone())),
            PasswordSource::Saved(sealed) => Ok(unseal(cipher, Some(sealed))?),
            PasswordSource::None => Ok(None),
        }
    }

    /// The settings this draft describes, without any password.
    pub fn to_settings(&self) -> SmtpSettings {
        SmtpSettings {
            host: self.host.clone(),
            port: self.port,
            security: self.security,
            username: self.username.clone(),
            password: None,
            from_address: self.from_address.clone(),
            from_name: self.from_name.clone(),
            reply_to: self.reply_to.clone(),
            timeout_seconds: self.timeout_seconds,
            tls_verify: self.tls_verify,
            allow_insecure_auth: self.allow_insecure_auth,
            auth: self.auth,
            oauth2: None,
        }
    }

    /// The document to store, with the password sealed (or carried over, or dropped).
    fn into_settings(
        self,
        saved: Option<&SmtpSettings>,
        cipher: &SecretCipher,
    ) -> Result<SmtpSettings, ApiError> {
        let password = match self.password_source(saved) {
            _ if self.auth == AuthKind::Oauth2 => None,
            PasswordSource::New(p) => Some(cipher.encrypt(PASSWORD_PURPOSE, p.expose_secret())?),
            PasswordSource::Saved(sealed) => Some(sealed.clone()),
            PasswordSource::None => None,
        };
        Ok(SmtpSettings {
            password,
            oauth2: self.oauth_settings(saved, cipher)?,
            ..self.to_settings()
        })
    }

    /// The provider settings of an OAuth draft, secrets sealed or carried over by the keep rule:
    /// the same server and account as the password's (an access token is as good as a password
    /// to whoever receives it), and the same OAuth client.
    pub fn oauth_settings(
        &self,
        saved: Option<&SmtpSettings>,
        cipher: &SecretCipher,
    ) -> Result<Option<OAuth2Settings>, ApiError> {
        let same_account = saved.filter(|s| s.same_account(&self.to_settings()));
        match (&self.auth, &self.oauth2) {
            (AuthKind::Oauth2, Some(draft)) => Ok(Some(draft.to_settings(
                same_account.and_then(|s| s.oauth2.as_ref()),
                cipher,
                "oauth2.",
            )?)),
            _ => Ok(None),
        }
    }
}

pub fn load(conn: &mut DbConnection) -> Result<Option<Stored<SmtpSettings>>, crate::db::StoreError> {
    store::load(conn, KEY)
}

/// Seals a refresh token the OAuth provider rotated into the stored settings, so that a restart
/// does not fall back to the old one; only onto the `version` the token was issued for.
/// Whether it was stored.
pub fn store_rotated_refresh_token(
    conn: &mut DbConnection,
    cipher: &SecretCipher,
    version: i64,
    token: &SecretString,
) -> Result<bool, crate::db::StoreError> {
    let Some(stored) = load(conn)? else {
        return Ok(false);
    };
    let Some(oauth) = stored.value.oauth2.as_ref().filter(|_| stored.version == version) else {
        return Ok(false);
    };
    let next = SmtpSettings {
        oauth2: Some(oauth.with_refresh_token(cipher, token)?),
        ..stored.value.clone()
    };
    store::save(conn, KEY, next, version, "mailroom")?;
    Ok(true)
}
