//! The SMTP connection test: walks the session step by step with lettre's connection and the
//! same TLS parameters, HELO name, credentials and timeouts as delivery, and says exactly which
//! step failed, with a stable code and, where a likely fix is known, a hint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::Address;
use secrecy::SecretString;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use utoipa::ToSchema;

use super::error_chain;
use super::message::{self, Content, Sender};
use super::oauth::TokenSource;
use super::transport::{
    connect_tcp, resolve_checked, xoauth2, HostRefused, MailContext, Security, SmtpStream, SmtpTarget,
    Xoauth2Failure,
};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServerInfo {
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// Every step a test can report, in the order they run.
pub const STEP_NAMES: &[&str] = &[
    "resolve",
    "connect",
    "tls",
    "greeting",
    "ehlo",
    "starttls",
    "oauth_token",
    "auth",
    "mail_from",
    "rcpt_to",
    "data",
];

/// Every code a failed test can carry.
pub const ERROR_CODES: &[&str] = &[
    "dns_failed",
    "host_not_allowed",
    "connection_refused",
    "connection_timeout",
    "timeout",
    "tls_failed",
    "certificate_invalid",
    "starttls_unsupported",
    "auth_unsupported",
    "auth_failed",
    "oauth_token_failed",
    "oauth_invalid_client",
    "oauth_invalid_grant",
    "oauth_unreachable",
    "sender_rejected",
    "recipient_rejected",
    "message_rejected",
];

/// A string schema whose values are `values` (the lists above are the one source).
fn string_enum(
    description: &str,
    values: &[&str],
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// The name of a test step, as a schema.
pub struct StepName;

impl utoipa::PartialSchema for StepName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_enum("A step of an SMTP test, in the order they run.", STEP_NAMES)
    }
}

impl ToSchema for StepName {}

/// The code of a failed test, as a schema.
pub struct ErrorCode;

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_enum("Why an SMTP test failed.", ERROR_CODES)
    }
}

impl ToSchema for ErrorCode {}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    #[schema(value_type = StepName)]
    pub step: &'static str,
    pub ok: bool,
    pub duration_ms: u64,
    pub detail: String,
    /// The SMTP reply code, when the server answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestError {
    #[schema(value_type = ErrorCode)]
    pub code: &'static str,
    #[schema(value_type = StepName)]
    pub step: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestReport {
    pub ok: bool,
    pub duration_ms: u64,
    pub server: ServerInfo,
    pub steps: Vec<Step>,
    pub error: Option<TestError>,
    /// Whether a test message was accepted by the server.
    pub message_sent: bool,
}

/// Providers known to refuse account passwords over SMTP and require an app password.
const APP_PASSWORD_PROVIDERS: &[&str] = &[
    "gmail",
    "google",
    "outlook",
    "office365",
    "yahoo",
    "icloud",
    "me.com",
    "zoho",
    "fastmail",
];

struct Run<'a> {
    target: &'a SmtpTarget,
    steps: Vec<Step>,
    redact: &'a [String],
}

type StepResult<T> = Result<T, TestError>;

fn error(
    code: &'static str,
    step: &'static str,
    message: impl Into<String>,
    hint: Option<String>,
) -> TestError {
    debug_assert!(ERROR_CODES.contains(&code), "undocumented test error code {code}");
    debug_assert!(STEP_NAMES.contains(&step), "undocumented test step {step}");
    TestError {
        code,
        step,
        message: message.into(),
        hint,
    }
}

