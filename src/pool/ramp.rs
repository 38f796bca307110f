//! The warm-up ramp of one IP × provider: where it stands on its schedule, and the decision
//! taken when its next sending day begins. Pure (no clock, no lock), so the farm can run the
//! same function against state kept in Redis.
//!
//! Rules:
//! - A day counts only if mail was sent on it (MailerQ's rule): the decision for the last
//!   sending day is taken lazily, at the first message of the next sending day.
//! - Idle `warmup.idle_days` or more → re-warm at the schedule's `rewarm_day` (fixed schedules
//!   too; default 0).
//! - Fixed schedule: every sending day moves the ramp one day of the table on.
//! - Adaptive schedule (per day of deliveries begun on it, except that a block or throttling
//!   reply to a day already decided counts in the open day; volume = what the receiver
//!   accepted; throttled share = throttling deferrals ÷ all replies):
//!   - a block or quarantine, or a throttled share above `step_back_above` → step back
//!     `step_back_days` days of the table;
//!   - a throttled share of `hold_above` or more (any, with `hold_above = 0`) → held;
//!   - after a hold or a step back for throttling, the next cap is at most what the receiver
//!     accepted that day, below the table (even below its first day) if need be: a receiver
//!     that said "slow down" is not offered the same volume again;
//!   - less than `advance_at` of the cap taken (limited by demand) → held;
//!   - else advanced. Below the table (a cap the receiver set): up to `max_growth` × accepted,
//!     at most back to the table's day. On the table: the next cap is `max_growth` × accepted,
//!     at least the table's next step, at most the table's last entry; the day becomes the
//!     furthest table day at or below that cap. Past the table's last day the IP is active.
//! - A table entry of 0 (refused by the config) counts as a cap of 1: a day must be able to
//!   be a sending day, or the ramp never moves again.
//! - Each decision is explained (`Decision::text`) for the history, the log and the page.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::settings::WarmupSchedule;

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

/// A schedule's ramp keys (`[[warmup.schedule]]`) plus `warmup.idle_days`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub adaptive: bool,
    pub advance_at: f64,
    pub hold_above: f64,
    pub step_back_above: f64,
    pub step_back_days: u32,
    pub max_growth: f64,
    pub rewarm_day: u32,
    pub idle_days: u64,
}

impl Rules {
    /// The built-in `standard` schedule and any fixed one: one day on per sending day.
    pub fn fixed(idle_days: u64) -> Rules {
        Rules {
            adaptive: false,
            advance_at: 0.8,
            hold_above: 0.05,
            step_back_above: 0.2,
            step_back_days: 2,
            max_growth: 2.0,
            rewarm_day: 0,
            idle_days,
        }
    }

    pub fn of(s: &WarmupSchedule, idle_days: u64) -> Rules {
        Rules {
            adaptive: s.adaptive,
            advance_at: s.advance_at,
            hold_above: s.hold_above,
            step_back_above: s.step_back_above,
            step_back_days: s.step_back_days,
            max_growth: s.max_growth,
            rewarm_day: s.rewarm_day,
            idle_days,
        }
    }
}

/// Where the ramp stands: the table day and the cap of the current sending day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RampState {
    /// Index into the table; at or past its end the IP is active.
    pub day_index: u32,
    /// The current day's cap when the ramp set one off the table (adaptive growth).
    pub cap: Option<u64>,
    /// Absolute day number (`Clock::day`) of the last day with a send.
    pub last_send_day: Option<u64>,
}

impl RampState {
    /// The cap of the current day: `None` once past the table (active).
    pub fn cap_of(&self, table: &[u64]) -> Option<u64> {
        let step = table_cap(table, self.day_index)?;
        Some(self.cap.unwrap_or(step))
    }

    /// Below its table day: a cap the receiver set (what it took on a day it refused some).
    /// Such a ramp regrows by `max_growth` until it is back on the table.
    pub fn limited(&self, table: &[u64]) -> bool {
        matches!((self.cap, table_cap(table, self.day_index)), (Some(c), Some(s)) if c < s)
    }
}

/// The table's cap on day `index`; a 0 (refused by the config) counts as 1: a day of cap 0
/// could never be a sending day, and the ramp would never move again.
fn table_cap(table: &[u64], index: u32) -> Option<u64> {
    table.get(index as usize).map(|&c| c.max(1))
}

