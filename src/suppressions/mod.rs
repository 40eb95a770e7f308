//! The suppression list: addresses that are never mailed again, from a permanent failure that
//! names the recipient or added by hand (the table is [`crate::store::suppressions`]).

pub mod http;

/// Whether a permanent failure names the recipient: a 5xx answer to RCPT, or an enhanced status
/// code 5.1.x (bad destination mailbox or address) at DATA.
pub fn names_the_recipient(at_rcpt: bool, code: Option<u16>, reply: &str) -> bool {
    let permanent = code.is_some_and(|c| (500..600).contains(&c));
    if !permanent || about_encoding(reply) {
        return false;
    }
    at_rcpt
        || reply
            .split_whitespace()
            .any(|w| w.starts_with("5.1.") && w[4..].chars().all(|c| c.is_ascii_digit()))
}

/// Whether a refusal is about how the address was encoded (non-ASCII without SMTPUTF8, RFC 6531's
/// 5.6.7, "strict ASCII mode"), which is the sender's doing, not the address's.
fn about_encoding(reply: &str) -> bool {
    let lower = reply.to_ascii_lowercase();
    lower.contains("5.6.7") || lower.contains("ascii") || lower.contains("smtputf8") || lower.contains("utf8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_name_the_recipient_suppress() {
        assert!(names_the_recipient(true, Some(550), "550 no such user"));
        assert!(names_the_recipient(false, Some(550), "550 5.1.1 user unknown"));
        assert!(!names_the_recipient(
            false,
            Some(552),
            "552 5.3.4 message too big"
        ));
        assert!(!names_the_recipient(true, Some(451), "451 4.1.1 try later"));
        // About our encoding, not the address.
        assert!(!names_the_recipient(true, Some(500), "500 strict ASCII mode"));
        assert!(!names_the_recipient(
            true,
            Some(553),
            "553 5.6.7 SMTPUTF8 required"
        ));
    }
}
