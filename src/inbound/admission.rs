//! Who gets one of the `limits.max_sessions` session slots, and who gives one up. Rules
//! (`reserved` = `limits.reserved_sessions`, default 10 % of `max_sessions`):
//! - A session is *pre-auth* while its client is untrusted and it has not authenticated.
//!   Pre-auth sessions hold at most `max_sessions − reserved` slots: the reserve is a share no
//!   unauthenticated client can take. Trusted networks, and sessions once they authenticate, may
//!   hold any slot.
//! - A new connection that finds no slot it may take sheds a pre-auth session to make room: the
//!   victim is closed with `421 4.3.2` and the newcomer gets its place. So a client that will log
//!   in can always get in and try, and once it has logged in nothing sheds it. Trusted clients
//!   shed too; an untrusted client on a listener without AUTH does not (it can never log in) and
//!   gets `421 4.3.2` instead.
//! - The victim, in this order: a session past `limits.preauth_timeout` (too slow to be a user
//!   logging in); then one of the most crowded network (`anvil::Network`, /24 or /48): the most
//!   pre-auth sessions older than [`SETTLED`] (parked, not users who log in within a second)
//!   plus the most new connections over the last minute (reconnect loops); then the one idle
//!   longest since its last complete command (a partial line, slowloris-style, is no activity).
//!   A session checking a password is never chosen.
//! - Under stress (more than 80 % of the slots in use) idle sessions are cut sooner: the command
//!   timeout becomes `limits.stress_command_timeout` (Postfix's `smtpd_timeout` stress value).
//! - Per-client and per-network limits (`anvil`) apply before any of this, except to trusted
//!   networks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::anvil::{Anvil, Network, SessionTicket};

/// A pre-auth session younger than this counts as a client logging in, not one parked: it does
/// not make its network a target of shedding.
pub const SETTLED: Duration = Duration::from_secs(1);

/// A pre-auth session as shedding sees it.
pub struct PreAuth {
    id: u64,
    network: Network,
    admitted: Instant,
    /// Milliseconds since `Slots::epoch` of the last complete command (or of admission).
    active_ms: AtomicU64,
    verifying: AtomicBool,
    shed: Notify,
}

impl PreAuth {
    /// Resolves once this session has been shed.
    pub async fn shed(&self) {
        self.shed.notified().await
    }
}

pub struct Slots {
    max: usize,
    reserved: usize,
    budget: Duration,
    epoch: Instant,
    in_use: AtomicUsize,
    /// Pre-auth sessions by id; a shed one is removed at once, so it is chosen only once.
    preauth: Mutex<HashMap<u64, Arc<PreAuth>>>,
    next_id: AtomicU64,
    /// Unix second of the last "session limit reached" log line (one a second at most).
    busy_logged: AtomicU64,
    /// Unix second of the last "shed" log line, and sheds since then.
    shed_logged: AtomicU64,
    shed_unlogged: AtomicU64,
}

/// One slot in use; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    preauth: Option<Arc<PreAuth>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.preauth.take() {
            self.slots.lock().remove(&p.id);
        }
        self.slots.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    /// A complete command line arrived.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, t: Instant) {
        if let Some(p) = &self.preauth {
            p.active_ms.store(self.slots.millis(t), Ordering::Release);
        }
    }

    /// A password check runs (`true`) or is over: never shed in between.
    pub fn verifying(&self, on: bool) {
        if let Some(p) = &self.preauth {
            p.verifying.store(on, Ordering::Release);
        }
    }

    /// The session authenticated: it leaves the pre-auth share and can no longer be shed.
    pub fn authenticated(&mut self) {
        if let Some(p) = self.preauth.take() {
            self.slots.lock().remove(&p.id);
        }
    }

    /// What to wait on for this session being shed (`None`: it cannot be).
    pub fn shed_notice(&self) -> Option<Arc<PreAuth>> {
        self.preauth.clone()
    }
}

/// A session's slot (`admission`) and its count against its client and network (`anvil`; none
/// for trusted networks). Both are given back when the session ends.
pub struct Place {
    pub slot: Slot,
    pub ticket: Option<SessionTicket>,
}

