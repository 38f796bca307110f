//! A simulated receiving provider (issue 24): an SMTP destination on loopback (the kit's `Sink`
//! with a script) that judges each source IP by a hidden acceptance model, the way a big
//! mailbox provider judges a new IP during its warm-up.
//!
//! **This is a model, not the world.** It exists to test poolrelay's warm-up logic against a
//! receiver that answers the way the providers say they do; its numbers are ours, not theirs.
//! What it follows (cited from what those pages say as we remember them, not re-read for this
//! file; none of them publishes thresholds):
//! - Google's postmaster guidance for senders (support.google.com/mail, "Email sender
//!   guidelines", the `4.7.28` "unusual rate of unsolicited mail" error page): increase volume
//!   slowly on a new IP; a sudden rise is rate limited with `421 4.7.28` first; mail keeps being
//!   refused while the volume stays up.
//! - Microsoft's postmaster guidance (sendersupport.olc.protection.outlook.com, the Outlook.com
//!   "warming up" and NDR pages): a new IP is throttled (`451 4.7.650 … temporarily rate limited
//!   due to IP reputation`) until it builds a history of good volume; going on at the same rate
//!   makes the throttling last longer and can end in a block.
//! - SparkPost's and MailerQ's warm-up documentation: reputation builds with volume that is
//!   delivered cleanly, daily volumes grow step by step, and throttling is the first signal to
//!   slow down, before blocks.
//! - Block lists (Spamhaus and kin) and providers' own blocks: a block answers every delivery
//!   from the IP for a while (`550 5.7.1 … blocked using zen.spamhaus.org`).
//!
//! The rules, per source IP, all in `Model` (pure functions of one day's counts, unit-tested in
//! `integration-tests/ramp_sim.rs`):
//! 1. The IP has an **allowance**: messages per day the receiver takes from it (`initial` on its
//!    first day). Within an hour (a 24th of the day) it takes at most `ceil(allowance / 24) ×
//!    pace_burst` (0 = no hourly pace).
//! 2. Each RCPT is accepted while the day's accepted count is below the allowance and the hour's
//!    is below the pace; otherwise it is **throttled** (`421 4.7.28` or `451 4.7.650`).
//! 3. The IP is **blocked** (`550 5.7.1`, for the rest of that day and `block_days − 1` more
//!    days) when the day's **offered volume** (distinct recipients offered that day: a retry of
//!    the same message is not new volume) goes above `block_above × allowance`, or when it
//!    goes over the allowance again after `persist_days` sending days in a row (idle days do not
//!    break the run) on which more than `persist_share` of the volume it offered was refused
//!    (told to slow down for days, it did not: the escalation from deferrals to blocks that the
//!    providers describe).
//! 4. At the end of a day: a clean day (nothing refused) grows the allowance by `growth ×
//!    accepted` (reputation builds with good volume, so a day limited by demand grows it less); a
//!    day with refused volume shrinks it by `shrink × refused` (distinct messages refused and not
//!    accepted later that day), never below `floor`; a day with a block multiplies it by
//!    `after_block`. An idle day changes nothing.
//! 5. `tighten`: on the IP's day N (0 = its first day seen) the allowance is multiplied by a
//!    factor (the receiver changes its mind mid-ramp: a complaint spike, a policy change).
//!
//! Days are numbered like the relay's warm-up clock: `now_ms / day_ms` from the unix epoch, with
//! `day_ms` the relay's `[warmup] day`, so the receiver's day and the relay's day agree.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::sink::{Sink, Stage, Step};

/// Which provider's throttling reply the receiver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `421 4.7.28 … unusual rate of unsolicited mail …` (and the connection is closed).
    Gmail,
    /// `451 4.7.650 … temporarily rate limited due to IP reputation`.
    Microsoft,
}

/// The receiver's change of mind on one day of the IP's ramp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tighten {
    /// The IP's day (0 = the first day it was seen) from which the allowance is lower.
    pub day: u64,
    /// The allowance is multiplied by this on that day.
    pub factor: f64,
}

