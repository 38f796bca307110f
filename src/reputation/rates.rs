//! What remote replies say about each IP × provider.
//!
//! Rules:
//! - The classifier's signal decides (`Classification::signal`): a block reply counts against
//!   the IP (quarantine after `block_threshold`); a throttling reply slows it (the pool halves
//!   its hourly pace, `Pools::throttled`) and is a deferral for the recipient, never a block and
//!   never in the deferral rate; throttling that goes on after `throttle_cuts` cuts in a day
//!   quarantines (cause `throttling`). For unlisted destinations (provider `other`, shared by
//!   all of them) a throttling reply only pauses for the back-off: no pace cut, no quarantine.
//! - A sliding window of the other outcomes quarantines on a hard-bounce rate (bad-recipient,
//!   mailbox-full and dns excluded) or a deferral rate over its threshold. Bad-recipient rates
//!   per sender are list-hygiene warnings, not the IP's fault.
//! - One incident is one offence: a reply to a delivery that began (`sent_at_ms`) before the
//!   latest quarantine covering that IP × provider ended (any cause, its scope or `all`) belongs
//!   to that quarantine. It is counted in the record ("7 block replies in one incident"), never
//!   a new offence, and its outcome is not pushed into the window.
//! - Offences: the cool-down doubles per offence, up to `max_cooldown`; the next offence number
//!   is one past the larger of this relay's count and the last record's (`Hold::offence`, shared
//!   with the farm), so relays seeing one block at once write the same offence. A clean stretch
//!   of twice `max_cooldown` forgives. A failed probe during probation is a new offence.
//! - The ramp hears every reply (`Pools::ramp_outcome`): accepted, throttled, deferred,
//!   bounced, and blocked once per quarantine (block replies that make none count as deferred).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::outcome::Status;
use crate::outcome::classify::{Class, Classification, Classifier, RuleError, Signal};
use crate::pool::throttle::PaceCut;
use crate::pool::{Cause, Hold, HoldKey, Pools, RampOutcome};
use crate::reputation::Settings;
use crate::reputation::suppress::{Suppressions, Why};
use crate::spool::RemoteReply;

/// Senders tracked for list hygiene at most.
const MAX_SENDERS: usize = 10_000;

/// Reply texts of recipients moved off a blocked IP start with this (for people reading the
/// queue; the meaning travels as `Status::RetryElsewhere`).
pub const RETRY_ELSEWHERE: &str = "pool: retrying from another source IP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sent,
    Deferred,
    HardBounce,
    BadRecipient,
    RecipientSide,
}

/// The class a reply counts as in `poolrelay_delivery_outcomes_total`.
fn metric_class(kind: Kind, signal: Signal) -> crate::metrics::Class {
    use crate::metrics::Class;
    match (signal, kind) {
        (Signal::Block, _) => Class::Block,
        (Signal::Throttle, _) => Class::Throttle,
        (_, Kind::Sent) => Class::Sent,
        (_, Kind::Deferred) => Class::Deferred,
        _ => Class::Bounced,
    }
}

/// The class a reply counts as in the history (a throttling reply is a deferral there).
fn history_count(kind: Kind, signal: Signal) -> super::history::Count {
    use super::history::Count;
    match (signal, kind) {
        (Signal::Block, _) => Count::Block,
        (Signal::Throttle, _) => Count::Deferred,
        (_, Kind::Sent) => Count::Sent,
        (_, Kind::Deferred) => Count::Deferred,
        (_, Kind::HardBounce) => Count::HardBounce,
        _ => Count::RecipientBounce,
    }
}

/// What a reply is for the ramp; `None` for a block reply that made a quarantine (its
/// `Blocked` is sent once, for the quarantine).
fn ramp_of(kind: Kind, signal: Signal, quarantined: bool) -> Option<RampOutcome> {
    Some(match (signal, kind) {
        (Signal::Block, _) if quarantined => return None,
        (Signal::Block, _) => RampOutcome::Deferred,
        (Signal::Throttle, _) => RampOutcome::Throttled,
        (_, Kind::Sent) => RampOutcome::Accepted,
        (_, Kind::Deferred) => RampOutcome::Deferred,
        _ => RampOutcome::Bounced,
    })
}

