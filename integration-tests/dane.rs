//! DANE (RFC 7672, issue 27) against a real knotd serving a DNSSEC-signed tree of test zones,
//! with poolrelay validating DNSSEC itself from the tree's key as trust anchor. Every test is
//! `#[ignore]`d (needs `knot` and `knot-dnsutils`; `.ci/run` installs them and runs these with
//! `-- --ignored`; the trusted-resolver test needs `unbound` too); a missing tool fails the test.
//!
//! The tree (`test.` signed, its DNSKEY the trust anchor):
//! - `d.test.` signed, DS in `test.`:
//!   `good` → mx1 (127.0.0.20, TLSA `3 1 1` of sink 1's key),
//!   `wrong` → mx2 (127.0.0.21, sink 2, TLSA of sink 1's key: no match),
//!   `strip` → mx3 (127.0.0.22, no STARTTLS, TLSA of sink 1's key),
//!   `none` → mx4 (127.0.0.21, no TLSA: secure denial),
//!   `ta` → mx5 (127.0.0.20, TLSA `2 0 1` of sink 1's CA),
//!   `unusable` → mx6 (127.0.0.22, no STARTTLS, only a PKIX-EE record),
//!   `pkix` → mx7 (127.0.0.21, only a PKIX-TA record);
//! - `plain.test.` unsigned (no DS in `test.`): MX → 127.0.0.21;
//! - `sts.test.` unsigned, with an MTA-STS `enforce` policy listing only `mx.sts.test`, but its
//!   MX spoofed to `mx1.d.test` (secure, usable TLSA): DANE must not bypass the policy;
//! - `bogus.test.` signed, but `test.` holds a DS matching none of its keys: MX → 127.0.0.20;
//! - `t.test.` signed with its DS, but its TLSA record (sink 1's key) changed after signing:
//!   the address is secure, the TLSA RRset bogus. MX → 127.0.0.20.

mod common;

use std::path::Path;
use std::time::Duration;

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
        // PKIX-EE and PKIX-TA only: unusable for SMTP, TLS still mandatory.
        "unusable MX 10 mx6.d.test.".into(),
        "mx6 A 127.0.0.22".into(),
        format!("_25._tcp.mx6 TLSA 1 1 1 {ee}"),
        "pkix MX 10 mx7.d.test.".into(),
        "mx7 A 127.0.0.21".into(),
        format!("_25._tcp.mx7 TLSA 0 0 1 {ta}"),
    ];
    let d: Vec<&str> = d.iter().map(String::as_str).collect();
    let knot = Knot::start(
        dir,
        &[
            Zone::signed("test.", &[]),
            Zone::signed("d.test.", &d).ds_in("test."),
            Zone::unsigned(
                "plain.test.",
                &["@ MX 10 mx.plain.test.", "mx A 127.0.0.21"],
            )
            .ns_in("test."),
            Zone::unsigned(
                "sts.test.",
                &[
                    "@ MX 10 mx1.d.test.",
                    "_mta-sts TXT \"v=STSv1; id=1;\"",
                    "mta-sts A 127.0.0.31",
                ],
            )
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
            Zone::signed(
                "t.test.",
                &[
                    "@ MX 10 mx.t.test.",
                    "mx A 127.0.0.20",
                    &format!("_25._tcp.mx TLSA 3 1 1 {ee}"),
                ],
            )
            .ds_in("test.")
            .tampered("_25._tcp.mx"),
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
        let dane = Dane::with(&[w.knot.nameserver()], &settings(&w)).expect("resolver");
        match dane.lookup("mx1.d.test").await {
            Outcome::Usable(t) => {
                assert_eq!(t.host, "mx1.d.test");
                assert_eq!(t.records.len(), 1);
                assert_eq!(t.records[0].usage, dane::Usage::EndEntity);
            }
            other => panic!("mx1.d.test: {other:?}\n{}", w.knot.log()),
        }
        assert!(matches!(
            dane.lookup("mx5.d.test").await,
            Outcome::Usable(_)
        ));
        assert_eq!(dane.lookup("mx4.d.test").await, Outcome::Absent);
        assert_eq!(dane.lookup("mx6.d.test").await, Outcome::Unusable);
        assert_eq!(dane.lookup("mx.plain.test").await, Outcome::Insecure);
        match dane.lookup("mx.bogus.test").await {
            Outcome::Bogus(why) => assert!(!why.is_empty()),
            other => panic!("mx.bogus.test: {other:?}"),
        }
        match dane.lookup("mx.t.test").await {
            Outcome::Bogus(why) => assert!(!why.contains("address"), "{why}"),
            other => panic!("mx.t.test: {other:?}"),
        }
        let verdict = dane::check::validation(&dane, &settings(&w)).await;
        assert_eq!(verdict, dane::check::Verdict::Works);

        // The built-in root keys do not anchor this tree: the same check says so.
        let unanchored = dane::Settings {
            trust_anchor: None,
            ..settings(&w)
        };
        let dane = Dane::with(&[w.knot.nameserver()], &unanchored).expect("resolver");
        let verdict = dane::check::validation(&dane, &unanchored).await;
        assert!(!verdict.works(), "{verdict:?}");
    });
}

