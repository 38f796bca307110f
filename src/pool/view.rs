//! What the operator sees of the pools (`GET /api/pool`, `poolrelay pool status`): every IP with
//! its state, the holds in force, and per provider its warm-up position, caps and counters.
//! With `[cluster]`, also the farm: every node last seen, and the node each IP is on; the
//! handlers then put in the farm's counts and refusals (`Pools::farm_counts`, in `shared`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::holds::{Hold, HoldKind};
use super::pools::{Conf, Inner, IpConf, Pools};
use super::warmup::Clock;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolsView {
    pub day_ms: u64,
    pub day: u64,
    pub pools: Vec<PoolView>,
    /// `[cluster]` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm: Option<FarmView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub ips: Vec<IpView>,
}

/// State of an IP (overall, or for one provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpState {
    Active,
    Warming,
    Probation,
    Backoff,
    Quarantined,
    Drained,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpView {
    pub ip: String,
    pub helo: String,
    pub weight: u32,
    pub warmup: Option<String>,
    pub state: IpState,
    /// Of the hold that says most (an `all` one first).
    pub reason: Option<String>,
    pub evidence: Option<String>,
    /// Every hold in force, one per cause and scope.
    pub holds: Vec<Hold>,
    pub providers: BTreeMap<String, ProviderView>,
    /// `[cluster]` only: the node(s) sending from this IP, as their heartbeats say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderView {
    pub state: IpState,
    pub probation: bool,
    pub warmup_day: Option<u32>,
    /// The schedule's ramp follows the receivers' answers (`adaptive = true`).
    #[serde(default)]
    pub adaptive: bool,
    /// The ramp's last decision ("day 6 reached: 2 % throttled, 96 % of cap used") and when
    /// (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_decision_at: Option<u64>,
    /// The counts the caps apply to: with `[cluster]` the farm's (`Pools::farm_counts`), else
    /// this relay's.
    pub used_today: u64,
    pub cap_today: Option<u64>,
    pub used_hour: u64,
    pub cap_hour: Option<u64>,
    /// `[cluster]` only: this relay's own counts, and where `used_*` come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_today_here: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_hour_here: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_from: Option<CountsFrom>,
    /// Why the farm takes nothing more on this IP × provider now, and until when (unix s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_full: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_full_until: Option<u64>,
    /// Messages in flight.
    pub connections: u32,
    pub sent: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub backoff_until: Option<u64>,
    pub backoff_reason: Option<String>,
    /// Messages an hour since throttling replies cut the pace (until the day ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace_per_hour: Option<u64>,
}

/// Where a `[cluster]` view's `used_today` and `used_hour` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountsFrom {
    /// Read from Redis as the view was built.
    Farm,
    /// Redis down: the farm's count last read plus what this relay took since.
    FarmLastRead,
    /// Redis down and nothing read this window: this relay's own.
    Here,
}

impl Pools {
    /// Every pool IP with its state, holds and per-provider warm-up and counters.
    pub fn status(&self) -> PoolsView {
        let now = Clock::now_ms();
        let conf = self.conf();
        let today = conf.clock.day(now);
        let farm = self.farm().map(|f| f.view());
        let inner = self.lock();
        let mut view = PoolsView {
            day_ms: conf.clock.day_ms,
            day: today,
            pools: conf
                .pools
                .iter()
                .map(|pc| PoolView {
                    name: pc.name.clone(),
                    ips: pc
                        .ips
                        .iter()
                        .map(|ip| ip_view(&conf, &inner, ip, now, today))
                        .collect(),
                })
                .collect(),
            farm: None,
        };
        if let Some(farm) = farm {
            for ip in view.pools.iter_mut().flat_map(|p| &mut p.ips) {
                ip.node = farm.node_of(&ip.ip);
            }
            view.farm = Some(farm);
        }
        view
    }
}

