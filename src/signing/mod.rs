//! DKIM signing: once per message, after DATA and before the 250, so every retry and every source
//! IP carries the same signatures. The key is chosen by the `From:` domain; every `[[dkim]]` entry
//! for that domain signs (Ed25519 and RSA side by side, or two selectors during a rotation).
//!
//! mail-auth does the canonicalisation (relaxed/relaxed) and the crypto (aws-lc-rs); this module
//! only picks keys and headers. Signing never touches the message: `sign` returns the
//! `DKIM-Signature:` lines that delivery sends in front of the spooled bytes.
//! Every message's `From:` and `Sender:` are read first (`author`): a malformed one is
//! refused, never signed. The `_checked` variants also ask whether those addresses may be used
//! by the sender's login (`inbound::sender_login`): a refusal comes before any key is chosen.
//! The `_stamped` variants add header lines of their own in front (`feedback::trace`: the trace
//! reference and `Feedback-ID`), covered by every signature made, also on an unsigned message.

pub mod author;
pub mod keygen;
mod keys;
mod mailbox;
pub mod settings;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Signature};
use memchr::memmem;

use crate::reply::Reply;
use crate::util::settings::ConfigError;
use author::{Authors, MissingFrom};
pub use keys::KeyError;
use keys::SharedKey;
pub(crate) use keys::{is_selector, load_key, parse_key};
pub use settings::{DkimKey, Signing};

/// Headers signed when present (`h=`). Absent ones are not listed, so a receiver's later
/// additions (e.g. a mailing list's List-Unsubscribe) do not break the signature.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// RSA sizes accepted (bits). All signing goes through aws-lc-rs, whose floor is 2048 bits too;
/// shorter keys would need RustCrypto's `rsa` (RUSTSEC-2023-0071, no fixed release).
pub struct Signer {
    keys: Vec<Key>,
    require: bool,
    missing_from: MissingFrom,
}

struct Key {
    /// Lower case, no trailing dot; this is `d=`.
    domain: String,
    selector: String,
    subdomains: bool,
    /// Seconds from signing to `x=`; 0 = no expiry.
    expire: u64,
    key: SharedKey,
}

/// Whether one `From:` address may be used (see `sign_checked`).
pub type FromCheck<'a> = &'a dyn Fn(&str) -> bool;

/// Header lines to add in front of the message and under every signature (`feedback::trace`),
/// made once the `From:` domain and Message-ID are known.
pub type StampFn<'a> = &'a dyn Fn(&Signed) -> String;

/// The trace reference's header (`feedback::trace` seals and opens its value).
pub const TRACE_HEADER: &str = "X-Poolrelay-Trace";
/// Google's feedback loop header (`feedback::trace` writes its value).
pub const FEEDBACK_ID_HEADER: &str = "Feedback-ID";

/// The names a stamp may add; each is listed in `h=` when the stamp has it.
const STAMP_HEADERS: &[&str] = &[TRACE_HEADER, FEEDBACK_ID_HEADER];

/// What signing added to a message.
#[derive(Debug, Default)]
pub struct Signed {
    /// CRLF-terminated `DKIM-Signature:` header lines to put before the message.
    pub headers: String,
    /// The `From:` domain (lower case), if the message has a usable one: for the log line.
    pub from_domain: Option<String>,
    /// `(d=, s=)` of each signature added.
    pub signed_by: Vec<(String, String)>,
    /// `(d=, s=)` of keys skipped because the message already carries their signature.
    pub already_signed: Vec<(String, String)>,
    /// The header section has `TLS-Required: No` (RFC 8689 §5): read in this one pass over the
    /// headers, acted on by delivery (`delivery::policy::requiretls`).
    pub tls_required_no: bool,
    /// The message's `Message-ID:` value, trimmed (for the stamp).
    pub message_id: Option<String>,
}

impl Signed {
    /// Whether the message leaves with at least one of our signatures (added now or already there).
    pub fn is_signed(&self) -> bool {
        !self.signed_by.is_empty() || !self.already_signed.is_empty()
    }

