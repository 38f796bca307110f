//! Standing of one account (a login, or a sender domain) from its counts over the window.
//!
//! Rules:
//! - Three rates, each over the `[accounts] window` (daily buckets): complaints per delivered
//!   message, hard bounces (unknown recipients included) per message with a final answer, block
//!   replies per attempt. A rate counts once its denominator reaches `min_volume`.
//! - A rate over its `max_*_rate` suspends; over `throttle_at` × that limit throttles.
//!   Suspension beats throttling; at one level complaints name the reason first, then bounces,
//!   then blocks.
//! - Throttled lifts by itself once every rate is back under the warning level. Suspended stays
//!   until the operator releases the account; a release starts its window afresh.

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use super::settings::Settings;

/// Which rate a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rate {
    Complaint,
    Bounce,
    Block,
}

impl Rate {
    pub fn as_str(self) -> &'static str {
        match self {
            Rate::Complaint => "complaint",
            Rate::Bounce => "bounce",
            Rate::Block => "block",
        }
    }
}

/// A rate over a level: `count` of `of` messages, against `level` (a share).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    pub rate: Rate,
    pub count: u64,
    pub of: u64,
    pub level: f64,
}

impl Breach {
    pub fn share(&self) -> f64 {
        self.count as f64 / self.of.max(1) as f64
    }
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rate {} ({} of {}) over {}",
            self.rate.as_str(),
            percent(self.share()),
            self.count,
            self.of,
            percent(self.level)
        )
    }
}

/// `0.012` → `1.2 %`; small shares keep two decimals (`0.3 %`, `0.15 %`).
pub fn percent(share: f64) -> String {
    let p = 100.0 * share;
    let s = if p < 1.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.1}")
    };
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} %")
}

/// What the counts say now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Good,
    Throttle(Breach),
    Suspend(Breach),
}

/// The verdict on `c` under `s` (the rules above).
pub fn judge(c: &Counts, s: &Settings) -> Verdict {
    let rates = [
        (
            Rate::Complaint,
            c.complained,
            c.delivered,
            s.max_complaint_rate,
        ),
        (
            Rate::Bounce,
            c.hard_bounces(),
            c.volume(),
            s.max_bounce_rate,
        ),
        (Rate::Block, c.blocked, c.attempts(), s.max_block_rate),
    ];
    let mut throttle = None;
    for (rate, count, of, limit) in rates {
        if of < s.min_volume.max(1) {
            continue;
        }
        let share = count as f64 / of as f64;
        if share > limit {
            return Verdict::Suspend(Breach {
                rate,
                count,
                of,
                level: limit,
            });
        }
        let warning = limit * s.throttle_at;
        if throttle.is_none() && share > warning {
            throttle = Some(Breach {
                rate,
                count,
                of,
                level: warning,
            });
        }
    }
    throttle.map_or(Verdict::Good, Verdict::Throttle)
}