const WAIT: Duration = Duration::from_secs(30);

/// Sink 1 (127.0.0.20, the certificate the records name), sink 2 (127.0.0.21, another key),
/// sink 3 (127.0.0.22, no STARTTLS), all on one port.
fn sinks(w: &World) -> (Sink, Sink, Sink) {
    let port = free_port_on(&[lo(20), lo(21), lo(22)]);
    let s1 = Sink::builder(&[lo(20)])
        .port(port)
        .starttls(&w.certs1)
        .start();
    let s2 = Sink::builder(&[lo(21)])
        .port(port)
        .starttls(&w.certs2)
        .start();
    let s3 = Sink::builder(&[lo(22)]).port(port).start();
    (s1, s2, s3)
}

fn relay_config(w: &World, port: u16) -> RelayConfig {
    let s = settings(w);
    RelayConfig::new()
        .nameserver(w.knot.nameserver())
        .delivery_port(port)
        .section(&format!(
            "[delivery.dane]\nenabled = true\ntrust_anchor = \"{}\"\ncheck_secure = \"{}\"\ncheck_bogus = \"{}\"",
            s.trust_anchor.expect("anchor").display(),
            s.check_secure,
            s.check_bogus
        ))
}

fn submit(relay: &Relay, rcpt: &str, subject: &str) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.send_mail("a@src.test", &[rcpt], &tagged_message(subject));
    assert_eq!(r.code, 250, "submit: {r}");
    c.quit();
}

/// The `delivery attempt` lines of one recipient.
fn attempts(relay: &Relay, rcpt: &str) -> Vec<String> {
    let needle = format!("recipient={rcpt} ");
    relay
        .plain_log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("delivery attempt"))
        .map(str::to_string)
        .collect()
}

/// Whether a log line has `key=value` (quoted or not).
fn has(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value} ")) || line.contains(&format!("{key}=\"{value}\""))
}

/// Waits for a deferred attempt of `rcpt` and returns its line.
fn deferred(relay: &Relay, rcpt: &str) -> String {
    let mut line = None;
    let found = wait_until(WAIT, || {
        line = attempts(relay, rcpt)
            .into_iter()
            .find(|l| l.contains("deferred"));
        line.is_some()
    });
    assert!(found, "{rcpt} not deferred:\n{}", relay.plain_log());
    line.unwrap_or_default()
}

fn subjects(sink: &Sink) -> Vec<String> {
    sink.messages().iter().map(Message::subject).collect()
}

/// Matching MX → TLS; DANE-TA → TLS; no match → deferred, nothing sent; STARTTLS stripped →
/// never plaintext; bogus → deferred; unsigned domain and secure denial → opportunistic;
/// unusable records only → TLS mandatory without a certificate check.
#[test]
#[ignore]
fn dane_decides_each_mx_host() {
    let dir = tempdir("dane-relay");
    let w = world(&dir);
    let (s1, s2, s3) = sinks(&w);
    let cfg = relay_config(&w, s1.port()).admin();
    let (relay, admin) = admin::start(&dir, &cfg, WAIT);
    assert!(
        relay.wait_for_log("DANE: DNSSEC validation works", WAIT),
        "{}",
        relay.plain_log()
    );
    for (rcpt, subject) in [
        ("r@good.d.test", "good"),
        ("r@ta.d.test", "ta"),
        ("r@wrong.d.test", "wrong"),
        ("r@strip.d.test", "strip"),
        ("r@none.d.test", "none"),
        ("r@plain.test", "plain"),
        ("r@bogus.test", "bogus"),
        ("r@unusable.d.test", "unusable"),
        ("r@pkix.d.test", "pkix"),
        ("r@t.test", "tampered"),
    ] {
        submit(&relay, rcpt, subject);
    }
    delivered_as_dane_says(&relay, &s1, &s2);
    deferred_as_dane_says(&relay, &s3);
    // After the retries: still only what was delivered first.
    assert_eq!(subjects(&s1).len(), 2, "{:?}", subjects(&s1));
    assert_eq!(subjects(&s2).len(), 3, "{:?}", subjects(&s2));
    let queued = relay.queued_ids();
    assert_eq!(queued.len(), 5, "{queued:?}");
    let log = relay.plain_log();
    assert_eq!(log.matches("DANE: DNSSEC validation works").count(), 1);
    let metrics = admin::get_text(admin, "/metrics");
    for needle in [
        "poolrelay_tls_deliveries_total{policy=\"dane\",result=\"tls\"} 3",
        "poolrelay_tls_deliveries_total{policy=\"dane\",result=\"tlsa-invalid\"}",
        "poolrelay_tls_deliveries_total{policy=\"dane\",result=\"starttls-not-supported\"}",
        "poolrelay_tls_deliveries_total{policy=\"dane\",result=\"dnssec-invalid\"}",
    ] {
        assert!(metrics.contains(needle), "{needle}:\n{metrics}");
    }
}

