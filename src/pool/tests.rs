use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use super::pools::now_s;
use super::*;
use crate::config::Config;
use crate::spool::RemoteReply;
use crate::state::State;

fn config(extra: &str) -> Config {
    let text = format!(
        "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n{extra}"
    );
    Config::parse(Path::new("t.toml"), &text).unwrap()
}

const TWO: &str = "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One pick, its lease dropped at once (the message "went"): the source's label or the hold.
fn pick(p: &Arc<Pools>, provider: &str) -> Result<String, Held> {
    pick_except(p, provider, &[])
}

fn pick_except(p: &Arc<Pools>, provider: &str, exclude: &[IpAddr]) -> Result<String, Held> {
    match p.pick(Some("a"), provider, false, exclude) {
        Selection::Picked(pk) => Ok(pk.source.label()),
        Selection::Held(h) => Err(h),
        Selection::NoFamily => panic!("no address of the family"),
        Selection::Exhausted => Ok("exhausted".into()),
    }
}

fn counts(p: &Arc<Pools>, provider: &str, n: usize) -> HashMap<String, u32> {
    let mut count: HashMap<String, u32> = HashMap::new();
    for _ in 0..n {
        *count.entry(pick(p, provider).unwrap()).or_default() += 1;
    }
    count
}

fn status_json(p: &Pools) -> serde_json::Value {
    serde_json::to_value(p.status()).unwrap()
}

#[test]
fn round_robin_per_family_and_exclusions() {
    let c = config(&format!(
        "{TWO}[[pool.ip]]\naddress = \"::1\"\nhelo = \"o6\"\n"
    ));
    let p = Arc::new(Pools::without_store(&c.pool_settings()));
    let first = pick(&p, "other").unwrap();
    let second = pick(&p, "other").unwrap();
    assert_ne!(first, second);
    let Selection::Picked(v6) = p.pick(Some("a"), "other", true, &[]) else {
        panic!("v6 pick")
    };
    assert_eq!(v6.source.helo, "o6");
    // A failed IP is skipped for the rest of that message; none left → exhausted, not held.
    assert_eq!(
        pick_except(&p, "other", &[ip("127.0.0.10")]).unwrap(),
        "127.0.0.11"
    );
    assert_eq!(
        pick_except(&p, "other", &[ip("127.0.0.10"), ip("127.0.0.11")]).unwrap(),
        "exhausted"
    );
    let only_v4 = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    assert!(matches!(
        only_v4.pick(Some("a"), "other", true, &[]),
        Selection::NoFamily
    ));
}

#[test]
fn no_pool_lets_the_os_pick() {
    let p = Arc::new(Pools::without_store(&config("").pool_settings()));
    assert_eq!(p.pool_for(None, None, "a@b"), None);
    let Selection::Picked(pk) = p.pick(None, "other", false, &[]) else {
        panic!("no pool picks the OS's address")
    };
    assert_eq!(
        pk.source,
        Source {
            ip: None,
            helo: "relay.test".into()
        }
    );
}

#[test]
fn weighted_selection_is_smooth_and_deterministic() {
    let c = config(
        "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\nweight = 3\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n",
    );
    let p = Arc::new(Pools::without_store(&c.pool_settings()));
    let picks: Vec<String> = (0..8).map(|_| pick(&p, "other").unwrap()).collect();
    assert_eq!(
        picks,
        [
            "127.0.0.10",
            "127.0.0.10",
            "127.0.0.11",
            "127.0.0.10",
            "127.0.0.10",
            "127.0.0.10",
            "127.0.0.11",
            "127.0.0.10"
        ]
    );
}

