//! The one place an SMTP connection is configured and opened, for delivery and for the connection
//! test alike: host, port, security, credentials, timeouts, HELO name, TLS roots, host policy.

// lettre's `AsyncNetworkStream` is deprecated as public API, but it is the only way to run the
// implicit-TLS handshake with lettre's `TlsParameters` over a socket we opened ourselves.
#![allow(deprecated)]

use std::fmt;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use utoipa::ToSchema;

use anyhow::Context;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{
    AsyncNetworkStream, AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::config::Config;

/// Process-wide SMTP policy from the configuration, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct MailContext {
    /// PEM blocks of extra trusted roots (`MAILROOM_SMTP_CA_FILE`).
    extra_roots: Vec<Vec<u8>>,
    /// The system's trusted roots (DER), read once at start: reading the certificate store costs
    /// file I/O that must not run on async threads for every SMTP test or settings version.
    system_roots: std::sync::Arc<Vec<Vec<u8>>>,
    helo_name: Option<String>,
    /// Where SMTP sessions and token requests may connect.
    pub policy: HostPolicy,
    /// OAuth access tokens, shared by every session of this process.
    pub tokens: super::oauth::TokenCache,
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

pub use crate::outbound::policy::{is_forbidden_address, HostPolicy, HostRefused};

/// Resolves `host:port` and applies the host policy to every address it resolves to.
pub async fn resolve_checked(
    ctx: &MailContext,
    host: &str,
    port: u16,
) -> Result<Result<Vec<SocketAddr>, HostRefused>, std::io::Error> {
    crate::outbound::policy::resolve_checked(&ctx.policy, host, port).await
}

/// A stream lettre can drive: a TCP or TLS stream we opened (with TCP_NODELAY: SMTP is a
/// request/response protocol and Nagle's algorithm would stall every command on delayed ACKs),
/// with bytes we already read (the greeting, in the test) replayed first.
pub struct SmtpStream {
    replay: Vec<u8>,
    inner: Pin<Box<dyn Io>>,
    peer: SocketAddr,
}

trait Io: AsyncRead + AsyncWrite + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Send + Sync> Io for T {}

impl SmtpStream {
    pub fn plain(tcp: TcpStream, peer: SocketAddr) -> Self {
        Self {
            replay: Vec::new(),
            inner: Box::pin(tcp),
            peer,
        }
    }

    /// Implicit TLS, with lettre's TLS parameters (the same roots and verification as STARTTLS).
    pub async fn implicit_tls(
        tcp: TcpStream,
        peer: SocketAddr,
        params: TlsParameters,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(Self::plain(tcp, peer)));
        stream.upgrade_tls(params).await?;
        Ok(Self {
            replay: Vec::new(),
            inner: Box::pin(stream.compat()),
            peer,
        })
    }

    /// Returns `bytes` to the next reader before anything from the socket.
    pub fn with_replay(self, bytes: Vec<u8>) -> Self {
        Self {
            replay: bytes,
            ..self
        }
    }
}

