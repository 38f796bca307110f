//! Polls the configured feeds: first `first_poll` after start, then every `interval`, and at
//! once on `POST /api/feeds/poll`. One poll at a time. Each feed's last result (time, ok or
//! the error, rows read, verdicts acted on) is kept for `GET /api/feeds` and written to
//! `data_dir/feeds.json` for `poolrelay doctor`. Data a feed could not fetch or read changes
//! nothing; a verdict already acted on (same evidence) is not acted on again.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::fetch::{Body, Client, redact};
use super::postmaster::{self, ServiceAccount};
use super::settings::{Postmaster, Settings, Snds};
use super::snds;
use super::verdict::{self, Applied, Cooldown, DomainVerdict, IpVerdict, OnDomainVerdict, Verdict};
use crate::pool::Pools;

/// Evidence remembered as acted on (a few days of every pool IP × feed).
const ACTED_KEPT: usize = 4096;

/// What acting on one verdict did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Done {
    Quarantined,
    Probation,
    /// Probation asked while a hold of the provider is in force: nothing written.
    AlreadyHeld,
    /// The same evidence was acted on by an earlier poll.
    AlreadyActed,
    /// The pool refused it (see `error`).
    Failed,
}

/// One verdict as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Action {
    pub ip: IpAddr,
    pub provider: String,
    pub verdict: Verdict,
    pub evidence: String,
    pub result: Done,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether a feed's last poll fetched and read everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollResult {
    Ok,
    #[default]
    Error,
}

/// One feed's last poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeedStatus {
    pub feed: String,
    /// Unix seconds of the last poll's end.
    pub last_fetch: Option<u64>,
    pub result: PollResult,
    /// What went wrong (several requests: joined with "; ").
    pub error: Option<String>,
    /// Not errors: data not published yet, rows for IPs outside the pool.
    pub notes: Vec<String>,
    pub rows: usize,
    pub actions: Vec<Action>,
}

/// `GET /api/feeds`, and `data_dir/feeds.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeedsView {
    /// Seconds between polls.
    pub interval: u64,
    pub feeds: Vec<FeedStatus>,
    pub domains: Vec<DomainVerdict>,
    /// Evidence already acted on (kept across restarts).
    #[serde(default)]
    pub acted: VecDeque<String>,
}

/// The file the status is kept in under `data_dir`.
pub fn status_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("feeds.json")
}

/// What one feed's requests gave (before acting).
#[derive(Debug, Default)]
struct Round {
    rows: usize,
    verdicts: Vec<IpVerdict>,
    domains: Vec<DomainVerdict>,
    errors: Vec<String>,
    notes: Vec<String>,
}

pub struct Feeds {
    settings: Settings,
    pools: Arc<Pools>,
    cooldown: Cooldown,
    path: PathBuf,
    view: Mutex<FeedsView>,
    listeners: Mutex<Vec<Arc<dyn OnDomainVerdict>>>,
    polling: tokio::sync::Mutex<()>,
}

impl Feeds {
    pub fn new(
        settings: Settings,
        pools: Arc<Pools>,
        reputation: &crate::reputation::Settings,
        data_dir: &std::path::Path,
    ) -> Feeds {
        let path = status_path(data_dir);
        let mut view: FeedsView = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        view.interval = settings.interval.0.as_secs();
        Feeds {
            settings,
            pools,
            cooldown: Cooldown::from_settings(reputation),
            path,
            view: Mutex::new(view),
            listeners: Mutex::new(Vec::new()),
            polling: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds a listener told every domain verdict of every poll (the accounts stage); it is
    /// told the latest ones at once (they survive a restart in `feeds.json`).
    pub fn subscribe(&self, listener: Arc<dyn OnDomainVerdict>) {
        for d in self.domain_verdicts() {
            listener.on_domain_verdict(&d);
        }
        self.listeners.lock().expect("lock").push(listener);
    }

    pub fn view(&self) -> FeedsView {
        let mut v = self.view.lock().expect("lock").clone();
        v.acted.clear();
        v
    }

    /// The latest verdict per domain.
    pub fn domain_verdicts(&self) -> Vec<DomainVerdict> {
        self.view.lock().expect("lock").domains.clone()
    }

    /// Starts the background polls.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        let (first, every) = (self.settings.first_poll.0, self.settings.interval.0);
        tracing::info!(first = %humantime::format_duration(first), interval = %humantime::format_duration(every), snds = self.settings.snds.is_some(), postmaster = self.settings.postmaster.is_some(), "provider feeds: polling");
        tokio::spawn(async move {
            tokio::time::sleep(first).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.poll_now().await;
            }
        });
    }

