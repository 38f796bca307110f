use std::sync::Arc;

use super::*;
use crate::feedback::{Charge, Complaint, Evidence, OnComplaint, dispatch};
use crate::outcome::classify::{Class, Signal};

fn settings(min_volume: u64) -> Settings {
    Settings {
        min_volume,
        throttle_per_hour: 2,
        ..Settings::default()
    }
}

fn complaint(login: Option<&str>, domain: Option<&str>) -> Complaint {
    Complaint {
        feedback_type: "abuse".into(),
        reporter: "fbl.example".into(),
        provider: Some("microsoft".into()),
        source_ip: Some("127.0.0.10".parse().unwrap()),
        queue_id: Some("Q1".into()),
        login: login.map(str::to_string),
        sender_domain: domain.map(str::to_string),
        recipient: None,
        arrived_at: crate::spool::now_unix(),
        evidence: Evidence::Trace,
    }
}

fn deliver(a: &Accounts, login: &str, domain: &str, n: usize) {
    let now = crate::spool::now_unix();
    for _ in 0..n {
        a.count(
            &Accounts::keys(Some(login), Some(domain)),
            Outcome::Delivered,
            now,
            None,
        );
    }
}

fn standing(a: &Accounts, k: &Key) -> Standing {
    a.get(k).map(|v| v.standing).unwrap_or(Standing::Good)
}

#[test]
fn replies_count_as_the_customer_sees_its_fault() {
    let of = Outcome::of_reply;
    assert_eq!(
        of(250, Class::Other, Signal::None),
        Some(Outcome::Delivered)
    );
    // Unknown recipients are the list's fault: the account's, not the IP's.
    assert_eq!(
        of(550, Class::BadRecipient, Signal::None),
        Some(Outcome::BadRecipient)
    );
    assert_eq!(
        of(552, Class::MailboxFull, Signal::None),
        Some(Outcome::RecipientSide)
    );
    assert_eq!(
        of(554, Class::Content, Signal::None),
        Some(Outcome::Bounced)
    );
    assert_eq!(of(550, Class::Block, Signal::Block), Some(Outcome::Blocked));
    assert_eq!(of(451, Class::Transient, Signal::None), None);
}

#[test]
fn rates_need_the_minimum_volume_then_throttle_then_suspend() {
    let s = Settings {
        min_volume: 100,
        ..Settings::default()
    };
    let mut c = Counts {
        delivered: 99,
        complained: 50,
        ..Counts::default()
    };
    assert_eq!(judge(&c, &s), Verdict::Good, "below min_volume");
    c.delivered = 1000;
    c.complained = 2; // 0.2 % > 0.15 % (half of 0.3 %)
    let Verdict::Throttle(b) = judge(&c, &s) else {
        panic!("{:?}", judge(&c, &s))
    };
    assert_eq!((b.rate, b.count, b.of), (Rate::Complaint, 2, 1000));
    assert_eq!(
        b.to_string(),
        "complaint rate 0.2 % (2 of 1000) over 0.15 %"
    );
    c.complained = 12;
    let Verdict::Suspend(b) = judge(&c, &s) else {
        panic!()
    };
    assert_eq!(
        b.to_string(),
        "complaint rate 1.2 % (12 of 1000) over 0.3 %"
    );
    // Bounces: unknown recipients count.
    let c = Counts {
        delivered: 80,
        bad_recipients: 20,
        ..Counts::default()
    };
    assert!(matches!(judge(&c, &s), Verdict::Suspend(b) if b.rate == Rate::Bounce));
    assert_eq!(percent(0.003), "0.3 %");
    assert_eq!(percent(0.05), "5 %");
}

