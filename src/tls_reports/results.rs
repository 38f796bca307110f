//! Delivery's session results (`delivery::policy::SessionResult`, one per TLS session attempt
//! to a host under DANE or MTA-STS) in RFC 8460's terms, and the sink that counts them.

use std::sync::Arc;

use mail_auth::report::tlsrpt::{PolicyType, ResultType};

use super::store::Collector;
use crate::delivery::policy::{PolicyKind, SessionResult, TlsFailure, TlsResults};

/// RFC 8460 §4.4 `policy-type`.
pub fn policy_type(kind: PolicyKind) -> PolicyType {
    match kind {
        PolicyKind::Sts => PolicyType::Sts,
        PolicyKind::Tlsa => PolicyType::Tlsa,
        PolicyKind::NoPolicyFound => PolicyType::NoPolicyFound,
    }
}

/// RFC 8460 §4.3 `result-type`.
pub fn result_type(f: TlsFailure) -> ResultType {
    match f {
        TlsFailure::StarttlsNotSupported => ResultType::StartTlsNotSupported,
        TlsFailure::CertificateHostMismatch => ResultType::CertificateHostMismatch,
        TlsFailure::CertificateExpired => ResultType::CertificateExpired,
        TlsFailure::CertificateNotTrusted => ResultType::CertificateNotTrusted,
        TlsFailure::ValidationFailure => ResultType::ValidationFailure,
        TlsFailure::TlsaInvalid => ResultType::TlsaInvalid,
        TlsFailure::DnssecInvalid => ResultType::DnssecInvalid,
        TlsFailure::DaneRequired => ResultType::DaneRequired,
        TlsFailure::StsPolicyFetchError => ResultType::StsPolicyFetchError,
        TlsFailure::StsPolicyInvalid => ResultType::StsPolicyInvalid,
        TlsFailure::StsWebpkiInvalid => ResultType::StsWebpkiInvalid,
    }
}

/// The `TlsResults` sink delivery reports to: counts each result now (memory only; the
/// collector's flush saves them).
pub struct Sink(pub Arc<Collector>);

impl TlsResults for Sink {
    fn record(&self, result: SessionResult) {
        self.0.record(&result, crate::spool::now_unix());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure type has its own RFC 8460 name (none falls into mail-auth's `Other`).
    #[test]
    fn every_failure_maps_to_its_rfc_name() {
        for f in [
            TlsFailure::StarttlsNotSupported,
            TlsFailure::CertificateHostMismatch,
            TlsFailure::CertificateExpired,
            TlsFailure::CertificateNotTrusted,
            TlsFailure::ValidationFailure,
            TlsFailure::TlsaInvalid,
            TlsFailure::DnssecInvalid,
            TlsFailure::DaneRequired,
            TlsFailure::StsPolicyFetchError,
            TlsFailure::StsPolicyInvalid,
            TlsFailure::StsWebpkiInvalid,
        ] {
            let json = serde_json::to_value(result_type(f)).unwrap();
            assert_eq!(json, f.as_str());
        }
    }
}