    /// One log event for the signing outcome of message `queue_id`.
    /// What signing did, for the message's "accepted" log event: `signed d/s,…`,
    /// `already signed d/s`, `unsigned: no From: domain` or `unsigned: no key for the From:
    /// domain D`.
    pub fn summary(&self) -> String {
        let list = |v: &[(String, String)]| {
            v.iter()
                .map(|(d, s)| format!("{d}/{s}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let from_domain = self.from_domain.as_deref().unwrap_or("");
        if !self.signed_by.is_empty() {
            format!("signed {}", list(&self.signed_by))
        } else if !self.already_signed.is_empty() {
            format!("already signed {}", list(&self.already_signed))
        } else if from_domain.is_empty() {
            "unsigned: no From: domain".into()
        } else {
            format!("unsigned: no key for the From: domain {from_domain}")
        }
    }
}

impl Signer {
    /// Loads and checks every `[[dkim]]` key. Each error names the key file.
    pub fn new(dkim: &[DkimKey], signing: &Signing) -> Result<Signer, Vec<ConfigError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for entry in dkim {
            let domain = normalize_domain(&entry.domain);
            let what = format!(
                "[[dkim]] domain {:?} selector {:?}",
                entry.domain, entry.selector
            );
            let mut err = |message: String| {
                errors.push(ConfigError {
                    file: entry.private_key.clone(),
                    line: None,
                    message: format!("{what}: {message}"),
                })
            };
            if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
                err("domain must be a domain name like example.com".into());
                continue;
            }
            if !is_selector(&entry.selector) {
                err("selector must be letters, digits, '-' and '.' (e.g. s2026)".into());
                continue;
            }
            match load_key(&entry.private_key) {
                Ok(key) => keys.push(Key {
                    domain,
                    selector: entry.selector.clone(),
                    subdomains: entry.subdomains,
                    expire: entry.expire.map(|d| d.0.as_secs().max(1)).unwrap_or(0),
                    key: SharedKey(Arc::new(key)),
                }),
                Err(e) => err(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(Signer {
                keys,
                require: signing.require,
                missing_from: signing.missing_from,
            })
        } else {
            Err(errors)
        }
    }

    /// Number of configured keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Signs `message` (headers + body as received, our Received first). `Err` carries the reply
    /// to send at DATA when signing is required and impossible. `Ok` with no signatures means the
    /// message goes out unsigned: the caller logs that with the queue id (`Signed::log`).
    pub fn sign(&self, message: &[u8]) -> Result<Signed, Reply> {
        self.sign_checked(message, &|_| true)
    }

    /// `sign`, refusing (`550 5.7.1`) a message with a `From:` or `Sender:` address `from_ok`
    /// rejects.
    pub fn sign_checked(&self, message: &[u8], from_ok: FromCheck<'_>) -> Result<Signed, Reply> {
        self.sign_stamped(message, from_ok, None)
    }

    /// `sign_checked`, adding `stamp`'s header lines in front (`Signed.headers`, after the
    /// signatures) and under every signature.
    pub fn sign_stamped(
        &self,
        message: &[u8],
        from_ok: FromCheck<'_>,
        stamp: Option<StampFn<'_>>,
    ) -> Result<Signed, Reply> {
        // In memory: no copy of the header section, no read buffer.
        let header_end = memmem::find(message, b"\r\n\r\n").map_or(message.len(), |p| p + 4);
        self.sign_with(&message[..header_end], message, from_ok, stamp, |_| Ok(()))
    }

    /// `sign` for a spooled message file, read in 64 KiB chunks: memory stays at the header
    /// section plus one chunk, whatever the message size. Blocking: call it from
    /// `spawn_blocking`.
    pub fn sign_file(&self, path: &Path) -> Result<Signed, Reply> {
        self.sign_file_checked(path, &|_| true)
    }

    /// `sign_file` with the `From:` check of `sign_checked`.
    pub fn sign_file_checked(&self, path: &Path, from_ok: FromCheck<'_>) -> Result<Signed, Reply> {
        self.sign_file_stamped(path, from_ok, None)
    }

    /// `sign_file_checked` with `sign_stamped`'s stamp.
    pub fn sign_file_stamped(
        &self,
        path: &Path,
        from_ok: FromCheck<'_>,
        stamp: Option<StampFn<'_>>,
    ) -> Result<Signed, Reply> {
        let file = std::fs::File::open(path).map_err(|e| {
            tracing::error!(file = %path.display(), error = %e, "dkim: cannot read message");
            read_failure()
        })?;
        self.sign_reader_checked(file, from_ok, stamp)
    }

    /// `sign` over any reader: the header section is read first (it decides the keys), then the
    /// body is streamed through one mail-auth signing stream per key.
    pub fn sign_reader(&self, reader: impl Read) -> Result<Signed, Reply> {
        self.sign_reader_checked(reader, &|_| true, None)
    }

    fn sign_reader_checked(
        &self,
        mut reader: impl Read,
        from_ok: FromCheck<'_>,
        stamp: Option<StampFn<'_>>,
    ) -> Result<Signed, Reply> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut head = Vec::with_capacity(8 * 1024);
        let header_end = loop {
            let n = read_some(&mut reader, &mut chunk)?;
            if n == 0 {
                break head.len();
            }
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&chunk[..n]);
            if let Some(p) = memmem::find(&head[from..], b"\r\n\r\n") {
                break from + p + 4;
            }
        };
        self.sign_with(&head[..header_end], &head, from_ok, stamp, |write| {
            loop {
                let n = read_some(&mut reader, &mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                write(&chunk[..n]);
            }
        })
    }

    /// Signs a message whose header section is `header`: `start` (the message's first bytes,
    /// the header section and maybe some of the body), then whatever `rest` feeds.
    fn sign_with(
        &self,
        header: &[u8],
        start: &[u8],
        from_ok: FromCheck<'_>,
        stamp: Option<StampFn<'_>>,
        rest: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), Reply>,
    ) -> Result<Signed, Reply> {
        let (mut signed, keys, mut h) = self.plan(header, from_ok)?;
        let stamped = stamp.map(|f| f(&signed)).unwrap_or_default();
        if keys.is_empty() {
            signed.headers = stamped;
            return Ok(signed);
        }
        for name in STAMP_HEADERS {
            let field = format!("{name}:").to_ascii_lowercase();
            if stamped
                .split("\r\n")
                .any(|l| l.to_ascii_lowercase().starts_with(&field))
            {
                h.push(name);
            }
        }

        let signers: Vec<_> = keys
            .iter()
            .map(|key| {
                let signer = DkimSigner::from_key(key.key.clone())
                    .domain(key.domain.clone())
                    .selector(key.selector.clone())
                    .headers(h.iter().copied())
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                if key.expire > 0 {
                    signer.expiration(key.expire)
                } else {
                    signer
                }
            })
            .collect();
        let mut streams: Vec<_> = signers.iter().map(|s| s.sign_streaming()).collect();
        for stream in &mut streams {
            // The stamp is part of the header section every signature covers.
            stream.write(stamped.as_bytes());
            stream.write(start);
        }
        rest(&mut |piece: &[u8]| {
            for stream in &mut streams {
                stream.write(piece);
            }
        })?;
        for (stream, key) in streams.into_iter().zip(keys) {
            match stream.finish() {
                Ok(sig) => {
                    signed.headers.push_str(&sig.to_header());
                    signed
                        .signed_by
                        .push((key.domain.clone(), key.selector.clone()));
                }
                Err(e) => {
                    // Not expected (the From header is there); never send a half-signed message
                    // when signing is required.
                    tracing::warn!(domain = %key.domain, selector = %key.selector, error = %e, "dkim: signing failed");
                    if self.require {
                        return Err(Reply::new(451, "4.7.0", "Temporary DKIM signing failure"));
                    }
                }
            }
        }
        signed.headers.push_str(&stamped);
        Ok(signed)
    }

    /// From the header section: the outcome so far, the keys that still have to sign, and `h=`.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        headers: &[u8],
        from_ok: FromCheck<'_>,
    ) -> Result<(Signed, Vec<&Key>, Vec<&'static str>), Reply> {
        let scan = scan(headers)?;
        if scan.authors == Authors::Missing && self.missing_from == MissingFrom::Refuse {
            return Err(author::missing());
        }
        scan.authors.check_owned(from_ok)?;
        let mut signed = Signed {
            from_domain: scan.authors.signing_domain().map(normalize_domain),
            tls_required_no: scan.tls_required_no,
            message_id: scan.message_id.clone(),
            ..Signed::default()
        };
        let Some(domain) = signed.from_domain.clone() else {
            return if self.require {
                Err(Reply::new(
                    554,
                    "5.7.1",
                    "Message has no From: address to DKIM-sign for",
                ))
            } else {
                Ok((signed, Vec::new(), Vec::new()))
            };
        };
        let keys = self.keys_for(&domain);
        if keys.is_empty() {
            return if self.require {
                Err(Reply::new(
                    554,
                    "5.7.1",
                    format!("No DKIM key for domain {domain}"),
                ))
            } else {
                Ok((signed, Vec::new(), Vec::new()))
            };
        }
        let mut todo = Vec::with_capacity(keys.len());
        for key in keys {
            let id = (key.domain.clone(), key.selector.clone());
            if scan
                .existing
                .iter()
                .any(|(d, s)| d.eq_ignore_ascii_case(&id.0) && s.eq_ignore_ascii_case(&id.1))
            {
                signed.already_signed.push(id);
            } else {
                todo.push(key);
            }
        }
        let mut h: Vec<&'static str> = SIGNED_HEADERS
            .iter()
            .copied()
            .filter(|name| scan.names.iter().any(|p| p.eq_ignore_ascii_case(name)))
            .collect();
        // Over-sign From: mail-auth signs every From present, and lists a name it did not find
        // once more, so a second From added later breaks the signature.
        h.push("From");
        Ok((signed, todo, h))
    }

