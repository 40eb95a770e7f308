//! A real SMTP server on 127.0.0.1 for the tests: plain, STARTTLS or implicit TLS, AUTH PLAIN and
//! LOGIN, and scripted replies (451 then 250, 550, silence, a hang in DATA).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for `names`, as PEM (it is its own root) and a TLS acceptor.
pub struct TestCert {
    pub pem: String,
    pub acceptor: TlsAcceptor,
}

impl TestCert {
    pub fn new(names: &[&str]) -> Self {
        mailroom::startup::install_crypto_provider();
        let certified =
            rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert_der = certified.cert.der().clone();
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .unwrap();
        Self {
            pem: certified.cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// Writes the certificate where `MAILROOM_SMTP_CA_FILE` can point.
    pub fn write_to(&self, dir: &std::path::Path) -> String {
        let path = dir.join("test-smtp-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path.display().to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
    pub authenticated_as: Option<String>,
    pub tls: bool,
}

impl Received {
    /// The value of the first header `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with(' ') || line.starts_with('\t') {
                    v.push(' ');
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }
}

#[derive(Default)]
pub struct Behaviour {
    pub starttls: Option<TlsAcceptor>,
    pub implicit_tls: Option<TlsAcceptor>,
    /// Username and password; AUTH PLAIN and LOGIN are offered when set.
    pub auth: Option<(String, String)>,
    /// The mechanisms advertised (default "PLAIN LOGIN").
    pub auth_mechanisms: Option<&'static str>,
    /// Offer AUTH only after STARTTLS.
    pub auth_after_tls_only: bool,
    /// Put the rejected password (or XOAUTH2 response and token) into its replies (a badly
    /// behaved server).
    pub echo_credentials: bool,
    /// Never send the greeting.
    pub silent: bool,
    pub rcpt_reply: Option<(u16, String)>,
    pub mail_reply: Option<(u16, String)>,
    /// Replies to the end of DATA, used in order; afterwards 250.
    pub data_replies: VecDeque<(u16, String)>,
    /// Never answer the end of DATA.
    pub hang_in_data: bool,
    /// Never answer the end of DATA for a message to this recipient (others are served normally).
    pub hang_for_rcpt: Option<String>,
    /// Never answer the end of DATA for the first this many messages.
    pub hang_first: usize,
    /// Wait this long before answering the end of DATA (a slow server).
    pub data_delay: Option<Duration>,
    /// Offer AUTH XOAUTH2 and accept these bearer tokens (any user).
    pub xoauth2_tokens: Option<Vec<String>>,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Reply to RCPT TO for this one address (others are accepted).
    pub reject_rcpt: Option<(String, u16, String)>,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    auth_attempts: Mutex<Vec<(String, String)>>,
    connections: Mutex<usize>,
    data_started: Mutex<usize>,
    /// MAIL commands that arrived with their RCPT and DATA already behind them (pipelined).
    pipelined: Mutex<usize>,
    changed: Notify,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl SmtpServer {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, behaviour)
    }

    /// Serves on an existing listener (a test that starts the server later on a known port).
    pub fn serve(listener: TcpListener, behaviour: Behaviour) -> Self {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            ..Default::default()
        });
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                *s.connections.lock().unwrap() += 1;
                s.changed.notify_waiters();
                tokio::spawn(async move {
                    let _ = connection(tcp, s).await;
                });
            }
        });
        Self { port, shared }
    }

    pub fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.shared.behaviour.lock().unwrap()
    }

    /// Every (username, password) a client tried.
    pub fn auth_attempts(&self) -> Vec<(String, String)> {
        self.shared.auth_attempts.lock().unwrap().clone()
    }

    /// How many TCP connections clients opened.
    pub fn connections(&self) -> usize {
        *self.shared.connections.lock().unwrap()
    }

    /// How many transactions arrived pipelined: MAIL, RCPT and DATA read before MAIL was answered.
    pub fn pipelined(&self) -> usize {
        *self.shared.pipelined.lock().unwrap()
    }

    /// How many DATA transactions reached their final dot.
    pub fn data_started(&self) -> usize {
        *self.shared.data_started.lock().unwrap()
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} messages within {timeout:?}, got {}",
                    self.received().len()
                );
            }
        }
    }

    /// Waits until clients have opened `n` connections.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if self.connections() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{n} connections were not opened within {timeout:?}");
            }
        }
    }

    /// Waits until `n` DATA commands have started.
    pub async fn wait_for_data_started(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if *self.shared.data_started.lock().unwrap() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("DATA did not start {n} times within {timeout:?}");
            }
        }
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (silent, implicit, starttls) = {
        let b = shared.behaviour.lock().unwrap();
        (b.silent, b.implicit_tls.clone(), b.starttls.clone())
    };
    if silent {
        // Accept and never speak; hold the socket until the client gives up.
        let mut tcp = tcp;
        let mut buf = [0u8; 256];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await? > 0 {}
        return Ok(());
    }
    if let Some(acceptor) = implicit {
        let tls = acceptor.accept(tcp).await?;
        session(tls, true, true, &shared).await?;
        return Ok(());
    }
    if let Some(tcp) = session(tcp, false, true, &shared).await? {
        if let Some(acceptor) = starttls {
            let tls = acceptor.accept(tcp).await?;
            session(tls, true, false, &shared).await?;
        }
    }
    Ok(())
}

