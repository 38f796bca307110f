//! The scheduler's index of queued messages: a few dozen bytes per message, never the envelope
//! or the body (both are read from the spool when an attempt starts).
//!
//! Rules:
//! - A waiting message sits in `timer`, ordered by (due, id). Once due it moves to the ready
//!   queue of each destination it has pending recipients at (their domains), in that order, so
//!   a backlog drains oldest first. A message for several destinations is attempted when the
//!   first of them gives it a turn (all its due recipients go then, each to its destination);
//!   its copies in the other queues are skipped. So a recipient at a healthy destination never
//!   waits behind another destination's backlog.
//! - An attempt takes an active slot: at most `active_limit` in all (like Postfix's
//!   `qmgr_message_active_limit`) and at most `per_destination` for one destination.
//!   Destinations with ready messages and a free slot take turns (round robin), so one
//!   destination's backlog never holds the slots another destination needs.
//! - A message held by the operator is in no queue until released.
//! - Work per delivered message is O(log n): no scan of the backlog.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::delivery::Written;
use crate::routing::domain_of;
use crate::spool::{Envelope, RcptState};

mod ids;
#[cfg(test)]
mod tests;

pub(crate) use ids::{Ids, Names, Qid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In `timer`.
    Waiting,
    /// In its destination's ready queue.
    Ready,
    /// An attempt is running (holds an active slot).
    Active,
    /// Held by the operator.
    Held,
    /// An operator action's I/O is running (hold, release, delete).
    Busy,
}

/// What the index keeps of one queued message.
pub(crate) struct Entry {
    /// Unix seconds (u32: until 2106) when the next attempt may start.
    pub(crate) due: u32,
    pub(crate) received_at: u32,
    /// Bytes (saturating: a count for the summary).
    pub(crate) size: u32,
    /// Domain of a pending recipient: the first one's, or the one whose turn started the
    /// running attempt (its active slot).
    pub(crate) dest: u32,
    /// Provider of the last reply's host (`Index::providers`), `u16::MAX` when none.
    pub(crate) provider: u16,
    pub(crate) rcpts: u16,
    /// Attempts since the envelope file was last written (deferrals recorded in place).
    pub(crate) unsaved: u8,
    /// Domains of pending recipients other than the first (multi-domain messages only; a
    /// thin pointer keeps the entry at 32 bytes).
    #[allow(clippy::box_collection)] // 8 bytes here, not 24 (a Vec) or 16 (a boxed slice)
    pub(crate) more_domains: Option<Box<Vec<u32>>>,
    pub(crate) place: Place,
    /// A recipient waits for pool capacity.
    pub(crate) pool_held: bool,
}

impl Entry {
    /// Every pending recipient's domain.
    pub(crate) fn domains(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.dest)
            .take(self.rcpts.min(1) as usize)
            .chain(self.more_domains.iter().flat_map(|d| d.iter().copied()))
    }
}

/// How an attempt ended.
pub(crate) enum After<'a> {
    /// Finished and removed from the spool.
    Gone,
    /// Recipients still pending: the envelope after the attempt, a due time overriding its
    /// own, and how the attempt was recorded.
    Pending(&'a Envelope, Option<u64>, Written),
    /// Not attempted (the envelope could not be read): again at this time.
    RetryAt(u64),
}

#[derive(Default)]
struct DestQueue {
    ready: VecDeque<Qid>,
    active: usize,
    /// In `turns` now.
    queued: bool,
}

pub(crate) struct Index {
    pub(crate) entries: HashMap<Qid, Entry>,
    timer: BTreeSet<(u64, Qid)>,
    dests: Vec<DestQueue>,
    /// Destinations with a ready message and a free slot, in turn order.
    turns: VecDeque<u32>,
    pub(crate) names: Names,
    pub(crate) providers: Names,
    pub(crate) ids: Ids,
    pub(crate) active: usize,
    pub(crate) active_limit: usize,
    per_destination: usize,
}

/// Seconds or bytes in 32 bits (saturating).
fn secs(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

/// The earliest next attempt of the pending recipients.
pub(crate) fn due_of(env: &Envelope) -> Option<u64> {
    env.recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| r.next_attempt)
        .min()
}