#[test]
fn one_logins_complaints_suspend_it_and_take_the_blame_others_keep_sending() {
    let a = Accounts::new(Some(settings(10)), None);
    deliver(&a, "alice", "alice.test", 20);
    deliver(&a, "bob", "bob.test", 20);
    let alice = Key::login("alice");
    let mut charges = Vec::new();
    for _ in 0..3 {
        charges.push(a.complaint(&complaint(Some("alice"), Some("alice.test")), false));
    }
    // 1 of 20 = 5 % is already over 0.3 %: suspended at the first, and every one after it
    // is blamed on the account too.
    assert_eq!(charges, vec![Charge::Blamed; 3]);
    assert_eq!(standing(&a, &alice), Standing::Suspended);
    assert_eq!(
        standing(&a, &Key::domain("alice.test")),
        Standing::Suspended
    );
    let gate = a.gate(Some("alice"), Some("alice.test"));
    let r = gate.reply().expect("refused");
    assert_eq!((r.code, r.status.as_str()), (550, "5.7.1"));
    assert!(
        // The reason is the rate that suspended it.
        r.text.starts_with(
            "login alice suspended: complaint rate 5 % (1 of 20) over 0.3 % in 7 days"
        ),
        "{r}"
    );
    assert!(a.gate(Some("bob"), Some("bob.test")).is_open());
    // Through dispatch: a later actor (the IP windows) hears that the account took the blame.
    struct Ip(std::sync::Mutex<Vec<bool>>);
    impl OnComplaint for Ip {
        fn complaint(&self, _c: &Complaint, blamed: bool) -> Charge {
            self.0.lock().unwrap().push(blamed);
            if blamed {
                Charge::Passed
            } else {
                Charge::Counted
            }
        }
    }
    let accounts = Arc::new(a);
    let ip = Arc::new(Ip(Default::default()));
    let actors: Vec<Arc<dyn OnComplaint>> = vec![accounts.clone(), ip.clone()];
    assert!(dispatch(&actors, &complaint(Some("alice"), None)));
    assert!(!dispatch(&actors, &complaint(None, None)));
    assert_eq!(*ip.0.lock().unwrap(), vec![true, false]);
}

#[test]
fn below_the_minimum_volume_a_complaint_is_counted_not_blamed() {
    let a = Accounts::new(Some(settings(100)), None);
    deliver(&a, "carol", "c.test", 20);
    let charge = a.complaint(&complaint(Some("carol"), None), false);
    assert_eq!(charge, Charge::Counted);
    assert_eq!(a.get(&Key::login("carol")).unwrap().counts.complained, 1);
    // A complaint naming no account is none of the accounts' business.
    assert_eq!(a.complaint(&complaint(None, None), false), Charge::Passed);
}

#[test]
fn throttled_accounts_send_a_few_an_hour_and_the_throttle_lifts() {
    let s = Settings {
        max_bounce_rate: 0.5,
        ..settings(10)
    };
    let a = Accounts::new(Some(s), None);
    let now = crate::spool::now_unix();
    let keys = Accounts::keys(Some("dave"), None);
    for _ in 0..7 {
        a.count(&keys, Outcome::Delivered, now, None);
    }
    for _ in 0..3 {
        a.count(&keys, Outcome::BadRecipient, now, Some("Q9"));
    }
    // 30 % > 25 % (half of 50 %), under 50 %.
    assert_eq!(standing(&a, &keys[0]), Standing::Throttled);
    assert!(a.gate(Some("dave"), None).is_open());
    a.accepted(Some("dave"), None);
    a.accepted(Some("dave"), None);
    let r = a.gate(Some("dave"), None).reply().expect("throttled");
    assert_eq!((r.code, r.status.as_str()), (450, "4.7.1"));
    assert_eq!(
        r.text,
        "login dave throttled: bounce rate 30 % (3 of 10) over 25 % in 7 days; at most 2 messages an hour"
    );
    for _ in 0..10 {
        a.count(&keys, Outcome::Delivered, now, None);
    }
    assert_eq!(standing(&a, &keys[0]), Standing::Good);
    let v = a.get(&keys[0]).unwrap();
    assert_eq!(v.events.len(), 2, "{:?}", v.events);
}

#[test]
fn without_limits_accounts_are_counted_never_held() {
    let a = Accounts::new(None, None);
    deliver(&a, "erin", "e.test", 200);
    for _ in 0..100 {
        a.complaint(&complaint(Some("erin"), None), false);
    }
    assert_eq!(standing(&a, &Key::login("erin")), Standing::Good);
    assert!(a.gate(Some("erin"), None).is_open());
    assert_eq!(a.list(Kind::Login)[0].counts.complained, 100);
}