/// What a reply means for its recipient. A block is not the recipient's fault: never a bounce.
/// Known providers: again at once from another IP (this one is quarantined for them, or soon
/// will be), the reply rewritten to say so; others: on the retry schedule, so a destination
/// that blocks every IP is not asked again every second.
fn retry_status(
    signal: Signal,
    known: bool,
    ip: IpAddr,
    provider: &str,
    c: &Classification,
    reply: &mut RemoteReply,
) -> Status {
    if signal != Signal::Block {
        return Status::of_code(reply.code);
    }
    let what = format!(
        "{ip} got a {} reply from {provider}: {} {} {}",
        c.class, reply.code, reply.status, reply.text
    );
    reply.text = if known {
        format!("{RETRY_ELSEWHERE} ({what})")
    } else {
        format!("deferred, not the recipient's fault ({what})")
    };
    reply.code = 451;
    reply.status = "4.7.0".to_string();
    if known {
        Status::RetryElsewhere
    } else {
        Status::Deferred
    }
}

/// The reply as evidence: code, status, text and the rule that read it.
fn what(reply: &RemoteReply, c: &Classification) -> String {
    format!(
        "{} {} {} (rule {})",
        reply.code, reply.status, reply.text, c.rule
    )
}

/// What `Tracker::judge` made of a reply.
enum Judged {
    /// It belongs to this quarantine's incident.
    InIncident(Box<(HoldKey, Hold)>),
    Judged {
        quarantined: bool,
    },
}

#[derive(Default)]
struct Window {
    outcomes: VecDeque<Kind>,
    /// Block/reputation replies since the last quarantine.
    blocks: u32,
    /// Quarantines so far (the cool-down doubles with each)…
    offences: u32,
    /// … forgiven after a clean stretch of twice `max_cooldown` since the last (unix s).
    last_offence: u64,
    /// When the last quarantine ends (unix s; 0: none). From then until the window is full
    /// again the IP is on probation: the rates count after `probe_samples` outcomes.
    probe_from: u64,
}

impl Window {
    /// One outcome into the sliding window of `size`.
    fn push(&mut self, kind: Kind, size: usize) {
        self.outcomes.push_back(kind);
        while self.outcomes.len() > size.max(1) {
            self.outcomes.pop_front();
        }
    }
}

type Windows = Mutex<HashMap<(IpAddr, String), Window>>;

/// One IP × provider's outcome window (`GET /api/reputation`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowView {
    pub ip: String,
    pub provider: String,
    pub samples: usize,
    pub sent: usize,
    pub deferred: usize,
    pub hard_bounces: usize,
    pub bad_recipients: usize,
    pub recipient_side: usize,
    pub block_replies: u32,
    pub offences: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowsView {
    pub windows: Vec<WindowView>,
    /// Complaint rates of the IP × providers complained about since the relay started.
    #[serde(default)]
    pub complaint_rates: Vec<super::complaints::RateView>,
}

#[derive(Default)]
struct Hygiene {
    outcomes: VecDeque<bool>,
    warned: bool,
}

pub struct Tracker {
    /// Rules and thresholds: replaced on reload; windows and quarantines stay.
    classifier: ArcSwap<Classifier>,
    pub(super) settings: ArcSwap<Settings>,
    pub(super) pools: Arc<Pools>,
    windows: Windows,
    senders: Mutex<HashMap<String, Hygiene>>,
    pub(super) suppressions: Arc<Suppressions>,
    /// Hourly outcome counts per IP × provider (in memory only unless `with_history`).
    pub(super) history: Arc<super::history::History>,
    /// What the complaint rates last were (`reputation::complaints`).
    pub(super) complaints: super::complaints::Rates,
    /// Per login and sender domain (counting only, in memory, unless `with_accounts`).
    accounts: Arc<super::accounts::Accounts>,
}

/// What delivery does with one reply.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub classification: Classification,
    /// What the reply means for the recipient (a block reply: not its fault, never a bounce).
    pub status: Status,
}

impl Tracker {
    pub fn new(
        settings: &Settings,
        pools: Arc<Pools>,
        suppressions: Arc<Suppressions>,
    ) -> Result<Tracker, RuleError> {
        Ok(Tracker {
            classifier: ArcSwap::from_pointee(settings.classifier()?),
            settings: ArcSwap::from_pointee(settings.clone()),
            pools,
            windows: Mutex::default(),
            senders: Mutex::new(HashMap::new()),
            suppressions,
            history: Arc::new(super::history::History::new(None)),
            accounts: Arc::new(super::accounts::Accounts::new(None, None)),
            complaints: Default::default(),
        })
    }

    /// Counts every classified reply into `history` too.
    pub fn with_history(mut self, history: Arc<super::history::History>) -> Tracker {
        self.history = history;
        self
    }

