//! Incidents and offences (rules in the module doc of `rates`): a reply to a delivery in flight
//! for a quarantine is counted in it; a new offence takes the next number and a doubled
//! cool-down.

use std::net::IpAddr;

use super::{Tracker, Window};
use crate::outcome::classify::Signal;
use crate::pool::warmup::Clock;
use crate::pool::{Cause, Hold, HoldKey, HoldKind, HoldWrite, Incident};

/// A quarantine to make: why, and which offence it is.
pub(super) struct Offence {
    pub cause: Cause,
    pub reason: String,
    pub evidence: String,
    /// Replies of its incident so far.
    pub replies: u32,
    pub number: u32,
    pub cool: std::time::Duration,
}

impl Tracker {
    /// A reply to a delivery in flight for the quarantine `key`: no new offence; a block or
    /// throttling reply is counted in the record (the one its cause is about).
    pub(super) fn in_incident(
        &self,
        ip: IpAddr,
        provider: &str,
        key: &HoldKey,
        hold: &Hold,
        signal: Signal,
    ) {
        let counts = match (&hold.cause, signal) {
            (_, Signal::None) => false,
            (Cause::BlockReply, s) => s == Signal::Block,
            (Cause::Throttling, s) => s == Signal::Throttle,
            // The rate quarantines are this tracker's too; a DNSBL listing's record is its
            // monitor's (its evidence is the listing).
            (Cause::BounceRate | Cause::DeferralRate, _) => hold.scope == provider,
            _ => false,
        };
        if !counts {
            return;
        }
        match self.pools.count_in_incident(key, hold.since, hold.offence) {
            // Replaced by a newer offence meanwhile: not this reply's incident any more.
            0 => {}
            n => {
                tracing::info!(source_ip = %ip, provider, cause = %hold.cause, replies = n, "reply counted in the quarantine's incident (no new offence)")
            }
        }
    }

    /// The offence a new quarantine is, and its cool-down (module doc); starts the window
    /// over.
    pub(super) fn next_offence(
        &self,
        w: &mut Window,
        incident: &Incident,
        now: u64,
    ) -> (u32, std::time::Duration) {
        let settings = self.settings.load();
        let forgive = 2 * settings.max_cooldown.0.as_secs();
        if now.saturating_sub(w.last_offence) > forgive {
            w.offences = 0;
        }
        // Another relay of the farm may have counted the last one.
        let recorded = if now.saturating_sub(incident.offence_since) > forgive {
            0
        } else {
            incident.offence
        };
        w.offences = w.offences.max(recorded) + 1;
        w.last_offence = now;
        w.blocks = 0;
        w.outcomes.clear();
        let factor = 1u32 << (w.offences - 1).min(16);
        let cool = settings
            .cooldown
            .0
            .saturating_mul(factor)
            .min(settings.max_cooldown.0);
        w.probe_from = now + cool.as_secs().max(1);
        (w.offences, cool)
    }

    /// A quarantine judged outside the reply path (the complaint rate): the next offence of
    /// `ip` × `provider`, made and stored. Returns when it ends (unix s), `None` if it could
    /// not be made.
    pub(in crate::reputation) fn offend(
        &self,
        ip: IpAddr,
        provider: &str,
        cause: Cause,
        reason: String,
        evidence: String,
    ) -> Option<u64> {
        let now = crate::spool::now_unix();
        let mut windows = self.windows.lock().expect("lock");
        let incident = self.pools.incident(ip, provider, Clock::now_ms());
        let w = windows.entry((ip, provider.to_string())).or_default();
        let (number, cool) = self.next_offence(w, &incident, now);
        let o = Offence {
            cause,
            reason,
            evidence,
            replies: 0,
            number,
            cool,
        };
        let written = self.quarantine(ip, provider, o);
        drop(windows);
        if let Err(e) = self.pools.persist_holds(written?) {
            tracing::error!(source_ip = %ip, error = %e, "cannot store a quarantine");
        }
        Some(now + cool.as_secs().max(1))
    }

    /// Makes the quarantine in the pool's memory only (under the windows' lock, so the next
    /// reply sees it); the caller persists the result after releasing that lock.
    pub(super) fn quarantine(&self, ip: IpAddr, provider: &str, o: Offence) -> Option<HoldWrite> {
        let now = crate::spool::now_unix();
        let until = now + o.cool.as_secs().max(1);
        let evidence = if o.replies > 0 {
            crate::pool::incidents::incident_evidence(&o.evidence, &o.cause, o.replies)
        } else {
            o.evidence
        };
        tracing::warn!(source_ip = %ip, provider = %provider, reason = %o.reason, offence = o.number, cooldown = %humantime::format_duration(o.cool), "quarantining IP for provider");
        let hold = Hold {
            kind: HoldKind::Quarantined,
            scope: provider.to_string(),
            cause: o.cause,
            reason: o.reason,
            evidence,
            since: now,
            until: Some(until),
            offence: o.number,
            replies: o.replies,
        };
        self.pools
            .quarantine_in_memory(ip, hold)
            .inspect_err(|e| tracing::error!(source_ip = %ip, error = %e, "cannot quarantine"))
            .ok()
    }
}
