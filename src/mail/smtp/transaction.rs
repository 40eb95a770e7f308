//! One mail transaction on an open session: MAIL, RCPT for each recipient, DATA and the message.

use std::future::Future;
use std::time::{Duration, Instant};

use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use super::{Failure, FailureKind, Session, Step, Trace};

/// Sends `bytes` to the envelope's recipients. When the server offers PIPELINING (RFC 2920),
/// MAIL, the RCPTs and DATA go out in one write and their replies are read in order, one round
/// trip instead of three; otherwise each command waits for its reply. A failure names its step
/// (a 5xx at `rcpt_to` names the recipient). After any failed reply the caller drops the
/// session, so replies still unread never confuse a later transaction. Like lettre's `send`,
/// SMTPUTF8 and 8BITMIME are asked for when the envelope or message need them. Each reply waits
/// at most `reply_limit` when given (the test); delivery bounds the whole transaction instead.
pub async fn send(
    session: &mut Session,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
    reply_limit: Option<Duration>,
    trace: &mut dyn Trace,
) -> Result<Response, Failure> {
    let mut options = Vec::new();
    let server = session.conn.server_info();
    if needs_smtputf8(envelope) && server.supports_feature(Extension::SmtpUtfEight) {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() && server.supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(envelope.from().cloned(), options);
    let rcpts: Vec<Rcpt> = envelope
        .to()
        .iter()
        .map(|to| Rcpt::new(to.clone(), vec![]))
        .collect();
    let conn = &mut session.conn;
    let mut at = Instant::now();
    if session.pipelining {
        let mut batch = mail.to_string();
        for rcpt in &rcpts {
            batch.push_str(&rcpt.to_string());
        }
        batch.push_str(&Data.to_string());
        // `command` writes the whole batch in one write and reads the first reply (MAIL's).
        let reply = bounded(Step::MailFrom, at, reply_limit, conn.command(Verbatim(batch))).await?;
        passed(trace, Step::MailFrom, &mut at, &reply);
        for _ in &rcpts {
            let reply = bounded(Step::RcptTo, at, reply_limit, conn.read_response()).await?;
            passed(trace, Step::RcptTo, &mut at, &reply);
        }
        bounded(Step::Data, at, reply_limit, conn.read_response()).await?;
    } else {
        let reply = bounded(Step::MailFrom, at, reply_limit, conn.command(mail)).await?;
        passed(trace, Step::MailFrom, &mut at, &reply);
        for rcpt in rcpts {
            let reply = bounded(Step::RcptTo, at, reply_limit, conn.command(rcpt)).await?;
            passed(trace, Step::RcptTo, &mut at, &reply);
        }
        bounded(Step::Data, at, reply_limit, conn.command(Data)).await?;
    }
    let reply = bounded(Step::Data, at, reply_limit, conn.message(bytes)).await?;
    passed(trace, Step::Data, &mut at, &reply);
    Ok(reply)
}

fn passed(trace: &mut dyn Trace, step: Step, at: &mut Instant, reply: &Response) {
    trace.passed(step, *at, Some(u16::from(reply.code())), &|| {
        reply.message().collect::<Vec<_>>().join(" ")
    });
    *at = Instant::now();
}

async fn bounded(
    step: Step,
    at: Instant,
    limit: Option<Duration>,
    reply: impl Future<Output = Result<Response, lettre::transport::smtp::Error>>,
) -> Result<Response, Failure> {
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, reply).await.map_err(|_| {
            Failure::new(
                step,
                at,
                FailureKind::Timeout {
                    secs: limit.as_secs(),
                },
            )
        })?,
        None => reply.await,
    };
    result.map_err(|e| Failure::new(step, at, FailureKind::Smtp(e)))
}

/// Whether an envelope address is not ASCII. Domains are A-labels already
/// ([`crate::mail::message::wire_address`]) and accepted local parts are ASCII, so this is for
/// the From address of settings saved before both held.
fn needs_smtputf8(envelope: &lettre::address::Envelope) -> bool {
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a))
}

/// Commands already formatted, CRLF included, written as they are.
struct Verbatim(String);

impl std::fmt::Display for Verbatim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
