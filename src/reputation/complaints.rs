//! Complaints against the pool: a traced feedback report (`feedback::Complaint`) counts in the
//! complaint rate of the IP × provider the original left from, and the complainer is
//! suppressed.
//!
//! Rules:
//! - Only user complaints count: Feedback-Type `abuse`, `fraud` or `virus` (RFC 5965 §7.3).
//!   `not-spam` (RFC 6430), `auth-failure` (RFC 6591) and `other` are passed on untouched.
//! - The rate is complaints ÷ messages the IP delivered to the provider within
//!   `complaint_window` (7 days): complaints arrive hours or days after delivery, so it is a
//!   time window, not the outcome window of the last N replies. Both counts are this relay's
//!   hourly history buckets (`history::Bucket`: `sent` by the hour of the reply, `complaints`
//!   by the hour the report arrived).
//! - Fewer than `complaint_min_delivered` (1000) delivered in the window: no verdict (one
//!   complaint on 20 messages is not a 5 % rate; at 1000 the 0.3 % line is 3 complaints).
//! - Over `max_complaint_rate` (0.3 %, Google's bulk-sender line): quarantine for that provider,
//!   cause `complaints`, offences, cool-down and probation as the other rates. Over
//!   `warn_complaint_rate` (0.1 %): a warning and a history event, once per crossing (again
//!   after the rate fell back under it).
//! - A complaint an account took the blame for (`blamed`: the login is throttled or suspended
//!   for it) is not counted against the IP (`Charge::Passed`): one customer's bad list must not
//!   burn the IPs everyone sends from. Neither is one without a source IP or provider, nor one
//!   about an IP not in this relay's pools.
//! - One incident: complaints arriving while a complaints quarantine of the IP × provider is in
//!   force are about mail sent before it: counted in its record, never a new offence. After it
//!   the window starts again at its end (read back from the history's events after a restart).
//! - The complainer (when the report names it) is suppressed, blamed or not, by `[feedback]
//!   suppress`: `sender-domain` (for the sender domain complained about; for every sender when
//!   the report names none), `farm` (every sender), `off`; for `[feedback] suppress_for`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Settings;
use super::history::{Count, Event};
use super::rates::Tracker;
use crate::pool::Cause;
use crate::reputation::complaint::{Charge, Complaint, OnComplaint};
use crate::spool::now_unix;

/// Whether a Feedback-Type is a user's complaint (module doc).
pub fn is_complaint(feedback_type: &str) -> bool {
    matches!(
        feedback_type.trim().to_ascii_lowercase().as_str(),
        "abuse" | "fraud" | "virus"
    )
}

/// Complaints and deliveries of one IP × provider within the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub complaints: u64,
    pub delivered: u64,
}

impl Rate {
    pub fn share(&self) -> f64 {
        if self.delivered == 0 {
            0.0
        } else {
            self.complaints as f64 / self.delivered as f64
        }
    }

    /// What the rate means under `s`'s thresholds.
    pub fn level(&self, s: &Settings) -> Level {
        let over = |max: f64| self.complaints as f64 > max * self.delivered as f64;
        if self.delivered < s.complaint_min_delivered.max(1) {
            Level::TooFew
        } else if over(s.max_complaint_rate) {
            Level::Over
        } else if over(s.warn_complaint_rate) {
            Level::Warning
        } else {
            Level::Fine
        }
    }

    /// The rate as evidence: "4 complaints / 1000 delivered … = 0.40% > 0.30%".
    fn evidence(&self, ip: IpAddr, provider: &str, window: &str, line: f64) -> String {
        format!(
            "{} complaints / {} delivered from {ip} to {provider} in the last {window} = {:.2}% > {:.2}%",
            self.complaints,
            self.delivered,
            100.0 * self.share(),
            100.0 * line
        )
    }
}

/// What a complaint rate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Under `complaint_min_delivered`: no verdict.
    TooFew,
    Fine,
    /// Over `warn_complaint_rate`.
    Warning,
    /// Over `max_complaint_rate`: quarantined.
    Over,
}

/// One IP × provider's complaint rate (`GET /api/reputation`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateView {
    pub ip: String,
    pub provider: String,
    pub complaints: u64,
    pub delivered: u64,
    pub rate: f64,
    pub level: Level,
    /// Unix seconds the counted window starts.
    pub since: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Counting starts here (unix s): the end of the last complaints quarantine.
    from: u64,
    warned: bool,
}

