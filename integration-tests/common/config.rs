//! One relay config builder for every test file: the sections most tests share (a plain
//! listener trusted for 127/8, fast delivery timeouts and retries), with the parts that vary set
//! by name and anything else added as raw TOML.
//!
//! ```ignore
//! let cfg = RelayConfig::new()
//!     .dns(&dns)
//!     .delivery_port(sink.port())
//!     .admin()
//!     .provider("alpha", &["alpha.test"])
//!     .pool("default", &[PoolIp::new(10, "out10.test").weight(3), PoolIp::new(11, "out11.test")])
//!     .section("[warmup]\nday = \"240h\"");
//! let relay = Relay::start(&dir, &cfg.to_toml());
//! let admin = cfg.admin_addr().unwrap();
//! ```

use std::fmt::Display;
use std::net::SocketAddr;

use super::dns::DnsServer;
use super::net::{free_port, lo};

#[derive(Debug, Clone)]
pub struct PoolIp {
    address: String,
    helo: String,
    extra: Vec<String>,
}

impl PoolIp {
    /// 127.0.0.`n` saying `helo`.
    pub fn new(n: u8, helo: &str) -> PoolIp {
        PoolIp {
            address: lo(n).to_string(),
            helo: helo.to_string(),
            extra: Vec::new(),
        }
    }

    pub fn weight(mut self, w: u32) -> PoolIp {
        self.extra.push(format!("weight = {w}"));
        self
    }

    pub fn warmup(mut self, schedule: &str) -> PoolIp {
        self.extra.push(format!("warmup = \"{schedule}\""));
        self
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub port: u16,
    hostname: String,
    listen: String,
    networks: Vec<String>,
    nameserver: Option<String>,
    /// `[delivery]` keys in order; a later `delivery()` call replaces a key.
    delivery: Vec<(String, String)>,
    admin: Option<u16>,
    sections: Vec<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayConfig {
    /// `relay.test` on a free port of 127.0.0.1, no TLS, no AUTH, 127/8 trusted; delivery
    /// retries every second with short timeouts.
    pub fn new() -> RelayConfig {
        RelayConfig {
            port: free_port(),
            hostname: "relay.test".into(),
            listen: "tls = \"none\"\nauth = \"none\"".into(),
            networks: vec!["127.0.0.0/8".into()],
            nameserver: None,
            delivery: vec![
                ("retry".into(), "[\"1s\"]".into()),
                ("connect_timeout".into(), "\"2s\"".into()),
                ("command_timeout".into(), "\"5s\"".into()),
            ],
            admin: None,
            sections: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }

    /// The listener's lines other than `address` (default: no TLS, no AUTH).
    pub fn listen(mut self, lines: &str) -> Self {
        self.listen = lines.into();
        self
    }

    pub fn networks(mut self, nets: &[&str]) -> Self {
        self.networks = nets.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn dns(mut self, dns: &DnsServer) -> Self {
        self.nameserver = Some(dns.nameserver().to_string());
        self
    }

    /// Sets one `[delivery]` key to a TOML value (`"\"5s\""`, `25`, `"[\"1s\"]"`).
    pub fn delivery(mut self, key: &str, value: impl Display) -> Self {
        let value = value.to_string();
        match self.delivery.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.delivery.push((key.into(), value)),
        }
        self
    }

    pub fn delivery_port(self, port: u16) -> Self {
        self.delivery("port", port)
    }

    /// The admin API on a free port of 127.0.0.1.
    pub fn admin(mut self) -> Self {
        self.admin = Some(free_port());
        self
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    pub fn provider(self, name: &str, mx_suffixes: &[&str]) -> Self {
        let suffixes: Vec<String> = mx_suffixes.iter().map(|s| format!("\"{s}\"")).collect();
        self.section(&format!(
            "[[provider]]\nname = \"{name}\"\nmx_suffixes = [{}]",
            suffixes.join(", ")
        ))
    }

    pub fn pool(self, name: &str, ips: &[PoolIp]) -> Self {
        let mut s = format!("[[pool]]\nname = \"{name}\"");
        for ip in ips {
            s.push_str(&format!(
                "\n[[pool.ip]]\naddress = \"{}\"\nhelo = \"{}\"",
                ip.address, ip.helo
            ));
            for line in &ip.extra {
                s.push('\n');
                s.push_str(line);
            }
        }
        self.section(&s)
    }

    /// Raw TOML appended as it is (tables after the built-in ones).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.trim().to_string());
        self
    }

    pub fn to_toml(&self) -> String {
        let nets: Vec<String> = self.networks.iter().map(|n| format!("\"{n}\"")).collect();
        let mut s = format!(
            "hostname = \"{}\"\ndata_dir = \"data\"\n\n[[listen]]\naddress = \"127.0.0.1:{}\"\n{}\n\n[access]\nnetworks = [{}]\n",
            self.hostname,
            self.port,
            self.listen,
            nets.join(", ")
        );
        if let Some(ns) = &self.nameserver {
            s.push_str(&format!("\n[dns]\nnameservers = [\"{ns}\"]\n"));
        }
        s.push_str("\n[delivery]\n");
        for (k, v) in &self.delivery {
            s.push_str(&format!("{k} = {v}\n"));
        }
        if let Some(p) = self.admin {
            s.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{p}\"\n"));
        }
        for sec in &self.sections {
            s.push('\n');
            s.push_str(sec);
            s.push('\n');
        }
        s
    }
}
