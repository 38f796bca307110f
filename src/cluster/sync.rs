//! Holds, suppressions and account suspensions shared by the farm. Redis is the source of truth (one hash per table,
//! keyed by what a record is about, `cluster::events`); each node keeps its local copy (redb,
//! `suppressions.json`) so it works on while Redis is down.
//!
//! - A change made here is written with `WRITE_SCRIPT` (the later change wins) and published.
//! - Every node subscribes on a connection of its own and applies the others' events.
//! - A resync every `resync_interval`, on each (re)subscription and when Redis comes back
//!   compares both sides record by record: the later change wins on both. So what a node
//!   changed while Redis was down is pushed, and what the farm changed meanwhile is pulled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Cluster;
use super::events::{Change, Event, Newer, Table, WRITE_SCRIPT, newer};
use crate::pool::Pools;
use crate::pool::warmup::Clock;
use crate::reputation::suppress::Suppressions;

/// What the farm's changes are applied to.
#[derive(Clone)]
pub struct Shared {
    pub pools: Arc<Pools>,
    pub suppressions: Arc<Suppressions>,
    pub accounts: Arc<crate::reputation::accounts::Accounts>,
}

impl Shared {
    fn local(&self, table: Table) -> Vec<(Change, u64)> {
        match table {
            Table::Holds => (self.pools.hold_changes().into_iter())
                .map(|(k, hold, at)| (Change::hold(&k, hold), at))
                .collect(),
            Table::Suppressions => (self.suppressions.changes().into_iter())
                .map(|(address, entry, at)| (Change::Suppression { address, entry }, at))
                .collect(),
            Table::Accounts => (self.accounts.changes().into_iter())
                .map(|(account, decision, at)| (Change::Account { account, decision }, at))
                .collect(),
        }
    }

    /// Applies another node's change (blocking: the local store is written).
    fn apply(&self, event: Event) -> bool {
        match event.change {
            Change::Hold {
                ip,
                scope,
                cause,
                hold,
            } => self
                .pools
                .apply_remote((ip, scope, cause), hold, event.at_ms),
            Change::Suppression { address, entry } => {
                self.suppressions.apply_remote(&address, entry, event.at_ms)
            }
            Change::Account { account, decision } => {
                self.accounts
                    .apply_remote(&account, decision, &event.node, event.at_ms)
            }
        }
    }

    async fn apply_async(&self, event: Event) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.apply(event)).await;
    }
}

fn channel(cluster: &Cluster) -> String {
    cluster.key("events")
}

/// Starts sharing: the changes the stages made here (sent to the `Outbox` they were built
/// with, received on `rx`) go to the farm, the farm's come here.
pub fn start(
    cluster: Arc<Cluster>,
    shared: Shared,
    rx: UnboundedReceiver<Event>,
    resync_every: Duration,
) {
    let resync = Arc::new(Notify::new());
    tokio::spawn(push_loop(cluster.clone(), rx));
    tokio::spawn(subscribe_loop(
        cluster.clone(),
        shared.clone(),
        resync.clone(),
    ));
    tokio::spawn(resync_loop(cluster, shared, resync, resync_every));
}

/// Writes one change unless the farm has a later one, and publishes it when written. `None`
/// when Redis did not answer (the cluster is then down until the heartbeat gets through).
async fn write(cluster: &Cluster, event: &Event) -> Option<bool> {
    let key = cluster.key(event.change.table().name());
    let (field, record, channel, json) = (
        event.change.field(),
        event.record(),
        channel(cluster),
        event.to_json(),
    );
    cluster
        .run("share a change", |mut conn| async move {
            let written: i64 = redis::Script::new(WRITE_SCRIPT)
                .key(key)
                .arg(field)
                .arg(record)
                .arg(channel)
                .arg(json)
                .invoke_async(&mut conn)
                .await?;
            Ok(written == 1)
        })
        .await
}

/// This node's changes, in order. One that cannot be written now is left to the resync (the
/// local copy has it, stamped later than the farm's).
async fn push_loop(cluster: Arc<Cluster>, mut rx: UnboundedReceiver<Event>) {
    while let Some(event) = rx.recv().await {
        match write(&cluster, &event).await {
            Some(written) => {
                tracing::debug!(field = %event.change.field(), written, "cluster: change shared")
            }
            None => {
                tracing::debug!(field = %event.change.field(), "cluster: Redis down; the change is shared when it returns")
            }
        }
    }
}

