//! What one SMTP session to an MX host of a policy domain reports to TLS-RPT (RFC 8460 §4.3):
//! which policy applied, where the session went, and success or the failure's result type.

use std::net::IpAddr;

pub use mail_auth::report::tlsrpt::{PolicyType, ResultType};

/// The policy a session was held to, as the report names it (`policy` object, §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyId {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: PolicyType,
    /// `policy-string`: the MTA-STS policy's lines, or the TLSA records in presentation form.
    pub strings: Vec<String>,
    /// `mx-host`: the MTA-STS policy's `mx` patterns (empty for the other types).
    pub mx_host: Vec<String>,
}

impl PolicyId {
    pub fn no_policy() -> PolicyId {
        PolicyId {
            policy_type: PolicyType::NoPolicyFound,
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }
}

/// Why a session failed, as RFC 8460 §4.3 types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub result_type: ResultType,
    /// `failure-reason-code`: a short text for people (e.g. the TLS alert).
    pub reason: Option<String>,
}

/// One session attempt to one MX host of `domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    /// The policy domain (the recipient domain).
    pub domain: String,
    pub policy: PolicyId,
    /// Our source IP.
    pub sending_ip: Option<IpAddr>,
    /// The MX host name.
    pub mx_host: String,
    pub receiving_ip: Option<IpAddr>,
    /// `Ok` = TLS as the policy asks.
    pub outcome: Result<(), Failure>,
}
