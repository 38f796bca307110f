//! Per IP × provider counters: messages this day and this hour (for warm-up and throttle caps),
//! the warm-up position, outcome counts, a "slow down" back-off and the pace cut by throttling
//! replies. Persisted as JSON. With
//! `[cluster]` these counts are this relay's own; the farm's are in Redis, and a refusal from
//! there (or from the local share while Redis is down) is kept here until its window ends.

use serde::{Deserialize, Serialize};

use super::warmup::{Clock, Progress};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    #[serde(default)]
    pub warmup: Progress,
    /// Absolute day and the messages taken in it.
    #[serde(default)]
    pub day: u64,
    #[serde(default)]
    pub day_count: u64,
    #[serde(default)]
    pub hour: u64,
    #[serde(default)]
    pub hour_count: u64,
    /// Messages taken in hour `hour - 1`: the pace an uncapped cut halves early in an hour.
    #[serde(default)]
    pub prev_hour_count: u64,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub deferred: u64,
    #[serde(default)]
    pub bounced: u64,
    /// Unix millis until which this IP × provider takes nothing ("slow down" reply).
    #[serde(default)]
    pub backoff_until: u64,
    #[serde(default)]
    pub backoff_reason: String,
    /// Unix millis until which the farm (`[cluster]`) has no room on this IP × provider.
    #[serde(skip)]
    pub farm_full_until: u64,
    #[serde(skip)]
    pub farm_full_why: &'static str,
    // Pace cuts after throttling replies (`cut_pace`): until day `pace_day` ends, at most
    // `pace_per_hour` messages an hour; `pace_cuts` cuts that day, the last at `pace_cut_at`
    // (unix millis).
    #[serde(default)]
    pub pace_day: u64,
    #[serde(default)]
    pub pace_per_hour: u64,
    #[serde(default)]
    pub pace_cuts: u32,
    #[serde(default)]
    pub pace_cut_at: u64,
}

/// What one throttling reply did to the pace of its IP × provider (`Counters::cut_pace`).
///
/// Rules:
/// - a throttling reply halves the hourly pace (the current hourly cap, or when uncapped the
///   larger of the messages taken this hour and last hour; at least 1) until the end of the
///   warm-up day;
/// - a reply to a delivery that began before the last cut (or in its millisecond) is of the
///   same episode: no new cut;
/// - after `max_cuts` cuts in a day, a throttling reply to a delivery begun after the last cut
///   is persistent throttling: the reputation stage quarantines;
/// - a throttling quarantine starts the cuts over (`Counters::quarantined`): after it ends the
///   next throttling reply cuts the pace again; replies to deliveries begun before its end are
///   of its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceCut {
    /// The pace is now `per_hour`, the `cuts`-th cut today.
    Cut { per_hour: u64, cuts: u32 },
    /// Answered by the last cut.
    Episode,
    /// Cut `cuts` times today and still throttled.
    Persistent { cuts: u32 },
}

/// The caps that apply to one IP × provider right now (`None` = no cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub daily: Option<u64>,
    pub hourly: Option<u64>,
    pub connections: Option<u32>,
}

/// Why an IP × provider cannot take a message now, and from when it may (unix millis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub why: &'static str,
    pub until: u64,
}

impl Counters {
    pub fn used_today(&self, clock: &Clock, now: u64) -> u64 {
        if self.day == clock.day(now) {
            self.day_count
        } else {
            0
        }
    }

    pub fn used_hour(&self, clock: &Clock, now: u64) -> u64 {
        if self.hour == clock.hour(now) {
            self.hour_count
        } else {
            0
        }
    }

    /// Messages taken in the hour before the current one.
    pub fn used_prev_hour(&self, clock: &Clock, now: u64) -> u64 {
        let hour = clock.hour(now);
        if self.hour == hour {
            self.prev_hour_count
        } else if self.hour + 1 == hour {
            self.hour_count
        } else {
            0
        }
    }

    /// The hourly pace set by throttling replies, while its day lasts.
    pub fn pace(&self, clock: &Clock, now: u64) -> Option<u64> {
        (self.pace_cuts > 0 && self.pace_day == clock.day(now)).then_some(self.pace_per_hour)
    }

