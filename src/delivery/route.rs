//! One version of the SMTP settings as delivery uses it: the target, sender and redaction, the
//! pool of open sessions, and one attempt to send a claimed notification.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::TlsParameters;
use lettre::transport::smtp::response::Response;

use crate::config::DeliveryConfig;
use crate::db::now_millis;
use crate::mail::address::EmailAddress;
use crate::mail::message::{self, Content, Sender};
use crate::mail::smtp::greeting::GreetingFailure;
use crate::mail::smtp::{self, Failure, FailureKind, NoTrace, Session, Step};
use crate::mail::{redact, MailContext, SmtpTarget};
use crate::notifications::routing::NO_ADMIN_EMAIL;
use crate::store::queue::outcomes::{Outcome, Recorded};
use crate::store::queue::Claimed;

/// Where and as whom to send, for one version of the SMTP settings, with its open connections.
pub(super) struct Route {
    pub(super) version: i64,
    pub(super) target: SmtpTarget,
    pub(super) tls: TlsParameters,
    pub(super) sender: Sender,
    /// Secrets to scrub from any server reply we store.
    pub(super) redact: Vec<String>,
    /// Authenticated sessions kept open between messages (at most `concurrency`).
    pub(super) idle: Mutex<Vec<Session>>,
    pub(super) mail: MailContext,
    pub(super) config: DeliveryConfig,
}

/// Which server a route sends to: a new one in the settings replaces it.
pub(super) fn server_of(route: &Route) -> String {
    let t = &route.target;
    format!(
        "{:?}|{}|{}|{:?}|{:?}",
        t.security,
        t.host.to_ascii_lowercase(),
        t.port,
        t.username,
        t.tls_verify
    )
}

impl Route {
    pub(super) async fn deliver(&self, n: Claimed) -> Recorded {
        let attempted_at = now_millis();
        let started = Instant::now();
        let outcome = if n.expires_at <= attempted_at {
            Outcome::Expired
        } else {
            match &n.recipient {
                None => Outcome::Held {
                    reason: NO_ADMIN_EMAIL.into(),
                },
                Some(to) => self.send(&n, to).await,
            }
        };
        log_outcome(&n, &outcome, started.elapsed());
        count_outcome(&n, &outcome);
        Recorded {
            id: n.id,
            event: n.event,
            recipient: n.recipient,
            outcome,
            attempted_at,
            duration_ms: started.elapsed().as_millis() as i64,
        }
    }

    async fn send(&self, n: &Claimed, to: &str) -> Outcome {
        let built = EmailAddress::from_stored(to).and_then(|to| {
            let content = Content {
                notification_id: &n.id,
                to: &to,
                to_name: n.to_name.as_deref(),
                subject: &n.subject,
                text: &n.text_body,
                html: &n.html_body,
            };
            message::build(&self.sender, &content)
        });
        let message = match built {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Failed {
                    code: None,
                    reply: format!("cannot build the message: {e}"),
                    reason: "the message could not be built".into(),
                    suppress: false,
                }
            }
        };
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let started = Instant::now();
        let transmitted = self.transmit(&envelope, &bytes).await;
        crate::metrics::smtp_transaction(started.elapsed());
        crate::metrics::smtp_reply(match &transmitted {
            Ok(_) => "2xx",
            Err(f) => failure_class(f),
        });
        match transmitted {
            Ok(response) => Outcome::Sent {
                code: u16::from(response.code()),
                reply: redact(&response.message().collect::<Vec<_>>().join(" "), &self.redact),
                message_id: self.sender.message_id(&n.id),
            },
            Err(failure) => {
                let at_rcpt = matches!(&failure, SendFailure::Transaction(f) if f.step == Step::RcptTo);
                let (code, reply, permanent) = match &failure {
                    SendFailure::Transaction(f) => (f.code(), reply_of(f), f.is_permanent()),
                    // Connection, TLS and AUTH problems are the server's or the settings', not
                    // the message's: retry, so that fixed settings still deliver it.
                    SendFailure::Session(f) => (None, format!("cannot open an SMTP session: {f}"), false),
                    SendFailure::Timeout(secs) => (
                        None,
                        format!("the server did not accept the message within {secs} s"),
                        false,
                    ),
                };
                let reply = redact(&reply, &self.redact);
                let attempts = n.attempt_count.max(1) as u32;
                if permanent {
                    Outcome::Failed {
                        code,
                        reason: format!("rejected by the SMTP server: {reply}"),
                        suppress: crate::suppressions::names_the_recipient(at_rcpt, code, &reply),
                        reply,
                    }
                } else if attempts >= self.config.max_attempts {
                    Outcome::Failed {
                        code,
                        reason: format!("gave up after {attempts} attempts; last error: {reply}"),
                        reply,
                        suppress: false,
                    }
                } else {
                    let delay = self.config.backoff(attempts);
                    Outcome::Deferred {
                        code,
                        reply,
                        next_attempt_at: now_millis() + delay.as_millis() as i64,
                    }
                }
            }
        }
    }

    /// Sends over a pooled session, opening one when none is idle. A pooled session the server
    /// has meanwhile closed fails before MAIL FROM is answered; then one fresh session is tried.
    async fn transmit(
        &self,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<Response, SendFailure> {
        let limit = self.target.timeout * 2;
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut session, mut reused) = match pooled {
            Some(session) => (session, true),
            None => (self.open().await?, false),
        };
        let mut quiet = NoTrace;
        loop {
            let sent = smtp::transaction::send(&mut session, envelope, bytes, None, &mut quiet);
            match tokio::time::timeout(limit, sent).await {
                Ok(Ok(response)) => {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if !session.conn.has_broken() && idle.len() < self.config.concurrency {
                        idle.push(session);
                    }
                    return Ok(response);
                }
                Ok(Err(f)) if reused && connection_gone(&f) => {
                    reused = false;
                    session = self.open().await?;
                }
                Ok(Err(f)) => return Err(SendFailure::Transaction(f)),
                Err(_) => {
                    // Dropped, not closed: a server that stopped answering would not answer QUIT
                    // either, and waiting for it would hold this slot (and shutdown) hostage.
                    drop(session);
                    return Err(SendFailure::Timeout(limit.as_secs()));
                }
            }
        }
    }

    async fn open(&self) -> Result<Session, SendFailure> {
        smtp::connect(&self.mail, &self.target, &self.tls)
            .await
            .map_err(SendFailure::Session)
    }
}

