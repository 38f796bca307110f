//! The complaint rate's rules (module doc of `complaints`), with real pools, history and state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::feedback::Evidence;
use crate::pool::{Hold, Pools};
use crate::reputation::history::History;
use crate::reputation::suppress::Suppressions;
use crate::spool::RemoteReply;
use crate::state::State;

const IP: &str = "127.0.0.10";

struct Fixture {
    tracker: Tracker,
    state: Arc<State>,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(extra: &str) -> Fixture {
    let text = format!(
        "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"p\"\n[[pool.ip]]\naddress = \"{IP}\"\nhelo = \"o\"\n[reputation]\n{extra}"
    );
    let config = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
    let dir = crate::util::test_dir::tempdir("complaints");
    let state = Arc::new(State::open(&dir).unwrap());
    let pools = Arc::new(Pools::new(&config.pool_settings(), Some(state.clone())).unwrap());
    let suppressions = Arc::new(Suppressions::open(&dir));
    let tracker = Tracker::new(&config.reputation, pools, suppressions)
        .unwrap()
        .with_history(Arc::new(History::new(Some(state.clone()))));
    Fixture {
        tracker,
        state,
        dir,
    }
}

fn ip() -> IpAddr {
    IP.parse().unwrap()
}

/// `n` messages accepted by `provider` from the pool IP, as delivery reports them.
fn deliver(t: &Tracker, provider: &str, n: usize) {
    for _ in 0..n {
        let mut r = RemoteReply {
            code: 250,
            status: "2.0.0".into(),
            text: "ok".into(),
            host: "mx".into(),
            addr: String::new(),
            source_ip: String::new(),
        };
        t.observe(ip(), provider, "news@shop.example", "", 0, &mut r);
    }
}

fn complaint(provider: &str, recipient: &str) -> Complaint {
    Complaint {
        feedback_type: "abuse".into(),
        reporter: "feedback.example".into(),
        provider: Some(provider.into()),
        source_ip: Some(ip()),
        queue_id: Some("q1".into()),
        login: Some("shop".into()),
        sender_domain: Some("shop.example".into()),
        recipient: Some(recipient.into()),
        arrived_at: now_unix(),
        evidence: Evidence::Trace,
    }
}

fn complain(t: &Tracker, provider: &str, n: usize) -> Vec<Charge> {
    (0..n)
        .map(|i| t.complaint(&complaint(provider, &format!("u{i}@example.net")), false))
        .collect()
}

fn complaints_hold(t: &Tracker, provider: &str) -> Option<Hold> {
    t.pools
        .holds()
        .into_iter()
        .find(|(_, h)| h.scope == provider && h.cause == Cause::Complaints)
        .map(|(_, h)| h)
}

#[test]
fn levels_need_the_minimum_volume() {
    let s = Settings::default();
    let rate = |complaints, delivered| Rate {
        complaints,
        delivered,
    };
    // 10 complaints on 999 messages: 1 %, but too few messages to mean anything.
    assert_eq!(rate(10, 999).level(&s), Level::TooFew);
    assert_eq!(rate(1, 1000).level(&s), Level::Fine);
    assert_eq!(rate(2, 1000).level(&s), Level::Warning);
    // The line itself is not over it.
    assert_eq!(rate(3, 1000).level(&s), Level::Warning);
    assert_eq!(rate(4, 1000).level(&s), Level::Over);
    assert!(is_complaint("Abuse") && is_complaint("fraud"));
    assert!(!is_complaint("not-spam") && !is_complaint("auth-failure"));
}

#[test]
fn complaints_over_the_rate_quarantine_that_ip_and_provider_with_evidence() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    deliver(t, "microsoft", 1000);
    assert_eq!(complain(t, "gmail", 3), [Charge::Counted; 3]);
    assert!(
        complaints_hold(t, "gmail").is_none(),
        "0.3 % is not over 0.3 %"
    );
    complain(t, "gmail", 1);
    let h = complaints_hold(t, "gmail").expect("quarantined for gmail");
    assert_eq!((h.reason.as_str(), h.offence), ("complaint rate", 1));
    assert!(
        h.evidence
            .starts_with("4 complaints / 1000 delivered from 127.0.0.10 to gmail in the last 7days = 0.40% > 0.30%"),
        "{}",
        h.evidence
    );
    assert!(h.until.unwrap() > now_unix());
    assert!(complaints_hold(t, "microsoft").is_none());
    let view = t.status().complaint_rates;
    assert_eq!(view.len(), 1);
    assert_eq!((view[0].complaints, view[0].delivered), (4, 1000));
    assert_eq!(view[0].level, Level::Over);
}

