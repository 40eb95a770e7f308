//! The one SMTP session implementation: [`session::open`] resolves (with the address policy),
//! connects, secures, greets, says EHLO, authenticates (password or XOAUTH2), and
//! [`transaction::send`] runs MAIL, RCPT and DATA (pipelined when offered). Delivery and the
//! connection test both go through them; the test watches each step through a [`Trace`] and
//! explains a [`Failure`], delivery passes [`NoTrace`].

pub mod context;
pub mod greeting;
pub mod session;
pub mod stream;
pub mod target;
pub mod transaction;
pub mod xoauth2;

use std::net::SocketAddr;
use std::time::Instant;

pub use context::MailContext;
pub use session::{connect, open, Session, TokenMode};
pub use target::{Security, SmtpTarget};

use crate::outbound::policy::HostRefused;

/// A step of a session, in the order they run (the names are the test report's contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Resolve,
    Connect,
    Tls,
    Greeting,
    Ehlo,
    Starttls,
    OauthToken,
    Auth,
    MailFrom,
    RcptTo,
    Data,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Self::Resolve,
        Self::Connect,
        Self::Tls,
        Self::Greeting,
        Self::Ehlo,
        Self::Starttls,
        Self::OauthToken,
        Self::Auth,
        Self::MailFrom,
        Self::RcptTo,
        Self::Data,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Starttls => "starttls",
            Self::OauthToken => "oauth_token",
            Self::Auth => "auth",
            Self::MailFrom => "mail_from",
            Self::RcptTo => "rcpt_to",
            Self::Data => "data",
        }
    }
}

/// Watches a session step by step. Details are built only when asked for: delivery opens
/// sessions and sends messages without paying for text nobody reads.
pub trait Trace: Send {
    /// `step` completed at `started`, with the server's reply `code` if it answered.
    fn passed(&mut self, step: Step, started: Instant, code: Option<u16>, detail: &dyn Fn() -> String);
}

/// A trace that keeps nothing (delivery).
pub struct NoTrace;

impl Trace for NoTrace {
    fn passed(&mut self, _: Step, _: Instant, _: Option<u16>, _: &dyn Fn() -> String) {}
}

/// The step that failed, when it started, and how.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub started: Instant,
    pub kind: FailureKind,
}

/// How a step failed. Texts quoting the server are not redacted here: the caller knows the
/// secrets and redacts what it keeps.
#[derive(Debug)]
pub enum FailureKind {
    /// No answer within the timeout of `secs` seconds.
    Timeout {
        secs: u64,
    },
    /// The address policy refused where the host resolves to.
    Refused(HostRefused),
    /// The name did not resolve.
    Dns(std::io::Error),
    /// No address accepted a connection: the last address tried and its error (None: it timed
    /// out); no address at all when the host resolved to none.
    Connect {
        addr: Option<SocketAddr>,
        error: Option<std::io::Error>,
    },
    /// TLS could not be set up (the roots) before connecting.
    TlsSetup(String),
    /// The TLS handshake failed.
    Tls(String),
    /// No usable greeting.
    Greeting(greeting::GreetingFailure),
    /// A command was refused, or the connection failed while it ran.
    Smtp(lettre::transport::smtp::Error),
    StarttlsNotOffered,
    /// Neither AUTH PLAIN nor LOGIN is offered.
    AuthNotOffered,
    /// AUTH PLAIN or LOGIN was refused.
    AuthRejected {
        mechanism: lettre::transport::smtp::authentication::Mechanism,
        error: lettre::transport::smtp::Error,
    },
    Xoauth2(xoauth2::Xoauth2Failure),
    /// No access token from the provider.
    OAuth(crate::mail::oauth::OAuthError),
    /// The message could not be built.
    Message(String),
}

impl Failure {
    pub fn new(step: Step, started: Instant, kind: FailureKind) -> Self {
        Self { step, started, kind }
    }

    /// The server's reply code, when it answered.
    pub fn code(&self) -> Option<u16> {
        match &self.kind {
            FailureKind::Smtp(e) | FailureKind::AuthRejected { error: e, .. } => e.status().map(u16::from),
            FailureKind::Greeting(greeting::GreetingFailure::Refused { code, .. }) => *code,
            FailureKind::Xoauth2(xoauth2::Xoauth2Failure::Rejected { code, .. }) => *code,
            _ => None,
        }
    }

    /// Whether the refusal is permanent (a 5xx).
    pub fn is_permanent(&self) -> bool {
        matches!(&self.kind, FailureKind::Smtp(e) if e.is_permanent())
    }
}

/// What delivery logs and stores about a session that failed: the step and the cause.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = self.step.name();
        match &self.kind {
            FailureKind::Timeout { secs } => write!(f, "{step} did not complete within {secs} s"),
            FailureKind::Refused(r) => write!(f, "refusing to connect: {r}"),
            FailureKind::Dns(e) => write!(f, "the host could not be resolved: {e}"),
            FailureKind::Connect { addr, error } => match (addr, error) {
                (Some(addr), Some(e)) => write!(f, "cannot connect to {addr}: {e}"),
                (Some(addr), None) => write!(f, "no connection to {addr} within the timeout"),
                (None, _) => write!(f, "the host has no address"),
            },
            FailureKind::TlsSetup(e) => write!(f, "cannot set up TLS: {e}"),
            FailureKind::Tls(e) => write!(f, "the TLS handshake failed: {e}"),
            FailureKind::Greeting(g) => match g {
                greeting::GreetingFailure::Silent => write!(
                    f,
                    "the server sent no greeting within {} s",
                    self.started.elapsed().as_secs()
                ),
                greeting::GreetingFailure::Closed => {
                    write!(f, "the server closed the connection without a greeting")
                }
                greeting::GreetingFailure::TlsData => write!(f, "the server expects a TLS handshake first"),
                greeting::GreetingFailure::Io(e) => write!(f, "reading the greeting failed: {e}"),
                greeting::GreetingFailure::Incomplete => write!(
                    f,
                    "the greeting did not complete within {} s",
                    self.started.elapsed().as_secs()
                ),
                greeting::GreetingFailure::Refused { text, .. } => {
                    write!(f, "the server refused the session: {text}")
                }
            },
            FailureKind::Smtp(e) => write!(f, "{}", crate::mail::error_chain(e)),
            FailureKind::StarttlsNotOffered => write!(f, "the server does not offer STARTTLS"),
            FailureKind::AuthNotOffered => write!(f, "the server offers no AUTH PLAIN or LOGIN"),
            FailureKind::AuthRejected { mechanism, error } => {
                write!(
                    f,
                    "AUTH {mechanism} rejected: {}",
                    crate::mail::error_chain(error)
                )
            }
            FailureKind::Xoauth2(x) => match x {
                xoauth2::Xoauth2Failure::NotOffered => write!(f, "the server does not offer AUTH XOAUTH2"),
                xoauth2::Xoauth2Failure::Failed { message, .. } => {
                    write!(f, "AUTH XOAUTH2 failed: {message}")
                }
                xoauth2::Xoauth2Failure::Rejected { challenge, .. } => write!(
                    f,
                    "the server refused the OAuth access token (AUTH XOAUTH2){}",
                    challenge.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
                ),
            },
            FailureKind::OAuth(e) => write!(f, "no OAuth access token: {e}"),
            FailureKind::Message(e) => write!(f, "cannot build the message: {e}"),
        }
    }
}
