//! Which source IP sends a message. Pools of IPs chosen per message by `[[pool_rule]]`; per
//! IP × provider warm-up caps, throttles and back-off; operator drains and reputation
//! quarantines; smooth weighted round-robin among the IPs that can take the message now.
//! Nothing eligible → delivery holds the message (never a bounce) until capacity returns.
//!
//! State (counters, warm-up position, drains, quarantines) lives in memory behind one lock and
//! is written to the redb store (`State::pool_write`): holds at once, counters by `flush`.

pub mod provider;
pub mod rules;
pub mod throttle;
pub mod warmup;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use crate::config::{Config, PoolRule};
use crate::spool::RemoteReply;
use crate::state::State;
use provider::Providers;
use throttle::{Caps, Counters, Full};
use warmup::Clock;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// Taken out by the operator (`pool drain`).
    Drained,
    /// Taken out by reputation signals (listing, block replies, bounce rate).
    Quarantined,
}

/// Which providers a drain or quarantine covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Provider(String),
}

impl Scope {
    pub fn parse(s: Option<&str>) -> Scope {
        match s.map(str::trim) {
            None | Some("") | Some("all") | Some("*") => Scope::All,
            Some(p) => Scope::Provider(p.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Scope::All => "all",
            Scope::Provider(p) => p,
        }
    }
}

/// A drain or quarantine record of one IP × scope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hold {
    pub kind: HoldKind,
    pub scope: String,
    pub reason: String,
    #[serde(default)]
    pub evidence: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds; a quarantine ends by itself then. `None` = until reinstated.
    #[serde(default)]
    pub until: Option<u64>,
}