/// One sending day of deliveries (by the day each delivery began), persisted with the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayTally {
    /// Messages taken (picked and not refunded).
    pub taken: u64,
    pub accepted: u64,
    pub throttled: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Block replies or quarantines (one per incident).
    pub blocked: u64,
}

impl DayTally {
    pub fn add(&mut self, o: RampOutcome) {
        match o {
            RampOutcome::Accepted => self.accepted += 1,
            RampOutcome::Throttled => self.throttled += 1,
            RampOutcome::Deferred => self.deferred += 1,
            RampOutcome::Bounced => self.bounced += 1,
            RampOutcome::Blocked => self.blocked += 1,
        }
    }

    fn replies(&self) -> u64 {
        self.accepted + self.throttled + self.deferred + self.bounced
    }

    /// Throttling deferrals ÷ all replies (0 without replies).
    pub fn throttled_share(&self) -> f64 {
        match self.replies() {
            0 => 0.0,
            n => self.throttled as f64 / n as f64,
        }
    }

    /// For the history's evidence.
    pub fn summary(&self, cap: Option<u64>) -> String {
        let cap = cap.map_or("no cap".into(), |c| format!("cap {c}"));
        format!(
            "{} taken of {cap}: {} accepted, {} throttled, {} deferred, {} bounced, {} blocks",
            self.taken, self.accepted, self.throttled, self.deferred, self.bounced, self.blocked
        )
    }
}

/// Why a day was held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeldBy {
    /// Throttled share between `hold_above` and `step_back_above`.
    Throttling { throttled: f64 },
    /// Less than `advance_at` of the cap taken.
    Demand { used: f64 },
}

/// Why the ramp stepped back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackBy {
    Blocked,
    Throttling { throttled: f64 },
}

/// The decision for the last sending day; `day`/`cap` are the new day's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Advanced {
        day: u32,
        cap: Option<u64>,
        throttled: f64,
        used: f64,
    },
    Held {
        day: u32,
        cap: Option<u64>,
        by: HeldBy,
    },
    SteppedBack {
        day: u32,
        cap: Option<u64>,
        by: BackBy,
    },
    Rewarmed {
        day: u32,
        cap: Option<u64>,
        idle_days: u64,
    },
}

impl Decision {
    /// The label of the metric and the history event's cause.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Advanced { .. } => "advanced",
            Decision::Held { .. } => "held",
            Decision::SteppedBack { .. } => "stepped-back",
            Decision::Rewarmed { .. } => "rewarmed",
        }
    }

    pub fn day(&self) -> u32 {
        match *self {
            Decision::Advanced { day, .. }
            | Decision::Held { day, .. }
            | Decision::SteppedBack { day, .. }
            | Decision::Rewarmed { day, .. } => day,
        }
    }

    pub fn cap(&self) -> Option<u64> {
        match *self {
            Decision::Advanced { cap, .. }
            | Decision::Held { cap, .. }
            | Decision::SteppedBack { cap, .. }
            | Decision::Rewarmed { cap, .. } => cap,
        }
    }

    /// The state the new sending day `today` starts with.
    pub fn next(&self, today: u64, table: &[u64]) -> RampState {
        let day = self.day();
        // Keep only a cap that differs from the table's (growth); None reads the table.
        let cap = self.cap().filter(|&c| table_cap(table, day) != Some(c));
        RampState {
            day_index: day,
            cap,
            last_send_day: Some(today),
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Decision::Advanced {
                day,
                cap: None,
                throttled,
                used,
            } => write!(
                f,
                "ramp complete at day {day} (full volume): {} throttled, {} of cap used",
                pct(throttled),
                pct(used)
            ),
            Decision::Advanced {
                day,
                throttled,
                used,
                ..
            } => write!(
                f,
                "day {day} reached: {} throttled, {} of cap used",
                pct(throttled),
                pct(used)
            ),
            Decision::Held {
                day,
                by: HeldBy::Throttling { throttled },
                ..
            } => write!(f, "held at day {day}: {} throttled", pct(throttled)),
            Decision::Held {
                day,
                by: HeldBy::Demand { used },
                ..
            } => write!(f, "held at day {day}: {} of cap used (demand)", pct(used)),
            Decision::SteppedBack {
                day,
                by: BackBy::Blocked,
                ..
            } => write!(f, "back to day {day}: blocked"),
            Decision::SteppedBack {
                day,
                by: BackBy::Throttling { throttled },
                ..
            } => write!(f, "back to day {day}: {} throttled", pct(throttled)),
            Decision::Rewarmed { day, idle_days, .. } => {
                write!(f, "re-warming from day {day}: idle {idle_days} days")
            }
        }
    }
}

