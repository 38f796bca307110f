//! Per-message source selection.
//!
//! Rules:
//! - Every message (each destination transaction) gets its source IP here, before any
//!   connection is chosen: delivery then reuses an idle connection of that IP or opens one. So
//!   weights and warm-up caps are shares of messages at any concurrency.
//! - Only eligible IPs compete: of the wanted address family, not held for the provider, under
//!   every cap (warm-up daily/hourly, provider throttles, probation trickle, back-off).
//! - Among them, smooth weighted round-robin (nginx's): each eligible IP gains its weight, the
//!   highest goes and pays the total back. Equal weights alternate exactly; 3:1 interleaves.
//! - The pick takes the slot (counters, in-flight count) under the same lock, so a warming IP
//!   gets its cap exactly, never more, however many deliveries pick at once.
//! - Nothing eligible → `Held` with the earliest time capacity may return: delivery holds the
//!   message without counting an attempt (never a bounce).
//! - With `[cluster]` (`pick_shared`), the local pick is then taken in the farm's counters too
//!   (`shared.rs`); a farm refusal marks that IP × provider full until its window ends and the
//!   pick goes again among the others.

use std::net::IpAddr;
use std::sync::Arc;

use super::pools::{Key, Pools};
use super::warmup::Clock;

/// Nothing in the pool can take the message now: hold it (not a failed attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// What the operator reads on the recipient (`pool NAME: …`).
    pub text: String,
    /// Unix seconds to look again (drain/undrain and reinstatement also wake the queue).
    pub retry_at: u64,
}

/// A message slot taken on one IP × provider: the in-flight count drops with it; `refund`
/// gives the slot back when nothing was sent from it.
pub struct Lease {
    pools: Option<Arc<Pools>>,
    pub(super) key: Option<Key>,
    day: u64,
    hour: u64,
    /// The farm's counters this message took (`[cluster]`): Redis keys and their lifetimes.
    pub(super) farm: Vec<(String, u64)>,
    /// `[cluster]`: the new sending day this pick began, for the farm to decide (`farm_ramp`).
    pub(super) ramp: Option<Box<super::farm_ramp::LocalRoll>>,
}