#[test]
fn equal_weights_share_exactly_while_messages_are_in_flight() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    // Twenty picks held at once (twenty concurrent deliveries), then released.
    for round in 1..=5u32 {
        let leases: Vec<Pick> = (0..20)
            .map(|_| match p.pick(Some("a"), "other", false, &[]) {
                Selection::Picked(pk) => pk,
                _ => panic!("picked"),
            })
            .collect();
        let n10 = leases
            .iter()
            .filter(|l| l.source.label() == "127.0.0.10")
            .count();
        assert_eq!(n10, 10, "round {round}");
    }
    let st = status_json(&p);
    assert_eq!(
        st["pools"][0]["ips"][0]["providers"]["other"]["connections"],
        0
    );
}

#[test]
fn warming_ip_gets_its_cap_then_overflow_goes_to_warm_ips_then_hold() {
    let c = config(
        "[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\nwarmup = \"t\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[warmup]\nday = \"240h\"\nburst = 100\n[[warmup.schedule]]\nname = \"t\"\ndaily = [3]\n[[provider]]\nname = \"p\"\nmx_suffixes = [\"p.test\"]\nmax_per_hour = 5\n",
    );
    let p = Arc::new(Pools::without_store(&c.pool_settings()));
    let mut count: HashMap<String, u32> = HashMap::new();
    let mut held = None;
    for _ in 0..20 {
        match pick(&p, "p") {
            Ok(s) => *count.entry(s).or_default() += 1,
            Err(h) => {
                held = Some(h);
                break;
            }
        }
    }
    // Warming IP: its daily cap of 3 and no more; the warm IP: its hourly throttle of 5.
    assert_eq!(count["127.0.0.10"], 3);
    assert_eq!(count["127.0.0.11"], 5);
    let h = held.expect("held once both are full");
    assert!(
        h.text
            .starts_with("pool a: no source IP has capacity for provider p"),
        "{}",
        h.text
    );
    let st = status_json(&p);
    let ip0 = &st["pools"][0]["ips"][0];
    assert_eq!(ip0["state"], "warming");
    assert_eq!(ip0["providers"]["p"]["used_today"], 3);
    assert_eq!(ip0["providers"]["p"]["cap_today"], 3);
}

#[test]
fn drained_and_quarantined_ips_take_nothing_for_their_scope() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    let (ip10, ip11) = (ip("127.0.0.10"), ip("127.0.0.11"));
    p.quarantine(
        ip10,
        Scope::Provider("gmail".into()),
        Cause::BlockReply,
        "S3150",
        "550 …",
        None,
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(pick(&p, "gmail").unwrap(), "127.0.0.11");
    }
    // Another provider keeps both IPs in rotation.
    let other = counts(&p, "other", 4);
    assert_eq!((other["127.0.0.10"], other["127.0.0.11"]), (2, 2));
    p.drain(ip11, Scope::All, "operator").unwrap();
    let h = pick(&p, "gmail").unwrap_err();
    assert!(h.text.contains("drained or quarantined"), "{}", h.text);
    assert!(p.undrain(ip11, Scope::All).unwrap());
    assert!(p.reinstate(ip10, Scope::Provider("gmail".into())).unwrap());
    let gmail = counts(&p, "gmail", 4);
    assert_eq!(gmail.len(), 2, "{gmail:?}");
    assert!(p.drain(ip("127.0.0.99"), Scope::All, "x").is_err());
}

