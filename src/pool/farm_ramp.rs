//! The warm-up ramp across a farm (`[cluster]`): the ramp state of an IP × provider is the
//! farm's, kept in Redis by `cluster::ramp`.
//!
//! Rules:
//! - The local pick moves this relay's ramp as a relay alone would, but with `[cluster]` it
//!   keeps a new sending day's decision back (`LocalRoll`, in the lease): the farm decides the
//!   day once, on the farm's tally of the last sending day (`Farm::ramp_roll`), and every
//!   relay takes the farm's state, its last decision included.
//! - Only the relay whose decision was stored tells it (history, log, metric): one event per
//!   decision for the farm.
//! - Redis down at a new sending day: this relay's own decision stands and is told as on a
//!   relay alone; the farm's state is read again at the next sending day.
//! - Every reply to a delivery from an IP on a schedule counts into the farm's tally of the
//!   day its delivery began, or (a block or throttling reply to a day this relay knows is
//!   decided) of the open day; the messages taken count in the take's script (`shared`).

use std::net::IpAddr;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::farm::Farm;
use super::pools::{Key, Pools};
use super::ramp::{self, DayTally, Decision, RampOutcome, RampState};

/// A ramp state the farm shares: the ramp's own, stored as JSON.
pub trait FarmRamp: Serialize + DeserializeOwned + Clone {
    /// The sending day this state is for (its decision used the day before it); `None` before
    /// any send.
    fn day(&self) -> Option<u64>;
}

/// What the farm's `ramp_roll` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Rolled<S> {
    /// This relay decided the day for the farm: from `before`, with the farm's `tally` of
    /// `before`'s day.
    Decided {
        state: S,
        before: S,
        tally: DayTally,
    },
    /// The farm's state, already for today (another relay decided it, or none was due).
    Farm(S),
}

/// How long a day's tally is kept: `idle_days + 2` days of `day_ms`.
pub fn tally_ttl(day_ms: u64, idle_days: u64) -> u64 {
    day_ms.saturating_mul(idle_days.saturating_add(2))
}

/// The ramp state the farm stores per IP × provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmState {
    pub day_index: u32,
    #[serde(default)]
    pub cap: Option<u64>,
    pub last_send_day: Option<u64>,
    /// The last decision: unix seconds and its text (shown by every relay).
    #[serde(default)]
    pub decided: Option<(u64, String)>,
}

impl FarmRamp for FarmState {
    fn day(&self) -> Option<u64> {
        self.last_send_day
    }
}

impl FarmState {
    fn of(s: RampState, decided: Option<(u64, String)>) -> FarmState {
        FarmState {
            day_index: s.day_index,
            cap: s.cap,
            last_send_day: s.last_send_day,
            decided,
        }
    }

    fn state(&self) -> RampState {
        RampState {
            day_index: self.day_index,
            cap: self.cap,
            last_send_day: self.last_send_day,
        }
    }
}

/// A new sending day this relay's pick began, for the farm to decide (`[cluster]`).
#[derive(Debug, Clone)]
pub(super) struct LocalRoll {
    /// This relay's ramp before the pick (it seeds the farm's when there is none).
    pub before: RampState,
    /// This relay's own decision, told only if the farm cannot decide (Redis down).
    pub decided: Option<(Decision, DayTally, Option<u64>)>,
    pub today: u64,
}

