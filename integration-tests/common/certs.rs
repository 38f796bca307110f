//! A throw-away CA and a leaf certificate signed by it, made with rcgen per test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files written by [`make_certs`].
#[derive(Debug, Clone)]
pub struct Certs {
    /// The test CA certificate (trust anchor for clients).
    pub ca: PathBuf,
    /// The leaf certificate (PEM, leaf only).
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Leaf certificate followed by the CA certificate (for servers that want a chain file).
    pub chain: PathBuf,
}

/// Writes `ca.pem`, `cert.pem`, `key.pem` and `chain.pem` into `dir`. The leaf has the SANs
/// `localhost`, `127.0.0.1`, `::1` and every name in `names` (DNS names or IP addresses).
pub fn make_certs(dir: &Path, names: &[&str]) -> Certs {
    std::fs::create_dir_all(dir).expect("create cert dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "poolrelay test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");

    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    let cn = names.first().copied().unwrap_or("localhost");
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().expect("dns name")),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for n in names {
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("valid DNS name")),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    leaf.subject_alt_names = sans;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca, &ca_key).expect("sign leaf");

    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        chain: dir.join("chain.pem"),
    };
    std::fs::write(&certs.ca, ca.pem()).expect("write ca");
    std::fs::write(&certs.cert, leaf_cert.pem()).expect("write cert");
    std::fs::write(&certs.key, leaf_key.serialize_pem()).expect("write key");
    std::fs::write(&certs.chain, format!("{}{}", leaf_cert.pem(), ca.pem())).expect("write chain");
    certs
}
