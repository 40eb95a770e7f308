//! Talking SMTP: where mail may go, the transport built from settings, and the messages sent.

pub mod message;
pub mod transport;

pub use transport::{MailContext, SmtpTarget};