#[test]
fn suspension_survives_a_restart_until_released_and_release_is_in_the_history() {
    let dir = crate::util::test_dir::tempdir("acct").join("data");
    let state = Arc::new(crate::state::State::open(&dir).unwrap());
    {
        let a = Accounts::new(Some(settings(10)), Some(state.clone()));
        deliver(&a, "frank", "f.test", 10);
        a.complaint(&complaint(Some("frank"), None), false);
        a.flush();
    }
    let a = Accounts::new(Some(settings(10)), Some(state.clone()));
    let frank = Key::login("frank");
    assert_eq!(standing(&a, &frank), Standing::Suspended);
    assert_eq!(a.get(&Key::domain("f.test")).unwrap().counts.delivered, 10);
    let v = a
        .release(&frank, "ops-anna", Some("127.0.0.1:5000"))
        .unwrap();
    assert_eq!(v.standing, Standing::Good);
    assert_eq!(v.counts, Counts::default(), "the window starts afresh");
    let last = v.events.last().unwrap();
    assert_eq!(
        (last.by.as_deref(), last.peer.as_deref()),
        (Some("ops-anna"), Some("127.0.0.1:5000"))
    );
    assert!(last.why.contains("released"), "{last:?}");
    assert!(a.release(&Key::login("nobody"), "x", None).is_none());
    drop(a);
    let a = Accounts::new(Some(settings(10)), Some(state));
    assert_eq!(standing(&a, &frank), Standing::Good);
    assert!(a.gate(Some("frank"), None).is_open());
    assert_eq!(a.get(&frank).unwrap().events.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sender_domains_are_bounded_and_a_held_one_is_never_forgotten() {
    let s = Settings {
        max_sender_domains: 3,
        ..settings(1)
    };
    let a = Accounts::new(Some(s), None);
    let now = crate::spool::now_unix();
    a.count(&[Key::domain("bad.test")], Outcome::Bounced, now, None);
    assert_eq!(standing(&a, &Key::domain("bad.test")), Standing::Suspended);
    for i in 0..10 {
        a.count(
            &[Key::domain(&format!("d{i}.test"))],
            Outcome::Delivered,
            now,
            None,
        );
    }
    let names: Vec<String> = a.list(Kind::Domain).into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"bad.test".to_string()), "{names:?}");
    // Domains compare without case; MAIL FROM's domain stands in for a missing From: domain.
    assert_eq!(Key::domain("Bad.TEST."), Key::domain("bad.test"));
    assert_eq!(sender_domain(None, "x@Mail.test"), Some("Mail.test"));
    assert_eq!(
        sender_domain(Some("from.test"), "x@mail.test"),
        Some("from.test")
    );
    assert_eq!(sender_domain(None, ""), None);
}

#[test]
fn the_farm_shares_suspensions_and_releases_and_the_later_one_wins() {
    use crate::cluster::events::{Change, Outbox};
    let (outbox, mut sent) = Outbox::new("relay-1");
    let one = Accounts::new(Some(settings(10)), None).sharing(Some(Arc::new(outbox)));
    let two = Accounts::new(Some(settings(10)), None);
    deliver(&one, "gina", "g.test", 10);
    one.complaint(&complaint(Some("gina"), None), false);
    // Suspended on relay 1: the decision went out, for the login and its domain untouched.
    let event = sent.try_recv().expect("shared");
    let Change::Account { account, decision } = event.change.clone() else {
        panic!("{event:?}")
    };
    assert_eq!(account, "login|gina");
    assert_eq!(decision.standing, Standing::Suspended);
    assert!(sent.try_recv().is_err(), "only the suspension is shared");
    // Relay 2 applies it: gina is refused there too, though relay 2 sent none of her mail.
    assert!(two.apply_remote(&account, decision.clone(), "relay-1", event.at_ms));
    let r = two
        .gate(Some("gina"), None)
        .reply()
        .expect("refused on relay 2");
    assert_eq!(r.code, 550, "{r}");
    let v = two.get(&Key::login("gina")).unwrap();
    assert!(v.events[0].why.ends_with("(on relay-1)"), "{:?}", v.events);
    // The same event again (event and resync both carry it): nothing more.
    assert!(!two.apply_remote(&account, decision.clone(), "relay-1", event.at_ms));
    // Released on relay 2, later: relay 1 takes the release; the old suspension loses.
    two.release(&Key::login("gina"), "ops", None).unwrap();
    let (account, release, at_ms) = two.changes().into_iter().next().unwrap();
    assert!(at_ms > event.at_ms);
    assert_eq!(release.by.as_deref(), Some("ops"));
    assert!(one.apply_remote(&account, release, "relay-2", at_ms));
    assert!(one.gate(Some("gina"), None).is_open());
    assert_eq!(
        one.get(&Key::login("gina")).unwrap().counts,
        Counts::default()
    );
    assert!(!one.apply_remote(&account, decision, "relay-1", event.at_ms));
    assert!(one.gate(Some("gina"), None).is_open());
    assert!(!one.apply_remote(
        "nonsense",
        Decision {
            standing: Standing::Good,
            breach: None,
            why: String::new(),
            by: None
        },
        "x",
        1
    ));
}

