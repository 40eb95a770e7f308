//! OAuth 2.0 access tokens for SMTP `AUTH XOAUTH2`: the three grants portals need (client
//! credentials for Microsoft 365, a JWT-bearer assertion for a Google service account, a refresh
//! token for anything else), fetched under the same address policy as SMTP hosts, cached in memory
//! until shortly before they expire, and never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::outbound::policy::HostPolicy;

/// How a token is obtained.
#[derive(Clone)]
pub enum Grant {
    /// Microsoft 365 and other client-credentials providers.
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
        scope: String,
    },
    /// A Google service account with domain-wide delegation: an RS256 assertion for `subject`.
    JwtBearer {
        client_email: String,
        private_key_pem: SecretString,
        subject: String,
        scope: String,
    },
    /// A refresh token (personal Gmail or Outlook accounts, any other provider).
    RefreshToken {
        client_id: String,
        client_secret: Option<SecretString>,
        refresh_token: SecretString,
        scope: Option<String>,
    },
}

/// Where and how to get tokens for one SMTP account.
#[derive(Clone)]
pub struct TokenSource {
    pub token_url: String,
    pub grant: Grant,
    /// Identifies the account and credentials in the cache (no secret in it).
    pub cache_key: String,
    pub timeout: Duration,
}

/// What went wrong getting a token. `error` and `description` are the provider's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct OAuthError {
    pub kind: OAuthErrorKind,
    pub error: Option<String>,
    pub description: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorKind {
    /// The endpoint could not be reached, was refused by the policy, or timed out.
    Unreachable,
    /// `invalid_client` / `unauthorized_client`: wrong id or secret, unknown application.
    InvalidClient,
    /// `invalid_grant`: refresh token revoked, delegation missing, bad assertion.
    InvalidGrant,
    /// Anything else.
    Failed,
}

impl OAuthErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Unreachable => "oauth_unreachable",
            Self::InvalidClient => "oauth_invalid_client",
            Self::InvalidGrant => "oauth_invalid_grant",
            Self::Failed => "oauth_token_failed",
        }
    }
}

impl OAuthError {
    fn new(kind: OAuthErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            error: None,
            description: None,
            detail: detail.into(),
        }
    }

    fn describe(&self) -> String {
        match (&self.error, &self.description) {
            (Some(e), Some(d)) => format!("{}: {e}: {d}", self.detail),
            (Some(e), None) => format!("{}: {e}", self.detail),
            _ => self.detail.clone(),
        }
    }

    /// A likely fix, from the provider's error (Microsoft's AADSTS codes among them).
    pub fn hint(&self) -> Option<String> {
        let text = format!(
            "{} {}",
            self.error.as_deref().unwrap_or(""),
            self.description.as_deref().unwrap_or("")
        );
        let hint = if text.contains("AADSTS7000215") {
            "the client secret is wrong or expired: create a new one under the app registration's Certificates & secrets"
        } else if text.contains("AADSTS700016") {
            "the application (client id) is not found in this tenant: check the client id and the tenant id, and that the app is registered there"
        } else if text.contains("AADSTS90002") {
            "the tenant is not found: check tenant_id (the Directory (tenant) ID of the app registration)"
        } else if self.kind == OAuthErrorKind::InvalidGrant && text.contains("unauthorized_client") {
            "grant domain-wide delegation to the service account's client id for https://mail.google.com/ in the Google Admin console"
        } else {
            match self.kind {
                OAuthErrorKind::Unreachable => "check token_url and that this machine can reach it (https, no proxy in between)",
                OAuthErrorKind::InvalidClient => "check client_id and client_secret (or the service account key)",
                OAuthErrorKind::InvalidGrant => "the refresh token or assertion was refused: issue a new refresh token, or for Google grant domain-wide delegation for https://mail.google.com/",
                OAuthErrorKind::Failed => return None,
            }
        };
        Some(hint.to_string())
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// A fetched token. `refresh_token` is set when the provider rotated it.
#[derive(Clone)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: Instant,
    pub refresh_token: Option<SecretString>,
}

/// Tokens shared by every delivery session of an instance, by [`TokenSource::cache_key`].
#[derive(Default, Clone)]
pub struct TokenCache(
    Arc<Mutex<HashMap<String, AccessToken>>>,
    Arc<tokio::sync::Mutex<()>>,
);

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCache({} tokens)", self.lock().len())
    }
}