impl Hold {
    fn in_force(&self, now_s: u64) -> bool {
        self.until.is_none_or(|u| u > now_s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Deferred,
    Bounced,
}

/// Nothing in the pool can take the message now: hold it (not a failed attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `pool NAME: …` (see `is_hold_reply`).
    pub text: String,
    /// Unix seconds to look again (drain/undrain and reinstatement also wake the queue).
    pub retry_at: u64,
}

/// The reply recorded on a held recipient.
pub const HOLD_CODE: u16 = 451;
pub const HOLD_STATUS: &str = "4.7.0";

/// True for the reply `Held` produces, so the queue can wake held recipients early.
pub fn is_hold_reply(r: &RemoteReply) -> bool {
    r.code == HOLD_CODE && r.status == HOLD_STATUS && r.text.starts_with("pool ")
}

struct IpConf {
    address: IpAddr,
    helo: String,
    weight: u32,
    warmup: Option<String>,
}

struct PoolConf {
    name: String,
    ips: Vec<IpConf>,
}

type Key = (IpAddr, String);

#[derive(Default)]
struct Inner {
    counters: HashMap<Key, Counters>,
    dirty: HashSet<Key>,
    /// (IP, scope) → hold.
    holds: HashMap<Key, Hold>,
    /// Connections in use per IP × provider.
    active: HashMap<Key, u32>,
    /// Smooth weighted round-robin state per pool × provider × family, one weight per IP.
    swrr: HashMap<String, Vec<i64>>,
    /// Last "pool has no usable IP" warning per pool × provider (unix millis).
    warned: HashMap<String, u64>,
}

pub struct Pools {
    pools: Vec<PoolConf>,
    default: Option<usize>,
    rules: Vec<PoolRule>,
    providers: Providers,
    schedules: HashMap<String, Vec<u64>>,
    clock: Clock,
    idle_days: u64,
    burst: u64,
    /// Messages per hour an IP × provider takes while on probation after a quarantine.
    probe_per_hour: u64,
    hold_warning_ms: u64,
    fallback_helo: String,
    state: Option<Arc<State>>,
    inner: Mutex<Inner>,
    /// Signalled when an IP comes back (undrain, reinstate): the queue retries held mail.
    pub wake: Notify,
}

fn now_s() -> u64 {
    Clock::now_ms() / 1000
}

fn counter_key(ip: IpAddr, provider: &str) -> String {
    format!("ipp|{ip}|{provider}")
}

fn hold_key(ip: IpAddr, scope: &str) -> String {
    format!("hold|{ip}|{scope}")
}

/// A message slot taken on one IP × provider: the connection count drops with it; `refund`
/// gives the slot back when nothing was sent.
pub struct Lease {
    pools: Option<Arc<Pools>>,
    key: Option<Key>,
    day: u64,
    hour: u64,
}

impl Lease {
    pub fn refund(self) {
        if let (Some(p), Some(k)) = (&self.pools, &self.key) {
            let mut inner = p.inner.lock().expect("pool lock");
            if let Some(c) = inner.counters.get_mut(k) {
                c.refund(self.day, self.hour);
            }
            inner.dirty.insert(k.clone());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(p), Some(k)) = (&self.pools, &self.key) {
            let mut inner = p.inner.lock().expect("pool lock");
            if let Some(n) = inner.active.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Pools {
    /// Pools without persistence (unit tests).
    pub fn from_config(config: &Config) -> Pools {
        Pools::new(config, None).expect("no store, no error")
    }

    /// Pools with their state loaded from the store.
    pub fn new(config: &Config, state: Option<Arc<State>>) -> Result<Pools, String> {
        let pools: Vec<PoolConf> = config
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
        let mut inner = Inner::default();
        if let Some(st) = &state {
            for (k, v) in st.pool_load().map_err(|e| e.to_string())? {
                let mut parts = k.splitn(3, '|');
                let (Some(kind), Some(ip), Some(rest)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                match kind {
                    "ipp" => {
                        if let Ok(c) = serde_json::from_str::<Counters>(&v) {
                            inner.counters.insert((ip, rest.to_string()), c);
                        }
                    }
                    "hold" => {
                        if let Ok(h) = serde_json::from_str::<Hold>(&v) {
                            inner.holds.insert((ip, rest.to_string()), h);
                        }
                    }
                    _ => {}
                }
            }
        }
        for ((ip, scope), h) in &inner.holds {
            tracing::info!(source_ip = %ip, scope = %scope, kind = ?h.kind, reason = %h.reason, "pool IP held (from the state store)");
        }
        Ok(Pools {
            pools,
            default,
            rules: config.pool_rule.clone(),
            providers: Providers::from_config(config),
            schedules: warmup::schedules(config).into_iter().collect(),
            clock: Clock::from_config(config),
            idle_days: config.warmup.idle_days,
            burst: config.warmup.burst,
            probe_per_hour: config.reputation.probe_per_hour.max(1),
            hold_warning_ms: config.throttle.hold_warning_interval.0.as_millis() as u64,
            fallback_helo: config
                .delivery
                .helo
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            state,
            inner: Mutex::new(inner),
            wake: Notify::new(),
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The pool for a message: the one set on the envelope (if known), else the first matching
    /// `[[pool_rule]]`, else the default pool (named "default", else the first). `None` when no
    /// pool is configured.
    pub fn pool_for(&self, set: Option<&str>, user: Option<&str>, sender: &str) -> Option<&str> {
        if let Some(p) = set {
            if let Some(c) = self.pools.iter().find(|c| c.name == p) {
                return Some(&c.name);
            }
            tracing::warn!(pool = p, "unknown pool, using the rules");
        }
        if let Some(r) = self.rules.iter().find(|r| rules::matches(r, user, sender))
            && let Some(c) = self.pools.iter().find(|c| c.name == r.pool)
        {
            return Some(&c.name);
        }
        self.default.map(|i| self.pools[i].name.as_str())
    }

    pub fn provider_of(&self, mx_host: &str) -> &str {
        self.providers.of(mx_host)
    }

    /// Messages per connection to this provider before it is closed; 0 = no limit.
    pub fn max_per_connection(&self, provider: &str) -> u32 {
        self.providers
            .get(provider)
            .map(|p| p.max_per_connection)
            .unwrap_or(0)
    }

    fn caps(
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
        if let Some(schedule) = ip.warmup.as_ref().and_then(|w| self.schedules.get(w)) {
            let index = counters
                .map(|c| c.warmup)
                .unwrap_or_default()
                .index_on(self.clock.day(now), self.idle_days);
            if let Some(daily) = warmup::daily_cap(schedule, index) {
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

    /// On probation: a quarantine of `ip` for `provider` whose cool-down is over, not yet ended
    /// by good outcomes (`end_probation`) nor extended by a new quarantine.
    fn probation_of(inner: &Inner, ip: IpAddr, provider: &str, now_s: u64) -> bool {
        inner
            .holds
            .get(&(ip, provider.to_string()))
            .is_some_and(|h| h.kind == HoldKind::Quarantined && !h.in_force(now_s))
    }

    /// Whether `ip` × `provider` is on probation (taking only `probe_per_hour`).
    pub fn in_probation(&self, ip: IpAddr, provider: &str) -> bool {
        let inner = self.inner.lock().expect("pool lock");
        Self::probation_of(&inner, ip, provider, now_s())
    }

    /// The probes went well: `ip` takes its full share for `provider` again. Returns whether
    /// it was on probation.
    pub fn end_probation(&self, ip: IpAddr, provider: &str) -> Result<bool, String> {
        if !self.in_probation(ip, provider) {
            return Ok(false);
        }
        tracing::info!(source_ip = %ip, provider, "probe succeeded: pool IP reinstated");
        self.set_hold(ip, &Scope::Provider(provider.to_string()), None)
    }

    /// The drain or quarantine keeping `ip` from `provider`, if any (expired ones are ignored).
    fn hold_of<'a>(inner: &'a Inner, ip: IpAddr, provider: &str, now_s: u64) -> Option<&'a Hold> {
        [
            inner.holds.get(&(ip, "all".to_string())),
            inner.holds.get(&(ip, provider.to_string())),
        ]
        .into_iter()
        .flatten()
        .find(|h| h.in_force(now_s))
    }

    fn check(&self, inner: &Inner, ip: &IpConf, provider: &str, now: u64) -> Result<(), Full> {
        if let Some(h) = Self::hold_of(inner, ip.address, provider, now / 1000) {
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
        let probation = Self::probation_of(inner, ip.address, provider, now / 1000);
        let caps = self.caps(ip, provider, counters, probation, now);
        let active = inner.active.get(&key).copied().unwrap_or(0);
        counters
            .cloned()
            .unwrap_or_default()
            .check(&caps, active, &self.clock, now)
    }

    /// Source IPs to try, in order, for one connection to an address of the given family and
    /// provider: eligible IPs only (not drained or quarantined, under every cap), the smooth
    /// weighted round-robin pick first, then the rest for failover. Empty when the pool has no
    /// address of that family; `Err` when it has some but none can take the message now.
    pub fn select(
        &self,
        pool: Option<&str>,
        provider: &str,
        want_v6: bool,
    ) -> Result<Vec<Source>, Held> {
        let Some(pc) = pool.and_then(|n| self.pools.iter().find(|p| p.name == n)) else {
            return Ok(vec![Source {
                ip: None,
                helo: self.fallback_helo.clone(),
            }]);
        };
        let now = Clock::now_ms();
        let mut inner = self.inner.lock().expect("pool lock");
        let family: Vec<usize> = (0..pc.ips.len())
            .filter(|&i| pc.ips[i].address.is_ipv6() == want_v6)
            .collect();
        if family.is_empty() {
            return Ok(Vec::new());
        }
        let mut eligible = Vec::new();
        let mut reasons = Vec::new();
        let mut until = u64::MAX;
        let mut all_out = true;
        for &i in &family {
            match self.check(&inner, &pc.ips[i], provider, now) {
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
            if all_out && (last == 0 || now.saturating_sub(last) >= self.hold_warning_ms) {
                inner.warned.insert(wkey, now);
                tracing::warn!(pool = %pc.name, provider, reason = %text, "no usable source IP: holding mail");
            } else {
                tracing::debug!(pool = %pc.name, provider, reason = %text, "no capacity: holding mail");
            }
            return Err(Held { text, retry_at });
        }
        let wkey = format!("{}|{provider}|{want_v6}", pc.name);
        let current = inner
            .swrr
            .entry(wkey)
            .or_insert_with(|| vec![0; pc.ips.len()]);
        let total: i64 = eligible.iter().map(|&i| pc.ips[i].weight as i64).sum();
        for &i in &eligible {
            current[i] += pc.ips[i].weight as i64;
        }
        let best = *eligible
            .iter()
            .max_by_key(|&&i| (current[i], std::cmp::Reverse(i)))
            .expect("not empty");
        current[best] -= total;
        let mut rest: Vec<usize> = eligible.into_iter().filter(|&i| i != best).collect();
        rest.sort_by_key(|&i| (std::cmp::Reverse(current[i]), i));
        Ok(std::iter::once(best)
            .chain(rest)
            .map(|i| Source {
                ip: Some(pc.ips[i].address),
                helo: pc.ips[i].helo.clone(),
            })
            .collect())
    }

    /// Takes one message slot on `source` × `provider` if it can still take one (another
    /// delivery may have used the last since `select`).
    pub fn take(self: &Arc<Self>, source: &Source, provider: &str) -> Option<Lease> {
        let Some(ip) = source.ip else {
            return Some(Lease {
                pools: None,
                key: None,
                day: 0,
                hour: 0,
            });
        };
        let conf = self
            .pools
            .iter()
            .flat_map(|p| &p.ips)
            .find(|c| c.address == ip)?;
        let now = Clock::now_ms();
        let mut inner = self.inner.lock().expect("pool lock");
        self.check(&inner, conf, provider, now).ok()?;
        let key = (ip, provider.to_string());
        inner
            .counters
            .entry(key.clone())
            .or_default()
            .take(&self.clock, now, self.idle_days);
        *inner.active.entry(key.clone()).or_default() += 1;
        inner.dirty.insert(key.clone());
        Some(Lease {
            pools: Some(self.clone()),
            key: Some(key),
            day: self.clock.day(now),
            hour: self.clock.hour(now),
        })
    }

    /// Counts one recipient's outcome on `ip` × `provider` (API for the Reputation stage).
    pub fn record_outcome(&self, ip: IpAddr, provider: &str, outcome: Outcome) {
        let key = (ip, provider.to_string());
        let mut inner = self.inner.lock().expect("pool lock");
        let c = inner.counters.entry(key.clone()).or_default();
        match outcome {
            Outcome::Sent => c.sent += 1,
            Outcome::Deferred => c.deferred += 1,
            Outcome::Bounced => c.bounced += 1,
        }
        inner.dirty.insert(key);
    }

    /// Counts a remote reply and backs the IP × provider off on a "slow down" reply.
    pub fn record_reply(&self, ip: IpAddr, provider: &str, reply: &RemoteReply) {
        let outcome = match reply.code {
            200..=299 => Outcome::Sent,
            500..=599 => Outcome::Bounced,
            _ => Outcome::Deferred,
        };
        self.record_outcome(ip, provider, outcome);
        if self.providers.is_slowdown(reply) {
            self.back_off(ip, provider, reply);
        }
    }

    /// A "slow down" reply: this IP × provider takes nothing for the provider's back-off.
    pub fn back_off(&self, ip: IpAddr, provider: &str, reply: &RemoteReply) {
        let wait = self.providers.backoff(provider);
        let until = Clock::now_ms() + wait.as_millis() as u64;
        let key = (ip, provider.to_string());
        let mut inner = self.inner.lock().expect("pool lock");
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
        let mut v: Vec<IpAddr> = Vec::new();
        for c in self.pools.iter().flat_map(|p| &p.ips) {
            if !v.contains(&c.address) {
                v.push(c.address);
            }
        }
        v
    }

    /// Drains and quarantines in force, by IP.
    pub fn holds(&self) -> Vec<(IpAddr, Hold)> {
        let now = now_s();
        let inner = self.inner.lock().expect("pool lock");
        inner
            .holds
            .iter()
            .filter(|(_, h)| h.in_force(now))
            .map(|((ip, _), h)| (*ip, h.clone()))
            .collect()
    }

    fn knows(&self, ip: IpAddr) -> bool {
        self.pools
            .iter()
            .flat_map(|p| &p.ips)
            .any(|c| c.address == ip)
    }

    fn set_hold(&self, ip: IpAddr, scope: &Scope, hold: Option<Hold>) -> Result<bool, String> {
        if !self.knows(ip) {
            return Err(format!("{ip} is not in any pool"));
        }
        let key = (ip, scope.as_str().to_string());
        let changed = {
            let mut inner = self.inner.lock().expect("pool lock");
            match &hold {
                Some(h) => {
                    inner.holds.insert(key.clone(), h.clone());
                    true
                }
                None => inner.holds.remove(&key).is_some(),
            }
        };
        if let Some(st) = &self.state {
            let value = hold
                .as_ref()
                .map(|h| serde_json::to_string(h).expect("hold serialises"));
            st.pool_write(&[(hold_key(ip, scope.as_str()), value)])
                .map_err(|e| e.to_string())?;
        }
        // Wake the queue either way: held mail may go now (or elsewhere).
        self.wake.notify_one();
        Ok(changed)
    }

    /// Takes `ip` out of rotation for `scope` (quarantine by reputation signals). In-flight
    /// deliveries finish; `until` (unix seconds) ends it by itself.
    pub fn quarantine(
        &self,
        ip: IpAddr,
        scope: Scope,
        reason: &str,
        evidence: &str,
        until: Option<u64>,
    ) -> Result<(), String> {
        tracing::warn!(source_ip = %ip, scope = scope.as_str(), reason, evidence, until, "pool IP quarantined");
        self.set_hold(
            ip,
            &scope,
            Some(Hold {
                kind: HoldKind::Quarantined,
                scope: scope.as_str().to_string(),
                reason: reason.to_string(),
                evidence: evidence.to_string(),
                since: now_s(),
                until,
            }),
        )
        .map(|_| ())
    }

    /// Ends a quarantine of `ip` for `scope`. Returns whether there was one.
    pub fn reinstate(&self, ip: IpAddr, scope: Scope) -> Result<bool, String> {
        let is_q = {
            let inner = self.inner.lock().expect("pool lock");
            inner
                .holds
                .get(&(ip, scope.as_str().to_string()))
                .is_some_and(|h| h.kind == HoldKind::Quarantined)
        };
        if !is_q {
            return Ok(false);
        }
        tracing::info!(source_ip = %ip, scope = scope.as_str(), "pool IP reinstated");
        self.set_hold(ip, &scope, None)
    }

    /// Operator drain: no new deliveries from `ip` for `scope` until `undrain`.
    pub fn drain(&self, ip: IpAddr, scope: Scope, reason: &str) -> Result<(), String> {
        tracing::warn!(source_ip = %ip, scope = scope.as_str(), reason, "pool IP drained");
        self.set_hold(
            ip,
            &scope,
            Some(Hold {
                kind: HoldKind::Drained,
                scope: scope.as_str().to_string(),
                reason: reason.to_string(),
                evidence: String::new(),
                since: now_s(),
                until: None,
            }),
        )
        .map(|_| ())
    }

    /// Ends a drain (or, from the operator, any hold) of `ip` for `scope`.
    pub fn undrain(&self, ip: IpAddr, scope: Scope) -> Result<bool, String> {
        tracing::info!(source_ip = %ip, scope = scope.as_str(), "pool IP undrained");
        self.set_hold(ip, &scope, None)
    }

    /// Writes changed counters to the store.
    pub fn flush(&self) {
        let Some(st) = &self.state else { return };
        let records: Vec<(String, Option<String>)> = {
            let mut inner = self.inner.lock().expect("pool lock");
            let dirty: Vec<Key> = inner.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|k| {
                    let c = inner.counters.get(&k)?;
                    Some((
                        counter_key(k.0, &k.1),
                        Some(serde_json::to_string(c).expect("counters serialise")),
                    ))
                })
                .collect()
        };
        if records.is_empty() {
            return;
        }
        if let Err(e) = st.pool_write(&records) {
            tracing::error!(error = %e, "cannot save pool counters");
        }
    }

    /// Every pool IP with its state, holds and per-provider warm-up and counters.
    pub fn status(&self) -> serde_json::Value {
        let now = Clock::now_ms();
        let today = self.clock.day(now);
        let inner = self.inner.lock().expect("pool lock");
        let pools: Vec<serde_json::Value> = self
            .pools
            .iter()
            .map(|pc| {
                let ips: Vec<serde_json::Value> = pc
                    .ips
                    .iter()
                    .map(|ip| self.ip_status(&inner, ip, now, today))
                    .collect();
                json!({ "name": pc.name, "ips": ips })
            })
            .collect();
        json!({
            "day_ms": self.clock.day_ms,
            "day": today,
            "pools": pools,
        })
    }

    fn ip_status(&self, inner: &Inner, ip: &IpConf, now: u64, today: u64) -> serde_json::Value {
        let now_s = now / 1000;
        let holds: Vec<&Hold> = inner
            .holds
            .iter()
            .filter(|((a, _), h)| *a == ip.address && h.in_force(now_s))
            .map(|(_, h)| h)
            .collect();
        let schedule = ip.warmup.as_ref().and_then(|w| self.schedules.get(w));
        let mut providers = serde_json::Map::new();
        let mut any_warming = schedule.is_some();
        let mut seen_any = false;
        let mut names: Vec<&String> = inner
            .counters
            .keys()
            .filter(|(a, _)| *a == ip.address)
            .map(|(_, p)| p)
            .collect();
        names.sort();
        for provider in names {
            let key = (ip.address, provider.clone());
            let c = &inner.counters[&key];
            let probation = Self::probation_of(inner, ip.address, provider, now_s);
            let caps = self.caps(ip, provider, Some(c), probation, now);
            let index = c.warmup.index_on(today, self.idle_days);
            let warming = schedule.is_some_and(|s| (index as usize) < s.len());
            if !seen_any {
                any_warming = false;
                seen_any = true;
            }
            any_warming |= warming;
            let state = match Self::hold_of(inner, ip.address, provider, now_s) {
                Some(h) if h.kind == HoldKind::Drained => "drained",
                Some(_) => "quarantined",
                None if c.backoff_until > now => "backoff",
                None if probation => "probation",
                None if warming => "warming",
                None => "active",
            };
            providers.insert(
                provider.clone(),
                json!({
                    "state": state,
                    "probation": probation,
                    "warmup_day": if schedule.is_some() { Some(index) } else { None },
                    "used_today": c.used_today(&self.clock, now),
                    "cap_today": caps.daily,
                    "used_hour": c.used_hour(&self.clock, now),
                    "cap_hour": caps.hourly,
                    "connections": inner.active.get(&key).copied().unwrap_or(0),
                    "sent": c.sent,
                    "deferred": c.deferred,
                    "bounced": c.bounced,
                    "backoff_until": if c.backoff_until > now { Some(c.backoff_until / 1000) } else { None },
                    "backoff_reason": if c.backoff_until > now { Some(&c.backoff_reason) } else { None },
                }),
            );
        }
        let all = holds.iter().find(|h| h.scope == "all");
        let state = match all {
            Some(h) if h.kind == HoldKind::Drained => "drained",
            Some(_) => "quarantined",
            None if any_warming => "warming",
            None => "active",
        };
        let first = all.or(holds.first());
        json!({
            "ip": ip.address.to_string(),
            "helo": ip.helo,
            "weight": ip.weight,
            "warmup": ip.warmup,
            "state": state,
            "reason": first.map(|h| &h.reason),
            "evidence": first.map(|h| &h.evidence),
            "holds": holds,
            "providers": providers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn ips(s: &[Source]) -> Vec<String> {
        s.iter().map(|s| s.label()).collect()
    }

    #[test]
    fn round_robin_per_family_and_failover_order() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[pool.ip]]\naddress = \"::1\"\nhelo = \"o6\"\n",
        );
        let p = Pools::from_config(&c);
        let first = p.select(Some("a"), "other", false).unwrap();
        let second = p.select(Some("a"), "other", false).unwrap();
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], second[0]);
        assert_eq!(first[0], second[1]);
        let v6 = p.select(Some("a"), "other", true).unwrap();
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].helo, "o6");
    }

    #[test]
    fn no_pool_lets_the_os_pick() {
        let p = Pools::from_config(&config(""));
        assert_eq!(p.pool_for(None, None, "a@b"), None);
        let s = p.select(None, "other", false).unwrap();
        assert_eq!(
            s,
            vec![Source {
                ip: None,
                helo: "relay.test".into()
            }]
        );
    }

    #[test]
    fn weighted_selection_is_smooth_and_deterministic() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\nweight = 3\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n",
        );
        let p = Pools::from_config(&c);
        let picks: Vec<String> = (0..8)
            .map(|_| p.select(Some("a"), "other", false).unwrap()[0].label())
            .collect();
        assert_eq!(
            picks,
            [
                "127.0.0.10",
                "127.0.0.10",
                "127.0.0.11",
                "127.0.0.10",
                "127.0.0.10",
                "127.0.0.10",
                "127.0.0.11",
                "127.0.0.10"
            ]
        );
    }

    #[test]
    fn warming_ip_gets_its_cap_then_overflow_goes_to_warm_ips_then_hold() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\nwarmup = \"t\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[warmup]\nday = \"240h\"\nburst = 100\n[[warmup.schedule]]\nname = \"t\"\ndaily = [3]\n[[provider]]\nname = \"p\"\nmx_suffixes = [\"p.test\"]\nmax_per_hour = 5\n",
        );
        let p = Arc::new(Pools::from_config(&c));
        let mut count: HashMap<String, u32> = HashMap::new();
        let mut held = None;
        for _ in 0..20 {
            match p.select(Some("a"), "p", false) {
                Ok(s) => {
                    let lease = p.take(&s[0], "p").expect("selected IP takes");
                    *count.entry(s[0].label()).or_default() += 1;
                    drop(lease);
                }
                Err(h) => {
                    held = Some(h);
                    break;
                }
            }
        }
        // Warming IP: its daily cap of 3 and no more; the warm IP: its hourly throttle of 5.
        assert_eq!(count["127.0.0.10"], 3);
        assert_eq!(count["127.0.0.11"], 5);
        let h = held.expect("held once both are full");
        assert!(
            h.text
                .starts_with("pool a: no source IP has capacity for provider p"),
            "{}",
            h.text
        );
        let st = p.status();
        let ip0 = &st["pools"][0]["ips"][0];
        assert_eq!(ip0["state"], "warming");
        assert_eq!(ip0["providers"]["p"]["used_today"], 3);
        assert_eq!(ip0["providers"]["p"]["cap_today"], 3);
    }

    #[test]
    fn drained_and_quarantined_ips_take_nothing_for_their_scope() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n",
        );
        let p = Pools::from_config(&c);
        let ip10: IpAddr = "127.0.0.10".parse().unwrap();
        let ip11: IpAddr = "127.0.0.11".parse().unwrap();
        p.quarantine(
            ip10,
            Scope::Provider("gmail".into()),
            "S3150",
            "550 …",
            None,
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(
                ips(&p.select(Some("a"), "gmail", false).unwrap()),
                ["127.0.0.11"]
            );
        }
        assert_eq!(p.select(Some("a"), "other", false).unwrap().len(), 2);
        p.drain(ip11, Scope::All, "operator").unwrap();
        let h = p.select(Some("a"), "gmail", false).unwrap_err();
        assert!(h.text.contains("drained or quarantined"), "{}", h.text);
        assert!(p.undrain(ip11, Scope::All).unwrap());
        assert!(p.reinstate(ip10, Scope::Provider("gmail".into())).unwrap());
        assert_eq!(p.select(Some("a"), "gmail", false).unwrap().len(), 2);
        assert!(
            p.drain("127.0.0.99".parse().unwrap(), Scope::All, "x")
                .is_err()
        );
    }

