//! The TLSA lookup of one MX host (RFC 7672 §2.2), DNSSEC validated here (hickory, from the
//! trust anchor down) or, with `trusted_resolver`, by the configured resolver (`trusted`):
//! - the MX host's own address records decide first (§2.2.2): insecure → DANE does not apply;
//!   bogus → defer; not found → nothing to secure;
//! - then `_25._tcp.<host>` (always port 25, whatever port delivery uses): a secure RRset with a
//!   usable record → `Usable`; secure but none usable → `Unusable`; secure denial → `Absent`;
//!   insecure → `Insecure`; bogus → `Bogus`; a failed lookup → `Failed` (defer, never downgrade);
//! - the MX RRset's own security does not change the outcome: §2.2.1 lets a client use the
//!   TLSA records of MX hosts it found through an insecure MX RRset (a hosted domain, a signed
//!   provider). But such a host name may be spoofed, so `decide.rs` looks the MX RRset up too
//!   (`Security` of `DOMAIN MX`): when it is not secure, DANE does not bypass the domain's
//!   MTA-STS policy (a host it does not list is refused under `enforce`), and DANE alone does
//!   not make the host good enough for REQUIRETLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::serialize::txt::ParseError;

use super::record::Tlsa;
use super::settings::Settings;
use super::trusted::TrustedResolver;

/// Why DANE could not be set up: its resolver or its trust anchor file.
#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    #[error(transparent)]
    Resolver(#[from] crate::routing::ResolverError),
    #[error(transparent)]
    NameServers(#[from] crate::util::nameservers::NameServerError),
    #[error("DANE resolver: {0}")]
    Build(#[source] NetError),
    #[error("delivery.dane.trust_anchor: {}: {source}", path.display())]
    AnchorRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "delivery.dane.trust_anchor: {}: line {line}: only DNSKEY records are trust anchors (`keymgr ZONE dnskey` prints them)",
        path.display()
    )]
    AnchorNotDnskey { path: PathBuf, line: usize },
    #[error("delivery.dane.trust_anchor: {}: no DNSKEY record", path.display())]
    AnchorEmpty { path: PathBuf },
    #[error("delivery.dane.trust_anchor: {}: {source}", path.display())]
    AnchorParse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// What DANE says about one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Secure TLSA RRset with a usable record: TLS is mandatory and the certificate must match.
    Usable(Arc<Tlsa>),
    /// Secure TLSA RRset, but every record is unusable for SMTP (PKIX usages, unknown types):
    /// TLS stays mandatory, without a certificate check (RFC 7672 §2.2).
    Unusable,
    /// The host's address records or its TLSA RRset are unsigned: DANE does not apply.
    Insecure,
    /// Secure proof that the host has no TLSA records.
    Absent,
    /// Validation failed (bad signatures, a broken chain, an unproven denial): why.
    Bogus(String),
    /// The lookup itself failed (timeout, SERVFAIL): DNSSEC status unknown; why.
    Failed(String),
}

impl Outcome {
    /// Whether delivery to this host must wait: a bogus or unknown answer may be an attack.
    pub fn defers(&self) -> bool {
        matches!(self, Outcome::Bogus(_) | Outcome::Failed(_))
    }

    /// For logs: `usable`, `unusable`, `insecure`, `absent`, `bogus`, `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Usable(_) => "usable",
            Outcome::Unusable => "unusable",
            Outcome::Insecure => "insecure",
            Outcome::Absent => "absent",
            Outcome::Bogus(_) => "bogus",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The DNSSEC status of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Every record of the answer is secure.
    Secure(Vec<Record>),
    /// Secure proof that the name or the type does not exist.
    Denied,
    /// Unsigned answer or denial.
    Insecure,
    Bogus(String),
    Failed(String),
}

/// Who judges DNSSEC.
enum Validator {
    /// hickory validates every answer from the trust anchor down.
    Here(Box<TokioResolver>),
    /// The configured resolver validates; its AD bit is believed (`trusted_resolver`).
    Resolver(TrustedResolver),
}

/// The resolver DANE asks; without `[delivery.dane] enabled` every host is `Absent` and
/// nothing is asked.
pub struct Dane {
    validator: Option<Validator>,
    settings: Settings,
}