impl Run<'_> {
    fn record(
        &mut self,
        step: &'static str,
        started: Instant,
        ok: bool,
        detail: String,
        smtp_code: Option<u16>,
    ) {
        debug_assert!(STEP_NAMES.contains(&step), "undocumented test step {step}");
        self.steps.push(Step {
            step,
            ok,
            duration_ms: started.elapsed().as_millis() as u64,
            detail: super::redact(&detail, self.redact),
            smtp_code,
        });
    }

    fn secs(&self) -> u64 {
        self.target.timeout.as_secs()
    }

    /// Classifies a TLS failure, telling certificate problems from protocol mismatches.
    fn tls_error(&self, step: &'static str, text: &str) -> TestError {
        let host = &self.target.host;
        if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("NotValidForName")
        {
            let why = if text.contains("NotValidForName") {
                format!("the certificate is not issued for {host}")
            } else if text.contains("UnknownIssuer") {
                "the certificate is self-signed or signed by an unknown authority".to_string()
            } else if text.contains("Expired") {
                "the certificate has expired".to_string()
            } else {
                "the certificate could not be verified".to_string()
            };
            error(
                "certificate_invalid",
                step,
                format!("{why} ({text})"),
                Some(
                    "connect by the name the certificate was issued for, or trust its issuer with MAILROOM_SMTP_CA_FILE; \
                     for an internal relay you trust, set \"tls_verify\": false"
                        .to_string(),
                ),
            )
        } else {
            let hint = if step == "tls" {
                Some(format!(
                    "the server on port {} does not speak implicit TLS; if it offers STARTTLS (usually port 587) use \"security\": \"starttls\"",
                    self.target.port
                ))
            } else {
                None
            };
            error(
                "tls_failed",
                step,
                format!("the TLS handshake failed: {text}"),
                hint,
            )
        }
    }

    fn smtp_error(
        &self,
        step: &'static str,
        e: &lettre::transport::smtp::Error,
        code: &'static str,
        what: &str,
    ) -> TestError {
        if e.is_timeout() {
            return error(
                "timeout",
                step,
                format!("no answer to {what} within {} s", self.secs()),
                None,
            );
        }
        if e.is_tls() {
            return self.tls_error(step, &error_chain(e));
        }
        let text = super::redact(&error_chain(e), self.redact);
        error(code, step, format!("{what} failed: {text}"), None)
    }
}

async fn with_timeout<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, f).await.ok()
}

