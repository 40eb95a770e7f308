//! Who a notification goes to and whether it can go now: the one place that decides, from the
//! SMTP settings and the admin address, for accepting, for housekeeping and for delivery.

use crate::db::DbConnection;
use crate::db::StoreError;
use crate::settings::{admin_email, smtp};

pub use crate::store::queue::housekeeping::NO_ADMIN_EMAIL;

/// Why nothing at all can be sent with these SMTP settings; None when mail can go out.
pub fn not_deliverable_reason(smtp: Option<&smtp::SmtpSettings>) -> Option<String> {
    match smtp {
        None => Some("SMTP is not configured yet (PUT /settings/smtp)".into()),
        Some(s) if s.from_address.is_none() => {
            Some("no default From address is configured (from_address in PUT /settings/smtp)".into())
        }
        Some(_) => None,
    }
}

/// Whether the current settings allow sending, and to whom admin events go.
pub struct Deliverability {
    /// None when mail can go out; else why it is held.
    pub blocked: Option<String>,
    pub admin_email: Option<String>,
    /// Suppressed recipients among those being accepted, with the reason (normalized address).
    pub suppressed: std::collections::HashMap<String, String>,
}

impl Deliverability {
    /// Reads the settings that decide it (inside the caller's transaction).
    pub fn load(conn: &mut DbConnection) -> Result<Self, StoreError> {
        let smtp = smtp::load(conn)?;
        Ok(Self {
            blocked: not_deliverable_reason(smtp.as_ref().map(|s| &s.value)),
            admin_email: admin_email::load(conn)?,
            suppressed: Default::default(),
        })
    }

    /// What housekeeping applies of it.
    pub fn routing(&self) -> crate::store::queue::housekeeping::Routing<'_> {
        crate::store::queue::housekeeping::Routing {
            blocked: self.blocked.as_deref(),
            admin_email: self.admin_email.as_deref(),
        }
    }

    /// Why `recipient` is never to be mailed, if it is on the suppression list.
    pub fn suppression(&self, recipient: Option<&str>) -> Option<&String> {
        self.suppressed
            .get(&crate::mail::address::comparison_key(recipient?))
    }

    /// The recipient: the address given, else (an admin event) the admin address, if any.
    pub fn recipient(&self, to: Option<&str>) -> Option<String> {
        to.map(str::to_string).or_else(|| self.admin_email.clone())
    }

    /// Why a notification to `recipient` must wait; None when it can be queued.
    pub fn held_reason(&self, recipient: Option<&str>) -> Option<String> {
        self.blocked
            .clone()
            .or_else(|| recipient.is_none().then(|| NO_ADMIN_EMAIL.to_string()))
    }
}
