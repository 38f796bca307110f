//! Holds: what keeps an IP from sending, one record per cause.
//!
//! Rules:
//! - Every cause is its own record per IP × scope: an operator drain, a DNSBL listing (one per
//!   zone), a block reply, a hard-bounce rate, a deferral rate, a complaint rate, a failing
//!   doctor check. The IP takes mail for a provider only when no record for that provider or
//!   for `all` is in force.
//! - A quarantine (any reputation cause) ends by its `until` or when its cause is released (a
//!   DNSBL delisting). Either way the record stays, expired: the IP × provider is then on
//!   probation (a trickle of `probe_per_hour`) until clean outcomes end it (`end_probation`).
//! - A drain (operator, doctor) has no probation: undrained, the IP takes its full share.
//! - An operator `reinstate` removes quarantine records outright (no probation).
//! - Incidents: replies to deliveries that began before the latest quarantine covering an IP ×
//!   provider ended belong to it (`incident`); the record counts them (`replies`, its evidence)
//!   and keeps its offence number (`offence`, shared with the farm in the record itself).
//! - A count goes into the record only while it is still the offence the reply was judged
//!   against (same `since` and `offence`), read and written under one lock; otherwise it is
//!   dropped, so a late reply never writes an older offence over a newer one.
//! - Hold writes change memory under the lock and reach the store outside it, one writer at a
//!   time, always with what memory holds then.
//! - Incident counts are written at most once a second per record (`flush_counts`): memory
//!   has them at once; the store and the farm get the sum. A farm's later record or a whole
//!   write of the record supersedes a pending count.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::pools::{Inner, Pools, now_s};
use super::store::StoreError;

/// Why a hold could not be set or ended.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Neither this node's pools nor (`[cluster]`) another node's have the IP.
    #[error("{0} is not in any pool")]
    NotInPool(IpAddr),
    #[error(transparent)]
    Store(#[from] StoreError),
}
use super::warmup::Clock;
use crate::util::merge::{Newer, newer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// Taken out by the operator (`pool drain`) or a failing doctor check: no probation after.
    Drained,
    /// Taken out by reputation signals (listing, block replies, bounce rate): probation after.
    Quarantined,
}

/// Which providers a drain or quarantine covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Provider(String),
}

impl Scope {
    pub fn parse(s: Option<&str>) -> Scope {
        match s.map(str::trim) {
            None | Some("") | Some("all") | Some("*") => Scope::All,
            Some(p) => Scope::Provider(p.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Scope::All => "all",
            Scope::Provider(p) => p,
        }
    }
}

/// Why an IP is held: each cause is a record of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    Operator,
    Doctor,
    Dnsbl(String),
    BlockReply,
    BounceRate,
    DeferralRate,
    /// Throttling replies that went on after the pace was cut `throttle_cuts` times in a day.
    Throttling,
    /// A provider's feed (`reputation::feeds`): `snds`, `postmaster`.
    Feed(String),
    /// Feedback-loop complaints over `max_complaint_rate` of what the IP delivered to the
    /// provider (`reputation::complaints`).
    Complaints,
}

impl Cause {
    pub fn kind(&self) -> HoldKind {
        match self {
            Cause::Operator | Cause::Doctor => HoldKind::Drained,
            _ => HoldKind::Quarantined,
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Some(match s {
            "operator" => Cause::Operator,
            "doctor" => Cause::Doctor,
            "block-reply" => Cause::BlockReply,
            "bounce-rate" => Cause::BounceRate,
            "deferral-rate" => Cause::DeferralRate,
            "throttling" => Cause::Throttling,
            "complaints" => Cause::Complaints,
            _ => match s.strip_prefix("feed:") {
                Some(feed) => Cause::Feed(feed.to_string()),
                None => Cause::Dnsbl(s.strip_prefix("dnsbl:")?.to_string()),
            },
        })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Operator => f.write_str("operator"),
            Cause::Doctor => f.write_str("doctor"),
            Cause::Dnsbl(zone) => write!(f, "dnsbl:{zone}"),
            Cause::BlockReply => f.write_str("block-reply"),
            Cause::BounceRate => f.write_str("bounce-rate"),
            Cause::DeferralRate => f.write_str("deferral-rate"),
            Cause::Throttling => f.write_str("throttling"),
            Cause::Feed(feed) => write!(f, "feed:{feed}"),
            Cause::Complaints => f.write_str("complaints"),
        }
    }
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cause::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown cause {s:?}")))
    }
}

