//! The TOML configuration: the contract (docs/configuration.md). Unknown keys are errors; every
//! error names the file, the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod checked;
mod entries;
pub mod ranges;
mod stages;
/// `[reputation]`, beside its code.
pub use crate::reputation::settings as reputation;

pub use crate::delivery::settings::{Delivery, MtaSts};
pub use crate::inbound::settings::{Access, Limits, Listen, ListenAuth, ListenTls, TlsFiles};
pub use crate::pool::settings::{
    Pool, PoolIp, PoolRule, Provider, Throttle, Warmup, WarmupSchedule,
};
pub use crate::routing::settings::{Dns, Route, TlsPolicy};
pub use crate::signing::settings::{DkimKey, Signing};
pub use checked::Checked;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Banner, Received, DSN Reporting-MTA.
    pub hostname: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: Vec<Listen>,
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub dkim: Vec<DkimKey>,
    #[serde(default)]
    pub signing: Signing,
    #[serde(default)]
    pub pool: Vec<Pool>,
    /// Which pool a message uses; first match wins, else the default pool.
    #[serde(default)]
    pub pool_rule: Vec<PoolRule>,
    /// Providers added to (or replacing, by name) the built-in table `config/providers.toml`.
    #[serde(default)]
    pub provider: Vec<Provider>,
    #[serde(default)]
    pub warmup: Warmup,
    #[serde(default)]
    pub throttle: Throttle,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub log: Log,
    /// DNSBL monitoring, reply classification rules, outcome rates (`reputation/settings.rs`).
    #[serde(default)]
    pub reputation: reputation::Settings,
    /// Limits per login and sender domain (`reputation::accounts::Settings`); absent = counted
    /// and listed, never throttled or suspended.
    pub accounts: Option<crate::reputation::accounts::Settings>,
    /// Receiver-side checks of IPs and domains (see `doctor::Settings`).
    #[serde(default)]
    pub doctor: crate::doctor::Settings,
    /// On SIGTERM: how long transactions in progress (and deliveries in flight) may take to
    /// finish before sessions get `421 4.3.2` and the relay exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: DurationStr,
    /// Several relays sharing counters and state through Redis (`cluster::Settings`); absent =
    /// this relay alone, everything in the local state store.
    pub cluster: Option<crate::cluster::Settings>,
    /// Provider feeds, SNDS and Postmaster Tools (`reputation::feeds::Settings`); absent = none.
    pub feeds: Option<crate::reputation::feeds::Settings>,
    /// TLS reporting (RFC 8460) to destination domains (`tls_reports::Settings`).
    #[serde(default)]
    pub tls_reports: crate::tls_reports::Settings,
    /// Complaint reports in, trace headers out (`feedback::Settings`); absent = neither.
    pub feedback: Option<crate::feedback::Settings>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_shutdown_grace() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}

/// `[admin]`, beside its code.
pub use crate::admin::Settings as Admin;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub use crate::util::settings::{ConfigError, DurationStr, Size};

/// A config file's text, or the error saying it cannot be read.
pub(crate) fn read_text(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read: {e}"),
        }]
    })
}