/// Reads one complete SMTP reply (possibly multi-line); returns its bytes.
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
        if byte[0] == b'\n' {
            let line_start = buf[..buf.len() - 1]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let line = &buf[line_start..];
            if line.len() < 4 || line[3] != b'-' {
                return Ok(buf);
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

fn reply_code(reply: &[u8]) -> Option<u16> {
    std::str::from_utf8(reply.get(..3)?).ok()?.parse().ok()
}

pub struct ProbeRequest<'a> {
    pub target: &'a SmtpTarget,
    /// Needed to send a test message: the configured From identity.
    pub sender: Option<&'a Sender>,
    pub to: Option<&'a Address>,
    pub redact: &'a [String],
}

/// Runs the test. Never fails: every problem becomes the report's `error`.
pub async fn run(ctx: &MailContext, req: ProbeRequest<'_>) -> TestReport {
    let started = Instant::now();
    let mut run = Run {
        target: req.target,
        steps: Vec::new(),
        redact: req.redact,
    };
    let outcome = steps(ctx, &mut run, &req).await;
    let (error, message_sent) = match outcome {
        Ok(sent) => (None, sent),
        Err(mut e) => {
            e.message = super::redact(&e.message, req.redact);
            (Some(e), false)
        }
    };
    TestReport {
        ok: error.is_none(),
        duration_ms: started.elapsed().as_millis() as u64,
        server: ServerInfo {
            host: req.target.host.clone(),
            port: req.target.port,
            security: req.target.security,
        },
        steps: run.steps,
        error,
        message_sent,
    }
}

/// The steps in order, as far as they get; Ok(true) when a test message was accepted.
async fn steps(ctx: &MailContext, run: &mut Run<'_>, req: &ProbeRequest<'_>) -> StepResult<bool> {
    let t = req.target;
    let token = match &t.oauth {
        Some(source) => Some(oauth_token_step(ctx, run, source).await?),
        None => None,
    };
    let addrs = resolve_step(ctx, run, t).await?;
    let (tcp, peer) = connect_step(run, t, &addrs).await?;
    let tls_params = t
        .tls_parameters(ctx)
        .map_err(|e| error("tls_failed", "tls", format!("TLS cannot be set up: {e}"), None))?;
    let (stream, greeting) = open_step(run, t, tcp, peer, &tls_params).await?;
    let client_id = ctx.client_id();
    let mut conn = ehlo_step(run, t, stream, greeting, &client_id).await?;
    if t.security == Security::Starttls {
        starttls_step(run, t, &mut conn, &tls_params, &client_id).await?;
    }
    match (&token, &t.username) {
        (Some(token), Some(user)) => xoauth2_step(run, t, &mut conn, user, token).await?,
        _ => {
            if let Some(credentials) = t.credentials() {
                auth_step(run, t, &mut conn, &credentials).await?;
            }
        }
    }
    let (Some(sender), Some(to)) = (req.sender, req.to) else {
        let _ = with_timeout(t.timeout, conn.quit()).await;
        return Ok(false);
    };
    send_step(run, t, &mut conn, sender, to).await
}

/// `oauth_token`: a fresh access token from the provider (the cache is bypassed: a test checks
/// the credentials as they are now).
async fn oauth_token_step(
    ctx: &MailContext,
    run: &mut Run<'_>,
    source: &TokenSource,
) -> StepResult<SecretString> {
    let at = Instant::now();
    match super::oauth::fetch(&ctx.policy, source).await {
        Ok(token) => {
            run.record("oauth_token", at, true, "access token received".into(), None);
            Ok(token.token)
        }
        Err(e) => {
            run.record("oauth_token", at, false, e.to_string(), None);
            Err(error(e.kind.code(), "oauth_token", e.to_string(), e.hint()))
        }
    }
}

/// `auth` with `AUTH XOAUTH2`: a refusal is explained from the server's decoded challenge.
async fn xoauth2_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    user: &str,
    token: &SecretString,
) -> StepResult<()> {
    let secs = t.timeout.as_secs();
    let at = Instant::now();
    let Some(result) = with_timeout(t.timeout, xoauth2(conn, user, token)).await else {
        run.record("auth", at, false, format!("no answer within {secs} s"), None);
        return Err(error(
            "timeout",
            "auth",
            format!("AUTH got no answer within {secs} s"),
            None,
        ));
    };
    match result {
        Ok(response) => {
            run.record(
                "auth",
                at,
                true,
                format!("AUTH XOAUTH2 accepted for {user}"),
                Some(u16::from(response.code())),
            );
            Ok(())
        }
        Err(Xoauth2Failure::NotOffered) => {
            run.record(
                "auth",
                at,
                false,
                "XOAUTH2 is not among the advertised extensions".into(),
                None,
            );
            Err(error(
                "auth_unsupported",
                "auth",
                format!("{} does not offer AUTH XOAUTH2", t.host),
                Some("servers often offer AUTH only after STARTTLS: use \"security\": \"starttls\" on port 587".into()),
            ))
        }
        Err(Xoauth2Failure::Failed { message, timeout }) => {
            run.record("auth", at, false, message.clone(), None);
            Err(if timeout {
                error(
                    "timeout",
                    "auth",
                    format!("no answer to AUTH XOAUTH2 within {secs} s"),
                    None,
                )
            } else {
                error(
                    "auth_failed",
                    "auth",
                    format!("AUTH XOAUTH2 failed: {message}"),
                    None,
                )
            })
        }
        Err(Xoauth2Failure::Rejected {
            challenge,
            code,
            reply,
        }) => {
            let explained = challenge.or(reply).unwrap_or_else(|| "refused".into());
            run.record(
                "auth",
                at,
                false,
                format!("AUTH XOAUTH2 rejected: {explained}"),
                code,
            );
            let host = t.host.to_ascii_lowercase();
            let hint = if host.contains("office365") || host.contains("outlook") {
                "Microsoft: enable SMTP AUTH for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), and grant the app's service principal send rights in Exchange (New-ServicePrincipal, then Add-MailboxPermission FullAccess)"
            } else if host.contains("gmail") || host.contains("google") {
                "Google: grant the service account's client id domain-wide delegation for https://mail.google.com/ in the Admin console, and use the mailbox as username"
            } else {
                "the server refused the access token: check that username is the mailbox the token was issued for, and the token's scope"
            };
            Err(error(
                "auth_failed",
                "auth",
                format!(
                    "{} refused the OAuth access token for {user}: {explained}",
                    t.host
                ),
                Some(hint.into()),
            ))
        }
    }
}

