//! `[cluster]`: the Redis that several relays share (issue 19). Absent = one relay alone, with
//! every counter in the local state store as before.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `redis://[user][:password@]host:port/db` or `rediss://…` (TLS).
    pub redis: RedisUrl,
    /// This relay's name in the farm; empty = the relay's `hostname` (filled in by the config).
    #[serde(default)]
    pub node: String,
    /// Every key this relay writes starts with `<prefix>:` (farms sharing one Redis differ here).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How often shared state (holds, suppressions) is read again in full.
    #[serde(default = "default_resync_interval")]
    pub resync_interval: DurationStr,
    /// The longest one Redis round trip may take before the relay uses its local share.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: DurationStr,
    /// With `rediss://`: the CA (PEM) that signed Redis's certificate, instead of the system
    /// trust roots.
    pub ca_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "poolrelay".into()
}

fn default_resync_interval() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

fn default_redis_timeout() -> DurationStr {
    DurationStr(Duration::from_millis(500))
}

impl Settings {
    /// Fills the defaults that depend on other sections.
    pub fn with_defaults(mut self, hostname: &str) -> Settings {
        if self.node.trim().is_empty() {
            self.node = hostname.to_string();
        }
        self
    }

    /// Problems as (key, message), for the config's file-and-line errors.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '?' && c != '[')
        };
        if !self.node.is_empty() && !name_ok(&self.node) {
            out.push((
                "node",
                "must be printable ASCII without spaces or *?[ (at most 200)".into(),
            ));
        }
        if !name_ok(&self.prefix) {
            out.push((
                "prefix",
                "must be printable ASCII without spaces or *?[ (at most 200)".into(),
            ));
        }
        let t = self.redis_timeout.0;
        if t < Duration::from_millis(10) || t > Duration::from_secs(60) {
            out.push(("redis_timeout", "must be 10ms to 60s".into()));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                out.push(("ca_file", format!("file {} not found", ca.display())));
            } else if !self.redis.is_tls() {
                out.push(("ca_file", "needs a rediss:// (TLS) URL".into()));
            }
        }
        let r = self.resync_interval.0;
        if r < Duration::from_secs(1) || r > Duration::from_secs(3600) {
            out.push(("resync_interval", "must be 1s to 1h".into()));
        }
        out
    }
}

/// A checked Redis URL; shown with its password replaced by `***` (it goes to logs).
#[derive(Clone)]
pub struct RedisUrl {
    url: String,
}

impl RedisUrl {
    pub fn parse(s: &str) -> Result<RedisUrl, BadRedisUrl> {
        let s = s.trim();
        let scheme = s.split("://").next().unwrap_or("");
        if !s.contains("://") || !matches!(scheme, "redis" | "rediss") {
            return Err(BadRedisUrl::Scheme(redact(s)));
        }
        redis::Client::open(s).map_err(|e| BadRedisUrl::Client {
            url: redact(s),
            detail: e.detail().unwrap_or("").to_string(),
        })?;
        Ok(RedisUrl { url: s.to_string() })
    }

    /// The URL with its password (for the client only, never for a log).
    pub fn secret(&self) -> &str {
        &self.url
    }

    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

/// Why a `redis` URL is refused; the URL is shown redacted (`redact`).
#[derive(Debug, thiserror::Error)]
pub enum BadRedisUrl {
    #[error("bad Redis URL {0}: must start with redis:// or rediss:// (TLS)")]
    Scheme(String),
    /// `detail`: what the Redis client says is wrong.
    #[error("bad Redis URL {url}: {detail}")]
    Client { url: String, detail: String },
}

/// `scheme://user:***@host…`: the password (whatever sits between the first `:` and the last
/// `@` of the authority) hidden.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    // The user part ends at the last `@` anywhere: a password may hold `/` (unescaped), and
    // hosts and paths hold no `@`.
    match rest.rsplit_once('@') {
        Some((userinfo, host_path)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".into()
            };
            format!("{scheme}://{hidden}@{host_path}")
        }
        None => url.to_string(),
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RedisUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let u = RedisUrl::parse("redis://:s3cret@127.0.0.1:6379/2").unwrap();
        assert_eq!(u.to_string(), "redis://:***@127.0.0.1:6379/2");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = RedisUrl::parse("rediss://app:pw@redis.example:6380").unwrap();
        assert!(u.is_tls());
        assert_eq!(u.to_string(), "rediss://app:***@redis.example:6380");
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1").unwrap().to_string(),
            "redis://127.0.0.1"
        );
        for bad in [
            "127.0.0.1:6379",
            "http://x",
            "redis://:pw@host:notaport",
            "redis://:p/w@host:6379/0",
        ] {
            let e = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("bad Redis URL"), "{bad}: {e}");
            assert!(!e.contains("pw@") && !e.contains("p/w"), "{e}");
        }
        // A `/` in the password does not end the user part.
        assert_eq!(redact("redis://:s3/cr@et@h:1/0"), "redis://:***@h:1/0");
    }

    #[test]
    fn settings_defaults_and_problems() {
        let s: Settings = toml::from_str("redis = \"redis://127.0.0.1:1\"").unwrap();
        let s = s.with_defaults("relay1.test");
        assert_eq!(s.node, "relay1.test");
        assert_eq!(s.prefix, "poolrelay");
        assert_eq!(s.redis_timeout.0, Duration::from_millis(500));
        assert!(s.problems().is_empty());
        let s: Settings = toml::from_str(
            "redis = \"redis://h:1\"\nnode = \"a b\"\nprefix = \"p*\"\nredis_timeout = \"1ms\"",
        )
        .unwrap();
        let keys: Vec<&str> = s.problems().iter().map(|p| p.0).collect();
        assert_eq!(keys, ["node", "prefix", "redis_timeout"]);
        let s: Settings =
            toml::from_str("redis = \"redis://h:1\"\nca_file = \"/nonexistent/ca.pem\"").unwrap();
        assert!(
            s.problems()[0].1.contains("not found"),
            "{:?}",
            s.problems()
        );
        let s: Settings =
            toml::from_str("redis = \"redis://h:1\"\nca_file = \"Cargo.toml\"").unwrap();
        assert_eq!(s.problems()[0].1, "needs a rediss:// (TLS) URL");
    }
}
