//! What a failed step means for the person who configured it: the step's record, a stable code,
//! a message naming what failed, and where a likely fix is known, a hint.

use lettre::transport::smtp::authentication::Mechanism;

use super::{TestError, ERROR_CODES, STEP_NAMES};
use crate::mail::error_chain;
use crate::mail::oauth::OAuthError;
use crate::mail::smtp::greeting::GreetingFailure;
use crate::mail::smtp::xoauth2::Xoauth2Failure;
use crate::mail::smtp::{Failure, FailureKind, Security, SmtpTarget, Step};
use crate::outbound::policy::HostRefused;

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

/// What the test knew when the step failed.
pub struct Seen<'a> {
    pub target: &'a SmtpTarget,
    pub from: Option<String>,
    pub to: Option<String>,
    pub redact: &'a [String],
}

/// The failed step's record (detail and reply code; None when the step never started) and the
/// report's error.
type Explained = (Option<(String, Option<u16>)>, TestError);

fn error(code: &'static str, step: Step, message: impl Into<String>, hint: Option<String>) -> TestError {
    debug_assert!(ERROR_CODES.contains(&code), "undocumented test error code {code}");
    debug_assert!(
        STEP_NAMES.contains(&step.name()),
        "undocumented test step {step:?}"
    );
    TestError {
        code,
        step: step.name(),
        message: message.into(),
        hint,
    }
}

pub fn explain(f: &Failure, seen: &Seen<'_>) -> Explained {
    let t = seen.target;
    let step = f.step;
    let code = f.code();
    match (&f.kind, step) {
        (FailureKind::OAuth(e), _) => oauth(e),
        (FailureKind::Timeout { .. }, _) => timed_out(step, t),
        (FailureKind::Dns(e), _) => (
            Some((format!("{}: {e}", t.host), None)),
            error(
                "dns_failed",
                step,
                format!("{} could not be resolved: {e}", t.host),
                Some("check the host name for typos; from a shell on this machine, `getent hosts HOST` shows what resolves".into()),
            ),
        ),
        (FailureKind::Refused(refused), _) => {
            let hint = match refused {
                HostRefused::NotAllowed { .. } => {
                    Some("add the host to MAILROOM_SMTP_ALLOWED_HOSTS if it is a legitimate relay".into())
                }
                HostRefused::Forbidden { .. } => None,
            };
            (
                Some((refused.to_string(), None)),
                error("host_not_allowed", step, format!("refusing to connect: {refused}"), hint),
            )
        }
        (FailureKind::Connect { addr, error: cause }, _) => connect(t, step, *addr, cause.as_ref()),
        (FailureKind::TlsSetup(e), _) => (
            None,
            error("tls_failed", step, format!("TLS cannot be set up: {e}"), None),
        ),
        (FailureKind::Tls(text), _) => (Some((text.clone(), None)), tls_error(t, step, text)),
        (FailureKind::Greeting(g), _) => greeting(t, g),
        (FailureKind::StarttlsNotOffered, _) => {
            let hint = if t.port == 465 {
                "port 465 normally expects implicit TLS: try \"security\": \"tls\"".to_string()
            } else {
                "use \"security\": \"tls\" if the server offers implicit TLS (usually port 465), or ask its administrator to enable STARTTLS".to_string()
            };
            (
                Some(("STARTTLS is not among the advertised extensions".into(), None)),
                error(
                    "starttls_unsupported",
                    step,
                    format!("{} does not offer STARTTLS on port {}", t.host, t.port),
                    Some(hint),
                ),
            )
        }
        (FailureKind::AuthNotOffered, _) => {
            let hint = if t.security == Security::None {
                "servers often offer AUTH only after STARTTLS: use \"security\": \"starttls\" (port 587) or \"tls\" (port 465)".to_string()
            } else {
                "the server offers no password authentication here; leave username empty if it relays without AUTH".to_string()
            };
            (
                Some(("no PLAIN or LOGIN among the advertised extensions".into(), None)),
                error(
                    "auth_unsupported",
                    step,
                    format!("{} offers no AUTH PLAIN or LOGIN", t.host),
                    Some(hint),
                ),
            )
        }
        (FailureKind::AuthRejected { mechanism, error: e }, _) => auth_rejected(seen, *mechanism, e),
        (FailureKind::Xoauth2(x), _) => xoauth2(t, x),
        (FailureKind::Message(e), _) => (
            None,
            error(
                "message_rejected",
                step,
                format!("the test message could not be built: {e}"),
                None,
            ),
        ),
        (FailureKind::Smtp(e), _) => (Some((error_chain(e), code)), refused_command(seen, step, e)),
    }
}

