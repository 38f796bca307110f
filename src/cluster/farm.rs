//! The farm as the operator sees it (`poolrelay pool status`, the pool page), built from the
//! heartbeats: the records are the pools' (`pool::FarmView`).

use std::net::IpAddr;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::Cluster;
use crate::pool::ramp::DayTally;
use crate::pool::{FarmState, Limit, ProgressMove, RampOutcome, Refused, Rolled, RunError, Taken};
pub use crate::pool::{FarmView, NodeView};

impl Cluster {
    /// Every node last seen and the IPs it sends from.
    pub fn view(&self) -> FarmView {
        FarmView {
            node: self.node().to_string(),
            redis_up: self.is_up(),
            nodes: self
                .nodes()
                .into_iter()
                .map(|n| NodeView {
                    name: n.name,
                    last_seen: n.last_seen / 1000,
                    ips: n.ips.iter().map(|ip| ip.to_string()).collect(),
                })
                .collect(),
        }
    }
}

/// The pools' and inbound's calls on the farm (`pool::Counters`, `pool::Farm`): the counters
/// (`counters`), the ramp (`ramp`) and the heartbeats.
impl crate::pool::Counters for Cluster {
    fn key(&self, rest: &str) -> String {
        Cluster::key(self, rest)
    }

    fn take<'a>(
        &'a self,
        limits: &'a [Limit],
        progress: Option<&'a ProgressMove>,
    ) -> BoxFuture<'a, Result<Taken, Refused>> {
        Box::pin(Cluster::take(self, limits, progress))
    }

    fn give_back<'a>(&'a self, keys: &'a [(String, u64)]) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::give_back(self, keys))
    }

    fn seen_at_cap(&self, key: &str, cap: u64) -> bool {
        Cluster::seen_at_cap(self, key, cap)
    }
}

impl crate::pool::Farm for Cluster {
    fn up_changes(&self) -> watch::Receiver<bool> {
        Cluster::up_changes(self)
    }

    fn set_ips(&self, ips: Vec<IpAddr>) {
        Cluster::set_ips(self, ips)
    }

    fn sends_from(&self, ip: IpAddr) -> bool {
        self.nodes().iter().any(|n| n.ips.contains(&ip))
    }

    fn view(&self) -> FarmView {
        Cluster::view(self)
    }

    fn counts<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, (Vec<Option<u64>>, bool)> {
        Box::pin(Cluster::counts(self, keys))
    }

    fn ramp_taken_key(&self, ip: IpAddr, provider: &str, day: u64) -> String {
        Cluster::ramp_taken_key(self, ip, provider, day)
    }

    fn ramp_count(&self, ip: IpAddr, provider: &str, day: u64, o: RampOutcome, ttl_ms: u64) {
        Cluster::ramp_count(self, ip, provider, day, o, ttl_ms)
    }

    fn ramp_roll<'a>(
        &'a self,
        ip: IpAddr,
        provider: &'a str,
        today: u64,
        local: &'a FarmState,
        decide: &'a (dyn Fn(&FarmState, &DayTally) -> FarmState + Send + Sync),
    ) -> BoxFuture<'a, Result<Rolled<FarmState>, RunError>> {
        Box::pin(Cluster::ramp_roll(self, ip, provider, today, local, decide))
    }
}
