//! Suspensions and releases shared by the farm (`[cluster]`, `cluster::sync`).
//!
//! Rules:
//! - A suspension decided here and an operator's release made here go to the farm as a
//!   `Decision`, stamped (unix ms) and kept in the account's record, so a restart still knows it.
//! - The later stamp wins (`util::merge::newer`): a suspension on any relay refuses the
//!   account on every relay, and a release made later on any relay lets it send everywhere.
//! - Counts and throttles stay per relay: each relay judges the mail it sent and the complaints
//!   it received.
//! - A decision for a sender domain not tracked here takes a place under `max_sender_domains`
//!   as local mail does (`book::make_room`): when every place is held it is not kept (logged).

use serde::{Deserialize, Serialize};

use super::book::{
    Account, Accounts, Event, make_room, not_tracked, parse_key, push_event, store_key,
};
use super::counts::Days;
use super::policy::Breach;
use super::{Key, Kind, Standing};
use crate::pool::warmup::Clock;
use crate::util::merge::{Newer, newer};

/// A suspension (`standing` suspended, with its `breach`) or a release (`standing` good).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub standing: Standing,
    pub breach: Option<Breach>,
    pub why: String,
    /// Who released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

fn decision_of(a: &Account) -> Decision {
    let last = a.rec.events.last();
    Decision {
        standing: a.rec.standing,
        breach: a.rec.breach,
        why: last.map(|e| e.why.clone()).unwrap_or_default(),
        by: last.and_then(|e| e.by.clone()),
    }
}

/// Where suspensions and releases made here go to the farm (`[cluster]`, implemented by
/// `cluster`): the account's store key (`kind|name`) and its decision, stamped (unix millis).
pub trait DecisionSink: Send + Sync {
    fn send_decision(&self, account: String, decision: Decision, at_ms: u64);
}

impl Accounts {
    /// Suspensions and releases made here go to `outbox` (the farm's, `[cluster]`), handed
    /// while built.
    pub fn sharing(mut self, outbox: Option<std::sync::Arc<dyn DecisionSink>>) -> Accounts {
        self.outbox = outbox;
        self
    }

    /// Stamps the suspension or release `a` just got and hands it to the farm (under the
    /// book's lock).
    pub(super) fn decided(&self, key: &Key, a: &mut Account) {
        let stamp = Clock::now_ms().max(a.rec.decided_ms + 1);
        a.rec.decided_ms = stamp;
        if let Some(outbox) = &self.outbox {
            outbox.send_decision(store_key(key), decision_of(a), stamp);
        }
    }

    /// Every decision this relay knows, with its stamp: what a resync compares.
    pub fn changes(&self) -> Vec<(String, Decision, u64)> {
        let book = self.book.lock().expect("accounts lock");
        book.iter()
            .filter(|(_, a)| a.rec.decided_ms > 0)
            .map(|(k, a)| (store_key(k), decision_of(a), a.rec.decided_ms))
            .collect()
    }

    /// A decision made on relay `node`: applied when later than this relay's. Returns whether
    /// it changed anything here.
    pub fn apply_remote(&self, account: &str, d: Decision, node: &str, at_ms: u64) -> bool {
        let Some(key) = parse_key(account) else {
            return false;
        };
        let now = crate::spool::now_unix();
        let mut records = Vec::new();
        let record = {
            let mut book = self.book.lock().expect("accounts lock");
            if key.kind == Kind::Domain && !book.contains_key(&key) {
                let Some(gone) = make_room(&mut book, self.max_sender_domains()) else {
                    not_tracked(&key, now);
                    return false;
                };
                records.extend(gone.iter().map(|g| (store_key(g), None)));
            }
            let a = book.entry(key.clone()).or_default();
            let local = Some(a.rec.decided_ms).filter(|&ms| ms > 0);
            if newer(local, Some(at_ms)) != Newer::Remote {
                return false;
            }
            a.rec.decided_ms = at_ms;
            let suspend = d.standing == Standing::Suspended;
            if suspend == (a.rec.standing == Standing::Suspended) {
                // Already so here: only the stamp moves.
                a.dirty = true;
                drop(book);
                if !records.is_empty() {
                    self.write(&records);
                }
                return false;
            }
            if suspend {
                a.rec.breach = d.breach;
                tracing::warn!(account = %key, node, why = %d.why, "account suspended (from the farm)");
            } else {
                a.rec.days = Days::default();
                a.rec.breach = None;
                tracing::warn!(account = %key, node, by = d.by.as_deref().unwrap_or("-"), "account released (from the farm)");
            }
            a.rec.standing = d.standing;
            a.rec.since = now;
            push_event(
                &mut a.rec,
                Event {
                    at: now,
                    standing: d.standing,
                    why: format!("{} (on {node})", d.why),
                    by: d.by,
                    peer: None,
                },
            );
            a.dirty = false;
            serde_json::to_string(&a.rec).ok()
        };
        records.push((store_key(&key), record));
        self.write(&records);
        true
    }
}
