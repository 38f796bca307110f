//! History kept by the relay itself (`GET /api/history?ip=…`, the pool page's plots): per IP ×
//! provider hourly buckets of outcomes and the warm-up cap, every hold change (quarantined,
//! probation, reinstated, drained, undrained) with its reason and evidence, and every warm-up
//! ramp decision (event `warmup`, scope = provider).
//!
//! Counts gather in memory and reach the state store with `flush` (every few seconds); events
//! are written when they happen. Kept `KEEP_DAYS` days; at most `MAX_EVENTS_PER_IP` events per
//! IP, so the store stays bounded by IPs × providers × hours.
//!
//! With `[cluster]` the farm shares it (`cluster::history`): counts and events go to Redis too
//! (counts not taken while it is down are kept and sent with the next flush), and the view is
//! the farm's while Redis answers, this node's local copy while it does not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::pool::Pools;
pub use crate::pool::events::{Event, hold_events, warmup_event};
use crate::pool::events::{EventSink, store_events};
use crate::spool::now_unix;
use crate::state::State;

pub const KEEP_DAYS: u64 = 90;
pub const MAX_EVENTS_PER_IP: usize = 5_000;
const HOUR: u64 = 3600;

/// One hour of one IP × provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub sent: u64,
    pub deferred: u64,
    /// Hard bounces that count against the IP (bounce-rate quarantine).
    pub hard_bounces: u64,
    /// Bounces that are the recipient's doing (unknown user, mailbox full).
    #[serde(default)]
    pub recipient_bounces: u64,
    /// Block or reputation replies.
    pub blocks: u64,
    /// Feedback-loop complaints counted against the IP (not those an account took the blame
    /// for), by the hour they arrived.
    #[serde(default)]
    pub complaints: u64,
    /// The day's warm-up cap while this hour was sampled (None: not capped).
    #[serde(default)]
    pub cap: Option<u64>,
}

impl Bucket {
    fn add(&mut self, o: &Bucket) {
        self.sent += o.sent;
        self.deferred += o.deferred;
        self.hard_bounces += o.hard_bounces;
        self.recipient_bounces += o.recipient_bounces;
        self.blocks += o.blocks;
        self.complaints += o.complaints;
        if o.cap.is_some() {
            self.cap = o.cap;
        }
    }
}

