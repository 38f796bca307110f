//! The pools as configured, their live state behind one lock, and what every pick checks: an
//! IP × provider's caps (warm-up daily and hourly, provider throttles, probation trickle) and
//! its holds.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use tokio::sync::Notify;

use super::events::EventSink;
use super::farm::{Farm, HoldSink};
use super::holds::{Hold, HoldKey, HoldKind};
use super::provider::Providers;
use super::ramp::Rules;
use super::rules;
use super::settings::{PoolRule, Settings};
use super::store::StoreError;
use super::throttle::{Caps, Counters, Full, PaceCut};
use super::warmup::{self, Clock};
use crate::outcome::Status;
use crate::spool::RemoteReply;
use crate::state::State;

/// One address to send from. `ip: None` means "let the OS pick" (no pool configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// EHLO name said from this address.
    pub helo: String,
}

impl Source {
    pub fn label(&self) -> String {
        self.ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "any".into())
    }
}

pub(super) struct IpConf {
    pub address: IpAddr,
    pub helo: String,
    pub weight: u32,
    pub warmup: Option<String>,
}

pub(super) struct PoolConf {
    pub name: String,
    pub ips: Vec<IpConf>,
}

/// (IP, provider).
pub(super) type Key = (IpAddr, String);

#[derive(Default)]
pub(super) struct Inner {
    pub counters: HashMap<Key, Counters>,
    pub dirty: HashSet<Key>,
    pub holds: HashMap<HoldKey, Hold>,
    /// When each hold record last changed (unix millis), removals included: the farm's merge
    /// rule compares these (`cluster::events`).
    pub stamps: HashMap<HoldKey, u64>,
    /// Hold records whose incident count changed since the last `flush_counts`.
    pub counted: HashSet<HoldKey>,
    /// Messages in flight per IP × provider.
    pub active: HashMap<Key, u32>,
    /// Smooth weighted round-robin state per pool × provider × family, one weight per IP.
    pub swrr: HashMap<String, Vec<i64>>,
    /// Last "pool has no usable IP" warning per pool × provider (unix millis).
    pub warned: HashMap<String, u64>,
}

/// What the config says about the pools: replaced whole on reload (`Pools::reload`), while
/// the live state (`Inner`: counters, warm-up days, holds) stays.
pub(super) struct Conf {
    pub pools: Vec<PoolConf>,
    default: Option<usize>,
    rules: Vec<PoolRule>,
    pub providers: Providers,
    pub schedules: HashMap<String, Vec<u64>>,
    /// Each schedule's ramp rules (`pool::ramp`).
    pub ramps: HashMap<String, Rules>,
    pub clock: Clock,
    pub idle_days: u64,
    burst: u64,
    /// Messages per hour an IP × provider takes while on probation after a quarantine.
    probe_per_hour: u64,
    pub hold_warning_ms: u64,
    pub fallback_helo: String,
}

pub struct Pools {
    conf: ArcSwap<Conf>,
    pub(super) state: Option<Arc<State>>,
    inner: Mutex<Inner>,
    /// Taken while hold records are written to the store (`Pools::store_current`).
    pub(super) store_lock: Mutex<()>,
    /// Signalled when an IP comes back (undrain, reinstate): the queue retries held mail.
    pub wake: Notify,
    /// Where hold changes go to the farm (`[cluster]`; `None` = this relay alone).
    pub(super) outbox: Option<Arc<dyn HoldSink>>,
    /// The farm's Redis (`[cluster]`), handed while built; `None` = this relay alone.
    farm: Option<Arc<dyn Farm>>,
    /// The same farm, where history events go.
    event_sink: Option<Arc<dyn EventSink>>,
}

pub(super) fn now_s() -> u64 {
    Clock::now_ms() / 1000
}