/// One record keeping an IP from one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub kind: HoldKind,
    pub scope: String,
    pub cause: Cause,
    pub reason: String,
    #[serde(default)]
    pub evidence: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds; a quarantine ends by itself then. `None` = until released.
    #[serde(default)]
    pub until: Option<u64>,
    /// A reputation quarantine's offence number (1: first; its cool-down doubles with each).
    #[serde(default)]
    pub offence: u32,
    /// Replies counted into this quarantine's incident (the one that started it included).
    #[serde(default)]
    pub replies: u32,
}

impl Hold {
    pub fn in_force(&self, now_s: u64) -> bool {
        self.until.is_none_or(|u| u > now_s)
    }

    /// Unix millis when it ends (`u64::MAX`: when released).
    fn end_ms(&self) -> u64 {
        self.until.map_or(u64::MAX, |u| u.saturating_mul(1000))
    }
}

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

/// Hold records changed in memory, still to be stored (`Pools::persist_holds`).
#[must_use = "persist it with `Pools::persist_holds`"]
pub struct HoldWrite {
    keys: Vec<HoldKey>,
    events: Vec<(IpAddr, Option<Hold>, Option<Hold>)>,
}

/// (IP, scope, cause): one hold record.
pub type HoldKey = (IpAddr, String, Cause);