    #[test]
    fn expired_quarantine_ends_by_itself_and_holds_persist() {
        let dir =
            std::env::temp_dir().join(format!("poolrelay-pool-{}", crate::spool::Spool::new_id()));
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n",
        );
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        {
            let st = Arc::new(State::open(&dir).unwrap());
            let p = Pools::new(&c, Some(st)).unwrap();
            p.quarantine(
                ip,
                Scope::All,
                "listed",
                "zen 127.0.0.2",
                Some(now_s() + 3600),
            )
            .unwrap();
            p.quarantine(
                ip,
                Scope::Provider("gmail".into()),
                "old",
                "",
                Some(now_s() - 1),
            )
            .unwrap();
            assert!(p.select(Some("a"), "other", false).is_err());
        }
        let st = Arc::new(State::open(&dir).unwrap());
        let p = Pools::new(&c, Some(st)).unwrap();
        let holds = p.holds();
        assert_eq!(holds.len(), 1, "the expired one is not in force: {holds:?}");
        assert_eq!(holds[0].1.evidence, "zen 127.0.0.2");
        let h = p.select(Some("a"), "other", false).unwrap_err();
        assert!(
            h.retry_at >= now_s() + 299,
            "looks again within the 5-minute cap"
        );
        assert!(p.reinstate(ip, Scope::All).unwrap());
        assert_eq!(p.select(Some("a"), "gmail", false).unwrap().len(), 1);
        assert_eq!(p.ips(), vec![ip]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pool_rules_first_match_else_default() {
        let c = config(
            "[[pool]]\nname = \"main\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[pool]]\nname = \"bulk\"\n[[pool.ip]]\naddress = \"127.0.0.12\"\nhelo = \"o3\"\n[[pool_rule]]\nuser = \"newsletter\"\npool = \"bulk\"\n[[pool_rule]]\nsender_domain = \"*.news.test\"\npool = \"bulk\"\n[[pool_rule]]\nsender = \"*@main.test\"\npool = \"main\"\n",
        );
        let p = Pools::from_config(&c);
        assert_eq!(
            p.pool_for(None, Some("newsletter"), "a@x.test"),
            Some("bulk")
        );
        assert_eq!(p.pool_for(None, None, "a@m.news.test"), Some("bulk"));
        assert_eq!(p.pool_for(None, None, "a@main.test"), Some("main"));
        assert_eq!(p.pool_for(None, None, "a@x.test"), Some("default"));
        assert_eq!(p.pool_for(Some("main"), None, "a@x.test"), Some("main"));
    }

    #[test]
    fn slowdown_reply_backs_off_that_ip_for_that_provider() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n",
        );
        let p = Pools::from_config(&c);
        let r = RemoteReply {
            code: 421,
            status: "4.7.28".into(),
            text: "unusual rate of unsolicited mail".into(),
            host: String::new(),
            addr: String::new(),
            source_ip: String::new(),
        };
        p.record_reply("127.0.0.10".parse().unwrap(), "gmail", &r);
        for _ in 0..3 {
            assert_eq!(
                ips(&p.select(Some("a"), "gmail", false).unwrap()),
                ["127.0.0.11"]
            );
        }
        assert_eq!(p.select(Some("a"), "yahoo", false).unwrap().len(), 2);
        assert_eq!(
            p.status()["pools"][0]["ips"][0]["providers"]["gmail"]["deferred"],
            1
        );
    }

    #[test]
    fn ip_on_probation_takes_only_a_trickle_until_reinstated() {
        let c = config(
            "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[reputation]\nprobe_per_hour = 2\n",
        );
        let p = Arc::new(Pools::from_config(&c));
        let ip10: IpAddr = "127.0.0.10".parse().unwrap();
        // Cool-down over: probation.
        p.quarantine(
            ip10,
            Scope::Provider("gmail".into()),
            "block reply",
            "",
            Some(now_s() - 1),
        )
        .unwrap();
        let count = |p: &Arc<Pools>, provider: &str| {
            let mut count: HashMap<String, u32> = HashMap::new();
            for _ in 0..10 {
                let s = p.select(Some("a"), provider, false).unwrap();
                let _lease = p.take(&s[0], provider).expect("selected IP takes");
                *count.entry(s[0].label()).or_default() += 1;
            }
            count
        };
        let n = count(&p, "gmail");
        assert_eq!((n["127.0.0.10"], n["127.0.0.11"]), (2, 8));
        let gmail = &p.status()["pools"][0]["ips"][0]["providers"]["gmail"];
        assert_eq!(gmail["state"], "probation");
        assert_eq!(gmail["probation"], true);
        assert_eq!(
            (gmail["used_hour"].as_u64(), gmail["cap_hour"].as_u64()),
            (Some(2), Some(2))
        );
        // Other providers are not on probation.
        let n = count(&p, "yahoo");
        assert_eq!((n["127.0.0.10"], n["127.0.0.11"]), (5, 5));
        // Probes went well: the full share again.
        assert!(p.end_probation(ip10, "gmail").unwrap());
        assert!(!p.end_probation(ip10, "gmail").unwrap());
        let n = count(&p, "gmail");
        assert!(n["127.0.0.10"] >= 4, "{n:?}");
        let gmail = &p.status()["pools"][0]["ips"][0]["providers"]["gmail"];
        assert_eq!(
            (gmail["probation"].as_bool(), gmail["cap_hour"].as_u64()),
            (Some(false), None)
        );
    }
}
