//! The accounts of one relay: counts per day, standing and history per login and sender
//! domain, kept in the state store (records change in memory; `flush` writes them once a
//! second, a change of standing at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use super::counts::{Counts, Days, Outcome};
use super::gate::Gate;
use super::policy::{self, Breach, Verdict};
use super::settings::Settings;
use super::{Key, Kind, Standing};
use crate::reputation::feeds::DomainVerdict;
use crate::state::State;

/// Events kept per account.
const MAX_EVENTS: usize = 50;

/// One change of standing, for the history (`GET /api/logins`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    pub standing: Standing,
    pub why: String,
    /// Who released it (the operator's name), for a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// From which address the release came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// What the store keeps per account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) days: Days,
    pub(super) standing: Standing,
    /// The rate behind a throttle or suspension.
    pub(super) breach: Option<Breach>,
    /// Since when the standing holds (unix s).
    pub(super) since: u64,
    pub(super) events: Vec<Event>,
    /// When the last suspension or release was decided (unix ms; 0: never): the farm's merge
    /// stamp (`farm.rs`).
    #[serde(default)]
    pub(super) decided_ms: u64,
    /// The latest Postmaster verdict on this sender domain (`verdict.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) postmaster: Option<DomainVerdict>,
    /// The evidence of the Postmaster verdict holding the account (`None`: no verdict hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) feed_hold: Option<String>,
}

#[derive(Default)]
pub(super) struct Account {
    pub(super) rec: Record,
    pub(super) dirty: bool,
}

/// Messages accepted per account in the current clock hour (for the throttle; this relay's
/// own count, in memory: a restart starts the hour again).
#[derive(Default)]
struct Hour {
    hour: u64,
    sent: HashMap<Key, u64>,
}

impl Hour {
    /// The counts of `hour`, started afresh when the clock hour moved on.
    fn at(&mut self, hour: u64) -> &mut HashMap<Key, u64> {
        if self.hour != hour {
            *self = Hour {
                hour,
                sent: HashMap::new(),
            };
        }
        &mut self.sent
    }

    fn sent(&self, k: &Key, hour: u64) -> u64 {
        if self.hour == hour {
            self.sent.get(k).copied().unwrap_or(0)
        } else {
            0
        }
    }
}

