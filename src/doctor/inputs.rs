//! What the doctor reads from the config, built by the caller (`Config::doctor_inputs`): the
//! doctor never sees `Config`, only these facts.

use std::net::IpAddr;
use std::path::PathBuf;

use super::Settings;

#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `hostname`: the relay's own name (SPF of HELO names, probes without a pool).
    pub hostname: String,
    /// `[delivery] helo`: the EHLO name of a probe without a pool (else `hostname`).
    pub helo: Option<String>,
    /// `[doctor]`.
    pub settings: Settings,
    /// `[[pool]]`, in config order.
    pub pools: Vec<Pool>,
    /// `[[pool_rule]]`, in config order.
    pub rules: Vec<PoolRule>,
    /// `[[dkim]]`, in config order.
    pub dkim: Vec<DkimKey>,
    /// `[feeds]`, and `data_dir` where the relay writes the feeds' status.
    pub feeds: Option<crate::reputation::feeds::Settings>,
    pub data_dir: PathBuf,
}

/// One `[[pool]]`: its name and its IPs with their EHLO names.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub ips: Vec<(IpAddr, String)>,
}

/// One `[[pool_rule]]`, as matched against a sending domain.
#[derive(Debug, Clone)]
pub struct PoolRule {
    pub pool: String,
    pub user: Option<String>,
    pub sender_domain: Option<String>,
    pub sender: Option<String>,
}

/// One `[[dkim]]` key, as its DNS record is checked.
#[derive(Debug, Clone)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    pub private_key: PathBuf,
}