impl Inner {
    /// Records of `ip` covering `provider` (its own scope and `all`).
    fn covering<'a>(
        &'a self,
        ip: IpAddr,
        provider: &'a str,
    ) -> impl Iterator<Item = &'a Hold> + 'a {
        self.holds
            .iter()
            .filter(move |((a, scope, _), _)| *a == ip && (scope == "all" || scope == provider))
            .map(|(_, h)| h)
    }

    /// The hold keeping `ip` from `provider` now, if any (a drain first: it says most).
    pub(super) fn hold_of<'a>(
        &'a self,
        ip: IpAddr,
        provider: &'a str,
        now_s: u64,
    ) -> Option<&'a Hold> {
        self.covering(ip, provider)
            .filter(|h| h.in_force(now_s))
            .min_by_key(|h| (h.kind != HoldKind::Drained, h.until.unwrap_or(u64::MAX)))
    }

    /// On probation: nothing in force, but a quarantine whose time is over and whose probes
    /// have not yet ended it.
    pub(super) fn probation_of(&self, ip: IpAddr, provider: &str, now_s: u64) -> bool {
        self.hold_of(ip, provider, now_s).is_none()
            && self
                .covering(ip, provider)
                .any(|h| h.kind == HoldKind::Quarantined && !h.in_force(now_s))
    }
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

    /// Whether `ip` × `provider` is on probation (taking only `probe_per_hour`).
    pub fn in_probation(&self, ip: IpAddr, provider: &str) -> bool {
        self.lock().probation_of(ip, provider, now_s())
    }

    /// The probes went well: `ip` takes its full share for `provider` again (expired quarantine
    /// records of that provider and of `all` are removed). Returns whether it was on probation.
    pub fn end_probation(&self, ip: IpAddr, provider: &str) -> Result<bool, HoldError> {
        if !self.in_probation(ip, provider) {
            return Ok(false);
        }
        let now = now_s();
        let keys: Vec<HoldKey> = self
            .lock()
            .holds
            .iter()
            .filter(|((a, scope, _), h)| {
                *a == ip
                    && (scope == "all" || scope == provider)
                    && h.kind == HoldKind::Quarantined
                    && !h.in_force(now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        tracing::info!(source_ip = %ip, provider, "probe succeeded: pool IP reinstated");
        self.write_holds(keys.into_iter().map(|k| (k, None)).collect())?;
        Ok(true)
    }

    /// Stores what memory holds now for `keys`, one writer at a time: writes finishing out of
    /// order never leave an older record in the store.
    fn store_current(&self, keys: Vec<HoldKey>) -> Result<(), StoreError> {
        let _store = self.store_lock.lock().expect("lock");
        let changes: Vec<(HoldKey, Option<Hold>)> = {
            let inner = self.lock();
            keys.into_iter()
                .map(|k| {
                    let h = inner.holds.get(&k).cloned();
                    (k, h)
                })
                .collect()
        };
        self.store_holds(&changes)
    }

    /// Drains and quarantines in force, by IP.
    pub fn holds(&self) -> Vec<(IpAddr, Hold)> {
        let now = now_s();
        self.lock()
            .holds
            .iter()
            .filter(|(_, h)| h.in_force(now))
            .map(|((ip, _, _), h)| (*ip, h.clone()))
            .collect()
    }

    /// A change made on another node (an event or a resync): applied when it is later than
    /// what this node has (the merge rule in `util::merge`). Returns whether it was.
    pub fn apply_remote(&self, key: HoldKey, hold: Option<Hold>, at_ms: u64) -> bool {
        {
            let mut inner = self.lock();
            let local = inner
                .stamps
                .get(&key)
                .copied()
                .or_else(|| inner.holds.get(&key).map(|h| h.since * 1000));
            if newer(local, Some(at_ms)) != Newer::Remote {
                return false;
            }
            inner.stamps.insert(key.clone(), at_ms);
            // The farm's later record replaces a count not yet shared.
            inner.counted.remove(&key);
            // Already so here (a restart's stamps are the records' `since`, in seconds).
            if inner.holds.get(&key) == hold.as_ref() {
                return false;
            }
            match &hold {
                Some(h) => inner.holds.insert(key.clone(), h.clone()),
                None => inner.holds.remove(&key),
            };
            inner.stamps.insert(key.clone(), at_ms);
        }
        let (ip, scope, cause) = &key;
        match &hold {
            Some(h) => {
                tracing::info!(source_ip = %ip, scope = %scope, cause = %cause, kind = ?h.kind, reason = %h.reason, until = h.until, "pool IP held (from the farm)")
            }
            None => {
                tracing::info!(source_ip = %ip, scope = %scope, cause = %cause, "pool IP hold ended (from the farm)")
            }
        }
        if let Err(e) = self.store_current(vec![key]) {
            tracing::error!(error = %e, "cannot save a hold from the farm");
        }
        self.wake.notify_one();
        true
    }

    /// Every hold record this node knows, removals included, each with its stamp: what a
    /// resync compares with the farm's.
    pub fn hold_changes(&self) -> Vec<(HoldKey, Option<Hold>, u64)> {
        let inner = self.lock();
        let mut keys: Vec<&HoldKey> = inner.holds.keys().chain(inner.stamps.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let hold = inner.holds.get(k).cloned();
                let stamp = inner
                    .stamps
                    .get(k)
                    .copied()
                    .or_else(|| hold.as_ref().map(|h| h.since * 1000))
                    .unwrap_or(0);
                (k.clone(), hold, stamp)
            })
            .collect()
    }

    /// An IP of this node's pools, or (`[cluster]`) of another node's: a farm's operator
    /// holds any of them from any node.
    fn knows(&self, ip: IpAddr) -> Result<(), HoldError> {
        let on_farm = || self.farm().is_some_and(|f| f.sends_from(ip));
        if self.ips().contains(&ip) || on_farm() {
            Ok(())
        } else {
            Err(HoldError::NotInPool(ip))
        }
    }

    /// Sets (`Some`) or removes (`None`) hold records, in memory and in the store, and wakes
    /// the queue: held mail may go now (or elsewhere).
    fn write_holds(&self, changes: Vec<(HoldKey, Option<Hold>)>) -> Result<(), HoldError> {
        if changes.is_empty() {
            return Ok(());
        }
        let written = self.hold_in_memory(&mut self.lock(), changes);
        self.persist_holds(written)
    }

    /// The in-memory half of `write_holds`: records and stamps changed, the farm told (in
    /// stamp order, under the lock). What is returned must go to `persist_holds`.
    fn hold_in_memory(
        &self,
        inner: &mut Inner,
        changes: Vec<(HoldKey, Option<Hold>)>,
    ) -> HoldWrite {
        let at_ms = Clock::now_ms();
        let mut events = Vec::new();
        for (k, h) in &changes {
            // Written whole here: a pending count of it goes with this write.
            inner.counted.remove(k);
            let old = match h {
                Some(h) => inner.holds.insert(k.clone(), h.clone()),
                None => inner.holds.remove(k),
            };
            // Never behind a stamp from the farm (clocks of nodes differ a little).
            let stamp = inner.stamps.get(k).map_or(at_ms, |s| at_ms.max(s + 1));
            inner.stamps.insert(k.clone(), stamp);
            events.push((k.0, old, h.clone()));
            if let Some(outbox) = &self.outbox {
                outbox.send_hold(k, h.clone(), stamp);
            }
        }
        HoldWrite {
            keys: changes.into_iter().map(|(k, _)| k).collect(),
            events,
        }
    }

    /// The slow half of `write_holds`, outside any lock: the store, the history, the queue's
    /// wake.
    pub fn persist_holds(&self, w: HoldWrite) -> Result<(), HoldError> {
        if w.keys.is_empty() {
            return Ok(());
        }
        self.store_current(w.keys)?;
        if let Some(state) = &self.state {
            super::events::hold_events(state, self.event_sink(), &w.events);
        }
        self.wake.notify_one();
        Ok(())
    }

    fn put(
        &self,
        ip: IpAddr,
        scope: &Scope,
        cause: Cause,
        reason: &str,
        evidence: &str,
        until: Option<u64>,
    ) -> Result<(), HoldError> {
        self.knows(ip)?;
        let hold = Hold {
            kind: cause.kind(),
            scope: scope.as_str().to_string(),
            cause: cause.clone(),
            reason: reason.to_string(),
            evidence: evidence.to_string(),
            since: now_s(),
            until,
            offence: 0,
            replies: 0,
        };
        self.write_holds(vec![((ip, scope.as_str().to_string(), cause), Some(hold))])
    }

    /// A reputation quarantine as the reputation stage made it (offence number, replies):
    /// `hold.scope` and `hold.cause` name the record.
    pub fn quarantine_record(&self, ip: IpAddr, hold: Hold) -> Result<(), HoldError> {
        let written = self.quarantine_in_memory(ip, hold)?;
        self.persist_holds(written)
    }

    /// `quarantine_record` in memory only (`incident` sees it at once); the caller persists
    /// the result (`persist_holds`) once it holds no lock of its own. A throttling quarantine
    /// starts its IP × provider's pace cuts over (`Counters::quarantined`).
    pub fn quarantine_in_memory(&self, ip: IpAddr, hold: Hold) -> Result<HoldWrite, HoldError> {
        self.knows(ip)?;
        tracing::warn!(source_ip = %ip, scope = %hold.scope, cause = %hold.cause, reason = %hold.reason, evidence = %hold.evidence, until = hold.until, offence = hold.offence, "pool IP quarantined");
        let key = (ip, hold.scope.clone(), hold.cause.clone());
        let mut inner = self.lock();
        if let (Cause::Throttling, Some(until)) = (&hold.cause, hold.until) {
            let k = (ip, hold.scope.clone());
            inner
                .counters
                .entry(k.clone())
                .or_default()
                .quarantined(until.saturating_mul(1000));
            inner.dirty.insert(k);
        }
        Ok(self.hold_in_memory(&mut inner, vec![(key, Some(hold))]))
    }

    /// Takes `ip` out of rotation for `scope` for one reputation `cause`. In-flight deliveries
    /// finish; `until` (unix seconds) ends it by itself (then probation).
    pub fn quarantine(
        &self,
        ip: IpAddr,
        scope: Scope,
        cause: Cause,
        reason: &str,
        evidence: &str,
        until: Option<u64>,
    ) -> Result<(), HoldError> {
        tracing::warn!(source_ip = %ip, scope = scope.as_str(), cause = %cause, reason, evidence, until, "pool IP quarantined");
        self.put(ip, &scope, cause, reason, evidence, until)
    }

    /// Puts `ip` × `scope` on probation for `cause` (a record that has already ended, so the
    /// trickle of `probe_per_hour` applies at once), unless a record of that scope or of
    /// `all` is in force: a quarantine in force ends by itself, then probation. Returns
    /// whether the record was written.
    pub fn probation(
        &self,
        ip: IpAddr,
        scope: Scope,
        cause: Cause,
        reason: &str,
        evidence: &str,
    ) -> Result<bool, HoldError> {
        self.knows(ip)?;
        let now = now_s();
        if self.lock().hold_of(ip, scope.as_str(), now).is_some() {
            return Ok(false);
        }
        tracing::warn!(source_ip = %ip, scope = scope.as_str(), cause = %cause, reason, evidence, "pool IP on probation");
        let hold = Hold {
            kind: HoldKind::Quarantined,
            scope: scope.as_str().to_string(),
            cause: cause.clone(),
            reason: reason.to_string(),
            evidence: evidence.to_string(),
            since: now,
            until: Some(now),
            offence: 0,
            replies: 0,
        };
        self.write_holds(vec![((ip, scope.as_str().to_string(), cause), Some(hold))])?;
        Ok(true)
    }

    /// One cause of a quarantine is over (a delisting): its record expires now, so the IP goes
    /// on probation for that scope unless other records still hold it. Returns whether there
    /// was such a record in force.
    pub fn release(&self, ip: IpAddr, scope: Scope, cause: Cause) -> Result<bool, HoldError> {
        let key = (ip, scope.as_str().to_string(), cause);
        let now = now_s();
        let hold = self.lock().holds.get(&key).cloned();
        let Some(mut hold) = hold.filter(|h| h.in_force(now)) else {
            return Ok(false);
        };
        let change = if hold.kind == HoldKind::Quarantined {
            hold.until = Some(now);
            Some(hold)
        } else {
            None
        };
        self.write_holds(vec![(key, change)])?;
        Ok(true)
    }

    /// Operator: ends every quarantine of `ip` for `scope` at once, without probation. Returns
    /// whether there was one.
    pub fn reinstate(&self, ip: IpAddr, scope: Scope) -> Result<bool, HoldError> {
        self.knows(ip)?;
        let keys: Vec<HoldKey> = self
            .lock()
            .holds
            .iter()
            .filter(|((a, s, _), h)| {
                *a == ip && s == scope.as_str() && h.kind == HoldKind::Quarantined
            })
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        tracing::info!(source_ip = %ip, scope = scope.as_str(), "pool IP reinstated");
        self.write_holds(keys.into_iter().map(|k| (k, None)).collect())?;
        Ok(true)
    }

    /// A drain: no new deliveries from `ip` for `scope` until it is undrained. `cause` is
    /// `Operator` or `Doctor`.
    pub fn drain_for(
        &self,
        ip: IpAddr,
        scope: Scope,
        cause: Cause,
        reason: &str,
    ) -> Result<(), HoldError> {
        tracing::warn!(source_ip = %ip, scope = scope.as_str(), cause = %cause, reason, "pool IP drained");
        self.put(ip, &scope, cause, reason, "", None)
    }

    /// Operator drain.
    pub fn drain(&self, ip: IpAddr, scope: Scope, reason: &str) -> Result<(), HoldError> {
        self.drain_for(ip, scope, Cause::Operator, reason)
    }

    /// Ends a drain of `cause` for `scope`. Returns whether there was one.
    pub fn undrain_for(&self, ip: IpAddr, scope: Scope, cause: Cause) -> Result<bool, HoldError> {
        self.knows(ip)?;
        let key = (ip, scope.as_str().to_string(), cause);
        if !self.lock().holds.contains_key(&key) {
            return Ok(false);
        }
        tracing::info!(source_ip = %ip, scope = scope.as_str(), cause = %key.2, "pool IP undrained");
        self.write_holds(vec![(key, None)])?;
        Ok(true)
    }

    /// Ends the operator's drain of `ip` for `scope`; quarantines stay (see `reinstate`).
    pub fn undrain(&self, ip: IpAddr, scope: Scope) -> Result<bool, HoldError> {
        self.undrain_for(ip, scope, Cause::Operator)
    }
}