/// The decision for the day after `state`'s last sending day, when a send happens on `today`;
/// `None` on the same day, before the first send, and for a fixed ramp already past its table.
pub fn decide(
    rules: &Rules,
    table: &[u64],
    state: &RampState,
    day: &DayTally,
    today: u64,
) -> Option<Decision> {
    let last = state.last_send_day?;
    if last >= today {
        return None;
    }
    let cap_at = |i: u32| table_cap(table, i);
    let end = table.len() as u32;
    if today - last >= rules.idle_days {
        let d = rules.rewarm_day.min(end.saturating_sub(1));
        return Some(Decision::Rewarmed {
            day: d,
            cap: cap_at(d),
            idle_days: today - last,
        });
    }
    // Past the table: active, nothing left to decide.
    let cap = state.cap_of(table)?;
    let used = if cap == 0 {
        1.0
    } else {
        day.taken as f64 / cap as f64
    };
    let throttled = day.throttled_share();
    if !rules.adaptive {
        let d = state.day_index + 1;
        return Some(Decision::Advanced {
            day: d,
            cap: cap_at(d),
            throttled,
            used,
        });
    }
    let back = state.day_index.saturating_sub(rules.step_back_days);
    // What the receiver took on a day it throttled: never offered more the next day.
    let taken_by_receiver = |c: Option<u64>| c.map(|c| c.min(day.accepted.max(1)));
    if day.blocked > 0 {
        // The quarantine spoke already; what it let through that day says nothing.
        let by = BackBy::Blocked;
        return Some(Decision::SteppedBack {
            day: back,
            cap: cap_at(back),
            by,
        });
    }
    if throttled > rules.step_back_above {
        let by = BackBy::Throttling { throttled };
        return Some(Decision::SteppedBack {
            day: back,
            cap: taken_by_receiver(cap_at(back)),
            by,
        });
    }
    let held = |by, cap| Decision::Held {
        day: state.day_index,
        cap: Some(cap),
        by,
    };
    // "Clean" is below `hold_above`; with `hold_above = 0`, any throttling holds.
    if throttled > 0.0 && throttled >= rules.hold_above {
        let cap = cap.min(day.accepted.max(1));
        return Some(held(HeldBy::Throttling { throttled }, cap));
    }
    if used < rules.advance_at {
        return Some(held(HeldBy::Demand { used }, cap));
    }
    if state.limited(table) {
        return Some(regrow(
            rules,
            table,
            state.day_index,
            cap,
            day.accepted,
            throttled,
            used,
        ));
    }
    Some(advance(
        rules,
        table,
        state.day_index,
        day.accepted,
        throttled,
        used,
    ))
}

/// A clean full day below the table (the receiver set the cap): up to `max_growth` ×
/// accepted, at most back to the table's day, never less than one more than the cap.
fn regrow(
    rules: &Rules,
    table: &[u64],
    index: u32,
    cap: u64,
    accepted: u64,
    throttled: f64,
    used: f64,
) -> Decision {
    let step = table_cap(table, index).unwrap_or(1);
    let grown = (rules.max_growth * accepted as f64).floor() as u64;
    Decision::Advanced {
        day: index,
        cap: Some(grown.max(cap + 1).min(step)),
        throttled,
        used,
    }
}

