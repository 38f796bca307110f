//! The few lookups the checks make, with "does not exist", "exists without this type" and
//! "could not ask" kept apart: only the first two are verdicts.

use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsHandle;
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, TokioResolver};

/// A lookup that could not be made (not a verdict), or no client to make it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// As `Found::Error` words it: the name, the type, why.
    #[error("{0}")]
    Lookup(String),
    /// As the nameserver pool's builder words it.
    #[error("{0}")]
    Client(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    Records(Vec<T>),
    /// The name exists, without records of the type asked.
    NoData,
    NxDomain,
    /// Timeout, SERVFAIL, refused: not a verdict.
    Error(String),
}

impl<T> Found<T> {
    /// The records, none for NXDOMAIN / no data; `Err` for a failed lookup.
    pub fn records(self) -> Result<Vec<T>, DnsError> {
        match self {
            Found::Records(v) => Ok(v),
            Found::NoData | Found::NxDomain => Ok(Vec::new()),
            Found::Error(e) => Err(DnsError::Lookup(e)),
        }
    }
}

/// `name.` as an absolute name (no search list, whatever `ndots`).
pub fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Lower case, no trailing dot, IDN labels in their A-label (`xn--`) form.
pub fn norm(name: &str) -> String {
    let n = name.trim().trim_end_matches('.');
    if n.is_ascii() {
        n.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(n).unwrap_or_else(|_| n.to_lowercase())
    }
}

async fn lookup<T>(
    resolver: &TokioResolver,
    name: &str,
    rtype: RecordType,
    pick: impl Fn(&RData) -> Option<T>,
) -> Found<T> {
    match resolver.lookup(fqdn(name).as_str(), rtype).await {
        Ok(l) => {
            let v: Vec<T> = l.answers().iter().filter_map(|r| pick(&r.data)).collect();
            if v.is_empty() {
                Found::NoData
            } else {
                Found::Records(v)
            }
        }
        Err(e) if e.is_nx_domain() => Found::NxDomain,
        Err(e) if e.is_no_records_found() => Found::NoData,
        Err(e) => Found::Error(format!("{name} {rtype}: {e}")),
    }
}

/// TXT records, each one's strings joined (as SPF, DKIM and DMARC read them).
pub async fn txt(resolver: &TokioResolver, name: &str) -> Found<String> {
    lookup(resolver, name, RecordType::TXT, |d| match d {
        RData::TXT(t) => Some(
            t.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        ),
        _ => None,
    })
    .await
}

/// The reverse-DNS name of an address: `10.0.0.127.in-addr.arpa`, nibbles under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    Name::from(ip).to_ascii().trim_end_matches('.').to_owned()
}

/// PTR lookups sent to the nameservers themselves. hickory's resolver answers `localhost` for
/// every 127.0.0.0/8 and ::1 address without asking (RFC 6761), which would hide the real PTR
/// of a pool IP on loopback (labs, the test bench); its name server pool has no such shortcut.
#[derive(Clone)]
pub struct PtrClient(NameServerPool<TokioRuntimeProvider>);

impl PtrClient {
    /// The same servers as `routing::build_resolver`: `[dns] nameservers`, else the system's.
    pub fn new(nameservers: &[SocketAddr]) -> Result<PtrClient, DnsError> {
        crate::util::nameservers::pool(nameservers, "DNS client")
            .map(PtrClient)
            .map_err(|e| DnsError::Client(e.to_string()))
    }