    /// Polls every feed now (after a poll in progress) and returns the new status.
    pub async fn poll_now(self: &Arc<Self>) -> FeedsView {
        let _one = self.polling.lock().await;
        let pool = self.pools.ips();
        let client = match Client::new(&self.settings) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                // A CA file that went missing since the start: every feed fails, visibly.
                for (feed, on) in [
                    ("snds", self.settings.snds.is_some()),
                    ("postmaster", self.settings.postmaster.is_some()),
                ] {
                    if on {
                        let errors = vec![format!("no HTTPS client: {e}")];
                        self.act(
                            feed,
                            Round {
                                errors,
                                ..Round::default()
                            },
                        );
                    }
                }
                self.save();
                return self.view();
            }
        };
        if let Some(s) = self.settings.snds.clone() {
            let (c, p) = (client.clone(), pool.clone());
            let round = blocking(move || poll_snds(&c, &s, &p)).await;
            self.act("snds", round);
        }
        if let Some(s) = self.settings.postmaster.clone() {
            let (c, p) = (client.clone(), pool.clone());
            let round = blocking(move || poll_postmaster(&c, &s, &p)).await;
            self.act("postmaster", round);
        }
        self.save();
        self.view()
    }

    /// Acts on a round's verdicts and records the feed's status.
    fn act(&self, feed: &'static str, round: Round) {
        let now = crate::spool::now_unix();
        let actions: Vec<Action> = round
            .verdicts
            .iter()
            .map(|v| self.act_on(feed, v, now))
            .collect();
        let listeners = self.listeners.lock().expect("lock").clone();
        for d in &round.domains {
            tracing::info!(feed, domain = %d.domain, spam_rate = d.spam_rate, level = d.level.as_str(), date = %d.date, "provider feed: domain spam rate");
            for l in &listeners {
                l.on_domain_verdict(d);
            }
        }
        let ok = round.errors.is_empty();
        crate::metrics::feed_fetch(feed, ok);
        let status = FeedStatus {
            feed: feed.to_string(),
            last_fetch: Some(now),
            result: if ok {
                PollResult::Ok
            } else {
                PollResult::Error
            },
            error: (!ok).then(|| round.errors.join("; ")),
            notes: round.notes,
            rows: round.rows,
            actions,
        };
        match &status.error {
            None => {
                tracing::info!(
                    feed,
                    rows = status.rows,
                    actions = status.actions.len(),
                    "provider feed polled"
                )
            }
            Some(e) => {
                tracing::warn!(feed, rows = status.rows, error = %e, "provider feed: fetch failed or unreadable (no change from it)")
            }
        }
        let mut view = self.view.lock().expect("lock");
        view.feeds.retain(|f| f.feed != feed);
        view.feeds.push(status);
        view.feeds.sort_by(|a, b| a.feed.cmp(&b.feed));
        for d in round.domains {
            view.domains.retain(|v| v.domain != d.domain);
            view.domains.push(d);
        }
        view.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    }

    /// One verdict into the pool, unless its evidence was acted on already.
    fn act_on(&self, feed: &str, v: &IpVerdict, now: u64) -> Action {
        let key = format!("{feed}|{}|{}|{}", v.ip, v.provider, v.evidence);
        let seen = self.view.lock().expect("lock").acted.contains(&key);
        let (result, error) = if seen {
            (Done::AlreadyActed, None)
        } else {
            match verdict::apply(&self.pools, self.cooldown, feed, v, now) {
                Ok(applied) => {
                    let mut view = self.view.lock().expect("lock");
                    view.acted.push_back(key);
                    while view.acted.len() > ACTED_KEPT {
                        view.acted.pop_front();
                    }
                    let done = match applied {
                        Applied::Quarantined { .. } => Done::Quarantined,
                        Applied::Probation => Done::Probation,
                        Applied::AlreadyHeld => Done::AlreadyHeld,
                    };
                    (done, None)
                }
                Err(e) => {
                    tracing::error!(feed, source_ip = %v.ip, error = %e, "provider feed: cannot act on a verdict");
                    (Done::Failed, Some(e.to_string()))
                }
            }
        };
        Action {
            ip: v.ip,
            provider: v.provider.clone(),
            verdict: v.verdict,
            evidence: v.evidence.clone(),
            result,
            error,
        }
    }

    /// Writes the status for `poolrelay doctor` (a failed write is only logged).
    fn save(&self) {
        let bytes = serde_json::to_vec_pretty(&*self.view.lock().expect("lock"));
        let Ok(bytes) = bytes else { return };
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "provider feeds: cannot save the status");
        }
    }
}

async fn blocking(f: impl FnOnce() -> Round + Send + 'static) -> Round {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Round {
            errors: vec![format!("poll crashed: {e}")],
            ..Round::default()
        })
}

