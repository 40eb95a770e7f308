//! What every SMTP session of the process shares: trusted roots, the HELO name, the address
//! policy and the OAuth token cache, loaded once at start.

use anyhow::Context;
use lettre::transport::smtp::client::Certificate;
use lettre::transport::smtp::extension::ClientId;

use crate::config::Config;
use crate::outbound::policy::HostPolicy;

/// Process-wide SMTP policy from the configuration, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct MailContext {
    /// PEM blocks of extra trusted roots (`MAILROOM_SMTP_CA_FILE`).
    pub(super) extra_roots: Vec<Vec<u8>>,
    /// The system's trusted roots (DER), read once at start: reading the certificate store costs
    /// file I/O that must not run on async threads for every SMTP test or settings version.
    pub(super) system_roots: std::sync::Arc<Vec<Vec<u8>>>,
    helo_name: Option<String>,
    /// Where SMTP sessions and token requests may connect.
    pub policy: HostPolicy,
    /// OAuth access tokens, shared by every session of this process.
    pub tokens: crate::mail::oauth::TokenCache,
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
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::warn!(
                errors = native.errors.len(),
                "some system root certificates could not be read"
            );
        }
        // Keep only what rustls accepts as a trust anchor: one unparsable system certificate
        // must not make every TLS connection fail.
        let system_roots = native
            .certs
            .into_iter()
            .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
            .map(|c| c.to_vec())
            .collect();
        Ok(Self {
            extra_roots,
            system_roots: std::sync::Arc::new(system_roots),
            helo_name: config.smtp_helo_name.clone(),
            policy: HostPolicy {
                allowed_hosts: config.smtp_allowed_hosts.clone(),
            },
            tokens: Default::default(),
        })
    }

    pub fn client_id(&self) -> ClientId {
        match &self.helo_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        }
    }

    /// Whether the allow-list (if any) names `host`, compared without case and trailing dot.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.policy.host_allowed(host)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_host_names_case_insensitively() {
        let ctx = MailContext {
            policy: HostPolicy {
                allowed_hosts: Some(vec!["smtp.example.com".into()]),
            },
            ..Default::default()
        };
        assert!(ctx.host_allowed("SMTP.example.com."));
        let upper = MailContext {
            policy: HostPolicy {
                allowed_hosts: Some(vec!["LOCALHOST.".into()]),
            },
            ..Default::default()
        };
        assert!(upper.host_allowed("localhost") && upper.host_allowed("LocalHost."));
        assert!(!upper.host_allowed("localhost.attacker.example"));
        assert!(!ctx.host_allowed("smtp.attacker.example"));
        assert!(MailContext::default().host_allowed("anything"));
    }
}