impl fmt::Debug for SmtpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpStream({})", self.peer)
    }
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.drain(..n);
            return Poll::Ready(Ok(()));
        }
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// Opens a TCP connection to `addr` with TCP_NODELAY set.
pub async fn connect_tcp(addr: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection to {addr} within {limit:?}"),
            )
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Why a delivery connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refusing to connect: {0}")]
    Refused(#[from] HostRefused),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("{step} did not complete within {secs} s")]
    Timeout { step: &'static str, secs: u64 },
    #[error("no OAuth access token: {0}")]
    OAuth(#[from] super::oauth::OAuthError),
    #[error("the server refused the OAuth access token (AUTH XOAUTH2){}", .challenge.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    TokenRejected { challenge: Option<String> },
}

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
    pub oauth: Option<super::oauth::TokenSource>,
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

    /// Opens an authenticated session ready for MAIL FROM: resolve (with the host policy), connect,
    /// implicit TLS or STARTTLS as configured, EHLO, AUTH. The SMTP test walks the same steps one by
    /// one with the same parameters. `tls` comes from [`Self::tls_parameters`], built once per
    /// settings version (it reads the system's root certificates).
    pub async fn connect(&self, ctx: &MailContext, tls: &TlsParameters) -> Result<Session, ConnectError> {
        let Some(source) = &self.oauth else {
            return self.connect_with(ctx, tls, None).await;
        };
        let token = ctx.tokens.get(&ctx.policy, source).await?;
        match self.connect_with(ctx, tls, Some(&token.token)).await {
            // A refused token is fetched again once (it may have been revoked or rotated early)
            // before the attempt counts as failed.
            Err(ConnectError::TokenRejected { .. }) => {
                ctx.tokens.invalidate(source);
                let token = ctx.tokens.get(&ctx.policy, source).await?;
                self.connect_with(ctx, tls, Some(&token.token)).await
            }
            other => other,
        }
    }

    /// One session with the password, or with `token` for XOAUTH2.
    async fn connect_with(
        &self,
        ctx: &MailContext,
        tls: &TlsParameters,
        token: Option<&SecretString>,
    ) -> Result<Session, ConnectError> {
        let limit = self.timeout;
        let secs = limit.as_secs();
        let timed = |step: &'static str| move |_| ConnectError::Timeout { step, secs };
        let addrs = tokio::time::timeout(limit, resolve_checked(ctx, &self.host, self.port))
            .await
            .map_err(timed("DNS resolution"))???;
        let mut last = None;
        let mut opened = None;
        for addr in addrs {
            match connect_tcp(addr, limit).await {
                Ok(tcp) => {
                    opened = Some((tcp, addr));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let (tcp, peer) = opened.ok_or_else(|| {
            last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
            })
        })?;
        let stream = match self.security {
            Security::Tls => tokio::time::timeout(limit, SmtpStream::implicit_tls(tcp, peer, tls.clone()))
                .await
                .map_err(timed("the TLS handshake"))??,
            _ => SmtpStream::plain(tcp, peer),
        };
        let client_id = ctx.client_id();
        let mut conn = tokio::time::timeout(
            limit,
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &client_id),
        )
        .await
        .map_err(timed("the greeting and EHLO"))??;
        if self.security == Security::Starttls {
            tokio::time::timeout(limit, conn.starttls(tls.clone(), &client_id))
                .await
                .map_err(timed("STARTTLS"))??;
        }
        let pipelining = tokio::time::timeout(limit, offers_pipelining(&mut conn, &client_id))
            .await
            .map_err(timed("EHLO"))??;
        match (token, &self.username) {
            (Some(token), Some(user)) => {
                match tokio::time::timeout(limit, xoauth2(&mut conn, user, token))
                    .await
                    .map_err(timed("AUTH"))?
                {
                    Ok(_) => {}
                    Err(Xoauth2Failure::Rejected { challenge, .. }) => {
                        return Err(ConnectError::TokenRejected { challenge })
                    }
                    Err(Xoauth2Failure::Failed { message, .. }) => {
                        return Err(ConnectError::Io(std::io::Error::other(message)))
                    }
                    Err(Xoauth2Failure::NotOffered) => {
                        return Err(ConnectError::Io(std::io::Error::other(
                            "the server does not offer AUTH XOAUTH2",
                        )))
                    }
                }
            }
            _ => {
                if let Some(credentials) = self.credentials() {
                    tokio::time::timeout(
                        limit,
                        conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials),
                    )
                    .await
                    .map_err(timed("AUTH"))??;
                }
            }
        }
        Ok(Session { conn, pipelining })
    }
}

/// An open, authenticated SMTP session and what the transaction may rely on.
pub struct Session {
    pub conn: AsyncSmtpConnection,
    /// The server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA may go in one write.
    pub pipelining: bool,
}

/// Whether the server lists PIPELINING in its EHLO reply. lettre keeps only the keywords it
/// uses, so EHLO is asked once more (before AUTH, where it resets nothing), once per session.
async fn offers_pipelining(
    conn: &mut AsyncSmtpConnection,
    client_id: &ClientId,
) -> Result<bool, lettre::transport::smtp::Error> {
    let reply = conn
        .command(lettre::transport::smtp::commands::Ehlo::new(client_id.clone()))
        .await?;
    let offered = reply
        .message()
        .any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"));
    Ok(offered)
}