/// `resolve`: DNS, with the host policy applied to every address.
async fn resolve_step(ctx: &MailContext, run: &mut Run<'_>, t: &SmtpTarget) -> StepResult<Vec<SocketAddr>> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let at = Instant::now();
    let addrs = match with_timeout(limit, resolve_checked(ctx, &t.host, t.port)).await {
        None => {
            run.record(
                "resolve",
                at,
                false,
                format!("no DNS answer within {secs} s"),
                None,
            );
            return Err(error(
                "dns_failed",
                "resolve",
                format!("{} did not resolve within {secs} s", t.host),
                None,
            ));
        }
        Some(Err(e)) => {
            run.record("resolve", at, false, format!("{}: {e}", t.host), None);
            return Err(error(
                "dns_failed",
                "resolve",
                format!("{} could not be resolved: {e}", t.host),
                Some("check the host name for typos; from a shell on this machine, `getent hosts HOST` shows what resolves".into()),
            ));
        }
        Some(Ok(Err(refused))) => {
            run.record("resolve", at, false, refused.to_string(), None);
            let hint = match refused {
                HostRefused::NotAllowed { .. } => {
                    Some("add the host to MAILROOM_SMTP_ALLOWED_HOSTS if it is a legitimate relay".into())
                }
                HostRefused::Forbidden { .. } => None,
            };
            return Err(error(
                "host_not_allowed",
                "resolve",
                format!("refusing to connect: {refused}"),
                hint,
            ));
        }
        Some(Ok(Ok(addrs))) => addrs,
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    run.record(
        "resolve",
        at,
        true,
        format!("{} -> {}", t.host, list.join(", ")),
        None,
    );
    Ok(addrs)
}

/// `connect`: each address in turn, as a client library would.
async fn connect_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    addrs: &[SocketAddr],
) -> StepResult<(TcpStream, SocketAddr)> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let at = Instant::now();
    let mut last_error = None;
    let mut tcp = None;
    for addr in addrs {
        match connect_tcp(*addr, limit).await {
            Ok(s) => {
                tcp = Some((s, *addr));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last_error = Some((addr, None)),
            Err(e) => last_error = Some((addr, Some(e))),
        }
    }
    let Some((tcp, peer)) = tcp else {
        return Err(match last_error {
            Some((addr, Some(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                run.record("connect", at, false, format!("{addr}: connection refused"), None);
                error(
                    "connection_refused",
                    "connect",
                    format!("nothing accepts connections on {addr}"),
                    Some("check the port: 587 (STARTTLS) and 465 (implicit TLS) are usual for submission, 25 for relays".into()),
                )
            }
            Some((addr, Some(e))) => {
                run.record("connect", at, false, format!("{addr}: {e}"), None);
                error(
                    "connection_refused",
                    "connect",
                    format!("cannot connect to {addr}: {e}"),
                    None,
                )
            }
            _ => {
                let addr = addrs.first().map(|a| a.to_string()).unwrap_or_default();
                run.record(
                    "connect",
                    at,
                    false,
                    format!("no answer from {addr} within {secs} s"),
                    None,
                );
                error(
                    "connection_timeout",
                    "connect",
                    format!("the connection to {addr} did not open within {secs} s"),
                    Some("a firewall may drop the traffic: many cloud providers block outbound port 25; try 587 or 465".into()),
                )
            }
        });
    };
    run.record("connect", at, true, format!("connected to {peer}"), None);
    Ok((tcp, peer))
}

/// `tls` (implicit TLS) or `greeting` (plain and STARTTLS): the stream and the greeting read.
async fn open_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    tcp: TcpStream,
    peer: SocketAddr,
    tls_params: &TlsParameters,
) -> StepResult<(SmtpStream, Vec<u8>)> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let mut greeting = Vec::new();
    let stream: SmtpStream = if t.security == Security::Tls {
        let at = Instant::now();
        match with_timeout(limit, SmtpStream::implicit_tls(tcp, peer, tls_params.clone())).await {
            None => {
                run.record(
                    "tls",
                    at,
                    false,
                    format!("no TLS handshake within {secs} s"),
                    None,
                );
                return Err(error(
                    "timeout",
                    "tls",
                    format!("the TLS handshake did not complete within {secs} s"),
                    Some(format!(
                        "port {} may expect STARTTLS or plain SMTP: try \"security\": \"starttls\"",
                        t.port
                    )),
                ));
            }
            Some(Err(e)) => {
                let text = error_chain(&e);
                run.record("tls", at, false, text.clone(), None);
                return Err(run.tls_error("tls", &text));
            }
            Some(Ok(stream)) => {
                run.record("tls", at, true, format!("TLS established with {}", t.host), None);
                stream
            }
        }
    } else {
        let at = Instant::now();
        let mut tcp = tcp;
        match read_greeting(&mut tcp, t, limit).await {
            Ok(bytes) => {
                let code = reply_code(&bytes);
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                if code != Some(220) {
                    run.record("greeting", at, false, text.clone(), code);
                    return Err(error(
                        "connection_refused",
                        "greeting",
                        format!("the server refused the session: {text}"),
                        None,
                    ));
                }
                run.record("greeting", at, true, text, code);
                greeting = bytes;
            }
            Err(e) => {
                run.record("greeting", at, false, e.message.clone(), None);
                return Err(e);
            }
        }
        SmtpStream::plain(tcp, peer)
    };
    Ok((stream, greeting))
}