#[test]
fn each_cause_is_its_own_record_and_a_delisting_means_probation() {
    let c = config(&format!("{TWO}[reputation]\nprobe_per_hour = 2\n"));
    let p = Arc::new(Pools::without_store(&c.pool_settings()));
    let ip10 = ip("127.0.0.10");
    let gmail = || Scope::Provider("gmail".into());
    let zone = || Cause::Dnsbl("zen.test".into());
    p.quarantine(
        ip10,
        Scope::All,
        zone(),
        "dnsbl listing",
        "zen.test 127.0.0.2",
        None,
    )
    .unwrap();
    p.quarantine(
        ip10,
        gmail(),
        Cause::BlockReply,
        "block reply",
        "550 S3150",
        None,
    )
    .unwrap();
    p.drain(ip10, gmail(), "looking into it").unwrap();
    assert_eq!(p.holds().len(), 3);
    // Delisted: the block-reply quarantine (and the drain) still hold it for gmail.
    assert!(p.release(ip10, Scope::All, zone()).unwrap());
    assert!(!p.release(ip10, Scope::All, zone()).unwrap(), "once");
    assert_eq!(counts(&p, "gmail", 4)["127.0.0.11"], 4);
    // The drain ends; the quarantine still holds.
    assert!(p.undrain(ip10, gmail()).unwrap());
    assert_eq!(counts(&p, "gmail", 4)["127.0.0.11"], 4);
    // For another provider the delisting left probation: a trickle, not the full share.
    assert!(p.in_probation(ip10, "yahoo"));
    let yahoo = counts(&p, "yahoo", 10);
    assert_eq!((yahoo["127.0.0.10"], yahoo["127.0.0.11"]), (2, 8));
    let v = status_json(&p);
    assert_eq!(
        v["pools"][0]["ips"][0]["providers"]["yahoo"]["state"],
        "probation"
    );
    let held = &v["pools"][0]["ips"][0]["holds"];
    assert_eq!(held.as_array().unwrap().len(), 1, "{held}");
    assert_eq!(held[0]["cause"], "block-reply");
}

