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
//!     .provider_key("alpha", "max_per_hour", 2)
//!     .pool("default", &[PoolIp::new(10, "out10.test").weight(3), PoolIp::new(11, "out11.test")])
//!     .route("*", "[127.0.0.20]:2525")
//!     .section("[warmup]\nday = \"240h\"");
//! let relay = Relay::start(&dir, &cfg.to_toml());
//! let admin = cfg.admin_addr().unwrap();
//!
//! // TLS, AUTH, a second listener, [limits], no [delivery] at all:
//! let cfg = RelayConfig::new()
//!     .listen("starttls", "optional")
//!     .listener(format!("127.0.0.1:{p2}"), "implicit", "required")
//!     .tls(&certs)
//!     .networks(&["127.0.0.1/32"])
//!     .users_file(&users)
//!     .sender_login("alice", &["example.com"])
//!     .access("received_auth_user", true)
//!     .limit("max_errors", 100)
//!     .no_delivery();
//! ```

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;

use super::certs::Certs;
use super::dns::DnsServer;
use super::net::{free_port, lo};

/// A TOML string value (`"…"`) for a path.
fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

#[derive(Debug, Clone)]
pub struct PoolIp {
    address: String,
    helo: String,
    extra: Vec<String>,
}

impl PoolIp {
    /// 127.0.0.`n` saying `helo`.
    pub fn new(n: u8, helo: &str) -> PoolIp {
        PoolIp::at(lo(n), helo)
    }

