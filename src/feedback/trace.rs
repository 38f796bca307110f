//! The trace header poolrelay stamps on every message it signs, and Google's `Feedback-ID`.
//!
//! Rules:
//! - `X-Poolrelay-Trace: v1.<key id>.<base64url(nonce ‖ AES-256-GCM(facts))>`: the queue id,
//!   login, sender domain, time and a hash of the Message-ID, sealed with a key kept in the
//!   state store (the farm's key with `[cluster]`). Recipients learn nothing from it; nobody
//!   without the key can make or alter one, so a forged report cannot frame another customer.
//! - Both headers go in front of the message and are covered by every DKIM signature.
//! - Keys rotate by adding: the newest seals, every known key opens (by its id). A stored
//!   key that does not read stops the start (`service`); a key made because the store had
//!   none is logged with its id (never the key): earlier references will not open.
//! - In a report, the first (topmost) trace header of the original counts, and only when the
//!   Message-ID hash it seals is the original's Message-ID's: with stamping on, ours is
//!   prepended above anything the client wrote; with it off (`trace = false`, or turned off by
//!   a reload) a client's copy of someone else's header can be topmost, and the Message-ID
//!   check passes it over. A header sealed without a Message-ID cannot be checked so.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use super::settings::{FeedbackIdField, Settings};
/// Signing lists these names in `h=`, so they are signing's.
pub use crate::signing::{FEEDBACK_ID_HEADER, TRACE_HEADER};
const VERSION: &str = "v1";
/// Binds a sealed reference to its purpose (no other use of the key can be replayed here).
const AAD: &[u8] = b"poolrelay trace v1";

/// What a trace header says about the message it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(rename = "q")]
    pub queue_id: String,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<String>,
    /// Unix seconds the message was accepted.
    #[serde(rename = "t")]
    pub at: u64,
    /// `message_id_hash` of the Message-ID, if the message has one.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// Why a trace header did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forged {
    /// Not `v1.<id>.<data>` or not base64.
    Malformed,
    /// Sealed with a key this relay (or farm) does not know.
    UnknownKey,
    /// The key is ours but the data was altered (or made without it).
    Altered,
}

impl std::fmt::Display for Forged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forged::Malformed => "malformed trace reference",
            Forged::UnknownKey => "trace reference sealed with an unknown key",
            Forged::Altered => "trace reference fails authentication (altered or forged)",
        })
    }
}

/// One AES-256-GCM key and its id (8 hex digits of its SHA-256).
pub struct Key {
    id: String,
    aead: LessSafeKey,
}

impl Key {
    /// From 32 secret bytes.
    pub fn new(secret: &[u8]) -> Option<Key> {
        let unbound = UnboundKey::new(&AES_256_GCM, secret).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
        let id = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Key {
            id,
            aead: LessSafeKey::new(unbound),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// 32 fresh random bytes for a new key.
pub fn new_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    aws_lc_rs::rand::fill(&mut s).expect("system random");
    s
}

/// The keys in use: `current` seals, all open.
pub struct Keys {
    current: Key,
    older: Vec<Key>,
}

impl Keys {
    pub fn new(current: Key, older: Vec<Key>) -> Keys {
        Keys { current, older }
    }

    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// The header value (without the name) for `facts`.
    pub fn seal(&self, facts: &Facts) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system random");
        let mut data = serde_json::to_vec(facts).expect("facts serialize");
        self.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .expect("AES-GCM seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{VERSION}.{}.{}", self.current.id, B64.encode(out))
    }

    /// Opens a header value (folding whitespace allowed anywhere).
    pub fn open(&self, value: &str) -> Result<Facts, Forged> {
        let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        let mut parts = compact.splitn(3, '.');
        let (Some(VERSION), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Forged::Malformed);
        };
        let raw = B64.decode(data).map_err(|_| Forged::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(Forged::Malformed);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.older)
            .find(|k| k.id == id)
            .ok_or(Forged::UnknownKey)?;
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Forged::Malformed)?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(AAD), &mut sealed)
            .map_err(|_| Forged::Altered)?;
        serde_json::from_slice(plain).map_err(|_| Forged::Altered)
    }
}

/// A short, fixed-size digest of a Message-ID (angle brackets and case of the domain aside):
/// what the trace and the delivery records keep instead of the id itself.
pub fn message_id_hash(message_id: &str) -> String {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let id = match id.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => id.to_string(),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    B64.encode(&digest.as_ref()[..12])
}

/// What the stamp knows about one message.
pub struct Stamp<'a> {
    pub queue_id: &'a str,
    pub login: Option<&'a str>,
    /// The `From:` domain, else MAIL FROM's.
    pub sender_domain: Option<&'a str>,
    pub message_id: Option<&'a str>,
    /// The pool `[[pool_rule]]` picks.
    pub pool: Option<&'a str>,
    pub at: u64,
}

