//! The `Feedback` service: takes a report (SMTP, CLI, API), traces it, hands the complaint to
//! the actors; stamps outgoing messages; keeps the delivery records.
//!
//! Rules:
//! - Tracing order: poolrelay's trace header (a header that does not open → the report is
//!   refused as forged and attributes nothing), then the report's `Source-IP` when it is one
//!   of our pool IPs, then a pool IP in the original's `Received:`, then the delivery records
//!   by Message-ID, then by recipient. `Evidence` names the first that matched; later ones only
//!   fill in what is still unknown. Login, sender domain and queue id come only from the trace
//!   header or our own record of the original (`attribute`), never from the report's content.
//! - Complaint types (`abuse`, `fraud`, `virus`, `other`) go to the actors; `not-spam` and
//!   `auth-failure` are traced and listed but not dispatched.
//! - One log event and one `poolrelay_feedback_reports_total{result}` count per report.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::attribute::{self, trace_in};
use super::report::{self, Parsed, Report, Shape};
use super::settings::Settings;
use super::store::{self, Delivery};
use super::trace::{self, Forged, Key, Keys, Stamp};
use super::{Complaint, OnComplaint};
use crate::pool::Pools;
use crate::spool::now_unix;
use crate::state::{State, StateError};

/// Where a report came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Smtp,
    Api,
}

/// A traced complaint as `GET /api/complaints` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Traced {
    #[serde(flatten)]
    pub complaint: Complaint,
    pub shape: Shape,
    pub via: Via,
    /// Handed to the actors (complaint types only).
    pub dispatched: bool,
    /// An actor took the blame (`feedback::dispatch`).
    pub blamed: bool,
}

/// What became of one report.
#[derive(Debug, Clone)]
pub enum Handled {
    /// Traced and handed to the actors.
    Complaint(Box<Traced>),
    /// Traced, but its type is not a complaint (`not-spam`, `auth-failure`).
    NotAComplaint(Box<Traced>),
    /// A report nothing could trace to a message of ours.
    Untraced {
        feedback_type: String,
    },
    NotAReport(&'static str),
    /// Its trace header did not open: refused, attributed to nobody.
    Forged(Forged),
    /// A complaint this message already drew from that recipient (a recipient it was not
    /// delivered to, or none, counts as one unnamed recipient), or more complaints than
    /// recipients it was delivered to: listed nowhere, dispatched never.
    Duplicate(Box<Traced>),
    /// Sealed with a key this relay does not know while it is part of a farm (`farm`): maybe
    /// a relay's key not shared yet. Refused for now (the sender tries again).
    UnknownKey,
}

impl Handled {
    /// The `result` label of `poolrelay_feedback_reports_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Handled::Complaint(_) => "complaint",
            Handled::NotAComplaint(_) => "not-a-complaint",
            Handled::Untraced { .. } => "untraced",
            Handled::NotAReport(_) => "not-a-report",
            Handled::Forged(_) => "forged",
            Handled::UnknownKey => "deferred",
            Handled::Duplicate(_) => "duplicate",
        }
    }
}

/// One recipient a receiver took, as delivery knows it.
pub struct Sent<'a> {
    pub queue_id: &'a str,
    /// The login that submitted the message.
    pub user: Option<&'a str>,
    /// MAIL FROM.
    pub sender: &'a str,
    /// The envelope's `prepend` (signatures and the trace header).
    pub prepend: &'a str,
    pub recipient: &'a str,
    pub source_ip: &'a str,
    pub mx_host: &'a str,
}

