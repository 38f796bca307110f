//! Outbound TLS: an opportunistic connector that accepts any certificate (RFC 7435: unverified
//! encryption beats plaintext) but still checks handshake signatures, and a verifying one for
//! `tls = "required"` (trust anchors: `delivery.ca_file` plus the system store).

use std::path::{Path, PathBuf};
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

/// Why the outbound TLS connectors could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    CaFile(#[from] crate::tls::TlsFileError),
    /// `delivery.ca_file` holds a certificate the trust store refused.
    #[error("{}: {source}", path.display())]
    CaRejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

pub fn connectors(delivery: &Delivery) -> Result<Connectors, ConnectorError> {
    let provider = provider();
    let opportunistic = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(HandshakeSignatures::of(&provider))))
        .with_no_client_auth();

    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &delivery.ca_file {
        add_ca_file(&mut roots, ca)?;
    }
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let required = if roots.is_empty() {
        tracing::warn!("no CA certificates found: tls = \"required\" destinations will defer");
        None
    } else {
        let c = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(TlsConnector::from(Arc::new(c)))
    };
    Ok(Connectors {
        opportunistic: TlsConnector::from(Arc::new(opportunistic)),
        required,
    })
}

/// Adds the certificates of the PEM file `ca` to `roots` (`check-config` loads
/// `delivery.ca_file` this way too).
pub fn add_ca_file(roots: &mut rustls::RootCertStore, ca: &Path) -> Result<(), ConnectorError> {
    for cert in crate::tls::load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|source| ConnectorError::CaRejected {
                path: ca.to_path_buf(),
                source,
            })?;
    }
    Ok(())
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
