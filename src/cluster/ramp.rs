//! The adaptive ramp's farm side (issue 24, `[cluster]`): one ramp state per IP × provider for
//! the whole farm, each day's tallies summed across relays, and each day decided once.
//!
//! Rules:
//! - The state is the ramp's own JSON, one field per IP × provider (`<ip>|<provider>`) of the
//!   hash `<prefix>:ramp`, with no expiry (like the warm-up progress).
//! - Each reply counts into `<prefix>:ramp:<ip>|<provider>:d:<day>` (a hash: accepted,
//!   throttled, deferred, bounced, blocked), on the day the pool gives (the day its delivery
//!   began, or the open day for a late block or throttling reply); the messages taken
//!   count in `<prefix>:ramp:<ip>|<provider>:t:<day>`, one more counter of the take's script
//!   (`counters`: given back with the others, kept while Redis is down). Replies wait here
//!   and go in batches (at once, and every second while any wait), one MULTI per batch. A batch
//!   that timed out is taken as sent: Redis may still apply it, and counting twice is worse.
//!   A tally lives `idle_days + 2` days: a decision after the longest gap that does not re-warm
//!   still finds its day.
//! - Deciding a day (`roll`, at the first take of a new sending day): read the farm's state; if
//!   it is for an earlier day, send this relay's waiting counts, read that day's farm tally, run
//!   the ramp's decision, and store the result only if the stored state is still the one read
//!   (compare-and-set in one script). The relay that stores it decided for the farm (it tells
//!   the history); the others adopt what is stored. Nothing stored yet: this relay's state
//!   seeds the farm's; a stored state that no longer parses is replaced the same way.
//! - Redis down or slow: `Err`, and the ramp decides on this relay's own tallies; that decision
//!   stays on this relay (made on part of the farm's replies), and the farm's state is read
//!   again at the next one. The counts made meanwhile are added when Redis returns.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{Cluster, RunError};
use crate::pool::RampOutcome;

/// One IP × provider's replies on one sending day: the ramp's own tally.
pub use crate::pool::ramp::DayTally as Tally;
pub use crate::pool::{FarmRamp, Rolled, tally_ttl};

const FIELDS: [&str; 5] = ["accepted", "throttled", "deferred", "bounced", "blocked"];

fn index(o: RampOutcome) -> usize {
    match o {
        RampOutcome::Accepted => 0,
        RampOutcome::Throttled => 1,
        RampOutcome::Deferred => 2,
        RampOutcome::Bounced => 3,
        RampOutcome::Blocked => 4,
    }
}

impl Tally {
    fn counts(&self) -> [u64; 5] {
        [
            self.accepted,
            self.throttled,
            self.deferred,
            self.bounced,
            self.blocked,
        ]
    }

    fn from_counts(c: [u64; 5]) -> Tally {
        Tally {
            taken: 0,
            accepted: c[0],
            throttled: c[1],
            deferred: c[2],
            bounced: c[3],
            blocked: c[4],
        }
    }

    /// `n` replies of one kind (a batch of them).
    pub fn add_n(&mut self, o: RampOutcome, n: u64) {
        let mut c = self.counts();
        c[index(o)] += n;
        *self = Tally {
            taken: self.taken,
            ..Tally::from_counts(c)
        };
    }

    /// No reply counted (`taken` aside).
    pub fn is_empty(&self) -> bool {
        self.counts() == [0; 5]
    }

    /// The replies of `self` less `sent` (what a batch carried), never below 0.
    fn minus(&self, sent: &Tally) -> Tally {
        let (a, b) = (self.counts(), sent.counts());
        Tally::from_counts(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }

    /// From a tally hash as `HGETALL` returns it (unknown fields ignored) and the taken count.
    fn from_hash(pairs: &HashMap<String, u64>, taken: Option<i64>) -> Tally {
        Tally {
            taken: taken.unwrap_or(0).max(0) as u64,
            ..Tally::from_counts(FIELDS.map(|f| pairs.get(f).copied().unwrap_or(0)))
        }
    }
}

/// Counts waiting for the next batch, per tally key.
#[derive(Debug, Clone, Default)]
struct Waiting {
    tally: Tally,
    ttl_ms: u64,
    /// Unix millis after which the key has expired (nothing left to add to).
    expires: u64,
}

/// The counts not yet in Redis, and the flusher's wake-up.
#[derive(Default)]
pub(super) struct Tallies {
    waiting: Mutex<HashMap<String, Waiting>>,
    wake: Arc<Notify>,
    /// One batch at a time: two would both carry the same counts.
    flushing: tokio::sync::Mutex<()>,
}

/// Compare-and-set one hash field. KEYS: the hash. ARGV: field, expected ('' = absent), new.
/// Returns {1, new} when stored, else {0, what is stored ('' = absent)}.
const SWAP: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return {1, ARGV[3]}
end
return {0, cur}
"#;

fn now_ms() -> u64 {
    crate::pool::warmup::Clock::now_ms()
}

/// The hash field of an IP × provider.
pub fn field(ip: IpAddr, provider: &str) -> String {
    format!("{ip}|{provider}")
}

fn parse<S: DeserializeOwned>(raw: &str) -> Option<S> {
    serde_json::from_str(raw).ok()
}

impl Cluster {
    fn tally_key(&self, ip: IpAddr, provider: &str, day: u64) -> String {
        self.key(&format!("ramp:{}:d:{day}", field(ip, provider)))
    }

