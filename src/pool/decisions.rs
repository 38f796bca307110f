//! The pool's side of the ramp (`ramp` holds the rules): replies counted into an IP ×
//! provider's sending day, and each decision made known — a history event, a log line, a metric.
//! The decision itself is taken under the pool lock at the first pick of a new sending day
//! (`select`); it is recorded here once the lock is released.

use std::net::IpAddr;

use super::Pools;
use super::ramp::{DayTally, Decision, RampOutcome};

impl Pools {
    /// Counts one reply to a delivery that began at `sent_at_ms` (unix millis) into the ramp's
    /// day of that IP × provider. A reply to a day already decided is too late to count, except
    /// a block or throttling reply: it goes to the open day (a quarantine's one `Blocked` must
    /// not be lost at a day change, or the ramp never steps back).
    pub fn ramp_outcome(&self, ip: IpAddr, provider: &str, sent_at_ms: u64, outcome: RampOutcome) {
        let began = self.clock().day(sent_at_ms);
        let key = (ip, provider.to_string());
        let mut inner = self.lock();
        let open = inner
            .counters
            .get(&key)
            .and_then(|c| c.warmup.last_send_day);
        let day = match open {
            Some(open) if open > began && carried(outcome) => open,
            _ => began,
        };
        let counted = match inner.counters.get_mut(&key) {
            Some(c) if open == Some(day) => {
                c.warmup.tally.add(outcome);
                inner.dirty.insert(key);
                true
            }
            _ => false,
        };
        drop(inner);
        if open.is_some() && !counted {
            tracing::debug!(source_ip = %ip, provider, ?outcome, "ramp: reply to a day already decided");
        }
        // The farm's tally takes the same day (this relay's view of the farm's open day).
        self.farm_outcome(ip, provider, day, outcome);
    }

    /// Makes one decision known: history event `warmup`, an info log line, the metric.
    pub(super) fn ramp_decided(
        &self,
        ip: IpAddr,
        provider: &str,
        d: Decision,
        day: &DayTally,
        cap: Option<u64>,
        adaptive: bool,
    ) {
        let text = d.to_string();
        let evidence = day.summary(cap);
        tracing::info!(source_ip = %ip, provider, decision = d.kind(), day = d.day(), cap = ?d.cap(), adaptive, evidence = %evidence, "warm-up: {text}");
        crate::metrics::warmup_decision(&ip.to_string(), provider, d.kind());
        if let Some(state) = &self.state {
            super::events::warmup_event(
                state,
                self.event_sink(),
                ip,
                provider,
                d.kind(),
                &text,
                &evidence,
            );
        }
    }
}

/// Outcomes that still count when their delivery's day is already decided.
fn carried(o: RampOutcome) -> bool {
    matches!(o, RampOutcome::Blocked | RampOutcome::Throttled)
}
