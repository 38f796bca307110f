//! Warm-up schedules and the one clock that warm-up and throttle windows read. A "day" is
//! `warmup.day` long (24 h in production, seconds in tests); an "hour" is a 24th of it. Days and
//! hours are numbered from the unix epoch, so every window is plain integer division.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ramp::{self, DayTally, Decision, RampState, Rules};
use super::settings::Warmup;

/// SparkPost-style ramp: daily messages per IP × provider on day 0, 1, 2, …; after the last day
/// the IP is active (no warm-up cap).
pub const STANDARD: &[u64] = &[
    200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 70_000, 100_000, 150_000, 250_000,
    400_000, 600_000, 1_000_000,
];

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub day_ms: u64,
}

impl Clock {
    pub fn of(warmup: &Warmup) -> Clock {
        Clock {
            day_ms: (warmup.day.0.as_millis() as u64).max(24),
        }
    }

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub fn hour_ms(&self) -> u64 {
        self.day_ms / 24
    }

    pub fn day(&self, now_ms: u64) -> u64 {
        now_ms / self.day_ms
    }

    pub fn hour(&self, now_ms: u64) -> u64 {
        now_ms / self.hour_ms()
    }

    pub fn next_day_start(&self, now_ms: u64) -> u64 {
        (self.day(now_ms) + 1) * self.day_ms
    }

    pub fn next_hour_start(&self, now_ms: u64) -> u64 {
        (self.hour(now_ms) + 1) * self.hour_ms()
    }
}

/// Named schedules: `standard` plus `[[warmup.schedule]]` (which may redefine `standard`).
pub fn schedules(warmup: &Warmup) -> Vec<(String, Vec<u64>)> {
    let mut v: Vec<(String, Vec<u64>)> = warmup
        .schedule
        .iter()
        .map(|s| (s.name.clone(), s.daily.clone()))
        .collect();
    if !v.iter().any(|(n, _)| n == "standard") {
        v.push(("standard".into(), STANDARD.to_vec()));
    }
    v
}

/// Hourly share of a daily cap: ceil(daily / 24) × burst, so a day's volume is spread over
/// the day instead of leaving in its first minute.
pub fn hourly_cap(daily: u64, burst: u64) -> u64 {
    daily.div_ceil(24).max(1) * burst.max(1)
}

/// The warm-up position of one IP × provider, persisted (fields added later read as default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Index into the schedule of the current sending day.
    pub day_index: u32,
    /// Absolute day number (Clock::day) of the last day with a send.
    pub last_send_day: Option<u64>,
    /// The current day's cap when an adaptive ramp set one off the table.
    #[serde(default)]
    pub cap: Option<u64>,
    /// Deliveries begun on `last_send_day` and their replies.
    #[serde(default)]
    pub tally: DayTally,
    /// The last ramp decision: unix seconds and its text.
    #[serde(default)]
    pub decided: Option<(u64, String)>,
}

impl Progress {
    /// The schedule index that applies to a send on absolute day `today`: the index moves on by
    /// one after a day that had sends (idle days do not count); `idle_days` or more without a
    /// send start the warm-up over from day 0. (IPs without a schedule; `ramp` decides for
    /// the others.)
    pub fn index_on(&self, today: u64, idle_days: u64) -> u32 {
        match self.last_send_day {
            None => self.day_index,
            Some(last) if last >= today => self.day_index,
            Some(last) if today - last >= idle_days => 0,
            Some(_) => self.day_index.saturating_add(1),
        }
    }

    /// Records a send on `today`.
    pub fn sent_on(&mut self, today: u64, idle_days: u64) {
        self.day_index = self.index_on(today, idle_days);
        self.last_send_day = Some(self.last_send_day.map_or(today, |l| l.max(today)));
    }

    pub fn state(&self) -> RampState {
        RampState {
            day_index: self.day_index,
            cap: self.cap,
            last_send_day: self.last_send_day,
        }
    }

    /// The ramp's position and cap for a send on `today` (deciding, without keeping, what the
    /// first send of a new day will decide).
    pub fn peek(&self, rules: &Rules, table: &[u64], today: u64) -> (u32, Option<u64>) {
        let state = self.state();
        match ramp::decide(rules, table, &state, &self.tally, today) {
            Some(d) => (d.day(), d.cap()),
            None => (state.day_index, state.cap_of(table)),
        }
    }

