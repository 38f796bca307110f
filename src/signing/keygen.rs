//! `poolrelay dkim keygen`: a new signing key (PKCS#8 PEM, mode 0600) and the DNS TXT record
//! that publishes its public half.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Why no key (or no TXT record for a key) came out.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("unknown algorithm {0:?}: ed25519, rsa2048 or rsa4096")]
    UnknownAlgorithm(String),
    /// `what`: "an Ed25519 key", "an RSA key".
    #[error("cannot generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: aws_lc_rs::error::Unspecified,
    },
    /// `what`: "the RSA key", "the public key".
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: aws_lc_rs::error::Unspecified,
    },
    /// The key as the relay would load it (`signing::parse_key`'s words).
    #[error("{0}")]
    Key(super::KeyError),
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("unsupported key type")]
    UnsupportedKeyType,
    #[error("not an RSA key: {0}")]
    NotRsa(#[source] aws_lc_rs::error::KeyRejected),
    #[error("--domain {0:?} is not a domain name")]
    BadDomain(String),
    #[error("--selector {0:?}: use letters, digits, '-' and '.' (e.g. s2026)")]
    BadSelector(String),
    #[error(
        "{} already exists; a published key is never overwritten (choose another --selector or --out)",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa2048,
    Rsa4096,
}

impl std::str::FromStr for Algorithm {
    type Err = KeygenError;
    fn from_str(s: &str) -> Result<Self, KeygenError> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(Algorithm::Ed25519),
            "rsa2048" | "rsa" => Ok(Algorithm::Rsa2048),
            "rsa4096" => Ok(Algorithm::Rsa4096),
            _ => Err(KeygenError::UnknownAlgorithm(s.to_string())),
        }
    }
}

/// A fresh private key as PKCS#8 PEM.
pub fn generate(algorithm: Algorithm) -> Result<String, KeygenError> {
    let der: Vec<u8> = match algorithm {
        Algorithm::Ed25519 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|source| KeygenError::Generate {
                    what: "an Ed25519 key",
                    source,
                })?
                .as_ref()
                .to_vec()
        }
        Algorithm::Rsa2048 | Algorithm::Rsa4096 => {
            let size = if algorithm == Algorithm::Rsa2048 {
                aws_lc_rs::rsa::KeySize::Rsa2048
            } else {
                aws_lc_rs::rsa::KeySize::Rsa4096
            };
            let kp = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|source| {
                KeygenError::Generate {
                    what: "an RSA key",
                    source,
                }
            })?;
            let der: Pkcs8V1Der = kp.as_der().map_err(|source| KeygenError::Encode {
                what: "the RSA key",
                source,
            })?;
            der.as_ref().to_vec()
        }
    };
    Ok(pem("PRIVATE KEY", &der))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The TXT record value (`v=DKIM1; k=…; p=…`) for a PEM private key.
pub fn txt_value(private_pem: &[u8]) -> Result<String, KeygenError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    // Check it the same way the relay will load it.
    super::parse_key(private_pem).map_err(KeygenError::Key)?;
    let der = PrivateKeyDer::from_pem_slice(private_pem)?;
    let (k, public) = match &der {
        PrivateKeyDer::Pkcs8(p) => {
            match aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
                p.secret_pkcs8_der(),
            ) {
                // Ed25519 (RFC 8463): p= is the bare 32-byte public key.
                Ok(kp) => ("ed25519", kp.public_key().as_ref().to_vec()),
                Err(_) => ("rsa", rsa_spki(&der)?),
            }
        }
        PrivateKeyDer::Pkcs1(_) => ("rsa", rsa_spki(&der)?),
        _ => return Err(KeygenError::UnsupportedKeyType),
    };
    Ok(format!("v=DKIM1; k={k}; p={}", B64.encode(public)))
}

/// RSA: p= is the SubjectPublicKeyInfo DER, as every DKIM verifier expects.
fn rsa_spki(der: &rustls_pki_types::PrivateKeyDer<'_>) -> Result<Vec<u8>, KeygenError> {
    use rustls_pki_types::PrivateKeyDer;
    let kp = match der {
        PrivateKeyDer::Pkcs1(k) => aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
        _ => return Err(KeygenError::UnsupportedKeyType),
    }
    .map_err(KeygenError::NotRsa)?;
    let spki: PublicKeyX509Der =
        kp.public_key()
            .as_der()
            .map_err(|source| KeygenError::Encode {
                what: "the public key",
                source,
            })?;
    Ok(spki.as_ref().to_vec())
}

/// The zone-file line for `selector._domainkey.domain.`, the value split into quoted strings of
/// at most 255 bytes (a TXT character-string's limit).
pub fn dns_record(domain: &str, selector: &str, txt_value: &str) -> String {
    let name = format!(
        "{selector}._domainkey.{}.",
        domain.trim().trim_end_matches('.')
    );
    let chunks: Vec<String> = txt_value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).expect("ASCII value")))
        .collect();
    format!("{name} IN TXT ( {} )", chunks.join("\n\t"))
}

/// Writes `pem` to `path` with mode 0600, refusing to replace an existing key.
pub fn write_private_key(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()
}

/// Default key path: `config/dkim/DOMAIN.SELECTOR.pem`.
pub fn default_path(domain: &str, selector: &str) -> PathBuf {
    PathBuf::from(format!(
        "config/dkim/{}.{selector}.pem",
        domain.trim().trim_end_matches('.').to_ascii_lowercase()
    ))
}

/// `poolrelay dkim keygen`: writes the key, returns `(key path, DNS record)`.
pub fn run(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    out: Option<&Path>,
) -> Result<(PathBuf, String), KeygenError> {
    let domain = super::normalize_domain(domain);
    if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
        return Err(KeygenError::BadDomain(domain));
    }
    if !super::is_selector(selector) {
        return Err(KeygenError::BadSelector(selector.to_string()));
    }
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_path(&domain, selector));
    let pem = generate(algorithm)?;
    let txt = txt_value(pem.as_bytes())?;
    write_private_key(&path, &pem).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeygenError::Exists { path: path.clone() },
        _ => KeygenError::Write {
            path: path.clone(),
            source,
        },
    })?;
    Ok((path, dns_record(&domain, selector, &txt)))
}