/// A command line sent as is (lettre adds nothing).
struct RawCommand(String);

impl fmt::Display for RawCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// Why `AUTH XOAUTH2` did not succeed. Every text in it has the token and its encodings
/// redacted: a server may echo what it was sent, and its words end up in answers and logs.
pub enum Xoauth2Failure {
    /// The server refused the token; `challenge` is its decoded explanation, `reply` its last
    /// answer with `code`.
    Rejected {
        challenge: Option<String>,
        code: Option<u16>,
        reply: Option<String>,
    },
    /// The server does not advertise XOAUTH2.
    NotOffered,
    /// Not an answer to the token (the connection failed, or the answer did not parse).
    Failed { message: String, timeout: bool },
}

/// The forms an access token takes on the wire, for redaction: the token, its base64, the
/// XOAUTH2 initial response and its base64.
pub fn token_forms(user: &str, token: &SecretString) -> Vec<String> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token = token.expose_secret();
    let blob = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    // Longest first, so that no shorter form leaves part of a longer one behind.
    vec![b64(&blob), blob, b64(token), token.to_string()]
}

/// `AUTH XOAUTH2` with the initial response. A server that refuses the token answers 334 with a
/// base64 JSON explanation, to which the client sends an empty line and gets the final refusal;
/// lettre's own mechanism cannot read that explanation, so the exchange is done here.
pub async fn xoauth2(
    conn: &mut AsyncSmtpConnection,
    user: &str,
    token: &SecretString,
) -> Result<lettre::transport::smtp::response::Response, Xoauth2Failure> {
    if !conn.server_info().supports_auth_mechanism(Mechanism::Xoauth2) {
        return Err(Xoauth2Failure::NotOffered);
    }
    let forms = token_forms(user, token);
    let clean = |text: String| super::redact(&text, &forms);
    let reply_text = |e: &lettre::transport::smtp::Error| clean(super::error_chain(e));
    match conn
        .command(RawCommand(format!("AUTH XOAUTH2 {}", forms[0])))
        .await
    {
        Ok(r) if r.has_code(334) => {
            let challenge = r.first_line().and_then(super::oauth::decode_challenge).map(clean);
            let last = conn.command(RawCommand(String::new())).await.err();
            Err(Xoauth2Failure::Rejected {
                challenge,
                code: last.as_ref().and_then(|e| e.status()).map(u16::from),
                reply: last.as_ref().map(reply_text),
            })
        }
        Ok(r) => Ok(r),
        Err(e) if e.is_permanent() || e.is_transient() => Err(Xoauth2Failure::Rejected {
            challenge: None,
            code: e.status().map(u16::from),
            reply: Some(reply_text(&e)),
        }),
        Err(e) => Err(Xoauth2Failure::Failed {
            message: reply_text(&e),
            timeout: e.is_timeout(),
        }),
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
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "::169.254.169.254",
            "2002:a9fe:a9fe::1",
            "::ffff:0:a9fe:a9fe",
            "100.100.100.200",
            "::ffff:100.100.100.200",
            "2001:0:a9fe:a9fe::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "255.255.255.255",
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
    fn every_spelling_the_resolver_takes_for_a_literal_is_read_as_that_address() {
        use crate::outbound::policy::ip_literal;
        for spelling in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
            "0xa9.0xfe.0xa9.0xfe",
            "[::ffff:169.254.169.254]",
            "::ffff:a9fe:a9fe",
            "169.254.169.254.",
        ] {
            let ip = ip_literal(spelling).unwrap_or_else(|| panic!("{spelling}"));
            assert!(is_forbidden_address(ip), "{spelling} -> {ip}");
        }
        assert_eq!(ip_literal("0"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(ip_literal("127.1"), Some("127.0.0.1".parse().unwrap()));
        for name in [
            "smtp.example.com",
            "localhost",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x1g",
            "mail-1",
        ] {
            assert_eq!(ip_literal(name), None, "{name}");
        }
    }

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
