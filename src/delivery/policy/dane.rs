//! DANE (RFC 7672): TLSA records for `_25._tcp.MX`, looked up with DNSSEC validated by
//! poolrelay itself, and the certificate check they make.
//!
//! Hooks the policy framework calls (filled by the DANE work; until then no host has DANE):
//! - `Dane::lookup(mx)` → `DaneLookup`: `Usable` makes TLS mandatory with this check,
//!   `Bogus` refuses the host (defer), `Insecure`/`Absent` fall through to MTA-STS.
//! - `Dane::connector(tlsa)`: the TLS connector whose verifier checks the peer against `tlsa`.

use std::sync::Arc;

use tokio_rustls::TlsConnector;

use crate::config::Config;

/// A secure, usable TLSA RRset of one MX host (DANE-EE `3 x x` and DANE-TA `2 x x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub host: String,
}

/// What the TLSA lookup for one MX host found.
#[derive(Debug, Clone)]
pub enum DaneLookup {
    /// DNSSEC-secure TLSA records with at least one usable record: DANE applies.
    Usable(Arc<Tlsa>),
    /// The zone is not signed (or the answer not secure): no DANE.
    Insecure,
    /// Securely no TLSA records: no DANE.
    Absent,
    /// Validation failed: the host must not be used (why).
    Bogus(String),
}

/// The DANE lookups and verifier.
pub struct Dane {}

impl Dane {
    pub fn new(_config: &Config) -> Result<Dane, String> {
        Ok(Dane {})
    }

    /// The TLSA records of `_25._tcp.{mx}` (the name stays port 25 whatever port delivery
    /// uses).
    pub async fn lookup(&self, _mx: &str) -> DaneLookup {
        DaneLookup::Absent
    }

    /// The connector for a session that must match `tlsa`; Err when none can be built (the
    /// host is then deferred, never tried unverified).
    pub fn connector(&self, _tlsa: &Tlsa) -> Result<TlsConnector, String> {
        Err("DANE certificate verification is not available".into())
    }
}