    /// A throttling reply to a delivery that began at `sent_at_ms`; `hourly` is the hourly cap
    /// in force (`None`: uncapped). See `PaceCut` for the rules.
    pub fn cut_pace(
        &mut self,
        hourly: Option<u64>,
        clock: &Clock,
        now: u64,
        sent_at_ms: u64,
        max_cuts: u32,
    ) -> PaceCut {
        // Began in the millisecond of the cut or before: in flight when it was made.
        if self.pace_cut_at > 0 && sent_at_ms <= self.pace_cut_at {
            return PaceCut::Episode;
        }
        let pace = self.pace(clock, now);
        let cuts = if pace.is_some() { self.pace_cuts } else { 0 };
        if cuts >= max_cuts.max(1) {
            return PaceCut::Persistent { cuts };
        }
        let current = match (hourly, pace) {
            (Some(h), Some(p)) => h.min(p),
            (Some(x), None) | (None, Some(x)) => x,
            // Early in an hour its count is near 0: last hour's is the pace actually sent at.
            (None, None) => self
                .used_hour(clock, now)
                .max(self.used_prev_hour(clock, now)),
        };
        self.pace_day = clock.day(now);
        self.pace_per_hour = (current / 2).max(1);
        self.pace_cuts = cuts + 1;
        self.pace_cut_at = now;
        PaceCut::Cut {
            per_hour: self.pace_per_hour,
            cuts: self.pace_cuts,
        }
    }

    /// A throttling quarantine until `until_ms` was made: the cuts start over, and deliveries
    /// begun before it ends are of its episode.
    pub fn quarantined(&mut self, until_ms: u64) {
        self.pace_cuts = 0;
        self.pace_cut_at = self.pace_cut_at.max(until_ms);
    }

    /// Checks every cap; `active` is the number of connections in use.
    pub fn check(&self, caps: &Caps, active: u32, clock: &Clock, now: u64) -> Result<(), Full> {
        if self.backoff_until > now {
            return Err(Full {
                why: "backing off after a slow-down reply",
                until: self.backoff_until,
            });
        }
        if self.farm_full_until > now {
            return Err(Full {
                why: self.farm_full_why,
                until: self.farm_full_until,
            });
        }
        if let Some(d) = caps.daily
            && self.used_today(clock, now) >= d
        {
            return Err(Full {
                why: "daily warm-up cap reached",
                until: clock.next_day_start(now),
            });
        }
        if let Some(h) = caps.hourly
            && self.used_hour(clock, now) >= h
        {
            return Err(Full {
                why: "hourly cap reached",
                until: clock.next_hour_start(now),
            });
        }
        if let Some(p) = self.pace(clock, now)
            && self.used_hour(clock, now) >= p
        {
            return Err(Full {
                why: "hourly pace cut after throttling replies",
                until: clock.next_hour_start(now),
            });
        }
        if let Some(c) = caps.connections
            && active >= c
        {
            return Err(Full {
                why: "connection limit reached",
                until: now + 1000,
            });
        }
        Ok(())
    }

    /// Counts one message taken now.
    pub fn take(&mut self, clock: &Clock, now: u64, idle_days: u64) {
        let (day, hour) = (clock.day(now), clock.hour(now));
        self.warmup.sent_on(day, idle_days);
        if self.day != day {
            self.day = day;
            self.day_count = 0;
        }
        if self.hour != hour {
            self.prev_hour_count = if self.hour + 1 == hour {
                self.hour_count
            } else {
                0
            };
            self.hour = hour;
            self.hour_count = 0;
        }
        self.day_count += 1;
        self.hour_count += 1;
    }

