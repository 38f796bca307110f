//! Incidents: the replies a quarantine counts.
//!
//! Rules:
//! - Replies to deliveries that began before the latest quarantine covering an IP ×
//!   provider ended belong to it (`incident`); the record counts them (`replies`, its evidence)
//!   and keeps its offence number (`offence`, shared with the farm in the record itself).
//! - A count goes into the record only while it is still the offence the reply was judged
//!   against (same `since` and `offence`), read and written under one lock; otherwise it is
//!   dropped, so a late reply never writes an older offence over a newer one.
//! - Incident counts are written at most once a second per record (`flush_counts`): memory
//!   has them at once; the store and the farm get the sum. A farm's later record or a whole
//!   write of the record supersedes a pending count.

use std::net::IpAddr;

use super::holds::{Cause, Hold, HoldKey, HoldKind};
use super::pools::Pools;
use super::store::StoreError;
use super::warmup::Clock;

/// `evidence` with the incident's count of replies (`…; 7 block replies in one incident`),
/// replacing a count it had.
pub fn incident_evidence(evidence: &str, cause: &Cause, replies: u32) -> String {
    let base = match evidence.rsplit_once("; ") {
        Some((b, tail)) if tail.ends_with(" in one incident") => b,
        _ => evidence,
    };
    let noun = match (cause, replies) {
        (Cause::BlockReply, 1) => "block reply",
        (Cause::BlockReply, _) => "block replies",
        (Cause::Throttling, 1) => "throttling reply",
        (Cause::Throttling, _) => "throttling replies",
        (Cause::Complaints, 1) => "complaint",
        (Cause::Complaints, _) => "complaints",
        (_, 1) => "reply",
        _ => "replies",
    };
    format!("{base}; {replies} {noun} in one incident")
}

/// What the quarantines covering an IP × provider say about one reply (`Pools::incident`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incident {
    /// The quarantine record the reply's delivery was in flight for (it began before the
    /// latest quarantine ended): the reply belongs to it, no new offence.
    pub of: Option<(HoldKey, Hold)>,
    /// The highest offence number of the records, and when that quarantine began (unix s).
    pub offence: u32,
    pub offence_since: u64,
}

impl Pools {
    /// The incident a reply to a delivery from `ip` to `provider` that began at `sent_at_ms`
    /// belongs to, and the last offence number (module doc, rules on incidents).
    pub fn incident(&self, ip: IpAddr, provider: &str, sent_at_ms: u64) -> Incident {
        let inner = self.lock();
        // Called on every reply: most relays hold no record at all, and then nothing to scan.
        if inner.holds.is_empty() {
            return Incident::default();
        }
        // One pass: the record that ends last and the one with the last offence.
        let (mut latest, mut last_offence): (Option<(&HoldKey, &Hold)>, Option<&Hold>) =
            (None, None);
        for (k, h) in inner.holds.iter().filter(|((a, scope, _), h)| {
            *a == ip && (scope == "all" || scope == provider) && h.kind == HoldKind::Quarantined
        }) {
            if latest.is_none_or(|(_, l)| h.end_ms() >= l.end_ms()) {
                latest = Some((k, h));
            }
            if last_offence.is_none_or(|l| (h.offence, h.since) >= (l.offence, l.since)) {
                last_offence = Some(h);
            }
        }
        let mut incident = Incident {
            of: latest
                .filter(|(_, h)| sent_at_ms < h.end_ms())
                .map(|(k, h)| (k.clone(), h.clone())),
            ..Incident::default()
        };
        if let Some(h) = last_offence {
            (incident.offence, incident.offence_since) = (h.offence, h.since);
        }
        incident
    }

    /// One more reply of the incident of record `key`, read as offence `offence` begun at
    /// `since`: counted in the record and its evidence in memory at once, stored and shared
    /// like any hold change by the next `flush_counts`; not a new offence (no history event).
    /// Returns the count, or 0 when the record is gone or is another offence now (the count
    /// is dropped: writing it back would erase the newer one).
    pub fn count_in_incident(&self, key: &HoldKey, since: u64, offence: u32) -> u32 {
        // Read, check and change under one lock: a copy written back later could undo a newer
        // offence on the same key, or lose a concurrent count.
        let mut inner = self.lock();
        let Some(hold) = inner.holds.get_mut(key) else {
            return 0;
        };
        if (hold.since, hold.offence) != (since, offence) {
            return 0;
        }
        hold.replies = hold.replies.max(1) + 1;
        hold.evidence = incident_evidence(&hold.evidence, &hold.cause, hold.replies);
        let n = hold.replies;
        inner.counted.insert(key.clone());
        n
    }

    /// Incident counts since the last call to the farm and the store, one write per record
    /// (twenty replies in flight: one commit, not twenty). Called by `flush`, once a second.
    pub(super) fn flush_counts(&self) -> Result<(), StoreError> {
        let keys: Vec<HoldKey> = {
            let mut inner = self.lock();
            let keys: Vec<HoldKey> = inner.counted.drain().collect();
            let at_ms = Clock::now_ms();
            for k in &keys {
                let Some(h) = inner.holds.get(k).cloned() else {
                    continue;
                };
                let stamp = inner.stamps.get(k).map_or(at_ms, |s| at_ms.max(s + 1));
                inner.stamps.insert(k.clone(), stamp);
                if let Some(outbox) = &self.outbox {
                    outbox.send_hold(k, Some(h), stamp);
                }
            }
            keys
        };
        if keys.is_empty() {
            return Ok(());
        }
        self.store_current(keys)
    }
}
