//! E-mail addresses as mail carries them: the one place their rules live.

use std::fmt;

/// An address parsed for the wire: lettre's address, with an internationalised domain as its
/// A-label (punycode, `bücher.example` -> `xn--bcher-kva.example`), which every server takes; the
/// local part as it is (a non-ASCII one needs SMTPUTF8, which the sender asks for or refuses to
/// send without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(lettre::Address);

impl EmailAddress {
    /// An address a request may give: one mailbox, at most 254 characters, no white space,
    /// control or list characters, a dotted domain (or `localhost`) with an A-label, and no
    /// address literal (`user@[127.0.0.1]`: messages to them cannot be built, and they would
    /// point mail at arbitrary IPs).
    pub fn parse(address: &str) -> anyhow::Result<Self> {
        let plain = address.len() <= 254
            && !address
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'));
        anyhow::ensure!(plain, "{address} is not a single address");
        let (_, domain) = address
            .rsplit_once('@')
            .ok_or_else(|| anyhow::anyhow!("{address} has no @"))?;
        let dotted = !domain.starts_with('[')
            && (domain == "localhost" || (domain.contains('.') && !domain.ends_with('.')));
        anyhow::ensure!(dotted, "{domain} is not a domain mail can be sent to");
        address.parse::<lettre::Address>()?;
        Self::from_stored(address)
    }

    /// A stored address (checked with [`Self::parse`] when it was given) in its wire form; only
    /// what cannot be sent at all is refused.
    pub fn from_stored(address: &str) -> anyhow::Result<Self> {
        let (local, domain) = address
            .rsplit_once('@')
            .ok_or_else(|| anyhow::anyhow!("{address} has no @"))?;
        let domain = idna::domain_to_ascii(domain)
            .map_err(|_| anyhow::anyhow!("{domain} is not a valid internationalised domain name"))?;
        Ok(Self(lettre::Address::new(local, domain)?))
    }

    pub fn wire(&self) -> &lettre::Address {
        &self.0
    }

    pub fn into_wire(self) -> lettre::Address {
        self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The key the suppression list compares an address under, as it was given: the local part as it
/// is (it may be case-sensitive), the domain in lower case.
pub fn comparison_key(address: &str) -> String {
    let address = address.trim();
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internationalised_domain_goes_on_the_wire_as_its_a_label() {
        let wire = |a: &str| EmailAddress::from_stored(a).unwrap().to_string();
        assert_eq!(wire("ada@bücher.example"), "ada@xn--bcher-kva.example");
        assert_eq!(wire("ädä@Bücher.Example"), "ädä@xn--bcher-kva.example");
        assert_eq!(wire("ada@example.com"), "ada@example.com");
    }

    #[test]
    fn only_single_addresses_at_a_domain_mail_can_reach_parse() {
        for ok in ["ada@example.com", "root@localhost", "ada@bücher.example"] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ada",
            "ada@[127.0.0.1]",
            "ada@example",
            "ada@example.com.",
            "ada@example.com, eve@example.com",
            "Ada <ada@example.com>",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_compare_case_insensitively_in_the_domain_only() {
        assert_eq!(comparison_key(" Ada@Example.COM "), "Ada@example.com");
        assert_ne!(
            comparison_key("ada@example.com"),
            comparison_key("Ada@example.com")
        );
    }
}