/// `ehlo`: lettre reads the greeting again from the replay buffer, then says EHLO.
async fn ehlo_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    stream: SmtpStream,
    greeting: Vec<u8>,
    client_id: &ClientId,
) -> StepResult<AsyncSmtpConnection> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let at = Instant::now();
    let stream = stream.with_replay(greeting);
    let conn = match with_timeout(
        limit,
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), client_id),
    )
    .await
    {
        None => {
            run.record("ehlo", at, false, format!("no answer within {secs} s"), None);
            return Err(error(
                "timeout",
                "ehlo",
                format!("the server did not answer EHLO within {secs} s"),
                None,
            ));
        }
        Some(Err(e)) => {
            run.record("ehlo", at, false, error_chain(&e), e.status().map(u16::from));
            return Err(run.smtp_error("ehlo", &e, "connection_refused", "EHLO"));
        }
        Some(Ok(c)) => c,
    };
    run.record("ehlo", at, true, conn.server_info().to_string(), Some(250));
    Ok(conn)
}

/// `starttls`: offered, and completed with verified TLS.
async fn starttls_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    tls_params: &TlsParameters,
    client_id: &ClientId,
) -> StepResult<()> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let at = Instant::now();
    if !conn.server_info().supports_feature(Extension::StartTls) {
        run.record(
            "starttls",
            at,
            false,
            "STARTTLS is not among the advertised extensions".into(),
            None,
        );
        let hint = if t.port == 465 {
            "port 465 normally expects implicit TLS: try \"security\": \"tls\"".to_string()
        } else {
            "use \"security\": \"tls\" if the server offers implicit TLS (usually port 465), or ask its administrator to enable STARTTLS".to_string()
        };
        return Err(error(
            "starttls_unsupported",
            "starttls",
            format!("{} does not offer STARTTLS on port {}", t.host, t.port),
            Some(hint),
        ));
    }
    match with_timeout(limit, conn.starttls(tls_params.clone(), client_id)).await {
        None => {
            run.record("starttls", at, false, format!("no answer within {secs} s"), None);
            return Err(error(
                "timeout",
                "starttls",
                format!("STARTTLS did not complete within {secs} s"),
                None,
            ));
        }
        Some(Err(e)) => {
            let text = error_chain(&e);
            run.record("starttls", at, false, text.clone(), e.status().map(u16::from));
            return Err(if e.status().is_some() {
                run.smtp_error("starttls", &e, "tls_failed", "STARTTLS")
            } else {
                run.tls_error("starttls", &text)
            });
        }
        Some(Ok(())) => run.record(
            "starttls",
            at,
            true,
            format!("TLS established; server: {}", conn.server_info()),
            Some(220),
        ),
    }
    Ok(())
}