#[test]
fn too_few_messages_never_quarantine() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 999);
    complain(t, "gmail", 20);
    assert!(complaints_hold(t, "gmail").is_none());
    assert_eq!(t.status().complaint_rates[0].level, Level::TooFew);
    // One more delivery makes it a rate, and the next complaint judges it.
    deliver(t, "gmail", 1);
    complain(t, "gmail", 1);
    assert!(complaints_hold(t, "gmail").is_some());
}

#[test]
fn blamed_complaints_are_not_counted_against_the_ip() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    for i in 0..50 {
        let c = complaint("gmail", &format!("u{i}@example.net"));
        assert_eq!(t.complaint(&c, true), Charge::Passed);
    }
    assert!(complaints_hold(t, "gmail").is_none());
    assert_eq!(t.history.window(ip(), "gmail", 0).complaints, 0);
    // The complainers are suppressed all the same.
    assert!(t.suppressed("u7@example.net", &["shop.example"]).is_some());
}

#[test]
fn untraced_and_non_complaint_reports_pass() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    let mut untraced = complaint("gmail", "a@example.net");
    untraced.source_ip = None;
    let mut no_provider = complaint("gmail", "b@example.net");
    no_provider.provider = None;
    let mut not_ours = complaint("gmail", "c@example.net");
    not_ours.source_ip = Some("192.0.2.9".parse().unwrap());
    let mut not_spam = complaint("gmail", "d@example.net");
    not_spam.feedback_type = "not-spam".into();
    for c in [&untraced, &no_provider, &not_ours, &not_spam] {
        for _ in 0..10 {
            assert_eq!(t.complaint(c, false), Charge::Passed);
        }
    }
    assert!(complaints_hold(t, "gmail").is_none());
    assert_eq!(t.history.window(ip(), "gmail", 0).complaints, 0);
    // "not-spam" is no reason to suppress anyone.
    assert!(t.suppressed("d@example.net", &["shop.example"]).is_none());
}

#[test]
fn the_warning_is_recorded_once_per_crossing() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    complain(t, "gmail", 1);
    let warnings = |t: &Tracker| {
        t.history
            .local_events(ip(), 0)
            .into_iter()
            .filter(|e| e.event == "warning" && e.cause == "complaints")
            .count()
    };
    assert_eq!(warnings(t), 0);
    complain(t, "gmail", 1);
    assert_eq!(warnings(t), 1);
    complain(t, "gmail", 1);
    assert_eq!(warnings(t), 1, "still over: no second warning");
    // Back under the line (more mail delivered), then over again: a second warning.
    deliver(t, "gmail", 3000);
    complain(t, "gmail", 1);
    assert_eq!(warnings(t), 1);
    complain(t, "gmail", 1);
    assert_eq!(warnings(t), 2, "{:?}", t.history.local_events(ip(), 0));
}

#[test]
fn complaints_during_the_quarantine_are_one_incident() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    complain(t, "gmail", 4);
    let first = complaints_hold(t, "gmail").unwrap();
    complain(t, "gmail", 5);
    let h = complaints_hold(t, "gmail").unwrap();
    assert_eq!((h.offence, h.since, h.until), (1, first.since, first.until));
    assert!(
        h.evidence.ends_with("; 6 complaints in one incident"),
        "{}",
        h.evidence
    );
    // Not in the rate either: the window restarts after the quarantine.
    assert_eq!(t.history.window(ip(), "gmail", 0).complaints, 4);
}

