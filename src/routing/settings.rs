//! `[dns]` resolvers, `[[route]]` static routes and the TLS policy a route or `[delivery]` sets.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// `ip:port` of resolvers; empty = the system resolver.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    None,
    Opportunistic,
    Required,
}

/// A static route, like a Postfix transport map entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `example.org`, `*.example.org`, or `*` for everything.
    pub domain: String,
    /// `host:port` or `[ip]:port`; a host name is resolved with A/AAAA (no MX).
    pub host: String,
    /// Overrides `delivery.tls` for this route.
    pub tls: Option<TlsPolicy>,
}

impl Route {
    /// The target as (host, port): `host:port` or `[ip]:port`.
    pub fn target(&self) -> Option<(String, u16)> {
        let (host, port) = self.host.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some((host.to_string(), port))
    }
}
