//! `[doctor]` in the config: what `poolrelay doctor` checks besides what the config implies, and
//! how `serve` runs the same checks in the background.

use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Run the checks at `serve` start and every `check_interval` (shown in `GET /api/doctor`).
    #[serde(default = "yes")]
    pub background: bool,
    #[serde(default = "default_interval")]
    pub check_interval: DurationStr,
    /// Keep an IP failing FCrDNS or SPF out of rotation (a drain with reason `doctor`) until it
    /// passes again.
    #[serde(default)]
    pub enforce: bool,
    /// Sending domains checked besides the `[[dkim]]` domains and pool-rule sender domains.
    #[serde(default)]
    pub domains: Vec<String>,
    /// RCPT probes of postmaster@ and abuse@ by `poolrelay doctor` (`--no-probe` skips them).
    #[serde(default = "yes")]
    pub probe: bool,
    /// The same probes from `serve`'s background checks. Off by default: RCPT probes of other
    /// domains' MX repeated every interval look like address harvesting.
    #[serde(default)]
    pub background_probe: bool,
    /// MAIL FROM of the probes; empty = the null sender `<>`, as callouts use.
    #[serde(default)]
    pub probe_sender: String,
    /// Connect and reply timeout of a probe.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: DurationStr,
}

/// What the TOML types cannot check: `[doctor] domains` are domain names (as config errors, so
/// `check-config` and `serve` agree).
pub fn check_config(
    path: &std::path::Path,
    settings: &Settings,
) -> Result<(), Vec<crate::util::settings::ConfigError>> {
    let errors: Vec<_> = settings
        .domains
        .iter()
        .filter(|d| !super::targets::valid_domain(&super::dns::norm(d)))
        .map(|d| crate::util::settings::ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("doctor.domains: {d:?} is not a domain name"),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Default for Settings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn yes() -> bool {
    true
}
fn default_interval() -> DurationStr {
    DurationStr(Duration::from_secs(3600))
}
fn default_probe_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}
