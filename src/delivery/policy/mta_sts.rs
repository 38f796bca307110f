//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy fetched over HTTPS, its cache, and
//! which MX hosts it allows.

mod parse;

use std::sync::Arc;

pub use parse::{MAX_AGE_LIMIT, Mode, Policy};

use super::{PolicyKind, ReportPolicy, TlsFailure};
use crate::config::Config;

/// A domain's policy in force.
#[derive(Debug, Clone)]
pub struct Active {
    /// The TXT record's `id` the policy was fetched under.
    pub id: String,
    pub policy: Policy,
    pub report: Arc<ReportPolicy>,
}

impl Active {
    pub fn new(domain: &str, id: String, policy: Policy) -> Active {
        let report = Arc::new(ReportPolicy {
            domain: domain.to_string(),
            kind: PolicyKind::Sts,
            strings: policy.lines.clone(),
            mx_patterns: policy.mx.clone(),
        });
        Active { id, policy, report }
    }
}

/// What the MTA-STS lookup of one domain found.
#[derive(Debug, Clone)]
pub enum Found {
    /// No `_mta-sts` record and no cached policy.
    None,
    Policy(Arc<Active>),
    /// A TXT record but no usable policy, none cached: delivery goes on without one
    /// (RFC 8461 §5), the failure is reported.
    Failed(TlsFailure, String),
}

/// The MTA-STS lookups and their cache.
pub struct MtaSts {}

impl MtaSts {
    pub fn new(_config: &Config) -> Result<MtaSts, String> {
        Ok(MtaSts {})
    }

    /// The policy for `domain`.
    pub async fn lookup(&self, _domain: &str) -> Found {
        Found::None
    }
}
