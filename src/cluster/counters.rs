//! Counters the farm shares in Redis: per IP × provider daily and hourly counts, the warm-up
//! progress, `farm_max_per_hour` per provider, the per-user daily cap.
//!
//! Rules:
//! - One Lua script takes a message: it increments every counter of the message at once, or
//!   none when one of them would pass its cap ("increment unless this would pass the cap").
//!   Counter keys name their window (`…:d:<day>`, `…:h:<hour>`) and expire two windows later.
//! - A take that succeeds also moves the warm-up progress (`<prefix>:warmup`, one field per
//!   IP × provider) as `warmup::Progress::sent_on` does, so an IP that moves keeps its day.
//! - Redis down (or slower than `redis_timeout`): a node takes a message on a capped counter
//!   only while (a) its own count in the window is below its share, cap ÷ nodes last seen,
//!   rounded down, at least 1; and (b) the farm count it last read plus what it took since stays
//!   below the cap. So the farm passes a cap by at most one share of it. Those takes are
//!   counted here and added to Redis when it returns (`reconcile`), once. A take that timed
//!   out is not counted here: Redis may still apply it when it answers again (a hung server).
//! - A message given back (never sent, or not queued) is taken off again, in Redis or from
//!   what waits for reconciliation.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Cluster, RunError};
use crate::pool::warmup::Progress;
pub use crate::pool::{Limit, ProgressMove, Refused, Taken};

/// cap ÷ nodes, rounded down, at least 1 (a node alone gets the whole cap; a tiny cap still
/// lets each node send one).
pub fn share(cap: u64, nodes: usize) -> u64 {
    (cap / nodes.max(1) as u64).max(1)
}

/// KEYS: the counters, then the progress hash (optional). ARGV: n, by, check (1/0), cap and
/// ttl per counter (cap -1 = none), then field, today, idle_days when the hash is given.
/// Returns {taken 1/0, index of the full counter (1-based), progress index, progress last day
/// (-1 = none), counts…}.
const SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
local by = tonumber(ARGV[2])
local check = ARGV[3] == '1'
local counts = {}
for i = 1, n do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
local idx, last = 0, -1
local has_progress = #KEYS > n
if has_progress then
  local p = redis.call('HGET', KEYS[n + 1], ARGV[4 + 2 * n])
  if p then
    local a, b = string.match(p, '^(%d+):(%-?%d+)$')
    if a then idx, last = tonumber(a), tonumber(b) end
  end
end
if check then
  for i = 1, n do
    local cap = tonumber(ARGV[2 + 2 * i])
    if cap >= 0 and counts[i] + by > cap then
      local out = {0, i, idx, last}
      for j = 1, n do out[4 + j] = counts[j] end
      return out
    end
  end
end
for i = 1, n do
  local c = redis.call('INCRBY', KEYS[i], by)
  if c < 0 then
    redis.call('SET', KEYS[i], 0)
    c = 0
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[3 + 2 * i])
  counts[i] = c
end
if has_progress and by > 0 then
  local today = tonumber(ARGV[5 + 2 * n])
  local idle = tonumber(ARGV[6 + 2 * n])
  if last >= 0 and last < today then
    if today - last >= idle then idx = 0 else idx = idx + 1 end
  end
  if last < today then last = today end
  redis.call('HSET', KEYS[n + 1], ARGV[4 + 2 * n], idx .. ':' .. last)
end
local out = {1, 0, idx, last}
for j = 1, n do out[4 + j] = counts[j] end
return out
"#;

/// What a node counted while Redis was down, per key, to add when it returns.
#[derive(Debug, Clone, Default)]
struct Pending {
    by: i64,
    ttl_ms: u64,
    /// Unix millis after which the key's window is over (nothing to reconcile).
    expires: u64,
}

#[derive(Default)]
struct Local {
    /// The farm count last read per key, and when its key expires.
    seen: HashMap<String, (u64, u64)>,
    pending: HashMap<String, Pending>,
    /// Warm-up moves made while down: field → (day, idle_days).
    moves: HashMap<String, (u64, u64)>,
}

pub(super) struct Counters {
    script: redis::Script,
    local: Mutex<Local>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            script: redis::Script::new(SCRIPT),
            local: Mutex::new(Local::default()),
        }
    }
}

fn now_ms() -> u64 {
    crate::pool::warmup::Clock::now_ms()
}

