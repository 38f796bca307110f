//! Adaptive warm-up (issue 24): the receivers' answers move an IP × provider's ramp. Filled in
//! by the ramp work; the reputation stage reports each classified reply here.

use std::net::IpAddr;

use super::Pools;

/// What one reply to a delivery from an IP × provider meant for its ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RampOutcome {
    /// The receiver took the message (2xx).
    Accepted,
    /// A throttling deferral ("slow down", 421 4.7.28, 451 4.7.650, [TSS04]).
    Throttled,
    /// Any other temporary failure.
    Deferred,
    /// A permanent failure that does not blame the IP.
    Bounced,
    /// A block reply or a quarantine of this IP × provider (one per incident).
    Blocked,
}

impl Pools {
    /// Counts one reply to a delivery that began at `sent_at_ms` (unix millis) into the ramp's
    /// day of that IP × provider.
    pub fn ramp_outcome(&self, ip: IpAddr, provider: &str, sent_at_ms: u64, outcome: RampOutcome) {
        let _ = (ip, provider, sent_at_ms, outcome);
    }
}