    /// Counts each recipient's reply for its login and sender domain too.
    pub fn with_accounts(mut self, accounts: Arc<super::accounts::Accounts>) -> Tracker {
        self.accounts = accounts;
        self
    }

    pub fn accounts(&self) -> &Arc<super::accounts::Accounts> {
        &self.accounts
    }

    pub fn history(&self) -> &Arc<super::history::History> {
        &self.history
    }

    pub fn suppressions(&self) -> &Arc<Suppressions> {
        &self.suppressions
    }

    /// Per IP × provider: what the window holds now, block replies, offences.
    pub fn status(&self) -> WindowsView {
        let w = self.windows.lock().expect("lock");
        let mut windows: Vec<WindowView> = w
            .iter()
            .map(|((ip, provider), w)| {
                let count = |k: Kind| w.outcomes.iter().filter(|o| **o == k).count();
                WindowView {
                    ip: ip.to_string(),
                    provider: provider.clone(),
                    samples: w.outcomes.len(),
                    sent: count(Kind::Sent),
                    deferred: count(Kind::Deferred),
                    hard_bounces: count(Kind::HardBounce),
                    bad_recipients: count(Kind::BadRecipient),
                    recipient_side: count(Kind::RecipientSide),
                    block_replies: w.blocks,
                    offences: w.offences,
                }
            })
            .collect();
        windows.sort_by(|a, b| (&a.ip, &a.provider).cmp(&(&b.ip, &b.provider)));
        drop(w);
        WindowsView {
            windows,
            complaint_rates: self.complaint_rates(),
        }
    }

    pub fn classifier(&self) -> Arc<Classifier> {
        self.classifier.load_full()
    }

    /// Reload: new classification rules and rate thresholds for the next replies.
    pub fn reload(&self, settings: &Settings) -> Result<(), RuleError> {
        let classifier = settings.classifier()?;
        self.classifier.store(Arc::new(classifier));
        self.settings.store(Arc::new(settings.clone()));
        Ok(())
    }

    /// Classifies one remote reply to `recipient` (empty: a reply to the whole session) sent from
    /// `ip` to `provider` by a delivery that began at `sent_at_ms` (unix millis), counts it, and
    /// quarantines the IP × provider when the reply or the rates say so (module doc). A block
    /// reply is rewritten into a deferral: it is not the recipient's fault, and the recipient
    /// goes again at once from another IP (or waits for one). A bad-recipient hard bounce
    /// suppresses the address.
    pub fn observe(
        &self,
        ip: IpAddr,
        provider: &str,
        sender: &str,
        recipient: &str,
        sent_at_ms: u64,
        reply: &mut RemoteReply,
    ) -> Verdict {
        // Successes need no rules (the hot path).
        let c = if reply.code < 400 {
            Classification {
                class: Class::Other,
                scope: crate::outcome::classify::Scope::Recipient,
                provider: None,
                rule: "success".into(),
            }
        } else {
            self.classifier
                .load()
                .classify(reply.code, &reply.status, &reply.text)
        };
        let signal = c.signal(reply.code, &reply.status);
        let kind = match (reply.code, c.class) {
            (200..=399, _) => Kind::Sent,
            (500..=599, Class::BadRecipient) => Kind::BadRecipient,
            // The recipient's side (full mailbox, domain gone): not the IP's doing either.
            (500..=599, Class::MailboxFull | Class::Dns) => Kind::RecipientSide,
            (500..=599, _) => Kind::HardBounce,
            _ => Kind::Deferred,
        };
        if reply.code >= 400 {
            tracing::info!(source_ip = %ip, provider = %provider, class = %c.class, signal = %signal, rule = %c.rule, reply = %format!("{} {} {}", reply.code, reply.status, reply.text), "reply classified");
        }
        if matches!(kind, Kind::Sent | Kind::BadRecipient | Kind::HardBounce) {
            self.hygiene(sender, kind == Kind::BadRecipient);
        }
        let suppress_for = self.settings.load().suppress_for.0.as_secs();
        if kind == Kind::BadRecipient && !recipient.is_empty() && suppress_for > 0 {
            let why = format!("{} {} {}", reply.code, reply.status, reply.text);
            self.suppressions.add(recipient, &why, suppress_for);
        }
        crate::metrics::outcome(&ip.to_string(), provider, metric_class(kind, signal));
        self.history
            .count(ip, provider, history_count(kind, signal));
        let known = provider != crate::pool::provider::OTHER;
        let quarantined = match self.judge(ip, provider, kind, signal, known, sent_at_ms, reply, &c)
        {
            Judged::InIncident(of) => {
                self.in_incident(ip, provider, &of.0, &of.1, signal);
                false
            }
            Judged::Judged { quarantined } => quarantined,
        };
        for o in ramp_of(kind, signal, quarantined)
            .into_iter()
            .chain(quarantined.then_some(RampOutcome::Blocked))
        {
            self.pools.ramp_outcome(ip, provider, sent_at_ms, o);
        }
        let status = retry_status(signal, known, ip, provider, &c, reply);
        Verdict {
            classification: c,
            status,
        }
    }

