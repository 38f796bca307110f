//! What MAIL FROM answers an account that is not in good standing.
//!
//! Rules:
//! - Suspended: `550 5.7.1`, saying which account, which rate and that the operator must
//!   release it. Permanent on purpose: the customer's own MTA bounces at once and someone
//!   looks, instead of queueing for days and flooding out on release.
//! - Throttled: `450 4.7.1` once the account has started `throttle_per_hour` messages in the
//!   current clock hour, saying why and how many an hour; below that the message goes.
//! - Throttled by a Postmaster verdict (`verdict.rs`): the same `450 4.7.1` and hourly
//!   allowance, with the feed's evidence as the reason.
//! - A message counts from its MAIL FROM (`Slot`), so sessions in parallel share the hour's
//!   places; a transaction that ends without queueing (RSET, QUIT, refusal) gives its place back.
//! - The login is asked first, then the sender domain.

use super::policy::Breach;
use super::{Key, Kind};
use crate::reply::Reply;

/// The answer for one account at MAIL FROM.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Open,
    Throttled {
        account: Key,
        breach: Breach,
        per_hour: u64,
        days: u64,
    },
    Suspended {
        account: Key,
        breach: Breach,
        days: u64,
    },
    /// Held by a provider feed's verdict on the sender domain, not by its own rates.
    FeedThrottled {
        account: Key,
        evidence: String,
        per_hour: u64,
    },
}

fn who(k: &Key) -> String {
    match k.kind {
        Kind::Login => format!("login {}", k.name),
        Kind::Domain => format!("sender domain {}", k.name),
    }
}

fn in_days(days: u64) -> String {
    if days == 1 {
        "in the last day".into()
    } else {
        format!("in {days} days")
    }
}

impl Gate {
    /// The SMTP reply refusing the message; `None` when it may go.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Gate::Open => None,
            Gate::Throttled {
                account,
                breach,
                per_hour,
                days,
            } => Some(Reply::new(
                450,
                "4.7.1",
                format!(
                    "{} throttled: {} {}; at most {per_hour} messages an hour",
                    who(account),
                    breach,
                    in_days(*days)
                ),
            )),
            Gate::FeedThrottled {
                account,
                evidence,
                per_hour,
            } => Some(Reply::new(
                450,
                "4.7.1",
                format!(
                    "{} throttled: {}; at most {per_hour} messages an hour",
                    who(account),
                    super::book::feed_why(evidence)
                ),
            )),
            Gate::Suspended {
                account,
                breach,
                days,
            } => Some(Reply::new(
                550,
                "5.7.1",
                format!(
                    "{} suspended: {} {}; sending stays refused until the relay's operator releases it",
                    who(account),
                    breach,
                    in_days(*days)
                ),
            )),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Gate::Open)
    }
}