#[test]
fn metrics_keep_per_account_series_bounded() {
    let a = Accounts::new(Some(settings(1)), None);
    let now = crate::spool::now_unix();
    for i in 0..150 {
        a.count(
            &[Key::login(&format!("u{i:03}"))],
            Outcome::Bounced,
            now,
            None,
        );
    }
    a.count(&[Key::domain("fine.test")], Outcome::Delivered, now, None);
    let mut accounts = a.list(Kind::Login);
    accounts.extend(a.list(Kind::Domain));
    let mut stages = crate::metrics::stage_registry();
    metrics::register(&mut stages, &accounts);
    let text = crate::metrics::render(&crate::metrics::Levels {
        stages,
        ..Default::default()
    });
    assert_eq!(
        text.matches("poolrelay_account_standing{").count(),
        metrics::MAX_SERIES,
        "{text}"
    );
    assert!(text.contains(
        "poolrelay_account_standing{kind=\"login\",name=\"u000\",standing=\"suspended\"} 1"
    ));
    for want in [
        "poolrelay_accounts{kind=\"login\",standing=\"suspended\"} 150",
        "poolrelay_accounts{kind=\"domain\",standing=\"good\"} 1",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}

fn postmaster(domain: &str, date: &str, rate: f64) -> crate::reputation::feeds::DomainVerdict {
    use crate::reputation::feeds::Level;
    let level = if rate >= 0.003 {
        Level::Over
    } else if rate >= 0.001 {
        Level::Warning
    } else {
        Level::Ok
    };
    crate::reputation::feeds::DomainVerdict {
        domain: domain.into(),
        spam_rate: rate,
        level,
        date: date.into(),
        evidence: format!(
            "Postmaster {date} {domain}: spam rate {:.2} %",
            rate * 100.0
        ),
    }
}

#[test]
fn postmaster_over_throttles_the_domain_and_through_it_its_logins() {
    use crate::reputation::feeds::OnDomainVerdict;
    let a = Accounts::new(Some(settings(10)), None);
    a.on_domain_verdict(&postmaster("held.test", "2026-12-06", 0.0045));
    a.on_domain_verdict(&postmaster("fine.test", "2026-12-06", 0.0002));
    let held = Key::domain("held.test");
    assert_eq!(standing(&a, &held), Standing::Throttled);
    // An `Ok` verdict on a domain never seen makes no account.
    assert!(a.get(&Key::domain("fine.test")).is_none());
    // The throttle's hourly allowance first, then the feed's evidence at MAIL FROM.
    assert!(a.gate(Some("hank"), Some("held.test")).is_open());
    a.accepted(Some("hank"), Some("held.test"));
    a.accepted(Some("ivy"), Some("held.test"));
    let r = a
        .gate(Some("hank"), Some("held.test"))
        .reply()
        .expect("held");
    assert_eq!((r.code, r.status.as_str()), (450, "4.7.1"));
    assert_eq!(
        r.text,
        "sender domain held.test throttled: Postmaster 2026-12-06 held.test: spam rate 0.45 %, \
         over Google's spam-rate action line; at most 2 messages an hour"
    );
    // The login is not held itself: its other domains still send.
    assert!(a.gate(Some("hank"), Some("other.test")).is_open());
    let v = a.get(&held).unwrap();
    assert_eq!(
        v.why.as_deref(),
        Some(
            "Postmaster 2026-12-06 held.test: spam rate 0.45 %, over Google's spam-rate action line"
        )
    );
    assert_eq!(v.postmaster.as_ref().map(|p| p.spam_rate), Some(0.0045));
    assert_eq!(v.events.len(), 1, "{:?}", v.events);
}

#[test]
fn postmaster_warning_shows_ok_lifts_only_the_verdicts_hold() {
    use crate::reputation::feeds::{Level, OnDomainVerdict};
    let a = Accounts::new(Some(settings(10)), None);
    let warned = Key::domain("warn.test");
    a.on_domain_verdict(&postmaster("warn.test", "2026-12-05", 0.0015));
    let v = a.get(&warned).unwrap();
    assert_eq!(v.standing, Standing::Good, "a warning holds nothing");
    assert_eq!(v.postmaster.map(|p| p.level), Some(Level::Warning));
    assert!(a.gate(None, Some("warn.test")).is_open());

    // Over, then a warning: still held (it lifts under the warning line), then `Ok` lifts it.
    let d = Key::domain("d.test");
    a.on_domain_verdict(&postmaster("d.test", "2026-12-05", 0.004));
    a.on_domain_verdict(&postmaster("d.test", "2026-12-06", 0.002));
    assert_eq!(standing(&a, &d), Standing::Throttled);
    a.on_domain_verdict(&postmaster("d.test", "2026-12-07", 0.0001));
    let v = a.get(&d).unwrap();
    assert_eq!(v.standing, Standing::Good);
    assert!(
        v.events.last().unwrap().why.contains("back under"),
        "{:?}",
        v.events
    );

    // A throttle of the account's own rates is not the verdict's to lift.
    let s = Settings {
        max_bounce_rate: 0.5,
        ..settings(10)
    };
    let b = Accounts::new(Some(s), None);
    let own = Key::domain("own.test");
    let now = crate::spool::now_unix();
    for o in [Outcome::Delivered; 7]
        .into_iter()
        .chain([Outcome::BadRecipient; 3])
    {
        b.count(std::slice::from_ref(&own), o, now, None);
    }
    assert_eq!(standing(&b, &own), Standing::Throttled);
    b.on_domain_verdict(&postmaster("own.test", "2026-12-06", 0.005));
    b.on_domain_verdict(&postmaster("own.test", "2026-12-07", 0.0));
    let v = b.get(&own).unwrap();
    assert_eq!(v.standing, Standing::Throttled);
    assert!(v.why.unwrap().starts_with("bounce rate 30 %"));
}

#[test]
fn a_postmaster_hold_survives_a_restart_acts_once_and_yields_to_a_release() {
    use crate::reputation::feeds::OnDomainVerdict;
    let dir = crate::util::test_dir::tempdir("acct").join("data");
    let state = Arc::new(crate::state::State::open(&dir).unwrap());
    let k = Key::domain("pm.test");
    let over = postmaster("pm.test", "2026-12-06", 0.006);
    {
        let a = Accounts::new(Some(settings(10)), Some(state.clone()));
        a.on_domain_verdict(&over);
    }
    let a = Accounts::new(Some(settings(10)), Some(state.clone()));
    assert_eq!(standing(&a, &k), Standing::Throttled);
    // The feed re-tells the latest verdict to a new listener and every poll: no new event.
    a.on_domain_verdict(&over);
    assert_eq!(a.get(&k).unwrap().events.len(), 1);
    a.release(&k, "ops-anna", None).unwrap();
    a.on_domain_verdict(&over);
    assert_eq!(
        standing(&a, &k),
        Standing::Good,
        "the same day's verdict acted"
    );
    a.on_domain_verdict(&postmaster("pm.test", "2026-12-07", 0.006));
    assert_eq!(standing(&a, &k), Standing::Throttled);
    // Without `[accounts]` the verdict is recorded, never held.
    let none = Accounts::new(None, None);
    none.on_domain_verdict(&over);
    let v = none.get(&k).unwrap();
    assert_eq!((v.standing, v.postmaster.is_some()), (Standing::Good, true));
    assert!(none.gate(None, Some("pm.test")).is_open());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_sender_domain_cap_holds_for_local_mail_and_the_farm_and_never_forgets_a_held_one() {
    let s = Settings {
        max_sender_domains: 10,
        ..settings(1)
    };
    let a = Accounts::new(Some(s), None);
    let now = crate::spool::now_unix();
    let domains = |a: &Accounts| a.list(Kind::Domain);
    // Local mail: 15 domains under a cap of 10.
    for i in 0..15 {
        a.count(
            &[Key::domain(&format!("d{i}.test"))],
            Outcome::Delivered,
            now,
            None,
        );
        assert!(domains(&a).len() <= 10, "{}", domains(&a).len());
    }
    // The farm: suspensions of 12 domains this relay never saw.
    let suspend = Decision {
        standing: Standing::Suspended,
        breach: None,
        why: "complaint rate".into(),
        by: None,
    };
    for i in 0..12 {
        a.apply_remote(
            &format!("domain|far{i}.test"),
            suspend.clone(),
            "relay-2",
            1_000 + i,
        );
        assert!(domains(&a).len() <= 10, "{}", domains(&a).len());
    }
    // Every place is held now: the held ones stay, a new domain is not tracked.
    let held: Vec<String> = domains(&a).into_iter().map(|v| v.name).collect();
    assert_eq!(held.len(), 10);
    assert!(
        domains(&a)
            .iter()
            .all(|v| v.standing == Standing::Suspended)
    );
    let out = a.count(&[Key::domain("late.test")], Outcome::Delivered, now, None);
    assert!(out.is_empty(), "{out:?}");
    assert!(!a.apply_remote("domain|later.test", suspend, "relay-2", 5_000));
    let after: Vec<String> = domains(&a).into_iter().map(|v| v.name).collect();
    assert_eq!(after, held);
    // Logins are not sender domains: still counted.
    let out = a.count(&[Key::login("zed")], Outcome::Delivered, now, None);
    assert_eq!(out.len(), 1);
}

#[test]
fn parallel_transactions_share_the_throttle_and_one_that_ends_unqueued_gives_its_place_back() {
    let s = Settings {
        max_bounce_rate: 0.5,
        throttle_per_hour: 3,
        ..settings(10)
    };
    let a = Accounts::new(Some(s), None);
    let now = crate::spool::now_unix();
    let keys = Accounts::keys(Some("hal"), None);
    for _ in 0..7 {
        a.count(&keys, Outcome::Delivered, now, None);
    }
    for _ in 0..3 {
        a.count(&keys, Outcome::BadRecipient, now, None);
    }
    assert_eq!(standing(&a, &keys[0]), Standing::Throttled);
    // Six sessions pass MAIL FROM before any of them queues: three places an hour.
    let mut tries: Vec<Result<Slot, Gate>> = (0..6).map(|_| a.admit(Some("hal"), None)).collect();
    let refused: Vec<u16> = tries
        .iter()
        .filter_map(|t| t.as_ref().err())
        .map(|g| g.reply().expect("refused").code)
        .collect();
    assert_eq!(refused, vec![450; 3]);
    let mut slots: Vec<Slot> = tries.drain(..).filter_map(Result::ok).collect();
    assert_eq!(slots.len(), 3);
    assert_eq!(a.get(&keys[0]).unwrap().sent_this_hour, 3);
    // One RSETs: its place is given back and the next MAIL FROM takes it.
    drop(slots.pop());
    assert_eq!(a.get(&keys[0]).unwrap().sent_this_hour, 2);
    slots.push(a.admit(Some("hal"), None).expect("a place was given back"));
    // All three are queued: counted, their places given back, the hour stays full.
    for slot in slots {
        a.accepted(Some("hal"), None);
        drop(slot);
    }
    assert_eq!(a.get(&keys[0]).unwrap().sent_this_hour, 3);
    assert!(a.admit(Some("hal"), None).is_err());
}