/// `auth`: PLAIN or LOGIN, as offered.
async fn auth_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    credentials: &Credentials,
) -> StepResult<()> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let at = Instant::now();
    let mechanisms = [Mechanism::Plain, Mechanism::Login];
    let Some(mechanism) = conn.server_info().get_auth_mechanism(&mechanisms) else {
        run.record(
            "auth",
            at,
            false,
            "no PLAIN or LOGIN among the advertised extensions".into(),
            None,
        );
        let hint = if t.security == Security::None {
            "servers often offer AUTH only after STARTTLS: use \"security\": \"starttls\" (port 587) or \"tls\" (port 465)".to_string()
        } else {
            "the server offers no password authentication here; leave username empty if it relays without AUTH".to_string()
        };
        return Err(error(
            "auth_unsupported",
            "auth",
            format!("{} offers no AUTH PLAIN or LOGIN", t.host),
            Some(hint),
        ));
    };
    match with_timeout(limit, conn.auth(&[mechanism], credentials)).await {
        None => {
            run.record("auth", at, false, format!("no answer within {secs} s"), None);
            return Err(error(
                "timeout",
                "auth",
                format!("AUTH got no answer within {secs} s"),
                None,
            ));
        }
        Some(Err(e)) => {
            let code = e.status().map(u16::from);
            run.record(
                "auth",
                at,
                false,
                format!("AUTH {mechanism} rejected: {}", error_chain(&e)),
                code,
            );
            if e.is_timeout() || e.is_tls() {
                return Err(run.smtp_error("auth", &e, "auth_failed", "AUTH"));
            }
            let host = t.host.to_ascii_lowercase();
            let hint = if APP_PASSWORD_PROVIDERS.iter().any(|p| host.contains(p)) {
                "this provider rejects account passwords over SMTP: create an app password (with two-factor authentication on) and use it as the password".to_string()
            } else if code == Some(535) {
                "check the username and password; some providers require an app password or enabling SMTP AUTH for the account".to_string()
            } else {
                "check the username and password".to_string()
            };
            let mut err = run.smtp_error("auth", &e, "auth_failed", &format!("AUTH {mechanism}"));
            err.code = "auth_failed";
            err.hint = Some(hint);
            return Err(err);
        }
        Some(Ok(response)) => run.record(
            "auth",
            at,
            true,
            format!(
                "AUTH {mechanism} accepted for {}",
                t.username.as_deref().unwrap_or("")
            ),
            Some(u16::from(response.code())),
        ),
    }
    Ok(())
}

/// `mail_from`, `rcpt_to` and `data`: a real test message.
async fn send_step(
    run: &mut Run<'_>,
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    sender: &Sender,
    to: &Address,
) -> StepResult<bool> {
    let limit = t.timeout;
    let secs = limit.as_secs();
    let from = sender.from.email.clone();
    let envelope: [(&'static str, &'static str); 2] = [
        ("mail_from", "sender_rejected"),
        ("rcpt_to", "recipient_rejected"),
    ];
    for (step, code) in &envelope {
        let at = Instant::now();
        let result = match *step {
            "mail_from" => with_timeout(limit, conn.command(Mail::new(Some(from.clone()), vec![]))).await,
            _ => with_timeout(limit, conn.command(Rcpt::new(to.clone(), vec![]))).await,
        };
        match result {
            None => {
                run.record(step, at, false, format!("no answer within {secs} s"), None);
                return Err(error("timeout", step, format!("no answer within {secs} s"), None));
            }
            Some(Err(e)) => {
                run.record(step, at, false, error_chain(&e), e.status().map(u16::from));
                let what = if *step == "mail_from" {
                    format!("MAIL FROM:<{from}>")
                } else {
                    format!("RCPT TO:<{to}>")
                };
                let mut err = run.smtp_error(step, &e, code, &what);
                if *step == "mail_from" && err.code == *code {
                    err.hint = Some("the server may only accept senders the account owns: set from_address to an address of the SMTP account".into());
                }
                return Err(err);
            }
            Some(Ok(r)) => run.record(
                step,
                at,
                true,
                r.message().collect::<Vec<_>>().join(" "),
                Some(u16::from(r.code())),
            ),
        }
    }

    let at = Instant::now();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("test-{}", uuid::Uuid::new_v4());
    let text = format!(
        "This is a test message from mailroom.\n\nIt was sent at {now} through {}:{} ({}) to check the SMTP settings.\nNo action is needed.\n",
        t.host,
        t.port,
        t.security.as_str()
    );
    let html = format!("<p>This is a test message from mailroom.</p><p>It was sent at {now} through {}:{} ({}) to check the SMTP settings. No action is needed.</p>", t.host, t.port, t.security.as_str());
    let subject = format!("mailroom test message ({now})");
    let to_string = to.to_string();
    let message = message::build(
        sender,
        &Content {
            notification_id: &id,
            to: &to_string,
            to_name: None,
            subject: &subject,
            text: &text,
            html: &html,
        },
    )
    .map_err(|e| {
        error(
            "message_rejected",
            "data",
            format!("the test message could not be built: {e}"),
            None,
        )
    })?;
    let bytes = message.formatted();
    let result = with_timeout(limit, async {
        conn.command(Data).await?;
        conn.message(&bytes).await
    })
    .await;
    match result {
        None => {
            run.record("data", at, false, format!("no answer within {secs} s"), None);
            Err(error(
                "timeout",
                "data",
                format!("the server did not accept the message within {secs} s"),
                None,
            ))
        }
        Some(Err(e)) => {
            run.record("data", at, false, error_chain(&e), e.status().map(u16::from));
            Err(run.smtp_error("data", &e, "message_rejected", "DATA"))
        }
        Some(Ok(r)) => {
            run.record(
                "data",
                at,
                true,
                r.message().collect::<Vec<_>>().join(" "),
                Some(u16::from(r.code())),
            );
            let _ = with_timeout(limit, conn.quit()).await;
            Ok(true)
        }
    }
}

