//! The per-user daily message cap (`limits.per_user_daily`), kept in the state store so it
//! survives restarts. A message is counted once, when it is queued: the slot is reserved just
//! before the spool commit and given back if the commit fails.
//!
//! With `[cluster]` the state store keeps this relay's own count and the farm's count is in
//! Redis (`<prefix>:user:<user>:d:<day>`): a message needs room in both, so 300 a day is 300
//! across the farm. Redis down: this relay's share of the cap (`cluster::counters::share`). The farm is
//! handed in as `pool::Counters`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pool::{Counters, Limit};
use crate::reply::Reply;
use crate::state::State;

pub struct DailyCap {
    limit: u64,
    /// Last UTC day whose older counters were pruned.
    pruned_day: AtomicU64,
    cluster: Option<Arc<dyn Counters>>,
}

/// A farm key lives two days (the day and the next, for late give-backs).
const FARM_TTL_MS: u64 = 2 * 86_400_000;

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
    pub fn new(limit: u64, cluster: Option<Arc<dyn Counters>>) -> DailyCap {
        DailyCap {
            limit,
            pruned_day: AtomicU64::new(0),
            cluster,
        }
    }

    /// The farm's counter of `user` on `day`.
    fn farm_key(cluster: &dyn Counters, day: u64, user: &str) -> String {
        cluster.key(&format!("user:{user}:d:{day}"))
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
        let day = today();
        if let Some(c) = &self.cluster
            && c.seen_at_cap(&Self::farm_key(c.as_ref(), day, user), self.limit)
        {
            return Err(self.refusal(user));
        }
        match state.counter(&key(day, user)) {
            Ok(n) if n >= self.limit => Err(self.refusal(user)),
            Ok(_) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Takes one message from today's allowance; returns the key to give back on failure.
    /// Blocks (with `[cluster]`, on a Redis round trip bounded by `redis_timeout`): call it
    /// from a blocking task.
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
        let own = match state.add_within(&k, 1, self.limit) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(self.refusal(user)),
            Err(e) => return Err(store_error(e)),
        };
        let Some(c) = &self.cluster else {
            return Ok(Some(k));
        };
        let limit = Limit {
            key: Self::farm_key(c.as_ref(), day, user),
            cap: Some(self.limit),
            ttl_ms: FARM_TTL_MS,
            own: own.saturating_sub(1),
        };
        let taken = tokio::runtime::Handle::current().block_on(c.take(&[limit], None));
        match taken {
            Ok(_) => Ok(Some(k)),
            Err(refused) => {
                if let Err(e) = state.sub(&k, 1) {
                    tracing::error!(error = %e, "daily cap: could not give back a reserved message");
                }
                tracing::debug!(user, ?refused, "daily cap: the farm has no room");
                Err(self.refusal(user))
            }
        }
    }

    /// Gives back what `reserve` took (the message was not queued). Blocks like `reserve`.
    pub fn release(&self, state: &State, key: &str) {
        if let Err(e) = state.sub(key, 1) {
            tracing::error!(error = %e, "daily cap: could not give back a reserved message");
        }
        let Some(c) = &self.cluster else { return };
        let Some((day, user)) = key
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('|'))
            .and_then(|(d, u)| Some((d.parse::<u64>().ok()?, u)))
        else {
            return;
        };
        let farm = [(Self::farm_key(c.as_ref(), day, user), FARM_TTL_MS)];
        tokio::runtime::Handle::current().block_on(c.give_back(&farm));
    }
}