impl Dane {
    /// A DANE service asking `nameservers` (empty: the system's resolver).
    pub fn with(nameservers: &[SocketAddr], settings: &Settings) -> Result<Dane, DaneError> {
        let validator = match (settings.enabled, settings.trusted_resolver) {
            (false, _) => None,
            (true, true) => Some(Validator::Resolver(TrustedResolver::new(nameservers)?)),
            (true, false) => Some(Validator::Here(Box::new(validating_resolver(
                nameservers,
                settings,
            )?))),
        };
        Ok(Dane {
            validator,
            settings: settings.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.validator.is_some()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The connector for a session that must match `tlsa`.
    pub fn connector(&self, tlsa: &Tlsa) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
        super::verify::connector(Arc::new(tlsa.clone()))
    }

    /// RFC 7672 §2.2 for the MX host `host`.
    pub async fn lookup(&self, host: &str) -> Outcome {
        if self.validator.is_none() {
            return Outcome::Absent;
        }
        let outcome = self.lookup_enabled(host).await;
        tracing::debug!(mx = %host, dane = outcome.as_str(), "DANE lookup");
        outcome
    }

    async fn lookup_enabled(&self, host: &str) -> Outcome {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.address_security(&host).await {
            Security::Secure(_) => {}
            Security::Insecure => return Outcome::Insecure,
            // No address at all: routing reports it; there is no connection to secure.
            Security::Denied => return Outcome::Absent,
            Security::Bogus(e) => {
                return Outcome::Bogus(format!("its address records: {e}"));
            }
            Security::Failed(e) => {
                return Outcome::Failed(format!("its address records: {e}"));
            }
        }
        let name = format!("_25._tcp.{host}.");
        match self.security(&name, RecordType::TLSA).await {
            Security::Secure(records) => {
                let fields = records.iter().filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some((
                        u8::from(t.cert_usage),
                        u8::from(t.selector),
                        u8::from(t.matching),
                        t.cert_data.as_slice(),
                    )),
                    _ => None,
                });
                match Tlsa::from_fields(&host, fields) {
                    Some(tlsa) => Outcome::Usable(Arc::new(tlsa)),
                    None => Outcome::Unusable,
                }
            }
            Security::Denied => Outcome::Absent,
            Security::Insecure => Outcome::Insecure,
            Security::Bogus(e) => Outcome::Bogus(e),
            Security::Failed(e) => Outcome::Failed(e),
        }
    }

    /// A, then AAAA: secure only if every address record found is.
    async fn address_security(&self, host: &str) -> Security {
        let name = format!("{host}.");
        let a = self.security(&name, RecordType::A).await;
        let aaaa = self.security(&name, RecordType::AAAA).await;
        match (a, aaaa) {
            (b @ (Security::Bogus(_) | Security::Failed(_)), _)
            | (_, b @ (Security::Bogus(_) | Security::Failed(_))) => b,
            (Security::Insecure, _) | (_, Security::Insecure) => Security::Insecure,
            (Security::Secure(mut a), Security::Secure(b)) => {
                a.extend(b);
                Security::Secure(a)
            }
            (Security::Secure(a), Security::Denied) | (Security::Denied, Security::Secure(a)) => {
                Security::Secure(a)
            }
            (Security::Denied, Security::Denied) => Security::Denied,
        }
    }

    /// One validated lookup and its DNSSEC status.
    pub async fn security(&self, name: &str, rtype: RecordType) -> Security {
        match &self.validator {
            Some(Validator::Here(r)) => classify(r.lookup(name, rtype).await),
            Some(Validator::Resolver(r)) => r.security(name, rtype).await,
            None => Security::Failed("DANE is off".into()),
        }
    }
}

/// The routing resolver's settings, validating, anchored at `trust_anchor` (else the root).
fn validating_resolver(
    nameservers: &[SocketAddr],
    settings: &Settings,
) -> Result<TokioResolver, DaneError> {
    let mut builder = crate::routing::resolver_builder(nameservers)?;
    builder.options_mut().validate = true;
    if let Some(path) = &settings.trust_anchor {
        let anchors = load_trust_anchor(path)?;
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    builder.build().map_err(DaneError::Build)
}

/// Zone-file DNSKEY lines as trust anchors. `keymgr` prints them without TTL and class, which
/// hickory's parser needs: those are added where missing. Blank lines and `;` comments are
/// skipped; any other record (a DS, say) is an error naming its line.
pub fn load_trust_anchor(path: &Path) -> Result<TrustAnchors, DaneError> {
    let path_buf = || path.to_path_buf();
    let text = std::fs::read_to_string(path).map_err(|source| DaneError::AnchorRead {
        path: path_buf(),
        source,
    })?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with(';') {
            continue;
        }
        if !l.split_whitespace().any(|f| f == "DNSKEY") {
            return Err(DaneError::AnchorNotDnskey {
                path: path_buf(),
                line: n + 1,
            });
        }
        lines.push(with_ttl_and_class(l));
    }
    if lines.is_empty() {
        return Err(DaneError::AnchorEmpty { path: path_buf() });
    }
    lines
        .join("\n")
        .parse()
        .map_err(|source| DaneError::AnchorParse {
            path: path_buf(),
            source,
        })
}

