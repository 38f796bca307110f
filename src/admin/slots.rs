//! Who holds the admin listener's connections. A connection is admitted at accept, before a
//! byte is read (the token is not known yet), so the operator's protection cannot depend on
//! it. Rules:
//! 1. A client is its IPv4 address or its IPv6 /64 (`inbound::anvil::client_key`).
//! 2. A connection is *busy* while a request is being handled and *idle* otherwise (before its
//!    first request, between keep-alive requests, with a header half sent). Only idle
//!    connections are ever closed to make room. A refused request is answered at once, before
//!    its body is read, so only a token holder (or the open reads, answered at once) keeps a
//!    connection busy for long.
//! 3. A client at `max_connections_per_client`: its own oldest idle connection is closed for
//!    the new one (a browser's leftover keep-alives never shut out its own new request); none
//!    idle: 503.
//! 4. At `max_connections`: the oldest idle connection of the client holding the most is closed
//!    for the new one; none idle anywhere: 503. So idle connections from any number of
//!    addresses never keep anyone out (the newest connection, the one about to send its
//!    request, is the last to go), and the operator — from loopback or anywhere, with the
//!    token — gets a slot as long as not every slot is serving a request.
//!
//! No share is reserved for loopback: rule 4 already admits any client while one connection is
//! idle, and a reserve would not tell a local attacker from the local CLI.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::inbound::anvil::client_key;

#[derive(Debug)]
struct Conn {
    client: IpAddr,
    busy: u32,
    /// Accepted, or when its last request ended.
    idle_since: Instant,
    shed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    per_client: HashMap<IpAddr, usize>,
    next: u64,
}

/// The caps (`[admin] max_connections`, `max_connections_per_client`) and who holds them.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_client: usize,
    table: Mutex<Table>,
}

/// Why a connection is refused (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every connection of this client is busy (rule 3).
    Client,
    /// Every connection is busy (rule 4).
    All,
}

/// An admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    slots: Arc<Slots>,
    /// Fired when the connection is closed for another (rules 3 and 4).
    pub shed: Arc<Notify>,
}

/// What an admission did besides admitting.
#[derive(Debug, PartialEq, Eq)]
pub enum Shed {
    None,
    /// Closed an idle connection of the same client (rule 3).
    Own,
    /// Closed an idle connection of this other client (rule 4).
    Other(IpAddr),
}

