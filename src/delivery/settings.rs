//! `[delivery]`: TLS policy, retries, timeouts, concurrency, DANE and MTA-STS (routes and
//! resolvers are routing's: `routing::settings`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::outcome::Schedule;
use crate::routing::Router;
use crate::routing::settings::{Dns, Route, TlsPolicy};
use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// Port used for MX hosts (tests use another).
    #[serde(default = "default_delivery_port")]
    pub port: u16,
    #[serde(default = "default_tls_policy")]
    pub tls: TlsPolicy,
    /// Extra trust anchors (PEM) for `tls = "required"`, besides the system roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_retry")]
    pub retry: Vec<DurationStr>,
    #[serde(default = "default_max_age")]
    pub max_age: DurationStr,
    /// Send a delay DSN once a recipient has been deferred this long; unset = never.
    pub delay_warning: Option<DurationStr>,
    #[serde(default = "default_per_destination")]
    pub concurrency_per_destination: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationStr,
    #[serde(default = "default_command_timeout")]
    pub command_timeout: DurationStr,
    /// EHLO name when no `[[pool]]` is configured; default: `hostname`.
    #[serde(default)]
    pub helo: Option<String>,
    /// How long an idle outbound connection is kept for reuse; "0s" = no reuse.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationStr,
    /// Messages in delivery at once (envelope in memory), like Postfix's
    /// `qmgr_message_active_limit`; the rest of the queue waits as small index entries.
    #[serde(default = "default_active_limit")]
    pub active_limit: usize,
    /// `[delivery.dane]`: TLSA records of MX hosts, DNSSEC validated here (RFC 7672).
    #[serde(default)]
    pub dane: super::policy::dane::Settings,
    /// MTA-STS (RFC 8461) for recipient domains.
    #[serde(default)]
    pub mta_sts: MtaSts,
}

/// `[delivery.mta_sts]`: how recipient domains' MTA-STS policies are fetched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaSts {
    /// Look policies up and apply them; false = every domain as if it had none.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long one policy fetch (address lookup, TLS, HTTP) may take in all.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: DurationStr,
    /// TEST ONLY: the HTTPS port of `mta-sts.DOMAIN` (RFC 8461 says 443).
    #[serde(default = "default_https_port")]
    pub https_port: u16,
}

fn yes() -> bool {
    true
}
fn default_fetch_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}
fn default_https_port() -> u16 {
    443
}

impl Default for MtaSts {
    fn default() -> Self {
        MtaSts {
            enabled: true,
            fetch_timeout: default_fetch_timeout(),
            https_port: default_https_port(),
        }
    }
}

fn default_active_limit() -> usize {
    10_000
}

fn default_idle_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(5))
}

fn default_delivery_port() -> u16 {
    25
}
fn default_tls_policy() -> TlsPolicy {
    TlsPolicy::Opportunistic
}
fn default_retry() -> Vec<DurationStr> {
    ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
        .iter()
        .map(|s| DurationStr(humantime::parse_duration(s).expect("static duration")))
        .collect()
}
fn default_max_age() -> DurationStr {
    DurationStr(Duration::from_secs(5 * 86400))
}
fn default_per_destination() -> usize {
    20
}
fn default_concurrency() -> usize {
    200
}
fn default_connect_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}
/// RFC 5321 §4.5.3.2 (as `[limits] command_timeout` inbound).
fn default_command_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(300))
}

impl Delivery {
    /// What `outcome::apply` reads: the retry schedule and the expiry.
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule {
            retry: &self.retry,
            max_age: self.max_age.0,
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            port: default_delivery_port(),
            tls: default_tls_policy(),
            ca_file: None,
            retry: default_retry(),
            max_age: default_max_age(),
            delay_warning: None,
            concurrency_per_destination: default_per_destination(),
            concurrency: default_concurrency(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            helo: None,
            idle_timeout: default_idle_timeout(),
            active_limit: default_active_limit(),
            dane: Default::default(),
            mta_sts: MtaSts::default(),
        }
    }
}

/// What the delivery stage reads from the config (built by the caller from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// DSNs: `Reporting-MTA` and `MAILER-DAEMON@`.
    pub hostname: String,
    pub delivery: Delivery,
    pub dns: Dns,
    pub route: Vec<Route>,
}

impl Settings {
    /// The routes and resolver of these settings (MX hosts on `[delivery] port`).
    pub fn router(&self) -> Result<Router, crate::routing::ResolverError> {
        Router::new(
            &self.route,
            &self.dns,
            self.delivery.port,
            self.delivery.tls,
        )
    }
}
