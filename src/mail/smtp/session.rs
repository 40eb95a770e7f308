//! Opening a session: the one sequence delivery and the connection test share. Every step is
//! bounded by the target's timeout and reported to the trace as it passes.

use std::net::SocketAddr;
use std::time::Instant;

use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::{ClientId, Extension};
use secrecy::SecretString;
use tokio::net::TcpStream;

use super::greeting::read_greeting;
use super::stream::{connect_tcp, SmtpStream};
use super::xoauth2::{xoauth2, Xoauth2Failure};
use super::{Failure, FailureKind, MailContext, NoTrace, Security, SmtpTarget, Step, Trace};
use crate::mail::oauth::TokenSource;

/// An open, authenticated SMTP session and what the transaction may rely on.
pub struct Session {
    pub conn: AsyncSmtpConnection,
    /// The server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA may go in one write.
    pub pipelining: bool,
}

/// Where an OAuth access token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// The process's cache (delivery).
    Cached,
    /// The provider, bypassing the cache (the test checks the credentials as they are now).
    Fresh,
}

/// How [`open`] behaves where delivery and the test want different things.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub tokens: TokenMode,
    /// Send one EHLO to a server that stays silent, to tell a TLS port from a slow server (the
    /// test's diagnosis; delivery just waits).
    pub nudge_silent_server: bool,
}

/// A session for delivery: the cached token; a refused token is fetched again once (it may have
/// been revoked or rotated early) before the attempt counts as failed.
pub async fn connect(ctx: &MailContext, t: &SmtpTarget, tls: &TlsParameters) -> Result<Session, Failure> {
    let options = Options {
        tokens: TokenMode::Cached,
        nudge_silent_server: false,
    };
    match open(ctx, t, Some(tls), options, &mut NoTrace).await {
        Err(Failure {
            kind: FailureKind::Xoauth2(Xoauth2Failure::Rejected { .. }),
            ..
        }) if t.oauth.is_some() => {
            if let Some(source) = &t.oauth {
                ctx.tokens.invalidate(source);
            }
            open(ctx, t, Some(tls), options, &mut NoTrace).await
        }
        other => other,
    }
}

/// Opens an authenticated session ready for MAIL FROM: token (for XOAUTH2), resolve (with the
/// address policy), connect, implicit TLS or the greeting, EHLO, STARTTLS, AUTH. `tls` comes
/// from [`SmtpTarget::tls_parameters`], built once per settings version by delivery (it reads the
/// root certificates); None builds it here.
pub async fn open(
    ctx: &MailContext,
    t: &SmtpTarget,
    tls: Option<&TlsParameters>,
    options: Options,
    trace: &mut dyn Trace,
) -> Result<Session, Failure> {
    let token = match &t.oauth {
        Some(source) => Some(token_step(ctx, source, options.tokens, trace).await?),
        None => None,
    };
    let addrs = resolve_step(ctx, t, trace).await?;
    let (tcp, peer) = connect_step(t, &addrs, trace).await?;
    let built;
    let tls = match tls {
        Some(tls) => tls,
        None => {
            built = t
                .tls_parameters(ctx)
                .map_err(|e| Failure::new(Step::Tls, Instant::now(), FailureKind::TlsSetup(e.to_string())))?;
            &built
        }
    };
    let (stream, greeting) = secure_step(t, tcp, peer, tls, options.nudge_silent_server, trace).await?;
    let client_id = ctx.client_id();
    let mut conn = ehlo_step(t, stream, greeting, &client_id, trace).await?;
    if t.security == Security::Starttls {
        starttls_step(t, &mut conn, tls, &client_id, trace).await?;
    }
    let pipelining = offers_pipelining(t, &mut conn, &client_id).await?;
    match (&token, &t.username) {
        (Some(token), Some(user)) => xoauth2_step(t, &mut conn, user, token, trace).await?,
        _ => auth_step(t, &mut conn, trace).await?,
    }
    Ok(Session { conn, pipelining })
}

fn timeout(t: &SmtpTarget) -> FailureKind {
    FailureKind::Timeout {
        secs: t.timeout.as_secs(),
    }
}

