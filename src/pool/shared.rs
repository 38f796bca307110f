//! Picks when several relays share the farm's counters (`[cluster]`).
//!
//! Rules:
//! - The local pick runs first, exactly as on a relay alone (holds, caps on this relay's own
//!   counts, weights). A new sending day of an IP on a schedule is then decided by the farm
//!   (`farm_ramp`), so the caps are the farm's ramp's. The IP × provider is then taken in the
//!   farm's counters in one Redis script: the daily and hourly caps of the IP × provider, the
//!   provider's `farm_max_per_hour`, and for a ramp its day's messages taken. For an IP without
//!   a schedule the script moves the shared warm-up progress, which replaces this relay's.
//! - The farm refuses → the slot is given back, the IP × provider is marked full until that
//!   window ends, and the pick goes again among the others (nothing left → held, as always).
//!   A refusal because the farm is on another warm-up day only corrects the day and retries.
//! - Redis down → the fallback share (`cluster::counters`); a share used up marks the IP ×
//!   provider full until its window ends or Redis returns, whichever is first.
//! - `farm_max_per_hour` without `[cluster]` caps this relay's IPs together.
//! - The operator's views (`farm_counts`) show the farm's day and hour counts per IP × provider,
//!   read from Redis when the view is built (this relay's own beside them), and why the farm
//!   refuses: the refusal this relay was given, else a farm count at its cap. Redis down: the
//!   count last read plus this relay's takes since, and no refusal is guessed from it.

use std::net::IpAddr;
use std::sync::Arc;

use super::farm::{Farm, Limit, ProgressMove, Refused, Taken};
use super::farm_ramp::tally_ttl;
use super::pools::{Inner, Key, Pools};
use super::select::{Held, Selection};
use super::throttle::Full;
use super::view::{CountsFrom, PoolsView, ProviderView};
use super::warmup::{Clock, Progress};

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

/// The farm's counter keys of an IP × provider (day, hour) and of a provider's hour.
fn day_key(farm: &dyn Farm, ip: IpAddr, provider: &str, day: u64) -> String {
    farm.key(&format!("ipp:{ip}|{provider}:d:{day}"))
}

fn hour_key(farm: &dyn Farm, ip: IpAddr, provider: &str, hour: u64) -> String {
    farm.key(&format!("ipp:{ip}|{provider}:h:{hour}"))
}

fn provider_key(farm: &dyn Farm, provider: &str, hour: u64) -> String {
    farm.key(&format!("provider:{provider}:h:{hour}"))
}

