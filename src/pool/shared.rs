//! Picks when several relays share the farm's counters (`[cluster]`).
//!
//! Rules:
//! - The local pick runs first, exactly as on a relay alone (holds, caps on this relay's own
//!   counts, weights); its IP × provider is then taken in the farm's counters in one Redis
//!   script: the daily and hourly caps of the IP × provider and the provider's
//!   `farm_max_per_hour`. The farm's warm-up day comes back with it and replaces this relay's.
//! - The farm refuses → the slot is given back, the IP × provider is marked full until that
//!   window ends, and the pick goes again among the others (nothing left → held, as always).
//!   A refusal because the farm is on another warm-up day only corrects the day and retries.
//! - Redis down → the fallback share (`cluster::counters`); a share used up marks the IP ×
//!   provider full until its window ends or Redis returns, whichever is first.
//! - `farm_max_per_hour` without `[cluster]` caps this relay's IPs together.

use std::net::IpAddr;
use std::sync::Arc;

use super::pools::{Inner, Key, Pools};
use super::select::{Held, Selection};
use super::throttle::Full;
use super::warmup::{Clock, Progress};
use crate::cluster::{Cluster, Limit, ProgressMove, Refused, Taken};

/// Why an IP × provider is full, per counter: (the farm refused, the local share is used up).
const WHY: [(&str, &str); 3] = [
    (
        "farm daily warm-up cap reached",
        "local share of the daily warm-up cap reached (Redis down)",
    ),
    (
        "farm hourly cap reached",
        "local share of the hourly cap reached (Redis down)",
    ),
    (
        "provider's farm_max_per_hour reached",
        "local share of the provider's farm_max_per_hour reached (Redis down)",
    ),
];

/// What one message takes in the farm's counters.
struct Plan {
    limits: Vec<Limit>,
    /// Per limit: index into `WHY`, and the end of its window (unix millis).
    kinds: Vec<(usize, u64)>,
    progress: ProgressMove,
    /// The warm-up day index the caps were computed for.
    index: u32,
}

impl Inner {
    /// Messages taken this hour on every IP of this relay for `provider`.
    pub(super) fn provider_hour(&self, provider: &str, clock: &Clock, now: u64) -> u64 {
        self.counters
            .iter()
            .filter(|((_, p), _)| p == provider)
            .map(|(_, c)| c.used_hour(clock, now))
            .sum()
    }

    /// `farm_max_per_hour` on this relay's own counts (the farm's are checked in Redis).
    pub(super) fn farm_hour_full(
        &self,
        farm_max: u64,
        provider: &str,
        clock: &Clock,
        now: u64,
    ) -> Option<Full> {
        (farm_max > 0 && self.provider_hour(provider, clock, now) >= farm_max).then(|| Full {
            why: WHY[2].0,
            until: clock.next_hour_start(now),
        })
    }
}

impl Pools {
    /// `pick`, then the farm's counters when `[cluster]` is set (see the module's rules).
    pub async fn pick_shared(
        self: &Arc<Self>,
        pool: Option<&str>,
        provider: &str,
        want_v6: bool,
        exclude: &[IpAddr],
    ) -> Selection {
        let Some(cluster) = self.cluster().cloned() else {
            return self.pick(pool, provider, want_v6, exclude);
        };
        let ips = self.conf().pools.iter().map(|p| p.ips.len()).max();
        for _ in 0..2 * ips.unwrap_or(0) + 2 {
            let sel = self.pick(pool, provider, want_v6, exclude);
            let Selection::Picked(mut pick) = sel else {
                return sel;
            };
            let Some(key) = pick.lease.key.clone() else {
                return Selection::Picked(pick);
            };
            let Some(plan) = self.plan(&cluster, &key) else {
                return Selection::Picked(pick);
            };
            match cluster.take(&plan.limits, Some(&plan.progress)).await {
                Ok(taken) => {
                    if let Taken::Shared(Some(p)) = taken {
                        self.set_progress(&key, p);
                    }
                    pick.lease.farm = plan
                        .limits
                        .iter()
                        .map(|l| (l.key.clone(), l.ttl_ms))
                        .collect();
                    return Selection::Picked(pick);
                }
                Err(Refused::Farm { index, progress }) => {
                    pick.lease.refund();
                    let m = &plan.progress;
                    if let Some(p) = progress
                        && p.index_on(m.today, m.idle_days) != plan.index
                    {
                        self.set_progress(&key, *p);
                        continue;
                    }
                    let (why, until) = plan.kinds[index];
                    self.mark_full(&key, WHY[why].0, until);
                    tracing::debug!(source_ip = %key.0, provider, why = WHY[why].0, "farm refused");
                }
                Err(Refused::Share { index }) => {
                    pick.lease.refund();
                    let (why, until) = plan.kinds[index];
                    self.mark_full(&key, WHY[why].1, until);
                    tracing::debug!(source_ip = %key.0, provider, why = WHY[why].1, "local share used");
                }
            }
        }
        Selection::Held(Held {
            text: format!("no source IP has room in the farm's counters for provider {provider}"),
            retry_at: Clock::now_ms() / 1000 + 1,
        })
    }