impl Lease {
    pub fn refund(mut self) {
        let farm = std::mem::take(&mut self.farm);
        if let (Some(c), false) = (self.pools.as_ref().and_then(|p| p.farm()), farm.is_empty()) {
            let c = c.clone();
            tokio::spawn(async move { c.give_back(&farm).await });
        }
        if let (Some(p), Some(k)) = (&self.pools, &self.key) {
            let mut inner = p.lock();
            if let Some(c) = inner.counters.get_mut(k) {
                c.refund(self.day, self.hour);
                c.warmup.refund(self.day);
            }
            inner.dirty.insert(k.clone());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(p), Some(k)) = (&self.pools, &self.key) {
            let mut inner = p.lock();
            if let Some(n) = inner.active.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The source chosen for one message, its slot already taken.
pub struct Pick {
    pub source: super::Source,
    pub lease: Lease,
}

pub enum Selection {
    Picked(Pick),
    /// The pool has no address of the wanted family.
    NoFamily,
    /// Every eligible IP is in `exclude` (failed for this message already).
    Exhausted,
    Held(Held),
}

impl Pools {
    /// Picks the source IP for one message to `provider` over an address of the given family,
    /// skipping `exclude`, and takes its slot.
    pub fn pick(
        self: &Arc<Self>,
        pool: Option<&str>,
        provider: &str,
        want_v6: bool,
        exclude: &[IpAddr],
    ) -> Selection {
        let conf = self.conf();
        let Some(pc) = pool.and_then(|n| conf.pools.iter().find(|p| p.name == n)) else {
            let source = super::Source {
                ip: None,
                helo: conf.fallback_helo.clone(),
            };
            if exclude.is_empty() {
                let lease = Lease {
                    pools: None,
                    key: None,
                    day: 0,
                    hour: 0,
                    farm: Vec::new(),
                    ramp: None,
                };
                return Selection::Picked(Pick { source, lease });
            }
            return Selection::Exhausted;
        };
        let now = Clock::now_ms();
        let mut inner = self.lock();
        let family: Vec<usize> = (0..pc.ips.len())
            .filter(|&i| pc.ips[i].address.is_ipv6() == want_v6)
            .collect();
        if family.is_empty() {
            return Selection::NoFamily;
        }
        let mut eligible = Vec::new();
        let mut reasons = Vec::new();
        let mut until = u64::MAX;
        let mut all_out = true;
        let mut excluded = false;
        for &i in &family {
            match conf.check(&inner, &pc.ips[i], provider, now) {
                Ok(()) if exclude.contains(&pc.ips[i].address) => excluded = true,
                Ok(()) => eligible.push(i),
                Err(full) => {
                    if full.why != "drained" && full.why != "quarantined" {
                        all_out = false;
                    }
                    until = until.min(full.until);
                    reasons.push(format!("{} {}", pc.ips[i].address, full.why));
                }
            }
        }
        if eligible.is_empty() {
            if excluded {
                return Selection::Exhausted;
            }
            let now_s = now / 1000;
            let retry_at = if until == u64::MAX {
                now_s + 300
            } else {
                until.div_ceil(1000).clamp(now_s + 1, now_s + 300)
            };
            let text = if all_out {
                format!(
                    "pool {}: every source IP is drained or quarantined for provider {provider} ({}); mail is held",
                    pc.name,
                    reasons.join(", ")
                )
            } else {
                format!(
                    "pool {}: no source IP has capacity for provider {provider} ({})",
                    pc.name,
                    reasons.join(", ")
                )
            };
            let wkey = format!("{}|{provider}", pc.name);
            let last = inner.warned.get(&wkey).copied().unwrap_or(0);
            if all_out && (last == 0 || now.saturating_sub(last) >= conf.hold_warning_ms) {
                inner.warned.insert(wkey, now);
                tracing::warn!(pool = %pc.name, provider, reason = %text, "no usable source IP: holding mail");
            } else {
                tracing::debug!(pool = %pc.name, provider, reason = %text, "no capacity: holding mail");
            }
            return Selection::Held(Held { text, retry_at });
        }
        let wkey = format!("{}|{provider}|{want_v6}", pc.name);
        let current = inner.swrr.entry(wkey).or_default();
        // A pick that read the config before a reload may have made this list for another
        // number of IPs: start the round over rather than index past it.
        if current.len() != pc.ips.len() {
            *current = vec![0; pc.ips.len()];
        }
        let total: i64 = eligible.iter().map(|&i| pc.ips[i].weight as i64).sum();
        for &i in &eligible {
            current[i] += pc.ips[i].weight as i64;
        }
        let best = *eligible
            .iter()
            .max_by_key(|&&i| (current[i], std::cmp::Reverse(i)))
            .expect("not empty");
        current[best] -= total;
        let ip = &pc.ips[best];
        let key = (ip.address, provider.to_string());
        let c = inner.counters.entry(key.clone()).or_default();
        let (before, today) = (c.warmup.state(), conf.clock.day(now));
        // A new sending day of a scheduled IP first decides on the last one (`ramp`).
        let decided = conf.ramp_of(ip).and_then(|(table, rules)| {
            let d = c.warmup.take(rules, table, today)?;
            c.warmup.decided = Some((now / 1000, d.0.to_string()));
            Some((d, rules.adaptive))
        });
        // `[cluster]`: the farm decides the day (`farm_ramp`); this decision waits for it.
        let ramp = (self.farm().is_some()
            && conf.ramp_of(ip).is_some()
            && before.last_send_day != Some(today))
        .then(|| {
            Box::new(super::farm_ramp::LocalRoll {
                before,
                decided: decided.as_ref().map(|(d, _)| *d),
                today,
            })
        });
        let decided = decided.filter(|_| ramp.is_none());
        c.take(&conf.clock, now, conf.idle_days);
        *inner.active.entry(key.clone()).or_default() += 1;
        inner.dirty.insert(key.clone());
        drop(inner);
        if let Some(((d, tally, cap), adaptive)) = decided {
            self.ramp_decided(ip.address, provider, d, &tally, cap, adaptive);
        }
        Selection::Picked(Pick {
            source: super::Source {
                ip: Some(ip.address),
                helo: ip.helo.clone(),
            },
            lease: Lease {
                pools: Some(self.clone()),
                key: Some(key),
                day: conf.clock.day(now),
                hour: conf.clock.hour(now),
                farm: Vec::new(),
                ramp,
            },
        })
    }
}
