//! `[accounts]`: the limits each login and sender domain is held to (`policy.rs` applies them).
//! Without the section accounts are counted and listed, never throttled or suspended.

use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How far back the rates look (daily buckets; complaints arrive days after the mail).
    #[serde(default = "default_window")]
    pub window: DurationStr,
    /// Fewer messages than this in the window (delivered ones for the complaint rate): no
    /// verdict.
    #[serde(default = "default_min_volume")]
    pub min_volume: u64,
    /// Complaints per delivered message over this: suspended.
    #[serde(default = "default_complaint_rate")]
    pub max_complaint_rate: f64,
    /// Hard bounces (unknown recipients included: the list is the customer's) per message
    /// over this: suspended.
    #[serde(default = "default_bounce_rate")]
    pub max_bounce_rate: f64,
    /// Block replies per delivery attempt over this: suspended.
    #[serde(default = "default_block_rate")]
    pub max_block_rate: f64,
    /// Over this share of a limit: throttled (the warning level).
    #[serde(default = "default_throttle_at")]
    pub throttle_at: f64,
    /// Messages a throttled account may send per clock hour.
    #[serde(default = "default_throttle_per_hour")]
    pub throttle_per_hour: u64,
    /// Sender domains tracked at most (logins are bounded by the users file); past it the
    /// quietest domains in good standing are forgotten (1 % of it at once), a held one never;
    /// when every one is held a new domain is not tracked.
    #[serde(default = "default_max_sender_domains")]
    pub max_sender_domains: usize,
}

impl Default for Settings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Settings {
    /// The window in whole days (at least one).
    pub fn days(&self) -> u64 {
        (self.window.0.as_secs() / 86_400).max(1)
    }
}

fn default_window() -> DurationStr {
    DurationStr(Duration::from_secs(7 * 86_400))
}
fn default_min_volume() -> u64 {
    100
}
fn default_complaint_rate() -> f64 {
    0.003
}
fn default_bounce_rate() -> f64 {
    0.10
}
fn default_block_rate() -> f64 {
    0.10
}
fn default_throttle_at() -> f64 {
    0.5
}
fn default_throttle_per_hour() -> u64 {
    20
}
fn default_max_sender_domains() -> usize {
    10_000
}
