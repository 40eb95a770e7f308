//! Where and how to connect: the server, its security, the credentials and the timeout, as the
//! caller's settings describe them (this module knows nothing of how they are stored).

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MailContext;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain SMTP, no TLS.
    None,
    /// Plain connection upgraded with STARTTLS (usually port 587); refused if the server does not offer it.
    Starttls,
    /// Implicit TLS from the first byte (usually port 465).
    Tls,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starttls => "starttls",
            Self::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "starttls" => Some(Self::Starttls),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::None => 25,
            Self::Starttls => 587,
            Self::Tls => 465,
        }
    }
}

/// Everything needed to open an SMTP session (password unsealed). Built by the settings that
/// describe it; this module knows nothing of how they are stored.
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub timeout: Duration,
    pub tls_verify: bool,
    /// Set for `AUTH XOAUTH2`: where the access token comes from (`password` is then unused).
    pub oauth: Option<crate::mail::oauth::TokenSource>,
}

impl SmtpTarget {
    /// The password and its base64 forms (as AUTH PLAIN and LOGIN send them), for redaction.
    pub fn secret_forms(&self) -> Vec<String> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let Some(password) = self.password.as_ref().map(|p| p.expose_secret().to_string()) else {
            return Vec::new();
        };
        let user = self.username.clone().unwrap_or_default();
        vec![b64(&format!("\0{user}\0{password}")), b64(&password), password]
    }

    /// TLS parameters for this host: system roots plus `MAILROOM_SMTP_CA_FILE`, verification as set.
    pub fn tls_parameters(&self, ctx: &MailContext) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut builder = TlsParameters::builder(self.host.clone()).certificate_store(CertificateStore::None);
        for der in ctx.system_roots.iter() {
            builder = builder.add_root_certificate(Certificate::from_der(der.clone())?);
        }
        for pem in &ctx.extra_roots {
            builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
        }
        if !self.tls_verify {
            builder = builder
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true);
        }
        builder.build_rustls()
    }

    pub fn credentials(&self) -> Option<Credentials> {
        self.username.as_ref().map(|user| {
            Credentials::new(
                user.clone(),
                self.password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string())
                    .unwrap_or_default(),
            )
        })
    }
}