pub struct Feedback {
    /// `[feedback]` (`None`: absent, nothing is stamped), replaced on reload.
    settings: ArcSwap<Option<Settings>>,
    /// Part of a farm (`[cluster]`): keys may arrive late (`Handled::UnknownKey`).
    farm: bool,
    hostname: String,
    state: Arc<State>,
    pools: Arc<Pools>,
    keys: ArcSwap<Keys>,
    /// The keys as stored (base64, newest first): what `keys` was made from.
    stored: Mutex<Vec<String>>,
    actors: Vec<Arc<dyn OnComplaint>>,
    pending: Mutex<Vec<Delivery>>,
    /// Reports per client (IPv4 address, IPv6 /64: `client_key`) in the current hour:
    /// `(hour, count)`.
    clients: Mutex<HashMap<IpAddr, (u64, u32)>>,
    recent: Mutex<VecDeque<Traced>>,
}

impl Feedback {
    /// Opens the tables and the trace keys (made on first start). `settings`: `[feedback]`;
    /// `hostname`: the relay's; `farm`: `[cluster]` is on. `actors` act on every traced
    /// complaint, in order.
    pub fn open(
        settings: Option<Settings>,
        hostname: &str,
        farm: bool,
        state: Arc<State>,
        pools: Arc<Pools>,
        actors: Vec<Arc<dyn OnComplaint>>,
    ) -> Result<Arc<Feedback>, OpenError> {
        store::create(&state)?;
        let stored = load_or_make_keys(&state)?;
        let keys = keys_from(&stored)?;
        let keep = settings.clone().unwrap_or_default().recent;
        let recent = store::recent_complaints(&state, keep)?
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        Ok(Arc::new(Feedback {
            settings: ArcSwap::from_pointee(settings),
            farm,
            hostname: hostname.to_string(),
            state,
            pools,
            keys: ArcSwap::from_pointee(keys),
            stored: Mutex::new(stored),
            actors,
            pending: Mutex::default(),
            clients: Mutex::default(),
            recent: Mutex::new(recent),
        }))
    }

    /// The header lines to stamp on a message (trace, `Feedback-ID`); empty without
    /// `[feedback]` or with `trace = false`.
    pub fn stamp(&self, s: &Stamp<'_>) -> String {
        match &**self.settings.load() {
            Some(settings) if settings.trace => {
                trace::header_lines(&self.keys.load(), settings, &self.hostname, s)
            }
            _ => String::new(),
        }
    }

    /// `[feedback]` of a reloaded config, from now on (`Listeners::reload`).
    pub fn reload(&self, settings: Option<Settings>) {
        self.settings.store(Arc::new(settings));
    }

    /// `[feedback]` now, or its defaults.
    fn settings(&self) -> Settings {
        (**self.settings.load()).clone().unwrap_or_default()
    }

    /// The trace keys as stored (base64, newest first).
    pub fn stored_keys(&self) -> Vec<String> {
        self.stored.lock().expect("feedback keys").clone()
    }

