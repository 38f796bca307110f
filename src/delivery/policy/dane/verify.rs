//! The certificate check TLSA records make (RFC 7672 §3.1), as a rustls verifier:
//! - DANE-EE: the end-entity certificate (or its key) matches a record; no name check, no
//!   expiry check (§3.1.1);
//! - DANE-TA: a certificate the server sent matches a record, and the end-entity chains to it
//!   (web PKI rules, times checked) with the MX host name valid for it (§3.1.2, §3.2.2);
//! - anything else fails the handshake: the session never goes on in plaintext;
//! - handshake signatures are verified with the provider's algorithms as for any peer.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use super::record::{Tlsa, Usage};
use crate::delivery::tls::{HandshakeSignatures, provider};

/// The peer's certificate matched no usable TLSA record.
#[derive(Debug, Clone)]
pub struct NoMatch {
    pub host: String,
    /// Why the DANE-TA records did not match, if one named a certificate of the chain.
    pub detail: Option<String>,
}

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DANE: the certificate of {} matches no TLSA record",
            self.host
        )?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoMatch {}

/// Accepts the server's chain only if it matches one of the records.
#[derive(Debug)]
pub struct DaneVerifier {
    tlsa: Arc<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    pub fn new(tlsa: Arc<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier { tlsa, provider }
    }

    /// `Ok` if the chain matches a record; else why not.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), NoMatch> {
        let records = &self.tlsa.records;
        if records
            .iter()
            .any(|r| r.usage == Usage::EndEntity && r.matches(end_entity))
        {
            return Ok(());
        }
        let mut detail = None;
        for anchor in intermediates.iter().filter(|c| {
            records
                .iter()
                .any(|r| r.usage == Usage::TrustAnchor && r.matches(c))
        }) {
            match self.chains_to(end_entity, intermediates, anchor, now) {
                Ok(()) => return Ok(()),
                Err(e) => detail = Some(e.to_string()),
            }
        }
        Err(NoMatch {
            host: self.tlsa.host.clone(),
            detail,
        })
    }

    /// DANE-TA: `end_entity` chains to `anchor` and is valid for the MX host name.
    fn chains_to(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        anchor: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("trust anchor: {e}")))?;
        let ee = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &ee,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let name = ServerName::try_from(self.tlsa.host.as_str())
            .map_err(|e| rustls::Error::General(format!("MX host name: {e}")))?;
        rustls::client::verify_server_name(&ee, &name)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures::of(&self.provider).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures::of(&self.provider).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        HandshakeSignatures::of(&self.provider).schemes()
    }
}

/// A connector that accepts only a chain matching `tlsa`. Connect with the MX host name as the
/// server name: RFC 7672 §8.1 wants it sent as SNI.
pub fn connector(tlsa: Arc<Tlsa>) -> Result<TlsConnector, rustls::Error> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DaneVerifier::new(tlsa, provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The `NoMatch` inside a handshake error, if that is why it failed.
pub fn no_match(e: &rustls::Error) -> Option<&NoMatch> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<NoMatch>()
        }
        _ => None,
    }
}