/// `name DNSKEY …` → `name 3600 IN DNSKEY …`; lines that have them (or are not DNSKEY) stay.
fn with_ttl_and_class(line: &str) -> String {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [name, "DNSKEY", rest @ ..] => format!("{name} 3600 IN DNSKEY {}", rest.join(" ")),
        [name, ttl, "DNSKEY", rest @ ..] if ttl.parse::<u32>().is_ok() => {
            format!("{name} {ttl} IN DNSKEY {}", rest.join(" "))
        }
        [name, "IN", "DNSKEY", rest @ ..] => format!("{name} 3600 IN DNSKEY {}", rest.join(" ")),
        _ => line.to_string(),
    }
}

/// The DNSSEC status of a validated lookup's result.
pub fn classify(result: Result<Lookup, NetError>) -> Security {
    match result {
        Ok(lookup) => {
            let records: Vec<Record> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() != RecordType::RRSIG)
                .cloned()
                .collect();
            if records.is_empty() {
                return denial(lookup.authorities());
            }
            match weakest(&records) {
                Proof::Secure => Security::Secure(records),
                Proof::Insecure => Security::Insecure,
                Proof::Bogus => Security::Bogus("bad or missing signatures".into()),
                _ => Security::Failed("DNSSEC status indeterminate".into()),
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
            denial(no.authorities.as_deref().unwrap_or(&[]))
        }
        Err(NetError::Dns(DnsError::Nsec { proof, .. })) => match proof {
            Proof::Secure => Security::Denied,
            Proof::Insecure => Security::Insecure,
            Proof::Bogus => Security::Bogus("denial of existence not proven".into()),
            _ => Security::Failed("DNSSEC status indeterminate".into()),
        },
        Err(NetError::Dns(DnsError::DnssecBogus)) => {
            Security::Bogus("DNSSEC validation failed".into())
        }
        Err(e) => Security::Failed(e.to_string()),
    }
}

/// A negative answer: secure only when its authority records (SOA, NSEC/NSEC3) all are.
fn denial(authorities: &[Record]) -> Security {
    let records: Vec<Record> = authorities
        .iter()
        .filter(|r| r.record_type() != RecordType::RRSIG)
        .cloned()
        .collect();
    if records.is_empty() {
        return Security::Insecure;
    }
    match weakest(&records) {
        Proof::Secure => Security::Denied,
        Proof::Insecure => Security::Insecure,
        Proof::Bogus => Security::Bogus("denial of existence not proven".into()),
        _ => Security::Failed("DNSSEC status indeterminate".into()),
    }
}

/// The weakest proof among records: Bogus < Indeterminate < Insecure < Secure.
fn weakest(records: &[Record]) -> Proof {
    let rank = |p: Proof| match p {
        Proof::Bogus => 0,
        Proof::Insecure => 2,
        Proof::Secure => 3,
        _ => 1,
    };
    records
        .iter()
        .map(|r| r.proof)
        .min_by_key(|p| rank(*p))
        .unwrap_or(Proof::Indeterminate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keymgr_lines_get_ttl_and_class() {
        assert_eq!(
            with_ttl_and_class("test. DNSKEY 257 3 13 abc=="),
            "test. 3600 IN DNSKEY 257 3 13 abc=="
        );
        assert_eq!(
            with_ttl_and_class("test. 60 IN DNSKEY 257 3 13 abc=="),
            "test. 60 IN DNSKEY 257 3 13 abc=="
        );
        assert_eq!(
            with_ttl_and_class("test. 60 DNSKEY 257 3 13 abc=="),
            "test. 60 IN DNSKEY 257 3 13 abc=="
        );
    }
}
