//! Refusals on the admin listener (guard refusals, 404/405/413/…, 503 at the connection caps)
//! summed per client, so no request stream can grow the log faster than a fixed bound. Rules:
//! 1. A client is its IPv4 address or its IPv6 /64; a table holds at most [`CLIENTS`] of them.
//! 2. A client gets at most one line per minute: its first refusal at once, later ones summed
//!    into the next line ("N refused requests from C in the last S s, last: …").
//! 3. Every client-chosen field in a line (method, path, Host) is cut to [`FIELD`] bytes and
//!    escaped (`text.rs`), so a line has a fixed maximum size.
//! 4. At most [`LINES_PER_MINUTE`] client lines per minute over all clients; past that, counts
//!    wait in the table (oldest first at the next flush).
//! 5. A client that finds the table full (every entry still has a count to write or wrote one
//!    less than a minute ago) is summed into one aggregate line, also at most once a minute.
//!
//! So the log gains at most `LINES_PER_MINUTE + 1` lines of bounded size per minute, whatever
//! arrives. Pure over `Instant`s; `serve.rs` logs what it returns.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::text::Escaped;

pub const CLIENTS: usize = 256;
pub const LINES_PER_MINUTE: u32 = 20;
/// Bytes kept of each client-chosen field.
pub const FIELD: usize = 100;
const MINUTE: Duration = Duration::from_secs(60);

/// One line to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `None`: the aggregate of clients past the table.
    pub client: Option<IpAddr>,
    pub count: u64,
    /// Seconds the count covers.
    pub seconds: u64,
    pub last: String,
}

impl Line {
    pub fn log(&self) {
        let (n, s, last) = (self.count, self.seconds, &self.last);
        match self.client {
            Some(c) => tracing::info!(
                client = %c,
                refused = n,
                "admin: {n} refused requests from {c} in the last {s} s, last: {last}"
            ),
            None => tracing::warn!(
                refused = n,
                "admin: {n} refused requests from clients past the {CLIENTS}-client table in the last {s} s, last: {last}"
            ),
        }
    }
}

#[derive(Debug)]
struct Entry {
    pending: u64,
    /// Start of what `pending` covers.
    since: Instant,
    /// When the client's last line was written.
    logged: Option<Instant>,
    last: String,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            pending: 0,
            since: now,
            logged: None,
            last: String::new(),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.pending > 0 && self.logged.is_none_or(|t| now.duration_since(t) >= MINUTE)
    }

    fn take(&mut self, client: Option<IpAddr>, now: Instant) -> Line {
        let line = Line {
            client,
            count: self.pending,
            seconds: now.duration_since(self.since).as_secs(),
            last: std::mem::take(&mut self.last),
        };
        self.pending = 0;
        self.logged = Some(now);
        self.since = now;
        line
    }
}

#[derive(Debug)]
pub struct Tally {
    clients: HashMap<IpAddr, Entry>,
    overflow: Entry,
    window: Instant,
    lines: u32,
}

impl Tally {
    pub fn new(now: Instant) -> Tally {
        Tally {
            clients: HashMap::new(),
            overflow: Entry::new(now),
            window: now,
            lines: 0,
        }
    }

    /// Counts one refusal of `client` described by `last` (built with [`describe`]); returns the
    /// line to log now, if any.
    pub fn refused(&mut self, client: IpAddr, last: String, now: Instant) -> Option<Line> {
        let key = crate::inbound::anvil::client_key(client);
        if !self.clients.contains_key(&key) && self.clients.len() >= CLIENTS {
            self.clients.retain(|_, e| {
                e.pending > 0 || e.logged.is_some_and(|t| now.duration_since(t) < MINUTE)
            });
        }
        let entry = if let Some(e) = self.clients.get_mut(&key) {
            e
        } else if self.clients.len() < CLIENTS {
            self.clients.entry(key).or_insert_with(|| Entry::new(now))
        } else {
            let o = &mut self.overflow;
            if o.pending == 0 {
                o.since = now;
            }
            o.pending += 1;
            o.last = format!("{client}: {last}");
            return o.due(now).then(|| o.take(None, now));
        };
        if entry.pending == 0 {
            entry.since = now;
        }
        entry.pending += 1;
        entry.last = last;
        if !entry.due(now) || !budget(&mut self.window, &mut self.lines, now) {
            return None;
        }
        Some(entry.take(Some(key), now))
    }

