//! The per-user daily message cap (`limits.per_user_daily`), kept in the state store so it
//! survives restarts. A message is counted once, when it is queued: the slot is reserved just
//! before the spool commit and given back if the commit fails.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reply::Reply;
use crate::state::State;

pub struct DailyCap {
    limit: u64,
    /// Last UTC day whose older counters were pruned.
    pruned_day: AtomicU64,
}

const PREFIX: &str = "daily|";

fn today() -> u64 {
    crate::spool::now_unix() / 86400
}

fn store_error(e: crate::state::StateError) -> Reply {
    tracing::error!(error = %e, "daily cap: state store error");
    Reply::new(451, "4.3.0", "Temporary local problem, try later")
}

fn key(day: u64, user: &str) -> String {
    format!("{PREFIX}{day}|{user}")
}

impl DailyCap {
    pub fn new(limit: u64) -> DailyCap {
        DailyCap {
            limit,
            pruned_day: AtomicU64::new(0),
        }
    }

    fn refusal(&self, user: &str) -> Reply {
        Reply::new(
            452,
            "4.7.1",
            format!(
                "Daily message limit of {} reached for user {user}",
                self.limit
            ),
        )
    }

    /// At MAIL FROM and RCPT: refuse early when the cap is already used up.
    pub fn check(&self, state: &State, user: &str) -> Result<(), Reply> {
        if self.limit == 0 {
            return Ok(());
        }
        match state.counter(&key(today(), user)) {
            Ok(n) if n >= self.limit => Err(self.refusal(user)),
            Ok(_) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Takes one message from today's allowance; returns the key to give back on failure.
    pub fn reserve(&self, state: &State, user: &str) -> Result<Option<String>, Reply> {
        if self.limit == 0 {
            return Ok(None);
        }
        let day = today();
        if self.pruned_day.swap(day, Ordering::Relaxed) != day
            && let Err(e) = state.prune(PREFIX, &format!("{PREFIX}{day}|"))
        {
            tracing::warn!(error = %e, "daily cap: pruning old counters failed");
        }
        let k = key(day, user);
        match state.add_within(&k, 1, self.limit) {
            Ok(Some(_)) => Ok(Some(k)),
            Ok(None) => Err(self.refusal(user)),
            Err(e) => Err(store_error(e)),
        }
    }

    pub fn release(&self, state: &State, key: &str) {
        if let Err(e) = state.sub(key, 1) {
            tracing::error!(error = %e, "daily cap: could not give back a reserved message");
        }
    }
}