/// The hidden acceptance model (see the module documentation for the rules).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Allowance on the IP's first day (messages per day).
    pub initial: f64,
    /// A clean day adds `growth × accepted` to the allowance.
    pub growth: f64,
    /// A day with refused volume takes `shrink × refused` off it.
    pub shrink: f64,
    /// The allowance never goes below this.
    pub floor: f64,
    /// Hourly pace = ceil(allowance / 24) × pace_burst; 0 = no hourly pace.
    pub pace_burst: f64,
    /// Offered volume above this × the allowance in one day: blocked.
    pub block_above: f64,
    /// A block lasts the rest of its day and this many days minus one more.
    pub block_days: u64,
    /// Days in a row with more than `persist_share` of the offered volume refused after which
    /// going over the allowance again is blocked, not throttled; 0 = never.
    pub persist_days: u64,
    pub persist_share: f64,
    /// The allowance after a day with a block: × this.
    pub after_block: f64,
    pub tighten: Option<Tighten>,
    pub style: Style,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            initial: 20.0,
            growth: 0.5,
            shrink: 0.25,
            floor: 5.0,
            pace_burst: 4.0,
            block_above: 2.0,
            block_days: 1,
            persist_days: 2,
            persist_share: 0.1,
            after_block: 0.5,
            tighten: None,
            style: Style::Gmail,
        }
    }
}

/// One IP's counts for one day (or, for `hour_accepted`, the current hour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// Distinct recipients offered.
    pub offered: u64,
    /// RCPTs accepted.
    pub accepted: u64,
    /// Throttling replies given (every one, retries included).
    pub throttled: u64,
    /// Block replies given.
    pub blocked: u64,
    /// Distinct recipients refused (throttled or blocked) and not accepted later that day.
    pub refused: u64,
}

/// The receiver's answer to one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Throttle,
    Block,
}

impl Model {
    /// Messages per hour taken at most from an IP with `allowance` (`u64::MAX` without a pace).
    pub fn pace(&self, allowance: f64) -> u64 {
        if self.pace_burst <= 0.0 {
            return u64::MAX;
        }
        ((allowance / 24.0).ceil().max(1.0) * self.pace_burst).ceil() as u64
    }

    /// Rules 2 and 3: the answer to one RCPT, given the day so far (`day.offered` already
    /// counts this recipient), the hour's accepted count, the days in a row before today that
    /// were `pushed` and whether the IP is blocked.
    pub fn answer(
        &self,
        allowance: f64,
        day: &DayCounts,
        hour_accepted: u64,
        pushed_days: u64,
        blocked: bool,
    ) -> Answer {
        if blocked || day.offered as f64 > self.block_above * allowance {
            Answer::Block
        } else if (day.accepted as f64) < allowance.floor() && hour_accepted < self.pace(allowance)
        {
            Answer::Accept
        } else if self.persist_days > 0 && pushed_days >= self.persist_days {
            Answer::Block
        } else {
            Answer::Throttle
        }
    }

    /// Rule 3: a day on which more than `persist_share` of the offered volume was refused.
    pub fn pushed(&self, day: &DayCounts) -> bool {
        day.offered > 0 && day.refused as f64 > self.persist_share * day.offered as f64
    }

    /// Rule 4: the allowance for the next day after a day with `day`'s counts.
    pub fn next_allowance(&self, allowance: f64, day: &DayCounts) -> f64 {
        if day.blocked > 0 {
            (allowance * self.after_block).max(self.floor)
        } else if day.refused > 0 {
            (allowance - self.shrink * day.refused as f64).max(self.floor)
        } else {
            allowance + self.growth * day.accepted as f64
        }
    }

    /// Rule 5: the allowance on the IP's day `ip_day` given what rule 4 made of the day before.
    pub fn allowance_on(&self, ip_day: u64, from_rule4: f64) -> f64 {
        match self.tighten {
            Some(t) if t.day == ip_day => (from_rule4 * t.factor).max(self.floor),
            _ => from_rule4,
        }
    }