    /// The farm counters of the message just picked on `key` (its local slot already taken).
    fn plan(&self, cluster: &Cluster, key: &Key) -> Option<Plan> {
        let conf = self.conf();
        let ip = conf
            .pools
            .iter()
            .flat_map(|p| &p.ips)
            .find(|i| i.address == key.0)?;
        let (clock, now) = (conf.clock, Clock::now_ms());
        let inner = self.lock();
        let counters = inner.counters.get(key).cloned().unwrap_or_default();
        let probation = inner.probation_of(key.0, &key.1, now / 1000);
        let caps = conf.caps(ip, &key.1, Some(&counters), probation, now);
        let (day, hour) = (clock.day(now), clock.hour(now));
        let (day_ttl, hour_ttl) = (2 * clock.day_ms, 2 * clock.hour_ms());
        let (ip_s, provider) = (key.0, key.1.as_str());
        let mut limits = vec![
            Limit {
                key: cluster.key(&format!("ipp:{ip_s}|{provider}:d:{day}")),
                cap: caps.daily,
                ttl_ms: day_ttl,
                own: counters.used_today(&clock, now).saturating_sub(1),
            },
            Limit {
                key: cluster.key(&format!("ipp:{ip_s}|{provider}:h:{hour}")),
                cap: caps.hourly,
                ttl_ms: hour_ttl,
                own: counters.used_hour(&clock, now).saturating_sub(1),
            },
        ];
        let mut kinds = vec![
            (0, clock.next_day_start(now)),
            (1, clock.next_hour_start(now)),
        ];
        let farm_max = conf
            .providers
            .get(provider)
            .map_or(0, |p| p.farm_max_per_hour);
        if farm_max > 0 {
            limits.push(Limit {
                key: cluster.key(&format!("provider:{provider}:h:{hour}")),
                cap: Some(farm_max),
                ttl_ms: hour_ttl,
                own: inner.provider_hour(provider, &clock, now).saturating_sub(1),
            });
            kinds.push((2, clock.next_hour_start(now)));
        }
        Some(Plan {
            limits,
            kinds,
            progress: ProgressMove {
                field: format!("{ip_s}|{provider}"),
                today: day,
                idle_days: conf.idle_days,
            },
            index: counters.warmup.index_on(day, conf.idle_days),
        })
    }

    /// The farm's warm-up position replaces this relay's (the day's tally stays this relay's).
    fn set_progress(&self, key: &Key, p: Progress) {
        let mut inner = self.lock();
        let w = &mut inner.counters.entry(key.clone()).or_default().warmup;
        (w.day_index, w.last_send_day) = (p.day_index, p.last_send_day);
        inner.dirty.insert(key.clone());
    }

    fn mark_full(&self, key: &Key, why: &'static str, until: u64) {
        let mut inner = self.lock();
        let c = inner.counters.entry(key.clone()).or_default();
        c.farm_full_until = until;
        c.farm_full_why = why;
    }

    /// Redis is back: the local shares no longer apply; held mail may go.
    pub(super) fn watch_cluster(self: &Arc<Self>, cluster: &Cluster) {
        let mut up = cluster.up_changes();
        let pools = Arc::downgrade(self);
        tokio::spawn(async move {
            while up.changed().await.is_ok() {
                if !*up.borrow_and_update() {
                    continue;
                }
                let Some(p) = pools.upgrade() else { return };
                {
                    let mut inner = p.lock();
                    for c in inner.counters.values_mut() {
                        if WHY.iter().any(|w| w.1 == c.farm_full_why) {
                            c.farm_full_until = 0;
                        }
                    }
                }
                p.wake.notify_one();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn farm_max_per_hour_without_a_cluster_caps_this_relays_ips_together() {
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[provider]]\nname = \"alpha\"\nmx_suffixes = [\"alpha.test\"]\nfarm_max_per_hour = 3\n";
        let p = Arc::new(Pools::from_config(
            &Config::parse(Path::new("t.toml"), text).unwrap(),
        ));
        let mut from = Vec::new();
        for _ in 0..3 {
            match p.pick(Some("a"), "alpha", false, &[]) {
                Selection::Picked(pk) => from.push(pk.source.label()),
                _ => panic!("room for three"),
            }
        }
        assert!(from.contains(&"127.0.0.10".into()) && from.contains(&"127.0.0.11".into()));
        let Selection::Held(h) = p.pick(Some("a"), "alpha", false, &[]) else {
            panic!("the fourth is held");
        };
        assert!(h.text.contains("farm_max_per_hour"), "{}", h.text);
        assert!(matches!(
            p.pick(Some("a"), "other", false, &[]),
            Selection::Picked(_)
        ));
    }
}
