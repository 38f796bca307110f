//! Where each recipient domain goes: static routes first (like Postfix transport maps), else MX
//! (RFC 5321 §5.1 order, equal preferences shuffled, RFC 7505 null MX, A/AAAA fallback).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

use crate::reply::Reply;

pub mod settings;

pub use settings::{Dns, Route, TlsPolicy};

/// One host to connect to (an MX, the route target, or the domain itself for A fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name for logs, replies and certificate checks (an IP literal for `[ip]` targets).
    pub name: String,
    pub port: u16,
    /// Addresses in the order to try; empty when the name did not resolve.
    pub addrs: Vec<IpAddr>,
    /// Why `addrs` is empty, if it is.
    pub error: Option<Reply>,
}

/// Where a set of recipients goes.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Identity for grouping, concurrency limits and connection reuse.
    pub key: String,
    pub hosts: Vec<Host>,
    pub tls: TlsPolicy,
    /// `tls` is all that decides (a route or an address literal): no DANE, no MTA-STS.
    pub static_tls: bool,
}

pub struct Router {
    routes: Vec<Route>,
    resolver: TokioResolver,
    port: u16,
    default_tls: TlsPolicy,
}

/// Lowercased domain of an address (`user@Example.ORG` → `example.org`).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Why no resolver could be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("system DNS configuration: {0}")]
    SystemConf(#[source] NetError),
    #[error("DNS resolver: {0}")]
    Build(#[source] NetError),
}

/// One shared resolver: `dns.nameservers` (UDP + TCP, no system config), else the system's.
pub fn build_resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, ResolverError> {
    resolver_builder(nameservers)?
        .build()
        .map_err(ResolverError::Build)
}

/// The builder `build_resolver` uses, for resolvers that add to it (DANE's validating one).
pub fn resolver_builder(
    nameservers: &[SocketAddr],
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ResolverError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(ResolverError::SystemConf)?
    } else {
        let servers = nameservers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.ndots = 0;
    // Test zones change during a run; a short cap keeps stale answers from lingering.
    opts.positive_max_ttl = Some(Duration::from_secs(300));
    opts.negative_max_ttl = Some(Duration::from_secs(30));
    Ok(builder)
}

fn dns_temp(what: &str, e: &NetError) -> Reply {
    Reply::new(451, "4.4.3", format!("DNS lookup for {what} failed: {e}"))
}

impl Router {
    /// `port` and `default_tls` are `[delivery]`'s, for MX hosts and routes without `tls`.
    pub fn new(
        routes: &[Route],
        dns: &Dns,
        port: u16,
        default_tls: TlsPolicy,
    ) -> Result<Router, ResolverError> {
        Ok(Router {
            routes: routes.to_vec(),
            resolver: build_resolver(&dns.nameservers)?,
            port,
            default_tls,
        })
    }

    /// The resolver delivery uses (MTA-STS lookups go through it too).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The static route for a domain: exact match, then the longest `*.suffix`, then `*`.
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        find_route(&self.routes, domain)
    }

    /// Resolves a recipient domain. `Err` is the reply for every recipient of the domain:
    /// permanent for NXDOMAIN and null MX, temporary for DNS failures (never a bounce).
    pub async fn resolve(&self, domain: &str) -> Result<Destination, Reply> {
        if let Some(route) = self.route_for(domain) {
            let (host, port) = route.target().ok_or_else(|| {
                Reply::new(451, "4.3.5", format!("bad route host {:?}", route.host))
            })?;
            let mut resolved = self.host(&host, port).await;
            // A route host that does not resolve is a configuration problem: defer, never bounce.
            if let Some(e) = resolved.error.as_mut()
                && e.is_permanent()
            {
                *e = Reply::new(451, "4.4.3", format!("route host: {}", e.text));
            }
            return Ok(Destination {
                key: format!("route:{}", route.host.to_ascii_lowercase()),
                hosts: vec![resolved],
                tls: route.tls.unwrap_or(self.default_tls),
                static_tls: true,
            });
        }
        // Address literal `[1.2.3.4]` / `[IPv6:…]`: straight to that address.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let lit = lit
                .strip_prefix("ipv6:")
                .or_else(|| lit.strip_prefix("IPv6:"))
                .unwrap_or(lit);
            let ip: IpAddr = lit
                .parse()
                .map_err(|_| Reply::new(550, "5.1.2", format!("bad address literal {domain}")))?;
            return Ok(Destination {
                key: format!("lit:{ip}"),
                hosts: vec![Host {
                    name: ip.to_string(),
                    port: self.port,
                    addrs: vec![ip],
                    error: None,
                }],
                tls: self.default_tls,
                static_tls: true,
            });
        }
        let fqdn = format!("{domain}.");
        let mxs = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.is_empty() {
                    return Err(Reply::new(
                        556,
                        "5.1.10",
                        format!("Domain {domain} does not accept mail (null MX)"),
                    ));
                }
                mx.retain(|(_, h)| !h.is_empty());
                order_mx(mx)
            }
            Err(e) if e.is_nx_domain() => {
                return Err(Reply::new(
                    550,
                    "5.1.2",
                    format!("Domain {domain} does not exist (NXDOMAIN)"),
                ));
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(dns_temp(&format!("{domain} MX"), &e)),
        };
        if mxs.is_empty() {
            // RFC 5321 §5.1: no MX, the domain itself is the implicit MX.
            let h = self.host(domain, self.port).await;
            if let Some(err) = &h.error
                && err.is_permanent()
            {
                return Err(err.clone());
            }
            return Ok(Destination {
                key: format!("a:{domain}:{}", self.port),
                hosts: vec![h],
                tls: self.default_tls,
                static_tls: false,
            });
        }
        let mut hosts = Vec::with_capacity(mxs.len());
        for name in &mxs {
            hosts.push(self.host(name, self.port).await);
        }
        let mut names = mxs.clone();
        names.sort();
        Ok(Destination {
            key: format!("mx:{}:{}", names.join(","), self.port),
            hosts,
            tls: self.default_tls,
            static_tls: false,
        })
    }

    /// A/AAAA for one host name (or the address itself for an IP literal).
    async fn host(&self, name: &str, port: u16) -> Host {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Host {
                name: name.to_string(),
                port,
                addrs: vec![ip],
                error: None,
            };
        }
        let mut addrs = Vec::new();
        let mut error = None;
        let fqdn = format!("{name}.");
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(l) => addrs.extend(l.iter()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                error = Some(Reply::new(
                    550,
                    "5.1.2",
                    format!("Host {name} not found (no A/AAAA records)"),
                ));
            }
            Err(e) => error = Some(dns_temp(name, &e)),
        }
        addrs.dedup();
        Host {
            name: name.to_string(),
            port,
            addrs,
            error,
        }
    }
}

