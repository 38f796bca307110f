//! The outcome windows, quarantines and incidents of `Tracker::observe`.

use super::*;
use crate::pool::{Hold, HoldKind, Scope};
use std::path::Path;

fn tracker(extra: &str) -> Tracker {
    let text = format!(
        "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"p\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o\"\n[reputation]\n{extra}"
    );
    let config = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
    let pools = Arc::new(Pools::new(&config.pool_settings(), None).unwrap());
    let dir = crate::util::test_dir::tempdir("rates");
    let suppressions = Arc::new(Suppressions::open(&dir));
    Tracker::new(&config.reputation, pools, suppressions).unwrap()
}

fn now_ms() -> u64 {
    crate::pool::warmup::Clock::now_ms()
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

/// One reply to a delivery that began now, to no recipient in particular.
fn see(t: &Tracker, ip: IpAddr, provider: &str, sender: &str, mut r: RemoteReply) -> Verdict {
    t.observe(ip, provider, sender, "", now_ms(), &mut r)
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
    let v = t.observe(ip, "microsoft", "s@x", "", now_ms(), &mut r);
    assert_eq!(v.status, Status::RetryElsewhere);
    assert_eq!((r.code, r.status.as_str()), (451, "4.7.0"));
    assert!(
        r.text.starts_with(RETRY_ELSEWHERE) && r.text.contains("blocked using"),
        "{}",
        r.text
    );
    assert!(quarantined(&t, "microsoft").is_none(), "threshold is 2");
    let mut r = reply(550, "5.7.1", "blocked using zen.spamhaus.org");
    t.observe(ip, "microsoft", "s@x", "", now_ms(), &mut r);
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
    assert_eq!(h.offence, 1);
    // Replies to deliveries in flight while it is quarantined: the same incident.
    let before = now_ms() - 1000;
    for _ in 0..3 {
        t.observe(
            ip,
            "microsoft",
            "s@x",
            "",
            before,
            &mut reply(550, "5.7.1", "blocked using x"),
        );
    }
    let h = quarantined(&t, "microsoft").unwrap();
    assert_eq!((h.offence, h.replies), (1, 5), "{h:?}");
    assert!(
        h.evidence.ends_with("; 5 block replies in one incident"),
        "{}",
        h.evidence
    );
    let cool = h.until.unwrap() - h.since;
    assert!((590..=610).contains(&cool), "not doubled: {cool}");
    // The quarantine ended (probation): a repeat offender waits twice as long.
    t.pools
        .release(ip, Scope::Provider("microsoft".into()), Cause::BlockReply)
        .unwrap();
    for _ in 0..2 {
        see(
            &t,
            ip,
            "microsoft",
            "s@x",
            reply(550, "5.7.1", "blocked using x"),
        );
    }
    let h = quarantined(&t, "microsoft").unwrap();
    let cool = h.until.unwrap() - h.since;
    assert!((1190..=1210).contains(&cool), "{cool}");
    assert_eq!(h.offence, 2);
}

#[test]
fn concurrent_block_replies_are_one_offence() {
    let t = tracker("cooldown = \"1h\"");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    // Five deliveries began together; their replies come in one after another.
    let began = now_ms();
    for _ in 0..5 {
        let mut r = reply(
            550,
            "5.7.1",
            "Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org",
        );
        let v = t.observe(ip, "gmail", "s@x", "a@b", began, &mut r);
        assert_eq!(v.status, Status::RetryElsewhere);
    }
    let holds = t.pools.holds();
    assert_eq!(holds.len(), 1, "{holds:?}");
    let h = &holds[0].1;
    assert_eq!((h.offence, h.replies), (1, 5));
    assert_eq!(h.until.unwrap() - h.since, 3600);
    assert!(
        h.evidence.contains("blocked using zen.spamhaus.org")
            && h.evidence.ends_with("5 block replies in one incident"),
        "{}",
        h.evidence
    );
    assert_eq!(t.status().windows[0].offences, 1);
}

#[test]
fn another_relays_offence_counts_for_the_next_one() {
    let t = tracker("cooldown = \"10m\"");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    // A farm's record (offence 3) whose time is over: this relay's first block is offence 4.
    let now = crate::spool::now_unix();
    let farm = Hold {
        kind: HoldKind::Quarantined,
        scope: "gmail".into(),
        cause: Cause::BlockReply,
        reason: "block reply".into(),
        evidence: String::new(),
        since: now - 100,
        until: Some(now - 1),
        offence: 3,
        replies: 1,
    };
    t.pools.quarantine_record(ip, farm).unwrap();
    see(
        &t,
        ip,
        "gmail",
        "s@x",
        reply(550, "5.7.1", "blocked using x"),
    );
    let h = quarantined(&t, "gmail").unwrap();
    assert_eq!(h.offence, 4);
    assert_eq!(h.until.unwrap() - h.since, 4800, "10m × 2³");
}

#[test]
fn outcomes_of_deliveries_in_flight_stay_out_of_the_window() {
    let t = tracker("window = 10\nmin_samples = 10\nmax_deferral_rate = 0.5");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    let began = now_ms();
    for i in 0..10 {
        let mut r = if i < 4 {
            reply(250, "2.0.0", "ok")
        } else {
            reply(451, "4.3.0", "try again later")
        };
        t.observe(ip, "yahoo", "u", "", began, &mut r);
    }
    let first = quarantined(&t, "yahoo").expect("6 of 10 deferred");
    assert_eq!((first.reason.as_str(), first.offence), ("deferral rate", 1));
    // Twenty more deferrals of deliveries that were in flight: no second quarantine.
    for _ in 0..20 {
        t.observe(
            ip,
            "yahoo",
            "u",
            "",
            began,
            &mut reply(451, "4.3.0", "try again later"),
        );
    }
    let w = &t.status().windows[0];
    assert_eq!((w.samples, w.offences), (0, 1), "{w:?}");
    let h = quarantined(&t, "yahoo").unwrap();
    assert_eq!((h.offence, h.since, h.until), (1, first.since, first.until));
}

#[test]
fn throttling_slows_the_ip_without_quarantine() {
    let t = tracker("window = 10\nmin_samples = 10\nmax_deferral_rate = 0.3");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    let gmail = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address";
    let began = now_ms();
    for _ in 0..5 {
        t.observe(ip, "gmail", "s", "", began, &mut reply(250, "2.0.0", "ok"));
    }
    for _ in 0..10 {
        let mut r = reply(421, "4.7.28", &gmail[11..]);
        let v = t.observe(ip, "gmail", "s", "a@b", began, &mut r);
        assert_eq!(v.status, Status::Deferred, "a deferral for the recipient");
        assert_eq!(r.code, 421, "not rewritten");
    }
    assert!(t.pools.holds().is_empty(), "{:?}", t.pools.holds());
    let w = &t.status().windows[0];
    assert_eq!((w.samples, w.deferred, w.block_replies), (5, 0, 0), "{w:?}");
    // One cut for the one episode: all ten deliveries began before it.
    let pv = &t.pools.status().pools[0].ips[0].providers["gmail"];
    assert_eq!(pv.pace_per_hour, Some(1), "{pv:?}");
    assert!(pv.backoff_until.is_some());
}

#[test]
fn throttling_that_persists_after_the_cuts_quarantines() {
    let t = tracker("throttle_cuts = 2\ncooldown = \"10m\"");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    let throttle = || {
        reply(
            451,
            "4.7.650",
            "The mail server [127.0.0.10] has been temporarily rate limited due to IP reputation.",
        )
    };
    // Each throttled delivery began after the last cut: two cuts, then the third quarantines.
    for i in 0..3 {
        let after_the_cut = now_ms() + 1000 * (i + 1);
        t.observe(ip, "microsoft", "s", "", after_the_cut, &mut throttle());
        assert_eq!(
            quarantined(&t, "microsoft").is_some(),
            i == 2,
            "after {}",
            i + 1
        );
    }
    let h = quarantined(&t, "microsoft").unwrap();
    assert_eq!((h.cause.clone(), h.offence), (Cause::Throttling, 1));
    assert_eq!(h.cause.to_string(), "throttling");
    assert!(
        h.evidence.contains("after 2 pace cuts today"),
        "{}",
        h.evidence
    );
    assert_eq!(h.until.unwrap() - h.since, 600);
    // Throttling replies of deliveries in flight: counted in the incident.
    t.observe(ip, "microsoft", "s", "", now_ms() - 5000, &mut throttle());
    let h = quarantined(&t, "microsoft").unwrap();
    assert!(
        h.evidence.ends_with("2 throttling replies in one incident"),
        "{}",
        h.evidence
    );
    // After it ends, the same day: the first throttling reply cuts the pace, no offence 2.
    let after = h.until.unwrap() * 1000 + 1;
    t.observe(ip, "microsoft", "s", "", after, &mut throttle());
    assert_eq!(quarantined(&t, "microsoft").unwrap(), h);
}

#[test]
fn throttling_from_an_unlisted_destination_only_backs_off() {
    let t = tracker("throttle_cuts = 2\ncooldown = \"10m\"");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    // Each began after the last would-be cut: for a listed provider the third quarantines.
    for i in 0..4 {
        let mut r = reply(421, "4.7.28", "rate limited, try again later");
        let v = t.observe(ip, "other", "s", "a@b", now_ms() + 1000 * (i + 1), &mut r);
        assert_eq!(v.status, Status::Deferred);
    }
    assert!(quarantined(&t, "other").is_none(), "{:?}", t.pools.holds());
    let pv = &t.pools.status().pools[0].ips[0].providers["other"];
    assert_eq!(
        pv.pace_per_hour, None,
        "no pace cut for all unlisted: {pv:?}"
    );
    assert!(pv.backoff_until.is_some(), "{pv:?}");
}

#[test]
fn hard_bounce_rate_needs_samples_and_ignores_bad_recipients() {
    let t = tracker("window = 20\nmin_samples = 10\nmax_bounce_rate = 0.2");
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    // Bad recipients, however many, are the list's problem.
    for _ in 0..15 {
        see(&t, ip, "gmail", "s@x", reply(550, "5.1.1", "user unknown"));
    }
    assert!(quarantined(&t, "gmail").is_none());
    for _ in 0..5 {
        see(&t, ip, "gmail", "s@x", reply(250, "2.0.0", "ok"));
    }
    // 20 in the window: 4 content rejections = 20% (not over), the 5th is over.
    for i in 0..5 {
        see(
            &t,
            ip,
            "gmail",
            "s@x",
            reply(554, "5.7.1", "message looks like spam"),
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
        see(&t, ip, "yahoo", "u", reply(250, "2.0.0", "ok"));
    }
    for i in 0..6 {
        see(&t, ip, "yahoo", "u", reply(451, "4.3.0", "try again later"));
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
        see(
            &t,
            ip,
            "gmail",
            "list@x",
            reply(550, "5.1.1", "no such user"),
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
    let v = t.observe(ip, "other", "s@x", "a@b", now_ms(), &mut r);
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
        t.observe(ip, "gmail", "s", "", now_ms(), &mut r);
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
    see(&t, ip, "gmail", "s", reply(250, "2.0.0", "ok"));
    t.observe(ip, "gmail", "s", "", now_ms(), &mut spam());
    assert!(
        quarantined(&t, "gmail").is_none(),
        "2 outcomes: no verdict yet"
    );
    see(&t, ip, "gmail", "s", reply(250, "2.0.0", "ok"));
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
        see(&t, ip, "gmail", "s", reply(250, "2.0.0", "ok"));
    }
    assert!(t.pools.in_probation(ip, "gmail"), "2 of 3 probes");
    see(&t, ip, "gmail", "s", reply(250, "2.0.0", "ok"));
    assert!(
        !t.pools.in_probation(ip, "gmail"),
        "3 clean probes reinstate"
    );
    assert!(t.pools.holds().is_empty());
}

#[test]
fn block_replies_arriving_at_once_start_one_incident() {
    let t = Arc::new(tracker("cooldown = \"1h\""));
    let ip: IpAddr = "127.0.0.10".parse().unwrap();
    let began = now_ms();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut r = reply(550, "5.7.1", "blocked using zen.spamhaus.org");
                t.observe(ip, "gmail", "s@x", "", began, &mut r);
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let h = quarantined(&t, "gmail").unwrap();
    assert_eq!((h.offence, h.replies), (1, 8), "{h:?}");
    assert_eq!(h.until.unwrap() - h.since, 3600);
}
