//! The outbound network policy (spec §9): which addresses a script's HTTP
//! requests may reach.
//!
//! Default: every *public* unicast address is allowed; everything else is
//! refused — loopback, RFC 1918 private ranges, carrier-grade NAT
//! (100.64.0.0/10, see [`classify`]), link-local (including the cloud
//! metadata address 169.254.169.254), unique-local `fc00::/7`, multicast,
//! broadcast, unspecified, reserved and documentation ranges, and the IPv6
//! forms that embed one of those IPv4 addresses (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`; Teredo is refused
//! outright). The allowlist (config `outbound_allow`, `avap run
//! --allow-outbound`) reopens hosts, `host:port` pairs and CIDR blocks.
//!
//! The check applies to *resolved addresses*: the HTTP client resolves the
//! name, checks every address here, and connects only to an address that
//! passed (so a second DNS answer cannot swap in a private address), and
//! does it again for every redirect hop.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public, or `None` when it is an ordinary public
/// unicast address.
///
/// Decision: 100.64.0.0/10 (RFC 6598 shared address space, carrier-grade
/// NAT) is refused — it is not reachable on the public internet and inside
/// a provider network it reaches the provider's own machines.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private (RFC 1918)",
        (169, 254, _) => "link-local (incl. cloud metadata)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18 | 19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that embed an IPv4 address: judge the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible ::a.b.c.d (deprecated): refused whatever it embeds.
        return Some("IPv4-compatible IPv6 (deprecated)");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            (seg[6] & 0xff) as u8,
            (seg[7] >> 8) as u8,
            (seg[7] & 0xff) as u8,
        );
        return classify_v4(v4);
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    if seg[0] & 0xff00 == 0 {
        // The rest of ::/8: IPv4-translated ::ffff:0:a.b.c.d and other
        // reserved forms.
        return Some("reserved (::/8)");
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            (seg[1] & 0xff) as u8,
            (seg[2] >> 8) as u8,
            (seg[2] & 0xff) as u8,
        );
        return classify_v4(v4);
    }
    Some(match seg[0] {
        s if s & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10, deprecated)",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if seg[1] == 0 => "Teredo (2001::/32)",
        0x2001 if seg[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
}

/// An `outbound_allow` entry is not a host, `host:port` or CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "outbound allowlist entry {entry:?}: {reason}; write a host name (api.example.com), host:port \
     (127.0.0.1:8081, [::1]:8081) or a CIDR block (10.0.0.0/8, fd00::/8)"
)]
pub struct AllowlistError {
    pub entry: String,
    pub reason: String,
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name (lower-case), optionally only on one port.
    Host { name: String, port: Option<u16> },
    /// An address block (a single address is a /32 or /128), optionally
    /// only on one port.
    Net {
        base: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Host { name, port: None } => f.write_str(name),
            Rule::Host { name, port: Some(p) } => write!(f, "{name}:{p}"),
            Rule::Net { base, prefix, port } => {
                let full = if base.is_ipv4() { 32 } else { 128 };
                match (base, port) {
                    (IpAddr::V6(v6), Some(p)) => write!(f, "[{v6}]:{p}"),
                    (_, Some(p)) => write!(f, "{base}:{p}"),
                    _ if *prefix == full => write!(f, "{base}"),
                    _ => write!(f, "{base}/{prefix}"),
                }
            }
        }
    }
}

/// The outbound policy: public addresses plus the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    rules: Vec<Rule>,
}