/// A command the server refused, or during which the connection or TLS failed.
fn refused_command(seen: &Seen<'_>, step: Step, e: &lettre::transport::smtp::Error) -> TestError {
    match step {
        Step::Ehlo => smtp_error(seen, step, e, "connection_refused", "EHLO"),
        Step::Starttls if e.status().is_some() => smtp_error(seen, step, e, "tls_failed", "STARTTLS"),
        Step::Starttls => tls_error(seen.target, step, &error_chain(e)),
        Step::MailFrom => {
            let what = format!("MAIL FROM:<{}>", seen.from.as_deref().unwrap_or(""));
            let mut err = smtp_error(seen, step, e, "sender_rejected", &what);
            if err.code == "sender_rejected" {
                err.hint = Some("the server may only accept senders the account owns: set from_address to an address of the SMTP account".into());
            }
            err
        }
        Step::RcptTo => {
            let what = format!("RCPT TO:<{}>", seen.to.as_deref().unwrap_or(""));
            smtp_error(seen, step, e, "recipient_rejected", &what)
        }
        Step::Data => smtp_error(seen, step, e, "message_rejected", "DATA"),
        _ => smtp_error(seen, step, e, "connection_refused", step.name()),
    }
}

fn oauth(e: &OAuthError) -> Explained {
    (
        Some((e.to_string(), None)),
        error(e.kind.code(), Step::OauthToken, e.to_string(), e.hint()),
    )
}

/// A step that got no answer within the timeout.
fn timed_out(step: Step, t: &SmtpTarget) -> Explained {
    let secs = t.timeout.as_secs();
    let no_answer = format!("no answer within {secs} s");
    let (detail, message, hint) = match step {
        Step::Resolve => (
            format!("no DNS answer within {secs} s"),
            format!("{} did not resolve within {secs} s", t.host),
            None,
        ),
        Step::Tls => (
            format!("no TLS handshake within {secs} s"),
            format!("the TLS handshake did not complete within {secs} s"),
            Some(format!(
                "port {} may expect STARTTLS or plain SMTP: try \"security\": \"starttls\"",
                t.port
            )),
        ),
        Step::Ehlo => (
            no_answer,
            format!("the server did not answer EHLO within {secs} s"),
            None,
        ),
        Step::Starttls => (
            no_answer,
            format!("STARTTLS did not complete within {secs} s"),
            None,
        ),
        Step::Auth => (no_answer, format!("AUTH got no answer within {secs} s"), None),
        Step::Data => (
            no_answer,
            format!("the server did not accept the message within {secs} s"),
            None,
        ),
        _ => (no_answer.clone(), no_answer, None),
    };
    let code = if step == Step::Resolve {
        "dns_failed"
    } else {
        "timeout"
    };
    (Some((detail, None)), error(code, step, message, hint))
}

/// `connect`: refused, failed, or no answer from any address.
fn connect(
    t: &SmtpTarget,
    step: Step,
    addr: Option<std::net::SocketAddr>,
    cause: Option<&std::io::Error>,
) -> Explained {
    let secs = t.timeout.as_secs();
    match (addr, cause) {
        (Some(addr), Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            Some((format!("{addr}: connection refused"), None)),
            error(
                "connection_refused",
                step,
                format!("nothing accepts connections on {addr}"),
                Some("check the port: 587 (STARTTLS) and 465 (implicit TLS) are usual for submission, 25 for relays".into()),
            ),
        ),
        (Some(addr), Some(e)) => (
            Some((format!("{addr}: {e}"), None)),
            error(
                "connection_refused",
                step,
                format!("cannot connect to {addr}: {e}"),
                None,
            ),
        ),
        _ => {
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            (
                Some((format!("no answer from {addr} within {secs} s"), None)),
                error(
                    "connection_timeout",
                    step,
                    format!("the connection to {addr} did not open within {secs} s"),
                    Some("a firewall may drop the traffic: many cloud providers block outbound port 25; try 587 or 465".into()),
                ),
            )
        }
    }
}

/// `greeting`: silent, closed, TLS spoken, unreadable or a refusal.
fn greeting(t: &SmtpTarget, g: &GreetingFailure) -> Explained {
    let secs = t.timeout.as_secs();
    let implicit_tls_hint = || {
        Some(if t.port == 465 {
            format!(
                "port {} normally expects implicit TLS: try \"security\": \"tls\"",
                t.port
            )
        } else {
            "the server may expect implicit TLS: try \"security\": \"tls\"".to_string()
        })
    };
    let step = Step::Greeting;
    let err = match g {
        GreetingFailure::Refused { code, text } => {
            return (
                Some((text.clone(), *code)),
                error(
                    "connection_refused",
                    step,
                    format!("the server refused the session: {text}"),
                    None,
                ),
            )
        }
        GreetingFailure::Silent => error(
            "timeout",
            step,
            format!("the server sent nothing for {secs} s after the connection opened"),
            implicit_tls_hint(),
        ),
        GreetingFailure::Closed => error(
            "timeout",
            step,
            "the server closed the connection without an SMTP greeting",
            implicit_tls_hint(),
        ),
        GreetingFailure::TlsData => error(
            "timeout",
            step,
            "the server sent no SMTP greeting but TLS data: it expects a TLS handshake first",
            implicit_tls_hint(),
        ),
        GreetingFailure::Io(e) => error(
            "connection_refused",
            step,
            format!("reading the greeting failed: {e}"),
            None,
        ),
        GreetingFailure::Incomplete => error(
            "timeout",
            step,
            format!("the greeting did not complete within {secs} s"),
            None,
        ),
    };
    (Some((err.message.clone(), None)), err)
}