impl TokenCache {
    /// A cached token that is not about to expire, or a fresh one.
    pub async fn get(&self, ctx: &HostPolicy, source: &TokenSource) -> Result<AccessToken, OAuthError> {
        let margin = Duration::from_secs(60);
        let fresh = || {
            self.lock()
                .get(&source.cache_key)
                .filter(|t| t.expires_at > Instant::now() + margin)
                .cloned()
        };
        if let Some(t) = fresh() {
            return Ok(t);
        }
        // One request at a time: sessions opening together share the token the first one gets.
        let _fetching = self.1.lock().await;
        if let Some(t) = fresh() {
            return Ok(t);
        }
        // A refresh token the provider rotated replaces the stored one until the settings are
        // saved with it (see `rotated_refresh_token`).
        let rotated = self
            .lock()
            .get(&source.cache_key)
            .and_then(|t| t.refresh_token.clone());
        let source = match (&source.grant, rotated) {
            (
                Grant::RefreshToken {
                    client_id,
                    client_secret,
                    scope,
                    ..
                },
                Some(refresh_token),
            ) => TokenSource {
                grant: Grant::RefreshToken {
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    refresh_token,
                    scope: scope.clone(),
                },
                ..source.clone()
            },
            _ => source.clone(),
        };
        let mut token = fetch(ctx, &source).await?;
        if let (Grant::RefreshToken { refresh_token, .. }, None) = (&source.grant, &token.refresh_token) {
            // Keep the one in use, so that a later fetch does not fall back to an older one.
            token.refresh_token = Some(refresh_token.clone());
        }
        self.lock().insert(source.cache_key.clone(), token.clone());
        Ok(token)
    }

    /// A refresh token the provider issued in place of the one `source` holds, to be stored.
    pub fn rotated_refresh_token(&self, source: &TokenSource) -> Option<SecretString> {
        let Grant::RefreshToken { refresh_token, .. } = &source.grant else {
            return None;
        };
        let cached = self.lock().get(&source.cache_key)?.refresh_token.clone()?;
        (cached.expose_secret() != refresh_token.expose_secret()).then_some(cached)
    }

    /// Forgets the access token of `source` (the server refused it); a rotated refresh token is
    /// kept.
    pub fn invalidate(&self, source: &TokenSource) {
        if let Some(t) = self.lock().get_mut(&source.cache_key) {
            t.expires_at = Instant::now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AccessToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The parts of a token URL that the policy checks: https (or http to loopback), a host.
pub fn check_token_url(ctx: &HostPolicy, token_url: &str) -> Result<(url::Url, String, u16), String> {
    crate::outbound::check_url(ctx, token_url).map_err(|e| e.replace("the URL", "token_url"))
}

/// Requests a token: the address policy applies to every address the host resolves to, the
/// connection goes to one of those addresses (no second lookup), redirects are not followed.
pub async fn fetch(ctx: &HostPolicy, source: &TokenSource) -> Result<AccessToken, OAuthError> {
    use OAuthErrorKind::*;
    let (_, host, _) = check_token_url(ctx, &source.token_url)
        .map_err(|e| OAuthError::new(Unreachable, format!("refusing the token URL: {e}")))?;
    let (client, url) = crate::outbound::client_for(ctx, &source.token_url, source.timeout)
        .await
        .map_err(|e| OAuthError::new(Unreachable, format!("refusing the token URL: {e}")))?;
    let form = form(source, &url)?;
    let response = client
        .post(url)
        .header("Accept", "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "failed" };
            OAuthError::new(
                Unreachable,
                format!(
                    "the token request to {host} {what}: {}",
                    crate::outbound::cause(&e)
                ),
            )
        })?;
    let status = response.status();
    let body = read_capped(response).await?;
    if status.is_success() {
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| OAuthError::new(Failed, "the token endpoint answered without an access_token"))?;
        return Ok(AccessToken {
            token: SecretString::from(parsed.access_token),
            expires_at: Instant::now() + Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
            refresh_token: parsed.refresh_token.map(SecretString::from),
        });
    }
    if status.is_redirection() {
        return Err(OAuthError::new(
            Unreachable,
            format!("the token endpoint answered {status} (redirects are not followed)"),
        ));
    }
    let err: TokenErrorResponse = serde_json::from_slice(&body).unwrap_or(TokenErrorResponse {
        error: None,
        error_description: None,
    });
    let kind = match err.error.as_deref() {
        Some("invalid_client") => InvalidClient,
        Some("unauthorized_client") if matches!(source.grant, Grant::JwtBearer { .. }) => InvalidGrant,
        Some("unauthorized_client") => InvalidClient,
        Some("invalid_grant") => InvalidGrant,
        _ if status.as_u16() == 401 => InvalidClient,
        _ => Failed,
    };
    Err(OAuthError {
        kind,
        error: err.error.map(|e| plain_text(&e, 100)),
        description: err.error_description.map(|d| plain_text(&d, 500)),
        detail: format!("the token endpoint answered {status}"),
    })
}

/// The most of a token response read: a token answer is a few KiB; anything larger is refused
/// before it can take memory.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The response body, up to [`MAX_TOKEN_RESPONSE_BYTES`].
async fn read_capped(response: reqwest::Response) -> Result<Vec<u8>, OAuthError> {
    use crate::outbound::ReadError;
    crate::outbound::read_capped(response, MAX_TOKEN_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { limit } => OAuthError::new(
                OAuthErrorKind::Failed,
                format!("the token response is larger than {} KiB", limit / 1024),
            ),
            ReadError::Failed(cause) => OAuthError::new(
                OAuthErrorKind::Unreachable,
                format!("reading the token response failed: {cause}"),
            ),
        })
}