    /// Seals with `current` from now on and opens with every key of `all` too (`farm`); stores
    /// the change. Blocking. True when the keys are the farm's.
    pub fn adopt_keys(&self, current: &str, all: &[String]) -> bool {
        let mut stored = self.stored.lock().expect("feedback keys");
        let mut next = vec![current.to_string()];
        for k in all.iter().chain(stored.iter()) {
            if !next.contains(k) {
                next.push(k.clone());
            }
        }
        if next == *stored {
            return true;
        }
        let keys = match keys_from(&next) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "feedback: the farm's trace keys are unreadable; keeping this relay's");
                return false;
            }
        };
        if let Err(e) = store::save_keys(&self.state, &next) {
            tracing::error!(error = %e, "feedback: cannot store the farm's trace keys");
            return false;
        }
        let changed = keys.current_id() != self.keys.load().current_id();
        self.keys.store(Arc::new(keys));
        if changed {
            tracing::info!(key = %self.keys.load().current_id(), keys = next.len(), "feedback: sealing with the farm's trace key");
        }
        *stored = next;
        true
    }

    /// Whether messages get the trace headers (`[feedback]` with `trace = true`).
    pub fn stamps(&self) -> bool {
        self.settings
            .load()
            .as_ref()
            .as_ref()
            .is_some_and(|s| s.trace)
    }

    /// Whether `Feedback-ID` names the pool.
    pub fn wants_pool(&self) -> bool {
        self.settings.load().as_ref().as_ref().is_some_and(|s| {
            s.feedback_id
                .contains(&super::settings::FeedbackIdField::Pool)
        })
    }

    /// The pool `[[pool_rule]]` picks for a message (for `Feedback-ID`).
    pub fn pool_for(&self, user: Option<&str>, sender: &str) -> Option<String> {
        self.pools.pool_for(None, user, sender)
    }

    /// One report more from `client` this hour, unless it is past `per_client_hourly`. IPv6
    /// clients count by /64 (one host can use its whole /64).
    pub fn allow_client(&self, client: IpAddr) -> bool {
        let limit = self.settings().per_client_hourly;
        if limit == 0 {
            return true;
        }
        let hour = now_unix() / 3600;
        let mut clients = self.clients.lock().expect("feedback clients");
        clients.retain(|_, (h, _)| *h == hour);
        let (_, n) = clients.entry(client_key(client)).or_insert((hour, 0));
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// A receiver took a recipient (250): remembered for tracing.
    /// Nothing without `[feedback]`.
    pub fn delivered(&self, s: Sent<'_>) {
        let Ok(source_ip) = s.source_ip.parse() else {
            return;
        };
        if self.settings.load().is_none() {
            return;
        }
        let facts = trace_in(s.prepend).and_then(|v| self.keys.load().open(&v).ok());
        let sender_domain = s
            .sender
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase());
        let d = Delivery {
            queue_id: s.queue_id.to_string(),
            recipient: s.recipient.to_ascii_lowercase(),
            source_ip,
            provider: self.pools.provider_of(s.mx_host),
            login: s.user.map(str::to_string),
            sender_domain: facts
                .as_ref()
                .and_then(|f| f.sender_domain.clone())
                .or(sender_domain),
            message_id: facts.and_then(|f| f.message_id),
            at: now_unix(),
        };
        self.pending.lock().expect("feedback pending").push(d);
    }

    /// Writes buffered delivery records; prunes old ones when `prune`. Blocking.
    pub fn flush(&self, prune: bool) {
        let batch = std::mem::take(&mut *self.pending.lock().expect("feedback pending"));
        if let Err(e) = store::write_deliveries(&self.state, &batch) {
            tracing::error!(error = %e, records = batch.len(), "feedback: cannot write delivery records");
        }
        if prune {
            let settings = self.settings();
            let cutoff = now_unix().saturating_sub(settings.keep_records.0.as_secs());
            match store::prune(&self.state, cutoff, settings.max_records) {
                Ok(0) => {}
                Ok(n) => tracing::info!(dropped = n, "feedback: old delivery records dropped"),
                Err(e) => tracing::error!(error = %e, "feedback: cannot prune delivery records"),
            }
        }
    }

    /// Flushes once a second, prunes once an hour.
    pub fn start_flusher(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let prune = n.is_multiple_of(3600);
                n += 1;
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.flush(prune)).await;
            }
        });
    }

    /// The newest traced complaints, oldest first.
    pub fn recent(&self) -> Vec<Traced> {
        self.recent
            .lock()
            .expect("feedback recent")
            .iter()
            .cloned()
            .collect()
    }

    /// Reads, traces and dispatches one report. Blocking (the state store). `Err`: the store
    /// failed, the report was not handled (the sender should try again).
    pub fn handle(&self, raw: &[u8], via: Via, client: &str) -> Result<Handled, StateError> {
        // Records of the last second must be findable.
        self.flush(false);
        let handled = match report::parse(raw) {
            Parsed::NotAReport(why) => Handled::NotAReport(why),
            Parsed::Report(r) => {
                match attribute::trace(&r, &self.keys.load(), &self.state, &self.pools.ips())? {
                    Err(Forged::UnknownKey) if self.farm => Handled::UnknownKey,
                    Err(forged) => Handled::Forged(forged),
                    Ok(None) => Handled::Untraced {
                        feedback_type: r.feedback_type.clone(),
                    },
                    Ok(Some(complaint)) => self.deliver(complaint, &r, via)?,
                }
            }
        };
        crate::metrics::feedback_report(handled.result());
        log(&handled, via, client);
        Ok(handled)
    }

    /// Dispatches (complaint types), lists and stores a traced complaint.
    fn deliver(&self, complaint: Complaint, r: &Report, via: Via) -> Result<Handled, StateError> {
        let is_complaint = matches!(
            complaint.feedback_type.as_str(),
            "abuse" | "fraud" | "virus" | "other"
        );
        if is_complaint && let Some(qid) = &complaint.queue_id {
            let delivered = store::by_queue(&self.state, qid)?;
            // Named only when the message went there; any other name is the unnamed one.
            let rcpt = complaint
                .recipient
                .as_deref()
                .filter(|r| delivered.iter().any(|d| d.recipient == *r));
            if !store::charge(
                &self.state,
                qid,
                rcpt,
                delivered.len(),
                complaint.arrived_at,
            )? {
                return Ok(Handled::Duplicate(Box::new(Traced {
                    complaint,
                    shape: r.shape,
                    via,
                    dispatched: false,
                    blamed: false,
                })));
            }
        }
        let blamed = is_complaint && super::dispatch(&self.actors, &complaint);
        let traced = Traced {
            complaint,
            shape: r.shape,
            via,
            dispatched: is_complaint,
            blamed,
        };
        let json = serde_json::to_string(&traced).map_err(|e| StateError(e.to_string()))?;
        store::push_complaint(
            &self.state,
            traced.complaint.arrived_at,
            &json,
            self.settings().recent,
        )?;
        {
            let mut recent = self.recent.lock().expect("feedback recent");
            recent.push_back(traced.clone());
            while recent.len() > self.settings().recent {
                recent.pop_front();
            }
        }
        Ok(if is_complaint {
            Handled::Complaint(Box::new(traced))
        } else {
            Handled::NotAComplaint(Box::new(traced))
        })
    }
}

