//! Two destinations for the pool tests: `a.test` → mx.alpha.test (127.0.0.20, provider alpha),
//! `b.test` → mx.beta.test (127.0.0.21, provider beta), in a test DNS, one sink on both.

use super::config::{PoolIp, RelayConfig};
use super::dns::DnsServer;
use super::net::lo;
use super::sink::{Sink, Step};

pub struct Bench {
    pub dns: DnsServer,
    pub sink: Sink,
}

/// The DNS server and the sink, with `script` for the sink if given.
pub fn bench(script: Option<fn(&Step) -> Option<String>>) -> Bench {
    let dns = DnsServer::start();
    let mut b = Sink::builder(&[lo(20), lo(21)]);
    if let Some(s) = script {
        b = b.script(s);
    }
    let sink = b.start();
    dns.add_mx("a.test", 10, "mx.alpha.test");
    dns.add_ip("mx.alpha.test", lo(20));
    dns.add_mx("b.test", 10, "mx.beta.test");
    dns.add_ip("mx.beta.test", lo(21));
    Bench { dns, sink }
}

impl Bench {
    /// A relay config delivering here: the test DNS, `delivery.port` = the sink's port, the
    /// admin API, providers alpha and beta.
    pub fn config(&self) -> RelayConfig {
        RelayConfig::new()
            .dns(&self.dns)
            .delivery_port(self.sink.port())
            .admin()
            .provider("alpha", &["alpha.test"])
            .provider("beta", &["beta.test"])
    }

    /// `config` sending from `ips` (pool "default"), a new session for every message, `rest`
    /// appended.
    pub fn pooled(&self, ips: &[PoolIp], rest: &str) -> RelayConfig {
        self.config()
            .delivery("idle_timeout", "\"0s\"")
            .pool("default", ips)
            .section(rest)
    }
}