    /// Lines due now (oldest counts first, within the budget); forgets quiet clients.
    pub fn flush(&mut self, now: Instant) -> Vec<Line> {
        let mut due: Vec<(IpAddr, Instant)> = self
            .clients
            .iter()
            .filter(|(_, e)| e.due(now))
            .map(|(k, e)| (*k, e.since))
            .collect();
        due.sort_by_key(|d| d.1);
        let mut out = Vec::new();
        for (key, _) in due {
            if !budget(&mut self.window, &mut self.lines, now) {
                break;
            }
            if let Some(e) = self.clients.get_mut(&key) {
                out.push(e.take(Some(key), now));
            }
        }
        if self.overflow.due(now) {
            out.push(self.overflow.take(None, now));
        }
        self.clients.retain(|_, e| {
            e.pending > 0 || e.logged.is_some_and(|t| now.duration_since(t) < MINUTE)
        });
        out
    }
}

/// Takes one line from the minute's budget (rule 4).
fn budget(window: &mut Instant, lines: &mut u32, now: Instant) -> bool {
    if now.duration_since(*window) >= MINUTE {
        *window = now;
        *lines = 0;
    }
    if *lines >= LINES_PER_MINUTE {
        return false;
    }
    *lines += 1;
    true
}

/// `method path (Host h)`, each client-chosen field cut and escaped (rule 3).
pub fn describe(method: &str, path: &str, host: Option<&[u8]>) -> String {
    let mut s = format!("{} {}", Escaped(&cut(method)), Escaped(&cut(path)));
    if let Some(h) = host {
        let h = String::from_utf8_lossy(h);
        let _ = write!(s, " (Host {})", Escaped(&cut(&h)));
    }
    s
}

/// The first [`FIELD`] bytes of `s` (at a character boundary), `…` when cut.
fn cut(s: &str) -> String {
    if s.len() <= FIELD {
        return s.to_string();
    }
    let mut end = FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4((0x7f00_0000 + n).into())
    }

    #[test]
    fn one_line_per_client_per_minute_with_the_count() {
        let t0 = Instant::now();
        let mut t = Tally::new(t0);
        let first = t.refused(ip(9), "401 GET /a".into(), t0).unwrap();
        assert_eq!((first.count, first.client), (1, Some(ip(9))));
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(t.refused(ip(9), format!("401 GET /{i}"), at), None);
        }
        assert!(t.flush(t0 + Duration::from_secs(30)).is_empty());
        let lines = t.flush(t0 + Duration::from_secs(61));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].count, 1000);
        assert_eq!(lines[0].last, "401 GET /999");
        // Nothing new: nothing written, and the client is forgotten after a quiet minute.
        assert!(t.flush(t0 + Duration::from_secs(200)).is_empty());
        assert!(t.clients.is_empty());
    }

    #[test]
    fn lines_per_minute_bounded_and_the_table_too() {
        let t0 = Instant::now();
        let mut t = Tally::new(t0);
        let mut lines = 0;
        for n in 0..10_000u32 {
            lines += usize::from(t.refused(ip(n), "404 GET /x".into(), t0).is_some());
        }
        lines += t.flush(t0 + Duration::from_secs(1)).len();
        assert_eq!(lines, LINES_PER_MINUTE as usize + 1);
        assert_eq!(t.clients.len(), CLIENTS);
        // The next minute writes the next clients' counts, oldest first.
        let next = t.flush(t0 + Duration::from_secs(61));
        assert_eq!(next.len(), LINES_PER_MINUTE as usize + 1);
        assert!(
            next[..20]
                .iter()
                .all(|l| l.count == 1 && l.client.is_some())
        );
        assert_eq!((next[20].client, next[20].count), (None, 10_000 - 256 - 1));
    }

    #[test]
    fn fields_cut_and_escaped() {
        let long = format!("/{}\n\u{202e}", "é".repeat(300));
        let d = describe("BREW", &long, Some(b"evil\r\n.example"));
        assert!(d.len() < 3 * FIELD, "{d}");
        assert!(!d.chars().any(crate::text::is_unsafe), "{d}");
        assert!(d.ends_with("(Host evil\\x0d\\x0a.example)"), "{d}");
    }
}
