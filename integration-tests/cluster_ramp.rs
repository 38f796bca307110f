//! The adaptive ramp across a farm (issue 24): one ramp state per IP × provider, each day's
//! tallies summed across relays and each day decided once, through a real `redis-server`
//! (started by each test on a free loopback port, never a system one). These drive the farm
//! side (`poolrelay::cluster::ramp`) with two `Cluster`s as two relays would. Redis is an
//! installed tool, so every test here is `#[ignore]`d (run by .ci/run) and fails when
//! `redis-server` is missing.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use poolrelay::cluster::ramp::{FarmRamp, Rolled, Tally, tally_ttl};
use poolrelay::cluster::{Cluster, Limit, RunError, Settings, Taken};
use poolrelay::pool::RampOutcome;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// A ramp state as the ramp would store it: the day it is for, its table day and cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ramp {
    day: Option<u64>,
    index: u32,
    cap: u64,
}

impl FarmRamp for Ramp {
    fn day(&self) -> Option<u64> {
        self.day
    }
}

async fn node(redis: &RedisServer, name: &str) -> Arc<Cluster> {
    let settings: Settings = toml::from_str(&format!(
        "redis = \"{}\"\nnode = \"{name}\"\nprefix = \"farm\"\n",
        redis.url()
    ))
    .unwrap();
    let c = Cluster::start(&settings, Vec::new()).await;
    assert!(c.is_up(), "{name} reached Redis");
    c
}

fn ip() -> IpAddr {
    "127.0.0.12".parse().unwrap()
}

fn count(c: &Cluster, day: u64, o: RampOutcome, n: usize) {
    for _ in 0..n {
        c.ramp_count(ip(), "alpha", day, o, tally_ttl(60_000, 30));
    }
}

/// `n` messages taken on `day` as the take's script counts them, with the day's other counters.
async fn take(c: &Cluster, day: u64, n: usize) {
    let limit = Limit {
        key: c.ramp_taken_key(ip(), "alpha", day),
        cap: None,
        ttl_ms: tally_ttl(60_000, 30),
        own: 0,
    };
    for _ in 0..n {
        assert_eq!(
            c.take(std::slice::from_ref(&limit), None).await,
            Ok(Taken::Shared(None))
        );
    }
}

fn farm_tally(redis: &RedisServer, day: u64) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> =
        redis.query(&["HGETALL", &format!("farm:ramp:127.0.0.12|alpha:d:{day}")]);
    v.sort();
    v
}

