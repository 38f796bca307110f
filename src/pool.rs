//! Which source IP sends a message. Minimal for now: the message's pool (or the first pool), round
//! robin over its addresses of the destination's family. The Pool issue adds warm-up and health.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

/// One address to send from. `ip: None` means "let the OS pick" (no pool configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// EHLO name said from this address.
    pub helo: String,
}

impl Source {
    pub fn label(&self) -> String {
        self.ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "any".into())
    }
}

struct PoolState {
    ips: Vec<Source>,
    next: AtomicUsize,
}

pub struct Pools {
    pools: HashMap<String, PoolState>,
    /// The first `[[pool]]`: used when the envelope names none (or an unknown one).
    default: Option<String>,
    /// EHLO name when there is no pool at all.
    fallback_helo: String,
}

impl Pools {
    pub fn from_config(config: &Config) -> Pools {
        let pools = config
            .pool
            .iter()
            .map(|p| {
                let ips =
                    p.ip.iter()
                        .map(|ip| Source {
                            ip: Some(ip.address),
                            helo: ip.helo.clone(),
                        })
                        .collect();
                (
                    p.name.clone(),
                    PoolState {
                        ips,
                        next: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        Pools {
            pools,
            default: config.pool.first().map(|p| p.name.clone()),
            fallback_helo: config
                .delivery
                .helo
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
        }
    }

    /// The sources to try, in order, for one connection to an address of the given family: the
    /// round-robin pick first, then the others (failover is "try the next one"). Empty when the
    /// pool has no address of that family.
    pub fn next_ips(&self, pool: Option<&str>, want_v6: bool) -> Vec<Source> {
        let name = match pool {
            Some(p) if self.pools.contains_key(p) => Some(p),
            Some(p) => {
                tracing::warn!(pool = p, "unknown pool, using the default pool");
                self.default.as_deref()
            }
            None => self.default.as_deref(),
        };
        let Some(state) = name.and_then(|n| self.pools.get(n)) else {
            return vec![Source {
                ip: None,
                helo: self.fallback_helo.clone(),
            }];
        };
        let usable: Vec<&Source> = state
            .ips
            .iter()
            .filter(|s| s.ip.is_some_and(|ip| ip.is_ipv6() == want_v6))
            .collect();
        if usable.is_empty() {
            return Vec::new();
        }
        let start = state.next.fetch_add(1, Ordering::Relaxed) % usable.len();
        (0..usable.len())
            .map(|i| usable[(start + i) % usable.len()].clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn round_robin_per_family_and_failover_order() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[pool.ip]]\naddress = \"::1\"\nhelo = \"o6\"\n",
        );
        let p = Pools::from_config(&c);
        let first = p.next_ips(None, false);
        let second = p.next_ips(Some("a"), false);
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], second[0]);
        assert_eq!(first[0], second[1]);
        let v6 = p.next_ips(None, true);
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].helo, "o6");
    }

    #[test]
    fn no_pool_lets_the_os_pick() {
        let p = Pools::from_config(&config(""));
        let s = p.next_ips(None, false);
        assert_eq!(
            s,
            vec![Source {
                ip: None,
                helo: "relay.test".into()
            }]
        );
    }
}
