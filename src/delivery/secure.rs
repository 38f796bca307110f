//! Opening a session the way its host's TLS policy requires (`policy::Requirement`).
//!
//! Rules:
//! - `Plain`: no STARTTLS. `Opportunistic`: STARTTLS when offered, any certificate; a failed
//!   handshake is retried in plaintext (only here). `Encrypted`: STARTTLS mandatory, any
//!   certificate.
//! - `WebPki` and `Dane`: STARTTLS is mandatory and the certificate verified (web PKI roots
//!   from `[delivery] ca_file` + the system store, or the TLSA records); a missing STARTTLS,
//!   a refusal or a failed check ends the session with `OpenError::TlsRequired`: never
//!   plaintext, never an unverified certificate.
//! - MTA-STS `testing` (`report_only`): tried as `WebPki` first so a failure is known and
//!   reported, then delivered opportunistically.
//! - Every TLS outcome of a host with a policy goes to the TLS-RPT sink
//!   (`Policies::report`); connection and greeting failures are not TLS results.

use std::net::SocketAddr;

use super::client::{self, OpenError, Session, StartTls, local_reply};
use super::deliverer::Deliverer;
use super::policy::{Assurance, HostPolicy, Requirement, TlsFailure};
use crate::pool::Source;

impl Deliverer {
    /// Opens a session to `host` at `addr` from `source` as `policy` requires.
    pub(super) async fn open_as(
        &self,
        host: &str,
        addr: SocketAddr,
        source: &Source,
        policy: &HostPolicy,
    ) -> Result<Session, OpenError> {
        let result = match &policy.requirement {
            Requirement::Refuse(r) => {
                return Err(OpenError::TlsRequired(
                    local_reply(451, "4.7.5", r.reason.clone()),
                    r.failure,
                ));
            }
            Requirement::Plain => {
                return client::open(host, addr, source, StartTls::Off, &self.timeouts).await;
            }
            Requirement::Opportunistic if policy.report_only => {
                return self.open_testing(host, addr, source, policy).await;
            }
            Requirement::Opportunistic => {
                return self.open_opportunistic(host, addr, source).await;
            }
            Requirement::Encrypted => {
                let starttls = StartTls::Mandatory(&self.tls.opportunistic, Assurance::Encrypted);
                client::open(host, addr, source, starttls, &self.timeouts).await
            }
            Requirement::WebPki => self.open_webpki(host, addr, source).await,
            Requirement::Dane(tlsa) => match self.policies.dane().connector(tlsa) {
                Ok(c) => {
                    let starttls = StartTls::Mandatory(&c, Assurance::Dane);
                    client::open(host, addr, source, starttls, &self.timeouts).await
                }
                Err(e) => Err(no_connector(host, addr, source, e.to_string())),
            },
        };
        self.report_open(policy, host, addr, source, &result);
        result
    }

    fn report_open(
        &self,
        policy: &HostPolicy,
        host: &str,
        addr: SocketAddr,
        source: &Source,
        result: &Result<Session, OpenError>,
    ) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err(OpenError::TlsRequired(_, f) | OpenError::Handshake(_, f)) => Err(*f),
            // No TLS was tried: nothing to report.
            Err(_) => return,
        };
        let ip = Some(addr.ip());
        self.policies.report(policy, host, ip, source.ip, outcome);
    }

    async fn open_webpki(
        &self,
        host: &str,
        addr: SocketAddr,
        source: &Source,
    ) -> Result<Session, OpenError> {
        match &self.tls.required {
            Some(c) => {
                let starttls = StartTls::Mandatory(c, Assurance::WebPki);
                client::open(host, addr, source, starttls, &self.timeouts).await
            }
            None => Err(no_connector(
                host,
                addr,
                source,
                "no CA certificates are available".into(),
            )),
        }
    }

    /// STARTTLS when offered; a failed handshake goes on in plaintext.
    async fn open_opportunistic(
        &self,
        host: &str,
        addr: SocketAddr,
        source: &Source,
    ) -> Result<Session, OpenError> {
        let starttls = StartTls::Opportunistic(&self.tls.opportunistic);
        match client::open(host, addr, source, starttls, &self.timeouts).await {
            Err(OpenError::Handshake(r, failure)) => {
                tracing::warn!(mx = %host, %addr, source_ip = %source.label(), tls_failure = %failure, error = %r.text, "TLS handshake failed, delivering in plaintext");
                client::open(host, addr, source, StartTls::Off, &self.timeouts).await
            }
            other => other,
        }
    }

    /// MTA-STS `testing`: verified if possible (the result is reported), else opportunistic.
    async fn open_testing(
        &self,
        host: &str,
        addr: SocketAddr,
        source: &Source,
        policy: &HostPolicy,
    ) -> Result<Session, OpenError> {
        let verified = self.open_webpki(host, addr, source).await;
        self.report_open(policy, host, addr, source, &verified);
        match verified {
            Err(OpenError::TlsRequired(r, failure)) => {
                tracing::warn!(mx = %host, %addr, source_ip = %source.label(), tls_policy = %"mta-sts", tls_failure = %failure, error = %r.text, "MTA-STS testing: TLS would fail under enforce, delivering opportunistically");
                self.open_opportunistic(host, addr, source).await
            }
            other => other,
        }
    }
}

/// No connector could be had for a mandatory check: the host is deferred.
fn no_connector(host: &str, addr: SocketAddr, source: &Source, why: String) -> OpenError {
    let mut r = local_reply(451, "4.7.5", format!("TLS is required for {host}: {why}"));
    r.host = host.to_string();
    r.addr = addr.to_string();
    r.source_ip = source.label();
    OpenError::TlsRequired(r, TlsFailure::ValidationFailure)
}