impl Pools {
    /// The farm decides the new sending day `roll` began on `key` (see the module's rules).
    pub(super) async fn farm_roll(&self, farm: &dyn Farm, key: &Key, roll: LocalRoll) {
        let conf = self.conf();
        let Some(ip) = conf
            .pools
            .iter()
            .flat_map(|p| &p.ips)
            .find(|i| i.address == key.0)
        else {
            return;
        };
        let Some((table, rules)) = conf.ramp_of(ip) else {
            return;
        };
        let (today, now_s) = (roll.today, super::pools::now_s());
        let made: Mutex<Option<(Decision, DayTally, Option<u64>)>> = Mutex::new(None);
        let decide = |s: &FarmState, t: &DayTally| {
            let (state, tally) = (s.state(), *t);
            let d = ramp::decide(rules, table, &state, &tally, today);
            let next = match d {
                Some(d) => FarmState::of(d.next(today, table), Some((now_s, d.to_string()))),
                None => FarmState {
                    last_send_day: Some(today),
                    ..s.clone()
                },
            };
            *made.lock().expect("ramp decision") = d.map(|d| (d, tally, state.cap_of(table)));
            next
        };
        let seed = FarmState::of(roll.before, None);
        let rolled = farm.ramp_roll(key.0, &key.1, today, &seed, &decide).await;
        let told = match rolled {
            Ok(Rolled::Decided { state, .. }) => {
                self.set_ramp(key, &state);
                made.lock().expect("ramp decision").take()
            }
            Ok(Rolled::Farm(state)) => {
                tracing::debug!(source_ip = %key.0, provider = %key.1, day = state.day_index, "warm-up: the farm's ramp taken");
                self.set_ramp(key, &state);
                None
            }
            Err(e) => {
                tracing::debug!(source_ip = %key.0, provider = %key.1, error = ?e, "warm-up: Redis unavailable, this relay decides the day");
                roll.decided
            }
        };
        if let Some((d, tally, cap)) = told {
            self.ramp_decided(key.0, &key.1, d, &tally, cap, rules.adaptive);
        }
    }

    /// The farm's ramp and last decision replace this relay's (its own decision was never
    /// told; today's own tally stays, for a Redis outage).
    fn set_ramp(&self, key: &Key, s: &FarmState) {
        let moved = {
            let mut inner = self.lock();
            let c = inner.counters.entry(key.clone()).or_default();
            let w = &mut c.warmup;
            let moved = (w.day_index, w.cap) != (s.day_index, s.cap);
            (w.day_index, w.cap, w.last_send_day) = (s.day_index, s.cap, s.last_send_day);
            w.decided = s.decided.clone();
            // A farm refusal made under the old day's cap does not stand under the new one: the
            // next pick asks the farm again.
            if moved {
                c.farm_full_until = 0;
            }
            inner.dirty.insert(key.clone());
            moved
        };
        if moved {
            self.wake.notify_one();
        }
    }

    /// `[cluster]`: one reply into the farm's tally of `day` (`ramp_outcome` chose it; IPs on a
    /// schedule only).
    pub(super) fn farm_outcome(&self, ip: IpAddr, provider: &str, day: u64, o: RampOutcome) {
        let Some(farm) = self.farm() else {
            return;
        };
        let conf = self.conf();
        let on_schedule = conf
            .pools
            .iter()
            .flat_map(|p| &p.ips)
            .any(|i| i.address == ip && conf.ramp_of(i).is_some());
        if on_schedule {
            let ttl = tally_ttl(conf.clock.day_ms, conf.idle_days);
            farm.ramp_count(ip, provider, day, o, ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_farms_state_is_the_ramps_with_its_last_decision() {
        let s = RampState {
            day_index: 3,
            cap: Some(120),
            last_send_day: Some(20_000),
        };
        let f = FarmState::of(s, Some((7, "day 3 reached".into())));
        assert_eq!(f.state(), s);
        assert_eq!(f.day(), Some(20_000));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<FarmState>(&json).unwrap(), f);
        // Fields added later read as their default.
        let old: FarmState =
            serde_json::from_str(r#"{"day_index":1,"last_send_day":null}"#).unwrap();
        assert_eq!((old.cap, old.day(), old.decided), (None, None, None));
    }

    #[test]
    fn the_farms_tally_is_read_as_the_ramps_day() {
        let t = DayTally {
            taken: 10,
            accepted: 8,
            throttled: 1,
            deferred: 1,
            bounced: 0,
            blocked: 0,
        };
        let d = t;
        assert_eq!(
            (d.taken, d.accepted, d.throttled, d.deferred),
            (10, 8, 1, 1)
        );
    }
}
