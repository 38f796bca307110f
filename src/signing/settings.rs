//! `[[dkim]]` keys and the `[signing]` policy.

use std::path::PathBuf;

use serde::Deserialize;

use super::author::MissingFrom;
use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    pub private_key: PathBuf,
    /// Also sign for subdomains of `domain`.
    #[serde(default)]
    pub subdomains: bool,
    /// Signature lifetime (`x=`); unset = no expiry.
    pub expire: Option<DurationStr>,
}

/// `[[dkim]]` is an array of keys, so the signing policy lives in its own table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// Refuse (5xx at DATA) a message whose From domain has no key.
    #[serde(default)]
    pub require: bool,
    /// A message without `From:`: refused (default) or accepted unsigned (`signing::author`).
    #[serde(default)]
    pub missing_from: MissingFrom,
}
