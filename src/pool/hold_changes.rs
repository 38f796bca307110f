//! Placing and lifting holds: quarantines, probation, releases, reinstatements, drains, and
//! the changes the farm (`[cluster]`) sends.
//!
//! Rules:
//! - Hold writes change memory under the lock and reach the store outside it, one writer at a
//!   time, always with what memory holds then.
//! - A change from another node applies only when it is later than this node's (`util::merge`).

use std::net::IpAddr;

use super::holds::{Cause, Hold, HoldError, HoldKey, HoldKind, HoldWrite, Scope};
use super::pools::{Inner, Pools, now_s};
use super::store::StoreError;
use super::warmup::Clock;
use crate::util::merge::{Newer, newer};

impl Pools {
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
    pub(super) fn store_current(&self, keys: Vec<HoldKey>) -> Result<(), StoreError> {
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
