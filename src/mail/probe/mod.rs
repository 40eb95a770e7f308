//! The SMTP connection test: walks the session delivery uses ([`crate::mail::smtp`]) with the
//! same TLS parameters, HELO name, credentials and timeouts, records each step as it passes, and
//! says exactly which step failed, with a stable code and, where a likely fix is known, a hint
//! ([`diagnosis`]).

mod diagnosis;

use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

use super::address::EmailAddress;
use super::message::{self, Content, Sender};
use super::smtp::session::Options;
use super::smtp::{
    self, Failure, FailureKind, MailContext, Security, SmtpTarget, Step as SessionStep, TokenMode,
};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServerInfo {
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// Every step a test can report, in the order they run: the session's steps.
pub const STEP_NAMES: &[&str] = &{
    let mut names = [""; SessionStep::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = SessionStep::ALL[i].name();
        i += 1;
    }
    names
};

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

pub struct ProbeRequest<'a> {
    pub target: &'a SmtpTarget,
    /// Needed to send a test message: the configured From identity.
    pub sender: Option<&'a Sender>,
    pub to: Option<&'a EmailAddress>,
    pub redact: &'a [String],
}

/// Keeps each step as it passes, its detail redacted.
struct Recorder<'a> {
    steps: Vec<Step>,
    redact: &'a [String],
}

impl Recorder<'_> {
    fn record(
        &mut self,
        step: SessionStep,
        started: Instant,
        ok: bool,
        detail: String,
        smtp_code: Option<u16>,
    ) {
        self.steps.push(Step {
            step: step.name(),
            ok,
            duration_ms: started.elapsed().as_millis() as u64,
            detail: super::redact(&detail, self.redact),
            smtp_code,
        });
    }
}

impl smtp::Trace for Recorder<'_> {
    fn passed(
        &mut self,
        step: SessionStep,
        started: Instant,
        code: Option<u16>,
        detail: &dyn Fn() -> String,
    ) {
        self.record(step, started, true, detail(), code);
    }
}

/// Runs the test. Never fails: every problem becomes the report's `error`.
pub async fn run(ctx: &MailContext, req: ProbeRequest<'_>) -> TestReport {
    let started = Instant::now();
    let mut recorder = Recorder {
        steps: Vec::new(),
        redact: req.redact,
    };
    let (error, message_sent) = match walk(ctx, &req, &mut recorder).await {
        Ok(sent) => (None, sent),
        Err(failure) => {
            let seen = diagnosis::Seen {
                target: req.target,
                from: req.sender.map(|s| s.from.email.to_string()),
                to: req.to.map(|a| a.to_string()),
                redact: req.redact,
            };
            let (record, mut error) = diagnosis::explain(&failure, &seen);
            if let Some((detail, code)) = record {
                recorder.record(failure.step, failure.started, false, detail, code);
            }
            error.message = super::redact(&error.message, req.redact);
            (Some(error), false)
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
        steps: recorder.steps,
        error,
        message_sent,
    }
}

/// The session as far as it gets; Ok(true) when a test message was accepted.
async fn walk(
    ctx: &MailContext,
    req: &ProbeRequest<'_>,
    recorder: &mut Recorder<'_>,
) -> Result<bool, Failure> {
    let t = req.target;
    let options = Options {
        tokens: TokenMode::Fresh,
        nudge_silent_server: true,
    };
    let mut session = smtp::open(ctx, t, None, options, recorder).await?;
    let (Some(sender), Some(to)) = (req.sender, req.to) else {
        let _ = tokio::time::timeout(t.timeout, session.conn.quit()).await;
        return Ok(false);
    };
    let at = Instant::now();
    let message = test_message(t, sender, to)
        .map_err(|e| Failure::new(SessionStep::Data, at, FailureKind::Message(e.to_string())))?;
    let envelope = message.envelope().clone();
    smtp::transaction::send(
        &mut session,
        &envelope,
        &message.formatted(),
        Some(t.timeout),
        recorder,
    )
    .await?;
    let _ = tokio::time::timeout(t.timeout, session.conn.quit()).await;
    Ok(true)
}

/// A short message saying when and through which server it was sent.
fn test_message(t: &SmtpTarget, sender: &Sender, to: &EmailAddress) -> anyhow::Result<lettre::Message> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("test-{}", uuid::Uuid::new_v4());
    let via = format!("{}:{} ({})", t.host, t.port, t.security.as_str());
    let text = format!(
        "This is a test message from mailroom.\n\nIt was sent at {now} through {via} to check the SMTP settings.\nNo action is needed.\n"
    );
    let html = format!("<p>This is a test message from mailroom.</p><p>It was sent at {now} through {via} to check the SMTP settings. No action is needed.</p>");
    let subject = format!("mailroom test message ({now})");
    message::build(
        sender,
        &Content {
            notification_id: &id,
            to,
            to_name: None,
            subject: &subject,
            text: &text,
            html: &html,
        },
    )
}
