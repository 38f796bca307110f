use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

use super::keygen::{self, Algorithm};
use super::*;
use crate::config::Config;

const RSA_PKCS1: &str = include_str!("testdata/rsa2048-pkcs1.pem");
const RSA_1024: &str = include_str!("testdata/rsa1024-pkcs1.pem");
const RSA_1024_PKCS8: &str = include_str!("testdata/rsa1024-pkcs8.pem");
const RSA_512: &str = include_str!("testdata/rsa512-pkcs1.pem");
const ED25519_OPENSSL: &str = include_str!("testdata/ed25519-openssl.pem");

const MESSAGE: &[u8] = b"Received: from client.test (127.0.0.1)\r\n\tby relay.test; Mon, 23 Nov 2026 17:00:00 +0000\r\n\
From: \"Alice, Sales\" <alice@example.com>\r\n\
To: bob@dest.test\r\n\
Subject: hello  there\r\n\
Date: Mon, 23 Nov 2026 17:00:00 +0000\r\n\
Message-ID: <m1@example.com>\r\n\
X-Mailer: test\r\n\
\r\n\
Hello Bob.\r\n\
\r\n\
\r\n";

fn tempdir(name: &str) -> PathBuf {
    crate::util::test_dir::tempdir(&format!("signing-{name}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config with `[[dkim]]` entries `(domain, selector, key file, subdomains)`.
fn config(entries: &[(&str, &str, &Path, bool)], require: bool) -> Config {
    let mut toml = String::from(
        "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n",
    );
    toml.push_str(&format!("[signing]\nrequire = {require}\n"));
    for (d, s, p, sub) in entries {
        toml.push_str(&format!(
            "[[dkim]]\ndomain = \"{d}\"\nselector = \"{s}\"\nprivate_key = \"{}\"\nsubdomains = {sub}\n",
            p.display()
        ));
    }
    let config: Config = toml::from_str(&toml).unwrap();
    config
}

/// The signer of a config's `[[dkim]]` keys and `[signing]`.
fn signer_of(config: &Config) -> Result<Signer, Vec<ConfigError>> {
    Signer::new(&config.dkim, &config.signing)
}

/// A TXT "resolver" answering from a table, so verification needs no network.
#[derive(Default)]
struct Table(Mutex<HashMap<Box<str>, Txt>>);

impl Table {
    fn add(&self, domain: &str, selector: &str, txt: &str) {
        let key = DomainKey::parse(txt.as_bytes()).expect("TXT parses as a DKIM key record");
        self.0.lock().unwrap().insert(
            format!("{selector}._domainkey.{domain}.").into(),
            Txt::from(key),
        );
    }
}

impl ResolverCache<Box<str>, Txt> for Table {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// mail-auth's verifier over `signed` (our headers + message); one result per signature.
fn verify(table: &Table, signed: &[u8]) -> Vec<DkimResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Never asked: every lookup is answered by the table. Port 9 on loopback, not the world.
        let mut ns = mail_auth::hickory_resolver::config::NameServerConfig::udp_and_tcp(
            "127.0.0.1".parse().unwrap(),
        );
        for c in &mut ns.connections {
            c.port = 9;
        }
        let auth = MessageAuthenticator::new(
            mail_auth::hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![ns]),
            Default::default(),
        )
        .unwrap();
        let msg = AuthenticatedMessage::parse(signed).unwrap();
        auth.verify_dkim(Parameters::new(&msg).with_txt_cache(table))
            .await
            .into_iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

fn joined(signed: &Signed, message: &[u8]) -> Vec<u8> {
    let mut v = signed.headers.as_bytes().to_vec();
    v.extend_from_slice(message);
    v
}

fn tags(header: &str) -> HashMap<String, String> {
    let unfolded = header.replace("\r\n", "");
    let value = unfolded.split_once(':').unwrap().1;
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

fn signature_lines(signed: &Signed) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in signed.headers.split_inclusive("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            out.last_mut().unwrap().push_str(line);
        } else {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn rsa_pkcs1_signature_verifies_and_message_is_untouched() {
    let dir = tempdir("pkcs1");
    let key = write(&dir, "k.pem", RSA_PKCS1);
    let signer = signer_of(&config(&[("example.com", "s1", &key, false)], false)).unwrap();
    let original = MESSAGE.to_vec();
    let signed = signer.sign(MESSAGE).unwrap();
    assert_eq!(MESSAGE, &original[..], "sign() must not change the message");
    assert_eq!(signed.from_domain.as_deref(), Some("example.com"));
    assert_eq!(
        signed.signed_by,
        [("example.com".to_string(), "s1".to_string())]
    );
    assert!(
        signed.headers.starts_with("DKIM-Signature: "),
        "{}",
        signed.headers
    );
    assert!(signed.headers.ends_with("\r\n"));
    // Folded lines only; no bare LF.
    assert_eq!(
        signed.headers.matches('\n').count(),
        signed.headers.matches("\r\n").count()
    );

    let t = tags(&signed.headers);
    assert_eq!(t["a"], "rsa-sha256");
    assert_eq!(t["c"], "relaxed/relaxed");
    assert_eq!(t["d"], "example.com");
    assert_eq!(t["s"], "s1");
    assert!(t["t"].parse::<u64>().unwrap() > 1_700_000_000);
    assert!(!t.contains_key("x"));
    // Only present headers, From over-signed; Received and X-Mailer are not signed.
    let mut h: Vec<String> = t["h"].split(':').map(|s| s.to_ascii_lowercase()).collect();
    assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "{h:?}");
    h.sort();
    h.dedup();
    assert_eq!(h, ["date", "from", "message-id", "subject", "to"]);

    let table = Table::default();
    table.add(
        "example.com",
        "s1",
        &keygen::txt_value(RSA_PKCS1.as_bytes()).unwrap(),
    );
    assert_eq!(
        verify(&table, &joined(&signed, MESSAGE)),
        [DkimResult::Pass]
    );
}

/// Issue 25: signing is aws-lc-rs only; a 1024-bit key (allowed by RFC 8301, below its SHOULD)
/// is refused with the reason, in PKCS#1 and PKCS#8 alike.
#[test]
fn rsa_keys_under_2048_bits_are_refused_with_the_reason() {
    let dir = tempdir("rsa1024");
    let pkcs1 = write(&dir, "k1.pem", RSA_1024);
    let pkcs8 = write(&dir, "k8.pem", RSA_1024_PKCS8);
    for key in [&pkcs1, &pkcs8] {
        let errors = match signer_of(&config(&[("example.com", "old", key, false)], false)) {
            Err(e) => e,
            Ok(_) => panic!("a 1024-bit key must be refused: {}", key.display()),
        };
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert_eq!(&errors[0].file, key);
        for part in [
            "RSA keys under 2048 bits are not allowed for DKIM signing",
            "RFC 8301",
            "at least 1024",
            "SHOULD use at least 2048",
            "poolrelay dkim keygen",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
    }
    // The DNS record helper refuses it as well: no TXT for a key that cannot sign.
    assert!(keygen::txt_value(RSA_1024.as_bytes()).is_err());
}

#[test]
fn ed25519_and_rsa_side_by_side_give_two_signatures() {
    let dir = tempdir("dual");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let rsa = write(
        &dir,
        "rsa.pem",
        &keygen::generate(Algorithm::Rsa2048).unwrap(),
    );
    let signer = signer_of(&config(
        &[
            ("example.com", "ed", &ed, false),
            ("example.com", "rsa", &rsa, false),
        ],
        false,
    ))
    .unwrap();
    let signed = signer.sign(MESSAGE).unwrap();
    let lines = signature_lines(&signed);
    assert_eq!(lines.len(), 2, "{}", signed.headers);
    let algs: Vec<String> = lines.iter().map(|l| tags(l)["a"].clone()).collect();
    assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"]);

    let table = Table::default();
    table.add(
        "example.com",
        "ed",
        &keygen::txt_value(ED25519_OPENSSL.as_bytes()).unwrap(),
    );
    table.add(
        "example.com",
        "rsa",
        &keygen::txt_value(&std::fs::read(&rsa).unwrap()).unwrap(),
    );
    assert_eq!(
        verify(&table, &joined(&signed, MESSAGE)),
        [DkimResult::Pass, DkimResult::Pass]
    );
}

#[test]
fn tampered_body_does_not_pass() {
    let dir = tempdir("tamper");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(&[("example.com", "ed", &ed, false)], false)).unwrap();
    let signed = signer.sign(MESSAGE).unwrap();
    let mut bytes = joined(&signed, MESSAGE);
    let pos = bytes.windows(5).position(|w| w == b"Hello").unwrap();
    bytes[pos] = b'J';
    let table = Table::default();
    table.add(
        "example.com",
        "ed",
        &keygen::txt_value(ED25519_OPENSSL.as_bytes()).unwrap(),
    );
    let results = verify(&table, &bytes);
    assert_eq!(results.len(), 1);
    assert_ne!(results[0], DkimResult::Pass);
}

#[test]
fn a_second_from_added_later_breaks_the_signature() {
    let dir = tempdir("oversign");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(&[("example.com", "ed", &ed, false)], false)).unwrap();
    let signed = signer.sign(MESSAGE).unwrap();
    let table = Table::default();
    table.add(
        "example.com",
        "ed",
        &keygen::txt_value(ED25519_OPENSSL.as_bytes()).unwrap(),
    );
    let mut bytes = signed.headers.as_bytes().to_vec();
    bytes.extend_from_slice(b"From: mallory@evil.test\r\n");
    bytes.extend_from_slice(MESSAGE);
    assert_ne!(verify(&table, &bytes), [DkimResult::Pass]);
}

#[test]
fn keygen_output_loads_signs_and_publishes() {
    for alg in [Algorithm::Ed25519, Algorithm::Rsa2048, Algorithm::Rsa4096] {
        let pem = keygen::generate(alg).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let dir = tempdir("keygen");
        let path = dir.join("sub/example.com.k.pem");
        keygen::write_private_key(&path, &pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Never overwrite a key that may be published.
        assert!(keygen::write_private_key(&path, &pem).is_err());

        let txt = keygen::txt_value(pem.as_bytes()).unwrap();
        let k = if alg == Algorithm::Ed25519 {
            "ed25519"
        } else {
            "rsa"
        };
        assert!(txt.starts_with(&format!("v=DKIM1; k={k}; p=")), "{txt}");
        let record = keygen::dns_record("example.com", "k", &txt);
        assert!(
            record.starts_with("k._domainkey.example.com. IN TXT ( \""),
            "{record}"
        );
        assert!(record.ends_with("\" )"), "{record}");
        // Each quoted string fits a TXT character-string; together they are the value.
        let strings: Vec<&str> = record.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|s| s.len() <= 255), "{record}");
        assert_eq!(strings.concat(), txt);
        if alg == Algorithm::Rsa4096 {
            assert!(strings.len() >= 3, "{record}");
        }

        let signer = signer_of(&config(&[("example.com", "k", &path, false)], false)).unwrap();
        let signed = signer.sign(MESSAGE).unwrap();
        let table = Table::default();
        table.add("example.com", "k", &txt);
        assert_eq!(
            verify(&table, &joined(&signed, MESSAGE)),
            [DkimResult::Pass],
            "{alg:?}"
        );
    }
}

#[test]
fn key_loading_errors_name_the_file() {
    let dir = tempdir("bad");
    let missing = dir.join("missing.pem");
    let garbage = write(&dir, "garbage.pem", "not a key\n");
    let cert = write(
        &dir,
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ==\n-----END CERTIFICATE-----\n",
    );
    let small = write(&dir, "small.pem", RSA_512);
    let truncated = write(&dir, "trunc.pem", &RSA_PKCS1[..RSA_PKCS1.len() / 2]);
    let bad_b64 = write(
        &dir,
        "badder.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n",
    );
    let ok = write(&dir, "ok.pem", ED25519_OPENSSL);
    let entries: Vec<(&str, &str, &Path, bool)> = vec![
        ("example.com", "a", &missing, false),
        ("example.com", "b", &garbage, false),
        ("example.com", "c", &cert, false),
        ("example.com", "d", &small, false),
        ("example.com", "e", &truncated, false),
        ("example.com", "f", &bad_b64, false),
        ("example.com", "g", &ok, false),
        ("localhost", "h", &ok, false),
        ("example.com", "bad selector", &ok, false),
    ];
    let errors = match signer_of(&config(&entries, false)) {
        Err(e) => e,
        Ok(_) => panic!("bad keys must be config errors"),
    };
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 8, "{texts:#?}");
    for (e, path) in errors
        .iter()
        .zip([&missing, &garbage, &cert, &small, &truncated, &bad_b64])
    {
        assert_eq!(&e.file, path, "{e}");
    }
    assert!(texts[0].contains("cannot read"), "{}", texts[0]);
    assert!(texts[1].contains("not a PEM private key"), "{}", texts[1]);
    assert!(texts[2].contains("not a PEM private key"), "{}", texts[2]);
    assert!(texts[3].contains("RSA key under 2048 bits"), "{}", texts[3]);
    assert!(texts[6].contains("domain must be"), "{}", texts[6]);
    assert!(texts[7].contains("selector"), "{}", texts[7]);
    for t in &texts {
        assert!(t.contains("[[dkim]] domain"), "{t}");
    }
}

#[test]
fn existing_signature_with_same_domain_and_selector_is_not_repeated() {
    let dir = tempdir("dedupe");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let rsa = write(&dir, "rsa.pem", RSA_PKCS1);
    let one = signer_of(&config(&[("example.com", "ed", &ed, false)], false)).unwrap();
    let first = joined(&one.sign(MESSAGE).unwrap(), MESSAGE);

    // Same d= and s=: nothing added. Another selector still signs.
    let both = signer_of(&config(
        &[
            ("example.com", "ed", &ed, false),
            ("Example.COM", "rsa", &rsa, false),
        ],
        true,
    ))
    .unwrap();
    let again = both.sign(&first).unwrap();
    assert_eq!(
        again.already_signed,
        [("example.com".to_string(), "ed".to_string())]
    );
    assert_eq!(
        again.signed_by,
        [("example.com".to_string(), "rsa".to_string())]
    );
    assert_eq!(signature_lines(&again).len(), 1);
    assert_eq!(tags(&again.headers)["s"], "rsa");

    // Everything already signed: no new header, and that is not a "require" refusal.
    let only = one.sign(&first).unwrap();
    assert!(only.headers.is_empty());
    assert!(only.is_signed());

    // A signature by someone else (other d=) does not stop ours.
    let foreign = first
        .clone()
        .replacen_bytes(b"d=example.com", b"d=other.test");
    let signed = one.sign(&foreign).unwrap();
    assert_eq!(signed.signed_by.len(), 1);
}

trait ReplaceBytes {
    fn replacen_bytes(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replacen_bytes(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        match self.windows(from.len()).position(|w| w == from) {
            Some(i) => [&self[..i], to, &self[i + from.len()..]].concat(),
            None => panic!("pattern not found"),
        }
    }
}

#[test]
fn key_choice_by_from_domain_and_subdomains() {
    let dir = tempdir("choice");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(
        &[
            ("example.com", "parent", &ed, true),
            ("mail.example.com", "child", &ed, true),
            ("exact.test", "e", &ed, false),
            ("xn--bcher-kva.test", "idn", &ed, false),
        ],
        false,
    ))
    .unwrap();
    let sign = |from: &str| {
        let msg = format!("From: {from}\r\nSubject: x\r\n\r\nbody\r\n");
        signer.sign(msg.as_bytes()).unwrap()
    };
    let by = |s: Signed| {
        s.signed_by
            .into_iter()
            .map(|(d, s)| format!("{d}/{s}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(by(sign("a@example.com")), ["example.com/parent"]);
    assert_eq!(by(sign("a@news.example.com")), ["example.com/parent"]);
    // The closest parent wins.
    assert_eq!(by(sign("a@x.mail.example.com")), ["mail.example.com/child"]);
    assert_eq!(
        by(sign("A <a@MAIL.Example.COM>")),
        ["mail.example.com/child"]
    );
    // subdomains = false covers only the domain itself; look-alikes are not subdomains.
    assert!(by(sign("a@sub.exact.test")).is_empty());
    assert!(by(sign("a@notexample.com")).is_empty());
    // Robust From parsing: comments, quoted names with @, encoded words, groups, folding.
    assert_eq!(
        by(sign("\"x@evil.test\" (comment @evil.test) <a@exact.test>")),
        ["exact.test/e"]
    );
    assert_eq!(
        by(sign("=?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n <a@exact.test>")),
        ["exact.test/e"]
    );
    // Issue 25: RFC 5322 has no trailing dot in a From: domain and no group in From:.
    for bad in ["a@example.com.", "Team: a@exact.test, b@other.test;"] {
        let msg = format!("From: {bad}\r\nSubject: x\r\n\r\nbody\r\n");
        let r = signer.sign(msg.as_bytes()).unwrap_err();
        assert_eq!((r.code, r.status.as_str()), (550, "5.6.0"), "{bad}: {r}");
    }
    // IDN: the UTF-8 spelling finds the key configured as A-label, d= stays ASCII.
    assert_eq!(by(sign("a@bücher.test")), ["xn--bcher-kva.test/idn"]);
    let unsigned = sign("a@other.test");
    assert!(unsigned.headers.is_empty() && !unsigned.is_signed());
    assert_eq!(unsigned.from_domain.as_deref(), Some("other.test"));
}

#[test]
fn require_refuses_unsigned_mail_with_5xx() {
    let dir = tempdir("require");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(&[("example.com", "ed", &ed, false)], true)).unwrap();
    let r = signer
        .sign(b"From: a@other.test\r\nSubject: x\r\n\r\nbody\r\n")
        .unwrap_err();
    assert_eq!((r.code, r.status.as_str()), (554, "5.7.1"));
    assert!(r.text.contains("other.test"), "{r}");
    let r = signer
        .sign(b"Subject: no from\r\n\r\nbody\r\n")
        .unwrap_err();
    assert_eq!((r.code, r.status.as_str()), (550, "5.6.0"), "{r}");
    assert!(signer.sign(MESSAGE).is_ok());
    // Header section only (no blank line, no body) and an empty message: no panic.
    let s = signer
        .sign(b"From: a@example.com\r\nSubject: x\r\n")
        .unwrap();
    assert_eq!(s.signed_by.len(), 1);
    assert_eq!(signer.sign(b"").unwrap_err().code, 550);

    // Without require a From domain without a key passes unsigned; a message without From: is
    // still refused unless `missing_from = "accept-unsigned"`.
    let mut cfg = config(&[("example.com", "ed", &ed, false)], false);
    let lax = signer_of(&cfg).unwrap();
    let other = lax
        .sign(b"From: a@other.test\r\nSubject: x\r\n\r\nbody\r\n")
        .unwrap();
    assert!(other.headers.is_empty() && !other.is_signed());
    let no_from = b"Subject: no from\r\n\r\nbody\r\n";
    assert_eq!(lax.sign(no_from).unwrap_err().status, "5.6.0");
    cfg.signing.missing_from = MissingFrom::AcceptUnsigned;
    let lax = signer_of(&cfg).unwrap();
    let unsigned = lax.sign(no_from).unwrap();
    assert!(unsigned.headers.is_empty() && !unsigned.is_signed());
    assert_eq!(unsigned.summary(), "unsigned: no From: domain");
    // A malformed From: is never let through by that key.
    let r = lax
        .sign(b"From: ceo@victim.example@example.com\r\n\r\nbody\r\n")
        .unwrap_err();
    assert_eq!((r.code, r.status.as_str()), (550, "5.6.0"), "{r}");
}

/// Issue 25: the login's binding is checked on the author fields the strict reader found.
#[test]
fn checked_signing_refuses_malformed_and_foreign_authors() {
    let dir = tempdir("authors");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(&[("example.com", "ed", &ed, false)], false)).unwrap();
    let ours = |a: &str| a.to_ascii_lowercase().ends_with("@example.com");
    let sign = |headers: &str| {
        let msg = format!("{headers}Subject: x\r\n\r\nbody\r\n");
        signer.sign_checked(msg.as_bytes(), &ours)
    };
    for (headers, status) in [
        ("From: ceo@victim.example@example.com\r\n", "5.6.0"),
        ("From: (x <ceo@victim.example> a@example.com\r\n", "5.6.0"),
        ("From: a@example.com\r\nFrom: b@example.com\r\n", "5.6.0"),
        ("From: a@example.com, b@example.com\r\n", "5.6.0"),
        ("From: ceo@victim.example\r\n", "5.7.1"),
        (
            "From: a@example.com, ceo@victim.example\r\nSender: a@example.com\r\n",
            "5.7.1",
        ),
        (
            "From: a@example.com\r\nSender: ceo@victim.example\r\n",
            "5.7.1",
        ),
    ] {
        let r = sign(headers).unwrap_err();
        assert_eq!(
            (r.code, r.status.as_str()),
            (550, status),
            "{headers:?}: {r}"
        );
    }
    let ok = sign("From: a@example.com, b@example.com\r\nSender: a@example.com\r\n").unwrap();
    assert_eq!(
        ok.signed_by,
        [("example.com".to_string(), "ed".to_string())]
    );
}

#[test]
fn expire_sets_x() {
    let dir = tempdir("expire");
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let mut cfg = config(&[("example.com", "ed", &ed, false)], false);
    cfg.dkim[0].expire = Some(crate::util::settings::DurationStr(
        std::time::Duration::from_secs(86400),
    ));
    let signed = signer_of(&cfg).unwrap().sign(MESSAGE).unwrap();
    let t = tags(&signed.headers);
    let (ts, x): (u64, u64) = (t["t"].parse().unwrap(), t["x"].parse().unwrap());
    assert_eq!(x - ts, 86400);
}

#[test]
fn long_folded_headers_and_8bit_body_verify() {
    let dir = tempdir("folded");
    let rsa = write(&dir, "rsa.pem", RSA_PKCS1);
    let signer = signer_of(&config(&[("example.com", "rsa", &rsa, false)], false)).unwrap();
    let to: Vec<String> = (0..40).map(|i| format!("user{i}@dest.test")).collect();
    let msg = format!(
        "From: alice@example.com\r\nTo: {}\r\nSubject: a very long subject line\r\n\t  that is folded   with tabs\r\n\r\nGrüße, ünïcödé body\r\n",
        to.join(",\r\n ")
    );
    let signed = signer.sign(msg.as_bytes()).unwrap();
    let table = Table::default();
    table.add(
        "example.com",
        "rsa",
        &keygen::txt_value(RSA_PKCS1.as_bytes()).unwrap(),
    );
    assert_eq!(
        verify(&table, &joined(&signed, msg.as_bytes())),
        [DkimResult::Pass]
    );
}

/// Signing cost per message (docs/benchmarks.md):
/// `cargo test --release --lib signing -- --ignored --nocapture sign_cost`.
#[test]
#[ignore = "benchmark: prints signatures/s"]
fn sign_cost() {
    let dir = tempdir("bench");
    let rsa = write(
        &dir,
        "rsa.pem",
        &keygen::generate(Algorithm::Rsa2048).unwrap(),
    );
    let ed = write(
        &dir,
        "ed.pem",
        &keygen::generate(Algorithm::Ed25519).unwrap(),
    );
    // A 5 KB message, like the relay benchmark's.
    let mut msg = MESSAGE.to_vec();
    while msg.len() < 5000 {
        msg.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n",
        );
    }
    for (name, entries) in [
        ("rsa-2048", vec![("example.com", "r", rsa.as_path(), false)]),
        ("ed25519", vec![("example.com", "e", ed.as_path(), false)]),
        (
            "rsa-2048 + ed25519",
            vec![
                ("example.com", "r", rsa.as_path(), false),
                ("example.com", "e", ed.as_path(), false),
            ],
        ),
    ] {
        let signer = signer_of(&config(&entries, false)).unwrap();
        for _ in 0..50 {
            signer.sign(&msg).unwrap();
        }
        let start = std::time::Instant::now();
        let mut n = 0u32;
        while start.elapsed() < std::time::Duration::from_secs(2) {
            assert!(!signer.sign(&msg).unwrap().headers.is_empty());
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sign_cost {name}: {:.0} messages/s on one core ({:.1} µs per message, {} bytes)",
            f64::from(n) / secs,
            secs * 1e6 / f64::from(n),
            msg.len()
        );
    }
}

/// Hands out a message a few bytes at a time, so the header/body boundary falls across reads.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn streaming_from_a_file_and_odd_chunks_verifies() {
    let dir = tempdir("stream");
    let rsa = write(&dir, "rsa.pem", RSA_PKCS1);
    let ed = write(&dir, "ed.pem", ED25519_OPENSSL);
    let signer = signer_of(&config(
        &[
            ("example.com", "rsa", &rsa, false),
            ("example.com", "ed", &ed, false),
        ],
        false,
    ))
    .unwrap();
    let table = Table::default();
    table.add(
        "example.com",
        "rsa",
        &keygen::txt_value(RSA_PKCS1.as_bytes()).unwrap(),
    );
    table.add(
        "example.com",
        "ed",
        &keygen::txt_value(ED25519_OPENSSL.as_bytes()).unwrap(),
    );
    for step in [1, 3, 7, 64] {
        let signed = signer.sign_reader(Trickle(MESSAGE, step)).unwrap();
        assert_eq!(
            verify(&table, &joined(&signed, MESSAGE)),
            [DkimResult::Pass, DkimResult::Pass],
            "chunks of {step}"
        );
    }
    // A 3 MB message from disk: several 64 KiB reads.
    let mut big = MESSAGE.to_vec();
    while big.len() < 3_000_000 {
        big.extend_from_slice(b"0123456789 abcdefghij   KLMNOPQRST\t uvwxyz .,;:!?\r\n");
    }
    let path = dir.join("big.msg");
    std::fs::write(&path, &big).unwrap();
    let signed = signer.sign_file(&path).unwrap();
    assert_eq!(
        verify(&table, &joined(&signed, &big)),
        [DkimResult::Pass, DkimResult::Pass]
    );
    let err = signer.sign_file(&dir.join("missing.msg")).unwrap_err();
    assert_eq!(err.code, 451);
}