#[test]
fn expired_quarantine_ends_by_itself_and_holds_persist() {
    let dir = crate::util::test_dir::tempdir("pool").join("data");
    let c =
        config("[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n");
    let ip10 = ip("127.0.0.10");
    {
        let st = Arc::new(State::open(&dir).unwrap());
        let p = Arc::new(Pools::new(&c.pool_settings(), Some(st.clone())).unwrap());
        p.quarantine(
            ip10,
            Scope::All,
            Cause::Dnsbl("zen".into()),
            "listed",
            "zen 127.0.0.2",
            Some(now_s() + 3600),
        )
        .unwrap();
        p.quarantine(
            ip10,
            Scope::Provider("gmail".into()),
            Cause::BounceRate,
            "old",
            "",
            Some(now_s() - 1),
        )
        .unwrap();
        assert!(pick(&p, "other").is_err());
        // A record of the one-hold-per-scope layout is read with a derived cause.
        let legacy = r#"{"kind":"quarantined","scope":"yahoo","reason":"deferral rate","evidence":"","since":1,"until":null}"#;
        st.pool_write(&[("hold|127.0.0.10|yahoo".into(), Some(legacy.into()))])
            .unwrap();
    }
    let st = Arc::new(State::open(&dir).unwrap());
    let p = Arc::new(Pools::new(&c.pool_settings(), Some(st)).unwrap());
    let mut holds = p.holds();
    holds.sort_by_key(|(_, h)| h.scope.clone());
    assert_eq!(holds.len(), 2, "the expired one is not in force: {holds:?}");
    assert_eq!(holds[0].1.evidence, "zen 127.0.0.2");
    assert_eq!(holds[1].1.cause, Cause::DeferralRate);
    let h = pick(&p, "other").unwrap_err();
    assert!(
        h.retry_at >= now_s() + 299,
        "looks again within the 5-minute cap"
    );
    assert!(p.reinstate(ip10, Scope::All).unwrap());
    assert!(p.in_probation(ip10, "gmail"), "the expired one: probation");
    assert_eq!(pick(&p, "gmail").unwrap(), "127.0.0.10");
    assert_eq!(p.ips(), vec![ip10]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pool_rules_first_match_else_default() {
    let c = config(
        "[[pool]]\nname = \"main\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\n[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"o2\"\n[[pool]]\nname = \"bulk\"\n[[pool.ip]]\naddress = \"127.0.0.12\"\nhelo = \"o3\"\n[[pool_rule]]\nuser = \"newsletter\"\npool = \"bulk\"\n[[pool_rule]]\nsender_domain = \"*.news.test\"\npool = \"bulk\"\n[[pool_rule]]\nsender = \"*@main.test\"\npool = \"main\"\n",
    );
    let p = Pools::without_store(&c.pool_settings());
    assert_eq!(
        p.pool_for(None, Some("newsletter"), "a@x.test").as_deref(),
        Some("bulk")
    );
    assert_eq!(
        p.pool_for(None, None, "a@m.news.test").as_deref(),
        Some("bulk")
    );
    assert_eq!(
        p.pool_for(None, None, "a@main.test").as_deref(),
        Some("main")
    );
    assert_eq!(
        p.pool_for(None, None, "a@x.test").as_deref(),
        Some("default")
    );
    assert_eq!(
        p.pool_for(Some("main"), None, "a@x.test").as_deref(),
        Some("main")
    );
}

#[test]
fn throttling_reply_backs_off_that_ip_for_that_provider() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    let r = RemoteReply {
        code: 421,
        status: "4.7.28".into(),
        text: "unusual rate of unsolicited mail".into(),
        host: String::new(),
        addr: String::new(),
        source_ip: String::new(),
    };
    p.record_reply(ip("127.0.0.10"), "gmail", &r);
    // Counted only: which replies throttle is the classifier's word (the reputation stage).
    assert_eq!(pick(&p, "gmail").unwrap(), "127.0.0.10");
    let began = super::warmup::Clock::now_ms();
    assert_eq!(
        p.throttled(ip("127.0.0.10"), "gmail", began, &r, 4),
        super::throttle::PaceCut::Cut {
            per_hour: 1,
            cuts: 1
        }
    );
    for _ in 0..3 {
        assert_eq!(pick(&p, "gmail").unwrap(), "127.0.0.11");
    }
    assert_eq!(counts(&p, "yahoo", 2).len(), 2);
    let gmail = &status_json(&p)["pools"][0]["ips"][0]["providers"]["gmail"];
    assert_eq!(
        (gmail["deferred"].as_u64(), gmail["pace_per_hour"].as_u64()),
        (Some(1), Some(1)),
        "{gmail}"
    );
}

#[test]
fn ip_on_probation_takes_only_a_trickle_until_reinstated() {
    let c = config(&format!("{TWO}[reputation]\nprobe_per_hour = 2\n"));
    let p = Arc::new(Pools::without_store(&c.pool_settings()));
    let ip10 = ip("127.0.0.10");
    // Cool-down over: probation.
    p.quarantine(
        ip10,
        Scope::Provider("gmail".into()),
        Cause::BlockReply,
        "block reply",
        "",
        Some(now_s() - 1),
    )
    .unwrap();
    let n = counts(&p, "gmail", 10);
    assert_eq!((n["127.0.0.10"], n["127.0.0.11"]), (2, 8));
    let st = status_json(&p);
    let gmail = &st["pools"][0]["ips"][0]["providers"]["gmail"];
    assert_eq!(gmail["state"], "probation");
    assert_eq!(gmail["probation"], true);
    assert_eq!(
        (gmail["used_hour"].as_u64(), gmail["cap_hour"].as_u64()),
        (Some(2), Some(2))
    );
    // Other providers are not on probation.
    let n = counts(&p, "yahoo", 10);
    assert_eq!((n["127.0.0.10"], n["127.0.0.11"]), (5, 5));
    // Probes went well: the full share again.
    assert!(p.end_probation(ip10, "gmail").unwrap());
    assert!(!p.end_probation(ip10, "gmail").unwrap());
    let n = counts(&p, "gmail", 10);
    assert!(n["127.0.0.10"] >= 4, "{n:?}");
    let st = status_json(&p);
    let gmail = &st["pools"][0]["ips"][0]["providers"]["gmail"];
    assert_eq!(
        (gmail["probation"].as_bool(), gmail["cap_hour"].as_u64()),
        (Some(false), None)
    );
}

#[test]
fn farm_changes_apply_by_the_later_stamp_and_every_local_change_goes_out() {
    let (outbox, mut rx) = crate::cluster::events::Outbox::new("here");
    let p = Arc::new(
        Pools::without_store(&config(TWO).pool_settings()).sharing_holds(Some(Arc::new(outbox))),
    );
    let a = ip("127.0.0.10");
    p.drain(a, Scope::All, "maintenance").unwrap();
    let sent = rx.try_recv().expect("the drain goes to the farm");
    assert_eq!(sent.node, "here");
    assert_eq!(sent.change.field(), "127.0.0.10|all|operator");
    let key = (a, "all".to_string(), Cause::Operator);

    // An older release from another node (made before this drain) loses.
    assert!(!p.apply_remote(key.clone(), None, sent.at_ms - 1));
    assert!(pick(&p, "gmail").is_ok_and(|s| s == "127.0.0.11"));
    // A later one wins: the IP takes mail again; nothing goes back out.
    assert!(p.apply_remote(key.clone(), None, sent.at_ms + 1));
    assert_eq!(counts(&p, "gmail", 4)["127.0.0.10"], 2);
    assert!(rx.try_recv().is_err());
    // The removal is remembered with its stamp, for the next resync.
    let known = p.hold_changes();
    assert_eq!(known.len(), 1, "{known:?}");
    assert!(known[0].1.is_none() && known[0].2 == sent.at_ms + 1);

    // A quarantine from the farm of an IP this node does not send from is kept too (it may
    // move here).
    let other = ip("192.0.2.99");
    let q = Hold {
        kind: HoldKind::Quarantined,
        scope: "gmail".into(),
        cause: Cause::BlockReply,
        reason: "block reply".into(),
        evidence: "554 5.7.1".into(),
        since: now_s(),
        until: Some(now_s() + 3600),
        offence: 1,
        replies: 1,
    };
    let qkey = (other, "gmail".to_string(), Cause::BlockReply);
    assert!(p.apply_remote(qkey.clone(), Some(q.clone()), now_s() * 1000 + 5));
    // The same change twice (event and resync) applies once.
    assert!(!p.apply_remote(qkey, Some(q), now_s() * 1000 + 5));
    assert_eq!(p.holds().len(), 1);
    // A local change after a farm one is stamped later than it, even with a clock behind.
    p.drain(a, Scope::All, "again").unwrap();
    let again = rx.try_recv().unwrap();
    assert!(again.at_ms > sent.at_ms + 1);
}

/// A pick that read the config before a reload can leave the round-robin list of the old
/// number of IPs; the next pick with the new config (one IP more) must not index past it.
#[test]
fn a_round_robin_list_from_before_a_reload_is_started_over() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    pick(&p, "other").unwrap();
    let three = config(&format!(
        "{TWO}[[pool.ip]]\naddress = \"127.0.0.12\"\nhelo = \"o3\"\n"
    ));
    p.reload(&three.pool_settings());
    // As the racing pick would have left it: the list for two IPs, after the reload's clear.
    p.lock().swrr.insert("a|other|false".into(), vec![0, 0]);
    let seen: std::collections::HashSet<String> =
        (0..3).map(|_| pick(&p, "other").unwrap()).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
}