/// The trace keys from the state store (base64, newest first); a new one on first start.
fn load_or_make_keys(state: &State) -> Result<Vec<String>, StateError> {
    let mut stored = store::load_keys(state)?;
    if stored.is_empty() {
        let secret = trace::new_secret();
        let id = Key::new(&secret)
            .map(|k| k.id().to_string())
            .unwrap_or_default();
        stored.push(B64.encode(secret));
        store::save_keys(state, &stored)?;
        // The id only (it is in every trace header), never the key.
        tracing::warn!(
            key = %id,
            "feedback: no trace key in the state store, made a new one; reports about mail \
             sealed with an earlier key (a state.redb lost or replaced) will be refused as forged"
        );
    }
    Ok(stored)
}

/// What `per_client_hourly` counts by: the IPv4 address (also written IPv4-mapped), the /64
/// of an IPv6 one.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Newest first; the first seals. Every stored key must read: one that does not is an error
/// (never skipped, which would seal or open with another key than the operator thinks).
fn keys_from(stored: &[String]) -> Result<Keys, OpenError> {
    let mut keys = Vec::with_capacity(stored.len());
    for (i, s) in stored.iter().enumerate() {
        let key =
            B64.decode(s)
                .ok()
                .and_then(|s| Key::new(&s))
                .ok_or(OpenError::UnreadableKey {
                    n: i + 1,
                    of: stored.len(),
                })?;
        keys.push(key);
    }
    let mut keys = keys.into_iter();
    let current = keys.next().ok_or(OpenError::NoKey)?;
    Ok(Keys::new(current, keys.collect()))
}

/// Why the complaint tables or trace keys cannot be opened (the relay does not start). Never
/// shows a key.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    State(#[from] StateError),
    /// The `n`th of `of` stored keys.
    #[error(
        "feedback: trace key {n} of {of} in the state store is unreadable (not base64 of \
                 32 bytes); restore state.redb from a backup"
    )]
    UnreadableKey { n: usize, of: usize },
    #[error("feedback: no trace key in the state store")]
    NoKey,
}

