//! DKIM private keys: read from PEM, checked, and shared by every signature they make.
//! Rules: RSA (PKCS#1 or PKCS#8) of 2048 to 4096 bits, or Ed25519 (PKCS#8, OpenSSL's v1 too);
//! anything else is refused with the reason and what to do; a selector is dot-separated
//! sub-domain labels (RFC 6376).

use std::path::Path;
use std::sync::Arc;

use mail_auth::common::crypto::{DkimKey as AuthKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 4096;

/// One loaded key (mail-auth's, aws-lc-rs) shared by every signature it makes (mail-auth's
/// signer takes its key by value).
#[derive(Clone)]
pub(super) struct SharedKey(pub(super) Arc<AuthKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// RFC 6376 selector: dot-separated sub-domain labels.
pub(crate) fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Why a DKIM private key cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file: {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "not a PEM private key ({0}); expected \"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\""
    )]
    NotPem(#[source] rustls_pki_types::pem::Error),
    #[error("unsupported key type (only RSA and Ed25519 keys can sign DKIM)")]
    Unsupported,
    /// An RSA parse of a key that is neither PKCS#1 nor PKCS#8 (not reached: `parse_key` sorts).
    #[error("unsupported key type")]
    NotRsa,
    /// Its size in bits.
    #[error("RSA key of {0} bits; use {RSA_MIN_BITS} to {RSA_MAX_BITS} bits", RSA_MIN_BITS = RSA_MIN_BITS, RSA_MAX_BITS = RSA_MAX_BITS)]
    RsaSize(usize),
    /// aws-lc-rs does not parse a key under 2048 bits, so its size is unknown.
    #[error(
        "RSA key under {RSA_MIN_BITS} bits: RSA keys under {RSA_MIN_BITS} bits are not allowed for \
         DKIM signing (RFC 8301: signers MUST use at least 1024 bits and SHOULD use at least \
         2048; poolrelay signs with {RSA_MIN_BITS} to {RSA_MAX_BITS}); make a new key with \
         `poolrelay dkim keygen` and publish it under a new selector",
        RSA_MIN_BITS = RSA_MIN_BITS,
        RSA_MAX_BITS = RSA_MAX_BITS
    )]
    RsaTooSmall,
    #[error("RSA key larger than {RSA_MAX_BITS} bits", RSA_MAX_BITS = RSA_MAX_BITS)]
    RsaTooLarge,
    #[error("unusable RSA key: {0}")]
    RsaUnusable(#[source] mail_auth::Error),
    #[error("not a valid RSA or Ed25519 private key ({0})")]
    Invalid(#[source] aws_lc_rs::error::KeyRejected),
}

/// Reads a PEM private key: RSA (PKCS#1 or PKCS#8, 2048–4096 bits) or Ed25519 (PKCS#8).
pub(crate) fn load_key(path: &Path) -> Result<AuthKey, KeyError> {
    let pem = std::fs::read(path).map_err(KeyError::Read)?;
    parse_key(&pem)
}

pub(crate) fn parse_key(pem: &[u8]) -> Result<AuthKey, KeyError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(KeyError::NotPem)?;
    match der {
        PrivateKeyDer::Pkcs1(pkcs1) => rsa_key(PrivateKeyDer::Pkcs1(pkcs1)),
        PrivateKeyDer::Pkcs8(pkcs8) => {
            // Ed25519 first; "maybe_unchecked" also takes OpenSSL's PKCS#8 v1 (no public key).
            if let Ok(key) = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                return Ok(AuthKey::Ed25519(key));
            }
            rsa_key(PrivateKeyDer::Pkcs8(pkcs8))
        }
        _ => Err(KeyError::Unsupported),
    }
}

fn rsa_key(der: PrivateKeyDer<'_>) -> Result<AuthKey, KeyError> {
    let parsed = match &der {
        PrivateKeyDer::Pkcs1(k) => aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
        _ => return Err(KeyError::NotRsa),
    };
    match parsed {
        Ok(k) if k.public_modulus_len() * 8 > RSA_MAX_BITS => {
            Err(KeyError::RsaSize(k.public_modulus_len() * 8))
        }
        Ok(_) => RsaKey::<Sha256>::from_key_der(der)
            .map(AuthKey::Rsa)
            .map_err(KeyError::RsaUnusable),
        Err(e) if e.description_() == "TooSmall" => Err(KeyError::RsaTooSmall),
        Err(e) if e.description_() == "TooLarge" => Err(KeyError::RsaTooLarge),
        Err(e) => Err(KeyError::Invalid(e)),
    }
}