/// What one message takes in the farm's counters.
struct Plan {
    limits: Vec<Limit>,
    /// Per limit: index into `WHY`, and the end of its window (unix millis).
    kinds: Vec<(usize, u64)>,
    /// The warm-up progress of an IP without a ramp (a ramp's is `farm_ramp`'s).
    progress: Option<ProgressMove>,
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
        let Some(farm) = self.farm().cloned() else {
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
            // A new sending day: the farm's ramp first, so the caps below are the farm's.
            if let Some(roll) = pick.lease.ramp.take() {
                self.farm_roll(farm.as_ref(), &key, *roll).await;
            }
            let Some(plan) = self.plan(farm.as_ref(), &key) else {
                return Selection::Picked(pick);
            };
            match farm.take(&plan.limits, plan.progress.as_ref()).await {
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
                    if let (Some(p), Some(m)) = (progress, &plan.progress)
                        && p.index_on(m.today, m.idle_days) != plan.index
                    {
                        self.set_progress(&key, *p);
                        continue;
                    }
                    // Another pick adopted the farm's ramp while this one was asking (a new
                    // day, or an IP new to this relay): the cap it asked with is stale.
                    let cap = |p: &Plan| p.limits.first().and_then(|l| l.cap);
                    if self
                        .plan(farm.as_ref(), &key)
                        .is_some_and(|now| cap(&now) != cap(&plan))
                    {
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
    fn plan(&self, farm: &dyn Farm, key: &Key) -> Option<Plan> {
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
                key: day_key(farm, ip_s, provider, day),
                cap: caps.daily,
                ttl_ms: day_ttl,
                own: counters.used_today(&clock, now).saturating_sub(1),
            },
            Limit {
                key: hour_key(farm, ip_s, provider, hour),
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
                key: provider_key(farm, provider, hour),
                cap: Some(farm_max),
                ttl_ms: hour_ttl,
                own: inner.provider_hour(provider, &clock, now).saturating_sub(1),
            });
            kinds.push((2, clock.next_hour_start(now)));
        }
        // A ramp's day counts the farm's messages taken (`farm_ramp`); no cap, never refused.
        let ramp = conf.ramp_of(ip).is_some();
        if ramp {
            limits.push(Limit {
                key: farm.ramp_taken_key(ip_s, provider, day),
                cap: None,
                ttl_ms: tally_ttl(clock.day_ms, conf.idle_days),
                own: 0,
            });
            kinds.push((0, clock.next_day_start(now)));
        }
        Some(Plan {
            limits,
            kinds,
            progress: (!ramp).then(|| ProgressMove {
                field: format!("{ip_s}|{provider}"),
                today: day,
                idle_days: conf.idle_days,
            }),
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
    pub fn watch_farm(self: &Arc<Self>) {
        let Some(farm) = self.farm() else { return };
        let mut up = farm.up_changes();
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

/// The farm's counts of one IP × provider as read for a view.
#[derive(Debug, Clone, Copy, Default)]
struct FarmRead {
    day: Option<u64>,
    hour: Option<u64>,
    /// The provider's hour count across the farm, and its `farm_max_per_hour`.
    provider_hour: Option<(u64, u64)>,
    live: bool,
    /// Unix seconds at which the day and the hour end.
    day_end: u64,
    hour_end: u64,
}

/// Puts the farm's counts into `p` (this relay's own kept as `*_here`) and, read live, a
/// refusal the farm would give now if this relay was not given one yet.
fn fill(p: &mut ProviderView, r: FarmRead) {
    p.used_today_here = Some(p.used_today);
    p.used_hour_here = Some(p.used_hour);
    p.counts_from = Some(match (r.day, r.live) {
        (None, _) => CountsFrom::Here,
        (Some(_), true) => CountsFrom::Farm,
        (Some(_), false) => CountsFrom::FarmLastRead,
    });
    p.used_today = r.day.unwrap_or(p.used_today);
    p.used_hour = r.hour.unwrap_or(p.used_hour);
    if p.farm_full.is_some() || !r.live {
        return;
    }
    let at = |n: u64, cap: Option<u64>| cap.is_some_and(|c| n >= c);
    let full = if at(p.used_today, p.cap_today) {
        Some((WHY[0].0, r.day_end))
    } else if at(p.used_hour, p.cap_hour) {
        Some((WHY[1].0, r.hour_end))
    } else {
        r.provider_hour
            .filter(|(n, max)| n >= max)
            .map(|_| (WHY[2].0, r.hour_end))
    };
    if let Some((why, until)) = full {
        p.farm_full = Some(why.to_string());
        p.farm_full_until = Some(until);
    }
}

impl Pools {
    /// With `[cluster]`, the farm's counts and refusals in `view` (see the module's rules);
    /// without it, nothing changes.
    pub async fn farm_counts(&self, view: &mut PoolsView) {
        let Some(farm) = self.farm().cloned() else {
            return;
        };
        let conf = self.conf();
        let (clock, now) = (conf.clock, Clock::now_ms());
        let (day, hour) = (clock.day(now), clock.hour(now));
        let farm_max = |provider: &str| {
            conf.providers
                .get(provider)
                .map_or(0, |p| p.farm_max_per_hour)
        };
        // Per IP × provider its day and hour keys, then one key per capped provider.
        let mut keys = Vec::new();
        let mut capped: Vec<String> = Vec::new();
        for ip in view.pools.iter().flat_map(|p| &p.ips) {
            let Ok(addr) = ip.ip.parse::<IpAddr>() else {
                continue;
            };
            for provider in ip.providers.keys() {
                keys.push(day_key(farm.as_ref(), addr, provider, day));
                keys.push(hour_key(farm.as_ref(), addr, provider, hour));
                if farm_max(provider) > 0 && !capped.contains(provider) {
                    capped.push(provider.clone());
                }
            }
        }
        let ipp = keys.len();
        keys.extend(capped.iter().map(|p| provider_key(farm.as_ref(), p, hour)));
        let (counts, live) = farm.counts(&keys).await;
        let (day_end, hour_end) = (
            clock.next_day_start(now) / 1000,
            clock.next_hour_start(now) / 1000,
        );
        let mut at = 0;
        for ip in view.pools.iter_mut().flat_map(|p| &mut p.ips) {
            if ip.ip.parse::<IpAddr>().is_err() {
                continue;
            }
            for (provider, p) in ip.providers.iter_mut() {
                let provider_hour = capped
                    .iter()
                    .position(|c| c == provider)
                    .and_then(|i| counts.get(ipp + i).copied().flatten())
                    .map(|n| (n, farm_max(provider)));
                let read = FarmRead {
                    day: counts.get(at).copied().flatten(),
                    hour: counts.get(at + 1).copied().flatten(),
                    provider_hour,
                    live,
                    day_end,
                    hour_end,
                };
                fill(p, read);
                at += 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn provider(used_today: u64, cap_today: Option<u64>, used_hour: u64) -> ProviderView {
        ProviderView {
            state: crate::pool::IpState::Warming,
            probation: false,
            warmup_day: Some(0),
            adaptive: false,
            warmup_decision: None,
            warmup_decision_at: None,
            used_today,
            cap_today,
            used_hour,
            cap_hour: Some(1000),
            connections: 0,
            sent: used_today,
            deferred: 0,
            bounced: 0,
            backoff_until: None,
            backoff_reason: None,
            used_today_here: None,
            used_hour_here: None,
            counts_from: None,
            farm_full: None,
            farm_full_until: None,
            pace_per_hour: None,
        }
    }

    fn read(day: u64, hour: u64, live: bool) -> FarmRead {
        FarmRead {
            day: Some(day),
            hour: Some(hour),
            provider_hour: None,
            live,
            day_end: 500,
            hour_end: 50,
        }
    }

    #[test]
    fn a_view_shows_the_farms_counts_and_a_cap_the_farm_reached() {
        // This relay sent 9 of the 10; the farm is at 10 and refuses.
        let mut p = provider(9, Some(10), 2);
        fill(&mut p, read(10, 3, true));
        assert_eq!((p.used_today, p.used_today_here), (10, Some(9)));
        assert_eq!((p.used_hour, p.used_hour_here), (3, Some(2)));
        assert_eq!(p.counts_from, Some(CountsFrom::Farm));
        assert_eq!(
            p.farm_full.as_deref(),
            Some("farm daily warm-up cap reached")
        );
        assert_eq!(p.farm_full_until, Some(500));

        let mut p = provider(4, Some(10), 1);
        fill(&mut p, read(6, 2, true));
        assert_eq!(p.farm_full, None, "room left");
        let mut p = provider(4, Some(10), 1);
        fill(
            &mut p,
            FarmRead {
                provider_hour: Some((6, 6)),
                ..read(6, 2, true)
            },
        );
        assert_eq!(
            p.farm_full.as_deref(),
            Some("provider's farm_max_per_hour reached")
        );
        assert_eq!(p.farm_full_until, Some(50));
    }

    #[test]
    fn a_refusal_given_stays_and_none_is_guessed_while_redis_is_down() {
        let mut p = provider(3, Some(10), 1);
        p.farm_full = Some(WHY[1].0.into());
        fill(&mut p, read(10, 3, true));
        assert_eq!(p.farm_full.as_deref(), Some("farm hourly cap reached"));

        let mut p = provider(3, Some(10), 1);
        fill(&mut p, read(10, 3, false));
        assert_eq!(p.counts_from, Some(CountsFrom::FarmLastRead));
        assert_eq!((p.used_today, p.farm_full), (10, None));

        let mut p = provider(3, Some(10), 1);
        fill(&mut p, FarmRead::default());
        assert_eq!(p.counts_from, Some(CountsFrom::Here));
        assert_eq!((p.used_today, p.used_today_here), (3, Some(3)));
    }

    #[test]
    fn farm_max_per_hour_without_a_cluster_caps_this_relays_ips_together() {
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[provider]]\nname = \"alpha\"\nmx_suffixes = [\"alpha.test\"]\nfarm_max_per_hour = 3\n";
        let p = Arc::new(Pools::without_store(
            &Config::parse(Path::new("t.toml"), text)
                .unwrap()
                .pool_settings(),
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
        // Without [cluster] the view keeps this relay's counts and adds nothing.
        let mut view = p.status();
        futures_util::FutureExt::now_or_never(p.farm_counts(&mut view)).expect("no I/O");
        let v = serde_json::to_value(&view).unwrap();
        let alpha = &v["pools"][0]["ips"][0]["providers"]["alpha"];
        assert!(alpha["used_today"].as_u64().is_some_and(|n| n > 0), "{v}");
        for field in ["used_today_here", "counts_from", "farm_full"] {
            assert!(alpha.get(field).is_none(), "{field}: {v}");
        }
    }
}