/// Applies the other nodes' events as they come; resubscribes (and resyncs) after a break.
async fn subscribe_loop(cluster: Arc<Cluster>, shared: Shared, resync: Arc<Notify>) {
    let mut logged = false;
    loop {
        let subscribe = async {
            let mut pubsub = cluster.client().get_async_pubsub().await?;
            pubsub.subscribe(channel(&cluster)).await?;
            redis::RedisResult::Ok(pubsub)
        };
        // A hung Redis must not hold this loop: try again after a while.
        let subscribed = tokio::time::timeout(cluster.timeout() * 4, subscribe)
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let pubsub = match subscribed {
            Ok(p) => p,
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "cluster: cannot subscribe to the farm's changes; retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        logged = false;
        tracing::info!(
            node = cluster.node(),
            "cluster: subscribed to the farm's changes"
        );
        // What was published while not subscribed.
        resync.notify_one();
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match Event::from_json(&payload) {
                Ok(event) if event.node == cluster.node() => {}
                Ok(event) => shared.apply_async(event).await,
                Err(e) => tracing::warn!(error = %e, "cluster: ignoring a bad event"),
            }
        }
        tracing::warn!("cluster: subscription lost; resubscribing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn resync_loop(cluster: Arc<Cluster>, shared: Shared, resync: Arc<Notify>, every: Duration) {
    let mut up = cluster.up_changes();
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = resync.notified() => {}
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*up.borrow_and_update() {
                    continue;
                }
            }
        }
        // Redis down: the cluster logs it; its return triggers the next one.
        resync_once(&cluster, &shared).await;
    }
}

/// The stamp of a stored record (`AT_MS|JSON`).
fn stamp_of(record: &str) -> Option<u64> {
    record.split_once('|')?.0.parse().ok()
}

/// Compares every record of both sides: the later change wins on both. Returns false when
/// Redis did not answer.
pub async fn resync_once(cluster: &Cluster, shared: &Shared) -> bool {
    let (mut pulled, mut pushed) = (0, 0);
    for table in Table::ALL {
        let key = cluster.key(table.name());
        let k = key.clone();
        let remote: Option<HashMap<String, String>> = cluster
            .run("resync", |mut conn| async move { conn.hgetall(k).await })
            .await;
        let Some(remote) = remote else {
            return false;
        };
        let local: HashMap<String, (Change, u64)> = shared
            .local(table)
            .into_iter()
            .map(|(c, at)| (c.field(), (c, at)))
            .collect();
        let now = Clock::now_ms();
        let mut stale = Vec::new();
        for (field, record) in &remote {
            let event = match Event::from_record(record) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, table = table.name(), field, "cluster: ignoring a bad record");
                    continue;
                }
            };
            if event.change.is_stale(event.at_ms, now) {
                stale.push(field.clone());
                continue;
            }
            let local_at = local.get(field).map(|(_, at)| *at);
            if newer(local_at, Some(event.at_ms)) == Newer::Remote {
                let me = shared.clone();
                let applied = tokio::task::spawn_blocking(move || me.apply(event))
                    .await
                    .unwrap_or(false);
                pulled += applied as u32;
            }
        }
        for (field, (change, at_ms)) in local {
            if change.is_stale(at_ms, now) {
                continue;
            }
            let remote_at = remote.get(&field).and_then(|r| stamp_of(r));
            if newer(Some(at_ms), remote_at) == Newer::Local {
                let event = Event {
                    node: cluster.node().to_string(),
                    at_ms,
                    change,
                };
                match write(cluster, &event).await {
                    Some(written) => pushed += written as u32,
                    None => return false,
                }
            }
        }
        if !stale.is_empty() {
            cluster
                .run("resync", |mut conn| async move {
                    conn.hdel::<_, _, ()>(key, stale).await
                })
                .await;
        }
    }
    if pulled + pushed > 0 {
        tracing::info!(
            pulled,
            pushed,
            "cluster: holds and suppressions resynced with the farm"
        );
    }
    true
}
