//! Is each pool IP still good: DNSBL checks of every pool IP, reply classes and outcome windows
//! per IP × provider, complaint rates, and the quarantines they lead to (through the pool's
//! API).

pub mod accounts;
pub mod bounce;
pub mod cli;
pub mod complaints;
pub mod dnsbl;
pub mod feeds;
pub mod history;
pub mod rates;
pub mod suppress;

use crate::outcome::classify::Classifier;

pub use crate::config::reputation::{Dnsbl, DnsblSpec, Settings};

impl Settings {
    pub fn classifier(&self) -> Result<Classifier, String> {
        Classifier::from_sources(&self.rule, self.rules_file.as_deref()).map_err(|e| e.to_string())
    }
}

/// What only building the rules can check (regexes, the rules file), as config errors.
pub fn check_config(
    path: &std::path::Path,
    config: &crate::config::Config,
) -> Result<(), Vec<crate::util::settings::ConfigError>> {
    let checked = config
        .reputation
        .classifier()
        .map(|_| ())
        .and_then(|_| dnsbl::List::from_settings(&config.reputation).map(|_| ()));
    checked.map_err(|e| {
        vec![crate::util::settings::ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("reputation: {e}"),
        }]
    })
}