async fn reply<S: AsyncWrite + Unpin>(w: &mut S, text: &str) -> std::io::Result<()> {
    w.write_all(text.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

fn b64(s: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

/// One SMTP session; returns the stream when the client asked for STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: bool,
    greet: bool,
    shared: &Shared,
) -> std::io::Result<Option<S>> {
    let mut io = BufReader::new(stream);
    if greet {
        reply(&mut io, "220 test.local ESMTP mailroom-test").await?;
    }
    let mut authed: Option<String> = None;
    let mut mail_from = String::new();
    let mut mail_ok = false;
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let (starttls_offered, auth, after_tls_only, echo, mechanisms, bearer) = {
            let b = shared.behaviour.lock().unwrap();
            (
                b.starttls.is_some() && !tls,
                b.auth.clone(),
                b.auth_after_tls_only,
                b.echo_credentials,
                b.auth_mechanisms.unwrap_or(if b.xoauth2_tokens.is_some() {
                    "XOAUTH2"
                } else {
                    "PLAIN LOGIN"
                }),
                b.xoauth2_tokens.clone(),
            )
        };
        let auth_offered = (auth.is_some() || bearer.is_some()) && (tls || !after_tls_only);
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut lines = vec!["250-test.local".to_string()];
            if starttls_offered {
                lines.push("250-STARTTLS".into());
            }
            if auth_offered {
                lines.push(format!("250-AUTH {mechanisms}"));
            }
            if shared.behaviour.lock().unwrap().pipelining {
                lines.push("250-PIPELINING".into());
            }
            lines.push("250 SIZE 10000000".into());
            reply(&mut io, &lines.join("\r\n")).await?;
        } else if upper == "STARTTLS" && starttls_offered {
            reply(&mut io, "220 2.0.0 Ready to start TLS").await?;
            return Ok(Some(io.into_inner()));
        } else if upper.starts_with("AUTH XOAUTH2") && auth_offered && bearer.is_some() {
            let payload = cmd.split_whitespace().nth(2).unwrap_or("").to_string();
            let decoded = b64(&payload);
            let user = decoded
                .split('\x01')
                .find_map(|p| p.strip_prefix("user="))
                .unwrap_or("")
                .to_string();
            let token = decoded
                .split('\x01')
                .find_map(|p| p.strip_prefix("auth=Bearer "))
                .unwrap_or("")
                .to_string();
            shared
                .auth_attempts
                .lock()
                .unwrap()
                .push((user.clone(), token.clone()));
            if bearer.as_ref().is_some_and(|b| b.contains(&token)) {
                authed = Some(user);
                reply(&mut io, "235 2.7.0 Accepted").await?;
            } else if echo {
                // What it was sent, as the challenge and in the final refusal.
                reply(&mut io, &format!("334 {payload}")).await?;
                line.clear();
                io.read_line(&mut line).await?;
                reply(&mut io, &format!("535 5.7.8 {payload} {token} not accepted")).await?;
            } else {
                let challenge = base64::engine::general_purpose::STANDARD
                    .encode(r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#);
                reply(&mut io, &format!("334 {challenge}")).await?;
                line.clear();
                io.read_line(&mut line).await?;
                reply(&mut io, "535 5.7.8 Username and Password not accepted").await?;
            }
        } else if upper.starts_with("AUTH ") && auth_offered {
            let (user, pass) = auth.clone().unwrap_or_default();
            let parts: Vec<&str> = cmd.split_whitespace().collect();
            let (got_user, got_pass) = if parts.get(1).is_some_and(|m| m.eq_ignore_ascii_case("PLAIN")) {
                let payload = match parts.get(2) {
                    Some(p) => p.to_string(),
                    None => {
                        reply(&mut io, "334 ").await?;
                        line.clear();
                        io.read_line(&mut line).await?;
                        line.trim().to_string()
                    }
                };
                let decoded = b64(&payload);
                let fields: Vec<&str> = decoded.split('\0').collect();
                (
                    fields.get(1).unwrap_or(&"").to_string(),
                    fields.get(2).unwrap_or(&"").to_string(),
                )
            } else {
                let user_b64 = match parts.get(2) {
                    Some(u) => u.to_string(),
                    None => {
                        reply(&mut io, "334 VXNlcm5hbWU6").await?;
                        line.clear();
                        io.read_line(&mut line).await?;
                        line.trim().to_string()
                    }
                };
                reply(&mut io, "334 UGFzc3dvcmQ6").await?;
                line.clear();
                io.read_line(&mut line).await?;
                (b64(&user_b64), b64(line.trim()))
            };
            shared
                .auth_attempts
                .lock()
                .unwrap()
                .push((got_user.clone(), got_pass.clone()));
            if got_user == user && got_pass == pass {
                authed = Some(got_user);
                reply(&mut io, "235 2.7.0 Authentication successful").await?;
            } else if echo {
                reply(
                    &mut io,
                    &format!("535 5.7.8 Username and Password not accepted: {got_user}/{got_pass}"),
                )
                .await?;
            } else {
                reply(&mut io, "535 5.7.8 Username and Password not accepted").await?;
            }
        } else if upper.starts_with("MAIL FROM:") {
            let waiting = String::from_utf8_lossy(io.buffer()).to_ascii_uppercase();
            if waiting.contains("RCPT TO:") && waiting.contains("DATA\r\n") {
                *shared.pipelined.lock().unwrap() += 1;
            }
            mail_ok = false;
            rcpt_to.clear();
            let custom = shared.behaviour.lock().unwrap().mail_reply.clone();
            if (auth.is_some() || bearer.is_some()) && authed.is_none() {
                reply(&mut io, "530 5.7.0 Authentication required").await?;
            } else if let Some((code, text)) = custom {
                reply(&mut io, &format!("{code} {text}")).await?;
            } else {
                mail_from = cmd[10..].trim().trim_matches(['<', '>']).to_string();
                mail_from = mail_from
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches(['<', '>'])
                    .to_string();
                rcpt_to.clear();
                mail_ok = true;
                reply(&mut io, "250 2.1.0 OK").await?;
            }
        } else if upper.starts_with("RCPT TO:") {
            let address = cmd[8..].trim().trim_matches(['<', '>']).to_string();
            let custom = {
                let b = shared.behaviour.lock().unwrap();
                b.reject_rcpt
                    .as_ref()
                    .filter(|(to, _, _)| *to == address)
                    .map(|(_, code, text)| (*code, text.clone()))
                    .or_else(|| b.rcpt_reply.clone())
            };
            match custom {
                _ if !mail_ok => reply(&mut io, "503 5.5.1 Error: need MAIL command").await?,
                Some((code, text)) => reply(&mut io, &format!("{code} {text}")).await?,
                None => {
                    rcpt_to.push(cmd[8..].trim().trim_matches(['<', '>']).to_string());
                    reply(&mut io, "250 2.1.5 OK").await?;
                }
            }
        } else if upper == "DATA" && rcpt_to.is_empty() {
            // As RFC 2920 requires of a pipelining server: no DATA without a valid recipient.
            reply(&mut io, "554 5.5.1 Error: no valid recipients").await?;
        } else if upper == "DATA" {
            reply(&mut io, "354 End data with <CR><LF>.<CR><LF>").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(None);
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mail_ok = false;
            *shared.data_started.lock().unwrap() += 1;
            shared.changed.notify_waiters();
            let (hang, scripted, delay) = {
                let mut b = shared.behaviour.lock().unwrap();
                let mut hang = b.hang_in_data
                    || b.hang_for_rcpt
                        .as_ref()
                        .is_some_and(|r| rcpt_to.iter().any(|t| t == r));
                if b.hang_first > 0 {
                    b.hang_first -= 1;
                    hang = true;
                }
                (hang, b.data_replies.pop_front(), b.data_delay)
            };
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if hang {
                // Hold the transaction open without ever answering.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(None);
            }
            match scripted {
                Some((code, text)) => reply(&mut io, &format!("{code} {text}")).await?,
                None => {
                    let n = {
                        let mut received = shared.received.lock().unwrap();
                        received.push(Received {
                            mail_from: mail_from.clone(),
                            rcpt_to: rcpt_to.clone(),
                            data,
                            authenticated_as: authed.clone(),
                            tls,
                        });
                        received.len()
                    };
                    shared.changed.notify_waiters();
                    reply(&mut io, &format!("250 2.0.0 OK queued as TEST{n}")).await?;
                }
            }
        } else if upper == "RSET" {
            mail_ok = false;
            mail_from.clear();
            rcpt_to.clear();
            reply(&mut io, "250 2.0.0 OK").await?;
        } else if upper == "NOOP" {
            reply(&mut io, "250 2.0.0 OK").await?;
        } else if upper == "QUIT" {
            reply(&mut io, "221 2.0.0 Bye").await?;
            return Ok(None);
        } else {
            reply(&mut io, "502 5.5.2 Command not recognized").await?;
        }
    }
}
