//! AUTH PLAIN / LOGIN decoding (RFC 4616, draft-murchison-sasl-login) and the per-address
//! failure counter that locks out password guessers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Decodes one base64 SASL line. `=` is the RFC 4954 empty response.
pub fn decode_b64(line: &str) -> Option<Vec<u8>> {
    if line == "=" {
        return Some(Vec::new());
    }
    STANDARD.decode(line.trim()).ok()
}

/// `authzid NUL authcid NUL passwd`; an authzid other than empty or the user itself is refused
/// (no proxy authorisation).
pub fn parse_plain(raw: &[u8]) -> Option<(String, String)> {
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() || user.is_empty() || pass.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != user {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AUTH failures per client address. After `max` failures within `window` the address is locked
/// out for `window`.
pub struct AuthGuard {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// What a failure did.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Counted,
    /// This failure started a lockout (log it once).
    LockedOut,
}

const MAX_TRACKED: usize = 100_000;

impl AuthGuard {
    pub fn new(max: u32, window: Duration) -> AuthGuard {
        AuthGuard {
            max: max.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_locked(&self, ip: IpAddr) -> bool {
        let mut map = self.entries.lock().expect("auth guard lock");
        match map.get(&ip).and_then(|e| e.locked_until) {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                map.remove(&ip);
                false
            }
            None => false,
        }
    }

    pub fn fail(&self, ip: IpAddr) -> Failure {
        let now = Instant::now();
        let mut map = self.entries.lock().expect("auth guard lock");
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, e| {
                e.locked_until.is_some_and(|u| now < u) || now.duration_since(e.since) < window
            });
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(e.since) >= self.window {
            e.failures = 0;
            e.since = now;
            e.locked_until = None;
        }
        e.failures += 1;
        if e.failures >= self.max && e.locked_until.is_none() {
            e.locked_until = Some(now + self.window);
            Failure::LockedOut
        } else {
            Failure::Counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        assert_eq!(
            parse_plain(b"\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0alice\0"), None);
        assert_eq!(parse_plain(b"\0alice\0pw\0x"), None);
        assert_eq!(decode_b64("AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert_eq!(decode_b64("=").unwrap(), b"");
        assert!(decode_b64("!!").is_none());
    }

    #[test]
    fn lockout_after_max_failures() {
        let g = AuthGuard::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!g.is_locked(ip));
        assert_eq!(g.fail(ip), Failure::Counted);
        assert_eq!(g.fail(ip), Failure::Counted);
        assert_eq!(g.fail(ip), Failure::LockedOut);
        assert!(g.is_locked(ip));
        assert_eq!(g.fail(ip), Failure::Counted);
        assert!(!g.is_locked("127.0.0.8".parse().unwrap()));
    }
}