impl Index {
    pub(crate) fn new(active_limit: usize, per_destination: usize) -> Index {
        Index {
            entries: HashMap::new(),
            timer: BTreeSet::new(),
            dests: Vec::new(),
            turns: VecDeque::new(),
            names: Names::default(),
            providers: Names::default(),
            ids: Ids::default(),
            active: 0,
            active_limit: active_limit.max(1),
            per_destination: per_destination.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry's fields for `env` (place and due left to the caller).
    fn describe(&mut self, env: &Envelope, provider_of: &dyn Fn(&str) -> String) -> Entry {
        let mut domains = env
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .map(|r| domain_of(&r.address));
        // No pending recipient (finishing failed): a queue of its own, named "".
        let first = domains.next().unwrap_or_default();
        let dest = self.names.intern(&first);
        let mut more: Vec<u32> = Vec::new();
        for d in domains {
            let n = self.names.intern(&d);
            if n != dest && !more.contains(&n) {
                more.push(n);
            }
        }
        let pending = || {
            env.recipients
                .iter()
                .filter(|r| r.state == RcptState::Pending)
        };
        let host = pending()
            .filter_map(|r| r.last_reply.as_ref())
            .find(|r| !r.host.is_empty())
            .map(|r| provider_of(&r.host));
        let provider = host.map_or(u16::MAX, |p| {
            self.providers.intern(&p).min(u16::MAX as u32 - 1) as u16
        });
        Entry {
            due: secs(due_of(env).unwrap_or(0)),
            received_at: secs(env.received_at),
            size: secs(env.size),
            dest,
            provider,
            rcpts: pending().count().min(u16::MAX as usize) as u16,
            more_domains: (!more.is_empty()).then(|| Box::new(more)),
            unsaved: 0,
            place: Place::Waiting,
            pool_held: pending().any(|r| r.held),
        }
    }

    /// Adds a message, waiting (or held by the operator). False if it is already indexed.
    pub(crate) fn insert(
        &mut self,
        env: &Envelope,
        on_hold: bool,
        provider_of: &dyn Fn(&str) -> String,
    ) -> bool {
        let q = self.ids.pack(&env.id);
        if self.entries.contains_key(&q) {
            return false;
        }
        let mut e = self.describe(env, provider_of);
        if on_hold {
            e.place = Place::Held;
        } else {
            self.timer.insert((e.due.into(), q));
        }
        self.entries.insert(q, e);
        true
    }

    /// Moves every message due by `now` to its destination's ready queue.
    pub(crate) fn promote(&mut self, now: u64) {
        while let Some(&(due, q)) = self.timer.first() {
            if due > now {
                break;
            }
            self.timer.pop_first();
            let Some(e) = self.entries.get_mut(&q) else {
                continue;
            };
            e.place = Place::Ready;
            let mut dests = vec![e.dest];
            dests.extend(e.more_domains.iter().flat_map(|d| d.iter().copied()));
            for dest in dests {
                let at = dest as usize;
                if self.dests.len() <= at {
                    self.dests.resize_with(at + 1, DestQueue::default);
                }
                self.dests[at].ready.push_back(q);
                self.offer(dest);
            }
        }
    }

    /// Gives `dest` a turn if it has a ready message and a free slot.
    fn offer(&mut self, dest: u32) {
        let Some(dq) = self.dests.get_mut(dest as usize) else {
            return;
        };
        if !dq.queued && !dq.ready.is_empty() && dq.active < self.per_destination {
            dq.queued = true;
            self.turns.push_back(dest);
        }
    }

    /// The next message to attempt, if a slot is free: it becomes active.
    pub(crate) fn next_active(&mut self) -> Option<Qid> {
        while self.active < self.active_limit {
            let dest = self.turns.pop_front()?;
            let dq = &mut self.dests[dest as usize];
            dq.queued = false;
            // Entries held, deleted or rescheduled since they were queued are skipped.
            while let Some(q) = dq.ready.pop_front() {
                let Some(e) = self.entries.get_mut(&q) else {
                    continue;
                };
                if e.place != Place::Ready {
                    continue;
                }
                if e.dest != dest {
                    // Another of its destinations: that one's turn starts it (and its slot).
                    let Some(more) = e.more_domains.as_mut() else {
                        continue;
                    };
                    let Some(slot) = more.iter_mut().find(|d| **d == dest) else {
                        continue;
                    };
                    *slot = std::mem::replace(&mut e.dest, dest);
                }
                e.place = Place::Active;
                dq.active += 1;
                self.active += 1;
                self.offer(dest);
                return Some(q);
            }
        }
        None
    }

    /// An attempt ended.
    pub(crate) fn finished(
        &mut self,
        q: Qid,
        after: After<'_>,
        provider_of: &dyn Fn(&str) -> String,
    ) {
        let Some(e) = self.entries.get(&q) else {
            return;
        };
        let unsaved = e.unsaved;
        if e.place == Place::Active {
            let dest = e.dest;
            self.active -= 1;
            self.dests[dest as usize].active -= 1;
            self.offer(dest);
        }
        match after {
            After::Gone => {
                self.entries.remove(&q);
            }
            After::Pending(env, due, written) => {
                let mut e = self.describe(env, provider_of);
                if let Some(due) = due {
                    e.due = secs(due);
                }
                e.unsaved = match written {
                    Written::Saved => 0,
                    Written::InPlace => unsaved.saturating_add(1),
                    Written::Unchanged => unsaved,
                };
                self.timer.insert((e.due.into(), q));
                self.entries.insert(q, e);
            }
            After::RetryAt(due) => {
                if let Some(e) = self.entries.get_mut(&q) {
                    e.place = Place::Waiting;
                    e.due = secs(due);
                    self.timer.insert((e.due.into(), q));
                }
            }
        }
    }

    /// Makes a waiting message due at `due` at the latest (retry, release, pool wake-up).
    pub(crate) fn hurry(&mut self, q: Qid, due: u64) -> bool {
        let Some(e) = self.entries.get_mut(&q) else {
            return false;
        };
        match e.place {
            Place::Waiting => {
                if u64::from(e.due) > due {
                    self.timer.remove(&(e.due.into(), q));
                    e.due = secs(due);
                    self.timer.insert((e.due.into(), q));
                }
                true
            }
            Place::Ready => true,
            _ => false,
        }
    }

    /// Takes a waiting or ready message out of the queues for an operator action.
    pub(crate) fn take_waiting(&mut self, q: Qid) -> bool {
        let Some(e) = self.entries.get_mut(&q) else {
            return false;
        };
        match e.place {
            Place::Waiting => {
                self.timer.remove(&(e.due.into(), q));
            }
            // Its copy in the ready queue is skipped (place is no longer Ready).
            Place::Ready => {}
            _ => return false,
        }
        e.place = Place::Busy;
        true
    }

    /// Takes a message held by the operator for an operator action.
    pub(crate) fn take_held(&mut self, q: Qid) -> bool {
        match self.entries.get_mut(&q) {
            Some(e) if e.place == Place::Held => {
                e.place = Place::Busy;
                true
            }
            _ => false,
        }
    }

    /// After an operator action: held, or waiting again (due at `due` at the latest).
    pub(crate) fn put_back(&mut self, q: Qid, held: bool, due: Option<u64>) {
        let Some(e) = self.entries.get_mut(&q) else {
            return;
        };
        if held {
            e.place = Place::Held;
            return;
        }
        e.place = Place::Waiting;
        if let Some(due) = due {
            e.due = e.due.min(secs(due));
        }
        self.timer.insert((e.due.into(), q));
    }

    pub(crate) fn remove(&mut self, q: Qid) {
        if let Some(e) = self.entries.remove(&q)
            && e.place == Place::Waiting
        {
            self.timer.remove(&(e.due.into(), q));
        }
    }

    pub(crate) fn next_due(&self) -> Option<u64> {
        self.timer.first().map(|&(d, _)| d)
    }
}