/// Whether a transaction failed because the pooled connection went away (no reply at all).
fn connection_gone(f: &Failure) -> bool {
    matches!(&f.kind, FailureKind::Smtp(e) if e.status().is_none() && !e.is_timeout())
}

/// What a failed transaction stores as the reply: the server's words, else what went wrong.
fn reply_of(f: &Failure) -> String {
    match &f.kind {
        FailureKind::Smtp(e) => e.to_string(),
        _ => f.to_string(),
    }
}

/// The delivery counters and the latency from accept to sent.
fn count_outcome(n: &Claimed, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { .. } => {
            crate::metrics::delivery("sent");
            crate::metrics::delivery_latency((now_millis() - n.created_at) as f64 / 1000.0);
        }
        Outcome::Deferred { .. } => crate::metrics::delivery("deferred"),
        Outcome::Failed { .. } => crate::metrics::delivery("failed"),
        Outcome::Expired => crate::metrics::delivery("expired"),
        Outcome::Held { .. } | Outcome::Released => {}
    }
}

/// The class of what the server (or the network) answered, for `mailroom_smtp_replies_total`.
fn failure_class(failure: &SendFailure) -> &'static str {
    let smtp = |e: &lettre::transport::smtp::Error| match e.status().map(u16::from) {
        Some(530 | 534 | 535 | 538) => "auth",
        Some(code) => crate::metrics::reply_class(Some(code)),
        None if e.is_tls() => "tls",
        None => "network",
    };
    let (SendFailure::Session(f) | SendFailure::Transaction(f)) = failure else {
        return "network";
    };
    match &f.kind {
        FailureKind::Smtp(e) | FailureKind::AuthRejected { error: e, .. } => smtp(e),
        FailureKind::Greeting(GreetingFailure::Refused { code, .. }) => crate::metrics::reply_class(*code),
        FailureKind::OAuth(_) | FailureKind::Xoauth2(_) | FailureKind::AuthNotOffered => "auth",
        FailureKind::Tls(_) | FailureKind::TlsSetup(_) | FailureKind::StarttlsNotOffered => "tls",
        _ => "network",
    }
}

/// One line per attempt, so that an operator can follow a notification in the log.
fn log_outcome(n: &Claimed, outcome: &Outcome, took: Duration) {
    let ms = took.as_millis() as u64;
    match outcome {
        Outcome::Sent { code, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "sent", smtp_code = code, ms, "delivery attempt")
        }
        Outcome::Deferred { code, reply, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "deferred", smtp_code = code, ms, reply = %reply, "delivery attempt")
        }
        Outcome::Failed { code, reply, .. } => {
            tracing::info!(id = %n.id, event = %n.event, attempt = n.attempt_count, outcome = "failed", smtp_code = code, ms, reply = %reply, "delivery attempt")
        }
        Outcome::Expired => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "expired", "delivery attempt")
        }
        Outcome::Held { reason } => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "held", reason = %reason, "delivery attempt")
        }
        Outcome::Released => {
            tracing::info!(id = %n.id, event = %n.event, outcome = "released", "delivery attempt")
        }
    }
}

enum SendFailure {
    /// The session could not be opened.
    Session(Failure),
    /// MAIL, RCPT or DATA failed.
    Transaction(Failure),
    /// The transaction did not complete within the bound (seconds).
    Timeout(u64),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn redaction_removes_passwords_and_their_auth_encodings() {
        use secrecy::SecretString;
        let target = SmtpTarget {
            host: "h".into(),
            port: 25,
            security: crate::mail::Security::None,
            username: Some("user".into()),
            password: Some(SecretString::from("hunter2".to_string())),
            timeout: Duration::from_secs(1),
            tls_verify: true,
            oauth: None,
        };
        let forms = target.secret_forms();
        let echoed = format!("535 bad credentials {} for hunter2 ({})", forms[0], forms[1]);
        let clean = redact(&echoed, &forms);
        assert!(
            !clean.contains("hunter2") && !clean.contains(&forms[0]) && !clean.contains(&forms[1]),
            "{clean}"
        );
    }
}
