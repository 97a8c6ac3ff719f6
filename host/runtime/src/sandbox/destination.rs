//! Where a checker's request may go: how a `permissions.http_hosts` pattern matches a request's
//! host and port, and which resolved addresses are refused unless the manifest lists them.
//!
//! - **Ports.** A pattern without a port allows ports 80 and 443 only (plain and TLS HTTP); any
//!   other port must be written (`host:8443`). A pattern never means "every port".
//! - **Wildcards.** `*.example.com` matches one or more whole labels in front of `example.com`
//!   (`a.example.com`, `a.b.example.com`), never the apex, never `badexample.com`, and never an
//!   address: a host that is an IP literal, or whose last label is numeric (`127.1`, which the
//!   system resolver reads as `127.0.0.1`), only matches a pattern that names that address.
//! - **Addresses.** Loopback, link-local, private, shared (CGNAT), unspecified, multicast,
//!   broadcast and cloud-metadata addresses, and IPv6 forms that embed such an IPv4 address
//!   (`::ffff:127.0.0.1`), are refused whatever name led to them, unless the allow-list names
//!   that address literally (`"127.0.0.1:9000"`, `"[fd00::5]"`). The checked service's own
//!   endpoint is exempt (see `outbound`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::manifest::HostPattern;

/// Ports a pattern without an explicit port allows: HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// A request's host as the guest wrote it: a DNS name (lowercase) or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHost {
    Name(String),
    Ip(IpAddr),
}