/// The CRLF-terminated header lines for one message (trace, then `Feedback-ID` when
/// configured), folded under 78 columns.
pub fn header_lines(keys: &Keys, settings: &Settings, hostname: &str, s: &Stamp<'_>) -> String {
    let facts = Facts {
        queue_id: s.queue_id.to_string(),
        login: s.login.map(str::to_string),
        sender_domain: s.sender_domain.map(str::to_ascii_lowercase),
        at: s.at,
        message_id: s.message_id.map(message_id_hash),
    };
    let mut out = fold(TRACE_HEADER, &keys.seal(&facts));
    if let Some(id) = feedback_id(settings, hostname, s) {
        out.push_str(&format!("{FEEDBACK_ID_HEADER}: {id}\r\n"));
    }
    out
}

/// `a:b:c:SenderId`; `None` when no field is configured.
pub fn feedback_id(settings: &Settings, hostname: &str, s: &Stamp<'_>) -> Option<String> {
    if settings.feedback_id.is_empty() {
        return None;
    }
    let mut fields: Vec<String> = settings
        .feedback_id
        .iter()
        .map(|f| {
            let v = match f {
                FeedbackIdField::Login => s.login,
                FeedbackIdField::SenderDomain => s.sender_domain,
                FeedbackIdField::Pool => s.pool,
            };
            clean(v.unwrap_or("-"))
        })
        .collect();
    fields.push(clean(settings.sender_id.as_deref().unwrap_or(hostname)));
    Some(fields.join(":"))
}

/// A Feedback-ID field: no ':' (the separator), no whitespace or controls, printable ASCII.
fn clean(v: &str) -> String {
    let c: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != ':' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if c.is_empty() { "-".into() } else { c }
}

/// `Name: value` with the value split into 72-column pieces on folded lines.
fn fold(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut rest = value;
    let mut width = 78 - name.len() - 2;
    while !rest.is_empty() {
        let n = rest.len().min(width);
        out.push(' ');
        out.push_str(&rest[..n]);
        rest = &rest[n..];
        if !rest.is_empty() {
            out.push_str("\r\n");
        }
        width = 72;
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(Key::new(&new_secret()).unwrap(), Vec::new())
    }

    fn facts() -> Facts {
        Facts {
            queue_id: "Q123".into(),
            login: Some("alice".into()),
            sender_domain: Some("shop.test".into()),
            at: 1_790_000_000,
            message_id: Some(message_id_hash("<a@B.test>")),
        }
    }

    #[test]
    fn sealed_reference_opens_and_hides_the_login() {
        let k = keys();
        let v = k.seal(&facts());
        assert!(!v.contains("alice") && !v.contains("shop.test"), "{v}");
        assert_eq!(k.open(&v).unwrap(), facts());
        // Folded as in a header: still opens.
        let folded = fold(TRACE_HEADER, &v);
        let value = folded.split_once(':').unwrap().1;
        assert_eq!(k.open(value).unwrap(), facts());
    }

    #[test]
    fn altered_or_foreign_references_are_refused() {
        let k = keys();
        let v = k.seal(&facts());
        // Flip one character of the sealed data.
        let mut bytes = v.clone().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(k.open(&altered), Err(Forged::Altered));
        // Same key id, other secret: as if made without our key.
        let other = keys().seal(&facts());
        assert_eq!(k.open(&other), Err(Forged::UnknownKey));
        let (_, rest) = other.split_once('.').unwrap();
        let (_, data) = rest.split_once('.').unwrap();
        let spoofed = format!("v1.{}.{data}", k.current_id());
        assert_eq!(k.open(&spoofed), Err(Forged::Altered));
        for extra in ["x", "xy", "xyz", "A"] {
            assert!(k.open(&format!("{v}{extra}")).is_err(), "{v}{extra}");
        }
        assert_eq!(k.open("v1.x"), Err(Forged::Malformed));
        assert_eq!(k.open("v1.00000000.!!!"), Err(Forged::Malformed));
    }

    #[test]
    fn older_keys_still_open() {
        let old = new_secret();
        let k1 = Keys::new(Key::new(&old).unwrap(), Vec::new());
        let v = k1.seal(&facts());
        let k2 = Keys::new(
            Key::new(&new_secret()).unwrap(),
            vec![Key::new(&old).unwrap()],
        );
        assert_eq!(k2.open(&v).unwrap(), facts());
    }

    #[test]
    fn feedback_id_in_googles_format() {
        let settings = Settings {
            feedback_id: vec![
                FeedbackIdField::Login,
                FeedbackIdField::SenderDomain,
                FeedbackIdField::Pool,
            ],
            sender_id: Some("poolrelay".into()),
            ..Settings::default()
        };
        let s = Stamp {
            queue_id: "Q",
            login: Some("a:b c"),
            sender_domain: Some("shop.test"),
            message_id: None,
            pool: None,
            at: 0,
        };
        assert_eq!(
            feedback_id(&settings, "relay.test", &s).unwrap(),
            "a-b-c:shop.test:-:poolrelay"
        );
        let lines = header_lines(&keys(), &settings, "relay.test", &s);
        assert!(lines.lines().all(|l| l.len() <= 78), "{lines}");
        assert!(lines.ends_with("Feedback-ID: a-b-c:shop.test:-:poolrelay\r\n"));
    }
}
