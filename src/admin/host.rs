//! Which `Host` names the admin listener: the DNS-rebinding defence (a page on `evil.example`
//! that rebinds its name to 127.0.0.1 still sends `Host: evil.example`). Rules:
//! 1. An HTTP/1.1 request carries exactly one `Host` of the shape `host[:port]` (`host` a name,
//!    an IPv4 literal or a `[v6]` literal); missing, repeated or malformed: 400 (RFC 9112 §3.2).
//!    HTTP/1.0 may omit it (no browser does).
//! 2. A request target in absolute form (`GET http://name/…`) is checked like `Host` (its
//!    authority is the one that counts, RFC 9112 §3.2.2), and `Host` then too.
//! 3. The host (case-insensitive, one trailing dot ignored) must be the IP address the connection
//!    reached, the IP of `[admin] listen`, `localhost` when the connection reached a loopback
//!    address, the relay's `hostname`, or an entry of `[admin] allowed_hosts`; else 421.
//! 4. The port is not compared: a tunnel or a port forward changes it, and a rebinding page
//!    names the attacker's domain whatever the port.
//!
//! Pure (std only), so the fuzz target runs it with the guard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A `Host` value's host part, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Ip(IpAddr),
    /// Lower case, without a trailing dot.
    Name(String),
}

/// The names the listener answers to, besides the address each connection reached.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// `[admin] listen`'s IP (unspecified: only the connection's own address counts).
    pub listen: IpAddr,
    names: Vec<HostName>,
}

impl Allowed {
    /// `hostname` and `extra` (`allowed_hosts`); entries that do not parse are skipped (the
    /// config check refuses them first).
    pub fn new(listen: IpAddr, hostname: &str, extra: &[String]) -> Allowed {
        let names = std::iter::once(hostname)
            .chain(extra.iter().map(String::as_str))
            .filter_map(parse_entry)
            .collect();
        Allowed { listen, names }
    }

    /// Whether `host` names the listener on a connection that reached `local` (rule 3).
    pub fn admits(&self, host: &HostName, local: IpAddr) -> bool {
        match host {
            HostName::Ip(ip) => {
                let ip = ip.to_canonical();
                ip == local.to_canonical()
                    || (!self.listen.is_unspecified() && ip == self.listen.to_canonical())
                    || self.names.contains(&HostName::Ip(ip))
            }
            HostName::Name(n) => {
                (n == "localhost" && local.to_canonical().is_loopback())
                    || self.names.contains(host)
            }
        }
    }
}

/// An `allowed_hosts` entry (or the `hostname`): a name or an IP literal, no port.
pub fn parse_entry(s: &str) -> Option<HostName> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(HostName::Ip(ip.to_canonical()));
    }
    match parse_authority(s)? {
        (h, None) => Some(h),
        (_, Some(_)) => None,
    }
}

/// `host[:port]` as in `Host` (rule 1): the host and the port, if any.
pub fn parse_authority(s: &str) -> Option<(HostName, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        (HostName::Ip(IpAddr::V6(ip).to_canonical()), after)
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let (name, after) = s.split_at(end);
        (parse_name(name)?, after)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// A name or IPv4 literal: letters, digits, `-`, `.`, `_`; at most 253 characters.
fn parse_name(s: &str) -> Option<HostName> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty()
        || s.len() > 253
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        || s.split('.').any(|l| l.is_empty() || l.len() > 63)
    {
        return None;
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Some(HostName::Ip(IpAddr::V4(ip)));
    }
    Some(HostName::Name(s.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admits(a: &Allowed, host: &str, local: &str) -> bool {
        parse_authority(host).is_some_and(|(h, _)| a.admits(&h, ip(local)))
    }

    #[test]
    fn shapes() {
        assert_eq!(
            parse_authority("Relay.Example.:8025"),
            Some((HostName::Name("relay.example".into()), Some(8025)))
        );
        assert_eq!(
            parse_authority("[::1]"),
            Some((HostName::Ip(ip("::1")), None))
        );
        assert_eq!(
            parse_authority("[::ffff:127.0.0.1]:1"),
            Some((HostName::Ip(ip("127.0.0.1")), Some(1)))
        );
        for bad in [
            "",
            ":80",
            "a:",
            "a:99999",
            "a:+1",
            "::1",
            "[::1",
            "[::1]x",
            "a b",
            "u@h",
            "a..b",
            "[fe80::1%eth0]",
            "h:1:2",
            "a/b",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_entry("2001:db8::1"),
            Some(HostName::Ip(ip("2001:db8::1")))
        );
        assert_eq!(parse_entry("admin.example:8025"), None);
    }

    #[test]
    fn names_of_the_listener_only() {
        let lo = Allowed::new(ip("127.0.0.1"), "relay.test", &["admin.example".into()]);
        for ok in [
            "127.0.0.1:8025",
            "127.0.0.1",
            "localhost:8025",
            "LOCALHOST.",
            "relay.test",
            "Admin.Example:443",
        ] {
            assert!(admits(&lo, ok, "127.0.0.1"), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.2",
            "[::1]",
            "relay.test.evil.example",
        ] {
            assert!(!admits(&lo, bad, "127.0.0.1"), "{bad}");
        }
        // A wildcard listener: the address the connection reached; localhost only on loopback.
        let any = Allowed::new(ip("0.0.0.0"), "relay.test", &[]);
        assert!(admits(&any, "192.0.2.7:8025", "192.0.2.7"));
        assert!(!admits(&any, "0.0.0.0", "192.0.2.7"));
        assert!(!admits(&any, "localhost", "192.0.2.7"));
        assert!(admits(&any, "[::1]", "::1"));
        assert!(admits(&any, "127.0.0.1", "::ffff:127.0.0.1"));
    }
}
