//! Which TLS one delivery needs (issue 27): decided per destination domain, then per MX host.
//!
//! Rules, first match wins:
//! - A route's `tls` setting (`none`, `opportunistic`, `required`) overrides everything.
//! - DANE (RFC 7672): a DNSSEC-secure TLSA RRset for `_25._tcp.MX` with usable records → TLS
//!   is mandatory and the certificate must match a record; a bogus lookup → defer.
//! - MTA-STS (RFC 8461): `enforce` → only MX hosts matching the policy's `mx` patterns, over TLS
//!   with a certificate valid (web PKI) for that name, else defer; `testing` → as opportunistic,
//!   failures reported; `none` or absent → opportunistic.
//! - Opportunistic: STARTTLS whenever offered, any certificate; plaintext when not offered.
//! - Never plaintext, and never an unverified certificate, for a message that asked for
//!   REQUIRETLS (RFC 8689): it needs `Requirement::WebPki` or `Requirement::Dane`, else bounces.

pub mod dane;
pub mod mta_sts;
pub mod requiretls;

use std::sync::Arc;

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
    /// TLS with a certificate valid (web PKI) for the MX host's name; else no delivery.
    WebPki,
    /// TLS with a certificate matching these TLSA records; else no delivery.
    Dane(Arc<dane::Tlsa>),
    /// Do not connect to this host; defer with this reason (`4.7.5`-ish local reply).
    Refuse(String),
}

impl Requirement {
    /// Whether the peer's identity is verified (what REQUIRETLS needs).
    pub fn verified(&self) -> bool {
        matches!(self, Requirement::WebPki | Requirement::Dane(_))
    }
}

/// The policy for one MX host of one destination domain.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    pub applied: Applied,
    pub requirement: Requirement,
    /// MTA-STS `testing`: failures are reported (TLS-RPT) but do not stop delivery.
    pub report_only: bool,
}