/// Exact domain, then the longest matching `*.suffix` (subdomains only), then `*`.
pub fn find_route<'a>(routes: &'a [Route], domain: &str) -> Option<&'a Route> {
    if let Some(r) = routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(domain))
    {
        return Some(r);
    }
    routes
        .iter()
        .filter_map(|r| {
            let suffix = r.domain.strip_prefix("*.")?;
            let d = domain.to_ascii_lowercase();
            let s = suffix.to_ascii_lowercase();
            (d.len() > s.len() && d.ends_with(&s) && d.as_bytes()[d.len() - s.len() - 1] == b'.')
                .then_some((s.len(), r))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, r)| r)
        .or_else(|| routes.iter().find(|r| r.domain == "*"))
}

/// RFC 5321 §5.1: lowest preference first; equal preferences in random order.
fn order_mx(mut mx: Vec<(u16, String)>) -> Vec<String> {
    mx.shuffle(&mut rand::thread_rng());
    mx.sort_by_key(|(p, _)| *p);
    let mut out: Vec<String> = Vec::with_capacity(mx.len());
    for (_, h) in mx {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, host: &str) -> Route {
        Route {
            domain: domain.into(),
            host: host.into(),
            tls: None,
        }
    }

    #[test]
    fn route_matching_order() {
        let routes = vec![
            route("*", "[127.0.0.1]:1"),
            route("*.example.org", "[127.0.0.1]:2"),
            route("*.a.example.org", "[127.0.0.1]:3"),
            route("example.org", "[127.0.0.1]:4"),
        ];
        let h = |d: &str| find_route(&routes, d).map(|r| r.host.clone());
        assert_eq!(h("Example.ORG").unwrap(), "[127.0.0.1]:4");
        assert_eq!(h("x.example.org").unwrap(), "[127.0.0.1]:2");
        assert_eq!(h("y.a.example.org").unwrap(), "[127.0.0.1]:3");
        assert_eq!(h("badexample.org").unwrap(), "[127.0.0.1]:1");
        assert!(find_route(&routes[1..], "other.net").is_none());
    }

    #[test]
    fn mx_order_by_preference() {
        let o = order_mx(vec![
            (20, "b".into()),
            (10, "a".into()),
            (30, "c".into()),
            (10, "a".into()),
        ]);
        assert_eq!(o, vec!["a", "b", "c"]);
    }

    fn parse_route_host(host: &str) -> Option<(String, u16)> {
        Route {
            domain: "*".into(),
            host: host.into(),
            tls: None,
        }
        .target()
    }

    #[test]
    fn route_host_forms() {
        assert_eq!(
            parse_route_host("[127.0.0.1]:25"),
            Some(("127.0.0.1".into(), 25))
        );
        assert_eq!(
            parse_route_host("smtp.example.net:587"),
            Some(("smtp.example.net".into(), 587))
        );
        assert_eq!(parse_route_host("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(parse_route_host("nohost"), None);
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.ORG"), "example.org");
        assert_eq!(domain_of("\"x@y\"@d.test"), "d.test");
    }
}
