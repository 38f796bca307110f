//! `[delivery.dane]`: whether DANE applies, whose keys anchor DNSSEC, and the start-up check.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Look up TLSA records for every MX host and enforce them (off by default: it needs a
    /// resolver that passes DNSSEC records through).
    #[serde(default)]
    pub enabled: bool,
    /// DNSKEY records (zone-file lines with TTL and class) that anchor validation; default: the
    /// built-in root keys. Tests and private roots point it at their own zone's key.
    #[serde(default)]
    pub trust_anchor: Option<PathBuf>,
    /// The configured resolver validates and the path to it is trusted (localhost): believe its
    /// AD bit instead of validating here.
    #[serde(default)]
    pub trusted_resolver: bool,
    /// A name that must validate as secure; checked once at start.
    #[serde(default = "default_check_secure")]
    pub check_secure: String,
    /// A name that must validate as bogus; checked once at start. "" skips both checks.
    #[serde(default = "default_check_bogus")]
    pub check_bogus: String,
}

fn default_check_secure() -> String {
    "ietf.org".into()
}

/// Kept broken on purpose by its operator to test validating resolvers.
fn default_check_bogus() -> String {
    "dnssec-failed.org".into()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: false,
            trust_anchor: None,
            trusted_resolver: false,
            check_secure: default_check_secure(),
            check_bogus: default_check_bogus(),
        }
    }
}