/// `[feedback] suppress`: whom a complaining recipient is suppressed for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComplainerScope {
    /// The sender domain complained about (every sender when the report names none).
    #[default]
    SenderDomain,
    /// Every sender of the farm.
    Farm,
    Off,
}

/// `[feedback] suppress_for` when not set: how long a complainer stays suppressed.
pub const DEFAULT_SUPPRESS_FOR: Duration = Duration::from_secs(365 * 86400);

/// Whom complainers are suppressed for, and how long (`[feedback] suppress`, `suppress_for`).
#[derive(Debug, Clone, Copy)]
struct Complainers {
    scope: ComplainerScope,
    for_secs: u64,
}

/// What the tracker keeps for complaints: the rates per IP × provider complained about, and
/// the complainers' suppression settings.
pub struct Rates {
    seen: Mutex<HashMap<(IpAddr, String), Seen>>,
    complainers: Mutex<Complainers>,
    /// One complaint judged at a time: two reports at once must not make two offences.
    judging: Mutex<()>,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            seen: Mutex::default(),
            complainers: Mutex::new(Complainers {
                scope: ComplainerScope::default(),
                for_secs: DEFAULT_SUPPRESS_FOR.as_secs(),
            }),
            judging: Mutex::new(()),
        }
    }
}

impl OnComplaint for Tracker {
    fn complaint(&self, c: &Complaint, blamed: bool) -> Charge {
        let queue_id = c.queue_id.as_deref().unwrap_or("");
        if !is_complaint(&c.feedback_type) {
            tracing::info!(queue_id, feedback_type = %c.feedback_type, "feedback report is not a complaint: not counted");
            return Charge::Passed;
        }
        crate::metrics::complaint(c.provider.as_deref().unwrap_or("unknown"));
        self.suppress_complainer(c);
        let (Some(ip), Some(provider)) = (c.source_ip, c.provider.as_deref()) else {
            tracing::info!(queue_id, reporter = %c.reporter, "complaint not traced to a source IP and provider: no rate counts it");
            return Charge::Passed;
        };
        if blamed {
            tracing::info!(queue_id, source_ip = %ip, provider, login = c.login.as_deref().unwrap_or(""), "complaint not counted against the IP: an account took the blame");
            return Charge::Passed;
        }
        if !self.pools.ips().contains(&ip) {
            tracing::warn!(queue_id, source_ip = %ip, provider, "complaint about an IP not in this relay's pools: not counted");
            return Charge::Passed;
        }
        self.count_complaint(ip, provider, queue_id);
        Charge::Counted
    }
}

impl Tracker {
    /// Counts one complaint against `ip` × `provider` and judges the rate (module doc).
    fn count_complaint(&self, ip: IpAddr, provider: &str, queue_id: &str) {
        // Held until the quarantine is stored: the next one sees it in force.
        let _one = self.complaints.judging.lock().expect("lock");
        let now = now_unix();
        let key = (ip, provider.to_string(), Cause::Complaints);
        let in_force = self
            .pools
            .holds()
            .into_iter()
            .find(|(i, h)| *i == ip && h.scope == provider && h.cause == Cause::Complaints);
        if let Some((_, hold)) = in_force {
            let n = self.pools.count_in_incident(&key, hold.since, hold.offence);
            tracing::info!(queue_id, source_ip = %ip, provider, complaints = n, "complaint counted in the quarantine's incident (no new offence)");
            return;
        }
        self.history.count(ip, provider, Count::Complaint);
        let settings = self.settings.load_full();
        let (rate, _) = self.complaint_rate(ip, provider, now, &settings);
        let level = rate.level(&settings);
        tracing::info!(queue_id, source_ip = %ip, provider, complaints = rate.complaints, delivered = rate.delivered, level = ?level, "complaint counted");
        let window = humantime::format_duration(settings.complaint_window.0).to_string();
        let crossed = self.note_warning(ip, provider, level);
        if crossed && level == Level::Warning {
            let evidence = rate.evidence(ip, provider, &window, settings.warn_complaint_rate);
            tracing::warn!(source_ip = %ip, provider, evidence = %evidence, "complaint rate over the warning line");
            self.history.event(
                ip,
                &Event {
                    at: now,
                    event: "warning".into(),
                    scope: provider.to_string(),
                    cause: Cause::Complaints.to_string(),
                    reason: "complaint rate".into(),
                    evidence,
                    until: None,
                },
            );
        }
        if level != Level::Over {
            return;
        }
        let evidence = rate.evidence(ip, provider, &window, settings.max_complaint_rate);
        let reason = "complaint rate".to_string();
        if let Some(until) = self.offend(ip, provider, Cause::Complaints, reason, evidence) {
            let mut rates = self.complaints.seen.lock().expect("lock");
            let seen = rates.entry((ip, provider.to_string())).or_default();
            seen.from = until;
            seen.warned = false;
        }
    }

