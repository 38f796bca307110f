//! DANE (RFC 7672, issue 27) against a real knotd serving a DNSSEC-signed tree of test zones,
//! with poolrelay validating DNSSEC itself from the tree's key as trust anchor. Every test is
//! `#[ignore]`d (needs `knot` and `knot-dnsutils`; `.ci/run` installs them and runs these with
//! `-- --ignored`); a missing knotd fails the test.
//!
//! The tree (`test.` signed, its DNSKEY the trust anchor):
//! - `d.test.` signed, DS in `test.`:
//!   `good` → mx1 (127.0.0.20, TLSA `3 1 1` of sink 1's key),
//!   `wrong` → mx2 (127.0.0.21, sink 2, TLSA of sink 1's key: no match),
//!   `strip` → mx3 (127.0.0.22, no STARTTLS, TLSA of sink 1's key),
//!   `none` → mx4 (127.0.0.21, no TLSA: secure denial),
//!   `ta` → mx5 (127.0.0.20, TLSA `2 0 1` of sink 1's CA);
//! - `plain.test.` unsigned (no DS in `test.`): MX → 127.0.0.21;
//! - `bogus.test.` signed, but `test.` holds a DS matching none of its keys: MX → 127.0.0.20.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use poolrelay::delivery::policy::dane::{self, Dane, Outcome};

struct World {
    knot: Knot,
    /// Sink 1 (127.0.0.20): the certificate the TLSA records name.
    certs1: Certs,
    /// Sink 2 (127.0.0.21): another key.
    certs2: Certs,
}

fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the leaf's SubjectPublicKeyInfo, from its key pair (not the code under test).
fn spki_sha256(certs: &Certs) -> String {
    let pem = std::fs::read_to_string(&certs.key).expect("key");
    let key = rcgen::KeyPair::from_pem(&pem).expect("key PEM");
    sha256_hex(&key.public_key_der())
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("PEM")
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

fn world(dir: &Path) -> World {
    let certs1 = make_certs(&dir.join("c1"), &["mx1.d.test", "mx3.d.test", "mx5.d.test"]);
    let certs2 = make_certs(&dir.join("c2"), &["mx2.d.test", "mx4.d.test"]);
    let ee = spki_sha256(&certs1);
    let ta = sha256_hex(&pem_der(&certs1.ca));
    let d = [
        "good MX 10 mx1.d.test.".to_string(),
        "mx1 A 127.0.0.20".into(),
        format!("_25._tcp.mx1 TLSA 3 1 1 {ee}"),
        "wrong MX 10 mx2.d.test.".into(),
        "mx2 A 127.0.0.21".into(),
        format!("_25._tcp.mx2 TLSA 3 1 1 {ee}"),
        "strip MX 10 mx3.d.test.".into(),
        "mx3 A 127.0.0.22".into(),
        format!("_25._tcp.mx3 TLSA 3 1 1 {ee}"),
        "none MX 10 mx4.d.test.".into(),
        "mx4 A 127.0.0.21".into(),
        "ta MX 10 mx5.d.test.".into(),
        "mx5 A 127.0.0.20".into(),
        format!("_25._tcp.mx5 TLSA 2 0 1 {ta}"),
    ];
    let d: Vec<&str> = d.iter().map(String::as_str).collect();
    let knot = Knot::start(
        dir,
        &[
            Zone::signed("test.", &[]),
            Zone::signed("d.test.", &d).ds_in("test."),
            Zone::unsigned("plain.test.", &["@ MX 10 mx.plain.test.", "mx A 127.0.0.21"])
                .ns_in("test."),
            Zone::signed(
                "bogus.test.",
                &[
                    "@ MX 10 mx.bogus.test.",
                    "mx A 127.0.0.20",
                    &format!("_25._tcp.mx TLSA 3 1 1 {ee}"),
                ],
            )
            .wrong_ds_in("test."),
        ],
    );
    World {
        knot,
        certs1,
        certs2,
    }
}

fn settings(w: &World) -> dane::Settings {
    dane::Settings {
        enabled: true,
        trust_anchor: Some(w.knot.trust_anchor("test.")),
        check_secure: "d.test".into(),
        check_bogus: "bogus.test".into(),
        ..Default::default()
    }
}

/// The lookup itself, straight from the library: each kind of host gives its outcome.
#[test]
#[ignore]
fn lookup_outcomes_from_a_signed_tree() {
    let dir = tempdir("dane-lookup");
    let w = world(&dir);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dane = Dane::with(&[w.knot.nameserver()], &settings(&w))
            .expect("resolver");
        match dane.lookup("mx1.d.test").await {
            Outcome::Usable(t) => {
                assert_eq!(t.host, "mx1.d.test");
                assert_eq!(t.records.len(), 1);
                assert_eq!(t.records[0].usage, dane::Usage::EndEntity);
            }
            other => panic!("mx1.d.test: {other:?}\n{}", w.knot.log()),
        }
        assert!(matches!(dane.lookup("mx5.d.test").await, Outcome::Usable(_)));
        assert_eq!(dane.lookup("mx4.d.test").await, Outcome::Absent);
        assert_eq!(dane.lookup("mx.plain.test").await, Outcome::Insecure);
        match dane.lookup("mx.bogus.test").await {
            Outcome::Bogus(why) => assert!(!why.is_empty()),
            other => panic!("mx.bogus.test: {other:?}"),
        }
        let verdict = dane::check::validation(&dane, &settings(&w)).await;
        assert_eq!(verdict, dane::check::Verdict::Works);

        // The built-in root keys do not anchor this tree: the same check says so.
        let unanchored = dane::Settings {
            trust_anchor: None,
            ..settings(&w)
        };
        let dane = Dane::with(&[w.knot.nameserver()], &unanchored)
            .expect("resolver");
        let verdict = dane::check::validation(&dane, &unanchored).await;
        assert!(!verdict.works(), "{verdict:?}");
    });
    let _ = (&w.certs1, &w.certs2, Arc::new(()));
}
