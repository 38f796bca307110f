//! What each TLS session attempt to a policy domain gave: for TLS-RPT (RFC 8460) and the
//! `poolrelay_tls_deliveries_total` metric.
//!
//! Rules:
//! - Every session attempt to a host whose policy is DANE or MTA-STS (`HostPolicy::report` set)
//!   is reported once to the `TlsResults` sink: success, or the RFC 8460 §4.3 failure type; a
//!   host refused by policy without a connection is reported with its refusal's type.
//! - Hosts without a policy (opportunistic, routes) are not reported.
//! - The sink must not block: it is called on the delivery path.

use std::net::IpAddr;
use std::sync::Arc;

/// Why a TLS requirement was not met; one variant per RFC 8460 §4.3 result type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsFailure {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl TlsFailure {
    /// The RFC 8460 result type, as in reports, logs and the metric's `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::StarttlsNotSupported => "starttls-not-supported",
            TlsFailure::CertificateHostMismatch => "certificate-host-mismatch",
            TlsFailure::CertificateExpired => "certificate-expired",
            TlsFailure::CertificateNotTrusted => "certificate-not-trusted",
            TlsFailure::ValidationFailure => "validation-failure",
            TlsFailure::TlsaInvalid => "tlsa-invalid",
            TlsFailure::DnssecInvalid => "dnssec-invalid",
            TlsFailure::DaneRequired => "dane-required",
            TlsFailure::StsPolicyFetchError => "sts-policy-fetch-error",
            TlsFailure::StsPolicyInvalid => "sts-policy-invalid",
            TlsFailure::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The failure type of a failed handshake (`tokio_rustls` wraps the `rustls::Error`).
    pub fn of_handshake(e: &std::io::Error) -> TlsFailure {
        use rustls::CertificateError as C;
        let Some(rustls::Error::InvalidCertificate(c)) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsFailure::ValidationFailure;
        };
        match c {
            // DANE: the certificate matched none of the host's TLSA records.
            C::Other(o) if o.0.downcast_ref::<super::dane::NoMatch>().is_some() => {
                TlsFailure::TlsaInvalid
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                TlsFailure::CertificateHostMismatch
            }
            C::Expired | C::ExpiredContext { .. } => TlsFailure::CertificateExpired,
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus | C::Revoked => {
                TlsFailure::CertificateNotTrusted
            }
            _ => TlsFailure::ValidationFailure,
        }
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Sts,
    Tlsa,
    NoPolicyFound,
}

/// The policy a report is about (RFC 8460 §4.4 `policy` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPolicy {
    /// `policy-domain`: the recipient domain.
    pub domain: String,
    pub kind: PolicyKind,
    /// `policy-string`: the MTA-STS policy file's lines, or the TLSA records.
    pub strings: Vec<String>,
    /// `mx-host`: the MTA-STS policy's `mx` patterns (empty for TLSA).
    pub mx_patterns: Vec<String>,
}

/// One session attempt (or refusal) to one MX host under a policy.
#[derive(Debug, Clone)]
pub struct SessionResult {
    pub policy: Arc<ReportPolicy>,
    /// `receiving-mx-hostname`.
    pub mx_host: String,
    /// `receiving-ip`; None when no connection was made (refused by policy).
    pub receiving_ip: Option<IpAddr>,
    /// `sending-mta-ip`: the pool IP the session used, if any.
    pub sending_ip: Option<IpAddr>,
    pub result: Result<(), TlsFailure>,
}

/// Where session results go (TLS-RPT aggregates them). Must return quickly.
pub trait TlsResults: Send + Sync {
    fn record(&self, result: SessionResult);
}

/// The default sink: results are only logged (debug) and counted by the metric.
pub struct NoResults;

impl TlsResults for NoResults {
    fn record(&self, _result: SessionResult) {}
}
