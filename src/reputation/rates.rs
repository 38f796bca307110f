//! What remote replies say about each IP × provider: block/reputation replies quarantine at once
//! (after `block_threshold`), and a sliding window of outcomes quarantines on a hard-bounce rate
//! (bad-recipient, mailbox-full and dns excluded) or deferral rate over its threshold. Bad-recipient rates per sender
//! are list-hygiene warnings, not the IP's fault. Quarantines end after a cool-down that doubles
//! for repeat offenders; mail then probes the IP again, and a new offence quarantines it longer.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::outcome::Status;
use crate::outcome::classify::{Class, Classification, Classifier};
use crate::pool::{Cause, Pools, Scope};
use crate::reputation::Settings;
use crate::reputation::suppress::Suppressions;
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

/// The class a reply counts as in `poolrelay_delivery_outcomes_total` and the history.
fn metric_class(kind: Kind, blames_ip: bool) -> crate::metrics::Class {
    use crate::metrics::Class;
    match kind {
        _ if blames_ip => Class::Block,
        Kind::Sent => Class::Sent,
        Kind::Deferred => Class::Deferred,
        Kind::HardBounce | Kind::BadRecipient | Kind::RecipientSide => Class::Bounced,
    }
}

fn history_count(kind: Kind, blames_ip: bool) -> super::history::Count {
    use super::history::Count;
    match kind {
        _ if blames_ip => Count::Block,
        Kind::Sent => Count::Sent,
        Kind::Deferred => Count::Deferred,
        Kind::HardBounce => Count::HardBounce,
        Kind::BadRecipient | Kind::RecipientSide => Count::RecipientBounce,
    }
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
}

#[derive(Default)]
struct Hygiene {
    outcomes: VecDeque<bool>,
    warned: bool,
}

