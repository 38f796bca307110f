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

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::pools::Inner;
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
    pub(super) fn end_ms(&self) -> u64 {
        self.until.map_or(u64::MAX, |u| u.saturating_mul(1000))
    }
}

/// Hold records changed in memory, still to be stored (`Pools::persist_holds`).
#[must_use = "persist it with `Pools::persist_holds`"]
pub struct HoldWrite {
    pub(super) keys: Vec<HoldKey>,
    pub(super) events: Vec<(IpAddr, Option<Hold>, Option<Hold>)>,
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
