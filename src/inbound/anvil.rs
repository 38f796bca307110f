//! Per-client counters, in the spirit of Postfix's anvil. Rules:
//! - A client is its address; IPv6 clients are grouped per /64 (one host usually owns a /64).
//! - A client's network is its IPv4 /`limits.network_prefix_v4` (default /24) or IPv6
//!   /`limits.network_prefix_v6` (default /48): one attacker usually holds a whole one.
//! - Concurrent sessions per client: `limits.client_sessions` → `421 4.7.0` at connect.
//! - Concurrent unauthenticated sessions per network: `limits.network_sessions` → `421 4.7.0` at
//!   connect. A session that authenticates stops counting there, so users are never refused
//!   because of the sessions of users beside them.
//! - New connections per client per minute: `limits.client_connection_rate` → `421 4.7.0`.
//! - Messages (MAIL FROM) per client per minute: `limits.client_message_rate` → `450 4.7.1`.
//! - Each network's new connections are counted too (not a limit): `admission` sheds first from
//!   the networks that connect the most ([`Anvil::network_rates`]).
//! - Rates count in fixed one-minute windows opened by a client's first event (as anvil does);
//!   refused attempts are not counted. 0 turns a limit off.
//! - Trusted networks are exempt (Postfix's `smtpd_client_event_limit_exceptions`).
//! - A refusal is logged at most once per client and minute, with the number left unlogged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::settings::Limits;
use crate::reply::Reply;

const WINDOW: Duration = Duration::from_secs(60);
/// Idle entries are dropped at most this often (a scan of the map).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The key a client is counted under: its IPv4 address, or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A client network: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// The network of `ip`: IPv4 (mapped IPv6 included) per /`v4`, IPv6 per /`v6`.
    pub fn of(ip: IpAddr, v4: u8, v6: u8) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let prefix = v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let addr = IpAddr::V4((u32::from(a) & mask).into());
                Network { addr, prefix }
            }
            IpAddr::V6(a) => {
                let prefix = v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let addr = IpAddr::V6((u128::from(a) & mask).into());
                Network { addr, prefix }
            }
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Events in the current fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            count: 0,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.start) >= WINDOW
    }

    /// Counts one event unless `limit` (non-zero) events are already in the window.
    fn take(&mut self, now: Instant, limit: u32) -> bool {
        if self.expired(now) {
            *self = Window::new(now);
        }
        if limit > 0 && self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }
}

#[derive(Debug)]
struct Entry {
    sessions: usize,
    connections: Window,
    messages: Window,
    /// When a refusal was last logged, and refusals since then not logged.
    logged: Option<Instant>,
    unlogged: u32,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            sessions: 0,
            connections: Window::new(now),
            messages: Window::new(now),
            logged: None,
            unlogged: 0,
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.sessions == 0
            && self.connections.expired(now)
            && self.messages.expired(now)
            && self.logged.is_none_or(|t| now.duration_since(t) >= WINDOW)
    }
}

#[derive(Debug)]
struct NetEntry {
    /// Unauthenticated sessions now.
    sessions: usize,
    connections: Window,
    /// The window before `connections`.
    previous: Option<Window>,
}

impl NetEntry {
    fn connected(&mut self, now: Instant) {
        if self.connections.expired(now) {
            self.previous = Some(std::mem::replace(&mut self.connections, Window::new(now)));
        }
        self.connections.count = self.connections.count.saturating_add(1);
    }

    /// Connections over about the last minute: a window's count, in the share of it still
    /// within the last minute (a sliding estimate, so it does not drop to 0 at a window's end).
    fn rate(&self, now: Instant) -> u64 {
        let w = WINDOW.as_millis() as u64;
        let share = |win: &Window| {
            let elapsed = now.duration_since(win.start).as_millis() as u64;
            let count = u64::from(win.count);
            match elapsed {
                e if e < w => count,
                e if e >= 2 * w => 0,
                e => count * (2 * w - e) / w,
            }
        };
        share(&self.connections) + self.previous.as_ref().map_or(0, share)
    }

    fn idle(&self, now: Instant) -> bool {
        self.sessions == 0 && now.duration_since(self.connections.start) >= 2 * WINDOW
    }
}

/// Which per-client limit refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Sessions,
    NetworkSessions(Network),
    ConnectionRate,
    MessageRate,
}

impl Refusal {
    pub fn reply(self, hostname: &str, client: IpAddr) -> Reply {
        match self {
            Refusal::Sessions => Reply::new(
                421,
                "4.7.0",
                format!("{hostname} Too many connections from {client}, try again later"),
            ),
            Refusal::NetworkSessions(net) => Reply::new(
                421,
                "4.7.0",
                format!("{hostname} Too many connections from network {net}, try again later"),
            ),
            Refusal::ConnectionRate => Reply::new(
                421,
                "4.7.0",
                format!(
                    "{hostname} Too many connections per minute from {client}, try again later"
                ),
            ),
            Refusal::MessageRate => Reply::new(
                450,
                "4.7.1",
                format!("Too many messages per minute from {client}, try again later"),
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Sessions => "client_sessions",
            Refusal::NetworkSessions(_) => "network_sessions",
            Refusal::ConnectionRate => "client_connection_rate",
            Refusal::MessageRate => "client_message_rate",
        }
    }
}

/// What a refusal should log: nothing (already logged this minute), or a line with the number
/// of refusals left unlogged since the last one.
pub type LogNow = Option<u32>;

#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub sessions: usize,
    pub connection_rate: u32,
    pub message_rate: u32,
    pub network_sessions: usize,
    pub network_prefix_v4: u8,
    pub network_prefix_v6: u8,
}

