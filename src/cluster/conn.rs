//! The connection to the farm's Redis and this node's heartbeat.
//!
//! Rules:
//! - Starting never fails: an unreachable Redis leaves the cluster "down" and a background task
//!   connects again every second; `is_up` and `up_changes` tell the rest of the relay.
//! - Every node writes `<prefix>:node:<name>` (its IPs, last-seen time) every second with a
//!   10 s expiry, and reads the others' keys: `nodes()` is what it last saw (kept while down,
//!   for the fallback shares).
//! - A failed or timed-out Redis call marks the cluster down at once (`failed`); the logs say
//!   so once per outage and once on return. The password is never logged.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::settings::Settings;

/// How often the heartbeat is written and the farm read.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone (the key's expiry).
pub const NODE_TTL: Duration = Duration::from_secs(10);

pub use crate::pool::RunError;

/// One node's heartbeat as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub name: String,
    /// Unix millis of its last heartbeat.
    pub last_seen: u64,
    /// The source IPs it sends from.
    pub ips: Vec<IpAddr>,
}

pub struct Cluster {
    client: redis::Client,
    node: String,
    prefix: String,
    timeout: Duration,
    redis_shown: String,
    conn: Mutex<Option<ConnectionManager>>,
    up: watch::Sender<bool>,
    ips: Mutex<Vec<IpAddr>>,
    nodes: Mutex<Vec<NodeSeen>>,
    pub(super) counters: super::counters::Counters,
    pub(super) ramp: super::ramp::Tallies,
}

/// The client for the URL, with `ca_file` as its only trust anchor when set.
fn client(settings: &Settings) -> redis::Client {
    let url = settings.redis.secret();
    if let Some(ca) = &settings.ca_file {
        match std::fs::read(ca) {
            Ok(pem) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                match redis::Client::build_with_tls(url, certs) {
                    Ok(c) => return c,
                    Err(e) => {
                        tracing::error!(ca_file = %ca.display(), error = %e, "cluster: bad ca_file; using the system roots")
                    }
                }
            }
            Err(e) => {
                tracing::error!(ca_file = %ca.display(), error = %e, "cluster: cannot read ca_file; using the system roots")
            }
        }
    }
    redis::Client::open(url).expect("URL checked by the config")
}

fn now_ms() -> u64 {
    crate::pool::warmup::Clock::now_ms()
}

