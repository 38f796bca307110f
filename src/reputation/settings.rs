//! `[reputation]`: DNSBL zones, reply classification rules, outcome windows and quarantine
//! thresholds. Read by the reputation stage (`reputation::rates::Tracker`, the DNSBL monitor);
//! `config::reputation` re-exports it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::outcome::classify::{Classifier, RuleError, RuleSpec};
use crate::util::settings::DurationStr;

/// `[reputation]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Extra rules file (format of `config/bounce-rules.toml`), read before the built-in rules.
    pub rules_file: Option<PathBuf>,
    /// Extra rules, read before `rules_file`.
    #[serde(default)]
    pub rule: Vec<RuleSpec>,
    /// DNSBL zones checked for every pool IP: `"zen.spamhaus.org"` or a table (see `Dnsbl`).
    #[serde(default)]
    pub dnsbl: Vec<DnsblSpec>,
    #[serde(default = "default_check_interval")]
    pub check_interval: DurationStr,
    /// Consecutive clean checks after a listing before the IP is reinstated.
    #[serde(default = "default_clean_checks")]
    pub clean_checks: u32,
    /// Spamhaus Data Query Service key: Spamhaus zones are asked as KEY.zen.dq.spamhaus.net.
    pub spamhaus_dqs_key: Option<String>,
    /// Block/reputation replies from one IP × provider that quarantine it (1 = at once).
    #[serde(default = "one")]
    pub block_threshold: u32,
    /// Outcomes kept per IP × provider for the rates.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Fewer outcomes than this in the window: no rate verdict.
    #[serde(default = "default_min_samples")]
    pub min_samples: usize,
    /// Hard bounces (not counting bad-recipient) over this share of the window quarantine.
    #[serde(default = "default_bounce_rate")]
    pub max_bounce_rate: f64,
    /// Deferrals over this share of the window quarantine.
    #[serde(default = "default_deferral_rate")]
    pub max_deferral_rate: f64,
    /// Bad-recipient share per sender above which a list-hygiene warning is logged.
    #[serde(default = "default_bad_recipient_rate")]
    pub bad_recipient_warning: f64,
    /// First quarantine length for a reply or rate; doubled for each repeat, up to `max_cooldown`.
    #[serde(default = "default_cooldown")]
    pub cooldown: DurationStr,
    #[serde(default = "default_max_cooldown")]
    pub max_cooldown: DurationStr,
    /// After a quarantine ends, the rates are judged after this many outcomes (not
    /// `min_samples`): a probe that fails extends the quarantine quickly.
    #[serde(default = "default_probe_samples")]
    pub probe_samples: usize,
    /// While on probation the IP × provider takes at most this many new messages per hour (an
    /// hour is a 24th of `[warmup] day`); the pool's other IPs take the rest.
    #[serde(default = "default_probe_per_hour")]
    pub probe_per_hour: u64,
    /// Throttling replies halve an IP × provider's hourly pace; after this many cuts in a
    /// warm-up day, throttling that goes on quarantines it (cause `throttling`).
    #[serde(default = "default_throttle_cuts")]
    pub throttle_cuts: u32,
    /// How long a bad-recipient hard bounce suppresses the address ("0s": never).
    #[serde(default = "default_suppress_for")]
    pub suppress_for: DurationStr,
    /// Complaints over this share of what an IP delivered to a provider within
    /// `complaint_window` quarantine the IP × provider (cause `complaints`).
    #[serde(default = "default_max_complaint_rate")]
    pub max_complaint_rate: f64,
    /// Complaints over this share log a warning and record a history event, once per crossing.
    #[serde(default = "default_warn_complaint_rate")]
    pub warn_complaint_rate: f64,
    /// The time window of the complaint rate (complaints arrive hours or days after delivery).
    #[serde(default = "default_complaint_window")]
    pub complaint_window: DurationStr,
    /// Fewer messages delivered by the IP to the provider within the window: no rate verdict.
    #[serde(default = "default_complaint_min_delivered")]
    pub complaint_min_delivered: u64,
}

impl Default for Settings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Settings {
    pub fn classifier(&self) -> Result<Classifier, RuleError> {
        Classifier::from_sources(&self.rule, self.rules_file.as_deref())
    }
}

/// What only building the rules can check (regexes, the rules file), as config errors.
pub fn check_config(
    path: &std::path::Path,
    settings: &Settings,
) -> Result<(), Vec<crate::util::settings::ConfigError>> {
    let checked = settings
        .classifier()
        .map(|_| ())
        .map_err(|e| e.to_string())
        .and_then(|_| {
            super::dnsbl::List::from_settings(settings)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    checked.map_err(|e| {
        vec![crate::util::settings::ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("reputation: {e}"),
        }]
    })
}

fn default_check_interval() -> DurationStr {
    DurationStr(Duration::from_secs(15 * 60))
}
fn default_clean_checks() -> u32 {
    3
}
fn one() -> u32 {
    1
}
fn default_throttle_cuts() -> u32 {
    4
}
fn default_window() -> usize {
    200
}
fn default_min_samples() -> usize {
    50
}
fn default_bounce_rate() -> f64 {
    0.05
}
fn default_deferral_rate() -> f64 {
    0.30
}
fn default_bad_recipient_rate() -> f64 {
    0.10
}
fn default_cooldown() -> DurationStr {
    DurationStr(Duration::from_secs(3600))
}
fn default_probe_samples() -> usize {
    10
}
fn default_probe_per_hour() -> u64 {
    10
}
fn default_suppress_for() -> DurationStr {
    DurationStr(Duration::from_secs(30 * 24 * 3600))
}
/// Google's bulk-sender guideline: keep the user-reported spam rate under 0.3 % (aim for 0.1 %).
fn default_max_complaint_rate() -> f64 {
    0.003
}
fn default_warn_complaint_rate() -> f64 {
    0.001
}
fn default_complaint_window() -> DurationStr {
    DurationStr(Duration::from_secs(7 * 24 * 3600))
}
fn default_complaint_min_delivered() -> u64 {
    1000
}
fn default_max_cooldown() -> DurationStr {
    DurationStr(Duration::from_secs(24 * 3600))
}

/// One DNSBL: a zone name, or `{ zone = "…", providers = ["microsoft"], listed = ["127.0.0.2-127.0.0.255"] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DnsblSpec {
    Zone(String),
    Table(Dnsbl),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dnsbl {
    pub zone: String,
    /// Providers the listing quarantines the IP for; empty = all providers.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Answers that mean "listed" (`A.B.C.D` or `A.B.C.D-E.F.G.H`); default: the list's own
    /// codes for known lists, else any 127.0.0.0/8 answer but 127.0.0.1 and 127.255.255.x.
    #[serde(default)]
    pub listed: Vec<String>,
}

impl DnsblSpec {
    pub fn dnsbl(&self) -> Dnsbl {
        match self {
            DnsblSpec::Zone(z) => Dnsbl {
                zone: z.clone(),
                providers: Vec::new(),
                listed: Vec::new(),
            },
            DnsblSpec::Table(t) => t.clone(),
        }
    }
}