pub struct Tracker {
    /// Rules and thresholds: replaced on reload; windows and quarantines stay.
    classifier: ArcSwap<Classifier>,
    settings: ArcSwap<Settings>,
    pools: Arc<Pools>,
    windows: Windows,
    senders: Mutex<HashMap<String, Hygiene>>,
    suppressions: Arc<Suppressions>,
    /// Hourly outcome counts per IP × provider (in memory only unless `with_history`).
    history: Arc<super::history::History>,
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
    ) -> Result<Tracker, String> {
        Ok(Tracker {
            classifier: ArcSwap::from_pointee(settings.classifier()?),
            settings: ArcSwap::from_pointee(settings.clone()),
            pools,
            windows: Mutex::default(),
            senders: Mutex::new(HashMap::new()),
            suppressions,
            history: Arc::new(super::history::History::new(None)),
        })
    }

    /// Counts every classified reply into `history` too.
    pub fn with_history(mut self, history: Arc<super::history::History>) -> Tracker {
        self.history = history;
        self
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
        WindowsView { windows }
    }

    pub fn classifier(&self) -> Arc<Classifier> {
        self.classifier.load_full()
    }

    /// Reload: new classification rules and rate thresholds for the next replies.
    pub fn reload(&self, settings: &Settings) -> Result<(), String> {
        let classifier = settings.classifier()?;
        self.classifier.store(Arc::new(classifier));
        self.settings.store(Arc::new(settings.clone()));
        Ok(())
    }

    /// Classifies one remote reply to `recipient` (empty: a reply to the whole session) sent from
    /// `ip` to `provider`, counts it, and quarantines the IP × provider when the reply or the
    /// rates say so. A block/reputation reply is rewritten into a deferral: it is not the
    /// recipient's fault, and the recipient goes again at once from another IP (or waits for
    /// one). A bad-recipient hard bounce suppresses the address.
    pub fn observe(
        &self,
        ip: IpAddr,
        provider: &str,
        sender: &str,
        recipient: &str,
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
        let kind = match (reply.code, c.class) {
            (200..=399, _) => Kind::Sent,
            (500..=599, Class::BadRecipient) => Kind::BadRecipient,
            // The recipient's side (full mailbox, domain gone): not the IP's doing either.
            (500..=599, Class::MailboxFull | Class::Dns) => Kind::RecipientSide,
            (500..=599, _) => Kind::HardBounce,
            _ => Kind::Deferred,
        };
        if reply.code >= 400 {
            tracing::info!(source_ip = %ip, provider = %provider, class = %c.class, rule = %c.rule, reply = %format!("{} {} {}", reply.code, reply.status, reply.text), "reply classified");
        }
        if matches!(kind, Kind::Sent | Kind::BadRecipient | Kind::HardBounce) {
            self.hygiene(sender, kind == Kind::BadRecipient);
        }
        let suppress_for = self.settings.load().suppress_for.0.as_secs();
        if kind == Kind::BadRecipient && !recipient.is_empty() && suppress_for > 0 {
            let why = format!("{} {} {}", reply.code, reply.status, reply.text);
            self.suppressions.add(recipient, &why, suppress_for);
        }
        let blames_ip = c.class.blames_ip() && reply.code >= 400;
        crate::metrics::outcome(&ip.to_string(), provider, metric_class(kind, blames_ip));
        self.history
            .count(ip, provider, history_count(kind, blames_ip));
        let known = provider != crate::pool::provider::OTHER;
        // The pool keeps probation across restarts; the window may not know of it.
        let on_probation = !blames_ip && self.pools.in_probation(ip, provider);
        let probe_passed;
        let quarantine = {
            let mut windows = self.windows.lock().expect("lock");
            let w = windows.entry((ip, provider.to_string())).or_default();
            if on_probation && w.probe_from == 0 {
                w.probe_from = crate::spool::now_unix();
            }
            if blames_ip {
                w.blocks += 1;
            } else {
                w.outcomes.push_back(kind);
                while w.outcomes.len() > self.settings.load().window.max(1) {
                    w.outcomes.pop_front();
                }
            }
            // Destinations outside the provider table share one name ("other"): one of them
            // blocking an IP must not take it out for all the others.
            let why =
                if blames_ip && known && w.blocks >= self.settings.load().block_threshold.max(1) {
                    Some((
                        Cause::BlockReply,
                        format!("{} reply", c.class),
                        format!(
                            "{} {} {} (rule {}, {} such replies)",
                            reply.code, reply.status, reply.text, c.rule, w.blocks
                        ),
                    ))
                } else {
                    self.rate_verdict(w, crate::spool::now_unix())
                };
            // Enough probes judged and none failed: the trickle ends.
            let probes = self
                .settings
                .load()
                .probe_samples
                .clamp(1, self.settings.load().min_samples.max(1));
            probe_passed = on_probation && why.is_none() && w.outcomes.len() >= probes;
            why.map(|(cause, reason, evidence)| {
                let now = crate::spool::now_unix();
                if now.saturating_sub(w.last_offence)
                    > 2 * self.settings.load().max_cooldown.0.as_secs()
                {
                    w.offences = 0;
                }
                w.last_offence = now;
                w.offences += 1;
                w.blocks = 0;
                w.outcomes.clear();
                let factor = 1u32 << (w.offences - 1).min(16);
                let cool = self
                    .settings
                    .load()
                    .cooldown
                    .0
                    .saturating_mul(factor)
                    .min(self.settings.load().max_cooldown.0);
                w.probe_from = now + cool.as_secs().max(1);
                (cause, reason, evidence, cool, w.offences)
            })
        };
        if probe_passed && let Err(e) = self.pools.end_probation(ip, provider) {
            tracing::error!(source_ip = %ip, error = %e, "cannot end probation");
        }
        if let Some((cause, reason, evidence, cool, offences)) = quarantine {
            let until = crate::spool::now_unix() + cool.as_secs().max(1);
            tracing::warn!(source_ip = %ip, provider = %provider, reason = %reason, offences, cooldown = %humantime::format_duration(cool), "quarantining IP for provider");
            if let Err(e) = self.pools.quarantine(
                ip,
                Scope::Provider(provider.to_string()),
                cause,
                &reason,
                &evidence,
                Some(until),
            ) {
                tracing::error!(source_ip = %ip, error = %e, "cannot quarantine");
            }
        }
        // Not the recipient's fault: never a bounce. Known providers: again at once (the IP is
        // quarantined for them, or soon will be); others: on the retry schedule, so a
        // destination that blocks every IP is not asked again every second.
        let retry_elsewhere = blames_ip && known;
        let status = match (blames_ip, retry_elsewhere) {
            (false, _) => Status::of_code(reply.code),
            (true, true) => Status::RetryElsewhere,
            (true, false) => Status::Deferred,
        };
        if blames_ip {
            let what = format!(
                "{ip} got a {} reply from {provider}: {} {} {}",
                c.class, reply.code, reply.status, reply.text
            );
            reply.text = if retry_elsewhere {
                format!("{RETRY_ELSEWHERE} ({what})")
            } else {
                format!("deferred, not the recipient's fault ({what})")
            };
            reply.code = 451;
            reply.status = "4.7.0".to_string();
        }
        Verdict {
            classification: c,
            status,
        }
    }

    /// The immediate failure for a suppressed recipient, saying why and how to lift it.
    pub fn suppressed(&self, recipient: &str) -> Option<RemoteReply> {
        let e = self.suppressions.get(recipient)?;
        let date = |t: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
        };
        Some(RemoteReply {
            code: 550,
            status: "5.1.1".into(),
            text: format!(
                "recipient suppressed until {}: it bounced as unknown on {} (\"{}\"); lift with `poolrelay suppression remove {recipient}`",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tracker(extra: &str) -> Tracker {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"p\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o\"\n[reputation]\n{extra}"
        );
        let config = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
        let pools = Arc::new(Pools::new(&config, None).unwrap());
        let dir =
            std::env::temp_dir().join(format!("poolrelay-rates-{}", crate::spool::Spool::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let suppressions = Arc::new(Suppressions::open(&dir));
        Tracker::new(&config.reputation, pools, suppressions).unwrap()
    }

    fn reply(code: u16, status: &str, text: &str) -> RemoteReply {
        RemoteReply {
            code,
            status: status.into(),
            text: text.into(),
            host: "mx".into(),
            addr: String::new(),
            source_ip: String::new(),
        }
    }

    fn quarantined(t: &Tracker, provider: &str) -> Option<crate::pool::Hold> {
        t.pools
            .holds()
            .into_iter()
            .find(|(_, h)| h.scope == provider)
            .map(|(_, h)| h)
    }

    #[test]
    fn block_reply_quarantines_for_that_provider_and_is_rewritten() {
        let t = tracker("block_threshold = 2\ncooldown = \"10m\"");
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        let mut r = reply(
            550,
            "5.7.1",
            "Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org",
        );
        let v = t.observe(ip, "microsoft", "s@x", "", &mut r);
        assert_eq!(v.status, Status::RetryElsewhere);
        assert_eq!((r.code, r.status.as_str()), (451, "4.7.0"));
        assert!(
            r.text.starts_with(RETRY_ELSEWHERE) && r.text.contains("blocked using"),
            "{}",
            r.text
        );
        assert!(quarantined(&t, "microsoft").is_none(), "threshold is 2");
        let mut r = reply(550, "5.7.1", "blocked using zen.spamhaus.org");
        t.observe(ip, "microsoft", "s@x", "", &mut r);
        let h = quarantined(&t, "microsoft").expect("quarantined");
        assert_eq!(h.reason, "block reply");
        assert!(
            h.evidence.contains("blocked using") && h.evidence.contains("dnsbl-blocked-using"),
            "{}",
            h.evidence
        );
        let cool = h.until.unwrap() - h.since;
        assert!((590..=610).contains(&cool), "{cool}");
        assert!(quarantined(&t, "gmail").is_none());
        // A repeat offender waits twice as long.
        t.observe(
            ip,
            "microsoft",
            "s@x",
            "",
            &mut reply(550, "5.7.1", "blocked using x"),
        );
        t.observe(
            ip,
            "microsoft",
            "s@x",
            "",
            &mut reply(550, "5.7.1", "blocked using x"),
        );
        let h = quarantined(&t, "microsoft").unwrap();
        let cool = h.until.unwrap() - h.since;
        assert!((1190..=1210).contains(&cool), "{cool}");
    }

    #[test]
    fn hard_bounce_rate_needs_samples_and_ignores_bad_recipients() {
        let t = tracker("window = 20\nmin_samples = 10\nmax_bounce_rate = 0.2");
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        // Bad recipients, however many, are the list's problem.
        for _ in 0..15 {
            t.observe(
                ip,
                "gmail",
                "s@x",
                "",
                &mut reply(550, "5.1.1", "user unknown"),
            );
        }
        assert!(quarantined(&t, "gmail").is_none());
        for _ in 0..5 {
            t.observe(ip, "gmail", "s@x", "", &mut reply(250, "2.0.0", "ok"));
        }
        // 20 in the window: 4 content rejections = 20% (not over), the 5th is over.
        for i in 0..5 {
            t.observe(
                ip,
                "gmail",
                "s@x",
                "",
                &mut reply(554, "5.7.1", "message looks like spam"),
            );
            assert_eq!(
                quarantined(&t, "gmail").is_some(),
                i == 4,
                "after {}",
                i + 1
            );
        }
        let h = quarantined(&t, "gmail").unwrap();
        assert_eq!(h.reason, "hard-bounce rate");
        assert!(h.evidence.contains("5 hard bounces"), "{}", h.evidence);
    }

    #[test]
    fn deferral_rate_quarantines_and_sender_hygiene_warns_once() {
        let t = tracker("window = 10\nmin_samples = 10\nmax_deferral_rate = 0.5");
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        for _ in 0..5 {
            t.observe(ip, "yahoo", "u", "", &mut reply(250, "2.0.0", "ok"));
        }
        for i in 0..6 {
            t.observe(
                ip,
                "yahoo",
                "u",
                "",
                &mut reply(451, "4.3.0", "try again later"),
            );
            // 5 of 10 is not over half; the 6th (window slid: 4 sent, 6 deferred) is.
            assert_eq!(
                quarantined(&t, "yahoo").is_some(),
                i == 5,
                "after {}",
                i + 1
            );
        }
        assert_eq!(quarantined(&t, "yahoo").unwrap().reason, "deferral rate");
        // Bad recipients are counted per sender, not against the IP.
        for _ in 0..10 {
            t.observe(
                ip,
                "gmail",
                "list@x",
                "",
                &mut reply(550, "5.1.1", "no such user"),
            );
        }
        assert!(t.senders.lock().unwrap()["x"].warned);
        assert!(quarantined(&t, "gmail").is_none());
    }

    #[test]
    fn block_reply_from_an_unlisted_destination_defers_without_quarantine() {
        let t = tracker("");
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        let mut r = reply(554, "5.7.1", "Client host blocked using bl.example");
        let v = t.observe(ip, "other", "s@x", "a@b", &mut r);
        assert_eq!(v.status, Status::Deferred);
        assert_eq!((r.code, r.status.as_str()), (451, "4.7.0"));
        assert!(
            r.text.starts_with("deferred, not the recipient's fault"),
            "{}",
            r.text
        );
        assert!(quarantined(&t, "other").is_none());
    }

    #[test]
    fn probe_after_quarantine_judges_on_few_samples() {
        let t = tracker(
            "window = 20\nmin_samples = 20\nprobe_samples = 3\nmax_bounce_rate = 0.2\ncooldown = \"10m\"",
        );
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        let spam = || reply(554, "5.7.1", "message looks like spam");
        for i in 0..20 {
            let mut r = if i % 4 == 0 {
                spam()
            } else {
                reply(250, "2.0.0", "ok")
            };
            t.observe(ip, "gmail", "s", "", &mut r);
        }
        let first = quarantined(&t, "gmail").expect("25% of 20");
        // The cool-down is over (set back by hand instead of waiting).
        t.windows
            .lock()
            .unwrap()
            .get_mut(&(ip, "gmail".to_string()))
            .unwrap()
            .probe_from = 1;
        t.pools
            .reinstate(ip, Scope::Provider("gmail".into()))
            .unwrap();
        t.observe(ip, "gmail", "s", "", &mut reply(250, "2.0.0", "ok"));
        t.observe(ip, "gmail", "s", "", &mut spam());
        assert!(
            quarantined(&t, "gmail").is_none(),
            "2 outcomes: no verdict yet"
        );
        t.observe(ip, "gmail", "s", "", &mut reply(250, "2.0.0", "ok"));
        let again = quarantined(&t, "gmail").expect("probe failed: 1 of 3");
        assert_eq!(again.reason, "hard-bounce rate");
        let (c1, c2) = (
            first.until.unwrap() - first.since,
            again.until.unwrap() - again.since,
        );
        assert!(c2 >= 2 * c1 - 2, "extended: {c1} then {c2}");
    }

    #[test]
    fn clean_probes_end_probation() {
        let t = tracker(
            "probe_samples = 3
probe_per_hour = 5",
        );
        let ip: IpAddr = "127.0.0.10".parse().unwrap();
        // A quarantine whose cool-down is over (as after a restart: the window knows nothing).
        t.pools
            .quarantine(
                ip,
                Scope::Provider("gmail".into()),
                Cause::BlockReply,
                "block reply",
                "",
                Some(crate::spool::now_unix() - 1),
            )
            .unwrap();
        assert!(t.pools.in_probation(ip, "gmail"));
        for _ in 0..2 {
            t.observe(ip, "gmail", "s", "", &mut reply(250, "2.0.0", "ok"));
        }
        assert!(t.pools.in_probation(ip, "gmail"), "2 of 3 probes");
        t.observe(ip, "gmail", "s", "", &mut reply(250, "2.0.0", "ok"));
        assert!(
            !t.pools.in_probation(ip, "gmail"),
            "3 clean probes reinstate"
        );
        assert!(t.pools.holds().is_empty());
    }
}