impl Cluster {
    /// Connects (or starts down) and spawns the heartbeat; never fails.
    pub async fn start(settings: &Settings, ips: Vec<IpAddr>) -> Arc<Cluster> {
        crate::tls::install_crypto_provider();
        let client = client(settings);
        let cluster = Arc::new(Cluster {
            client,
            node: settings.node.clone(),
            prefix: settings.prefix.clone(),
            timeout: settings.redis_timeout.0,
            redis_shown: settings.redis.to_string(),
            conn: Mutex::new(None),
            up: watch::channel(false).0,
            ips: Mutex::new(ips),
            nodes: Mutex::new(Vec::new()),
            counters: Default::default(),
            ramp: Default::default(),
        });
        tracing::info!(redis = %cluster.redis_shown, node = %cluster.node, "cluster: joining the farm");
        if !cluster.beat().await {
            tracing::warn!(redis = %cluster.redis_shown, "cluster: Redis unreachable at start; using local shares of every cap until it answers");
        }
        super::ramp::spawn_flusher(&cluster);
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { return };
                c.beat().await;
            }
        });
        cluster
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Changes of `is_up` (true on return: time to resync and reconcile).
    pub fn up_changes(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// The shared connection; `None` while Redis is down.
    pub fn conn(&self) -> Option<ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.conn.lock().expect("cluster conn").clone()
    }

    /// For a dedicated (pub/sub) connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The bound on one Redis round trip.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `<prefix>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// The nodes in the last heartbeat read (this one included while it is up).
    pub fn nodes(&self) -> Vec<NodeSeen> {
        self.nodes.lock().expect("cluster nodes").clone()
    }

    /// Which IPs this node sends from (on reload); the next heartbeat says so.
    pub fn set_ips(&self, ips: Vec<IpAddr>) {
        *self.ips.lock().expect("cluster ips") = ips;
    }

    /// A Redis call failed or timed out: down until the next heartbeat gets through.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.conn.lock().expect("cluster conn").take();
        self.set_up(false, Some((what, error.to_string())));
    }

    /// Returns true when Redis has just come back.
    fn set_up(&self, up: bool, why: Option<(&str, String)>) -> bool {
        let was = self.up.send_replace(up);
        if was && !up {
            let (what, error) = why.unwrap_or_default();
            tracing::warn!(redis = %self.redis_shown, during = what, error = %error, nodes = self.nodes().len(), "cluster: Redis down; each node keeps to its local share of every cap until it returns");
        } else if !was && up {
            tracing::info!(redis = %self.redis_shown, nodes = self.nodes().len(), "cluster: Redis up; shared counters in force");
        }
        !was && up
    }

    /// Runs `f` on the connection within the timeout; `None` (and down) on any failure.
    pub async fn run<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.try_run(what, f).await.ok()
    }

    /// `run`, telling why it failed: a request that timed out may still reach Redis later.
    pub async fn try_run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, RunError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().ok_or(RunError::Down)?;
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed(what, &e);
                Err(RunError::Failed)
            }
            Err(_) => {
                self.failed(what, &"timed out");
                Err(RunError::TimedOut)
            }
        }
    }

    async fn connect(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.lock().expect("cluster conn").clone() {
            return Some(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match conn {
            Ok(Ok(c)) => {
                *self.conn.lock().expect("cluster conn") = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster: cannot connect to Redis");
                None
            }
            Err(_) => {
                tracing::debug!("cluster: connecting to Redis timed out");
                None
            }
        }
    }

    /// Writes this node's heartbeat and reads the farm's; true when Redis answered.
    async fn beat(&self) -> bool {
        let Some(mut conn) = self.connect().await else {
            self.set_up(false, Some(("connect", "unreachable".into())));
            return false;
        };
        let me = NodeSeen {
            name: self.node.clone(),
            last_seen: now_ms(),
            ips: self.ips.lock().expect("cluster ips").clone(),
        };
        let key = self.key(&format!("node:{}", self.node));
        // The names in a set, not a SCAN: a SCAN walks the whole keyspace, and Redis may hold
        // many other keys (counters, history, other farms).
        let names_key = self.key("nodes");
        let json = serde_json::to_string(&me).expect("heartbeat serialises");
        let work = async {
            let (names,): (Vec<String>,) = redis::pipe()
                .pset_ex(&key, json, NODE_TTL.as_millis() as u64)
                .ignore()
                .sadd(&names_key, &self.node)
                .ignore()
                .smembers(&names_key)
                .query_async(&mut conn)
                .await?;
            let keys: Vec<String> = names
                .iter()
                .map(|n| self.key(&format!("node:{n}")))
                .collect();
            let values: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                conn.mget(&keys).await?
            };
            // Names whose heartbeat expired leave the set (they add themselves again).
            let gone: Vec<&String> = names
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n)
                .collect();
            if !gone.is_empty() {
                let _: () = conn.srem(&names_key, gone).await?;
            }
            redis::RedisResult::Ok(values)
        };
        match tokio::time::timeout(self.timeout * 2, work).await {
            Ok(Ok(values)) => {
                let mut seen: Vec<NodeSeen> = values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str(&v).ok())
                    .collect();
                seen.sort_by(|a, b| a.name.cmp(&b.name));
                *self.nodes.lock().expect("cluster nodes") = seen;
                if self.set_up(true, None) {
                    self.reconcile().await;
                }
                true
            }
            Ok(Err(e)) => {
                self.failed("heartbeat", &e);
                false
            }
            Err(_) => {
                self.failed("heartbeat", &"timed out");
                false
            }
        }
    }
}
