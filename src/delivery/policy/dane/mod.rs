//! DANE (RFC 7672): TLSA records for `_25._tcp.MX`, looked up with DNSSEC validated by
//! poolrelay itself, and the certificate check they make.
//! - `lookup`: the DNSSEC status of an MX host and its TLSA RRset → `Outcome`;
//! - `record`: which records SMTP may use, and whether a certificate matches one;
//! - `verify`: the rustls verifier and connector built from a host's records;
//! - `check`: the start-up check that validation works behind the configured resolver;
//! - `trusted`: `trusted_resolver = true`, the configured resolver's AD bit believed;
//! - `settings`: `[delivery.dane]`.

pub mod check;
pub mod lookup;
pub mod record;
pub mod settings;
pub mod trusted;
pub mod verify;

#[cfg(test)]
mod tests;

pub use lookup::{Dane, DaneError, Outcome, Security};
pub use record::{Matching, Record, Selector, Tlsa, Usage};
pub use settings::Settings;
pub use verify::{DaneVerifier, NoMatch, connector, no_match};