    /// The rate of `ip` × `provider` now and when its window starts.
    fn complaint_rate(&self, ip: IpAddr, provider: &str, now: u64, s: &Settings) -> (Rate, u64) {
        let start = now.saturating_sub(s.complaint_window.0.as_secs());
        let known = self
            .complaints
            .seen
            .lock()
            .expect("lock")
            .get(&(ip, provider.to_string()))
            .map(|seen| seen.from);
        // First time since the start: the end of the last complaints quarantine, if any.
        let from = known.unwrap_or_else(|| self.last_complaints_quarantine(ip, provider, start));
        if known.is_none() {
            let mut rates = self.complaints.seen.lock().expect("lock");
            rates.entry((ip, provider.to_string())).or_default().from = from;
        }
        // Over before its time (an operator reinstated it): counting starts now.
        let from = from.min(now).max(start);
        let b = self.history.window(ip, provider, from);
        let rate = Rate {
            complaints: b.complaints,
            delivered: b.sent,
        };
        crate::metrics::complaint_rate(&ip.to_string(), provider, rate.share());
        (rate, from)
    }

    /// When the last complaints quarantine of `ip` × `provider` ended (or ends), from the
    /// history's events since `since`; 0 when none.
    fn last_complaints_quarantine(&self, ip: IpAddr, provider: &str, since: u64) -> u64 {
        let cause = Cause::Complaints.to_string();
        self.history
            .local_events(ip, since)
            .into_iter()
            .filter(|e| e.scope == provider && e.cause == cause)
            .filter(|e| matches!(e.event.as_str(), "quarantined" | "extended"))
            .map(|e| e.until.unwrap_or(e.at))
            .max()
            .unwrap_or(0)
    }

    /// Whether `level` crossed the warning line just now (and remembers it).
    fn note_warning(&self, ip: IpAddr, provider: &str, level: Level) -> bool {
        let mut rates = self.complaints.seen.lock().expect("lock");
        let seen = rates.entry((ip, provider.to_string())).or_default();
        let over = matches!(level, Level::Warning | Level::Over);
        let crossed = over && !seen.warned;
        seen.warned = over;
        crossed
    }

    /// Start and reload: `[feedback] suppress` and `suppress_for` (their defaults without
    /// `[feedback]`).
    pub fn set_complainers(&self, scope: ComplainerScope, suppress_for: Duration) {
        let c = Complainers {
            scope,
            for_secs: suppress_for.as_secs(),
        };
        *self.complaints.complainers.lock().expect("lock") = c;
    }

    /// Suppresses the complaining recipient by `[feedback] suppress` (module doc).
    fn suppress_complainer(&self, c: &Complaint) {
        let complainers = *self.complaints.complainers.lock().expect("lock");
        let Some(recipient) = c.recipient.as_deref().filter(|r| r.contains('@')) else {
            return;
        };
        let sender_domain = match complainers.scope {
            ComplainerScope::Off => return,
            ComplainerScope::Farm => None,
            ComplainerScope::SenderDomain => c.sender_domain.as_deref(),
        };
        let reason = format!("complained (feedback report from {})", c.reporter);
        self.suppressions
            .add_complainer(recipient, sender_domain, &reason, complainers.for_secs);
    }

    /// The complaint rates of every IP × provider complained about since the start.
    pub fn complaint_rates(&self) -> Vec<RateView> {
        let keys: Vec<(IpAddr, String)> = {
            let rates = self.complaints.seen.lock().expect("lock");
            rates.keys().cloned().collect()
        };
        let settings = self.settings.load_full();
        let now = now_unix();
        let mut views: Vec<RateView> = keys
            .into_iter()
            .map(|(ip, provider)| {
                let (rate, since) = self.complaint_rate(ip, &provider, now, &settings);
                RateView {
                    ip: ip.to_string(),
                    provider,
                    complaints: rate.complaints,
                    delivered: rate.delivered,
                    rate: rate.share(),
                    level: rate.level(&settings),
                    since,
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.ip, &a.provider).cmp(&(&b.ip, &b.provider)));
        views
    }
}

#[cfg(test)]
mod tests;
