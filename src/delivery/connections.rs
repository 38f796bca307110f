//! Idle outbound sessions kept for reuse, per (source IP, destination). The source is chosen per
//! message first (`Pools::pick`); only then is a session of that source reused, so reuse never
//! decides which IP sends. Sessions idle past `idle_timeout` are closed by `reap`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Session;
use crate::pool::Source;

/// (source label, destination key).
type Key = (String, String);

pub struct Connections {
    ttl: Duration,
    idle: Mutex<HashMap<Key, Vec<(Session, Instant)>>>,
}

impl Connections {
    pub fn new(ttl: Duration) -> Connections {
        Connections {
            ttl,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// An idle session from `source` to `destination` that `fits` (the delivery's TLS
    /// requirement), and how long it sat idle; the others stay for other deliveries.
    pub fn take(
        &self,
        source: &Source,
        destination: &str,
        fits: impl Fn(&Session) -> bool,
    ) -> Option<(Session, Duration)> {
        let key = (source.label(), destination.to_string());
        let mut map = self.idle.lock().expect("lock");
        let list = map.get_mut(&key)?;
        // Expired ones go first, whatever they fit.
        let (old, keep): (Vec<_>, Vec<_>) = list
            .drain(..)
            .partition(|(_, since)| since.elapsed() >= self.ttl);
        *list = keep;
        for (s, _) in old {
            tokio::spawn(s.quit());
        }
        let i = list.iter().rposition(|(s, _)| fits(s))?;
        let (s, since) = list.remove(i);
        Some((s, since.elapsed()))
    }

    /// Keeps the session for reuse; hands it back when reuse is off.
    pub fn put(&self, destination: &str, session: Session) -> Option<Session> {
        if self.ttl.is_zero() {
            return Some(session);
        }
        let key = (session.source.label(), destination.to_string());
        self.idle
            .lock()
            .expect("lock")
            .entry(key)
            .or_default()
            .push((session, Instant::now()));
        None
    }

    /// Closes sessions idle for `idle_timeout`.
    pub fn reap(&self) {
        let mut expired = Vec::new();
        {
            let mut map = self.idle.lock().expect("lock");
            for list in map.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| since.elapsed() >= self.ttl);
                *list = keep;
                expired.extend(old.into_iter().map(|(s, _)| s));
            }
            map.retain(|_, l| !l.is_empty());
        }
        for s in expired {
            tokio::spawn(s.quit());
        }
    }
}