impl RequestHost {
    /// Parses a URI host, with or without IPv6 brackets.
    pub fn parse(host: &str) -> RequestHost {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => RequestHost::Ip(ip),
            Err(_) => RequestHost::Name(bare.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for RequestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestHost::Name(name) => f.write_str(name),
            RequestHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn pattern_port_allows(port: Option<u16>, requested: u16) -> bool {
    match port {
        Some(port) => port == requested,
        None => DEFAULT_PORTS.contains(&requested),
    }
}

/// Whether `pattern` admits a request to `host` on `port` (the name rule; the address rule is
/// [`classify`]).
pub fn pattern_allows(pattern: &HostPattern, host: &RequestHost, port: u16) -> bool {
    match pattern {
        HostPattern::Exact {
            host: allowed,
            port: allowed_port,
        } => {
            let same_host = match (host, allowed.parse::<IpAddr>()) {
                (RequestHost::Ip(ip), Ok(allowed)) => *ip == allowed,
                (RequestHost::Name(name), Err(_)) => name.eq_ignore_ascii_case(allowed),
                _ => false,
            };
            same_host && pattern_port_allows(*allowed_port, port)
        }
        HostPattern::Suffix {
            suffix,
            port: allowed_port,
        } => {
            let RequestHost::Name(name) = host else {
                return false;
            };
            wildcard_matches(suffix, name) && pattern_port_allows(*allowed_port, port)
        }
    }
}

/// `*.suffix` against `name`: whole labels only, at least one, none empty, and never a name the
/// system resolver would read as an address (a numeric last label; no TLD is numeric).
fn wildcard_matches(suffix: &str, name: &str) -> bool {
    if looks_numeric(name) || looks_numeric(suffix) {
        return false;
    }
    let name = name.to_ascii_lowercase();
    let Some(prefix) = name.strip_suffix(&suffix.to_ascii_lowercase()) else {
        return false;
    };
    let Some(labels) = prefix.strip_suffix('.') else {
        return false;
    };
    !labels.is_empty() && labels.split('.').all(|label| !label.is_empty())
}

/// Whether the last label of `name` is a number (`1`, `0x7f`): then `inet_aton`-style parsing
/// makes the whole name an address (`127.1`, `0x7f.0.0.1`).
fn looks_numeric(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Why an address is refused unless listed literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenRange {
    /// 127.0.0.0/8, ::1: the daemon's own host.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (and the deprecated site-local fec0::/10).
    Private,
    /// 100.64.0.0/10 (RFC 6598): carrier-grade NAT, also used for cloud-internal services.
    SharedAddressSpace,
    /// 0.0.0.0/8, ::: connecting there reaches the local host on common systems.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 169.254.169.254, fd00:ec2::254, 100.100.100.200: instance metadata (credentials).
    CloudMetadata,
}

impl ForbiddenRange {
    pub fn describe(self) -> &'static str {
        match self {
            ForbiddenRange::Loopback => "loopback",
            ForbiddenRange::LinkLocal => "link-local",
            ForbiddenRange::Private => "a private address",
            ForbiddenRange::SharedAddressSpace => "shared (CGNAT, 100.64.0.0/10) address space",
            ForbiddenRange::Unspecified => "unspecified",
            ForbiddenRange::Multicast => "multicast",
            ForbiddenRange::Broadcast => "broadcast",
            ForbiddenRange::CloudMetadata => "a cloud metadata address",
        }
    }
}

impl fmt::Display for ForbiddenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Instance-metadata endpoints, checked before the ranges that contain them so the reason says
/// what they are: AWS / GCP / Azure / OpenStack, AWS over IPv6, Alibaba Cloud.
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// The range `ip` falls in, if it is one a checker may not reach unless the manifest lists it.
pub fn classify(ip: IpAddr) -> Option<ForbiddenRange> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<ForbiddenRange> {
    let [a, b, ..] = ip.octets();
    if METADATA_V4.contains(&ip) {
        Some(ForbiddenRange::CloudMetadata)
    } else if ip.is_loopback() {
        Some(ForbiddenRange::Loopback)
    } else if a == 0 {
        Some(ForbiddenRange::Unspecified)
    } else if ip.is_link_local() {
        Some(ForbiddenRange::LinkLocal)
    } else if ip.is_private() {
        Some(ForbiddenRange::Private)
    } else if a == 100 && (64..128).contains(&b) {
        Some(ForbiddenRange::SharedAddressSpace)
    } else if ip.is_multicast() {
        Some(ForbiddenRange::Multicast)
    } else if ip.is_broadcast() {
        Some(ForbiddenRange::Broadcast)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<ForbiddenRange> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if METADATA_V6.contains(&ip) {
        Some(ForbiddenRange::CloudMetadata)
    } else if ip.is_loopback() {
        Some(ForbiddenRange::Loopback)
    } else if ip.is_unspecified() {
        Some(ForbiddenRange::Unspecified)
    } else if first & 0xffc0 == 0xfe80 {
        Some(ForbiddenRange::LinkLocal)
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        Some(ForbiddenRange::Private)
    } else if ip.is_multicast() {
        Some(ForbiddenRange::Multicast)
    } else {
        None
    }
}

/// The IPv4 address inside an IPv6 form that reaches it: IPv4-mapped (`::ffff:a.b.c.d`), the
/// deprecated IPv4-compatible form (`::a.b.c.d`), and the NAT64 well-known prefix
/// (`64:ff9b::a.b.c.d`, which a NAT64 gateway forwards to that IPv4 address).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|&x| x == 0) && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
    (compatible || nat64).then_some(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        HostPattern::parse(text).expect("valid pattern")
    }

    fn allows(pattern_text: &str, host: &str, port: u16) -> bool {
        pattern_allows(&pattern(pattern_text), &RequestHost::parse(host), port)
    }

    fn class(ip: &str) -> Option<ForbiddenRange> {
        classify(ip.parse().expect("valid address"))
    }

    #[test]
    fn every_forbidden_range_is_classified() {
        use ForbiddenRange::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.1.2", Loopback),
            ("::1", Loopback),
            ("169.254.0.1", LinkLocal),
            ("169.254.170.2", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.254", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("169.254.169.254", CloudMetadata),
            ("fd00:ec2::254", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_a_forbidden_ipv4_address_are_classified_as_it() {
        use ForbiddenRange::*;
        let cases = [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:192.168.0.1", Private),
            ("::ffff:100.64.0.1", SharedAddressSpace),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:255.255.255.255", Broadcast),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::169.254.169.254", CloudMetadata),
            ("64:ff9b::10.0.0.1", Private),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        assert_eq!(class("::ffff:93.184.216.34"), None);
    }

    #[test]
    fn public_addresses_are_not_forbidden() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn a_wildcard_matches_whole_labels_and_never_an_address() {
        assert!(allows("*.example.com", "a.example.com", 443));
        assert!(allows("*.example.com", "A.b.Example.com", 80));
        assert!(!allows("*.example.com", "example.com", 443));
        assert!(!allows("*.example.com", "badexample.com", 443));
        assert!(!allows("*.example.com", ".example.com", 443));
        assert!(!allows("*.example.com", "a..example.com", 443));
        assert!(!allows("*.1", "127.0.0.1", 80));
        assert!(!allows("*.0.0.1", "127.0.0.1", 80));
        assert!(!allows("*.1", "127.1", 80));
        assert!(!allows("*.1", "[::1]", 80));
        assert!(!allows("*.0x1", "127.0x1", 80));
    }

    #[test]
    fn a_pattern_without_a_port_allows_80_and_443_only() {
        assert!(allows("api.example.com", "api.example.com", 80));
        assert!(allows("api.example.com", "api.example.com", 443));
        assert!(!allows("api.example.com", "api.example.com", 22));
        assert!(!allows("api.example.com", "api.example.com", 6379));
        assert!(!allows("*.internal", "db.internal", 5432));
        assert!(allows("*.internal", "db.internal", 443));
        assert!(allows("api.example.com:8443", "api.example.com", 8443));
        assert!(!allows("api.example.com:8443", "api.example.com", 443));
        assert!(allows("*.internal:9000", "db.internal", 9000));
        assert!(!allows("*.internal:9000", "db.internal", 80));
    }

    #[test]
    fn an_ip_pattern_matches_that_address_only() {
        assert!(allows("127.0.0.1:9000", "127.0.0.1", 9000));
        assert!(!allows("127.0.0.1:9000", "localhost", 9000));
        assert!(!allows("127.0.0.1:9000", "127.0.0.2", 9000));
        assert!(allows("[::1]:9000", "[0:0::1]", 9000));
        assert!(!allows("localhost", "127.0.0.1", 80));
        assert!(allows("[fd00::5]", "[fd00::5]", 443));
        assert!(!allows("[fd00::5]", "[fd00::5]", 8080));
    }
}