/// DANE-EE and DANE-TA over TLS to sink 1; PKIX-only records over TLS (any certificate) to
/// sink 2; no TLSA (secure denial) and the unsigned domain opportunistically (TLS with sink 2's
/// certificate, which no record names).
fn delivered_as_dane_says(relay: &Relay, s1: &Sink, s2: &Sink) {
    let m1 = s1.wait_for_messages(2, WAIT);
    let m2 = s2.wait_for_messages(3, WAIT);
    for m in m1.iter().chain(&m2) {
        assert!(m.tls.is_some(), "{m:?}");
    }
    let mut got1 = subjects(s1);
    got1.sort();
    assert_eq!(got1, ["good", "ta"]);
    let mut got2 = subjects(s2);
    got2.sort();
    assert_eq!(got2, ["none", "pkix", "plain"]);
    let sent_as = |rcpt: &str, policy: &str| {
        let lines = attempts(relay, rcpt);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("sent") && has(l, "tls_policy", policy)),
            "{rcpt}: {lines:?}"
        );
    };
    sent_as("r@good.d.test", "dane");
    sent_as("r@ta.d.test", "dane");
    sent_as("r@pkix.d.test", "dane");
    sent_as("r@none.d.test", "opportunistic");
    sent_as("r@plain.test", "opportunistic");
}

/// Deferred, each for its reason, twice, and never in plaintext.
fn deferred_as_dane_says(relay: &Relay, s3: &Sink) {
    let wrong = deferred(relay, "r@wrong.d.test");
    assert!(
        wrong.contains("the certificate of mx2.d.test matches no TLSA record")
            && has(&wrong, "tls_failure", "tlsa-invalid"),
        "{wrong}"
    );
    for rcpt in ["r@strip.d.test", "r@unusable.d.test"] {
        let line = deferred(relay, rcpt);
        assert!(
            has(&line, "tls_policy", "dane") && has(&line, "tls_failure", "starttls-not-supported"),
            "{line}"
        );
    }
    let bogus = deferred(relay, "r@bogus.test");
    assert!(
        bogus.contains("DANE: TLSA lookup bogus for mx.bogus.test"),
        "{bogus}"
    );
    let tampered = deferred(relay, "r@t.test");
    assert!(
        tampered.contains("DANE: TLSA lookup bogus for mx.t.test"),
        "{tampered}"
    );
    for rcpt in [
        "r@wrong.d.test",
        "r@strip.d.test",
        "r@bogus.test",
        "r@unusable.d.test",
        "r@t.test",
    ] {
        assert!(
            wait_until(WAIT, || attempts(relay, rcpt).len() >= 2),
            "{rcpt}: no retry\n{}",
            relay.plain_log()
        );
    }
    assert!(s3.messages().is_empty(), "plaintext to a DANE host");
    assert!(
        !s3.sessions().is_empty(),
        "the stripped host was never contacted"
    );
    let t3 = s3.transcripts();
    assert!(!t3.contains("MAIL FROM"), "{t3}");
}