    /// The counter of messages taken on `day` (a `Limit` without cap, `tally_ttl` long).
    pub fn ramp_taken_key(&self, ip: IpAddr, provider: &str, day: u64) -> String {
        self.key(&format!("ramp:{}:t:{day}", field(ip, provider)))
    }

    /// Counts one reply into the farm's tally of `day` (sent in the next batch).
    pub fn ramp_count(&self, ip: IpAddr, provider: &str, day: u64, o: RampOutcome, ttl_ms: u64) {
        let key = self.tally_key(ip, provider, day);
        {
            let mut waiting = self.ramp.waiting.lock().expect("ramp tallies");
            let w = waiting.entry(key).or_default();
            w.tally.add_n(o, 1);
            w.ttl_ms = ttl_ms.max(1);
            w.expires = w.expires.max(now_ms() + w.ttl_ms);
        }
        self.ramp.wake.notify_one();
    }

    /// Sends the waiting counts in one MULTI (see the module's rules on failures).
    pub async fn ramp_flush(&self) -> Result<(), RunError> {
        let _one = self.ramp.flushing.lock().await;
        let batch: Vec<(String, Waiting)> = {
            let mut waiting = self.ramp.waiting.lock().expect("ramp tallies");
            let now = now_ms();
            waiting.retain(|_, w| w.expires > now && !w.tally.is_empty());
            waiting
                .iter()
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, w) in &batch {
            for (f, n) in FIELDS.iter().zip(w.tally.counts()) {
                if n > 0 {
                    pipe.hincr(key, *f, n).ignore();
                }
            }
            pipe.pexpire(key, w.ttl_ms as i64).ignore();
        }
        let sent = self
            .try_run("ramp tallies", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if let Err(e @ (RunError::Down | RunError::Failed)) = sent {
            return Err(e);
        }
        let mut waiting = self.ramp.waiting.lock().expect("ramp tallies");
        for (key, w) in &batch {
            // Counts made during the call stay for the next batch.
            if let Some(left) = waiting.get_mut(key) {
                left.tally = left.tally.minus(&w.tally);
                if left.tally.is_empty() {
                    waiting.remove(key);
                }
            }
        }
        sent
    }

    /// The farm's tally of `ip` × `provider` on `day`, this relay's waiting counts sent first.
    pub async fn ramp_tally(
        &self,
        ip: IpAddr,
        provider: &str,
        day: u64,
    ) -> Result<Tally, RunError> {
        // Timed out: the batch may yet arrive; the tally read may miss it (taken as sent).
        if let Err(e @ (RunError::Down | RunError::Failed)) = self.ramp_flush().await {
            return Err(e);
        }
        let (key, taken) = (
            self.tally_key(ip, provider, day),
            self.ramp_taken_key(ip, provider, day),
        );
        let (pairs, taken) = self
            .try_run("ramp tally", |mut c| async move {
                redis::pipe()
                    .hgetall(&key)
                    .get(&taken)
                    .query_async::<(HashMap<String, u64>, Option<i64>)>(&mut c)
                    .await
            })
            .await?;
        Ok(Tally::from_hash(&pairs, taken))
    }

    /// The farm's stored state of `ip` × `provider` as text (`None`: nothing stored).
    async fn ramp_raw(&self, ip: IpAddr, provider: &str) -> Result<Option<String>, RunError> {
        let (hash, f) = (self.key("ramp"), field(ip, provider));
        self.try_run("ramp state", |mut c| async move {
            redis::cmd("HGET")
                .arg(&hash)
                .arg(&f)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
    }

    /// The farm's state of `ip` × `provider` (`None`: nothing stored, or it no longer parses).
    pub async fn ramp_state<S: FarmRamp>(
        &self,
        ip: IpAddr,
        provider: &str,
    ) -> Result<Option<S>, RunError> {
        Ok(self.ramp_raw(ip, provider).await?.and_then(|r| parse(&r)))
    }

    /// Stores `new` if the stored text is still `seen`; `Err(stored)` otherwise.
    async fn ramp_swap(
        &self,
        ip: IpAddr,
        provider: &str,
        seen: Option<&str>,
        new: &str,
    ) -> Result<Result<(), Option<String>>, RunError> {
        let script = redis::Script::new(SWAP);
        let mut inv = script.key(self.key("ramp"));
        inv.arg(field(ip, provider))
            .arg(seen.unwrap_or(""))
            .arg(new);
        let (stored, now): (i64, String) = self
            .try_run("ramp swap", |mut c| async move {
                inv.invoke_async::<(i64, String)>(&mut c).await
            })
            .await?;
        Ok(if stored == 1 {
            Ok(())
        } else {
            Err((!now.is_empty()).then_some(now))
        })
    }

    /// Rolls the farm's ramp of `ip` × `provider` to `today` (see the module's rules): `local`
    /// seeds it when the farm has none, `decide` makes a day's decision from the state and the
    /// farm's tally of its day.
    pub async fn ramp_roll<S: FarmRamp>(
        &self,
        ip: IpAddr,
        provider: &str,
        today: u64,
        local: &S,
        decide: impl Fn(&S, &Tally) -> S,
    ) -> Result<Rolled<S>, RunError> {
        let mut raw = self.ramp_raw(ip, provider).await?;
        // Each lost swap means another relay stored a state; it is then for today.
        for _ in 0..4 {
            let stored: Option<S> = raw.as_deref().and_then(parse);
            if raw.is_some() && stored.is_none() {
                tracing::warn!(source_ip = %ip, provider, "cluster: the farm's ramp state does not parse; this relay's replaces it");
            }
            let seeded = stored.is_none();
            let before = match stored {
                Some(s) => s,
                None => local.clone(),
            };
            let due = before.day().is_none_or(|d| d < today);
            let (state, tally) = if due {
                let tally = match before.day() {
                    Some(d) => self.ramp_tally(ip, provider, d).await?,
                    None => Tally::default(),
                };
                (Some(decide(&before, &tally)), tally)
            } else if seeded {
                (None, Tally::default())
            } else {
                return Ok(Rolled::Farm(before));
            };
            let new = to_json(state.as_ref().unwrap_or(&before));
            match self.ramp_swap(ip, provider, raw.as_deref(), &new).await? {
                Ok(()) => {
                    return Ok(match state {
                        Some(state) => Rolled::Decided {
                            state,
                            before,
                            tally,
                        },
                        None => Rolled::Farm(before),
                    });
                }
                Err(now) => {
                    tracing::debug!(source_ip = %ip, provider, "cluster: another relay moved the farm's ramp first");
                    raw = now;
                }
            }
        }
        Err(RunError::Failed)
    }
}

fn to_json<S: Serialize>(s: &S) -> String {
    serde_json::to_string(s).expect("ramp state serialises")
}

/// Sends waiting counts as they come, and every second while any wait (Redis down).
pub(super) fn spawn_flusher(cluster: &Arc<Cluster>) {
    let wake = cluster.ramp.wake.clone();
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(super::conn::HEARTBEAT) => {}
            }
            let Some(c) = weak.upgrade() else { return };
            let _ = c.ramp_flush().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_each_outcome_in_its_field() {
        let mut t = Tally::default();
        assert!(t.is_empty());
        t.add_n(RampOutcome::Accepted, 3);
        t.add_n(RampOutcome::Throttled, 1);
        t.add_n(RampOutcome::Blocked, 1);
        assert_eq!(
            t,
            Tally {
                accepted: 3,
                throttled: 1,
                blocked: 1,
                ..Default::default()
            }
        );
        let hash: HashMap<String, u64> = [("accepted", 7), ("deferred", 2), ("other", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let farm = Tally::from_hash(&hash, Some(12));
        assert_eq!(
            (farm.taken, farm.accepted, farm.deferred, farm.bounced),
            (12, 7, 2, 0)
        );
        assert_eq!(Tally::from_hash(&hash, Some(-1)).taken, 0);
    }

    #[test]
    fn what_a_batch_carried_leaves_only_the_counts_made_during_it() {
        let mut waiting = Tally::default();
        waiting.add_n(RampOutcome::Accepted, 5);
        let sent = waiting;
        waiting.add_n(RampOutcome::Accepted, 2);
        waiting.add_n(RampOutcome::Deferred, 1);
        let left = waiting.minus(&sent);
        assert_eq!((left.accepted, left.deferred), (2, 1));
        assert!(sent.minus(&waiting).is_empty(), "never below 0");
    }

    #[test]
    fn tallies_outlive_the_longest_gap_that_does_not_rewarm() {
        assert_eq!(tally_ttl(1000, 30), 32_000);
        assert_eq!(tally_ttl(u64::MAX, 30), u64::MAX);
        assert_eq!(
            field("192.0.2.1".parse().unwrap(), "gmail"),
            "192.0.2.1|gmail"
        );
    }
}