    /// A message taken on `today` from a scheduled IP: a new sending day first takes the
    /// decision for the last one (returned, with that day's tally and cap, for the record).
    pub fn take(
        &mut self,
        rules: &Rules,
        table: &[u64],
        today: u64,
    ) -> Option<(Decision, DayTally, Option<u64>)> {
        let state = self.state();
        let decided = ramp::decide(rules, table, &state, &self.tally, today);
        if self.last_send_day.is_none_or(|l| l < today) {
            let next = match &decided {
                Some(d) => d.next(today, table),
                None => RampState {
                    last_send_day: Some(today),
                    ..state
                },
            };
            (self.day_index, self.cap, self.last_send_day) =
                (next.day_index, next.cap, next.last_send_day);
            let old = std::mem::take(&mut self.tally);
            self.tally.taken = 1;
            return decided.map(|d| (d, old, state.cap_of(table)));
        }
        self.tally.taken += 1;
        None
    }

    /// Gives back a message taken on `day` that was never sent.
    pub fn refund(&mut self, day: u64) {
        if self.last_send_day == Some(day) {
            self.tally.taken = self.tally.taken.saturating_sub(1);
        }
    }
}

/// The daily cap on `index` of `schedule`; `None` once the schedule is over (active).
pub fn daily_cap(schedule: &[u64], index: u32) -> Option<u64> {
    schedule.get(index as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_windows() {
        let c = Clock { day_ms: 2400 };
        assert_eq!(c.hour_ms(), 100);
        assert_eq!(c.day(4799), 1);
        assert_eq!(c.day(4800), 2);
        assert_eq!(c.hour(250), 2);
        assert_eq!(c.next_hour_start(250), 300);
        assert_eq!(c.next_day_start(250), 2400);
    }

    #[test]
    fn day_advances_only_after_sending_days() {
        let mut p = Progress::default();
        assert_eq!(p.index_on(100, 30), 0);
        p.sent_on(100, 30);
        p.sent_on(100, 30);
        assert_eq!(p.day_index, 0, "same day: no advance");
        assert_eq!(p.index_on(101, 30), 1);
        // Three idle days: still only one step.
        assert_eq!(p.index_on(104, 30), 1);
        p.sent_on(104, 30);
        assert_eq!(p.day_index, 1);
        p.sent_on(105, 30);
        assert_eq!(p.day_index, 2);
        // Idle 30 days or more: warming again from day 0.
        assert_eq!(p.index_on(134, 30), 3);
        assert_eq!(p.index_on(135, 30), 0);
        p.sent_on(135, 30);
        assert_eq!(p.day_index, 0);
    }

    #[test]
    fn a_new_sending_day_keeps_the_decision_and_starts_a_fresh_tally() {
        let rules = Rules {
            adaptive: true,
            ..Rules::fixed(30)
        };
        let table = [4, 8, 16, 32];
        let mut p = Progress::default();
        assert_eq!(p.take(&rules, &table, 100), None, "the first day ever");
        for _ in 0..4 {
            assert_eq!(p.take(&rules, &table, 100), None);
        }
        p.refund(100);
        p.refund(99);
        assert_eq!(p.tally.taken, 4, "one refund of today's five");
        p.tally.accepted = 4;
        // Before the next day's first send, the cap it will have is already known.
        assert_eq!(p.peek(&rules, &table, 101), (1, Some(8)));
        let (d, day, cap) = p.take(&rules, &table, 101).expect("a decision");
        assert_eq!((d.kind(), day.accepted, cap), ("advanced", 4, Some(4)));
        assert_eq!((p.day_index, p.last_send_day, p.cap), (1, Some(101), None));
        assert_eq!(p.tally.taken, 1, "today's first message");
        assert_eq!(p.tally.accepted, 0);
        assert_eq!(p.peek(&rules, &table, 101), (1, Some(8)));
    }

    #[test]
    fn caps_and_end_of_schedule() {
        let s = [200, 500, 1000];
        assert_eq!(daily_cap(&s, 0), Some(200));
        assert_eq!(daily_cap(&s, 2), Some(1000));
        assert_eq!(daily_cap(&s, 3), None, "schedule over: active");
        assert_eq!(hourly_cap(200, 2), 18);
        assert_eq!(hourly_cap(5, 2), 2);
        assert_eq!(hourly_cap(48, 1), 2);
        assert_eq!(
            &STANDARD[..8],
            &[200, 500, 1000, 2000, 5000, 10000, 20000, 40000]
        );
    }
}