const ADAPTIVE: &str = "[warmup]\nburst = 24\n[[pool]]\nname = \"a\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o1\"\nwarmup = \"t\"\n[[warmup.schedule]]\nname = \"t\"\ndaily = [5, 10]\nadaptive = true\n";

#[test]
fn ramp_counts_replies_into_the_day_their_delivery_began() {
    let p = Arc::new(Pools::without_store(&config(ADAPTIVE).pool_settings()));
    let (a, key) = (ip("127.0.0.10"), (ip("127.0.0.10"), "alpha".to_string()));
    let now = super::warmup::Clock::now_ms();
    for _ in 0..2 {
        pick(&p, "alpha").unwrap();
    }
    let Selection::Picked(unsent) = p.pick(Some("a"), "alpha", false, &[]) else {
        panic!("cap 5: room for a third");
    };
    unsent.lease.refund();
    p.ramp_outcome(a, "alpha", now, RampOutcome::Accepted);
    p.ramp_outcome(a, "alpha", now, RampOutcome::Throttled);
    // A delivery begun yesterday belongs to a day already decided.
    p.ramp_outcome(a, "alpha", now - 86_400_000, RampOutcome::Accepted);
    // No counters for a provider never picked: nothing to count into.
    p.ramp_outcome(a, "beta", now, RampOutcome::Accepted);
    let inner = p.lock();
    let t = inner.counters[&key].warmup.tally;
    assert_eq!((t.taken, t.accepted, t.throttled, t.blocked), (2, 1, 1, 0));
    assert!(!inner.counters.contains_key(&(a, "beta".to_string())));
    drop(inner);
    let v = status_json(&p);
    let alpha = &v["pools"][0]["ips"][0]["providers"]["alpha"];
    assert_eq!(
        (alpha["adaptive"].as_bool(), alpha["cap_today"].as_u64()),
        (Some(true), Some(5))
    );
}