/// What `count` is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Sent,
    Deferred,
    HardBounce,
    RecipientBounce,
    Block,
    Complaint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HourView {
    pub provider: String,
    /// Unix seconds at the start of the hour.
    pub hour: u64,
    #[serde(flatten)]
    pub bucket: Bucket,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryView {
    pub ip: String,
    pub since: u64,
    pub hours: Vec<HourView>,
    pub events: Vec<Event>,
}

type Key = (IpAddr, String, u64);

/// One IP's history in the farm: buckets (`(provider, hour, bucket)`) and events (JSON, oldest
/// first).
pub type FarmCopy = (Vec<(String, u64, Bucket)>, Vec<String>);

/// The farm's shared copy of the history (`[cluster]`), implemented for `cluster::Cluster` in
/// `cluster::history`: the cluster depends on this module, never the reverse.
pub trait Farm: EventSink {
    /// Redis answers.
    fn is_up(&self) -> bool;
    /// Adds counts to the farm's buckets; false when Redis did not take them.
    fn push_hours<'a>(&'a self, buckets: &'a [(Key, Bucket)]) -> BoxFuture<'a, bool>;
    /// Drops the farm's buckets of `ips` older than `cutoff` (unix seconds).
    fn prune<'a>(&'a self, ips: &'a [IpAddr], cutoff: u64) -> BoxFuture<'a, ()>;
    /// One IP's history; `None` when Redis did not answer.
    fn read(&self, ip: IpAddr) -> BoxFuture<'_, Option<FarmCopy>>;
}

pub struct History {
    state: Option<Arc<State>>,
    pending: Mutex<HashMap<Key, Bucket>>,
    /// Hour of the last pruning.
    pruned: Mutex<u64>,
    /// The farm (`[cluster]`), handed while built; `None` = this relay alone.
    cluster: Option<Arc<dyn Farm>>,
    /// Counts Redis has not taken yet (it was down).
    unshared: Mutex<HashMap<Key, Bucket>>,
}

fn hour_key(ip: &str, provider: &str, hour: u64) -> String {
    format!("{ip}|{provider}|{hour:012}")
}

impl History {
    pub fn new(state: Option<Arc<State>>) -> History {
        History {
            state,
            pending: Mutex::default(),
            pruned: Mutex::new(0),
            cluster: None,
            unshared: Mutex::default(),
        }
    }

    /// Shares counts and events with `cluster` (`[cluster]`), and shows the farm's.
    pub fn sharing(mut self, cluster: Option<Arc<dyn Farm>>) -> History {
        self.cluster = cluster;
        self
    }

    /// Sends the counts not yet in Redis (blocking: called where `flush` is, off the runtime's
    /// workers). Prunes the farm's old buckets of this node's IPs with `prune_before`.
    fn share_counts(
        &self,
        pending: &HashMap<Key, Bucket>,
        prune_before: Option<(Vec<IpAddr>, u64)>,
    ) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut unshared = self.unshared.lock().expect("lock");
        for (k, b) in pending {
            unshared.entry(k.clone()).or_default().add(b);
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let buckets: Vec<(Key, Bucket)> = unshared
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        if rt.block_on(cluster.push_hours(&buckets)) {
            unshared.clear();
        }
        if let Some((ips, cutoff)) = prune_before {
            rt.block_on(cluster.prune(&ips, cutoff));
        }
    }

    /// One classified reply.
    pub fn count(&self, ip: IpAddr, provider: &str, what: Count) {
        let hour = now_unix() / HOUR * HOUR;
        let mut p = self.pending.lock().expect("lock");
        let b = p.entry((ip, provider.to_string(), hour)).or_default();
        match what {
            Count::Sent => b.sent += 1,
            Count::Deferred => b.deferred += 1,
            Count::HardBounce => b.hard_bounces += 1,
            Count::RecipientBounce => b.recipient_bounces += 1,
            Count::Block => b.blocks += 1,
            Count::Complaint => b.complaints += 1,
        }
    }

    /// This node's counts of `ip` × `provider` since `since` (unix seconds; from the start of
    /// its hour), stored and not yet flushed: what the complaint rate is computed from.
    pub fn window(&self, ip: IpAddr, provider: &str, since: u64) -> Bucket {
        let from = since / HOUR * HOUR;
        let mut sum = Bucket::default();
        if let Some(state) = &self.state {
            match state.history_hours_from(&ip.to_string(), provider, from) {
                Ok(hours) => {
                    for (_, json) in hours {
                        sum.add(&serde_json::from_str(&json).unwrap_or_default());
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read history"),
            }
        }
        let p = self.pending.lock().expect("lock");
        for ((_, _, _), b) in p
            .iter()
            .filter(|((i, p, h), _)| *i == ip && p == provider && *h >= from)
        {
            sum.add(b);
        }
        sum.cap = None;
        sum
    }

    /// This node's stored events of `ip` (oldest first), from the hour `since` on.
    pub fn local_events(&self, ip: IpAddr, since: u64) -> Vec<Event> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        match state.history_of(&ip.to_string()) {
            Ok((_, events)) => parse_events(&events, since),
            Err(e) => {
                tracing::error!(error = %e, "cannot read history");
                Vec::new()
            }
        }
    }

    /// Records one event of `ip` that is not a hold change (a complaint-rate warning), stored
    /// and shared like hold events.
    pub fn event(&self, ip: IpAddr, e: &Event) {
        let (Some(state), Ok(json)) = (&self.state, serde_json::to_string(e)) else {
            return;
        };
        let sink = self.cluster.clone().map(|c| c as Arc<dyn EventSink>);
        store_events(state, sink, vec![(ip.to_string(), json)]);
    }

    /// Notes today's warm-up caps and writes the gathered counts (blocking I/O); prunes old
    /// history once an hour.
    pub fn flush(&self, pools: &Pools) {
        let Some(state) = &self.state else { return };
        let now = now_unix();
        let hour = now / HOUR * HOUR;
        {
            let view = pools.status();
            let mut p = self.pending.lock().expect("lock");
            for ip in view.pools.iter().flat_map(|p| &p.ips) {
                let Ok(addr) = ip.ip.parse::<IpAddr>() else {
                    continue;
                };
                for (provider, pv) in &ip.providers {
                    if let Some(cap) = pv.cap_today {
                        p.entry((addr, provider.clone(), hour)).or_default().cap = Some(cap);
                    }
                }
            }
        }
        let pending = std::mem::take(&mut *self.pending.lock().expect("lock"));
        let prune_farm = (*self.pruned.lock().expect("lock") != hour)
            .then(|| (pools.ips(), now.saturating_sub(KEEP_DAYS * 86_400)));
        self.share_counts(&pending, prune_farm);
        let records: Vec<(String, String)> = pending
            .into_iter()
            .map(|((ip, provider, h), b)| {
                let json = serde_json::to_string(&b).unwrap_or_default();
                (hour_key(&ip.to_string(), &provider, h), json)
            })
            .collect();
        let merged = state.history_merge(&records, |old, new| {
            let mut b: Bucket = old
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or_default();
            b.add(&serde_json::from_str(new).unwrap_or_default());
            serde_json::to_string(&b).unwrap_or_default()
        });
        if let Err(e) = merged {
            tracing::error!(error = %e, "cannot store history");
        }
        let mut pruned = self.pruned.lock().expect("lock");
        if *pruned != hour {
            *pruned = hour;
            let cutoff = now.saturating_sub(KEEP_DAYS * 86_400);
            if let Err(e) = state.history_prune(cutoff, MAX_EVENTS_PER_IP) {
                tracing::error!(error = %e, "cannot prune history");
            }
        }
    }

    /// `ip`'s buckets and events since `since` (unix seconds), oldest first.
    pub fn view(&self, ip: IpAddr, since: u64) -> Result<HistoryView, crate::state::StateError> {
        let ip_s = ip.to_string();
        let mut view = HistoryView {
            ip: ip_s.clone(),
            since,
            hours: Vec::new(),
            events: Vec::new(),
        };
        if let Some(farm) = self.farm_view(ip) {
            let (hours, events) = farm;
            view.hours = hours
                .into_iter()
                .filter(|(_, hour, _)| hour + HOUR > since)
                .map(|(provider, hour, bucket)| HourView {
                    provider,
                    hour,
                    bucket,
                })
                .collect();
            view.hours.sort_by_key(|h| h.hour);
            view.events = parse_events(&events, since);
            return Ok(view);
        }
        let Some(state) = &self.state else {
            return Ok(view);
        };
        let (hours, events) = state.history_of(&ip_s)?;
        for (k, v) in hours {
            let mut parts = k.rsplitn(2, '|');
            let hour: u64 = parts.next().and_then(|h| h.parse().ok()).unwrap_or(0);
            let provider = parts
                .next()
                .and_then(|rest| rest.strip_prefix(&format!("{ip_s}|")))
                .unwrap_or("")
                .to_string();
            if hour + HOUR <= since {
                continue;
            }
            if let Ok(bucket) = serde_json::from_str(&v) {
                view.hours.push(HourView {
                    provider,
                    hour,
                    bucket,
                });
            }
        }
        view.hours.sort_by_key(|h| h.hour);
        view.events = parse_events(&events, since);
        Ok(view)
    }

    /// The farm's history of `ip` while Redis answers (blocking, like `view`).
    fn farm_view(&self, ip: IpAddr) -> Option<FarmCopy> {
        let cluster = self.cluster.as_ref()?;
        if !cluster.is_up() {
            return None;
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        rt.block_on(cluster.read(ip))
    }
}

fn parse_events(events: &[String], since: u64) -> Vec<Event> {
    events
        .iter()
        .filter_map(|v| serde_json::from_str::<Event>(v).ok())
        .filter(|e| e.at >= since)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::HoldKind;
    use crate::pool::events::tests::hold;

    #[test]
    fn counts_merge_into_hourly_buckets_and_events_persist() {
        let dir = crate::util::test_dir::tempdir("history").join("data");
        let state = Arc::new(State::open(&dir).unwrap());
        let h = History::new(Some(state.clone()));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let pools = Pools::without_store(&config.pool_settings());
        for what in [Count::Sent, Count::Sent, Count::Block] {
            h.count(ip, "gmail", what);
        }
        h.flush(&pools);
        h.count(ip, "gmail", Count::Sent);
        h.flush(&pools);
        let q = hold(HoldKind::Quarantined, Some(now_unix() + 60));
        hold_events(&state, None, &[(ip, None, Some(q.clone()))]);
        hold_events(&state, None, &[(ip, Some(q), None)]);
        let v = History::new(Some(state)).view(ip, 0).unwrap();
        assert_eq!(v.hours.len(), 1, "{v:?}");
        assert_eq!((v.hours[0].bucket.sent, v.hours[0].bucket.blocks), (3, 1));
        assert_eq!(v.hours[0].provider, "gmail");
        let names: Vec<&str> = v.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["quarantined", "reinstated"]);
        assert_eq!(v.events[0].evidence, "550 5.7.1 S3150");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