/// `trusted_resolver = true`: a real validating resolver (unbound, anchored at the tree's key)
/// sits in front of knotd and poolrelay believes its AD bit; asked of knotd directly (no AD)
/// the same records are not trusted.
#[test]
#[ignore]
fn a_trusted_validating_resolver_is_believed() {
    let dir = tempdir("dane-trusted");
    let w = world(&dir);
    let unbound = Unbound::start(&dir, &w.knot, "test.");
    let trusted = dane::Settings {
        enabled: true,
        trusted_resolver: true,
        trust_anchor: None,
        check_secure: "d.test".into(),
        check_bogus: "bogus.test".into(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dane = Dane::with(&[unbound.nameserver()], &trusted).expect("resolver");
        match dane.lookup("mx1.d.test").await {
            Outcome::Usable(t) => assert_eq!(t.host, "mx1.d.test"),
            other => panic!("mx1.d.test: {other:?}\n{}", unbound.log()),
        }
        assert!(matches!(
            dane.lookup("mx5.d.test").await,
            Outcome::Usable(_)
        ));
        assert_eq!(dane.lookup("mx.plain.test").await, Outcome::Insecure);
        let none = dane.lookup("mx4.d.test").await;
        assert!(
            matches!(none, Outcome::Insecure | Outcome::Absent),
            "{none:?}"
        );
        for bogus in ["mx.bogus.test", "mx.t.test"] {
            let o = dane.lookup(bogus).await;
            assert!(matches!(o, Outcome::Bogus(_)), "{bogus}: {o:?}");
        }
        let verdict = dane::check::validation(&dane, &trusted).await;
        assert_eq!(verdict, dane::check::Verdict::Works, "{}", unbound.log());

        // knotd sets no AD bit: nothing it says is believed.
        let direct = Dane::with(&[w.knot.nameserver()], &trusted).expect("resolver");
        assert_eq!(direct.lookup("mx1.d.test").await, Outcome::Insecure);
        let verdict = dane::check::validation(&direct, &trusted).await;
        assert!(!verdict.works(), "{verdict:?}");
    });

    trusted_relay_delivers(&dir, &w, &unbound);
}

/// The relay behind the trusted resolver: a matching host gets the message, a non-matching
/// one is deferred.
fn trusted_relay_delivers(dir: &Path, w: &World, unbound: &Unbound) {
    let (s1, s2, _s3) = sinks(w);
    let cfg = RelayConfig::new()
        .nameserver(unbound.nameserver())
        .delivery_port(s1.port())
        .section(
            "[delivery.dane]\nenabled = true\ntrusted_resolver = true\n\
             check_secure = \"d.test\"\ncheck_bogus = \"bogus.test\"",
        );
    let relay = Relay::start(dir, &cfg.to_toml());
    assert!(
        relay.wait_for_log("DANE: DNSSEC validation works", WAIT),
        "{}",
        relay.plain_log()
    );
    submit(&relay, "r@good.d.test", "good");
    submit(&relay, "r@wrong.d.test", "wrong");
    let m = &s1.wait_for_messages(1, WAIT)[0];
    assert_eq!(m.subject(), "good");
    assert!(m.tls.is_some(), "{m:?}");
    let sent = attempts(&relay, "r@good.d.test");
    assert!(
        sent.iter().any(|l| has(l, "tls_policy", "dane")),
        "{sent:?}"
    );
    let wrong = deferred(&relay, "r@wrong.d.test");
    assert!(wrong.contains("matches no TLSA record"), "{wrong}");
    assert!(s2.messages().is_empty(), "{:?}", subjects(&s2));
}

/// RFC 7672 §2.2.1 with an MTA-STS `enforce` domain whose MX RRset is unsigned: the MX is
/// spoofed to a host in a signed zone with usable TLSA records of its own (sink 1's key). DANE
/// would verify that host; the policy, which does not list it, refuses it all the same.
#[test]
#[ignore]
fn dane_on_an_insecure_mx_does_not_bypass_mta_sts_enforce() {
    let dir = tempdir("dane-sts");
    let w = world(&dir);
    let (s1, _s2, _s3) = sinks(&w);
    let web_certs = make_certs(&dir.join("c3"), &["mta-sts.sts.test"]);
    let web = HttpsServer::start(lo(31), &web_certs);
    web.set(
        "mta-sts.sts.test",
        Served::text("version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n"),
    );
    let cfg = relay_config(&w, s1.port())
        .delivery("ca_file", format!("\"{}\"", web_certs.ca.display()))
        .delivery("mta_sts", format!("{{ https_port = {} }}", web.port()));
    let relay = Relay::start(&dir, &cfg.to_toml());
    submit(&relay, "r@sts.test", "spoofed");
    submit(&relay, "r@good.d.test", "good");
    let line = deferred(&relay, "r@sts.test");
    assert!(
        line.contains("mx1.d.test is not an MX host allowed by the policy of sts.test"),
        "{line}"
    );
    assert!(has(&line, "tls_policy", "mta-sts"), "{line}");
    // A domain whose MX RRset is secure: DANE decides as before.
    s1.wait_for_messages(1, WAIT);
    assert_eq!(subjects(&s1), ["good"]);
    assert!(web.requests_for("mta-sts.sts.test") >= 1);
}
