//! Record matching and the verifier against rcgen-made chains.

use std::sync::Arc;

use aws_lc_rs::digest;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::record::{Record, Tlsa, spki};
use super::verify::DaneVerifier;

struct Chain {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
}

/// A CA and a leaf for `names` signed by it.
fn chain(names: &[&str]) -> Chain {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Chain {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
    }
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

fn sha512(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA512, b).as_ref().to_vec()
}

fn verifier(records: Vec<Record>) -> DaneVerifier {
    crate::tls::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .unwrap()
        .clone();
    let tlsa = Tlsa {
        host: "mx.d.test".into(),
        records,
    };
    DaneVerifier::new(Arc::new(tlsa), provider)
}

fn rec(u: u8, s: u8, m: u8, data: &[u8]) -> Record {
    Record::usable(u, s, m, data).expect("usable record")
}

fn accepts(records: Vec<Record>, c: &Chain) -> bool {
    verifier(records)
        .check(&c.leaf, std::slice::from_ref(&c.ca), UnixTime::now())
        .is_ok()
}

#[test]
fn dane_ee_matches_every_selector_and_matching_type() {
    let c = chain(&["mx.d.test"]);
    let key = spki(&c.leaf).unwrap();
    assert!(accepts(vec![rec(3, 1, 1, &sha256(&key))], &c), "3 1 1");
    assert!(accepts(vec![rec(3, 1, 2, &sha512(&key))], &c), "3 1 2");
    assert!(accepts(vec![rec(3, 1, 0, &key)], &c), "3 1 0");
    assert!(accepts(vec![rec(3, 0, 1, &sha256(&c.leaf))], &c), "3 0 1");
    assert!(accepts(vec![rec(3, 0, 2, &sha512(&c.leaf))], &c), "3 0 2");
    assert!(accepts(vec![rec(3, 0, 0, &c.leaf)], &c), "3 0 0");
}

#[test]
fn dane_ee_ignores_the_name() {
    // RFC 7672 §3.1.1: the certificate may name anything.
    let c = chain(&["elsewhere.example"]);
    let key = spki(&c.leaf).unwrap();
    assert!(accepts(vec![rec(3, 1, 1, &sha256(&key))], &c));
}

#[test]
fn another_key_does_not_match() {
    let c = chain(&["mx.d.test"]);
    let other = chain(&["mx.d.test"]);
    let other_key = spki(&other.leaf).unwrap();
    assert!(!accepts(vec![rec(3, 1, 1, &sha256(&other_key))], &c));
    assert!(!accepts(vec![rec(3, 0, 0, &other.leaf)], &c));
    // The CA's own key named as an end entity is not the leaf.
    assert!(!accepts(
        vec![rec(3, 1, 1, &sha256(&spki(&c.ca).unwrap()))],
        &c
    ));
    let err = verifier(vec![rec(3, 1, 1, &sha256(&other_key))])
        .check(&c.leaf, &[], UnixTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("mx.d.test"), "{err}");
}

#[test]
fn dane_ta_needs_the_chain_and_the_name() {
    let c = chain(&["mx.d.test"]);
    let ta_key = sha256(&spki(&c.ca).unwrap());
    assert!(accepts(vec![rec(2, 1, 1, &ta_key)], &c), "2 1 1");
    assert!(accepts(vec![rec(2, 0, 1, &sha256(&c.ca))], &c), "2 0 1");
    assert!(accepts(vec![rec(2, 0, 0, &c.ca)], &c), "2 0 0");
    // The anchor must be in the chain the server sent.
    let v = verifier(vec![rec(2, 1, 1, &ta_key)]);
    assert!(v.check(&c.leaf, &[], UnixTime::now()).is_err());
    // Right anchor, wrong name: §3.2.2 wants the MX host name.
    let wrong = chain(&["other.d.test"]);
    let wrong_ta = sha256(&spki(&wrong.ca).unwrap());
    let err = verifier(vec![rec(2, 1, 1, &wrong_ta)])
        .check(
            &wrong.leaf,
            std::slice::from_ref(&wrong.ca),
            UnixTime::now(),
        )
        .unwrap_err();
    assert!(err.detail.is_some(), "{err}");
    // A leaf signed by another CA does not chain to this anchor.
    let stranger = chain(&["mx.d.test"]);
    assert!(
        verifier(vec![rec(2, 1, 1, &ta_key)])
            .check(&stranger.leaf, std::slice::from_ref(&c.ca), UnixTime::now())
            .is_err()
    );
}

#[test]
fn pkix_usages_and_bad_digests_are_unusable() {
    let d32 = [7u8; 32];
    assert!(Record::usable(0, 1, 1, &d32).is_none(), "PKIX-TA");
    assert!(Record::usable(1, 1, 1, &d32).is_none(), "PKIX-EE");
    assert!(Record::usable(4, 1, 1, &d32).is_none(), "unassigned usage");
    assert!(
        Record::usable(3, 2, 1, &d32).is_none(),
        "unassigned selector"
    );
    assert!(
        Record::usable(3, 1, 3, &d32).is_none(),
        "unassigned matching"
    );
    assert!(
        Record::usable(3, 1, 1, &d32[..31]).is_none(),
        "short SHA-256"
    );
    assert!(
        Record::usable(3, 1, 2, &d32).is_none(),
        "SHA-512 of 32 bytes"
    );
    assert!(Record::usable(3, 1, 0, &[]).is_none(), "empty exact");
    assert!(Record::usable(3, 1, 1, &d32).is_some());
    assert!(Tlsa::from_fields("mx.d.test", [(1u8, 1u8, 1u8, &d32[..])]).is_none());
    let t = Tlsa::from_fields("MX.d.test.", [(1, 1, 1, &d32[..]), (3, 1, 1, &d32[..])]).unwrap();
    assert_eq!(t.host, "mx.d.test");
    assert_eq!(t.records.len(), 1);
}

#[tokio::test]
async fn the_connector_refuses_a_non_matching_server_and_accepts_a_matching_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["mx.d.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    crate::tls::install_crypto_provider();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let name = rustls_pki_types::ServerName::try_from("mx.d.test").unwrap();
    let good = Tlsa {
        host: "mx.d.test".into(),
        records: vec![rec(3, 1, 1, &sha256(&spki(&der).unwrap()))],
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = super::connector(Arc::new(good))
        .unwrap()
        .connect(name.clone(), tcp)
        .await
        .expect("a matching certificate is accepted");
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"ok");

    let bad = Tlsa {
        host: "mx.d.test".into(),
        records: vec![rec(3, 1, 1, &[9u8; 32])],
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = super::connector(Arc::new(bad))
        .unwrap()
        .connect(name, tcp)
        .await
        .expect_err("a certificate matching no record is refused");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .expect("a rustls error");
    assert!(super::no_match(inner).is_some(), "{inner:?}");
}
