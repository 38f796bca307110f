//! One incident is one offence, and throttling is read as throttling (issue 24): block replies to
//! deliveries already in flight when an IP × provider was quarantined count in that quarantine
//! (no doubling per reply); a block after the quarantine ended doubles the cool-down; throttling
//! replies slow the IP's hourly pace without quarantining it. The farm's side is in
//! `cluster_state.rs`. Source IP 127.0.0.10; `a.test` → mx.alpha.test (127.0.0.20).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::admin::{self, get, hold_of, ip_entry, pool_status};
use common::sink::Script;
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Every RCPT is answered after a second with a Spamhaus block.
fn delayed_block(s: &Step) -> Option<String> {
    matches!(s.stage, Stage::RcptTo(_)).then(|| {
        "DELAY:1000:550 5.7.1 Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org"
            .to_string()
    })
}

/// One source IP (127.0.0.10), providers alpha and beta, `rest` appended.
fn start(name: &str, b: &Bench, rest: &str) -> (Relay, SocketAddr) {
    let cfg = b.pooled(&[PoolIp::new(10, "out10.test")], rest);
    admin::start(&tempdir(name), &cfg, WAIT)
}

fn submit(relay: &Relay, rcpts: &[String]) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for (i, r) in rcpts.iter().enumerate() {
        let body = format!("From: <s@snd.test>\r\nSubject: m{i}\r\n\r\nHello.\r\n");
        let reply = c.send_mail("s@snd.test", &[r.as_str()], body.as_bytes());
        assert_eq!(reply.code, 250, "submit {r}: {reply}");
    }
    c.quit();
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

fn rcpt_attempts(sink: &Sink) -> usize {
    sink.transcripts()
        .to_ascii_lowercase()
        .matches("rcpt to:<")
        .count()
}