impl Config {
    /// Reads, parses and checks a config file. Relative paths inside it are taken relative to the
    /// current directory, as Postfix does, so the README's commands run from the checkout.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        Self::parse(path, &read_text(path)?)
    }

    /// What the pool stage reads (its sections, `probe_per_hour` and the fallback EHLO name).
    pub fn pool_settings(&self) -> crate::pool::Settings {
        crate::pool::Settings {
            pool: self.pool.clone(),
            pool_rule: self.pool_rule.clone(),
            provider: self.provider.clone(),
            warmup: self.warmup.clone(),
            throttle: self.throttle.clone(),
            probe_per_hour: self.reputation.probe_per_hour,
            fallback_helo: self
                .delivery
                .helo
                .clone()
                .unwrap_or_else(|| self.hostname.clone()),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().trim();
            // A bad value: name the key its line sets (the message only describes the value).
            let key = line
                .and_then(|n| text.lines().nth(n - 1))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.starts_with('[') && !message.contains(*k));
            vec![ConfigError {
                file: path.to_owned(),
                line,
                message: match key {
                    Some(k) => format!("{k}: {message}"),
                    None => message.to_string(),
                },
            }]
        })?;
        config.cluster = config
            .cluster
            .take()
            .map(|c| c.with_defaults(&config.hostname));
        let mut errors = config.validate(path, text);
        errors.extend(entries::check(&config, path, text));
        errors.extend(ranges::check(&config, path, text));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Checks that need more than one key (entries of arrays of tables: `entries`); each error
    /// points at the first line naming the key.
    fn validate(&self, path: &Path, text: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        // (section, key): the line setting the key in its own table.
        let mut err = |(section, key): (&str, &str), message: String| {
            errors.push(ConfigError {
                file: path.to_owned(),
                line: ranges::key_line(text, section, key),
                message: format!("{key}: {message}"),
            })
        };
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            err(("", "hostname"), "must be a host name".into());
        }
        if self.listen.is_empty() {
            err(("", "listen"), "at least one [[listen]] is needed".into());
        }
        if let Some(tls) = &self.tls {
            for (key, p) in [
                ("certificate", &tls.certificate),
                ("private_key", &tls.private_key),
            ] {
                if !p.is_file() {
                    err(("tls", key), format!("file {} not found", p.display()));
                }
            }
        }
        if let Some(users) = &self.access.users_file
            && !users.is_file()
        {
            err(
                ("access", "users_file"),
                format!("file {} not found", users.display()),
            );
        }
        if let Some(admin) = &self.admin {
            for (key, message) in admin.problems(self.tls.is_some()) {
                err(("admin", key), message);
            }
        }
        if self.signing.require
            && self.signing.missing_from == crate::signing::author::MissingFrom::AcceptUnsigned
        {
            err(
                ("signing", "missing_from"),
                "\"accept-unsigned\" contradicts require = true (every message must be signed)"
                    .into(),
            );
        }
        if self.delivery.retry.is_empty() {
            err(("delivery", "retry"), "needs at least one interval".into());
        }
        if let Some(ca) = &self.delivery.ca_file
            && !ca.is_file()
        {
            err(
                ("delivery", "ca_file"),
                format!("file {} not found", ca.display()),
            );
        }
        if self.warmup.day.0 < Duration::from_millis(24) {
            err(
                ("warmup", "day"),
                "warm-up day must be at least 24ms".into(),
            );
        }
        let l = &self.limits;
        if l.reserved_sessions.is_some() && l.reserved() >= l.max_sessions.max(1) {
            err(
                ("limits", "reserved_sessions"),
                format!("must be less than max_sessions ({})", l.max_sessions),
            );
        }
        if l.header_size.0 < 1024 {
            err(("limits", "header_size"), "must be at least 1KB".into());
        }
        if l.stress_command_timeout.0 < Duration::from_secs(1) {
            err(
                ("limits", "stress_command_timeout"),
                "must be at least 1s".into(),
            );
        }
        if let Some(cluster) = &self.cluster {
            for (key, message) in cluster.problems() {
                err(("cluster", key), message);
            }
        }
        if let Some(feeds) = &self.feeds {
            for (section, key, message) in feeds.problems() {
                err((section, key), message);
            }
        }
        for (key, message) in self.tls_reports.problems() {
            // A required key that is missing: the line of its `[tls_reports]` table.
            let line = ranges::key_line(text, "tls_reports", key)
                .or_else(|| find_key_line(text, "tls_reports"));
            errors.push(ConfigError {
                file: path.to_owned(),
                line,
                message: format!("tls_reports.{key}: {message}"),
            });
        }
        errors
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first line that sets `key` (`key =`) or opens a `[key]`/`[[key]]` table.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let bare = l.trim_start_matches('[').trim_end().trim_end_matches(']');
            bare == key
                || bare.ends_with(&format!(".{key}"))
                || l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(Path::new("t.toml"), s)
    }

    const MIN: &str = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.limits.message_size.0, 50_000_000);
        assert_eq!(c.delivery.retry.len(), 7);
        assert_eq!(c.delivery.max_age.0, Duration::from_secs(5 * 86400));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(&format!("{MIN}[limits]\nmesage_size = 5\n")).unwrap_err();
        let s = e[0].to_string();
        assert!(s.starts_with("t.toml:7:"), "{s}");
        assert!(s.contains("mesage_size"), "{s}");
    }

    #[test]
    fn bad_values_are_errors_with_lines() {
        let e = parse(&format!("{MIN}[access]\nnetworks = [\"10.0.0.0/33\"]\n")).unwrap_err();
        assert!(e[0].to_string().starts_with("t.toml:7:"), "{}", e[0]);
        let e = parse(&format!("{MIN}[delivery]\nmax_age = \"5 parsecs\"\n")).unwrap_err();
        assert!(e[0].to_string().contains("bad duration"), "{}", e[0]);
        let e = parse(&format!("{MIN}[limits]\nmessage_size = \"5XB\"\n")).unwrap_err();
        assert!(e[0].to_string().contains("bad size"), "{}", e[0]);
    }

    #[test]
    fn cross_key_errors_point_at_the_key() {
        let e = parse("hostname = \"r.test\"\n\n[[listen]]\naddress = \"127.0.0.1:1\"\ntls = \"implicit\"\nauth = \"none\"\n").unwrap_err();
        assert_eq!(e[0].line, Some(5), "{}", e[0]);
        assert!(e[0].message.contains("implicit TLS"), "{}", e[0]);
    }

    #[test]
    fn client_limits_have_defaults_and_checked_values() {
        let c = parse(MIN).unwrap();
        let l = &c.limits;
        assert_eq!(l.header_size.0, 102_400);
        assert_eq!((l.client_sessions, l.reserved()), (50, 200));
        assert_eq!(l.stress_command_timeout.0, Duration::from_secs(10));
        for (toml, line, what) in [
            (
                "max_sessions = 10\nreserved_sessions = 10\n",
                8,
                "reserved_sessions",
            ),
            ("header_size = 100\n", 7, "header_size"),
            (
                "stress_command_timeout = \"0s\"\n",
                7,
                "stress_command_timeout",
            ),
        ] {
            let e = parse(&format!("{MIN}[limits]\n{toml}")).unwrap_err();
            assert_eq!(e[0].line, Some(line), "{}", e[0]);
            assert!(e[0].message.starts_with(what), "{}", e[0]);
        }
        let e = parse(&format!("{MIN}[limits]\nclient_sessions = -1\n")).unwrap_err();
        assert_eq!(e[0].line, Some(7), "{}", e[0]);
    }

    #[test]
    fn cluster_section_errors_name_file_and_line() {
        let c = parse(&format!(
            "{MIN}[cluster]\nredis = \"redis://127.0.0.1:6379\"\n"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node, "relay.test", "node defaults to the hostname");
        let e = parse(&format!(
            "{MIN}[cluster]\nredis = \"redis://:hunter2@127.0.0.1:notaport\"\n"
        ))
        .unwrap_err();
        let s = e[0].to_string();
        assert!(s.starts_with("t.toml:7:"), "{s}");
        assert!(s.contains("bad Redis URL") && !s.contains("hunter2"), "{s}");
        let e = parse(&format!(
            "{MIN}[cluster]\nredis = \"redis://h:1\"\nredis_timeout = \"0s\"\n"
        ))
        .unwrap_err();
        assert_eq!(e[0].line, Some(8), "{}", e[0]);
        assert!(parse(MIN).unwrap().cluster.is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("50MB"), Some(50_000_000));
        assert_eq!(Size::parse("1KiB"), Some(1024));
        assert_eq!(Size::parse("10"), Some(10));
        assert_eq!(Size::parse("x"), None);
    }
}