impl Conf {
    fn new(settings: &Settings) -> Conf {
        let pools: Vec<PoolConf> = settings
            .pool
            .iter()
            .map(|p| PoolConf {
                name: p.name.clone(),
                ips: p
                    .ip
                    .iter()
                    .map(|ip| IpConf {
                        address: ip.address,
                        helo: ip.helo.clone(),
                        weight: ip.weight.max(1),
                        warmup: ip.warmup.clone(),
                    })
                    .collect(),
            })
            .collect();
        let default = pools
            .iter()
            .position(|p| p.name == "default")
            .or(if pools.is_empty() { None } else { Some(0) });
        Conf {
            pools,
            default,
            rules: settings.pool_rule.clone(),
            providers: Providers::new(&settings.provider, settings.throttle.backoff.0),
            schedules: warmup::schedules(&settings.warmup).into_iter().collect(),
            ramps: warmup::schedules(&settings.warmup)
                .into_iter()
                .map(|(name, _)| {
                    let idle = settings.warmup.idle_days;
                    let rules = settings
                        .warmup
                        .schedule
                        .iter()
                        .find(|s| s.name == name)
                        .map_or(Rules::fixed(idle), |s| Rules::of(s, idle));
                    (name, rules)
                })
                .collect(),
            clock: Clock::of(&settings.warmup),
            idle_days: settings.warmup.idle_days,
            burst: settings.warmup.burst,
            probe_per_hour: settings.probe_per_hour.max(1),
            hold_warning_ms: settings.throttle.hold_warning_interval.0.as_millis() as u64,
            fallback_helo: settings.fallback_helo.clone(),
        }
    }

    pub(super) fn caps(
        &self,
        ip: &IpConf,
        provider: &str,
        counters: Option<&Counters>,
        probation: bool,
        now: u64,
    ) -> Caps {
        let p = self.providers.get(provider);
        let mut caps = Caps {
            daily: None,
            hourly: p.map(|p| p.max_per_hour).filter(|&h| h > 0),
            connections: p.map(|p| p.max_connections).filter(|&c| c > 0),
        };
        if let Some((table, rules)) = self.ramp_of(ip) {
            let progress = counters.map(|c| &c.warmup);
            let (_, cap) = progress.map_or((0, table.first().copied()), |p| {
                p.peek(rules, table, self.clock.day(now))
            });
            if let Some(daily) = cap {
                caps.daily = Some(daily);
                let h = warmup::hourly_cap(daily, self.burst);
                caps.hourly = Some(caps.hourly.map_or(h, |x| x.min(h)));
            }
        }
        // Back from a quarantine: only a trickle of probes until the outcomes reinstate it.
        if probation {
            let h = self.probe_per_hour;
            caps.hourly = Some(caps.hourly.map_or(h, |x| x.min(h)));
        }
        caps
    }

    /// The warm-up table and ramp rules of `ip`, if it warms up.
    pub(super) fn ramp_of(&self, ip: &IpConf) -> Option<(&Vec<u64>, &Rules)> {
        let name = ip.warmup.as_ref()?;
        Some((self.schedules.get(name)?, self.ramps.get(name)?))
    }

    /// Whether `ip` can take one more message for `provider` now (holds first, then caps).
    pub(super) fn check(
        &self,
        inner: &Inner,
        ip: &IpConf,
        provider: &str,
        now: u64,
    ) -> Result<(), Full> {
        if let Some(h) = inner.hold_of(ip.address, provider, now / 1000) {
            return Err(Full {
                why: match h.kind {
                    HoldKind::Drained => "drained",
                    HoldKind::Quarantined => "quarantined",
                },
                until: h.until.map_or(u64::MAX, |u| u * 1000),
            });
        }
        let key = (ip.address, provider.to_string());
        let counters = inner.counters.get(&key);
        let probation = inner.probation_of(ip.address, provider, now / 1000);
        let caps = self.caps(ip, provider, counters, probation, now);
        let active = inner.active.get(&key).copied().unwrap_or(0);
        let farm_max = self
            .providers
            .get(provider)
            .map_or(0, |p| p.farm_max_per_hour);
        if let Some(full) = inner.farm_hour_full(farm_max, provider, &self.clock, now) {
            return Err(full);
        }
        counters
            .cloned()
            .unwrap_or_default()
            .check(&caps, active, &self.clock, now)
    }
}