    /// Whether the reply belongs to a quarantine's incident; if not, counts it and quarantines
    /// when it makes a new offence. One reply at a time decides (under the windows' lock, the
    /// quarantine put in the pool's memory before it is released; stored after): two replies
    /// at once cannot both start one.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        ip: IpAddr,
        provider: &str,
        kind: Kind,
        signal: Signal,
        known: bool,
        sent_at_ms: u64,
        reply: &RemoteReply,
        c: &Classification,
    ) -> Judged {
        let settings = self.settings.load();
        let now = crate::spool::now_unix();
        let mut windows = self.windows.lock().expect("lock");
        let incident = self.pools.incident(ip, provider, sent_at_ms);
        if let Some(of) = incident.of {
            return Judged::InIncident(Box::new(of));
        }
        // Unlisted destinations share "other": one of them throttling gets the back-off
        // pause only, no pace cut for all the others (and so no throttling quarantine).
        let pace = match signal {
            Signal::Throttle if known => {
                Some(
                    self.pools
                        .throttled(ip, provider, sent_at_ms, reply, settings.throttle_cuts),
                )
            }
            Signal::Throttle => {
                self.pools.back_off(ip, provider, reply);
                None
            }
            _ => None,
        };
        // The pool keeps probation across restarts; the window may not know of it. Only the
        // window's outcomes are probes (a throttling reply never ends probation).
        let on_probation = signal == Signal::None && self.pools.in_probation(ip, provider);
        let w = windows.entry((ip, provider.to_string())).or_default();
        if on_probation && w.probe_from == 0 {
            w.probe_from = now;
        }
        let why = match (signal, pace) {
            (Signal::Block, _) => {
                w.blocks += 1;
                // Destinations outside the provider table share one name ("other"): one of
                // them blocking an IP must not take it out for all the others.
                (known && w.blocks >= settings.block_threshold.max(1)).then(|| {
                    let reason = format!("{} reply", c.class);
                    (Cause::BlockReply, reason, what(reply, c), w.blocks)
                })
            }
            (_, Some(PaceCut::Persistent { cuts })) if known => Some((
                Cause::Throttling,
                "throttling".to_string(),
                format!("{}, after {cuts} pace cuts today", what(reply, c)),
                1,
            )),
            // Slowed, not judged: a throttling reply is not in the deferral rate.
            (Signal::Throttle, _) => None,
            (Signal::None, _) => {
                w.push(kind, settings.window);
                None
            }
        };
        let why = why.or_else(|| {
            self.rate_verdict(w, now)
                .map(|(cause, reason, evidence)| (cause, reason, evidence, 0))
        });
        // Enough probes judged and none failed: the trickle ends.
        let probes = settings.probe_samples.clamp(1, settings.min_samples.max(1));
        let probe_passed = on_probation && why.is_none() && w.outcomes.len() >= probes;
        let quarantined = why.is_some();
        let mut written = None;
        if let Some((cause, reason, evidence, replies)) = why {
            let (number, cool) = self.next_offence(w, &incident, now);
            let o = incident::Offence {
                cause,
                reason,
                evidence,
                replies,
                number,
                cool,
            };
            written = self.quarantine(ip, provider, o);
        }
        drop(windows);
        // Disk and farm after the lock: other replies need not wait out the commits.
        if let Some(w) = written
            && let Err(e) = self.pools.persist_holds(w)
        {
            tracing::error!(source_ip = %ip, error = %e, "cannot store a quarantine");
        }
        if probe_passed && let Err(e) = self.pools.end_probation(ip, provider) {
            tracing::error!(source_ip = %ip, error = %e, "cannot end probation");
        }
        Judged::Judged { quarantined }
    }

    /// The immediate failure for a suppressed recipient of mail from `sender_domains` (the
    /// From: and envelope sender domains), saying why and how to lift it.
    pub fn suppressed(&self, recipient: &str, sender_domains: &[&str]) -> Option<RemoteReply> {
        let e = self.suppressions.get_for(recipient, sender_domains)?;
        let date = |t: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
        };
        let (status, why, lift) = match (&e.why, &e.sender_domain) {
            (Why::BadRecipient, _) => ("5.1.1", "it bounced as unknown", String::new()),
            (Why::Complained, Some(d)) => (
                "5.7.1",
                "its owner reported mail from this sender domain as spam",
                format!(" --sender-domain {d}"),
            ),
            (Why::Complained, None) => (
                "5.7.1",
                "its owner reported our mail as spam",
                String::new(),
            ),
        };
        let scope = match &e.sender_domain {
            Some(d) => format!(" for mail from {d}"),
            None => String::new(),
        };
        Some(RemoteReply {
            code: 550,
            status: status.into(),
            text: format!(
                "recipient suppressed{scope} until {}: {why} on {} (\"{}\"); lift with `poolrelay suppression remove {recipient}{lift}`",
                date(e.until),
                date(e.since),
                e.reason
            ),
            host: String::new(),
            addr: String::new(),
            source_ip: String::new(),
        })
    }

    /// Hard-bounce or deferral rate over its threshold with enough samples.
    fn rate_verdict(&self, w: &mut Window, now: u64) -> Option<(Cause, String, String)> {
        let n = w.outcomes.len();
        let min = self.settings.load().min_samples.max(1);
        if w.probe_from != 0 && n >= min {
            w.probe_from = 0; // probation over
        }
        // Back from a quarantine: a few outcomes decide whether it is extended.
        let probing = w.probe_from != 0 && now >= w.probe_from;
        let min = if probing {
            self.settings.load().probe_samples.clamp(1, min)
        } else {
            min
        };
        if n < min {
            return None;
        }
        let count = |k: Kind| w.outcomes.iter().filter(|o| **o == k).count();
        let (hard, deferred) = (count(Kind::HardBounce), count(Kind::Deferred));
        let pct = |x: usize| 100.0 * x as f64 / n as f64;
        if hard as f64 > self.settings.load().max_bounce_rate * n as f64 {
            return Some((
                Cause::BounceRate,
                "hard-bounce rate".into(),
                format!(
                    "{hard} hard bounces (bad recipients not counted) in the last {n} outcomes = {:.1}% > {:.1}%",
                    pct(hard),
                    100.0 * self.settings.load().max_bounce_rate
                ),
            ));
        }
        if deferred as f64 > self.settings.load().max_deferral_rate * n as f64 {
            return Some((
                Cause::DeferralRate,
                "deferral rate".into(),
                format!(
                    "{deferred} deferrals in the last {n} outcomes = {:.1}% > {:.1}%",
                    pct(deferred),
                    100.0 * self.settings.load().max_deferral_rate
                ),
            ));
        }
        None
    }

    /// Bad-recipient share per sender (authenticated user, or envelope sender domain): a warning to
    /// clean the list, logged when it crosses the threshold (again after it fell back).
    fn hygiene(&self, sender: &str, bad: bool) {
        // An envelope sender counts by its domain (VERP addresses are unique per message); an
        // authenticated user by name.
        let key = match sender.rsplit_once('@') {
            Some((_, domain)) => domain.to_ascii_lowercase(),
            None => sender.to_ascii_lowercase(),
        };
        let mut senders = self.senders.lock().expect("lock");
        if senders.len() >= MAX_SENDERS && !senders.contains_key(&key) {
            // Bounded memory: forget one sender that is not being warned about.
            if let Some(k) = senders
                .iter()
                .find(|(_, h)| !h.warned)
                .map(|(k, _)| k.clone())
            {
                senders.remove(&k);
            }
        }
        let sender = key.as_str();
        let h = senders.entry(key.clone()).or_default();
        h.outcomes.push_back(bad);
        while h.outcomes.len() > self.settings.load().window.max(1) {
            h.outcomes.pop_front();
        }
        let n = h.outcomes.len();
        let bad_n = h.outcomes.iter().filter(|b| **b).count();
        let over = n >= self.settings.load().min_samples.max(1)
            && bad_n as f64 > self.settings.load().bad_recipient_warning * n as f64;
        if over && !h.warned {
            tracing::warn!(sender = %sender, bad_recipients = bad_n, of = n, rate = %format!("{:.1}%", 100.0 * bad_n as f64 / n as f64), "list hygiene: many unknown recipients from this sender");
        }
        h.warned = over;
    }
}

mod incident;
#[cfg(test)]
mod tests;