fn provider_view(
    conf: &Conf,
    inner: &Inner,
    ip: &IpConf,
    provider: &str,
    now: u64,
    today: u64,
) -> ProviderView {
    let now_s = now / 1000;
    let key = (ip.address, provider.to_string());
    let c = &inner.counters[&key];
    let probation = inner.probation_of(ip.address, provider, now_s);
    let caps = conf.caps(ip, provider, Some(c), probation, now);
    let ramp = conf.ramp_of(ip);
    let index = ramp.map(|(table, rules)| c.warmup.peek(rules, table, today).0);
    let warming = ramp
        .zip(index)
        .is_some_and(|((t, _), i)| (i as usize) < t.len());
    let backoff = c.backoff_until > now;
    ProviderView {
        state: match inner.hold_of(ip.address, provider, now_s) {
            Some(h) if h.kind == HoldKind::Drained => IpState::Drained,
            Some(_) => IpState::Quarantined,
            None if backoff => IpState::Backoff,
            None if probation => IpState::Probation,
            None if warming => IpState::Warming,
            None => IpState::Active,
        },
        probation,
        warmup_day: index,
        adaptive: ramp.is_some_and(|(_, r)| r.adaptive),
        warmup_decision: c.warmup.decided.as_ref().map(|d| d.1.clone()),
        warmup_decision_at: c.warmup.decided.as_ref().map(|d| d.0),
        used_today: c.used_today(&conf.clock, now),
        cap_today: caps.daily,
        used_hour: c.used_hour(&conf.clock, now),
        cap_hour: caps.hourly,
        connections: inner.active.get(&key).copied().unwrap_or(0),
        sent: c.sent,
        deferred: c.deferred,
        bounced: c.bounced,
        backoff_until: backoff.then_some(c.backoff_until / 1000),
        backoff_reason: backoff.then(|| c.backoff_reason.clone()),
        used_today_here: None,
        used_hour_here: None,
        counts_from: None,
        farm_full: (c.farm_full_until > now).then(|| c.farm_full_why.to_string()),
        farm_full_until: (c.farm_full_until > now).then_some(c.farm_full_until / 1000),
        pace_per_hour: c.pace(&conf.clock, now),
    }
}

fn ip_view(conf: &Conf, inner: &Inner, ip: &IpConf, now: u64, today: u64) -> IpView {
    let now_s = now / 1000;
    let mut holds: Vec<Hold> = inner
        .holds
        .iter()
        .filter(|((a, _, _), h)| *a == ip.address && h.in_force(now_s))
        .map(|(_, h)| h.clone())
        .collect();
    holds.sort_by(|a, b| (&a.scope, &a.cause).cmp(&(&b.scope, &b.cause)));
    let providers: BTreeMap<String, ProviderView> = inner
        .counters
        .keys()
        .filter(|(a, _)| *a == ip.address)
        .map(|(_, p)| (p.clone(), provider_view(conf, inner, ip, p, now, today)))
        .collect();
    // Warming: by schedule until a provider has been seen, then while any still warms.
    let warming = if providers.is_empty() {
        ip.warmup
            .as_ref()
            .is_some_and(|w| conf.schedules.contains_key(w))
    } else {
        providers
            .values()
            .any(|p| p.warmup_day.is_some() && p.cap_today.is_some())
    };
    let all = holds
        .iter()
        .filter(|h| h.scope == "all")
        .min_by_key(|h| h.kind != HoldKind::Drained);
    let state = match all {
        Some(h) if h.kind == HoldKind::Drained => IpState::Drained,
        Some(_) => IpState::Quarantined,
        None if warming => IpState::Warming,
        None => IpState::Active,
    };
    let first = all.or(holds.first()).cloned();
    IpView {
        ip: ip.address.to_string(),
        helo: ip.helo.clone(),
        weight: ip.weight,
        warmup: ip.warmup.clone(),
        state,
        reason: first.as_ref().map(|h| h.reason.clone()),
        evidence: first.map(|h| h.evidence),
        holds,
        providers,
        node: None,
    }
}

/// The farm as the operator sees it (`[cluster]`: `poolrelay pool status`, the pool page):
/// every node last seen by its heartbeat, the IPs it sends from, and so the node each IP is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmView {
    /// This node.
    pub node: String,
    /// Whether Redis answers now (holds and suppressions are then shared at once).
    pub redis_up: bool,
    /// Every node last seen, by name.
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// Unix seconds of its last heartbeat.
    pub last_seen: u64,
    pub ips: Vec<String>,
}

impl FarmView {
    /// The nodes sending from `ip` (more than one while an IP moves), `None` if none does.
    pub fn node_of(&self, ip: &str) -> Option<String> {
        let on: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.ips.iter().any(|i| i == ip))
            .map(|n| n.name.as_str())
            .collect();
        (!on.is_empty()).then(|| on.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ip_is_on_the_nodes_that_send_from_it() {
        let node = |name: &str, ips: &[&str]| NodeView {
            name: name.into(),
            last_seen: 1,
            ips: ips.iter().map(|s| s.to_string()).collect(),
        };
        let farm = FarmView {
            node: "a".into(),
            redis_up: true,
            nodes: vec![
                node("a", &["192.0.2.1"]),
                node("b", &["192.0.2.2", "192.0.2.3"]),
                node("c", &["192.0.2.3"]),
            ],
        };
        assert_eq!(farm.node_of("192.0.2.1").as_deref(), Some("a"));
        assert_eq!(farm.node_of("192.0.2.3").as_deref(), Some("b, c"));
        assert_eq!(farm.node_of("192.0.2.9"), None);
    }
}