impl OutboundPolicy {
    /// The default policy (public addresses only) plus `allow` entries:
    /// `host`, `host:port`, `ip`, `ip:port`, `[v6]:port` or `ip/prefix`.
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<OutboundPolicy, AllowlistError> {
        let rules = allow.iter().map(|e| parse_rule(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(OutboundPolicy { rules })
    }

    /// The allowlist entries, normalised (for `--print-config` and logs).
    pub fn allowlist(&self) -> Vec<String> {
        self.rules.iter().map(ToString::to_string).collect()
    }

    /// May a request to `host` (as written in the URL) on `port` connect to
    /// `addr` (one of the addresses `host` resolved to)? `Err` says why not.
    pub fn check(&self, host: &str, port: u16, addr: IpAddr) -> Result<(), String> {
        let addr = canonical(addr);
        let Some(reason) = classify(addr) else { return Ok(()) };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let allowed = self.rules.iter().any(|r| match r {
            Rule::Host { name, port: p } => *name == host && p.is_none_or(|p| p == port),
            Rule::Net { base, prefix, port: p } => in_block(addr, *base, *prefix) && p.is_none_or(|p| p == port),
        });
        if allowed {
            Ok(())
        } else {
            // The resolved address is not shown: it would tell a script
            // about the server's own network.
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            Err(format!(
                "outbound request to {host}:{port} refused: it resolves to a {reason} address, which the \
                 outbound policy denies; allow it with `outbound_allow` in the server config or \
                 `avap run --allow-outbound {host}:{port}`"
            ))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for (so
/// allowlist entries written as IPv4 match it too).
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn in_block(addr: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (addr, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn parse_rule(entry: &str) -> Result<Rule, AllowlistError> {
    let fail = |reason: &str| AllowlistError {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let e = entry.trim();
    if e.is_empty() {
        return Err(fail("it is empty"));
    }
    if let Some((addr, prefix)) = e.split_once('/') {
        let base: IpAddr = addr
            .parse()
            .map_err(|_| fail("the part before '/' is not an IP address"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| fail(&format!("the prefix length must be a number from 0 to {max}")))?;
        return Ok(Rule::Net {
            base: canonical(base),
            prefix,
            port: None,
        });
    }
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Ok(net(canonical(ip), None));
    }
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or_else(|| fail("write [IPv6]:port"))?;
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| fail("the part in brackets is not an IPv6 address"))?;
        return Ok(net(
            canonical(IpAddr::V6(ip)),
            Some(parse_port(port).ok_or_else(|| fail("bad port"))?),
        ));
    } else if let Some((h, p)) = e.rsplit_once(':') {
        (
            h,
            Some(parse_port(p).ok_or_else(|| fail("the port must be a number from 1 to 65535"))?),
        )
    } else {
        (e, None)
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(net(canonical(ip), port));
    }
    let valid = host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        return Err(fail("not a valid host name"));
    }
    Ok(Rule::Host {
        name: host.to_ascii_lowercase(),
        port,
    })
}

fn net(base: IpAddr, port: Option<u16>) -> Rule {
    let prefix = if base.is_ipv4() { 32 } else { 128 };
    Rule::Net { base, prefix, port }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifier_table() {
        let refused = [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "::ffff:0:7f00:1",
            "::ffff:0:808:808",
            "::1:0:0:0:1",
            "0:1::1",
            "ff:1::1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:2::808:808",
        ];
        for a in refused {
            assert!(classify(ip(a)).is_some(), "{a} must be refused");
        }
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in public {
            assert_eq!(classify(ip(a)), None, "{a} is public");
        }
    }

    #[test]
    fn refusals_do_not_show_the_resolved_address() {
        let p = OutboundPolicy::new::<&str>(&[]).unwrap();
        let e = p.check("innocent.example", 80, ip("10.1.2.3")).unwrap_err();
        assert!(!e.contains("10.1.2.3"), "{e}");
        assert!(e.contains("private"), "{e}");
    }

    #[test]
    fn classifier_names_the_reason() {
        assert_eq!(classify(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(classify(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(classify(ip("fd00::1")), Some("unique-local (fc00::/7)"));
        assert!(classify(ip("169.254.169.254")).unwrap().contains("metadata"));
    }

    #[test]
    fn default_policy_refuses_private_and_allows_public() {
        let p = OutboundPolicy::default();
        assert!(p.check("example.com", 443, ip("93.184.216.34")).is_ok());
        let e = p.check("localhost", 80, ip("127.0.0.1")).unwrap_err();
        assert!(
            e.contains("loopback") && e.contains("outbound_allow") && e.contains("localhost:80"),
            "{e}"
        );
        assert!(p.check("x", 80, ip("::ffff:10.1.2.3")).is_err());
        assert!(p.check("[::1]", 80, ip("::1")).unwrap_err().contains("[::1]:80"));
    }

    #[test]
    fn allowlist_hosts_ports_and_blocks() {
        let p = OutboundPolicy::new(&[
            "127.0.0.1:8081",
            "internal.example",
            "10.0.0.0/8",
            "[::1]:9000",
            "fd00::/8",
        ])
        .unwrap();
        assert!(p.check("127.0.0.1", 8081, ip("127.0.0.1")).is_ok());
        assert!(
            p.check("127.0.0.1", 8081, ip("::ffff:127.0.0.1")).is_ok(),
            "mapped form matches"
        );
        assert!(p.check("127.0.0.1", 8082, ip("127.0.0.1")).is_err(), "other port");
        assert!(p.check("localhost", 80, ip("127.0.0.2")).is_err());
        assert!(
            p.check("Internal.Example", 80, ip("192.168.0.5")).is_ok(),
            "host rule, any port"
        );
        assert!(p.check("other.example", 80, ip("192.168.0.5")).is_err());
        assert!(p.check("a", 1, ip("10.200.0.1")).is_ok());
        assert!(p.check("a", 1, ip("11.0.0.1")).is_ok(), "public anyway");
        assert!(p.check("a", 1, ip("172.16.0.1")).is_err());
        assert!(p.check("[::1]", 9000, ip("::1")).is_ok());
        assert!(p.check("[::1]", 9001, ip("::1")).is_err());
        assert!(p.check("a", 1, ip("fd99::1")).is_ok());
        assert!(p.check("a", 1, ip("fc00::1")).is_err());
        assert_eq!(
            p.allowlist(),
            [
                "127.0.0.1:8081",
                "internal.example",
                "10.0.0.0/8",
                "[::1]:9000",
                "fd00::/8"
            ]
        );
    }

    #[test]
    fn allowlist_errors_say_what_to_write() {
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "host:0",
            "host:99999",
            "bad host",
            "[::1]",
            "[zz]:80",
        ] {
            let e = OutboundPolicy::new(&[bad]).unwrap_err();
            assert!(e.to_string().contains("CIDR block"), "{bad}: {e}");
        }
        assert!(OutboundPolicy::new(&["0.0.0.0/0"]).is_ok());
    }
}