    fn throttle_reply(&self, ip: IpAddr) -> String {
        match self.style {
            Style::Gmail => format!(
                "421-4.7.28 [{ip}] Our system has detected an unusual rate of\n\
                 421-4.7.28 unsolicited mail originating from your IP address. To protect our\n\
                 421-4.7.28 users from spam, mail sent from your IP address has been temporarily\n\
                 421 4.7.28 rate limited. (receiver simulator)"
            ),
            Style::Microsoft => format!(
                "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP \
                 reputation. (receiver simulator)"
            ),
        }
    }

    fn block_reply(&self, ip: IpAddr) -> String {
        format!(
            "550 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org \
             (receiver simulator)"
        )
    }
}

/// One finished (or the current) day of one IP, as the receiver saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRecord {
    /// Absolute day number (`now_ms / day_ms`).
    pub day: u64,
    /// The IP's day: 0 = the first day it was seen.
    pub ip_day: u64,
    /// The allowance that day.
    pub allowance: f64,
    pub counts: DayCounts,
}

impl DayRecord {
    /// Refused replies (throttled + blocked) over all replies.
    pub fn deferred_share(&self) -> f64 {
        let c = &self.counts;
        let all = c.accepted + c.throttled + c.blocked;
        if all == 0 {
            0.0
        } else {
            (c.throttled + c.blocked) as f64 / all as f64
        }
    }
}

struct IpSim {
    first_day: u64,
    day: u64,
    allowance: f64,
    counts: DayCounts,
    /// Recipients offered today → accepted?
    seen: HashSet<String>,
    accepted_rcpts: HashSet<String>,
    hour: u64,
    hour_accepted: u64,
    blocked_until: u64,
    /// Days in a row before today that were pushed (rule 3).
    pushed_days: u64,
    history: Vec<DayRecord>,
}

impl IpSim {
    fn new(model: &Model, day: u64) -> IpSim {
        IpSim {
            first_day: day,
            day,
            allowance: model.allowance_on(0, model.initial),
            counts: DayCounts::default(),
            seen: HashSet::new(),
            accepted_rcpts: HashSet::new(),
            hour: 0,
            hour_accepted: 0,
            blocked_until: 0,
            pushed_days: 0,
            history: Vec::new(),
        }
    }

    fn record(&self) -> DayRecord {
        DayRecord {
            day: self.day,
            ip_day: self.day - self.first_day,
            allowance: self.allowance,
            counts: self.counts.clone(),
        }
    }

    /// Closes every day before `today` (idle days included).
    fn roll_to(&mut self, model: &Model, today: u64) {
        while self.day < today {
            self.counts.refused = self.seen.len() as u64 - self.accepted_rcpts.len() as u64;
            self.history.push(self.record());
            // An idle day neither adds to a run of pushed days nor ends it.
            if model.pushed(&self.counts) {
                self.pushed_days += 1;
            } else if self.counts.offered > 0 {
                self.pushed_days = 0;
            }
            let next = model.next_allowance(self.allowance, &self.counts);
            self.day += 1;
            self.allowance = model.allowance_on(self.day - self.first_day, next);
            self.counts = DayCounts::default();
            self.seen.clear();
            self.accepted_rcpts.clear();
        }
    }

    fn rcpt(&mut self, model: &Model, rcpt: &str, now_ms: u64, day_ms: u64) -> Answer {
        self.roll_to(model, now_ms / day_ms);
        let hour = now_ms / (day_ms / 24).max(1);
        if hour != self.hour {
            self.hour = hour;
            self.hour_accepted = 0;
        }
        let rcpt = rcpt.to_ascii_lowercase();
        if self.seen.insert(rcpt.clone()) {
            self.counts.offered += 1;
        }
        let blocked = self.day < self.blocked_until;
        let a = model.answer(
            self.allowance,
            &self.counts,
            self.hour_accepted,
            self.pushed_days,
            blocked,
        );
        match a {
            Answer::Accept => {
                // A message accepted again (the relay lost the connection before the end of
                // DATA and sent it again) is not more volume.
                if self.accepted_rcpts.insert(rcpt) {
                    self.counts.accepted += 1;
                    self.hour_accepted += 1;
                }
            }
            Answer::Throttle => self.counts.throttled += 1,
            Answer::Block => {
                self.counts.blocked += 1;
                if !blocked {
                    self.blocked_until = self.day + model.block_days.max(1);
                }
            }
        }
        a
    }
}