/// A clean full day on the table: the table's next step, or more up to `max_growth` × accepted.
fn advance(
    rules: &Rules,
    table: &[u64],
    index: u32,
    accepted: u64,
    throttled: f64,
    used: f64,
) -> Decision {
    let next = index + 1;
    let last = (table.len() as u32).saturating_sub(1);
    let (Some(step), Some(full)) = (table_cap(table, next), table_cap(table, last)) else {
        let day = table.len() as u32;
        return Decision::Advanced {
            day,
            cap: None,
            throttled,
            used,
        };
    };
    let grown = (rules.max_growth * accepted as f64).floor() as u64;
    let cap = grown.max(step).min(full.max(step));
    // The furthest table day at or below the new cap (at least the next one).
    let day = (next..table.len() as u32)
        .take_while(|&i| table_cap(table, i).is_some_and(|s| s <= cap))
        .last()
        .unwrap_or(next);
    Decision::Advanced {
        day,
        cap: Some(cap),
        throttled,
        used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u64] = &[10, 20, 40, 80, 160];

    fn adaptive() -> Rules {
        Rules {
            adaptive: true,
            ..Rules::fixed(30)
        }
    }

    fn at(day_index: u32, cap: Option<u64>) -> RampState {
        RampState {
            day_index,
            cap,
            last_send_day: Some(100),
        }
    }

    fn tally(taken: u64, accepted: u64, throttled: u64) -> DayTally {
        DayTally {
            taken,
            accepted,
            throttled,
            ..DayTally::default()
        }
    }

    fn decide_on(rules: &Rules, s: RampState, t: DayTally) -> Decision {
        decide(rules, TABLE, &s, &t, 101).expect("a decision")
    }

    #[test]
    fn a_zero_in_the_table_is_a_cap_of_one() {
        let table = &[0, 10, 20];
        assert_eq!(at(0, None).cap_of(table), Some(1), "the first day can send");
        let mut blocked = tally(10, 10, 0);
        blocked.blocked = 1;
        let d = decide(&adaptive(), table, &at(1, None), &blocked, 101).unwrap();
        assert_eq!((d.day(), d.cap()), (0, Some(1)), "stepped back onto a 0");
        // From that day, a clean full day moves on.
        let d = decide(&adaptive(), table, &at(0, None), &tally(1, 1, 0), 102).unwrap();
        assert_eq!((d.day(), d.cap()), (1, Some(10)));
    }

    #[test]
    fn nothing_to_decide_on_the_same_day_or_before_the_first_send() {
        let t = tally(20, 20, 0);
        assert_eq!(decide(&adaptive(), TABLE, &at(1, None), &t, 100), None);
        let first = RampState::default();
        assert_eq!(decide(&adaptive(), TABLE, &first, &t, 100), None);
    }

    #[test]
    fn clean_full_day_advances_with_growth() {
        // Day 1 (cap 20), 19 accepted → up to 38: at least the next step (40).
        let d = decide_on(&adaptive(), at(1, None), tally(20, 19, 0));
        assert_eq!(d.day(), 2);
        assert_eq!(d.cap(), Some(40));
        assert_eq!(
            d.to_string(),
            "day 2 reached: 0 % throttled, 100 % of cap used"
        );
        // Day 1 with a grown cap of 50, 50 accepted → 100: the furthest table day ≤ 100 is 3.
        let d = decide_on(&adaptive(), at(1, Some(50)), tally(50, 50, 1));
        assert_eq!((d.day(), d.cap()), (3, Some(100)));
        assert_eq!(d.next(101, TABLE).cap, Some(100));
        assert!(
            d.to_string().starts_with("day 3 reached: 2 % throttled"),
            "{d}"
        );
    }

    #[test]
    fn growth_is_capped_by_full_volume_then_active() {
        let d = decide_on(&adaptive(), at(3, None), tally(80, 80, 0));
        assert_eq!(
            (d.day(), d.cap()),
            (4, Some(160)),
            "2 × 80 = 160, the last entry"
        );
        assert_eq!(d.next(101, TABLE).cap, None, "the table's own cap");
        let d = decide_on(&adaptive(), at(3, Some(150)), tally(150, 150, 0));
        assert_eq!((d.day(), d.cap()), (4, Some(160)), "300 capped at 160");
        let d = decide_on(&adaptive(), at(4, None), tally(160, 160, 0));
        assert_eq!((d.day(), d.cap()), (5, None), "past the table: active");
        assert!(d.to_string().starts_with("ramp complete at day 5"), "{d}");
        // Active: nothing left to decide.
        assert_eq!(
            decide(&adaptive(), TABLE, &at(5, None), &tally(900, 900, 0), 101),
            None
        );
    }

    #[test]
    fn demand_limited_day_is_held() {
        let d = decide_on(&adaptive(), at(2, None), tally(16, 16, 0));
        assert_eq!((d.day(), d.cap()), (2, Some(40)));
        assert_eq!(d.kind(), "held");
        assert_eq!(d.to_string(), "held at day 2: 40 % of cap used (demand)");
        // A grown cap is kept while held.
        let d = decide_on(&adaptive(), at(2, Some(70)), tally(10, 10, 0));
        assert_eq!(d.next(101, TABLE).cap, Some(70));
    }

    #[test]
    fn throttled_share_between_thresholds_holds() {
        // 5 of 40 replies throttled: 12.5 %.
        let d = decide_on(&adaptive(), at(2, None), tally(40, 35, 5));
        assert_eq!(d.day(), 2);
        assert_eq!(d.to_string(), "held at day 2: 12 % throttled");
        // Deferred attempts count toward the rate, not the volume.
        let t = DayTally {
            deferred: 100,
            ..tally(40, 35, 5)
        };
        assert_eq!(decide_on(&adaptive(), at(2, None), t).kind(), "advanced");
        // hold_above = 0: any throttling holds, none is clean.
        let strict = Rules {
            hold_above: 0.0,
            ..adaptive()
        };
        assert_eq!(
            decide_on(&strict, at(2, None), tally(40, 39, 1)).kind(),
            "held"
        );
        assert_eq!(
            decide_on(&strict, at(2, None), tally(40, 40, 0)).kind(),
            "advanced"
        );
    }

    #[test]
    fn steps_back_on_throttling_and_on_a_block() {
        let d = decide_on(&adaptive(), at(3, None), tally(80, 40, 40));
        assert_eq!((d.kind(), d.day(), d.cap()), ("stepped-back", 1, Some(20)));
        assert_eq!(d.to_string(), "back to day 1: 50 % throttled");
        let t = DayTally {
            blocked: 1,
            ..tally(80, 80, 0)
        };
        let d = decide_on(&adaptive(), at(1, Some(30)), t);
        assert_eq!((d.day(), d.cap()), (0, Some(10)));
        assert_eq!(d.next(101, TABLE).cap, None, "back on the table");
        assert_eq!(d.to_string(), "back to day 0: blocked");
    }

    #[test]
    fn a_receiver_that_refused_sets_the_next_cap_and_the_ramp_regrows_from_it() {
        // Held at day 2 (cap 40): 12 % throttled, 30 accepted → 30 tomorrow, below the table.
        let d = decide_on(&adaptive(), at(2, None), tally(40, 30, 4));
        assert_eq!((d.kind(), d.day(), d.cap()), ("held", 2, Some(30)));
        let s = d.next(101, TABLE);
        assert!(s.limited(TABLE));
        // Stepped back below the table's first day: the receiver took 6.
        let d = decide_on(&adaptive(), at(1, None), tally(20, 6, 14));
        assert_eq!((d.kind(), d.day(), d.cap()), ("stepped-back", 0, Some(6)));
        // A clean full day below the table grows by max_growth, no further than the table day.
        let d = decide_on(&adaptive(), at(0, Some(6)), tally(6, 6, 0));
        assert_eq!((d.kind(), d.day(), d.cap()), ("advanced", 0, Some(10)));
        assert!(!d.next(101, TABLE).limited(TABLE), "back on the table");
        let d = decide_on(&adaptive(), at(2, Some(12)), tally(12, 12, 0));
        assert_eq!((d.day(), d.cap()), (2, Some(24)));
        // A clean day that already took the table's day: not limited, the table's next step.
        let d = decide_on(&adaptive(), at(2, Some(40)), tally(40, 40, 0));
        assert_eq!((d.day(), d.cap()), (3, Some(80)));
    }

    #[test]
    fn idle_days_rewarm_at_the_configured_day() {
        let rules = Rules {
            rewarm_day: 1,
            ..adaptive()
        };
        let s = at(5, None);
        let d = decide(&rules, TABLE, &s, &tally(1, 1, 0), 130).unwrap();
        assert_eq!((d.kind(), d.day(), d.cap()), ("rewarmed", 1, Some(20)));
        assert_eq!(d.to_string(), "re-warming from day 1: idle 30 days");
        // One day short of idle_days: the usual rules (active stays active).
        assert_eq!(decide(&rules, TABLE, &s, &tally(1, 1, 0), 129), None);
        // Fixed schedules re-warm too, by default at day 0.
        let d = decide(&Rules::fixed(30), TABLE, &s, &tally(1, 1, 0), 130).unwrap();
        assert_eq!((d.day(), d.cap()), (0, Some(10)));
    }

    #[test]
    fn fixed_schedule_moves_on_one_day_per_sending_day() {
        let rules = Rules::fixed(30);
        // Whatever the day said: one day on.
        let d = decide(&rules, TABLE, &at(1, None), &tally(1, 0, 1), 104).unwrap();
        assert_eq!((d.kind(), d.day(), d.cap()), ("advanced", 2, Some(40)));
        let d = decide(&rules, TABLE, &at(4, None), &tally(1, 1, 0), 101).unwrap();
        assert_eq!((d.day(), d.cap()), (5, None), "table over: active");
    }
}