impl Place {
    /// The session authenticated: it leaves the pre-auth share and its network's count.
    pub fn authenticated(&mut self) {
        self.slot.authenticated();
        if let Some(t) = &mut self.ticket {
            t.authenticated();
        }
    }
}

impl Slots {
    pub fn new(max: usize, reserved: usize, budget: Duration) -> Arc<Slots> {
        let max = max.max(1);
        Arc::new(Slots {
            max,
            reserved: reserved.min(max - 1),
            budget,
            epoch: Instant::now(),
            in_use: AtomicUsize::new(0),
            preauth: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            busy_logged: AtomicU64::new(0),
            shed_logged: AtomicU64::new(0),
            shed_unlogged: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<PreAuth>>> {
        // Only bookkeeping inside: a panic elsewhere cannot leave it unusable.
        self.preauth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A slot for a new session from `network`, or `None` when it must be turned away. The
    /// flag says a pre-auth session was shed for it: its slot (and the relay-wide permit) frees
    /// once that session has closed.
    pub fn admit(
        self: &Arc<Self>,
        network: Network,
        trusted: bool,
        auth_offered: bool,
        now: Instant,
        anvil: &Anvil,
    ) -> Option<(Slot, bool)> {
        let mut map = self.lock();
        let in_use = self.in_use.load(Ordering::Acquire);
        let room = if trusted {
            in_use < self.max
        } else {
            in_use < self.max && map.len() < self.max - self.reserved
        };
        let shed = !room;
        if shed {
            if !trusted && !auth_offered {
                return None;
            }
            let victim = self.victim(&map, now, anvil)?;
            map.remove(&victim.id);
            victim.shed.notify_one();
            self.count_shed();
        }
        self.in_use.fetch_add(1, Ordering::AcqRel);
        let preauth = (!trusted).then(|| {
            let p = Arc::new(PreAuth {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                network,
                admitted: now,
                active_ms: AtomicU64::new(self.millis(now)),
                verifying: AtomicBool::new(false),
                shed: Notify::new(),
            });
            map.insert(p.id, p.clone());
            p
        });
        let slots = self.clone();
        Some((Slot { slots, preauth }, shed))
    }

    /// The pre-auth session to shed (see the module rules), if any may be.
    fn victim(
        &self,
        map: &HashMap<u64, Arc<PreAuth>>,
        now: Instant,
        anvil: &Anvil,
    ) -> Option<Arc<PreAuth>> {
        let mut crowd: HashMap<Network, u64> = map.values().map(|p| (p.network, 0)).collect();
        anvil.network_rates(&mut crowd, now);
        for p in map.values() {
            if now.saturating_duration_since(p.admitted) >= SETTLED {
                *crowd.entry(p.network).or_default() += 1;
            }
        }
        map.values()
            .filter(|p| !p.verifying.load(Ordering::Acquire))
            .max_by_key(|p| {
                let late = now.saturating_duration_since(p.admitted) >= self.budget;
                let crowd = crowd.get(&p.network).copied().unwrap_or(0);
                let idle = u64::MAX - p.active_ms.load(Ordering::Acquire);
                // Ties (equal keys) go to the older session, for a stable choice.
                (late, crowd, idle, u64::MAX - p.id)
            })
            .cloned()
    }

    fn count_shed(&self) {
        self.shed_unlogged.fetch_add(1, Ordering::AcqRel);
    }

    /// Sheds since the last "shed" log line, if one is due (at most one a second).
    pub fn log_shed(&self) -> Option<u64> {
        let now = crate::spool::now_unix();
        (self.shed_logged.swap(now, Ordering::AcqRel) != now)
            .then(|| self.shed_unlogged.swap(0, Ordering::AcqRel))
    }

    /// More than 80 % of the slots are in use.
    pub fn stressed(&self) -> bool {
        self.in_use.load(Ordering::Acquire) * 5 > self.max * 4
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Pre-auth sessions now.
    pub fn preauth(&self) -> usize {
        self.lock().len()
    }

    /// Whether to log a "session limit reached" refusal now (at most one line a second).
    pub fn log_busy(&self) -> bool {
        let now = crate::spool::now_unix();
        self.busy_logged.swap(now, Ordering::AcqRel) != now
    }
}

#[cfg(test)]
mod tests;