    /// The keys for `domain`: entries for the domain itself, else those of the closest parent
    /// with `subdomains = true`.
    fn keys_for(&self, domain: &str) -> Vec<&Key> {
        let exact: Vec<&Key> = self.keys.iter().filter(|k| k.domain == domain).collect();
        if !exact.is_empty() {
            return exact;
        }
        let parent = self
            .keys
            .iter()
            .filter(|k| k.subdomains && domain.ends_with(&format!(".{}", k.domain)))
            .map(|k| k.domain.len())
            .max();
        match parent {
            Some(len) => self
                .keys
                .iter()
                .filter(|k| {
                    k.subdomains
                        && k.domain.len() == len
                        && domain.ends_with(&format!(".{}", k.domain))
                })
                .collect(),
            None => Vec::new(),
        }
    }
}

/// Lower case, no trailing dot, IDNs as A-labels (`xn--…`), so a UTF-8 `From:` domain
/// (SMTPUTF8) finds the key configured under either spelling, and `d=` is always ASCII.
fn read_failure() -> Reply {
    Reply::new(451, "4.3.0", "Temporary local problem reading the message")
}

fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, Reply> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "dkim: cannot read message");
                return Err(read_failure());
            }
        }
    }
}

fn normalize_domain(d: &str) -> String {
    let d = d.trim().trim_end_matches('.');
    if d.is_ascii() {
        return d.to_ascii_lowercase();
    }
    idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_lowercase())
}