async fn token_step(
    ctx: &MailContext,
    source: &TokenSource,
    mode: TokenMode,
    trace: &mut dyn Trace,
) -> Result<SecretString, Failure> {
    let at = Instant::now();
    let token = match mode {
        TokenMode::Cached => ctx.tokens.get(&ctx.policy, source).await,
        TokenMode::Fresh => crate::mail::oauth::fetch(&ctx.policy, source).await,
    }
    .map_err(|e| Failure::new(Step::OauthToken, at, FailureKind::OAuth(e)))?;
    trace.passed(Step::OauthToken, at, None, &|| "access token received".into());
    Ok(token.token)
}

async fn resolve_step(
    ctx: &MailContext,
    t: &SmtpTarget,
    trace: &mut dyn Trace,
) -> Result<Vec<SocketAddr>, Failure> {
    let at = Instant::now();
    let fail = |kind| Failure::new(Step::Resolve, at, kind);
    let resolved = tokio::time::timeout(
        t.timeout,
        crate::outbound::policy::resolve_checked(&ctx.policy, &t.host, t.port),
    )
    .await
    .map_err(|_| fail(timeout(t)))?;
    let addrs = resolved
        .map_err(|e| fail(FailureKind::Dns(e)))?
        .map_err(|r| fail(FailureKind::Refused(r)))?;
    trace.passed(Step::Resolve, at, None, &|| {
        let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        format!("{} -> {}", t.host, list.join(", "))
    });
    Ok(addrs)
}

/// Each address in turn, as a client library would.
async fn connect_step(
    t: &SmtpTarget,
    addrs: &[SocketAddr],
    trace: &mut dyn Trace,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let at = Instant::now();
    let mut last = FailureKind::Connect {
        addr: addrs.first().copied(),
        error: None,
    };
    if addrs.is_empty() {
        last = FailureKind::Connect {
            addr: None,
            error: None,
        };
    }
    for addr in addrs {
        match connect_tcp(*addr, t.timeout).await {
            Ok(tcp) => {
                trace.passed(Step::Connect, at, None, &|| format!("connected to {addr}"));
                return Ok((tcp, *addr));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = FailureKind::Connect {
                    addr: Some(*addr),
                    error: None,
                }
            }
            Err(e) => {
                last = FailureKind::Connect {
                    addr: Some(*addr),
                    error: Some(e),
                }
            }
        }
    }
    Err(Failure::new(Step::Connect, at, last))
}

/// `tls` (implicit TLS; lettre then reads the greeting) or `greeting` (plain and STARTTLS): the
/// stream, and the greeting's bytes to replay.
async fn secure_step(
    t: &SmtpTarget,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: &TlsParameters,
    nudge: bool,
    trace: &mut dyn Trace,
) -> Result<(SmtpStream, Vec<u8>), Failure> {
    let at = Instant::now();
    if t.security == Security::Tls {
        let stream = tokio::time::timeout(t.timeout, SmtpStream::implicit_tls(tcp, peer, tls.clone()))
            .await
            .map_err(|_| Failure::new(Step::Tls, at, timeout(t)))?
            .map_err(|e| Failure::new(Step::Tls, at, FailureKind::Tls(crate::mail::error_chain(&e))))?;
        trace.passed(Step::Tls, at, None, &|| {
            format!("TLS established with {}", t.host)
        });
        return Ok((stream, Vec::new()));
    }
    let mut tcp = tcp;
    let greeting = read_greeting(&mut tcp, t.port, t.timeout, nudge)
        .await
        .map_err(|g| Failure::new(Step::Greeting, at, FailureKind::Greeting(g)))?;
    trace.passed(Step::Greeting, at, Some(220), &|| {
        String::from_utf8_lossy(&greeting).trim().to_string()
    });
    Ok((SmtpStream::plain(tcp, peer), greeting))
}