impl Pools {
    /// Pools without persistence (unit tests).
    pub fn without_store(settings: &Settings) -> Pools {
        Pools::new(settings, None).expect("no store, no error")
    }

    /// Pools with their state loaded from the store.
    pub fn new(settings: &Settings, state: Option<Arc<State>>) -> Result<Pools, StoreError> {
        let inner = match &state {
            Some(st) => super::store::load(st)?,
            None => Inner::default(),
        };
        Ok(Pools {
            conf: ArcSwap::from_pointee(Conf::new(settings)),
            state,
            inner: Mutex::new(inner),
            store_lock: Mutex::new(()),
            wake: Notify::new(),
            outbox: None,
            farm: None,
            event_sink: None,
        })
    }

    /// Applies a reloaded config: pools, IPs, weights, rules, providers, warm-up schedules at
    /// once. Counters, warm-up days and holds of IPs that stay are kept; a removed IP is no
    /// longer picked (its leases in flight finish); an added one starts on its schedule.
    pub fn reload(&self, settings: &Settings) {
        let old = self.ips();
        self.conf.store(Arc::new(Conf::new(settings)));
        let new = self.ips();
        for ip in new.iter().filter(|ip| !old.contains(ip)) {
            tracing::info!(source_ip = %ip, "reload: pool IP added");
        }
        for ip in old.iter().filter(|ip| !new.contains(ip)) {
            tracing::info!(source_ip = %ip, "reload: pool IP removed (finishes what it has)");
        }
        {
            // Round-robin positions are per IP index: the lists may have changed.
            let mut inner = self.lock();
            inner.swrr.clear();
            inner.warned.clear();
        }
        if let Some(f) = self.farm() {
            f.set_ips(new);
        }
        // Held mail may fit on an added IP or a raised cap.
        self.wake.notify_one();
    }

    /// Hold changes made here go to `outbox` (the farm's, `[cluster]`), handed while built.
    pub fn sharing_holds(mut self, outbox: Option<Arc<dyn HoldSink>>) -> Pools {
        self.outbox = outbox;
        self
    }

    /// Shares counters and state with `farm` (`[cluster]`), handed while built; start
    /// `watch_farm` once the pools are shared.
    pub fn with_farm<F>(mut self, farm: Option<Arc<F>>) -> Pools
    where
        F: Farm + EventSink,
    {
        self.event_sink = (farm.clone()).map(|f| f as Arc<dyn EventSink>);
        self.farm = farm.map(|f| f as Arc<dyn Farm>);
        self
    }

    pub(super) fn farm(&self) -> Option<&Arc<dyn Farm>> {
        self.farm.as_ref()
    }

    /// Where history events go in the farm (`[cluster]`).
    pub(super) fn event_sink(&self) -> Option<Arc<dyn EventSink>> {
        self.event_sink.clone()
    }

    pub(super) fn conf(&self) -> arc_swap::Guard<Arc<Conf>> {
        self.conf.load()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("pool lock")
    }

    pub fn clock(&self) -> Clock {
        self.conf().clock
    }

    /// The pool for a message: the one set on the envelope (if known), else the first matching
    /// `[[pool_rule]]`, else the default pool (named "default", else the first). `None` when no
    /// pool is configured.
    pub fn pool_for(&self, set: Option<&str>, user: Option<&str>, sender: &str) -> Option<String> {
        let conf = self.conf();
        if let Some(p) = set {
            if let Some(c) = conf.pools.iter().find(|c| c.name == p) {
                return Some(c.name.clone());
            }
            tracing::warn!(pool = p, "unknown pool, using the rules");
        }
        if let Some(r) = conf.rules.iter().find(|r| rules::matches(r, user, sender))
            && let Some(c) = conf.pools.iter().find(|c| c.name == r.pool)
        {
            return Some(c.name.clone());
        }
        conf.default.map(|i| conf.pools[i].name.clone())
    }