/// Two relays send through one warming IP on day 100: each counts its own replies, the farm's
/// tally is their sum. At day 101 both roll at once: one decision is stored, made on the farm's
/// tally, and both end on the same state; a third roll the same day decides nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn two_relays_share_one_ramp_decided_once_on_the_farms_tally() {
    let dir = tempdir("cluster-ramp");
    let redis = RedisServer::start(&dir);
    let (a, b) = (node(&redis, "a").await, node(&redis, "b").await);
    let day0 = Ramp {
        day: Some(100),
        index: 0,
        cap: 10,
    };
    // The first relay at day 100 seeds the farm with its state; the other adopts it.
    let not_due = |_: &Ramp, _: &Tally| -> Ramp { panic!("no decision is due on day 100") };
    assert_eq!(
        a.ramp_roll(ip(), "alpha", 100, &day0, not_due).await,
        Ok(Rolled::Farm(day0.clone()))
    );
    let other = Ramp {
        index: 7,
        ..day0.clone()
    };
    assert_eq!(
        b.ramp_roll(ip(), "alpha", 100, &other, not_due).await,
        Ok(Rolled::Farm(day0.clone())),
        "the farm's state, not b's own"
    );

    take(&a, 100, 7).await;
    take(&b, 100, 5).await;
    b.give_back(&[(b.ramp_taken_key(ip(), "alpha", 100), 60_000)])
        .await;
    count(&a, 100, RampOutcome::Accepted, 6);
    count(&a, 100, RampOutcome::Throttled, 1);
    count(&b, 100, RampOutcome::Accepted, 3);
    count(&b, 100, RampOutcome::Throttled, 1);
    count(&b, 100, RampOutcome::Blocked, 1);
    let want = vec![
        ("accepted".to_string(), 9),
        ("blocked".to_string(), 1),
        ("throttled".to_string(), 2),
    ];
    assert!(
        wait_until(WAIT, || farm_tally(&redis, 100) == want),
        "{:?}",
        farm_tally(&redis, 100)
    );
    let ttl: i64 = redis.query(&["PTTL", "farm:ramp:127.0.0.12|alpha:d:100"]);
    assert!(ttl > 0 && ttl <= 32 * 60_000, "tallies expire: {ttl}");

    // Day 101: both roll at once; the decision sees the farm's tally of day 100.
    let calls = AtomicUsize::new(0);
    let decide = |s: &Ramp, t: &Tally| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ramp {
            day: Some(101),
            index: s.index + 1,
            cap: 2 * t.accepted + 100 * t.throttled + 1000 * t.blocked,
        }
    };
    let (ra, rb) = tokio::join!(
        a.ramp_roll(ip(), "alpha", 101, &day0, decide),
        b.ramp_roll(ip(), "alpha", 101, &day0, decide)
    );
    let day1 = Ramp {
        day: Some(101),
        index: 1,
        cap: 18 + 200 + 1000,
    };
    let decided: Vec<&Rolled<Ramp>> = [&ra, &rb]
        .into_iter()
        .map(|r| r.as_ref().expect("Redis up"))
        .filter(|r| matches!(r, Rolled::Decided { .. }))
        .collect();
    assert_eq!(decided.len(), 1, "one relay decides: {ra:?} {rb:?}");
    let Rolled::Decided {
        state,
        before,
        tally,
    } = decided[0]
    else {
        unreachable!()
    };
    assert_eq!((state, before), (&day1, &day0));
    assert_eq!(
        (tally.taken, tally.accepted, tally.throttled, tally.blocked),
        (11, 9, 2, 1),
        "the farm's day"
    );
    for r in [&ra, &rb] {
        let state = match r.as_ref().unwrap() {
            Rolled::Decided { state, .. } | Rolled::Farm(state) => state,
        };
        assert_eq!(state, &day1, "both relays on the farm's day");
    }
    let stored: Option<Ramp> = a.ramp_state(ip(), "alpha").await.unwrap();
    assert_eq!(stored, Some(day1.clone()));
    // Later the same day: the farm's state, no second decision.
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(
        b.ramp_roll(ip(), "alpha", 101, &day0, decide).await,
        Ok(Rolled::Farm(day1))
    );
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

/// Redis down: a roll says so (the ramp then decides locally), counts wait on the relay, and
/// reach the restarted (empty) Redis once it answers; a stored state that no longer parses is
/// replaced by the relay's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn counts_made_while_redis_is_down_reach_the_farm_when_it_returns() {
    let dir = tempdir("cluster-ramp-down");
    let mut redis = RedisServer::start(&dir);
    let a = node(&redis, "a").await;
    let day0 = Ramp {
        day: Some(200),
        index: 3,
        cap: 50,
    };
    redis.kill();
    assert!(wait_until(WAIT, || !a.is_up()));
    count(&a, 200, RampOutcome::Accepted, 4);
    count(&a, 200, RampOutcome::Deferred, 2);
    let r = a
        .ramp_roll(ip(), "alpha", 201, &day0, |s: &Ramp, _: &Tally| s.clone())
        .await;
    assert_eq!(r, Err(RunError::Down));

    redis.restart();
    assert!(wait_until(WAIT, || a.is_up()));
    let want = vec![("accepted".to_string(), 4), ("deferred".to_string(), 2)];
    assert!(
        wait_until(WAIT, || farm_tally(&redis, 200) == want),
        "{:?}",
        farm_tally(&redis, 200)
    );
    // Sent once: more flushes add nothing.
    a.ramp_flush().await.unwrap();
    assert_eq!(farm_tally(&redis, 200), want);

    let _: () = redis.query(&["HSET", "farm:ramp", "127.0.0.12|alpha", "{not json"]);
    assert_eq!(
        a.ramp_roll(ip(), "alpha", 200, &day0, |s: &Ramp, _: &Tally| s.clone())
            .await,
        Ok(Rolled::Farm(day0.clone()))
    );
    let stored: Option<Ramp> = a.ramp_state(ip(), "alpha").await.unwrap();
    assert_eq!(stored, Some(day0));
}