/// Waits for the greeting. A server that stays silent may be waiting for a TLS ClientHello: after
/// a short while we send one line; a TLS server answers with an alert or hangs up, an SMTP server
/// that is merely slow ignores it or answers in SMTP.
async fn read_greeting(tcp: &mut TcpStream, t: &SmtpTarget, limit: Duration) -> StepResult<Vec<u8>> {
    let secs = limit.as_secs();
    let implicit_tls_hint = || {
        if t.port == 465 {
            format!(
                "port {} normally expects implicit TLS: try \"security\": \"tls\"",
                t.port
            )
        } else {
            "the server may expect implicit TLS: try \"security\": \"tls\"".to_string()
        }
    };
    let deadline = tokio::time::Instant::now() + limit;
    let nudge_after = Duration::from_millis(1500).min(limit / 2);
    // Port 25 servers may penalise clients that talk first (postscreen's pregreet test).
    let may_nudge = t.port != 25;
    let mut peek = [0u8; 1];
    let first = tokio::time::timeout(if may_nudge { nudge_after } else { limit }, tcp.peek(&mut peek)).await;
    let nudged = first.is_err() && may_nudge;
    if nudged {
        let _ = tcp.write_all(b"EHLO mailroom-probe\r\n").await;
    }
    match tokio::time::timeout_at(deadline, tcp.peek(&mut peek)).await {
        Err(_) => {
            return Err(error(
                "timeout",
                "greeting",
                format!("the server sent nothing for {secs} s after the connection opened"),
                Some(implicit_tls_hint()),
            ))
        }
        Ok(Ok(0)) => {
            return Err(error(
                "timeout",
                "greeting",
                "the server closed the connection without an SMTP greeting".to_string(),
                Some(implicit_tls_hint()),
            ))
        }
        Ok(Err(e)) => {
            return Err(error(
                "connection_refused",
                "greeting",
                format!("reading the greeting failed: {e}"),
                None,
            ))
        }
        Ok(Ok(_)) => {}
    }
    if matches!(peek[0], 0x14..=0x17) {
        return Err(error(
            "timeout",
            "greeting",
            "the server sent no SMTP greeting but TLS data: it expects a TLS handshake first".to_string(),
            Some(implicit_tls_hint()),
        ));
    }
    match tokio::time::timeout_at(deadline, read_reply(tcp)).await {
        Ok(Ok(bytes)) => {
            if nudged {
                // A slow SMTP server answers our early EHLO after its greeting: drop that answer
                // so the session stays in step.
                let _ = tokio::time::timeout_at(deadline, read_reply(tcp)).await;
            }
            Ok(bytes)
        }
        Ok(Err(e)) => Err(error(
            "connection_refused",
            "greeting",
            format!("reading the greeting failed: {e}"),
            None,
        )),
        Err(_) => Err(error(
            "timeout",
            "greeting",
            format!("the greeting did not complete within {secs} s"),
            None,
        )),
    }
}