#[test]
fn a_late_block_or_throttling_reply_counts_in_the_open_day() {
    let p = Arc::new(Pools::without_store(&config(ADAPTIVE).pool_settings()));
    let (a, key) = (ip("127.0.0.10"), (ip("127.0.0.10"), "alpha".to_string()));
    let now = super::warmup::Clock::now_ms();
    // Today is the open day: yesterday was decided at today's first pick.
    pick(&p, "alpha").unwrap();
    let yesterday = now - 86_400_000;
    // The quarantine's one `Blocked`, for a delivery begun yesterday.
    p.ramp_outcome(a, "alpha", yesterday, RampOutcome::Blocked);
    p.ramp_outcome(a, "alpha", yesterday, RampOutcome::Throttled);
    // Other late replies are still too late.
    p.ramp_outcome(a, "alpha", yesterday, RampOutcome::Accepted);
    p.ramp_outcome(a, "alpha", yesterday, RampOutcome::Deferred);
    let t = p.lock().counters[&key].warmup.tally;
    assert_eq!(
        (t.taken, t.accepted, t.throttled, t.deferred, t.blocked),
        (1, 0, 1, 0, 1)
    );
}

#[test]
fn counters_stored_before_the_ramp_still_load() {
    let old = r#"{"warmup":{"day_index":3,"last_send_day":20000},"day":20000,"day_count":5}"#;
    let c: super::throttle::Counters = serde_json::from_str(old).unwrap();
    assert_eq!(
        (c.warmup.day_index, c.warmup.last_send_day),
        (3, Some(20_000))
    );
    assert_eq!(c.warmup.tally, super::ramp::DayTally::default());
    assert_eq!((c.warmup.cap, &c.warmup.decided), (None, &None));
    let back = serde_json::to_string(&c).unwrap();
    let again: super::throttle::Counters = serde_json::from_str(&back).unwrap();
    assert_eq!(again.warmup, c.warmup);
}

