//! The pool stage's sections: `[[pool]]` with its IPs, `[[pool_rule]]`, `[[provider]]`
//! throttles, `[warmup]` schedules and `[throttle]`.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    #[serde(default)]
    pub ip: Vec<PoolIp>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolIp {
    pub address: IpAddr,
    /// EHLO name for this IP; should equal its reverse DNS.
    pub helo: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub warmup: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// `[[pool_rule]]`: every condition given must match (globs: `*` and `?`, case-insensitive).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRule {
    pub pool: String,
    /// Authenticated user name.
    pub user: Option<String>,
    /// Envelope sender domain (`example.com`, `*.example.com`).
    pub sender_domain: Option<String>,
    /// Envelope sender address pattern (`news-*@example.com`).
    pub sender: Option<String>,
}

/// `[[provider]]`: MX host suffixes grouped under one name, with its throttles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    #[serde(default)]
    pub mx_suffixes: Vec<String>,
    /// Concurrent connections per source IP; 0 = no limit.
    #[serde(default)]
    pub max_connections: u32,
    /// Messages per source IP per hour (a warm-up day / 24); 0 = no limit.
    #[serde(default)]
    pub max_per_hour: u64,
    /// Messages per hour to this provider from the whole farm (every IP of every relay sharing
    /// `[cluster]`; this relay's IPs alone without it); 0 = no limit.
    #[serde(default)]
    pub farm_max_per_hour: u64,
    /// Messages per connection before it is closed; 0 = no limit.
    #[serde(default)]
    pub max_per_connection: u32,
    /// Pause for an IP after a "slow down" reply from this provider; default `throttle.backoff`.
    pub backoff: Option<DurationStr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Length of a warm-up day; hourly windows are a 24th of it.
    #[serde(default = "default_warmup_day")]
    pub day: DurationStr,
    /// An IP × provider idle this many days starts warming again from day 0.
    #[serde(default = "default_idle_days")]
    pub idle_days: u64,
    /// Hourly cap = ceil(daily / 24) × burst.
    #[serde(default = "default_burst")]
    pub burst: u64,
    #[serde(default)]
    pub schedule: Vec<WarmupSchedule>,
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup {
            day: default_warmup_day(),
            idle_days: default_idle_days(),
            burst: default_burst(),
            schedule: Vec::new(),
        }
    }
}

fn default_warmup_day() -> DurationStr {
    DurationStr(Duration::from_secs(86400))
}
fn default_idle_days() -> u64 {
    30
}
fn default_burst() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSchedule {
    pub name: String,
    /// Daily cap per IP × provider for day 0, 1, 2, …; after the last day the IP is active.
    pub daily: Vec<u64>,
    /// Adaptive ramp (issue 24): the receivers' answers move the ramp (`pool::ramp`); the table
    /// is the plan for a receiver that says nothing.
    #[serde(default)]
    pub adaptive: bool,
    /// A sending day counts only if it used at least this share of its cap (0 < x ≤ 1).
    #[serde(default = "default_advance_at")]
    pub advance_at: f64,
    /// Throttled share of the day's replies above which the day is held (not advanced).
    #[serde(default = "default_hold_above")]
    pub hold_above: f64,
    /// Throttled share above which the ramp steps back (≥ `hold_above`).
    #[serde(default = "default_step_back_above")]
    pub step_back_above: f64,
    /// Days of the table a step back goes back.
    #[serde(default = "default_step_back_days")]
    pub step_back_days: u32,
    /// After a clean full day the next cap may be up to this × what the receiver accepted.
    #[serde(default = "default_max_growth")]
    pub max_growth: f64,
    /// The table day an IP × provider idle `warmup.idle_days` starts again at.
    #[serde(default)]
    pub rewarm_day: u32,
}

fn default_advance_at() -> f64 {
    0.8
}
fn default_hold_above() -> f64 {
    0.05
}
fn default_step_back_above() -> f64 {
    0.2
}
fn default_step_back_days() -> u32 {
    2
}
fn default_max_growth() -> f64 {
    2.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// Default pause after a "slow down" reply (421, 4.7.x rate limits).
    #[serde(default = "default_backoff")]
    pub backoff: DurationStr,
    /// How often "pool has no usable IP" is logged while mail is held.
    #[serde(default = "default_hold_warning")]
    pub hold_warning_interval: DurationStr,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            backoff: default_backoff(),
            hold_warning_interval: default_hold_warning(),
        }
    }
}

fn default_backoff() -> DurationStr {
    DurationStr(Duration::from_secs(600))
}
fn default_hold_warning() -> DurationStr {
    DurationStr(Duration::from_secs(300))
}

/// What the pool stage reads from the config (built by the caller from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub pool: Vec<Pool>,
    pub pool_rule: Vec<PoolRule>,
    pub provider: Vec<Provider>,
    pub warmup: Warmup,
    pub throttle: Throttle,
    /// `[reputation] probe_per_hour`: the hourly trickle of an IP on probation.
    pub probe_per_hour: u64,
    /// EHLO name when no pool is configured: `[delivery] helo`, else `hostname`.
    pub fallback_helo: String,
}
