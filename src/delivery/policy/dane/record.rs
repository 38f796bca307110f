//! TLSA records (RFC 6698) as SMTP uses them (RFC 7672 §3.1):
//! - usable: DANE-TA (2) and DANE-EE (3); PKIX-TA (0) and PKIX-EE (1) are unusable for SMTP;
//! - selectors: full certificate (0) and SubjectPublicKeyInfo (1);
//! - matching types: exact (0), SHA-256 (1), SHA-512 (2); a digest of the wrong length is
//!   unusable (RFC 7671 §9), so is any private or unassigned value;
//! - a certificate matches a record when its selected part, hashed as the record says, equals
//!   the record's data.

use aws_lc_rs::digest;
use rustls_pki_types::CertificateDer;

/// Which certificate of the chain a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// DANE-TA (2): a trust anchor in the server's chain.
    TrustAnchor,
    /// DANE-EE (3): the server's own certificate; no name or expiry check.
    EndEntity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// The whole DER certificate (0).
    Cert,
    /// Its DER SubjectPublicKeyInfo (1).
    Spki,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    Exact,
    Sha256,
    Sha512,
}

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
    pub data: Vec<u8>,
}

/// The usable TLSA records of one MX host (`_25._tcp.<host>`), from a DNSSEC-secure RRset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// The MX host name (the TLSA base domain): the name DANE-TA certificates must carry.
    pub host: String,
    /// Never empty.
    pub records: Vec<Record>,
}

impl Record {
    /// The record if SMTP may use it, from its wire fields; `None` for unusable ones.
    pub fn usable(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Option<Record> {
        let usage = match usage {
            2 => Usage::TrustAnchor,
            3 => Usage::EndEntity,
            _ => return None,
        };
        let selector = match selector {
            0 => Selector::Cert,
            1 => Selector::Spki,
            _ => return None,
        };
        let matching = match (matching, data.len()) {
            (0, n) if n > 0 => Matching::Exact,
            (1, 32) => Matching::Sha256,
            (2, 64) => Matching::Sha512,
            _ => return None,
        };
        Some(Record {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        })
    }

    /// Whether `cert` (DER) is what this record names; an unparsable certificate matches nothing.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            Selector::Cert => cert.as_ref().to_vec(),
            Selector::Spki => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
        };
        match self.matching {
            Matching::Exact => selected == self.data,
            Matching::Sha256 => digest::digest(&digest::SHA256, &selected).as_ref() == self.data,
            Matching::Sha512 => digest::digest(&digest::SHA512, &selected).as_ref() == self.data,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate (webpki's parser).
pub fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    Some(webpki::spki_for_anchor(&anchor).as_ref().to_vec())
}

impl Tlsa {
    /// The usable records among `(usage, selector, matching, data)`; `None` when none is usable.
    pub fn from_fields<'a>(
        host: &str,
        fields: impl IntoIterator<Item = (u8, u8, u8, &'a [u8])>,
    ) -> Option<Tlsa> {
        let records: Vec<Record> = fields
            .into_iter()
            .filter_map(|(u, s, m, d)| Record::usable(u, s, m, d))
            .collect();
        (!records.is_empty()).then(|| Tlsa {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            records,
        })
    }
}
