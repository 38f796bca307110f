//! What a feed says, as typed values, and how the pool hears it.
//!
//! Rules:
//! - An IP verdict holds one IP for one provider: `Quarantine` is an offence like the other
//!   reputation causes (cause `feed:<name>`, the feed's line as evidence, the cool-down of
//!   `[reputation] cooldown` doubled per offence up to `max_cooldown`, probation after);
//!   `Probation` puts the IP × provider on the probe trickle at once, unless a hold of that
//!   provider is in force (that one ends by itself, then probation).
//! - A feed publishes the same day's data until the next: one verdict acts once (the caller
//!   keeps the evidence it acted on; the evidence names the day).
//! - A domain verdict (Postmaster spam rate) is handed to every `OnDomainVerdict` listener,
//!   whatever its level (a listener lifts its throttle on `Ok`); the feed acts on no IP for it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::pool::{Cause, Hold, HoldError, HoldKind, Pools, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Probation,
    Quarantine,
}

/// A feed's verdict on one pool IP for one provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpVerdict {
    pub ip: IpAddr,
    pub provider: String,
    pub verdict: Verdict,
    /// The feed's line, as the hold's evidence.
    pub evidence: String,
}

/// What applying a verdict did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applied {
    Quarantined {
        offence: u32,
        until: u64,
    },
    Probation,
    /// Probation asked while a hold of that provider is in force: nothing written.
    AlreadyHeld,
}

/// Cool-downs from `[reputation]`.
#[derive(Debug, Clone, Copy)]
pub struct Cooldown {
    pub first: std::time::Duration,
    pub max: std::time::Duration,
}

impl Cooldown {
    pub fn from_settings(s: &crate::reputation::Settings) -> Cooldown {
        Cooldown {
            first: s.cooldown.0,
            max: s.max_cooldown.0,
        }
    }
}

/// Puts `v` into the pool for feed `feed` (module doc).
pub fn apply(
    pools: &Pools,
    cool: Cooldown,
    feed: &str,
    v: &IpVerdict,
    now: u64,
) -> Result<Applied, HoldError> {
    let cause = Cause::Feed(feed.to_string());
    let reason = format!("{feed} feed");
    match v.verdict {
        Verdict::Probation => {
            let scope = Scope::Provider(v.provider.clone());
            Ok(
                match pools.probation(v.ip, scope, cause, &reason, &v.evidence)? {
                    true => Applied::Probation,
                    false => Applied::AlreadyHeld,
                },
            )
        }
        Verdict::Quarantine => {
            let incident = pools.incident(v.ip, &v.provider, now.saturating_mul(1000));
            // The same forgiveness as the reply rates: a clean stretch of twice `max`.
            let forgive = 2 * cool.max.as_secs();
            let last = if now.saturating_sub(incident.offence_since) > forgive {
                0
            } else {
                incident.offence
            };
            let offence = last + 1;
            let factor = 1u32 << (offence - 1).min(16);
            let secs = cool.first.saturating_mul(factor).min(cool.max).as_secs();
            let until = now + secs.max(1);
            let hold = Hold {
                kind: HoldKind::Quarantined,
                scope: v.provider.clone(),
                cause,
                reason,
                evidence: v.evidence.clone(),
                since: now,
                until: Some(until),
                offence,
                replies: 0,
            };
            pools.quarantine_record(v.ip, hold)?;
            Ok(Applied::Quarantined { offence, until })
        }
    }
}

/// Where a domain's spam rate stands against Google's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// At or above `spam_rate_warning` (Google's 0.1 % line).
    Warning,
    /// At or above `spam_rate_over` (Google acts at 0.3 %).
    Over,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Over => "over",
        }
    }
}

/// The Postmaster verdict on one sending domain for one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainVerdict {
    pub domain: String,
    /// A fraction (0.003 = 0.3 %).
    pub spam_rate: f64,
    pub level: Level,
    /// The day the rate is for, `YYYY-MM-DD`.
    pub date: String,
    /// What the feed said, for people and logs.
    pub evidence: String,
}

/// Told every domain verdict of every poll (the accounts stage throttles the logins sending
/// for a domain that is `Over`).
pub trait OnDomainVerdict: Send + Sync {
    fn on_domain_verdict(&self, verdict: &DomainVerdict);
}