impl Slots {
    pub fn new(max: usize, per_client: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            per_client: per_client.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer` (rules 3 and 4).
    pub fn admit(self: &Arc<Slots>, peer: IpAddr, now: Instant) -> Result<(Ticket, Shed), Full> {
        let key = client_key(peer);
        let mut t = self.lock();
        let mine = t.per_client.get(&key).copied().unwrap_or(0);
        let shed = if mine >= self.per_client {
            let victim = oldest_idle(&t, |c| c.client == key).ok_or(Full::Client)?;
            remove(&mut t, victim);
            Shed::Own
        } else if t.conns.len() >= self.max {
            // One pass: each client's oldest idle connection.
            let mut oldest: HashMap<IpAddr, (Instant, u64)> = HashMap::new();
            for (id, c) in t.conns.iter().filter(|(_, c)| c.busy == 0) {
                let e = oldest.entry(c.client).or_insert((c.idle_since, *id));
                *e = (*e).min((c.idle_since, *id));
            }
            let top = oldest
                .iter()
                .max_by_key(|(client, first)| {
                    let count = t.per_client.get(*client).copied().unwrap_or(0);
                    (count, std::cmp::Reverse(**first))
                })
                .map(|(client, first)| (*client, first.1))
                .ok_or(Full::All)?;
            remove(&mut t, top.1);
            let top = top.0;
            if top == key {
                Shed::Own
            } else {
                Shed::Other(top)
            }
        } else {
            Shed::None
        };
        let id = t.next;
        t.next += 1;
        let notify = Arc::new(Notify::new());
        t.conns.insert(
            id,
            Conn {
                client: key,
                busy: 0,
                idle_since: now,
                shed: notify.clone(),
            },
        );
        *t.per_client.entry(key).or_insert(0) += 1;
        let ticket = Ticket {
            id,
            slots: self.clone(),
            shed: notify,
        };
        Ok((ticket, shed))
    }

    /// Connections held now (a closed one is gone at once).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().conns.len()
    }
}

fn oldest_idle(t: &Table, of: impl Fn(&Conn) -> bool) -> Option<u64> {
    t.conns
        .iter()
        .filter(|(_, c)| c.busy == 0 && of(c))
        .min_by_key(|(id, c)| (c.idle_since, **id))
        .map(|(id, _)| *id)
}

fn remove(t: &mut Table, id: u64) {
    let Some(c) = t.conns.remove(&id) else {
        return;
    };
    if let Some(n) = t.per_client.get_mut(&c.client) {
        *n -= 1;
        if *n == 0 {
            t.per_client.remove(&c.client);
        }
    }
    c.shed.notify_one();
}

impl Ticket {
    /// Marks a request in progress; `false` when the connection was just closed for another.
    pub fn begin(&self) -> bool {
        let mut t = self.slots.lock();
        match t.conns.get_mut(&self.id) {
            Some(c) => {
                c.busy += 1;
                true
            }
            None => false,
        }
    }

    /// The request that `begin` marked is over.
    pub fn end(&self, now: Instant) {
        let mut t = self.slots.lock();
        if let Some(c) = t.conns.get_mut(&self.id) {
            c.busy = c.busy.saturating_sub(1);
            c.idle_since = now;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.slots.lock();
        if let Some(c) = t.conns.remove(&self.id)
            && let Some(n) = t.per_client.get_mut(&c.client)
        {
            *n -= 1;
            if *n == 0 {
                t.per_client.remove(&c.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lo(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_client_over_its_share_loses_its_own_oldest_idle() {
        let s = Slots::new(8, 2);
        let t0 = Instant::now();
        let (a1, _) = s.admit(lo(9), t0).unwrap();
        let (a2, _) = s.admit(lo(9), t0 + Duration::from_millis(1)).unwrap();
        let (_a3, shed) = s.admit(lo(9), t0 + Duration::from_millis(2)).unwrap();
        assert_eq!(shed, Shed::Own);
        assert_eq!(s.held(), 2);
        assert!(!a1.begin(), "the oldest was closed");
        assert!(a2.begin());
        // All busy: refused.
        let a3 = _a3;
        assert!(a3.begin());
        assert_eq!(s.admit(lo(9), t0).unwrap_err(), Full::Client);
        a3.end(t0 + Duration::from_millis(3));
        assert!(s.admit(lo(9), t0).is_ok());
    }

    #[test]
    fn idle_connections_from_many_addresses_never_keep_the_operator_out() {
        let s = Slots::new(4, 2);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for n in 0..40u8 {
            let at = t0 + Duration::from_millis(n.into());
            held.push(s.admit(lo(20 + n % 8), at).unwrap().0);
        }
        assert_eq!(s.held(), 4);
        let at = t0 + Duration::from_secs(1);
        let (op, shed) = s.admit(lo(1), at).unwrap();
        assert!(matches!(shed, Shed::Other(_)));
        assert!(op.begin());
        // The client holding the most loses first.
        let s = Slots::new(3, 3);
        let (_a, _) = s.admit(lo(5), t0).unwrap();
        let (_b, _) = s.admit(lo(6), t0 + Duration::from_millis(1)).unwrap();
        let (_c, _) = s.admit(lo(6), t0 + Duration::from_millis(2)).unwrap();
        assert_eq!(s.admit(lo(1), at).unwrap().1, Shed::Other(lo(6)));
        // Every slot busy: 503.
        let s = Slots::new(1, 1);
        let (busy, _) = s.admit(lo(5), t0).unwrap();
        assert!(busy.begin());
        assert_eq!(s.admit(lo(1), at).unwrap_err(), Full::All);
        drop(busy);
        assert_eq!(s.held(), 0);
    }
}
