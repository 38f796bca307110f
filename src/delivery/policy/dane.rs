//! DANE (RFC 7672): TLSA records for `_25._tcp.MX`, looked up with DNSSEC validated by
//! poolrelay itself, and the certificate check they make.

/// A secure, usable TLSA RRset of one MX host (DANE-EE `3 x x` and DANE-TA `2 x x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub host: String,
}
