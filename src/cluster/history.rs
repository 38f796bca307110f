//! The farm's history in Redis (`reputation::history` keeps each node's local copy): per IP a
//! hash of hourly counts (`history:hours:IP`, field `PROVIDER|HOUR|METRIC`, added to with
//! `HINCRBY` by every node that sent from it) and a list of hold changes (`history:events:IP`,
//! bounded like the local one). Keyed by IP, so an IP's history follows it to another node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::future::BoxFuture;

use super::{Cluster, RunError};
use crate::pool::EventSink;
use crate::reputation::history::{Bucket, Farm, FarmCopy, KEEP_DAYS, MAX_EVENTS_PER_IP};

const KEEP_S: i64 = (KEEP_DAYS * 86_400) as i64;

fn hours_key(c: &Cluster, ip: IpAddr) -> String {
    c.key(&format!("history:hours:{ip}"))
}

fn events_key(c: &Cluster, ip: IpAddr) -> String {
    c.key(&format!("history:events:{ip}"))
}

impl Farm for Cluster {
    fn is_up(&self) -> bool {
        Cluster::is_up(self)
    }

    fn push_hours<'a>(
        &'a self,
        buckets: &'a [((IpAddr, String, u64), Bucket)],
    ) -> BoxFuture<'a, bool> {
        Box::pin(push_hours(self, buckets))
    }

    fn prune<'a>(&'a self, ips: &'a [IpAddr], cutoff: u64) -> BoxFuture<'a, ()> {
        Box::pin(prune(self, ips, cutoff))
    }

    fn read(&self, ip: IpAddr) -> BoxFuture<'_, Option<FarmCopy>> {
        Box::pin(read(self, ip))
    }
}

impl EventSink for Cluster {
    fn push_events(&self, events: Vec<(IpAddr, String)>) -> BoxFuture<'_, bool> {
        Box::pin(push_events(self, events))
    }
}

/// Adds counts to the farm's buckets; false when Redis did not take them (kept for the next;
/// a timed-out request counts as taken).
pub async fn push_hours(c: &Cluster, buckets: &[((IpAddr, String, u64), Bucket)]) -> bool {
    if buckets.is_empty() {
        return true;
    }
    let mut pipe = redis::pipe();
    for ((ip, provider, hour), b) in buckets {
        let key = hours_key(c, *ip);
        let field = |m: &str| format!("{provider}|{hour}|{m}");
        for (metric, n) in [
            ("sent", b.sent),
            ("deferred", b.deferred),
            ("hard_bounces", b.hard_bounces),
            ("recipient_bounces", b.recipient_bounces),
            ("blocks", b.blocks),
            ("complaints", b.complaints),
        ] {
            if n > 0 {
                pipe.hincr(&key, field(metric), n).ignore();
            }
        }
        if let Some(cap) = b.cap {
            pipe.hset(&key, field("cap"), cap).ignore();
        }
        pipe.expire(&key, KEEP_S).ignore();
    }
    // A request that timed out may still be applied when Redis wakes: not sent again (as for
    // the counters), so the farm's plots never count an hour twice.
    !matches!(
        c.try_run("history", |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await,
        Err(RunError::Down | RunError::Failed)
    )
}

/// Appends hold changes (`(ip, json)`) to the farm's event lists.
pub async fn push_events(c: &Cluster, events: Vec<(IpAddr, String)>) -> bool {
    let mut pipe = redis::pipe();
    for (ip, json) in events {
        let key = events_key(c, ip);
        pipe.rpush(&key, json).ignore();
        pipe.ltrim(&key, -(MAX_EVENTS_PER_IP as isize), -1).ignore();
        pipe.expire(&key, KEEP_S).ignore();
    }
    c.run("history", |mut conn| async move {
        pipe.query_async::<()>(&mut conn).await
    })
    .await
    .is_some()
}

/// One IP's buckets (`(provider, hour, bucket)`) and events (JSON, oldest first); `None` when
/// Redis did not answer.
pub async fn read(c: &Cluster, ip: IpAddr) -> Option<FarmCopy> {
    let (hk, ek) = (hours_key(c, ip), events_key(c, ip));
    let (fields, events): (Vec<(String, u64)>, Vec<String>) = c
        .run("history", |mut conn| async move {
            redis::pipe()
                .hgetall(hk)
                .lrange(ek, 0, -1)
                .query_async(&mut conn)
                .await
        })
        .await?;
    let mut buckets: BTreeMap<(String, u64), Bucket> = BTreeMap::new();
    for (field, n) in fields {
        let mut parts = field.rsplitn(3, '|');
        let (Some(metric), Some(hour), Some(provider)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(hour) = hour.parse::<u64>() else {
            continue;
        };
        let b = buckets.entry((provider.to_string(), hour)).or_default();
        match metric {
            "sent" => b.sent = n,
            "deferred" => b.deferred = n,
            "hard_bounces" => b.hard_bounces = n,
            "recipient_bounces" => b.recipient_bounces = n,
            "blocks" => b.blocks = n,
            "complaints" => b.complaints = n,
            "cap" => b.cap = Some(n),
            _ => {}
        }
    }
    let hours = buckets.into_iter().map(|((p, h), b)| (p, h, b)).collect();
    Some((hours, events))
}

/// Drops the farm's buckets of `ips` older than `cutoff` (unix seconds).
pub async fn prune(c: &Cluster, ips: &[IpAddr], cutoff: u64) {
    for ip in ips {
        let key = hours_key(c, *ip);
        let k = key.clone();
        let Some(fields) = c
            .run("history", |mut conn| async move {
                redis::cmd("HKEYS")
                    .arg(k)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await
        else {
            return;
        };
        let stale: Vec<String> = fields
            .into_iter()
            .filter(|f| {
                f.rsplit('|')
                    .nth(1)
                    .and_then(|h| h.parse::<u64>().ok())
                    .is_some_and(|h| h < cutoff)
            })
            .collect();
        if !stale.is_empty() {
            c.run("history", |mut conn| async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(stale)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        }
    }
}
