//! Outbound TLS: an opportunistic connector that accepts any certificate (RFC 7435: unverified
//! encryption beats plaintext) but still checks handshake signatures, and a verifying one for
//! `tls = "required"` (trust anchors: `delivery.ca_file` plus the system store).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::delivery::settings::Delivery;

pub struct Connectors {
    pub opportunistic: TlsConnector,
    /// None when no trust anchor could be loaded: `required` destinations then defer.
    pub required: Option<TlsConnector>,
}

/// The process's crypto provider (installed first if need be).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    crate::tls::install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

pub fn connectors(delivery: &Delivery) -> Result<Connectors, String> {
    let provider = provider();
    let opportunistic = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(HandshakeSignatures::of(&provider))))
        .with_no_client_auth();

    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &delivery.ca_file {
        for cert in crate::tls::load_certs(ca).map_err(|e| e.to_string())? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let required = if roots.is_empty() {
        tracing::warn!("no CA certificates found: tls = \"required\" destinations will defer");
        None
    } else {
        let c = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(TlsConnector::from(Arc::new(c)))
    };
    Ok(Connectors {
        opportunistic: TlsConnector::from(Arc::new(opportunistic)),
        required,
    })
}

/// Accepts any certificate, but the handshake signature must still be valid for the key in it.
#[derive(Debug)]
struct AnyCert(HandshakeSignatures);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Handshake-signature checks with a provider's algorithms, as every verifier here makes them
/// whatever it thinks of the certificate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandshakeSignatures(WebPkiSupportedAlgorithms);

impl HandshakeSignatures {
    pub(crate) fn of(provider: &CryptoProvider) -> HandshakeSignatures {
        HandshakeSignatures(provider.signature_verification_algorithms)
    }

    pub(crate) fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