/// Keeps a give-back for reconciliation: one message less on each of `keys`.
fn pend_give_back(pending: &mut HashMap<String, Pending>, keys: &[(String, u64)]) {
    let now = now_ms();
    for (k, ttl) in keys {
        let p = pending.entry(k.clone()).or_default();
        p.by -= 1;
        p.ttl_ms = *ttl;
        p.expires = p.expires.max(now + ttl);
    }
}

fn progress_of(idx: i64, last: i64) -> Progress {
    Progress {
        day_index: idx.clamp(0, u32::MAX as i64) as u32,
        last_send_day: (last >= 0).then_some(last as u64),
        ..Progress::default()
    }
}

impl Counters {
    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().expect("cluster counters")
    }
}

impl Cluster {
    /// Takes one message on every counter of `limits` (all or none), moving `progress`.
    pub async fn take(
        &self,
        limits: &[Limit],
        progress: Option<&ProgressMove>,
    ) -> Result<Taken, Refused> {
        let result = self.run_script(limits, 1, true, progress).await;
        let now = now_ms();
        let out = match result {
            Ok(out) => out,
            Err(e) => return self.take_locally(limits, progress, now, e != RunError::TimedOut),
        };
        let (taken, index) = (out[0] == 1, out[1].max(0) as usize);
        let farm_progress = progress.map(|_| progress_of(out[2], out[3]));
        let mut local = self.counters.local();
        for (l, count) in limits.iter().zip(&out[4..]) {
            local
                .seen
                .insert(l.key.clone(), ((*count).max(0) as u64, now + l.ttl_ms));
        }
        if taken {
            Ok(Taken::Shared(farm_progress))
        } else {
            Err(Refused::Farm {
                index: index.saturating_sub(1),
                progress: farm_progress.map(Box::new),
            })
        }
    }

    fn take_locally(
        &self,
        limits: &[Limit],
        progress: Option<&ProgressMove>,
        now: u64,
        count: bool,
    ) -> Result<Taken, Refused> {
        let nodes = self.nodes().len().max(1);
        let mut local = self.counters.local();
        local.seen.retain(|_, (_, exp)| *exp > now);
        local.pending.retain(|_, p| p.expires > now);
        for (index, l) in limits.iter().enumerate() {
            let Some(cap) = l.cap else { continue };
            let seen = local.seen.get(&l.key).map_or(0, |s| s.0);
            let since = local.pending.get(&l.key).map_or(0, |p| p.by.max(0) as u64);
            if l.own >= share(cap, nodes) || seen + since >= cap {
                return Err(Refused::Share { index });
            }
        }
        if !count {
            return Ok(Taken::Local);
        }
        for l in limits {
            let p = local.pending.entry(l.key.clone()).or_default();
            p.by += 1;
            p.ttl_ms = l.ttl_ms;
            p.expires = now + l.ttl_ms;
        }
        if let Some(m) = progress {
            let e = local
                .moves
                .entry(m.field.clone())
                .or_insert((m.today, m.idle_days));
            e.0 = e.0.max(m.today);
        }
        Ok(Taken::Local)
    }

    /// Gives one message back on `keys` (taken but never sent, or not queued).
    pub async fn give_back(&self, keys: &[(String, u64)]) {
        {
            // Still waiting for reconciliation: take it off there.
            let mut local = self.counters.local();
            if !self.is_up() || keys.iter().all(|(k, _)| local.pending.contains_key(k)) {
                pend_give_back(&mut local.pending, keys);
                return;
            }
        }
        let limits: Vec<Limit> = keys
            .iter()
            .map(|(k, ttl)| Limit {
                key: k.clone(),
                cap: None,
                ttl_ms: *ttl,
                own: 0,
            })
            .collect();
        // Timed out: Redis may still apply it, so it is not kept for reconciliation too.
        if let Err(RunError::Down | RunError::Failed) =
            self.run_script(&limits, -1, false, None).await
        {
            pend_give_back(&mut self.counters.local().pending, keys);
        }
    }

    /// The farm count last read for `key` has reached `cap` (an early refusal without a round
    /// trip; the take decides).
    pub fn seen_at_cap(&self, key: &str, cap: u64) -> bool {
        let local = self.counters.local();
        local
            .seen
            .get(key)
            .is_some_and(|(n, exp)| *n >= cap && *exp > now_ms())
    }