#[test]
fn the_rate_counts_only_the_time_window() {
    let f = fixture("complaint_window = \"2d\"");
    let t = &f.tracker;
    // Three days ago: plenty delivered, many complaints; outside the window.
    let old = (now_unix() - 3 * 86_400) / 3600 * 3600;
    let bucket = r#"{"sent":5000,"deferred":0,"hard_bounces":0,"blocks":0,"complaints":400}"#;
    let key = format!("{IP}|gmail|{old:012}");
    f.state
        .history_merge(&[(key, bucket.to_string())], |_, new| new.to_string())
        .unwrap();
    assert_eq!(t.history.window(ip(), "gmail", old).complaints, 400);
    deliver(t, "gmail", 1000);
    complain(t, "gmail", 3);
    // 3 / 1000 in the window (the old 400 / 5000 is not): not over.
    assert!(complaints_hold(t, "gmail").is_none());
    let v = &t.status().complaint_rates[0];
    assert_eq!((v.complaints, v.delivered), (3, 1000));
}

/// `[feedback]` with `extra`.
fn feedback(extra: &str) -> crate::feedback::Settings {
    toml::from_str(extra).unwrap()
}

#[test]
fn complainers_are_suppressed_for_the_sender_domain_or_the_farm() {
    let f = fixture("");
    let t = &f.tracker;
    complain(t, "gmail", 1);
    let r = t.suppressed("U0@example.net", &["shop.example"]).unwrap();
    assert_eq!((r.code, r.status.as_str()), (550, "5.7.1"));
    assert!(r.text.contains("for mail from shop.example"), "{}", r.text);
    assert!(
        r.text
            .contains("complained (feedback report from feedback.example)"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("--sender-domain shop.example"),
        "{}",
        r.text
    );
    assert!(t.suppressed("u0@example.net", &["other.example"]).is_none());

    let farm = fixture("");
    let f = feedback("suppress = \"farm\"\nsuppress_for = \"1h\"");
    farm.tracker.set_complainers(f.suppress, f.suppress_for.0);
    complain(&farm.tracker, "gmail", 1);
    assert!(
        farm.tracker
            .suppressed("u0@example.net", &["other.example"])
            .is_some()
    );
    let e = farm.tracker.suppressions.get("u0@example.net").unwrap();
    assert_eq!(e.until - e.since, 3600);

    let off = fixture("");
    let f = feedback("suppress = \"off\"");
    off.tracker.set_complainers(f.suppress, f.suppress_for.0);
    complain(&off.tracker, "gmail", 1);
    assert!(
        off.tracker
            .suppressed("u0@example.net", &["shop.example"])
            .is_none()
    );
}

#[test]
fn after_a_restart_the_window_still_starts_at_the_quarantines_end() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    complain(t, "gmail", 4);
    let until = complaints_hold(t, "gmail").unwrap().until.unwrap();
    // A new tracker on the same store (the relay restarted): read back from the events.
    let again = Tracker::new(
        &Settings::default(),
        t.pools.clone(),
        t.suppressions.clone(),
    )
    .unwrap()
    .with_history(Arc::new(History::new(Some(f.state.clone()))));
    assert_eq!(again.last_complaints_quarantine(ip(), "gmail", 0), until);
    assert_eq!(again.last_complaints_quarantine(ip(), "microsoft", 0), 0);
}

#[test]
fn complaints_at_once_make_one_offence() {
    let f = fixture("");
    let t = &f.tracker;
    deliver(t, "gmail", 1000);
    complain(t, "gmail", 3);
    // 32 reports at once, each over the line: one quarantine, the rest in its incident.
    let barrier = std::sync::Barrier::new(32);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                let mut c = complaint("gmail", "");
                c.recipient = None;
                barrier.wait();
                for _ in 0..2 {
                    assert_eq!(t.complaint(&c, false), Charge::Counted);
                }
            });
        }
    });
    let h = complaints_hold(t, "gmail").unwrap();
    assert_eq!(h.offence, 1, "{h:?}");
    assert!(
        h.evidence.ends_with("; 64 complaints in one incident"),
        "{}",
        h.evidence
    );
}