    /// PTR names of `ip` (lower case, no trailing dot).
    pub async fn ptr(&self, ip: IpAddr) -> Found<String> {
        let rname = reverse_name(ip);
        let query = Query::query(Name::from(ip), RecordType::PTR);
        let mut responses = self.0.lookup(query, DnsRequestOptions::default());
        match responses.next().await {
            Some(Ok(r)) if r.metadata.response_code == ResponseCode::NXDomain => Found::NxDomain,
            Some(Ok(r)) if r.metadata.response_code == ResponseCode::NoError => {
                let names: Vec<String> = r
                    .answers
                    .iter()
                    .filter_map(|a| match &a.data {
                        RData::PTR(p) => Some(norm(&p.0.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if names.is_empty() {
                    Found::NoData
                } else {
                    Found::Records(names)
                }
            }
            Some(Ok(r)) => Found::Error(format!("{rname} PTR: {}", r.metadata.response_code)),
            Some(Err(e)) if e.is_nx_domain() => Found::NxDomain,
            Some(Err(e)) if e.is_no_records_found() => Found::NoData,
            Some(Err(e)) => Found::Error(format!("{rname} PTR: {e}")),
            None => Found::Error(format!("{rname} PTR: no answer")),
        }
    }
}

/// A or AAAA records of `name`, the family of `like`.
pub async fn addrs(resolver: &TokioResolver, name: &str, like: IpAddr) -> Found<IpAddr> {
    let rtype = if like.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    lookup(resolver, name, rtype, |d| match d {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    })
    .await
}

/// MX records as (preference, exchange); exchange `""` is a null MX (RFC 7505).
pub async fn mx(resolver: &TokioResolver, domain: &str) -> Found<(u16, String)> {
    lookup(resolver, domain, RecordType::MX, |d| match d {
        RData::MX(m) => Some((m.preference, norm(&m.exchange.to_ascii()))),
        _ => None,
    })
    .await
}

/// One TXT record of `name` whose text starts with `prefix` (`v=spf1`, `v=DMARC1`, …; case
/// and a space or `;` after it as the specs allow). Others at the name are ignored.
pub fn with_prefix(records: Vec<String>, prefix: &str) -> Vec<String> {
    records
        .into_iter()
        .filter(|r| {
            let t = r.trim_start();
            t.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
                && t[prefix.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == ';' || c == '\t')
        })
        .collect()
}

/// A zone-file TXT line, the value split into quoted strings of at most 255 bytes.
pub fn zone_txt(name: &str, value: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = rest.len().min(255);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        parts.push(format!("\"{}\"", &rest[..end]));
        rest = &rest[end..];
    }
    if parts.is_empty() {
        parts.push("\"\"".into());
    }
    format!("{}. IN TXT {}", norm(name), parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("127.0.0.10".parse().unwrap()),
            "10.0.0.127.in-addr.arpa"
        );
        assert!(reverse_name("::1".parse().unwrap()).ends_with(".0.ip6.arpa"));
        assert!(reverse_name("::1".parse().unwrap()).starts_with("1.0.0.0."));
    }

    #[test]
    fn reverse_names_as_built_by_hand() {
        for ip in [
            "127.0.0.10",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "::",
            "::1",
            "2001:db8::1",
            "2001:db8:abcd:12:ffff:0:a0f:1",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let zone = if ip.is_ipv4() {
                "in-addr.arpa"
            } else {
                "ip6.arpa"
            };
            let by_hand = format!("{}.{zone}", crate::reputation::dnsbl::reversed(ip));
            assert_eq!(reverse_name(ip), by_hand, "{ip}");
            assert_eq!(
                Name::from(ip),
                Name::from_ascii(fqdn(&by_hand)).unwrap(),
                "{ip}"
            );
        }
    }

    #[test]
    fn zone_lines() {
        assert_eq!(
            zone_txt("Example.com.", "v=spf1 -all"),
            "example.com. IN TXT \"v=spf1 -all\""
        );
        let long = "a".repeat(300);
        let line = zone_txt("x.test", &long);
        assert!(line.ends_with(&format!("\"{}\" \"{}\"", "a".repeat(255), "a".repeat(45))));
    }

    #[test]
    fn prefixes() {
        let v = with_prefix(
            vec![
                "v=spf1 -all".into(),
                "v=spf10".into(),
                "google-site-verification=x".into(),
                "V=SPF1".into(),
            ],
            "v=spf1",
        );
        assert_eq!(v, vec!["v=spf1 -all", "V=SPF1"]);
    }
}
