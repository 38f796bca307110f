//! Who gets one of the `limits.max_sessions` session slots. Rules (`reserved` =
//! `limits.reserved_sessions`, default 10 % of `max_sessions`):
//! - Clients in trusted networks may take any free slot.
//! - Other clients may take a slot while fewer than `max_sessions − reserved` are in use.
//! - Past that, on a listener that offers AUTH, another client gets one of the lower half of the
//!   reserve *on probation*: it must authenticate within `limits.stress_command_timeout` or is
//!   closed with `421 4.7.0`. So a flood of clients that never authenticate cannot lock out
//!   users who do, and the upper half of the reserve (rounded up) stays for trusted networks.
//! - Under stress (more than 80 % of the slots in use) idle sessions are cut sooner: the command
//!   timeout becomes `limits.stress_command_timeout` (Postfix's `smtpd_timeout` stress value).
//! - Per-client limits (`anvil`) apply before any of this, except to trusted networks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How a session was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Normal,
    /// Must authenticate within `stress_command_timeout`.
    Probation,
}

pub struct Slots {
    max: usize,
    reserved: usize,
    in_use: AtomicUsize,
    /// Unix second of the last "session limit reached" log line (one a second at most).
    busy_logged: AtomicU64,
}

/// One slot in use; dropping it frees the slot.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(max: usize, reserved: usize) -> Arc<Slots> {
        let max = max.max(1);
        Arc::new(Slots {
            max,
            reserved: reserved.min(max - 1),
            in_use: AtomicUsize::new(0),
            busy_logged: AtomicU64::new(0),
        })
    }

    /// Takes a slot if fewer than `cap` are in use.
    fn take_below(self: &Arc<Self>, cap: usize) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// A slot for a new session, or `None` when the client must be turned away.
    pub fn admit(self: &Arc<Self>, trusted: bool, auth_offered: bool) -> Option<(Slot, Admitted)> {
        if trusted {
            return self.take_below(self.max).map(|s| (s, Admitted::Normal));
        }
        if let Some(s) = self.take_below(self.max - self.reserved) {
            return Some((s, Admitted::Normal));
        }
        if auth_offered {
            let cap = self.max - self.reserved.div_ceil(2);
            return self.take_below(cap).map(|s| (s, Admitted::Probation));
        }
        None
    }

    /// More than 80 % of the slots are in use.
    pub fn stressed(&self) -> bool {
        self.in_use.load(Ordering::Acquire) * 5 > self.max * 4
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Whether to log a "session limit reached" refusal now (at most one line a second).
    pub fn log_busy(&self) -> bool {
        let now = crate::spool::now_unix();
        self.busy_logged.swap(now, Ordering::AcqRel) != now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_clients_leave_the_reserve() {
        // 10 slots, 4 reserved: untrusted 6, probation 2 more, trusted the last 2.
        let s = Slots::new(10, 4);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(s.admit(false, false).expect("general slot"));
        }
        assert!(held.iter().all(|(_, a)| *a == Admitted::Normal));
        assert!(s.admit(false, false).is_none(), "no AUTH: no reserve");
        for _ in 0..2 {
            let (slot, how) = s.admit(false, true).expect("probation slot");
            assert_eq!(how, Admitted::Probation);
            held.push((slot, how));
        }
        assert!(s.admit(false, true).is_none());
        assert!(!s.stressed(), "8 of 10 is not more than 80 %");
        for _ in 0..2 {
            held.push(s.admit(true, false).expect("trusted slot"));
        }
        assert!(s.stressed());
        assert!(s.admit(true, true).is_none(), "all 10 in use");
        assert_eq!(s.in_use(), 10);
        held.truncate(5);
        assert_eq!(s.in_use(), 5);
        assert!(!s.stressed());
        assert_eq!(s.admit(false, false).unwrap().1, Admitted::Normal);
    }

    #[test]
    fn reserve_is_smaller_than_max() {
        let s = Slots::new(1, 5);
        assert!(s.admit(false, false).is_some());
        let s = Slots::new(0, 0);
        assert!(s.admit(true, false).is_some());
    }
}