/// A message's place in the hour's count, taken at MAIL FROM (`Accounts::admit`) so that
/// transactions in parallel see each other's and together cannot pass the throttle. Given back
/// when dropped with its transaction (RSET, QUIT, a refusal, a failed DATA); a queued message is
/// counted by `accepted` before its place is given back.
pub struct Slot {
    hour: Arc<Mutex<Hour>>,
    keys: Vec<Key>,
    /// The clock hour it counts in.
    at: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.hour.lock().unwrap_or_else(PoisonError::into_inner);
        if h.hour != self.at {
            return;
        }
        for k in &self.keys {
            if let Some(n) = h.sent.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// One account as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub kind: Kind,
    pub name: String,
    pub standing: Standing,
    pub why: Option<String>,
    pub since: u64,
    pub window_days: u64,
    pub counts: Counts,
    pub complaint_rate: Option<f64>,
    pub bounce_rate: Option<f64>,
    pub block_rate: Option<f64>,
    pub sent_this_hour: u64,
    /// The latest Postmaster verdict on the domain, whatever its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<DomainVerdict>,
    pub events: Vec<Event>,
}

pub struct Accounts {
    /// `None`: count only, never throttle or suspend.
    pub(super) settings: ArcSwapOption<Settings>,
    store: Option<Arc<State>>,
    pub(super) book: Mutex<HashMap<Key, Account>>,
    hour: Arc<Mutex<Hour>>,
    /// Where suspensions and releases go to the farm (`[cluster]`; `None` = this relay alone).
    pub(super) outbox: Option<Arc<dyn super::farm::DecisionSink>>,
}

fn day_of(unix: u64) -> u64 {
    unix / 86_400
}

pub(super) fn store_key(k: &Key) -> String {
    format!("{}|{}", k.kind.as_str(), k.name)
}

pub(super) fn parse_key(s: &str) -> Option<Key> {
    let (kind, name) = s.split_once('|')?;
    let kind = match kind {
        "login" => Kind::Login,
        "domain" => Kind::Domain,
        _ => return None,
    };
    Some(Key {
        kind,
        name: name.to_string(),
    })
}

impl Accounts {
    /// The accounts kept in `store` (none without one: tests, tools).
    pub fn new(settings: Option<Settings>, store: Option<Arc<State>>) -> Accounts {
        let mut book = HashMap::new();
        if let Some(s) = &store {
            match s.accounts_load() {
                Ok(records) => {
                    for (k, v) in records {
                        match (parse_key(&k), serde_json::from_str::<Record>(&v)) {
                            (Some(key), Ok(rec)) => {
                                book.insert(
                                    key,
                                    Account {
                                        rec,
                                        ..Account::default()
                                    },
                                );
                            }
                            _ => tracing::warn!(key = %k, "accounts: unreadable record skipped"),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "accounts: cannot read the state store"),
            }
        }
        Accounts {
            settings: ArcSwapOption::new(settings.map(Arc::new)),
            store,
            book: Mutex::new(book),
            hour: Arc::default(),
            outbox: None,
        }
    }

    /// Reload: new limits for the next verdicts; counts and standings stay.
    pub fn reload(&self, settings: Option<Settings>) {
        self.settings.store(settings.map(Arc::new));
    }

    /// Sender domains tracked at most (`[accounts] max_sender_domains`).
    pub(super) fn max_sender_domains(&self) -> usize {
        self.settings.load().as_ref().map_or_else(
            || Settings::default().max_sender_domains,
            |s| s.max_sender_domains,
        )
    }

    fn window_days(&self) -> u64 {
        self.settings
            .load()
            .as_ref()
            .map_or_else(|| Settings::default().days(), |s| s.days())
    }

    /// The login's and the sender domain's keys (either may be missing).
    pub fn keys(login: Option<&str>, domain: Option<&str>) -> Vec<Key> {
        let mut keys = Vec::with_capacity(2);
        if let Some(l) = login.filter(|l| !l.is_empty()) {
            keys.push(Key::login(l));
        }
        if let Some(d) = domain.filter(|d| !d.is_empty()) {
            keys.push(Key::domain(d));
        }
        keys
    }

    /// Counts `o` for each of `keys` at `now` and re-judges them; returns each one's standing.
    pub fn count(
        &self,
        keys: &[Key],
        o: Outcome,
        now: u64,
        queue_id: Option<&str>,
    ) -> Vec<(Key, Standing, Option<Breach>)> {
        let settings = self.settings.load_full();
        let mut changed = Vec::new();
        let mut out = Vec::new();
        {
            let mut book = self.book.lock().expect("accounts lock");
            for k in keys {
                if k.kind == Kind::Domain && !book.contains_key(k) {
                    let Some(gone) = make_room(&mut book, self.max_sender_domains()) else {
                        not_tracked(k, now);
                        continue;
                    };
                    changed.extend(gone.iter().map(|g| (store_key(g), None)));
                }
                let a = book.entry(k.clone()).or_default();
                a.rec.days.add(day_of(now), o);
                a.dirty = true;
                if let Some(s) = &settings
                    && rejudge(k, a, s, now, queue_id)
                {
                    if a.rec.standing == Standing::Suspended {
                        self.decided(k, a);
                    }
                    changed.push((store_key(k), serde_json::to_string(&a.rec).ok()));
                    a.dirty = false;
                }
                out.push((k.clone(), a.rec.standing, a.rec.breach));
            }
        }
        self.write(&changed);
        out
    }

    /// At MAIL FROM: whether the login and the sender domain may send a message now.
    pub fn gate(&self, login: Option<&str>, domain: Option<&str>) -> Gate {
        self.gate_at(&Self::keys(login, domain), crate::spool::now_unix())
    }

    pub fn gate_at(&self, keys: &[Key], now: u64) -> Gate {
        self.judge_gate(keys, now, false).0
    }

    /// At MAIL FROM: the gate, and when it is open the message's place in the hour's count,
    /// held until the transaction ends (`Slot`).
    pub fn admit(&self, login: Option<&str>, domain: Option<&str>) -> Result<Slot, Gate> {
        self.admit_at(Self::keys(login, domain), crate::spool::now_unix())
    }

    pub fn admit_at(&self, keys: Vec<Key>, now: u64) -> Result<Slot, Gate> {
        match self.judge_gate(&keys, now, true) {
            (_, Some(slot)) => Ok(slot),
            (gate, None) => Err(gate),
        }
    }

    /// The gate for `keys`; with `take`, when open, a place in the hour's count taken under the
    /// same lock as the answer (two sessions cannot both take the last place).
    fn judge_gate(&self, keys: &[Key], now: u64, take: bool) -> (Gate, Option<Slot>) {
        let Some(settings) = self.settings.load_full() else {
            return (Gate::Open, take.then(|| self.take_slot(keys, now)));
        };
        let mut changed = Vec::new();
        let mut gate = Gate::Open;
        let mut slot = None;
        {
            let mut book = self.book.lock().expect("accounts lock");
            for k in keys {
                let Some(a) = book.get_mut(k) else { continue };
                // The window moves on: a throttle may have lifted since the last outcome.
                if rejudge(k, a, &settings, now, None) {
                    changed.push((store_key(k), serde_json::to_string(&a.rec).ok()));
                    a.dirty = false;
                }
                let days = settings.days();
                let sent = self.hour.lock().expect("hour lock").sent(k, now / 3600);
                let per_hour = settings.throttle_per_hour;
                gate = match (a.rec.standing, a.rec.breach, &a.rec.feed_hold) {
                    (Standing::Suspended, Some(breach), _) => Gate::Suspended {
                        account: k.clone(),
                        breach,
                        days,
                    },
                    (Standing::Throttled, _, _) if sent < per_hour => continue,
                    (Standing::Throttled, Some(breach), _) => Gate::Throttled {
                        account: k.clone(),
                        breach,
                        per_hour,
                        days,
                    },
                    (Standing::Throttled, None, Some(evidence)) => Gate::FeedThrottled {
                        account: k.clone(),
                        evidence: evidence.clone(),
                        per_hour,
                    },
                    _ => continue,
                };
                break;
            }
            if gate.is_open() && take {
                slot = Some(self.take_slot(keys, now));
            }
        }
        self.write(&changed);
        (gate, slot)
    }

    fn take_slot(&self, keys: &[Key], now: u64) -> Slot {
        let at = now / 3600;
        let mut h = self.hour.lock().expect("hour lock");
        let sent = h.at(at);
        for k in keys {
            *sent.entry(k.clone()).or_default() += 1;
        }
        Slot {
            hour: self.hour.clone(),
            keys: keys.to_vec(),
            at,
        }
    }

    /// A message of these accounts was queued (the throttle counts it; its `Slot` is given back
    /// after this).
    pub fn accepted(&self, login: Option<&str>, domain: Option<&str>) {
        let hour = crate::spool::now_unix() / 3600;
        let mut h = self.hour.lock().expect("hour lock");
        let sent = h.at(hour);
        for k in Self::keys(login, domain) {
            *sent.entry(k).or_default() += 1;
        }
    }

    /// The operator releases an account: good standing, its window started afresh, the release
    /// in the history. `None`: no such account.
    pub fn release(&self, key: &Key, by: &str, peer: Option<&str>) -> Option<AccountView> {
        let now = crate::spool::now_unix();
        let (view, record) = {
            let mut book = self.book.lock().expect("accounts lock");
            let a = book.get_mut(key)?;
            let was = a.rec.standing;
            a.rec.days = Days::default();
            a.rec.standing = Standing::Good;
            a.rec.breach = None;
            // The operator overrides a verdict too; the next day's `Over` holds again.
            a.rec.feed_hold = None;
            a.rec.since = now;
            push_event(
                &mut a.rec,
                Event {
                    at: now,
                    standing: Standing::Good,
                    why: format!("released by the operator (was {})", was.as_str()),
                    by: Some(by.to_string()),
                    peer: peer.map(str::to_string),
                },
            );
            a.dirty = false;
            self.decided(key, a);
            tracing::warn!(account = %key, was = was.as_str(), by, peer = peer.unwrap_or("-"), "account released");
            (
                view(key, a, self.window_days(), now, 0),
                serde_json::to_string(&a.rec).ok(),
            )
        };
        self.write(&[(store_key(key), record)]);
        Some(view)
    }

    /// Every account of `kind`, sorted by name.
    pub fn list(&self, kind: Kind) -> Vec<AccountView> {
        let now = crate::spool::now_unix();
        let days = self.window_days();
        // Never both locks at once here: `gate_at` takes them the other way round.
        let hour = {
            let h = self.hour.lock().expect("hour lock");
            Hour {
                hour: h.hour,
                sent: h.sent.clone(),
            }
        };
        let book = self.book.lock().expect("accounts lock");
        let mut v: Vec<AccountView> = book
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(k, a)| view(k, a, days, now, hour.sent(k, now / 3600)))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One account, if known.
    pub fn get(&self, key: &Key) -> Option<AccountView> {
        let now = crate::spool::now_unix();
        let sent = self.hour.lock().expect("hour lock").sent(key, now / 3600);
        let book = self.book.lock().expect("accounts lock");
        book.get(key)
            .map(|a| view(key, a, self.window_days(), now, sent))
    }

    /// Writes the records counted since the last flush.
    pub fn flush(&self) {
        let records: Vec<(String, Option<String>)> = {
            let mut book = self.book.lock().expect("accounts lock");
            book.iter_mut()
                .filter(|(_, a)| a.dirty)
                .map(|(k, a)| {
                    a.dirty = false;
                    (store_key(k), serde_json::to_string(&a.rec).ok())
                })
                .collect()
        };
        self.write(&records);
    }

    pub(super) fn write(&self, records: &[(String, Option<String>)]) {
        if let Some(s) = &self.store
            && let Err(e) = s.accounts_write(records)
        {
            tracing::error!(error = %e, "accounts: cannot write the state store");
        }
    }
}

/// Judges `a` under `s` (`policy`); true when its standing changed (logged, in its history).
pub(super) fn rejudge(
    k: &Key,
    a: &mut Account,
    s: &Settings,
    now: u64,
    queue_id: Option<&str>,
) -> bool {
    if a.rec.standing == Standing::Suspended {
        return false;
    }
    let counts = a.rec.days.window(day_of(now), s.days());
    let (standing, breach) = match policy::judge(&counts, s) {
        // The account's own rates within limits: a Postmaster verdict may still hold it.
        Verdict::Good if a.rec.feed_hold.is_some() => (Standing::Throttled, None),
        Verdict::Good => (Standing::Good, None),
        Verdict::Throttle(b) => (Standing::Throttled, Some(b)),
        Verdict::Suspend(b) => (Standing::Suspended, Some(b)),
    };
    // A throttle's numbers move with every message: kept current, not a change.
    let was_feed = a.rec.standing == Standing::Throttled && a.rec.breach.is_none();
    a.rec.breach = breach;
    if standing == a.rec.standing {
        return false;
    }
    let why = match (&breach, &a.rec.feed_hold) {
        (Some(b), _) => format!("{b} in {} days", s.days()),
        (None, Some(evidence)) => feed_why(evidence),
        (None, None) if was_feed => "Postmaster spam rate back under the warning line".to_string(),
        (None, None) => "every rate back under its warning level".to_string(),
    };
    match standing {
        Standing::Suspended => {
            tracing::warn!(queue_id = queue_id.unwrap_or("-"), account = %k, standing = standing.as_str(), why = %why, "account suspended")
        }
        Standing::Throttled => {
            tracing::warn!(queue_id = queue_id.unwrap_or("-"), account = %k, standing = standing.as_str(), why = %why, per_hour = s.throttle_per_hour, "account throttled")
        }
        Standing::Good => {
            tracing::info!(account = %k, standing = standing.as_str(), why = %why, "account throttle lifted")
        }
    }
    a.rec.standing = standing;
    a.rec.since = now;
    push_event(
        &mut a.rec,
        Event {
            at: now,
            standing,
            why,
            by: None,
            peer: None,
        },
    );
    true
}

/// Why a Postmaster verdict holds an account (the reply at MAIL FROM and the API say it).
pub(super) fn feed_why(evidence: &str) -> String {
    format!("{evidence}, over Google's spam-rate action line")
}

pub(super) fn push_event(rec: &mut Record, e: Event) {
    rec.events.push(e);
    let excess = rec.events.len().saturating_sub(MAX_EVENTS);
    rec.events.drain(..excess);
}

/// Makes room for one more sender domain under the cap `max`: forgets the quietest domains in
/// good standing, 1 % of the cap at once (the scan is paid once per that many new domains);
/// a held one (throttled, suspended, or under a Postmaster verdict) is never forgotten. Returns the forgotten ones; `None`
/// when too many are held to make room (the new domain is then not tracked).
pub(super) fn make_room(book: &mut HashMap<Key, Account>, max: usize) -> Option<Vec<Key>> {
    let max = max.max(1);
    if book.len() < max {
        return Some(Vec::new());
    }
    let domains = book.keys().filter(|k| k.kind == Kind::Domain).count();
    if domains < max {
        return Some(Vec::new());
    }
    let mut good: Vec<(u64, &Key)> = book
        .iter()
        .filter(|(k, a)| {
            k.kind == Kind::Domain && a.rec.standing == Standing::Good && a.rec.feed_hold.is_none()
        })
        .map(|(k, a)| (a.rec.days.0.values().map(Counts::attempts).sum::<u64>(), k))
        .collect();
    let needed = domains + 1 - max;
    if good.len() < needed {
        return None;
    }
    let n = needed.max(max / 100).min(good.len());
    if n < good.len() {
        good.select_nth_unstable(n - 1);
    }
    let gone: Vec<Key> = good[..n].iter().map(|(_, k)| (*k).clone()).collect();
    for k in &gone {
        book.remove(k);
    }
    Some(gone)
}

/// A new sender domain found no room: not tracked; logged at most once a minute.
pub(super) fn not_tracked(k: &Key, now: u64) {
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    static LOGGED_AT: AtomicU64 = AtomicU64::new(0);
    let skipped = SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let last = LOGGED_AT.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 60)
        && LOGGED_AT
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(account = %k, skipped, "accounts: every tracked sender domain is held (max_sender_domains); a new one is not tracked");
    }
}

fn view(k: &Key, a: &Account, days: u64, now: u64, sent_this_hour: u64) -> AccountView {
    let mut d = a.rec.days.clone();
    let c = d.window(day_of(now), days);
    let rate = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
    AccountView {
        kind: k.kind,
        name: k.name.clone(),
        standing: a.rec.standing,
        why: match (a.rec.standing, a.rec.breach, &a.rec.feed_hold) {
            (Standing::Good, _, _) => None,
            (_, Some(b), _) => Some(format!("{b} in {days} days")),
            (_, None, Some(evidence)) => Some(feed_why(evidence)),
            (_, None, None) => None,
        },
        since: a.rec.since,
        window_days: days,
        complaint_rate: rate(c.complained, c.delivered),
        bounce_rate: rate(c.hard_bounces(), c.volume()),
        block_rate: rate(c.blocked, c.attempts()),
        counts: c,
        sent_this_hour,
        postmaster: a.rec.postmaster.clone(),
        events: a.rec.events.clone(),
    }
}
