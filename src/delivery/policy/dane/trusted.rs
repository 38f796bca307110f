//! `trusted_resolver = true`: the configured resolver validates, poolrelay believes its AD bit.
//! - queries go straight to `[dns] nameservers` with the DO bit set (RFC 6840 §5.7: a
//!   validating resolver then sets AD on authenticated answers);
//! - an answer with AD is secure, one without is insecure;
//! - SERVFAIL is bogus (what validating resolvers answer for a validation failure);
//! - a negative answer is a denial: the resolver refuses (SERVFAIL) a denial it cannot
//!   validate, and a secure and an insecure "no TLSA" both leave DANE out;
//! - only safe when the path to the resolver is trusted (localhost, a private link).

use std::net::SocketAddr;

use futures_util::StreamExt;
use hickory_resolver::NameServerPool;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsHandle;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, Record, RecordType};

use super::lookup::Security;
use crate::util::nameservers::NameServerError;

/// Asks the configured resolvers themselves (no cache: their own caches serve).
#[derive(Clone)]
pub struct TrustedResolver(NameServerPool<TokioRuntimeProvider>);

impl TrustedResolver {
    /// `[dns] nameservers`, else the system's.
    pub fn new(nameservers: &[SocketAddr]) -> Result<TrustedResolver, NameServerError> {
        crate::util::nameservers::pool(nameservers, "DANE resolver").map(TrustedResolver)
    }

    /// One lookup and what the resolver's AD bit says of it.
    pub async fn security(&self, name: &str, rtype: RecordType) -> Security {
        let name = match Name::from_ascii(name) {
            Ok(n) => n,
            Err(e) => return Security::Failed(format!("{name}: {e}")),
        };
        let mut opts = DnsRequestOptions::default();
        opts.edns_set_dnssec_ok = true;
        let mut responses = self.0.lookup(Query::query(name, rtype), opts);
        match responses.next().await {
            Some(Ok(r)) if r.metadata.response_code == ResponseCode::NoError => {
                let records: Vec<Record> = r
                    .answers
                    .iter()
                    .filter(|a| a.record_type() != RecordType::RRSIG)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    Security::Denied
                } else if r.metadata.authentic_data {
                    Security::Secure(records)
                } else {
                    Security::Insecure
                }
            }
            Some(Ok(r)) if r.metadata.response_code == ResponseCode::NXDomain => Security::Denied,
            Some(Ok(r)) if r.metadata.response_code == ResponseCode::ServFail => servfail(),
            Some(Ok(r)) => Security::Failed(format!("answered {}", r.metadata.response_code)),
            Some(Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)))) => servfail(),
            Some(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Security::Denied,
            Some(Err(e)) => Security::Failed(e.to_string()),
            None => Security::Failed("no answer".into()),
        }
    }
}

fn servfail() -> Security {
    Security::Bogus("the trusted resolver answered SERVFAIL (validation failed?)".into())
}
