//! `[admin]`: where the operator surface listens and how it is guarded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener of the pool page, `/metrics` and the JSON API.
    pub listen: SocketAddr,
    /// The bearer token every request must carry; created (mode 0600) on first start when
    /// missing. Default `<data_dir>/admin.token`.
    pub token_file: Option<PathBuf>,
    /// `auto`: TLS with the `[tls]` certificate when `listen` is not loopback.
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra trust anchors (PEM) for the CLI when the API speaks TLS, besides the system roots
    /// and the certificates in `[tls] certificate`.
    pub ca_file: Option<PathBuf>,
    /// Lets loopback peers read `GET /api/pool` without the token (nothing else).
    #[serde(default)]
    pub loopback_pool_status_without_token: bool,
    /// A connection must send a request's whole header within this time (slowloris), and an
    /// idle connection is closed after it.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: DurationStr,
    /// Connections served at once; more are refused (503) until one ends.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client (IPv4 address, IPv6 /64) holds at once; a new one closes the
    /// client's oldest idle one (`serve.rs`).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Names `Host` may give besides the listener's address, the relay's `hostname` and
    /// `localhost` on loopback (`host.rs`): what the operator types in the browser.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// Entries `allowed_hosts` may list.
pub const MAX_ALLOWED_HOSTS: usize = 64;

/// Request bodies larger than this get 413: every API body is a small JSON object.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest a connection may live, whatever it does: a slow body cannot hold a slot.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS when `listen` is not a loopback address, plain HTTP on loopback.
    #[default]
    Auto,
    On,
    Off,
}

fn default_header_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

fn default_max_connections() -> usize {
    32
}

fn default_max_connections_per_client() -> usize {
    4
}

impl Settings {
    /// The token file, relative paths against the working directory like `data_dir`.
    pub fn token_path(&self, data_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("admin.token"))
    }

    /// Whether the listener speaks TLS.
    pub fn uses_tls(&self) -> bool {
        match self.tls {
            TlsMode::Auto => !self.listen.ip().is_loopback(),
            TlsMode::On => true,
            TlsMode::Off => false,
        }
    }

    /// Problems `check-config` reports, as (key, message).
    pub fn problems(&self, has_tls_files: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.uses_tls() && !has_tls_files {
            out.push((
                "tls",
                format!(
                    "[admin] listen {} needs TLS (not loopback, or tls = \"on\") but [tls] is missing",
                    self.listen
                ),
            ));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            out.push(("ca_file", format!("file {} not found", ca.display())));
        }
        if !(1..=10_000).contains(&self.max_connections) {
            out.push(("max_connections", "must be 1 to 10000".into()));
        }
        // Above max_connections it is max_connections: lowering only the total stays valid.
        if !(1..=10_000).contains(&self.max_connections_per_client) {
            out.push(("max_connections_per_client", "must be 1 to 10000".into()));
        }
        if self.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            out.push((
                "allowed_hosts",
                format!("at most {MAX_ALLOWED_HOSTS} names"),
            ));
        }
        for h in &self.allowed_hosts {
            if super::host::parse_entry(h).is_none() {
                out.push((
                    "allowed_hosts",
                    format!(
                        "{:?} is not a host name or IP address (no port, no wildcard)",
                        crate::text::escape(h)
                    ),
                ));
            }
        }
        let t = self.header_timeout.0;
        if t < Duration::from_millis(100) || t > Duration::from_secs(3600) {
            out.push(("header_timeout", "must be 100ms to 1h".into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Settings {
        toml::from_str(&format!("{extra}\n")).unwrap()
    }

    #[test]
    fn tls_auto_means_off_loopback_only() {
        assert!(!parse("listen = \"127.0.0.1:8025\"").uses_tls());
        assert!(!parse("listen = \"[::1]:8025\"").uses_tls());
        assert!(parse("listen = \"0.0.0.0:8025\"").uses_tls());
        assert!(parse("listen = \"127.0.0.1:8025\"\ntls = \"on\"").uses_tls());
        assert!(!parse("listen = \"192.0.2.1:8025\"\ntls = \"off\"").uses_tls());
    }

    #[test]
    fn problems_name_their_key() {
        let s = parse(
            "listen = \"0.0.0.0:8025\"\nmax_connections = 0\nheader_timeout = \"0s\"\nallowed_hosts = [\"ok.example\", \"*.example\", \"a.example:80\"]",
        );
        let keys: Vec<&str> = s.problems(false).iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "tls",
                "max_connections",
                "allowed_hosts",
                "allowed_hosts",
                "header_timeout"
            ]
        );
        let s = parse("listen = \"127.0.0.1:1\"\nmax_connections_per_client = 0");
        assert_eq!(s.problems(false)[0].0, "max_connections_per_client");
        let s = parse("listen = \"127.0.0.1:1\"\nmax_connections = 2");
        assert!(s.problems(false).is_empty());
        let ok = parse("listen = \"127.0.0.1:8025\"");
        assert!(ok.problems(false).is_empty());
        assert_eq!(
            ok.token_path(Path::new("data")),
            Path::new("data/admin.token")
        );
        assert_eq!(ok.max_connections, 32);
        assert_eq!(ok.max_connections_per_client, 4);
        assert_eq!(ok.header_timeout.0, Duration::from_secs(10));
    }
}