/// The log lines about replies, quarantines and held mail (for a failure's message).
fn reputation_log(relay: &Relay) -> String {
    relay
        .plain_log()
        .lines()
        .filter(|l| {
            [
                "quarantin",
                "incident",
                "held",
                "classified",
                "probation",
                "attempt",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn block_hold(admin: SocketAddr) -> Option<Value> {
    hold_of(admin, "127.0.0.10", "alpha", "block-reply")
}

fn cooldown(h: &Value) -> u64 {
    h["until"].as_u64().unwrap() - h["since"].as_u64().unwrap()
}

fn events(admin: SocketAddr) -> Vec<String> {
    get(admin, "/api/history?ip=127.0.0.10")["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn block_replies_to_deliveries_in_flight_are_one_offence() {
    let b = bench(Some(delayed_block));
    let (relay, admin) = start("inc-one", &b, "[reputation]\ncooldown = \"1h\"\n");
    submit(&relay, &rcpts("a", "a.test", 5));
    // All five were asked before the first answer came (one answer quarantines the IP, and
    // nothing would start from it after).
    assert!(
        wait_until(WAIT, || rcpt_attempts(&b.sink) == 5),
        "{}",
        relay.log()
    );
    assert!(
        wait_until(WAIT, || block_hold(admin)
            .is_some_and(|h| h["replies"] == 5)),
        "{:?}\n{}",
        block_hold(admin),
        relay.log()
    );
    let h = block_hold(admin).unwrap();
    assert_eq!(h["offence"], 1, "{h}");
    assert_eq!(cooldown(&h), 3600, "the configured cool-down: {h}");
    let evidence = h["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("blocked using zen.spamhaus.org")
            && evidence.ends_with("; 5 block replies in one incident"),
        "{evidence}"
    );
    // One quarantine in the history: the counted replies are not "extended" events.
    assert_eq!(events(admin), ["quarantined"]);
    let log = relay.plain_log();
    assert_eq!(
        log.matches("quarantining IP for provider").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("dsn queued"), "{log}");
}

#[test]
fn a_block_after_the_quarantine_ended_doubles_the_cooldown() {
    let b = bench(Some(delayed_block));
    let (relay, admin) = start("inc-twice", &b, "[reputation]\ncooldown = \"2s\"\n");
    submit(&relay, &rcpts("a", "a.test", 3));
    assert!(
        wait_until(WAIT, || block_hold(admin)
            .is_some_and(|h| h["replies"] == 3)),
        "{:?}\n{}",
        block_hold(admin),
        relay.log()
    );
    let first = block_hold(admin).unwrap();
    assert_eq!((first["offence"].as_u64(), cooldown(&first)), (Some(1), 2));
    // At its end the held mail probes the IP again and is blocked again: the second offence.
    let mut second = None;
    assert!(
        wait_until(WAIT, || {
            second = block_hold(admin).filter(|h| h["offence"].as_u64() >= Some(2));
            second.is_some()
        }),
        "{}",
        reputation_log(&relay)
    );
    let second = second.unwrap();
    assert_eq!(second["offence"], 2, "{second}\n{}", reputation_log(&relay));
    assert!(
        second["since"].as_u64() >= first["until"].as_u64(),
        "{first}\n{second}"
    );
    assert_eq!(cooldown(&second), 4, "doubled: {second}");
    let names = events(admin);
    assert_eq!(names[..2], ["quarantined", "quarantined"], "{names:?}");
    assert!(!names.iter().any(|e| e == "extended"), "{names:?}");
}

/// The first RCPT gets Gmail's throttling deferral, every later one is accepted.
fn throttle_once() -> Script {
    let done = Arc::new(AtomicBool::new(false));
    Arc::new(move |s: &Step| {
        (matches!(s.stage, Stage::RcptTo(_)) && !done.swap(true, Ordering::SeqCst)).then(|| {
            "421 4.7.28 [127.0.0.10 15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited."
                .to_string()
        })
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn gmail_10(admin: SocketAddr) -> Value {
    ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["gmail"].clone()
}

#[test]
fn throttling_slows_the_ip_without_quarantine() {
    // A warm-up day of 480 s: a pool "hour" of 20 s.
    const HOUR_MS: u64 = 20_000;
    let b = bench(None);
    let cfg = RelayConfig::new()
        .dns(&b.dns)
        .delivery_port(b.sink.port())
        .admin()
        .delivery("idle_timeout", "\"0s\"")
        .provider("gmail", &["alpha.test"])
        .provider_key("gmail", "max_per_hour", 20)
        .provider_key("gmail", "backoff", "\"1s\"")
        .pool("default", &[PoolIp::new(10, "out10.test")])
        .section("[warmup]\nday = \"480s\"\n");
    let (relay, admin) = admin::start(&tempdir("inc-throttle"), &cfg, WAIT);
    // Start at an hour's beginning, so the phase below stays in one hour.
    let next = (now_ms() / HOUR_MS + 1) * HOUR_MS;
    assert!(wait_until(WAIT, || now_ms() >= next));
    let hour = now_ms() / HOUR_MS;
    b.sink.set_script(Some(throttle_once()));
    submit(&relay, &rcpts("t", "a.test", 1));
    assert!(
        wait_until(WAIT, || gmail_10(admin)["pace_per_hour"] == 10),
        "{}\n{}",
        gmail_10(admin),
        relay.log()
    );
    // 20 an hour halved: 10 this hour, the throttled one included; the rest waits.
    submit(&relay, &rcpts("m", "a.test", 15));
    assert!(
        wait_until(WAIT, || gmail_10(admin)["used_hour"] == 10),
        "{}\n{}",
        gmail_10(admin),
        relay.log()
    );
    // The tenth taken (nine delivered) and the rest held for the pace, not for a quarantine.
    assert!(
        wait_until(WAIT, || b.sink.messages().len() == 9
            && relay.plain_log().contains(
                "127.0.0.10 hourly pace cut after throttling replies"
            )),
        "{}",
        relay.log()
    );
    assert_eq!(now_ms() / HOUR_MS, hour, "the phase outlasted its hour");
    let g = gmail_10(admin);
    assert_eq!(
        (g["used_hour"].as_u64(), g["cap_hour"].as_u64()),
        (Some(10), Some(20)),
        "{g}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .current_dir(relay.dir())
        .args(["pool", "status", "--config", "poolrelay.toml"])
        .output()
        .expect("pool status");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("10/10 (paced)"), "{out}");
    // Slowed, not quarantined.
    let ip = ip_entry(&pool_status(admin), "127.0.0.10");
    assert_eq!(ip["holds"].as_array().unwrap().len(), 0, "{ip}");
    let log = relay.plain_log();
    assert!(
        log.contains("throttling reply: hourly pace cut") && log.contains("signal=throttle"),
        "{log}"
    );
    assert!(!log.contains("quarantin"), "{log}");
    let metrics = admin::get_text(admin, "/metrics");
    assert!(
        metrics.contains(
            "poolrelay_delivery_outcomes_total{ip=\"127.0.0.10\",provider=\"gmail\",class=\"throttle\"} 1"
        ),
        "{metrics}"
    );
    // The next hour takes the rest.
    b.sink.wait_for_messages(16, WAIT);
    assert!(now_ms() / HOUR_MS > hour);
    assert_eq!(
        ip_entry(&pool_status(admin), "127.0.0.10")["holds"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