/// AUTH PLAIN or LOGIN refused: usually the password, sometimes the provider's policy.
fn auth_rejected(seen: &Seen<'_>, mechanism: Mechanism, e: &lettre::transport::smtp::Error) -> Explained {
    let t = seen.target;
    let code = e.status().map(u16::from);
    let record = Some((format!("AUTH {mechanism} rejected: {}", error_chain(e)), code));
    if e.is_timeout() || e.is_tls() {
        return (record, smtp_error(seen, Step::Auth, e, "auth_failed", "AUTH"));
    }
    let host = t.host.to_ascii_lowercase();
    let hint = if APP_PASSWORD_PROVIDERS.iter().any(|p| host.contains(p)) {
        "this provider rejects account passwords over SMTP: create an app password (with two-factor authentication on) and use it as the password".to_string()
    } else if code == Some(535) {
        "check the username and password; some providers require an app password or enabling SMTP AUTH for the account".to_string()
    } else {
        "check the username and password".to_string()
    };
    let mut err = smtp_error(seen, Step::Auth, e, "auth_failed", &format!("AUTH {mechanism}"));
    err.code = "auth_failed";
    err.hint = Some(hint);
    (record, err)
}

/// AUTH XOAUTH2 refused: explained from the server's decoded challenge.
fn xoauth2(t: &SmtpTarget, x: &Xoauth2Failure) -> Explained {
    let secs = t.timeout.as_secs();
    let step = Step::Auth;
    let user = t.username.as_deref().unwrap_or("");
    match x {
        Xoauth2Failure::NotOffered => (
            Some(("XOAUTH2 is not among the advertised extensions".into(), None)),
            error(
                "auth_unsupported",
                step,
                format!("{} does not offer AUTH XOAUTH2", t.host),
                Some("servers often offer AUTH only after STARTTLS: use \"security\": \"starttls\" on port 587".into()),
            ),
        ),
        Xoauth2Failure::Failed { message, timeout } => (
            Some((message.clone(), None)),
            if *timeout {
                error(
                    "timeout",
                    step,
                    format!("no answer to AUTH XOAUTH2 within {secs} s"),
                    None,
                )
            } else {
                error("auth_failed", step, format!("AUTH XOAUTH2 failed: {message}"), None)
            },
        ),
        Xoauth2Failure::Rejected {
            challenge,
            code,
            reply,
        } => {
            let explained = challenge
                .clone()
                .or(reply.clone())
                .unwrap_or_else(|| "refused".into());
            let host = t.host.to_ascii_lowercase();
            let hint = if host.contains("office365") || host.contains("outlook") {
                "Microsoft: enable SMTP AUTH for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), and grant the app's service principal send rights in Exchange (New-ServicePrincipal, then Add-MailboxPermission FullAccess)"
            } else if host.contains("gmail") || host.contains("google") {
                "Google: grant the service account's client id domain-wide delegation for https://mail.google.com/ in the Admin console, and use the mailbox as username"
            } else {
                "the server refused the access token: check that username is the mailbox the token was issued for, and the token's scope"
            };
            (
                Some((format!("AUTH XOAUTH2 rejected: {explained}"), *code)),
                error(
                    "auth_failed",
                    step,
                    format!("{} refused the OAuth access token for {user}: {explained}", t.host),
                    Some(hint.into()),
                ),
            )
        }
    }
}

/// Classifies a TLS failure, telling certificate problems from protocol mismatches.
fn tls_error(t: &SmtpTarget, step: Step, text: &str) -> TestError {
    let host = &t.host;
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("NotValidForName") {
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
        let hint = (step == Step::Tls).then(|| {
            format!(
                "the server on port {} does not speak implicit TLS; if it offers STARTTLS (usually port 587) use \"security\": \"starttls\"",
                t.port
            )
        });
        error(
            "tls_failed",
            step,
            format!("the TLS handshake failed: {text}"),
            hint,
        )
    }
}

/// A refused command, a lost connection or a TLS failure during a command.
fn smtp_error(
    seen: &Seen<'_>,
    step: Step,
    e: &lettre::transport::smtp::Error,
    code: &'static str,
    what: &str,
) -> TestError {
    if e.is_timeout() {
        return error(
            "timeout",
            step,
            format!("no answer to {what} within {} s", seen.target.timeout.as_secs()),
            None,
        );
    }
    if e.is_tls() {
        return tls_error(seen.target, step, &error_chain(e));
    }
    let text = crate::mail::redact(&error_chain(e), seen.redact);
    error(code, step, format!("{what} failed: {text}"), None)
}
