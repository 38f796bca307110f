//! Which TLS one delivery needs (issue 27): decided per destination domain, then per MX host.
//!
//! Rules, first match wins:
//! - A route's `tls` setting (`none`, `opportunistic`, `required`) overrides everything; so
//!   does `[delivery] tls = "none"`, and an address literal `[ip]` (no domain to hold a
//!   policy) keeps `[delivery] tls`.
//! - `[delivery] tls = "required"` for an MX destination is a floor under the rules below:
//!   where they would allow an unverified session, web PKI is required instead
//!   (`Applied::Route`); their refusals and DANE stay. It does not vouch for the MX host's name,
//!   so alone it does not satisfy REQUIRETLS.
//! - DANE (RFC 7672): a DNSSEC-secure TLSA RRset for `_25._tcp.MX` with usable records → TLS
//!   is mandatory and the certificate must match a record; a bogus or failed lookup → defer;
//!   a secure RRset with only unusable records → TLS mandatory, any certificate (unless
//!   MTA-STS asks for more). When the domain's MX RRset is not DNSSEC-secure, DANE does not
//!   bypass MTA-STS: a host an `enforce` policy does not list is refused even with usable
//!   TLSA records, and the name counts as vouched for (REQUIRETLS) only if the policy lists it.
//! - MTA-STS (RFC 8461): `enforce` → only MX hosts matching the policy's `mx` patterns, over TLS
//!   with a certificate valid (web PKI) for that name, else defer; `testing` → as opportunistic,
//!   failures reported (whether the host matched the `mx` patterns is kept, `MxCheck`, for
//!   REQUIRETLS); `none` or absent → opportunistic. A policy that could not be fetched (none
//!   cached) → opportunistic, the failure reported, REQUIRETLS deferred.
//! - Opportunistic: STARTTLS whenever offered, any certificate; plaintext when not offered.
//! - Never plaintext, and never an unverified certificate, for a message that asked for
//!   REQUIRETLS (RFC 8689): it needs `Requirement::WebPki` or `Requirement::Dane` on a host whose
//!   name is vouched for (`MxCheck::Passed`), else bounces or defers (`requiretls.rs`).

pub mod dane;
mod decide;
pub mod mta_sts;
pub mod requiretls;
mod results;

use std::sync::Arc;

pub use decide::{DomainPolicy, Policies};
pub use results::{NoResults, PolicyKind, ReportPolicy, SessionResult, TlsFailure, TlsResults};

/// Which policy applied to a delivery: in every log line, outcome and metric (`policy=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applied {
    Route,
    Dane,
    MtaSts,
    Opportunistic,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Route => "route",
            Applied::Dane => "dane",
            Applied::MtaSts => "mta-sts",
            Applied::Opportunistic => "opportunistic",
        }
    }
}

/// What a session to one MX host must do.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// No STARTTLS at all (a route's `tls = "none"`).
    Plain,
    /// STARTTLS when offered, any certificate; plaintext when it is not offered or fails.
    Opportunistic,
    /// TLS with any certificate; no plaintext (DANE with only unusable TLSA records).
    Encrypted,
    /// TLS with a certificate valid (web PKI) for the MX host's name; else no delivery.
    WebPki,
    /// TLS with a certificate matching these TLSA records; else no delivery.
    Dane(Arc<dane::Tlsa>),
    /// Do not connect to this host; defer (`451 4.7.5`) with this reason.
    Refuse(Refusal),
}

/// Why a host may not be contacted at all, typed for TLS-RPT and readable for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub failure: TlsFailure,
    pub reason: String,
}

impl Requirement {
    /// Whether the peer's identity is verified (what REQUIRETLS needs).
    pub fn verified(&self) -> bool {
        matches!(self, Requirement::WebPki | Requirement::Dane(_))
    }

    /// Whether an open session to `host` that reached `assurance` may carry this delivery
    /// (connection reuse): a verified requirement takes only a session verified the same way
    /// for the same host name.
    pub fn accepts(&self, host: &str, session_host: &str, assurance: Assurance) -> bool {
        let same = host.eq_ignore_ascii_case(session_host);
        match self {
            Requirement::Plain | Requirement::Opportunistic => true,
            Requirement::Encrypted => assurance != Assurance::Plain,
            Requirement::WebPki => same && assurance == Assurance::WebPki,
            Requirement::Dane(_) => same && assurance == Assurance::Dane,
            Requirement::Refuse(_) => false,
        }
    }
}

/// What an open session's TLS proved about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assurance {
    /// No TLS.
    Plain,
    /// TLS with any certificate (opportunistic).
    Encrypted,
    /// TLS with a certificate valid (web PKI) for the host name.
    WebPki,
    /// TLS with a certificate matching the host's TLSA records.
    Dane,
}

/// The policy for one MX host of one destination domain.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    pub applied: Applied,
    pub requirement: Requirement,
    /// MTA-STS `testing`: failures are reported (TLS-RPT) but do not stop delivery.
    pub report_only: bool,
    /// The policy session results are reported under (DANE, MTA-STS); None: not reported.
    pub report: Option<Arc<ReportPolicy>>,
    /// Whether the MX host's name is vouched for (what REQUIRETLS needs besides a verified
    /// certificate).
    pub mx_check: MxCheck,
    /// `[delivery] tls = "required"` applies (an MX destination): `TLS-Required: No` relaxes
    /// policies only down to it.
    pub tls_floor: bool,
}

/// Whether an MX host's name is vouched for: a certificate verified for a spoofed name proves
/// nothing, so REQUIRETLS needs this besides a verified requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxCheck {
    /// A route's host, a host listed by the domain's MTA-STS policy (`enforce` or `testing`),
    /// or an MX host from a DNSSEC-secure MX RRset.
    Passed,
    /// Nothing vouches for the name: no MTA-STS policy and an MX RRset not known secure.
    Unchecked,
    /// REQUIRETLS must not go there now: the MTA-STS policy (any mode) does not list the host,
    /// or it could not be fetched; the message defers (`451 4.7.5`) with this refusal.
    Refused(Refusal),
}

impl HostPolicy {
    /// No policy: STARTTLS when offered.
    pub fn opportunistic() -> HostPolicy {
        HostPolicy {
            applied: Applied::Opportunistic,
            requirement: Requirement::Opportunistic,
            report_only: false,
            report: None,
            mx_check: MxCheck::Unchecked,
            tls_floor: false,
        }
    }
}