struct Sim {
    day_ms: u64,
    default: Model,
    models: BTreeMap<IpAddr, Model>,
    ips: BTreeMap<IpAddr, IpSim>,
}

impl Sim {
    fn model(&self, ip: IpAddr) -> &Model {
        self.models.get(&ip).unwrap_or(&self.default)
    }
}

/// The simulated receiver: a `Sink` whose RCPT replies come from the model of each source IP.
pub struct Receiver {
    pub sink: Sink,
    sim: Arc<Mutex<Sim>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Receiver {
    /// A receiver on `addrs` (sharing one port) with days of `day_ms` (the relay's `[warmup]
    /// day`) judging every source IP by `model`.
    pub fn start(addrs: &[IpAddr], day_ms: u64, model: Model) -> Receiver {
        Self::start_with(addrs, day_ms, model, Vec::new())
    }

    /// Like `start`, with another model for some source IPs.
    pub fn start_with(
        addrs: &[IpAddr],
        day_ms: u64,
        default: Model,
        per_ip: Vec<(IpAddr, Model)>,
    ) -> Receiver {
        let sim = Arc::new(Mutex::new(Sim {
            day_ms: day_ms.max(24),
            default,
            models: per_ip.into_iter().collect(),
            ips: BTreeMap::new(),
        }));
        let s = sim.clone();
        let sink = Sink::builder(addrs)
            .hostname("mx.receiver.test")
            .script(move |step: &Step| match &step.stage {
                Stage::RcptTo(rcpt) => {
                    let mut sim = s.lock().unwrap();
                    let (day_ms, now) = (sim.day_ms, now_ms());
                    let model = sim.model(step.peer).clone();
                    let ip = sim
                        .ips
                        .entry(step.peer)
                        .or_insert_with(|| IpSim::new(&model, now / day_ms));
                    match ip.rcpt(&model, rcpt, now, day_ms) {
                        Answer::Accept => None,
                        Answer::Throttle => Some(model.throttle_reply(step.peer)),
                        Answer::Block => Some(model.block_reply(step.peer)),
                    }
                }
                _ => None,
            })
            .start();
        Receiver { sink, sim }
    }

    /// The port shared by the receiver's addresses (the relay's `delivery.port`).
    pub fn port(&self) -> u16 {
        self.sink.port()
    }

    pub fn day_ms(&self) -> u64 {
        self.sim.lock().unwrap().day_ms
    }

    /// Every day of `ip` from its first one up to today (today's counts so far last; idle days
    /// up to today are closed first).
    pub fn days(&self, ip: IpAddr) -> Vec<DayRecord> {
        let mut sim = self.sim.lock().unwrap();
        let today = now_ms() / sim.day_ms;
        let model = sim.model(ip).clone();
        let Some(s) = sim.ips.get_mut(&ip) else {
            return Vec::new();
        };
        s.roll_to(&model, today);
        let mut v = s.history.clone();
        let mut cur = s.record();
        cur.counts.refused = s.seen.len() as u64 - s.accepted_rcpts.len() as u64;
        v.push(cur);
        v
    }

    /// Messages accepted from `ip` so far (all days).
    pub fn accepted(&self, ip: IpAddr) -> u64 {
        let sim = self.sim.lock().unwrap();
        sim.ips.get(&ip).map_or(0, |s| {
            s.history.iter().map(|d| d.counts.accepted).sum::<u64>() + s.counts.accepted
        })
    }

    /// Block replies given to `ip` so far.
    pub fn blocks(&self, ip: IpAddr) -> u64 {
        let sim = self.sim.lock().unwrap();
        sim.ips.get(&ip).map_or(0, |s| {
            s.history.iter().map(|d| d.counts.blocked).sum::<u64>() + s.counts.blocked
        })
    }
}