/// One event per report.
fn log(h: &Handled, via: Via, client: &str) {
    let via = match via {
        Via::Smtp => "smtp",
        Via::Api => "api",
    };
    match h {
        Handled::Complaint(t) | Handled::NotAComplaint(t) | Handled::Duplicate(t) => {
            let c = &t.complaint;
            tracing::info!(
                queue_id = c.queue_id.as_deref().unwrap_or(""),
                login = c.login.as_deref().unwrap_or(""),
                source_ip = %c.source_ip.map(|i| i.to_string()).unwrap_or_default(),
                provider = c.provider.as_deref().unwrap_or(""),
                sender_domain = c.sender_domain.as_deref().unwrap_or(""),
                recipient = c.recipient.as_deref().unwrap_or(""),
                feedback_type = %c.feedback_type,
                reporter = %c.reporter,
                evidence = ?c.evidence,
                dispatched = t.dispatched,
                blamed = t.blamed,
                via, client,
                result = h.result(),
                "feedback: complaint traced"
            );
        }
        Handled::Untraced { feedback_type } => {
            tracing::warn!(feedback_type = %feedback_type, via, client, result = h.result(), "feedback: report names no message of ours");
        }
        Handled::NotAReport(why) => {
            tracing::info!(
                reason = *why,
                via,
                client,
                result = h.result(),
                "feedback: not a report (accepted, dropped)"
            );
        }
        Handled::UnknownKey => {
            tracing::warn!(
                via,
                client,
                result = h.result(),
                "feedback: report sealed with a key not known here yet, refused for now"
            );
        }
        Handled::Forged(why) => {
            tracing::warn!(reason = %why, via, client, result = h.result(), "feedback: report refused, trace reference does not authenticate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Charge, Evidence};

    /// Remembers what it was handed; blames when told to.
    struct Actor {
        seen: Mutex<Vec<(Complaint, bool)>>,
        blame: bool,
    }

    impl OnComplaint for Actor {
        fn complaint(&self, c: &Complaint, blamed: bool) -> Charge {
            self.seen.lock().unwrap().push((c.clone(), blamed));
            if self.blame {
                Charge::Blamed
            } else {
                Charge::Counted
            }
        }
    }

    fn report(feedback_type: &str, original: &str) -> Vec<u8> {
        format!(
            "From: fbl@isp.test\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n\
             --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: {feedback_type}\r\n\
             User-Agent: test/1\r\nVersion: 1\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
             {original}\r\n--b--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn traced_complaints_go_to_every_actor_in_order() {
        let dir = crate::util::test_dir::tempdir("fbsvc").join("data");
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\n\
                    tls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\n\
                    address = \"127.0.0.10\"\nhelo = \"o1\"\n[feedback]\naddresses = [\"f@relay.test\"]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let state = Arc::new(State::open(&dir).unwrap());
        let pools = Arc::new(Pools::new(&config.pool_settings(), None).unwrap());
        let first = Arc::new(Actor {
            seen: Mutex::default(),
            blame: true,
        });
        let second = Arc::new(Actor {
            seen: Mutex::default(),
            blame: false,
        });
        let actors: Vec<Arc<dyn OnComplaint>> = vec![first.clone(), second.clone()];
        let f = Feedback::open(
            config.feedback.clone(),
            &config.hostname,
            config.cluster.is_some(),
            state,
            pools,
            actors,
        )
        .unwrap();
        let original = "Received: from o1 (o1 [127.0.0.10]) by mx.isp.test\r\n\
                        From: a@shop.test\r\nTo: u@isp.test\r\nSubject: s\r\n\r\nhi";
        let h = f.handle(&report("abuse", original), Via::Api, "t").unwrap();
        let Handled::Complaint(t) = h else {
            panic!("{h:?}")
        };
        assert!(t.blamed && t.dispatched);
        assert_eq!(t.complaint.evidence, Evidence::Received);
        assert_eq!(t.complaint.source_ip, Some("127.0.0.10".parse().unwrap()));
        assert_eq!(t.complaint.recipient.as_deref(), Some("u@isp.test"));
        // The second actor learns that the first took the blame.
        assert!(!first.seen.lock().unwrap()[0].1);
        assert!(second.seen.lock().unwrap()[0].1);
        // Not a complaint type: listed, not dispatched.
        let h = f
            .handle(&report("not-spam", original), Via::Api, "t")
            .unwrap();
        assert!(matches!(h, Handled::NotAComplaint(_)), "{h:?}");
        // Not ours: untraced, not dispatched.
        let other = original.replace("127.0.0.10", "192.0.2.1");
        let h = f.handle(&report("abuse", &other), Via::Api, "t").unwrap();
        assert!(matches!(h, Handled::Untraced { .. }), "{h:?}");
        assert_eq!(second.seen.lock().unwrap().len(), 1);
        assert_eq!(f.recent().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let dir = crate::util::test_dir::tempdir("fbv6").join("data");
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\n\
                    tls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\n\
                    address = \"127.0.0.10\"\nhelo = \"o1\"\n[feedback]\n\
                    addresses = [\"f@relay.test\"]\nper_client_hourly = 1\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let state = Arc::new(State::open(&dir).unwrap());
        let pools = Arc::new(Pools::new(&config.pool_settings(), None).unwrap());
        let f = Feedback::open(
            config.feedback.clone(),
            &config.hostname,
            config.cluster.is_some(),
            state,
            pools,
            Vec::new(),
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(f.allow_client(ip("2001:db8:1:2::1")));
        // Another address of the same /64: the same client.
        assert!(!f.allow_client(ip("2001:db8:1:2:ffff::9")));
        assert!(f.allow_client(ip("2001:db8:1:3::1")));
        assert!(f.allow_client(ip("192.0.2.1")));
        assert!(!f.allow_client(ip("::ffff:192.0.2.1")));
        assert!(f.allow_client(ip("192.0.2.2")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreadable_stored_key_stops_the_start() {
        let dir = crate::util::test_dir::tempdir("fbkey").join("data");
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\n\
                    tls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\n\
                    address = \"127.0.0.10\"\nhelo = \"o1\"\n[feedback]\n\
                    addresses = [\"f@relay.test\"]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let state = Arc::new(State::open(&dir).unwrap());
        let pools = Arc::new(Pools::new(&config.pool_settings(), None).unwrap());
        store::create(&state).unwrap();
        let good = B64.encode(trace::new_secret());
        for bad in ["not base64!", "AAAA"] {
            // An older key that does not read, and one that seals.
            store::save_keys(&state, &[good.clone(), bad.to_string()]).unwrap();
            let e = Feedback::open(
                config.feedback.clone(),
                &config.hostname,
                config.cluster.is_some(),
                state.clone(),
                pools.clone(),
                Vec::new(),
            )
            .err()
            .expect("refused")
            .to_string();
            assert!(
                e.contains("trace key 2 of 2") && e.contains("unreadable"),
                "{e}"
            );
            assert!(!e.contains(&good) && !e.contains(bad), "never the key: {e}");
        }
        store::save_keys(&state, &[good]).unwrap();
        assert!(
            Feedback::open(
                config.feedback.clone(),
                &config.hostname,
                config.cluster.is_some(),
                state,
                pools,
                Vec::new()
            )
            .is_ok()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn trace_header_read_back_from_the_prepend() {
        let p = "DKIM-Signature: v=1;\r\n b=x\r\nX-Poolrelay-Trace: v1.ab.\r\n CD\r\nFeedback-ID: a:b\r\n";
        assert_eq!(trace_in(p).as_deref(), Some(" v1.ab. CD"));
        assert_eq!(trace_in("Feedback-ID: a\r\n"), None);
    }
}