/// `ehlo`: lettre reads the greeting again from the replay buffer, then says EHLO.
async fn ehlo_step(
    t: &SmtpTarget,
    stream: SmtpStream,
    greeting: Vec<u8>,
    client_id: &ClientId,
    trace: &mut dyn Trace,
) -> Result<AsyncSmtpConnection, Failure> {
    let at = Instant::now();
    let stream = stream.with_replay(greeting);
    let conn = tokio::time::timeout(
        t.timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), client_id),
    )
    .await
    .map_err(|_| Failure::new(Step::Ehlo, at, timeout(t)))?
    .map_err(|e| Failure::new(Step::Ehlo, at, FailureKind::Smtp(e)))?;
    trace.passed(Step::Ehlo, at, Some(250), &|| conn.server_info().to_string());
    Ok(conn)
}

/// `starttls`: offered, and completed with verified TLS.
async fn starttls_step(
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    tls: &TlsParameters,
    client_id: &ClientId,
    trace: &mut dyn Trace,
) -> Result<(), Failure> {
    let at = Instant::now();
    if !conn.server_info().supports_feature(Extension::StartTls) {
        return Err(Failure::new(Step::Starttls, at, FailureKind::StarttlsNotOffered));
    }
    tokio::time::timeout(t.timeout, conn.starttls(tls.clone(), client_id))
        .await
        .map_err(|_| Failure::new(Step::Starttls, at, timeout(t)))?
        .map_err(|e| Failure::new(Step::Starttls, at, FailureKind::Smtp(e)))?;
    trace.passed(Step::Starttls, at, Some(220), &|| {
        format!("TLS established; server: {}", conn.server_info())
    });
    Ok(())
}

/// Whether the server lists PIPELINING in its EHLO reply. lettre keeps only the keywords it
/// uses, so EHLO is asked once more (before AUTH, where it resets nothing), once per session.
async fn offers_pipelining(
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    client_id: &ClientId,
) -> Result<bool, Failure> {
    let at = Instant::now();
    let reply = tokio::time::timeout(
        t.timeout,
        conn.command(lettre::transport::smtp::commands::Ehlo::new(client_id.clone())),
    )
    .await
    .map_err(|_| Failure::new(Step::Ehlo, at, timeout(t)))?
    .map_err(|e| Failure::new(Step::Ehlo, at, FailureKind::Smtp(e)))?;
    let offered = reply
        .message()
        .any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"));
    Ok(offered)
}

/// `auth` with PLAIN or LOGIN, as offered; nothing without a username.
async fn auth_step(
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    trace: &mut dyn Trace,
) -> Result<(), Failure> {
    let Some(credentials) = t.credentials() else {
        return Ok(());
    };
    let at = Instant::now();
    let fail = |kind| Failure::new(Step::Auth, at, kind);
    let Some(mechanism) = conn
        .server_info()
        .get_auth_mechanism(&[Mechanism::Plain, Mechanism::Login])
    else {
        return Err(fail(FailureKind::AuthNotOffered));
    };
    let response = tokio::time::timeout(t.timeout, conn.auth(&[mechanism], &credentials))
        .await
        .map_err(|_| fail(timeout(t)))?
        .map_err(|error| fail(FailureKind::AuthRejected { mechanism, error }))?;
    trace.passed(Step::Auth, at, Some(u16::from(response.code())), &|| {
        format!(
            "AUTH {mechanism} accepted for {}",
            t.username.as_deref().unwrap_or("")
        )
    });
    Ok(())
}

/// `auth` with `AUTH XOAUTH2`.
async fn xoauth2_step(
    t: &SmtpTarget,
    conn: &mut AsyncSmtpConnection,
    user: &str,
    token: &SecretString,
    trace: &mut dyn Trace,
) -> Result<(), Failure> {
    let at = Instant::now();
    let response = tokio::time::timeout(t.timeout, xoauth2(conn, user, token))
        .await
        .map_err(|_| Failure::new(Step::Auth, at, timeout(t)))?
        .map_err(|x| Failure::new(Step::Auth, at, FailureKind::Xoauth2(x)))?;
    trace.passed(Step::Auth, at, Some(u16::from(response.code())), &|| {
        format!("AUTH XOAUTH2 accepted for {user}")
    });
    Ok(())
}
