//! Bearer-token authentication: JWT verification (a secret, a public key, or an OpenID Connect
//! provider's published keys), scopes, and the `Authorized<S>` extractor.

pub mod jwks;

use std::collections::HashSet;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use actix_web::{web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Every scope the API knows.
pub const ALL_SCOPES: &[&str] = &[
    "settings:read",
    "settings:write",
    "smtp:test",
    "notifications:send",
    "notifications:read",
    "metrics:read",
];

/// Who is calling and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub sub: String,
    scopes: HashSet<String>,
    admin: bool,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.admin || self.scopes.contains(scope)
    }
}

/// Verifies tokens with an HS256 secret, an RS256/ES256 public key and/or the keys an OpenID
/// Connect provider publishes.
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    public_key: Option<(DecodingKey, Algorithm)>,
    jwks: Option<Arc<jwks::Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
    #[serde(default)]
    scp: Option<serde_json::Value>,
    #[serde(default)]
    roles: Option<serde_json::Value>,
}

/// Strings from a claim that may be a space-separated string or an array of strings.
fn claim_strings(value: &Option<serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .flat_map(|s| s.split_whitespace())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    pub fn new(
        secret: Option<&SecretString>,
        public_key_file: Option<&Path>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let public_key = match public_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!(
                        "MAILROOM_JWT_PUBLIC_KEY_FILE: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "MAILROOM_JWT_PUBLIC_KEY_FILE: {} is not an RSA or EC (P-256) public key in PEM form",
                            path.display()
                        )
                    })?;
                Some(key)
            }
            None => None,
        };
        Ok(Self {
            secret: secret.map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes())),
            public_key,
            jwks: None,
            issuer,
            audience,
        })
    }

    /// Also accepts tokens signed with the keys published at a JWKS URL.
    pub fn with_jwks(self, jwks: jwks::Jwks) -> Self {
        Self {
            jwks: Some(Arc::new(jwks)),
            ..self
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let invalid = |m: &str| ApiError::Unauthorized(m.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the token is malformed"))?;
        let fixed = match header.alg {
            Algorithm::HS256 => self.secret.clone(),
            alg => self
                .public_key
                .as_ref()
                .filter(|(_, expected)| *expected == alg)
                .map(|(k, _)| k.clone()),
        };
        let key = match (fixed, &self.jwks) {
            // A token naming a key is the provider's; one without is the configured key's.
            (Some(key), jwks) if header.kid.is_none() || jwks.is_none() || header.alg == Algorithm::HS256 => {
                key
            }
            (_, Some(jwks)) if header.alg != Algorithm::HS256 => jwks
                .key(header.kid.as_deref(), header.alg)
                .await
                .map_err(|m| invalid(&m))?,
            _ => return Err(invalid("the token's algorithm is not accepted")),
        };
        let key = &key;

        let mut validation = Validation::new(header.alg);
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 30;
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => invalid("the token has expired"),
                ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                ErrorKind::InvalidIssuer => invalid("the token's issuer is not accepted"),
                ErrorKind::InvalidAudience => invalid("the token's audience is not accepted"),
                ErrorKind::MissingRequiredClaim(c) => invalid(&format!("the token has no `{c}` claim")),
                ErrorKind::InvalidSignature => invalid("the token's signature is invalid"),
                _ => invalid("the token is invalid"),
            }
        })?;
        let claims = data.claims;
        let sub = claims
            .sub
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid("the token has no `sub` claim"))?;
        let mut scopes: HashSet<String> = claim_strings(&claims.scope).into_iter().collect();
        scopes.extend(claim_strings(&claims.scp));
        let admin = claim_strings(&claims.roles).iter().any(|r| r == "admin");
        Ok(Principal { sub, scopes, admin })
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints an HS256 token (`mailroom token`).
pub fn mint_token(
    secret: &SecretString,
    sub: &str,
    scopes: &[String],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintClaims {
        sub,
        scope: scopes.join(" "),
        iat: now,
        exp: now + ttl.as_secs(),
        iss: issuer,
        aud: audience,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )?)
}

/// A scope a handler requires, as a type, so the requirement is visible in its signature.
pub trait RequiredScope {
    const SCOPE: &'static str;
}

macro_rules! scopes {
    ($($name:ident => $scope:literal),* $(,)?) => {
        $(
            #[doc = concat!("The `", $scope, "` scope.")]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: &'static str = $scope;
            }
        )*
    };
}

pub mod scope {
    use super::RequiredScope;
    scopes! {
        SettingsRead => "settings:read",
        SettingsWrite => "settings:write",
        SmtpTest => "smtp:test",
        NotificationsSend => "notifications:send",
        NotificationsRead => "notifications:read",
        MetricsRead => "metrics:read",
    }
}

/// Extracts a verified principal holding scope `S`: 401 without a valid token, 403 without `S`.
pub struct Authorized<S> {
    pub principal: Principal,
    _scope: PhantomData<S>,
}

impl<S> Authorized<S> {
    pub fn sub(&self) -> &str {
        &self.principal.sub
    }
}

/// The verifier and the bearer token of a request.
fn bearer(req: &HttpRequest) -> Result<(web::Data<JwtVerifier>, String), ApiError> {
    let verifier = req
        .app_data::<web::Data<JwtVerifier>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("JwtVerifier is not configured")))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("an Authorization: Bearer token is required".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    Ok((verifier, token.to_string()))
}

impl<S: RequiredScope> FromRequest for Authorized<S> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let bearer = bearer(req);
        Box::pin(async move {
            let (verifier, token) = bearer?;
            let principal = verifier.verify(&token).await?;
            if principal.has_scope(S::SCOPE) {
                Ok(Self {
                    principal,
                    _scope: PhantomData,
                })
            } else {
                Err(ApiError::Forbidden(S::SCOPE))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretString {
        SecretString::from("0123456789abcdef0123456789abcdef".to_string())
    }

    #[tokio::test]
    async fn a_minted_token_verifies_with_its_scopes() {
        let verifier = JwtVerifier::new(Some(&secret()), None, None, None).unwrap();
        let token = mint_token(
            &secret(),
            "alice",
            &["settings:read".into()],
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let principal = verifier.verify(&token).await.unwrap();
        assert_eq!(principal.sub, "alice");
        assert!(principal.has_scope("settings:read"));
        assert!(!principal.has_scope("settings:write"));
    }

    #[tokio::test]
    async fn a_token_signed_with_another_secret_is_rejected() {
        let verifier = JwtVerifier::new(Some(&secret()), None, None, None).unwrap();
        let other = SecretString::from("another-secret-another-secret-xx".to_string());
        let token = mint_token(&other, "eve", &[], Duration::from_secs(60), None, None).unwrap();
        assert!(matches!(
            verifier.verify(&token).await,
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn scopes_come_from_scp_arrays_and_admin_role_grants_everything() {
        let verifier = JwtVerifier::new(Some(&secret()), None, None, None).unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let scp = serde_json::json!({"sub": "bot", "exp": exp, "scp": ["smtp:test"]});
        let token = jsonwebtoken::encode(&Header::default(), &scp, &key).unwrap();
        let p = verifier.verify(&token).await.unwrap();
        assert!(p.has_scope("smtp:test") && !p.has_scope("settings:read"));
        let admin = serde_json::json!({"sub": "root", "exp": exp, "roles": ["admin"]});
        let token = jsonwebtoken::encode(&Header::default(), &admin, &key).unwrap();
        let p = verifier.verify(&token).await.unwrap();
        assert!(ALL_SCOPES.iter().all(|s| p.has_scope(s)));
    }
}
