//! The one place an SMTP connection is configured, for delivery and for the connection test alike:
//! host, port, security, credentials, timeouts, HELO name, TLS roots and the host policy.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::secrets::SecretCipher;
use crate::settings::smtp::{Security, SmtpSettings, PASSWORD_PURPOSE};

/// Process-wide SMTP policy from the configuration, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct MailContext {
    /// PEM blocks of extra trusted roots (`MAILROOM_SMTP_CA_FILE`).
    extra_roots: Vec<Vec<u8>>,
    helo_name: Option<String>,
    /// `MAILROOM_SMTP_ALLOWED_HOSTS`: when set, the only hosts mail may connect to.
    allowed_hosts: Option<Vec<String>>,
}

impl MailContext {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let extra_roots = match &config.smtp_ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("MAILROOM_SMTP_CA_FILE: cannot read {}", path.display()))?;
                let blocks = split_pem_certificates(&pem);
                anyhow::ensure!(
                    !blocks.is_empty(),
                    "MAILROOM_SMTP_CA_FILE: {} holds no PEM certificate",
                    path.display()
                );
                for block in &blocks {
                    Certificate::from_pem(block).map_err(|e| {
                        anyhow::anyhow!("MAILROOM_SMTP_CA_FILE: {}: bad certificate: {e}", path.display())
                    })?;
                }
                blocks
            }
            None => Vec::new(),
        };
        Ok(Self {
            extra_roots,
            helo_name: config.smtp_helo_name.clone(),
            allowed_hosts: config.smtp_allowed_hosts.clone(),
        })
    }

    pub fn client_id(&self) -> ClientId {
        match &self.helo_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        }
    }

    /// Whether the allow-list (if any) names `host`.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts
            .as_ref()
            .is_none_or(|list| list.contains(&host))
    }
}

fn split_pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----") {
            if let Some(block) = current.take() {
                blocks.push(block.into_bytes());
            }
        }
    }
    blocks
}

/// Addresses no SMTP connection may reach: link-local (including cloud metadata at
/// 169.254.169.254) and the AWS IPv6 metadata address. Loopback and private ranges stay allowed,
/// because local relays are common.
pub fn is_forbidden_address(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6,
        },
    }
}

/// Why a host may not be contacted.
#[derive(Debug, thiserror::Error)]
pub enum HostRefused {
    #[error("{host} is not in MAILROOM_SMTP_ALLOWED_HOSTS")]
    NotAllowed { host: String },
    #[error("{host} resolves to {ip}, a link-local or cloud metadata address")]
    Forbidden { host: String, ip: IpAddr },
}

/// Resolves `host:port` and applies the host policy to every address it resolves to.
pub async fn resolve_checked(
    ctx: &MailContext,
    host: &str,
    port: u16,
) -> Result<Result<Vec<SocketAddr>, HostRefused>, std::io::Error> {
    if !ctx.host_allowed(host) {
        return Ok(Err(HostRefused::NotAllowed {
            host: host.to_string(),
        }));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if let Some(bad) = addrs.iter().find(|a| is_forbidden_address(a.ip())) {
        return Ok(Err(HostRefused::Forbidden {
            host: host.to_string(),
            ip: bad.ip(),
        }));
    }
    Ok(Ok(addrs))
}

/// Everything needed to open an SMTP session, resolved from settings (password decrypted).
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub timeout: Duration,
    pub tls_verify: bool,
}

impl SmtpTarget {
    /// The target for saved settings, with their password decrypted.
    pub fn from_settings(settings: &SmtpSettings, cipher: &SecretCipher) -> anyhow::Result<Self> {
        let password = settings
            .password
            .as_deref()
            .map(|sealed| cipher.decrypt(PASSWORD_PURPOSE, sealed))
            .transpose()?;
        Ok(Self::with_password(settings, password))
    }

    /// The target for `settings` with a password already in hand (a draft being tested).
    pub fn with_password(settings: &SmtpSettings, password: Option<SecretString>) -> Self {
        Self {
            host: settings.host.clone(),
            port: settings.port,
            security: settings.security,
            username: settings.username.clone(),
            password,
            timeout: Duration::from_secs(settings.timeout_seconds.into()),
            tls_verify: settings.tls_verify,
        }
    }

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
        let mut builder = TlsParameters::builder(self.host.clone());
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

    /// A pooled transport that keeps up to `pool_size` connections open and reuses them.
    pub fn transport(
        &self,
        ctx: &MailContext,
        pool_size: u32,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
        let tls = match self.security {
            Security::None => Tls::None,
            Security::Starttls => Tls::Required(self.tls_parameters(ctx)?),
            Security::Tls => Tls::Wrapper(self.tls_parameters(ctx)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(tls)
            .timeout(Some(self.timeout))
            .hello_name(ctx.client_id())
            .pool_config(
                PoolConfig::new()
                    .max_size(pool_size)
                    .idle_timeout(Duration::from_secs(60)),
            );
        if let Some(credentials) = self.credentials() {
            builder = builder.credentials(credentials);
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden_but_local_relays_are_not() {
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden_address(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.10",
            "::1",
            "fd00::1",
            "203.0.113.7",
        ] {
            assert!(!is_forbidden_address(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn the_allow_list_matches_host_names_case_insensitively() {
        let ctx = MailContext {
            allowed_hosts: Some(vec!["smtp.example.com".into()]),
            ..Default::default()
        };
        assert!(ctx.host_allowed("SMTP.example.com."));
        assert!(!ctx.host_allowed("smtp.attacker.example"));
        assert!(MailContext::default().host_allowed("anything"));
    }
}