    /// Any address (`"192.0.2.1"`, `"::1"`) saying `helo`.
    pub fn at(address: impl Display, helo: &str) -> PoolIp {
        PoolIp {
            address: address.to_string(),
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

/// The keys of one table in order; setting a key again replaces its value.
#[derive(Debug, Clone, Default)]
struct Table(Vec<(String, String)>);

impl Table {
    fn set(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.0.push((key.into(), value)),
        }
    }

    /// `[name]` and its keys; nothing for an empty table.
    fn write(&self, out: &mut String, name: &str) {
        if self.0.is_empty() {
            return;
        }
        out.push_str(&format!("\n[{name}]\n"));
        for (k, v) in &self.0 {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The first listener's port (on 127.0.0.1).
    pub port: u16,
    hostname: String,
    /// `[[listen]]` tables: address, `tls`, `auth`.
    listeners: Vec<(String, String, String)>,
    /// `[tls]` certificate and private key.
    tls: Option<(String, String)>,
    access: Table,
    limits: Table,
    nameserver: Option<String>,
    delivery: Table,
    admin: Option<u16>,
    /// Further `[admin]` keys.
    admin_keys: Table,
    /// `[signing]`: most tests' messages are bare `Subject:` lines, so the kit accepts a message
    /// without `From:` (unsigned); the tests of the `From:` rules set `missing_from = "refuse"`.
    /// A test's own `[signing]` section replaces this table.
    signing: Table,
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
        let port = free_port();
        let mut access = Table::default();
        access.set("networks", "[\"127.0.0.0/8\"]");
        let mut delivery = Table::default();
        delivery.set("retry", "[\"1s\"]");
        delivery.set("connect_timeout", "\"2s\"");
        delivery.set("command_timeout", "\"5s\"");
        let mut signing = Table::default();
        signing.set("missing_from", "\"accept-unsigned\"");
        RelayConfig {
            port,
            hostname: "relay.test".into(),
            listeners: vec![(format!("127.0.0.1:{port}"), "none".into(), "none".into())],
            tls: None,
            access,
            limits: Table::default(),
            nameserver: None,
            delivery,
            admin: None,
            admin_keys: Table::default(),
            signing,
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

    /// The first listener's `tls` (`none`, `starttls`, `implicit`) and `auth` (`none`,
    /// `optional`, `required`); default none and none.
    pub fn listen(mut self, tls: &str, auth: &str) -> Self {
        self.listeners[0].1 = tls.into();
        self.listeners[0].2 = auth.into();
        self
    }

    /// Another `[[listen]]` on `address` (`127.0.0.1:2525`, `[::1]:2525`).
    pub fn listener(mut self, address: impl Display, tls: &str, auth: &str) -> Self {
        self.listeners
            .push((address.to_string(), tls.into(), auth.into()));
        self
    }

    /// `[tls]` with the certificate and key of `certs`.
    pub fn tls(mut self, certs: &Certs) -> Self {
        self.tls = Some((quoted(&certs.cert), quoted(&certs.key)));
        self
    }

    pub fn networks(self, nets: &[&str]) -> Self {
        let nets: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
        self.access("networks", format!("[{}]", nets.join(", ")))
    }

    /// Sets one `[access]` key to a TOML value.
    pub fn access(mut self, key: &str, value: impl Display) -> Self {
        self.access.set(key, value);
        self
    }

    pub fn users_file(self, path: &Path) -> Self {
        self.access("users_file", quoted(path))
    }

    /// An `[[access.sender_login]]` entry: `user` may send as `senders` (domains or address
    /// globs; `["*"]` for any). Without one, a login that is not an address may use no sender.
    pub fn sender_login(self, user: &str, senders: &[&str]) -> Self {
        let senders: Vec<String> = senders.iter().map(|s| format!("\"{s}\"")).collect();
        self.section(&format!(
            "[[access.sender_login]]\nuser = \"{user}\"\nsenders = [{}]",
            senders.join(", ")
        ))
    }

    /// Sets one `[limits]` key to a TOML value (no `[limits]` table without one).
    pub fn limit(mut self, key: &str, value: impl Display) -> Self {
        self.limits.set(key, value);
        self
    }

    pub fn dns(self, dns: &DnsServer) -> Self {
        self.nameserver(dns.nameserver())
    }

    /// `[dns] nameservers = ["addr"]` for a server that is not a `DnsServer`.
    pub fn nameserver(mut self, addr: impl Display) -> Self {
        self.nameserver = Some(addr.to_string());
        self
    }

    /// Sets one `[delivery]` key to a TOML value (`"\"5s\""`, `25`, `"[\"1s\"]"`).
    pub fn delivery(mut self, key: &str, value: impl Display) -> Self {
        self.delivery.set(key, value);
        self
    }

    /// Drops the default `[delivery]` keys (the table is left out until one is set again).
    pub fn no_delivery(mut self) -> Self {
        self.delivery = Table::default();
        self
    }

    /// Sets `key = value` in `[signing]` (value as TOML).
    pub fn signing(mut self, key: &str, value: impl Display) -> Self {
        self.signing.set(key, value);
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

    /// Sets `key = value` in `[admin]` (value as TOML: `"\"on\""`, `3`, `true`).
    pub fn admin_key(mut self, key: &str, value: impl Display) -> Self {
        self.admin_keys.set(key, value);
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

    /// Adds `key = value` to the provider `name` added before.
    pub fn provider_key(mut self, name: &str, key: &str, value: impl Display) -> Self {
        let head = format!("[[provider]]\nname = \"{name}\"\n");
        let sec = self
            .sections
            .iter_mut()
            .find(|s| s.starts_with(&head))
            .unwrap_or_else(|| panic!("no provider {name}"));
        sec.push_str(&format!("\n{key} = {value}"));
        self
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

    /// A `[[route]]` for `domain` (`"*"`, `"*.sub.test"`) to `host` (`"[127.0.0.20]:2525"`).
    pub fn route(self, domain: &str, host: &str) -> Self {
        self.section(&format!(
            "[[route]]\ndomain = \"{domain}\"\nhost = \"{host}\""
        ))
    }

    /// Raw TOML appended as it is (tables after the built-in ones).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.trim().to_string());
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = format!("hostname = \"{}\"\ndata_dir = \"data\"\n", self.hostname);
        for (address, tls, auth) in &self.listeners {
            s.push_str(&format!(
                "\n[[listen]]\naddress = \"{address}\"\ntls = \"{tls}\"\nauth = \"{auth}\"\n"
            ));
        }
        if let Some((cert, key)) = &self.tls {
            s.push_str(&format!(
                "\n[tls]\ncertificate = {cert}\nprivate_key = {key}\n"
            ));
        }
        self.access.write(&mut s, "access");
        self.limits.write(&mut s, "limits");
        if let Some(ns) = &self.nameserver {
            s.push_str(&format!("\n[dns]\nnameservers = [\"{ns}\"]\n"));
        }
        self.delivery.write(&mut s, "delivery");
        if !self.sections.iter().any(|sec| sec.starts_with("[signing]")) {
            self.signing.write(&mut s, "signing");
        }
        if let Some(p) = self.admin {
            s.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{p}\"\n"));
            for (k, v) in &self.admin_keys.0 {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        if self.nameserver.is_none() {
            // No test DNS: the background doctor must not ask the system's resolver.
            s.push_str("\n[doctor]\nbackground = false\n");
        }
        for sec in &self.sections {
            s.push('\n');
            s.push_str(sec);
            s.push('\n');
        }
        s
    }
}