#[test]
fn a_late_count_never_writes_an_older_offence_over_a_newer_one() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    let a = ip("127.0.0.10");
    let key = (a, "gmail".to_string(), Cause::BlockReply);
    let now = now_s();
    let first = Hold {
        kind: HoldKind::Quarantined,
        scope: "gmail".into(),
        cause: Cause::BlockReply,
        reason: "block reply".into(),
        evidence: "550 5.7.1 blocked".into(),
        since: now - 100,
        until: Some(now - 1),
        offence: 1,
        replies: 1,
    };
    p.quarantine_record(a, first.clone()).unwrap();
    // A reply of offence 1's incident was judged (it read `first`)…
    let incident = p.incident(a, "gmail", (now - 50) * 1000);
    let (_, of) = incident.of.expect("in flight for offence 1");
    // … then a failed probe made offence 2 on the same key before it was counted.
    let second = Hold {
        since: now,
        until: Some(now + 7200),
        offence: 2,
        replies: 1,
        ..first.clone()
    };
    p.quarantine_record(a, second.clone()).unwrap();
    assert_eq!(p.count_in_incident(&key, of.since, of.offence), 0);
    let held: Vec<Hold> = p.holds().into_iter().map(|(_, h)| h).collect();
    assert_eq!(held, vec![second.clone()], "offence 2 stays in force");
    // A count of offence 2 itself is kept.
    assert_eq!(p.count_in_incident(&key, now, 2), 2);
    assert_eq!(p.holds()[0].1.replies, 2);
}

#[test]
fn a_throttling_quarantine_starts_the_pace_cuts_over() {
    let p = Arc::new(Pools::without_store(&config(TWO).pool_settings()));
    let a = ip("127.0.0.10");
    let r = RemoteReply {
        code: 451,
        status: "4.7.650".into(),
        text: "rate limited".into(),
        host: "mx".into(),
        addr: String::new(),
        source_ip: String::new(),
    };
    let t = warmup::Clock::now_ms();
    assert!(matches!(
        p.throttled(a, "microsoft", t, &r, 1),
        throttle::PaceCut::Cut { cuts: 1, .. }
    ));
    let now = now_s();
    let until = now + 600;
    p.quarantine_record(
        a,
        Hold {
            kind: HoldKind::Quarantined,
            scope: "microsoft".into(),
            cause: Cause::Throttling,
            reason: "throttling".into(),
            evidence: String::new(),
            since: now,
            until: Some(until),
            offence: 1,
            replies: 1,
        },
    )
    .unwrap();
    // In flight until it ended: its episode; begun after: a first cut again, not persistent.
    assert_eq!(
        p.throttled(a, "microsoft", until * 1000, &r, 1),
        throttle::PaceCut::Episode
    );
    assert!(matches!(
        p.throttled(a, "microsoft", until * 1000 + 1, &r, 1),
        throttle::PaceCut::Cut { cuts: 1, .. }
    ));
}

#[test]
fn incident_counts_go_out_once_per_flush() {
    let (outbox, mut rx) = crate::cluster::events::Outbox::new("here");
    let p = Arc::new(
        Pools::without_store(&config(TWO).pool_settings()).sharing_holds(Some(Arc::new(outbox))),
    );
    let a = ip("127.0.0.10");
    let now = now_s();
    let hold = Hold {
        kind: HoldKind::Quarantined,
        scope: "gmail".into(),
        cause: Cause::BlockReply,
        reason: "block reply".into(),
        evidence: "550 5.7.1 blocked".into(),
        since: now,
        until: Some(now + 3600),
        offence: 1,
        replies: 1,
    };
    p.quarantine_record(a, hold).unwrap();
    let made = rx.try_recv().expect("the quarantine goes out at once");
    let key = (a, "gmail".to_string(), Cause::BlockReply);
    for n in 2..=4 {
        assert_eq!(p.count_in_incident(&key, now, 1), n);
    }
    assert_eq!(p.holds()[0].1.replies, 4, "memory has every count at once");
    assert!(rx.try_recv().is_err(), "nothing shared before the flush");
    p.flush();
    let counted = rx.try_recv().expect("one event for three counts");
    assert!(counted.at_ms > made.at_ms);
    match &counted.change {
        crate::cluster::events::Change::Hold { hold: Some(h), .. } => assert_eq!(h.replies, 4),
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err());
    let known = p.hold_changes();
    assert_eq!(known[0].2, counted.at_ms);
    p.flush();
    assert!(rx.try_recv().is_err(), "nothing new, nothing sent");
}
