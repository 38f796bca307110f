//! Who may relay: authenticated users, or clients whose address is in `access.networks`.
//! On a listener with `auth = "required"` only authenticated users may send (see README).

use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, seen on dual-stack sockets) becomes plain IPv4, so the
/// v4 entries of `networks` match it.
pub fn normalise(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

pub fn is_trusted(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = normalise(ip);
    networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_v6_and_mapped() {
        let nets: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let t = |s: &str| is_trusted(&nets, s.parse().unwrap());
        assert!(t("127.0.0.1"));
        assert!(!t("127.0.0.66"));
        assert!(t("10.1.2.3"));
        assert!(t("::ffff:10.1.2.3"));
        assert!(t("::ffff:127.0.0.1"));
        assert!(!t("::ffff:127.0.0.66"));
        assert!(t("fd00::10"));
        assert!(!t("::1"));
    }
}