    pub fn provider_of(&self, mx_host: &str) -> String {
        self.conf().providers.of(mx_host).to_string()
    }

    /// Messages per connection to this provider before it is closed; 0 = no limit.
    pub fn max_per_connection(&self, provider: &str) -> u32 {
        self.conf()
            .providers
            .get(provider)
            .map(|p| p.max_per_connection)
            .unwrap_or(0)
    }

    /// Counts one recipient's outcome on `ip` × `provider` (API for the Reputation stage).
    pub fn record_outcome(&self, ip: IpAddr, provider: &str, outcome: Status) {
        let key = (ip, provider.to_string());
        let mut inner = self.lock();
        let c = inner.counters.entry(key.clone()).or_default();
        match outcome {
            Status::Sent => c.sent += 1,
            Status::Bounced => c.bounced += 1,
            Status::Deferred | Status::RetryElsewhere => c.deferred += 1,
            // Not an attempt: nothing left this IP.
            Status::Held { .. } => return,
        }
        inner.dirty.insert(key);
    }

    /// Counts a remote reply (its meaning for the IP is the reputation stage's: `throttled`).
    pub fn record_reply(&self, ip: IpAddr, provider: &str, reply: &RemoteReply) {
        self.record_outcome(ip, provider, Status::of_code(reply.code));
    }

    /// A throttling reply (the classifier's `Signal::Throttle`) to a delivery that began at
    /// `sent_at_ms`: the IP × provider pauses for the provider's back-off and its hourly pace
    /// is cut (rules at `PaceCut`); `max_cuts` is `[reputation] throttle_cuts`.
    pub fn throttled(
        &self,
        ip: IpAddr,
        provider: &str,
        sent_at_ms: u64,
        reply: &RemoteReply,
        max_cuts: u32,
    ) -> PaceCut {
        self.back_off(ip, provider, reply);
        let now = Clock::now_ms();
        let conf = self.conf();
        let key = (ip, provider.to_string());
        let mut inner = self.lock();
        let probation = inner.probation_of(ip, provider, now / 1000);
        let hourly = conf
            .pools
            .iter()
            .flat_map(|p| &p.ips)
            .find(|c| c.address == ip)
            .and_then(|c| {
                conf.caps(c, provider, inner.counters.get(&key), probation, now)
                    .hourly
            });
        let c = inner.counters.entry(key.clone()).or_default();
        let cut = c.cut_pace(hourly, &conf.clock, now, sent_at_ms, max_cuts);
        if let PaceCut::Cut { per_hour, cuts } = cut {
            tracing::warn!(source_ip = %ip, provider, per_hour, cuts, until_day_ends = %humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(conf.clock.next_day_start(now))), "throttling reply: hourly pace cut");
        }
        inner.dirty.insert(key);
        cut
    }

    /// A "slow down" reply: this IP × provider takes nothing for the provider's back-off.
    pub fn back_off(&self, ip: IpAddr, provider: &str, reply: &RemoteReply) {
        let wait = self.conf().providers.backoff(provider);
        let until = Clock::now_ms() + wait.as_millis() as u64;
        let key = (ip, provider.to_string());
        let mut inner = self.lock();
        let c = inner.counters.entry(key.clone()).or_default();
        if c.backoff_until < until {
            c.backoff_until = until;
            c.backoff_reason = format!("{} {} {}", reply.code, reply.status, reply.text);
            tracing::warn!(source_ip = %ip, provider, reply = %c.backoff_reason, wait = %humantime::format_duration(wait), "slow-down reply: backing off");
        }
        inner.dirty.insert(key);
    }

    /// Every pool IP once (for DNSBL checks and the like).
    pub fn ips(&self) -> Vec<IpAddr> {
        let conf = self.conf();
        once_each(conf.pools.iter().flat_map(|p| &p.ips).map(|c| c.address))
    }
}

fn once_each(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v
}
