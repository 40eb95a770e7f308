//! Where mail may connect: the allow-list of `MAILROOM_SMTP_ALLOWED_HOSTS`, and addresses never
//! contacted (link-local, cloud metadata, also when spelled as IPv6 forms that embed them). Both
//! SMTP sessions and OAuth token requests go through it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The allow-list from the configuration.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// When set, the only hosts that may be contacted.
    pub allowed_hosts: Option<Vec<String>>,
}

impl HostPolicy {
    /// Whether the allow-list (if any) names `host`, compared without case and trailing dot.
    pub fn host_allowed(&self, host: &str) -> bool {
        let norm = |h: &str| h.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = norm(host);
        self.allowed_hosts
            .as_ref()
            .is_none_or(|list| list.iter().any(|allowed| norm(allowed) == host))
    }
}

/// Addresses no SMTP connection or outbound request may reach: link-local (including cloud
/// metadata at 169.254.169.254), Alibaba Cloud's metadata address 100.100.100.200, the AWS IPv6
/// metadata address, and the unspecified and "this network" addresses (`0.0.0.0/8`, `::`, which
/// connect to the machine's own services), and broadcast. IPv6 forms that carry an IPv4 address
/// (mapped, compatible, translated, NAT64, 6to4, Teredo) are judged by that IPv4 address.
/// Loopback and private ranges stay allowed, because local relays are common.
pub fn is_forbidden_address(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    let forbidden_v4 = |v4: Ipv4Addr| {
        v4.is_link_local() || v4 == ALIBABA_METADATA || v4.octets()[0] == 0 || v4.is_broadcast()
    };
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        // ::1 would otherwise read as the IPv4-compatible form of 0.0.0.1.
        IpAddr::V6(v6) if v6.is_loopback() => false,
        IpAddr::V6(v6) => {
            v6 == AWS_METADATA_V6
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || embedded_ipv4(v6).into_iter().any(forbidden_v4)
        }
    }
}

/// The address `host` spells, in any notation the system resolver takes for a literal: IPv6
/// (bracketed or not), dotted quads, and the inet_aton forms (`2852039166`, `0xa9fea9fe`,
/// `0251.0376.0251.0376`, `169.254.43518`, `0`). None for a host name.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim().trim_end_matches('.');
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<u64> = host
        .split('.')
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            if let Some(hex) = lower.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else if lower.len() > 1 && lower.starts_with('0') {
                u64::from_str_radix(&lower[1..], 8).ok()
            } else {
                lower.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 255) || *last >= 1u64 << (8 * (4 - leading.len())) {
        return None;
    }
    let value = leading
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, &p)| acc | (p << (8 * (3 - i))));
    Some(IpAddr::V4(Ipv4Addr::from(value as u32)))
}

/// The IPv4 addresses an IPv6 address stands for, by the transition mechanisms that embed one.
fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    let mut found = Vec::new();
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), ::ffff:0:a.b.c.d (translated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        found.push(v4(s[6], s[7]));
    }
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        found.push(v4(s[6], s[7]));
    }
    // NAT64: 64:ff9b::/96 (well-known) and 64:ff9b:1::/48 (local use), IPv4 in the last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b {
        found.push(v4(s[6], s[7]));
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        found.push(v4(s[1], s[2]));
    }
    // Teredo: 2001:0::/32; server IPv4 in bits 32-63, client IPv4 inverted in the last 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(v4(s[2], s[3]));
        found.push(v4(!s[6], !s[7]));
    }
    found
}

/// Why a host may not be contacted.
#[derive(Debug, thiserror::Error)]
pub enum HostRefused {
    #[error("{host} is not in MAILROOM_SMTP_ALLOWED_HOSTS")]
    NotAllowed { host: String },
    #[error("{host} resolves to {ip}, a link-local or cloud metadata address")]
    Forbidden { host: String, ip: IpAddr },
}

/// Resolves `host:port` and applies the host policy to every address it resolves to.
pub async fn resolve_checked(
    ctx: &HostPolicy,
    host: &str,
    port: u16,
) -> Result<Result<Vec<SocketAddr>, HostRefused>, std::io::Error> {
    if !ctx.host_allowed(host) {
        return Ok(Err(HostRefused::NotAllowed {
            host: host.to_string(),
        }));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if let Some(bad) = addrs.iter().find(|a| is_forbidden_address(a.ip())) {
        return Ok(Err(HostRefused::Forbidden {
            host: host.to_string(),
            ip: bad.ip(),
        }));
    }
    Ok(Ok(addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden_but_local_relays_are_not() {
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "::169.254.169.254",
            "2002:a9fe:a9fe::1",
            "::ffff:0:a9fe:a9fe",
            "100.100.100.200",
            "::ffff:100.100.100.200",
            "2001:0:a9fe:a9fe::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "255.255.255.255",
        ] {
            assert!(is_forbidden_address(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.10",
            "::1",
            "fd00::1",
            "203.0.113.7",
        ] {
            assert!(!is_forbidden_address(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn every_spelling_the_resolver_takes_for_a_literal_is_read_as_that_address() {
        for spelling in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.16689662",
            "0xa9.0xfe.0xa9.0xfe",
            "[::ffff:169.254.169.254]",
            "::ffff:a9fe:a9fe",
            "169.254.169.254.",
        ] {
            let ip = ip_literal(spelling).unwrap_or_else(|| panic!("{spelling}"));
            assert!(is_forbidden_address(ip), "{spelling} -> {ip}");
        }
        assert_eq!(ip_literal("0"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(ip_literal("127.1"), Some("127.0.0.1".parse().unwrap()));
        for name in [
            "smtp.example.com",
            "localhost",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x1g",
            "mail-1",
        ] {
            assert_eq!(ip_literal(name), None, "{name}");
        }
    }
}