/// Both SNDS files; each read whole or not at all.
fn poll_snds(client: &Client, s: &Snds, pool: &[IpAddr]) -> Round {
    let mut round = Round::default();
    let key = s.key.trim();
    let get = |template: &str| {
        let url = template.replace("{key}", key);
        let shown = redact(&url, key);
        client
            .request(&url, &shown, None, Body::None)
            .map_err(|e| e.message)
            .map(|text| (shown, text))
    };
    let data = get(&s.data_url).and_then(|(shown, text)| {
        snds::parse_data(&text).map_err(|e| format!("{shown}: unreadable data: {e}"))
    });
    let status = get(&s.status_url).and_then(|(shown, text)| {
        snds::parse_status(&text).map_err(|e| format!("{shown}: unreadable IP status: {e}"))
    });
    let data = data.unwrap_or_else(|e| {
        round.errors.push(e);
        Vec::new()
    });
    let status = status.unwrap_or_else(|e| {
        round.errors.push(e);
        Vec::new()
    });
    round.rows = data.len() + status.len();
    if data.is_empty() && round.errors.is_empty() {
        round
            .notes
            .push("no data rows (the day not published yet?)".to_string());
    }
    let others = data.iter().filter(|r| !pool.contains(&r.ip)).count();
    if others > 0 {
        round.notes.push(format!(
            "{others} data rows for IPs outside the pool (ignored)"
        ));
    }
    let today = postmaster::Day::before(crate::spool::now_unix(), 0).to_string();
    round.verdicts = snds::judge(&data, &status, pool, &s.provider, s.trap_hits_max, &today);
    round
}

/// A token, then every domain.
fn poll_postmaster(client: &Client, s: &Postmaster, pool: &[IpAddr]) -> Round {
    let mut round = Round::default();
    let now = crate::spool::now_unix();
    let token = ServiceAccount::load(&s.key_file).and_then(|sa| sa.token(client, now));
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            round.errors.push(e.to_string());
            return round;
        }
    };
    for domain in &s.domains {
        let d = postmaster::poll_domain(client, s, &token, domain, pool, now);
        round.rows += d.rows;
        round.verdicts.extend(d.verdicts);
        round.domains.extend(d.domain);
        round.errors.extend(d.errors);
        round.notes.extend(d.notes);
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::feeds::Level;

    struct Heard(Mutex<Vec<DomainVerdict>>);

    impl OnDomainVerdict for Heard {
        fn on_domain_verdict(&self, v: &DomainVerdict) {
            self.0.lock().unwrap().push(v.clone());
        }
    }

    fn feeds(dir: &std::path::Path) -> Feeds {
        let text = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[feeds]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let pools = Arc::new(Pools::new(&config.pool_settings(), None).unwrap());
        Feeds::new(
            config.feeds.clone().unwrap(),
            pools,
            &config.reputation,
            dir,
        )
    }

    fn over(day: &str) -> DomainVerdict {
        DomainVerdict {
            domain: "a.test".into(),
            spam_rate: 0.004,
            level: Level::Over,
            date: day.into(),
            evidence: format!("Postmaster {day} a.test: spam rate 0.40 %"),
        }
    }

    #[test]
    fn listeners_hear_every_domain_verdict_and_a_late_one_the_latest() {
        let dir = crate::util::test_dir::tempdir("feeds-unit");
        let f = feeds(&dir);
        let early = Arc::new(Heard(Mutex::new(Vec::new())));
        f.subscribe(early.clone());
        let red = IpVerdict {
            ip: "127.0.0.10".parse().unwrap(),
            provider: "gmail".into(),
            verdict: Verdict::Quarantine,
            evidence: "Postmaster 2026-12-06 a.test: IP reputation BAD".into(),
        };
        let round = |day: &str| Round {
            rows: 2,
            verdicts: vec![red.clone()],
            domains: vec![over(day)],
            ..Round::default()
        };
        f.act("postmaster", round("2026-12-05"));
        f.act("postmaster", round("2026-12-06"));
        f.save();
        assert_eq!(early.0.lock().unwrap().len(), 2);
        let view = f.view();
        let results: Vec<Done> = view.feeds[0].actions.iter().map(|a| a.result).collect();
        assert_eq!(
            results,
            [Done::AlreadyActed],
            "the second poll of the same data"
        );
        assert_eq!(f.domain_verdicts(), [over("2026-12-06")]);
        // After a restart: the verdict and the evidence acted on come back from feeds.json.
        let again = feeds(&dir);
        let late = Arc::new(Heard(Mutex::new(Vec::new())));
        again.subscribe(late.clone());
        assert_eq!(*late.0.lock().unwrap(), [over("2026-12-06")]);
        again.act("postmaster", round("2026-12-06"));
        assert_eq!(again.view().feeds[0].actions[0].result, Done::AlreadyActed);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