    /// The farm's counts of `keys` for the operator's view (a missing key counts 0), and
    /// whether they were read now. Redis down: per key the count last read plus what this node
    /// took since (`None` if nothing was read this window).
    pub async fn counts(&self, keys: &[String]) -> (Vec<Option<u64>>, bool) {
        if keys.is_empty() {
            return (Vec::new(), true);
        }
        let ks = keys.to_vec();
        let read = self
            .try_run("view counts", |mut c| async move {
                redis::cmd("MGET")
                    .arg(&ks)
                    .query_async::<Vec<Option<u64>>>(&mut c)
                    .await
            })
            .await;
        if let Ok(v) = read
            && v.len() == keys.len()
        {
            return (v.into_iter().map(|n| Some(n.unwrap_or(0))).collect(), true);
        }
        let now = now_ms();
        let local = self.counters.local();
        let last = keys
            .iter()
            .map(|k| {
                let seen = local.seen.get(k).filter(|s| s.1 > now).map(|s| s.0)?;
                let since = local.pending.get(k).map_or(0, |p| p.by.max(0) as u64);
                Some(seen + since)
            })
            .collect();
        (last, false)
    }

    /// Adds what was counted while Redis was down (once: an entry leaves only when Redis took it).
    pub(super) async fn reconcile(&self) {
        let (pending, moves) = {
            let local = self.counters.local();
            (local.pending.clone(), local.moves.clone())
        };
        if pending.is_empty() && moves.is_empty() {
            return;
        }
        let now = now_ms();
        let mut added = 0i64;
        for (key, p) in &pending {
            if p.expires <= now || p.by == 0 {
                self.counters.local().pending.remove(key);
                continue;
            }
            let limit = Limit {
                key: key.clone(),
                cap: None,
                ttl_ms: p.ttl_ms,
                own: 0,
            };
            // Timed out: taken as added (Redis may still apply it); counting it again could
            // pass the cap later, leaving it out only lets a few more through.
            if let Err(RunError::Down | RunError::Failed) =
                self.run_script(&[limit], p.by, false, None).await
            {
                return;
            }
            let mut local = self.counters.local();
            if let Some(q) = local.pending.get_mut(key) {
                // Takes or give-backs made during the call stay for the next round.
                q.by -= p.by;
                if q.by == 0 {
                    local.pending.remove(key);
                }
            }
            added += p.by;
        }
        let hash = self.key("warmup");
        for (field, (today, idle)) in &moves {
            let m = ProgressMove {
                field: field.clone(),
                today: *today,
                idle_days: *idle,
            };
            // A move with no counter: a zero-length take that only moves the day.
            let script = &self.counters.script;
            let mut inv = script.key(&hash);
            inv.arg(0)
                .arg(1)
                .arg(0)
                .arg(&m.field)
                .arg(m.today)
                .arg(m.idle_days);
            let ok = self
                .run("reconcile warm-up", |mut c| async move {
                    inv.invoke_async::<Vec<i64>>(&mut c).await
                })
                .await;
            if ok.is_none() {
                return;
            }
            self.counters.local().moves.remove(field);
        }
        tracing::info!(
            increments = added,
            warmup_moves = moves.len(),
            "cluster: counts made while Redis was down added to the farm's"
        );
    }

    async fn run_script(
        &self,
        limits: &[Limit],
        by: i64,
        check: bool,
        progress: Option<&ProgressMove>,
    ) -> Result<Vec<i64>, RunError> {
        let script = &self.counters.script;
        let mut inv = script.prepare_invoke();
        for l in limits {
            inv.key(&l.key);
        }
        inv.arg(limits.len()).arg(by).arg(if check { 1 } else { 0 });
        for l in limits {
            inv.arg(l.cap.map_or(-1, |c| c.min(i64::MAX as u64) as i64))
                .arg(l.ttl_ms.max(1));
        }
        if let Some(m) = progress {
            inv.key(self.key("warmup"));
            inv.arg(&m.field).arg(m.today).arg(m.idle_days);
        }
        let out = self
            .try_run("counters", |mut c| async move {
                inv.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await?;
        if out.len() == 4 + limits.len() {
            Ok(out)
        } else {
            Err(RunError::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_down_but_leave_each_node_one() {
        assert_eq!(share(300, 1), 300);
        assert_eq!(share(300, 2), 150);
        assert_eq!(share(100, 3), 33);
        assert_eq!(share(2, 3), 1, "at least one per node");
        assert_eq!(share(0, 2), 1);
        assert_eq!(share(10, 0), 10, "no node seen: this one alone");
    }

    #[test]
    fn progress_from_the_script() {
        assert_eq!(
            progress_of(3, 20_000),
            Progress {
                day_index: 3,
                last_send_day: Some(20_000),
                ..Progress::default()
            }
        );
        assert_eq!(progress_of(0, -1), Progress::default());
    }
}
