//! DKIM: the TXT record at `selector._domainkey.domain` of each `[[dkim]]` key exists, is a
//! valid key record (mail-auth's parser, the one receivers like Stalwart use) and publishes the
//! public half of the configured private key — RSA or Ed25519. A mismatch means every message
//! signed with that selector fails DKIM.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;

use super::dns::{self, Found};
use super::inputs::DkimKey;
use super::report::Check;
use crate::signing::keygen;

/// `k=` and the decoded `p=` of a DKIM key record (RFC 6376 §3.6.1 tag list). mail-auth parses
/// the record into a verifying key that cannot be compared, so the two tags are read here.
fn key_tags(record: &str) -> Option<(String, Vec<u8>)> {
    let mut k = "rsa".to_string();
    let mut p = None;
    for tag in record.split(';') {
        let Some((name, value)) = tag.split_once('=') else {
            if tag.trim().is_empty() {
                continue;
            }
            return None;
        };
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "k" => k = value.to_ascii_lowercase(),
            "p" => p = Some(B64.decode(value.as_bytes()).ok()?),
            _ => {}
        }
    }
    Some((k, p?))
}

/// RSA public keys are published as SubjectPublicKeyInfo, sometimes as bare PKCS#1; aws-lc-rs
/// reads both.
fn rsa_key(der: &[u8]) -> Option<aws_lc_rs::rsa::PublicKey> {
    aws_lc_rs::rsa::PublicKey::from_der(der).ok()
}

/// Same RSA key: the canonical PKCS#1 encodings (modulus and exponent) compared.
fn same_rsa_key(a: &[u8], b: &[u8]) -> bool {
    matches!((rsa_key(a), rsa_key(b)), (Some(x), Some(y)) if x.as_ref() == y.as_ref())
}

/// Why `p=` cannot be a key of type `k=` (mail-auth only decodes RSA keys when verifying).
fn unusable_key(k: &str, p: &[u8]) -> Option<String> {
    match k {
        "rsa" if rsa_key(p).is_none() => Some("p= is not an RSA public key".into()),
        "ed25519" if p.len() != 32 => {
            Some(format!("p= is {} bytes, an Ed25519 key is 32", p.len()))
        }
        _ => None,
    }
}

pub async fn check(resolver: &TokioResolver, key: &DkimKey) -> Check {
    let domain = dns::norm(&key.domain);
    let name = format!("{}._domainkey.{domain}", key.selector);
    let about = key.selector.clone();
    let expected = match std::fs::read(&key.private_key)
        .map_err(|e| format!("cannot read {}: {e}", key.private_key.display()))
        .and_then(|pem| keygen::txt_value(&pem).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                "dkim",
                format!("private key unusable: {e}"),
                "fix private_key in this [[dkim]] entry (`poolrelay dkim keygen` makes a new one)",
            )
            .about(about);
        }
    };
    let publish = format!(
        "publish {}",
        keygen::dns_record(&domain, &key.selector, &expected)
    );
    let Some((want_k, want_p)) = key_tags(&expected) else {
        return Check::fail("dkim", "cannot derive the public key", publish).about(about);
    };
    let records = match dns::txt(resolver, &name).await {
        Found::Error(e) => return Check::warn("dkim", format!("lookup failed: {e}")).about(about),
        Found::NoData | Found::NxDomain => {
            return Check::fail("dkim", format!("no TXT record at {name}"), publish).about(about);
        }
        Found::Records(r) => r,
    };
    let mut problems = Vec::new();
    for text in &records {
        if let Err(e) = DomainKey::parse(text.as_bytes()) {
            problems.push(format!("malformed key record ({e}): \"{}\"", short(text)));
            continue;
        }
        let Some((k, p)) = key_tags(text) else {
            problems.push(format!("malformed key record: \"{}\"", short(text)));
            continue;
        };
        if let Some(why) = unusable_key(&k, &p) {
            problems.push(format!("malformed key record ({why}): \"{}\"", short(text)));
        } else if k != want_k {
            problems.push(format!("published k={k}, the configured key is {want_k}"));
        } else if p == want_p || (k == "rsa" && same_rsa_key(&p, &want_p)) {
            return Check::pass(
                "dkim",
                format!("{name}: k={k}, matches {}", key.private_key.display()),
            )
            .about(about);
        } else {
            problems.push(format!(
                "{name} publishes another {k} key than {}",
                key.private_key.display()
            ));
        }
    }
    Check::fail("dkim", problems.join("; "), publish).about(about)
}

/// A record shortened for a one-line message.
fn short(text: &str) -> String {
    if text.chars().count() <= 60 {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(60).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let (k, p) = key_tags("v=DKIM1; k=ed25519; p=AAEC Aw==").unwrap();
        assert_eq!((k.as_str(), p), ("ed25519", vec![0, 1, 2, 3]));
        assert_eq!(key_tags("v=DKIM1; p=AAEC").unwrap().0, "rsa");
        assert!(key_tags("v=DKIM1; garbage").is_none());
        assert!(key_tags("v=DKIM1; p=!!").is_none());
    }

    #[test]
    fn rsa_encodings_compare_equal() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let pem = keygen::generate(keygen::Algorithm::Rsa2048).unwrap();
        let (_, spki) = key_tags(&keygen::txt_value(pem.as_bytes()).unwrap()).unwrap();
        let public = rsa_key(&spki).unwrap();
        // The bare PKCS#1 form is not the SPKI bytes, and still the same key.
        let pkcs1 = public.as_ref().to_vec();
        assert_ne!(pkcs1, spki);
        assert!(same_rsa_key(&spki, &pkcs1));
        let again: PublicKeyX509Der = public.as_der().unwrap();
        assert!(same_rsa_key(again.as_ref(), &spki));
        assert!(!same_rsa_key(&spki, b"not a key"));
        let other = keygen::generate(keygen::Algorithm::Rsa2048).unwrap();
        let (_, other) = key_tags(&keygen::txt_value(other.as_bytes()).unwrap()).unwrap();
        assert!(!same_rsa_key(&spki, &other));
    }
}
