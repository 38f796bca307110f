//! AUTH: the command, PLAIN / LOGIN decoding (RFC 4616, draft-murchison-sasl-login) and the
//! per-address failure counter that locks out password guessers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::session::{End, Flow, Line, Session};
use crate::reply::Reply;

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

/// An IPv6 host usually holds a whole /64 and can pick a fresh address per attempt: count
/// failures per /64 there, per address for IPv4.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

/// AUTH failures per client address (per /64 for IPv6). After `max` failures within `window`
/// the address is locked out for `window`.
pub struct AuthGuard {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// One password check at a time per client: otherwise parallel sessions all pass the
    /// lockout check before the first failure is counted.
    turns: Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>,
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
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other password check from this client is running.
    pub async fn turn(&self, ip: IpAddr) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().expect("auth turns lock");
            if turns.len() >= MAX_TRACKED {
                // Only the map holds an idle client's lock.
                turns.retain(|_, l| Arc::strong_count(l) > 1);
            }
            turns.entry(client_key(ip)).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub fn is_locked(&self, ip: IpAddr) -> bool {
        let ip = client_key(ip);
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
        let ip = client_key(ip);
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

/// The AUTH command: only over TLS, PLAIN and LOGIN, verification off the async workers.
impl Session {
    /// Reads one SASL response line; `None` when the client cancelled or sent garbage (already
    /// answered).
    async fn sasl_line(&mut self, prompt: &str) -> Result<Option<Vec<u8>>, End> {
        self.send(Reply::new(334, "", prompt))?;
        let line = match self.next_line().await? {
            Line::Cmd(l) => l,
            Line::Eof => return Err(End),
            Line::Bad(_) | Line::TooLong => {
                self.send(Reply::new(501, "5.5.2", "Invalid AUTH response"))?;
                return Ok(None);
            }
        };
        if line == b"*" {
            self.send(Reply::new(501, "5.0.0", "Authentication cancelled"))?;
            return Ok(None);
        }
        self.decode_sasl(&String::from_utf8_lossy(&line))
    }

    fn decode_sasl(&mut self, text: &str) -> Result<Option<Vec<u8>>, End> {
        match decode_b64(text) {
            Some(v) => Ok(Some(v)),
            None => {
                self.send(Reply::new(501, "5.5.2", "Invalid base64 data"))?;
                Ok(None)
            }
        }
    }

    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        if !self.auth_offered() {
            return self.send(Reply::new(502, "5.5.1", "AUTH not available"));
        }
        if self.tls.is_none() {
            return self.send(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if !self.esmtp {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.user.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return self.send(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.ctx.guard.is_locked(self.peer) {
            return self.close_with(lockout_reply());
        }
        let (user, password) = if mechanism == AUTH_PLAIN {
            let raw = if initial.is_empty() {
                self.sasl_line("").await?
            } else {
                self.decode_sasl(&initial)?
            };
            let Some(raw) = raw else { return Ok(()) };
            parse_plain(&raw).unwrap_or_default()
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.sasl_line("VXNlcm5hbWU6").await?
            } else {
                self.decode_sasl(&initial)?
            };
            let Some(user) = user else { return Ok(()) };
            let Some(pass) = self.sasl_line("UGFzc3dvcmQ6").await? else {
                return Ok(());
            };
            (
                String::from_utf8(user).unwrap_or_default(),
                String::from_utf8(pass).unwrap_or_default(),
            )
        } else {
            return self.send(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
        };
        let users = self.ctx.users.clone().ok_or(End)?;
        let ctx = self.ctx.clone();
        let _turn = ctx.guard.turn(self.peer).await;
        if ctx.guard.is_locked(self.peer) {
            return self.close_with(lockout_reply());
        }
        // Never shed while the password is checked (`admission`); not while waiting for the
        // turn either, or parallel guesses from one client could park sessions there.
        self.place.slot.verifying(true);
        let ok = !user.is_empty() && !password.is_empty() && users.check(&user, &password).await;
        self.place.slot.verifying(false);
        if ok {
            tracing::info!(client = %self.peer, user = %user, "authenticated");
            self.place.authenticated();
            self.user = Some(user);
            return self.send(Reply::new(235, "2.7.0", "Authentication successful"));
        }
        match self.ctx.guard.fail(self.peer) {
            Failure::Counted => {
                tracing::info!(client = %self.peer, "authentication failed");
                self.send(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))
            }
            Failure::LockedOut => {
                tracing::warn!(
                    client = %self.peer,
                    failures = self.settings().access.auth_max_failures,
                    lockout = ?self.settings().access.auth_lockout.0,
                    "AUTH lockout: too many failed attempts from this address"
                );
                self.close_with(lockout_reply())
            }
        }
    }
}

fn lockout_reply() -> Reply {
    Reply::new(
        454,
        "4.7.0",
        "Too many authentication failures, try again later",
    )
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

    /// One IPv6 host owns a whole /64: walking through it must not reset the count.
    #[test]
    fn ipv6_lockout_covers_the_64() {
        let g = AuthGuard::new(3, Duration::from_secs(60));
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(g.fail(ip("2001:db8:1:2::1")), Failure::Counted);
        assert_eq!(g.fail(ip("2001:db8:1:2::2")), Failure::Counted);
        assert_eq!(g.fail(ip("2001:db8:1:2:ffff::3")), Failure::LockedOut);
        assert!(g.is_locked(ip("2001:db8:1:2::99")));
        assert!(!g.is_locked(ip("2001:db8:1:3::1")));
    }
}