/// A provider's words as plain text of at most `max` characters: no control characters (a CR/LF
/// would start a new line in a log) and no markup.
fn plain_text(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !matches!(c, '<' | '>'))
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The form of the token request for the grant.
fn form(source: &TokenSource, url: &url::Url) -> Result<Vec<(&'static str, String)>, OAuthError> {
    Ok(match &source.grant {
        Grant::ClientCredentials {
            client_id,
            client_secret,
            scope,
        } => vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose_secret().to_string()),
            ("scope", scope.clone()),
        ],
        Grant::JwtBearer {
            client_email,
            private_key_pem,
            subject,
            scope,
        } => vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()),
            (
                "assertion",
                assertion(client_email, private_key_pem, subject, scope, url.as_str())?,
            ),
        ],
        Grant::RefreshToken {
            client_id,
            client_secret,
            refresh_token,
            scope,
        } => {
            let mut f = vec![
                ("grant_type", "refresh_token".into()),
                ("client_id", client_id.clone()),
                ("refresh_token", refresh_token.expose_secret().to_string()),
            ];
            if let Some(secret) = client_secret {
                f.push(("client_secret", secret.expose_secret().to_string()));
            }
            if let Some(scope) = scope {
                f.push(("scope", scope.clone()));
            }
            f
        }
    })
}

/// The RS256 assertion of a Google service account acting for `subject`.
fn assertion(
    client_email: &str,
    private_key_pem: &SecretString,
    subject: &str,
    scope: &str,
    audience: &str,
) -> Result<String, OAuthError> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes()).map_err(
        |_| {
            OAuthError::new(
                OAuthErrorKind::InvalidClient,
                "the service account's private key is not an RSA key in PEM",
            )
        },
    )?;
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": client_email, "sub": subject, "scope": scope, "aud": audience,
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| {
        OAuthError::new(
            OAuthErrorKind::InvalidClient,
            format!("cannot sign the assertion: {e}"),
        )
    })
}

/// What a server that refuses `AUTH XOAUTH2` explains, from its base64 JSON challenge.
pub fn decode_challenge(challenge: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(challenge.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls_must_be_https_or_loopback_and_obey_the_address_policy() {
        let ctx = HostPolicy::default();
        assert!(check_token_url(&ctx, "https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
        assert!(check_token_url(&ctx, "http://127.0.0.1:8080/token").is_ok());
        assert!(check_token_url(&ctx, "http://[::1]:8080/token").is_ok());
        for bad in [
            "http://login.example.com/token",
            "https://169.254.169.254/latest",
            "https://[fd00:ec2::254]/token",
            "https://user:pw@login.example.com/token",
            "ftp://login.example.com/token",
            "not a url",
        ] {
            assert!(check_token_url(&ctx, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_providers_words_lose_control_characters_and_markup() {
        assert_eq!(
            plain_text("bad\r\nX-Injected: 1 <script>alert(1)</script>", 500),
            "bad  X-Injected: 1 scriptalert(1)/script"
        );
        assert_eq!(plain_text(&"a".repeat(900), 500).len(), 500);
    }

    #[test]
    fn microsoft_error_codes_get_their_hints() {
        let e = OAuthError {
            kind: OAuthErrorKind::InvalidClient,
            error: Some("invalid_client".into()),
            description: Some("AADSTS7000215: Invalid client secret provided.".into()),
            detail: "x".into(),
        };
        assert!(e.hint().unwrap().contains("client secret is wrong or expired"));
    }
}