    /// Gives back a message taken at `(day, hour)` that was never sent (the connection failed).
    pub fn refund(&mut self, day: u64, hour: u64) {
        if self.day == day {
            self.day_count = self.day_count.saturating_sub(1);
        }
        if self.hour == hour {
            self.hour_count = self.hour_count.saturating_sub(1);
        } else if self.hour == hour + 1 {
            self.prev_hour_count = self.prev_hour_count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_and_hourly_caps_reset_with_their_windows() {
        let clock = Clock { day_ms: 2400 };
        let caps = Caps {
            daily: Some(3),
            hourly: Some(2),
            connections: Some(1),
        };
        let mut c = Counters::default();
        let t = 10_000; // day 4, hour 100
        assert!(c.check(&caps, 0, &clock, t).is_ok());
        c.take(&clock, t, 30);
        c.take(&clock, t + 10, 30);
        let full = c.check(&caps, 0, &clock, t + 20).unwrap_err();
        assert_eq!(full.until, 10_100, "next hour");
        // Next hour: one more, then the day is full until the next day.
        c.take(&clock, t + 100, 30);
        let full = c.check(&caps, 0, &clock, t + 150).unwrap_err();
        assert_eq!(full.until, 12_000);
        assert!(c.check(&caps, 0, &clock, 12_000).is_ok());
        assert!(c.check(&caps, 1, &clock, 12_000).is_err(), "connection cap");
        c.refund(clock.day(t + 100), clock.hour(t + 100));
        assert_eq!(c.used_today(&clock, t + 150), 2);
    }

    #[test]
    fn a_farm_refusal_blocks_until_its_window_ends() {
        let clock = Clock { day_ms: 2400 };
        let c = Counters {
            farm_full_until: 300,
            farm_full_why: "farm hourly cap reached",
            ..Default::default()
        };
        let full = c.check(&Caps::default(), 0, &clock, 250).unwrap_err();
        assert_eq!((full.why, full.until), ("farm hourly cap reached", 300));
        assert!(c.check(&Caps::default(), 0, &clock, 300).is_ok());
    }

    #[test]
    fn backoff_blocks_until_it_ends() {
        let clock = Clock { day_ms: 86_400_000 };
        let c = Counters {
            backoff_until: 5000,
            ..Default::default()
        };
        assert_eq!(
            c.check(&Caps::default(), 0, &clock, 4000)
                .unwrap_err()
                .until,
            5000
        );
        assert!(c.check(&Caps::default(), 0, &clock, 5000).is_ok());
    }

    #[test]
    fn throttling_halves_the_pace_once_per_episode_until_the_day_ends() {
        let clock = Clock { day_ms: 2400 }; // an hour is 100 ms
        let mut c = Counters::default();
        let t = 10_000; // day 4
        for i in 0..6 {
            c.take(&clock, t + i, 30);
        }
        // Uncapped: half of what this hour took.
        assert_eq!(
            c.cut_pace(None, &clock, t + 10, t + 5, 3),
            PaceCut::Cut {
                per_hour: 3,
                cuts: 1
            }
        );
        let full = c.check(&Caps::default(), 0, &clock, t + 20).unwrap_err();
        assert_eq!(full.until, 10_100, "next hour");
        // Deliveries in flight before the cut: the same episode.
        assert_eq!(c.cut_pace(None, &clock, t + 30, t + 9, 3), PaceCut::Episode);
        // Capped at 10 an hour, paced at 3: half of 3.
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 40, t + 35, 3),
            PaceCut::Cut {
                per_hour: 1,
                cuts: 2
            }
        );
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 50, t + 45, 3),
            PaceCut::Cut {
                per_hour: 1,
                cuts: 3
            }
        );
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 60, t + 55, 3),
            PaceCut::Persistent { cuts: 3 }
        );
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 70, t + 45, 3),
            PaceCut::Episode
        );
        // The next day: the table's pace again, and a fresh count of cuts.
        assert_eq!(c.pace(&clock, 12_000), None);
        assert!(c.check(&Caps::default(), 0, &clock, 12_000).is_ok());
        assert_eq!(
            c.cut_pace(Some(10), &clock, 12_000, 11_990, 3),
            PaceCut::Cut {
                per_hour: 5,
                cuts: 1
            }
        );
    }

    #[test]
    fn an_uncapped_cut_early_in_an_hour_halves_last_hours_pace() {
        let clock = Clock { day_ms: 2400 }; // an hour is 100 ms
        let mut c = Counters::default();
        let t = 10_000; // day 4, hour 100
        for i in 0..40 {
            c.take(&clock, t + i, 30);
        }
        // Hour 101 begins; one message so far, the reply comes in its first moments.
        c.take(&clock, t + 100, 30);
        assert_eq!(
            c.cut_pace(None, &clock, t + 101, t + 100, 3),
            PaceCut::Cut {
                per_hour: 20,
                cuts: 1
            }
        );
        // Nothing taken yet this hour: last hour's count still answers.
        let mut c = Counters::default();
        for i in 0..40 {
            c.take(&clock, t + i, 30);
        }
        assert_eq!(
            c.cut_pace(None, &clock, t + 100, t + 50, 3),
            PaceCut::Cut {
                per_hour: 20,
                cuts: 1
            }
        );
        // An idle hour in between: last hour took nothing.
        let mut c = Counters::default();
        for i in 0..40 {
            c.take(&clock, t + i, 30);
        }
        c.take(&clock, t + 200, 30);
        assert_eq!(c.used_prev_hour(&clock, t + 201), 0);
    }

    #[test]
    fn a_throttling_quarantine_starts_the_cuts_over() {
        let clock = Clock { day_ms: 2400 };
        let mut c = Counters::default();
        let t = 10_000;
        for i in 0..2 {
            assert!(matches!(
                c.cut_pace(Some(10), &clock, t + 10 * i, t + 10 * i - 1, 2),
                PaceCut::Cut { .. }
            ));
        }
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 30, t + 25, 2),
            PaceCut::Persistent { cuts: 2 }
        );
        c.quarantined(t + 100);
        // In flight until the quarantine ended: its episode.
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 200, t + 100, 2),
            PaceCut::Episode
        );
        // Begun after it, the same day: a first cut, not persistent throttling.
        assert_eq!(
            c.cut_pace(Some(10), &clock, t + 210, t + 150, 2),
            PaceCut::Cut {
                per_hour: 5,
                cuts: 1
            }
        );
    }
}