/// What signing needs to know about the message's header section.
struct Scan {
    authors: Authors,
    /// Names of all header fields.
    names: Vec<String>,
    /// `(d=, s=)` of the DKIM-Signatures already present.
    existing: Vec<(String, String)>,
    tls_required_no: bool,
    message_id: Option<String>,
}

/// mail-parser reads the header section (folding, names, offsets); `author` reads `From:` and
/// `Sender:` strictly.
fn scan(message: &[u8]) -> Result<Scan, Reply> {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return Ok(Scan {
            authors: Authors::Missing,
            names: Vec::new(),
            existing: Vec::new(),
            tls_required_no: false,
            message_id: None,
        });
    };
    let mut scan = Scan {
        authors: Authors::read(message, parsed.headers())?,
        names: Vec::new(),
        existing: Vec::new(),
        tls_required_no: false,
        message_id: None,
    };
    for header in parsed.headers() {
        let name = header.name.as_str();
        if name.eq_ignore_ascii_case("DKIM-Signature") {
            let raw = message
                .get(header.offset_start as usize..header.offset_end as usize)
                .unwrap_or_default();
            if let Ok(sig) = Signature::parse(raw) {
                scan.existing
                    .push((normalize_domain(&sig.d), sig.s.trim().to_string()));
            }
        }
        if name.eq_ignore_ascii_case("TLS-Required") {
            let raw = message
                .get(header.offset_start as usize..header.offset_end as usize)
                .unwrap_or_default();
            scan.tls_required_no |= is_tls_required_no(raw);
        }
        if name.eq_ignore_ascii_case("Message-ID") && scan.message_id.is_none() {
            let raw = message
                .get(header.offset_start as usize..header.offset_end as usize)
                .unwrap_or_default();
            let id = String::from_utf8_lossy(raw).trim().to_string();
            scan.message_id = (!id.is_empty()).then_some(id);
        }
        scan.names.push(name.to_string());
    }
    Ok(scan)
}

/// Whether a `TLS-Required:` field value says `No` (its only defined value; case-insensitive,
/// folding whitespace allowed). Read here, in signing's one pass over the headers.
pub fn is_tls_required_no(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"no")
}

#[cfg(test)]
mod tests;