impl From<&Limits> for ClientLimits {
    fn from(l: &Limits) -> Self {
        ClientLimits {
            sessions: l.client_sessions,
            connection_rate: l.client_connection_rate,
            message_rate: l.client_message_rate,
            network_sessions: l.network_sessions,
            // Range-checked in `config::ranges` (8–32, 16–64).
            network_prefix_v4: l.network_prefix_v4.min(32) as u8,
            network_prefix_v6: l.network_prefix_v6.min(128) as u8,
        }
    }
}

struct Table {
    clients: HashMap<IpAddr, Entry>,
    networks: HashMap<Network, NetEntry>,
    pruned: Instant,
}

pub struct Anvil {
    limits: ClientLimits,
    table: Mutex<Table>,
}

/// One session counted against its client; dropping it gives the session back.
pub struct SessionTicket {
    anvil: Arc<Anvil>,
    key: IpAddr,
    /// Counted against this network until the session authenticates.
    network: Option<Network>,
}

impl SessionTicket {
    /// The session authenticated: it no longer counts against its network.
    pub fn authenticated(&mut self) {
        if let Some(net) = self.network.take() {
            self.anvil.lock().leave_network(net);
        }
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        let mut t = self.anvil.lock();
        if let Some(e) = t.clients.get_mut(&self.key) {
            e.sessions = e.sessions.saturating_sub(1);
        }
        if let Some(net) = self.network.take() {
            t.leave_network(net);
        }
    }
}

impl Anvil {
    pub fn new(limits: ClientLimits) -> Arc<Anvil> {
        Arc::new(Anvil {
            limits,
            table: Mutex::new(Table {
                clients: HashMap::new(),
                networks: HashMap::new(),
                pruned: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds only counters: a panic elsewhere cannot leave it unusable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The network `ip` is counted under.
    pub fn network(&self, ip: IpAddr) -> Network {
        Network::of(
            ip,
            self.limits.network_prefix_v4,
            self.limits.network_prefix_v6,
        )
    }

    /// A new connection from `ip`: counts it and one session, or says which limit refuses it.
    pub fn connect(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<SessionTicket, (Refusal, LogNow)> {
        let key = client_key(ip);
        let network = self.network(ip);
        let mut t = self.lock();
        t.prune(now);
        let on_network = t.networks.get(&network).map_or(0, |n| n.sessions);
        let e = t.clients.entry(key).or_insert_with(|| Entry::new(now));
        let refusal = if self.limits.sessions > 0 && e.sessions >= self.limits.sessions {
            Some(Refusal::Sessions)
        } else if self.limits.network_sessions > 0 && on_network >= self.limits.network_sessions {
            Some(Refusal::NetworkSessions(network))
        } else if !e.connections.take(now, self.limits.connection_rate) {
            Some(Refusal::ConnectionRate)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Err((r, e.log_now(now)));
        }
        e.sessions += 1;
        let net = t.networks.entry(network).or_insert_with(|| NetEntry {
            sessions: 0,
            connections: Window::new(now),
            previous: None,
        });
        net.sessions += 1;
        net.connected(now);
        Ok(SessionTicket {
            anvil: self.clone(),
            key,
            network: Some(network),
        })
    }

    /// A new message (MAIL FROM) from `ip`.
    pub fn message(&self, ip: IpAddr, now: Instant) -> Result<(), (Refusal, LogNow)> {
        if self.limits.message_rate == 0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut t = self.lock();
        let e = t.clients.entry(key).or_insert_with(|| Entry::new(now));
        if e.messages.take(now, self.limits.message_rate) {
            Ok(())
        } else {
            Err((Refusal::MessageRate, e.log_now(now)))
        }
    }

    /// Fills in, for each network in `rates`, its new connections over about the last minute.
    pub fn network_rates(&self, rates: &mut HashMap<Network, u64>, now: Instant) {
        let t = self.lock();
        for (net, rate) in rates.iter_mut() {
            *rate = t.networks.get(net).map_or(0, |n| n.rate(now));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().clients.len()
    }
}

impl Table {
    fn leave_network(&mut self, net: Network) {
        if let Some(n) = self.networks.get_mut(&net) {
            n.sessions = n.sessions.saturating_sub(1);
        }
    }

    fn prune(&mut self, now: Instant) {
        if now.duration_since(self.pruned) < PRUNE_EVERY {
            return;
        }
        self.pruned = now;
        self.clients.retain(|_, e| !e.idle(now));
        self.networks.retain(|_, n| !n.idle(now));
    }
}

impl Entry {
    fn log_now(&mut self, now: Instant) -> LogNow {
        if self.logged.is_some_and(|t| now.duration_since(t) < WINDOW) {
            self.unlogged += 1;
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests;
