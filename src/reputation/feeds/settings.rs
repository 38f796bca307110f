//! `[feeds]`, `[feeds.snds]`, `[feeds.postmaster]`: where the providers' feeds are fetched,
//! how often, and the thresholds their verdicts are judged by.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::{DurationStr, Size};

/// `[feeds]` in the config; absent = no feed is polled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Time between polls (the providers publish daily).
    #[serde(default = "default_interval")]
    pub interval: DurationStr,
    /// The first poll comes this long after start.
    #[serde(default = "default_first_poll")]
    pub first_poll: DurationStr,
    /// Whole-request limit for every HTTPS request (connect, TLS, body).
    #[serde(default = "default_timeout")]
    pub timeout: DurationStr,
    /// Largest response body read; a larger one is an error.
    #[serde(default = "default_max_size")]
    pub max_size: Size,
    /// Trust only the CA certificates in this PEM file (a private CA, tests); default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    pub snds: Option<Snds>,
    pub postmaster: Option<Postmaster>,
}

/// Microsoft SNDS automated data access.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snds {
    /// The automated-access key (a secret: never logged; `{key}` in the URLs).
    pub key: String,
    #[serde(default = "default_snds_data_url")]
    pub data_url: String,
    #[serde(default = "default_snds_status_url")]
    pub status_url: String,
    /// Trap hits in one row above this quarantine the IP (0: any trap hit).
    #[serde(default)]
    pub trap_hits_max: u64,
    /// The provider whose scope its verdicts hold (a name of the provider table).
    #[serde(default = "default_microsoft")]
    pub provider: String,
}

/// Google Postmaster Tools API (v2 for the spam rate, v1 traffic stats for IP reputation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postmaster {
    /// Service-account key (JSON with client_email, private_key, token_uri); a secret.
    pub key_file: PathBuf,
    /// Verified domains to poll.
    pub domains: Vec<String>,
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default = "default_gmail")]
    pub provider: String,
    /// Spam rate (a fraction: 0.001 = 0.1 %) at or above which a domain is "warning".
    #[serde(default = "default_spam_warning")]
    pub spam_rate_warning: f64,
    /// Spam rate at or above which a domain is "over" (Google acts at 0.3 %).
    #[serde(default = "default_spam_over")]
    pub spam_rate_over: f64,
    /// Read IP reputation from the v1 traffic stats (`ipReputations`).
    #[serde(default = "yes")]
    pub ip_reputation: bool,
}

/// Without the key (a secret).
impl std::fmt::Debug for Snds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snds")
            .field("key", &"…")
            .field("data_url", &self.data_url)
            .field("status_url", &self.status_url)
            .field("trap_hits_max", &self.trap_hits_max)
            .field("provider", &self.provider)
            .finish()
    }
}

fn default_interval() -> DurationStr {
    DurationStr(Duration::from_secs(24 * 3600))
}
fn default_first_poll() -> DurationStr {
    DurationStr(Duration::from_secs(60))
}
fn default_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(60))
}
fn default_max_size() -> Size {
    Size(10 * 1024 * 1024)
}
fn default_snds_data_url() -> String {
    "https://sendersupport.olc.protection.outlook.com/snds/data.aspx?key={key}".into()
}
fn default_snds_status_url() -> String {
    "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx?key={key}".into()
}
fn default_microsoft() -> String {
    "microsoft".into()
}
fn default_gmail() -> String {
    "gmail".into()
}
fn default_api_base() -> String {
    "https://gmailpostmastertools.googleapis.com".into()
}
fn default_spam_warning() -> f64 {
    0.001
}
fn default_spam_over() -> f64 {
    0.003
}
fn yes() -> bool {
    true
}

fn https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

impl Settings {
    /// Errors as (section, key, message), for `Config::validate`.
    pub fn problems(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if self.interval.0 < Duration::from_secs(1) {
            out.push(("feeds", "interval", "must be at least 1s".into()));
        }
        if self.timeout.0 < Duration::from_millis(100) || self.timeout.0 > Duration::from_secs(600)
        {
            out.push(("feeds", "timeout", "must be 100ms to 10m".into()));
        }
        if self.max_size.0 < 1024 {
            out.push(("feeds", "max_size", "must be at least 1KB".into()));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            out.push((
                "feeds",
                "ca_file",
                format!("file {} not found", ca.display()),
            ));
        }
        if let Some(s) = &self.snds {
            if s.key.trim().is_empty() {
                out.push(("feeds.snds", "key", "must not be empty".into()));
            }
            for (key, url) in [("data_url", &s.data_url), ("status_url", &s.status_url)] {
                if !https(url) {
                    out.push(("feeds.snds", key, "must be an https:// URL".into()));
                }
            }
        }
        if let Some(p) = &self.postmaster {
            if !p.key_file.is_file() {
                let m = format!("file {} not found", p.key_file.display());
                out.push(("feeds.postmaster", "key_file", m));
            }
            if p.domains.is_empty() || p.domains.iter().any(|d| !domain_ok(d)) {
                let m = "must list the verified domains (names like example.com)".into();
                out.push(("feeds.postmaster", "domains", m));
            }
            if !https(&p.api_base) {
                out.push((
                    "feeds.postmaster",
                    "api_base",
                    "must be an https:// URL".into(),
                ));
            }
            let rate_ok = |r: f64| r > 0.0 && r < 1.0;
            if !rate_ok(p.spam_rate_warning) {
                let m = "must be a fraction between 0 and 1 (0.001 = 0.1 %)".into();
                out.push(("feeds.postmaster", "spam_rate_warning", m));
            }
            if !rate_ok(p.spam_rate_over) || p.spam_rate_over < p.spam_rate_warning {
                let m = "must be a fraction between 0 and 1, at least spam_rate_warning".into();
                out.push(("feeds.postmaster", "spam_rate_over", m));
            }
        }
        out
    }
}

/// A domain name as the API's resource name takes it (no path or query characters).
fn domain_ok(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let s: Settings =
            toml::from_str("[snds]\nkey = \"k\"\n[postmaster]\nkey_file = \"/nonexistent\"\ndomains = [\"a/b\"]\nspam_rate_over = 0.0001")
                .unwrap();
        assert_eq!(s.interval.0, Duration::from_secs(86400));
        assert_eq!(s.snds.as_ref().unwrap().provider, "microsoft");
        let keys: Vec<&str> = s.problems().iter().map(|p| p.1).collect();
        assert_eq!(keys, ["key_file", "domains", "spam_rate_over"]);
        let bad: Settings = toml::from_str("[snds]\nkey = \"\"\ndata_url = \"http://x\"").unwrap();
        let keys: Vec<&str> = bad.problems().iter().map(|p| p.1).collect();
        assert_eq!(keys, ["key", "data_url"]);
    }
}
