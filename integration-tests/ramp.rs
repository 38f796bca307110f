//! Adaptive warm-up ramp (issue 24), one test per rule against the real binary with days of a
//! few seconds: advance with growth, a day limited by demand held, a throttled day held, a step
//! back on throttling and on a block, re-warm after idle days. Each decision is checked where
//! the operator reads it: `GET /api/pool`, the history event, the metric, `pool status`.
//! Source IP 127.0.0.10 sends to provider alpha (`a.test` → 127.0.0.20).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::admin::{ip_entry, pool_status};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
/// A warm-up day: long enough for one step of a test (a handful of deliveries and holds of
/// about a second), short enough for a ramp of a few days in a test.
const DAY: u64 = 6000;
const THROTTLE: &str = "451 4.7.1 Too many messages from your IP, slow down";
const BLOCK: &str =
    "550 5.7.1 Service unavailable; client host [127.0.0.10] blocked using zen.spamhaus.org";

/// One adaptive schedule `t` with `daily` and extra ramp keys; no retries within a test, a
/// short back-off after a slow-down reply, no deferral-rate quarantine.
fn start(name: &str, b: &Bench, daily: &str, keys: &str, idle_days: u32) -> (Relay, SocketAddr) {
    let cfg = b
        .config()
        .delivery("idle_timeout", "\"0s\"")
        .delivery("retry", "[\"1h\"]")
        .pool(
            "default",
            &[PoolIp::new(10, "out10.relay.test").warmup("t")],
        )
        .section(&format!(
            "[warmup]\nday = \"{DAY}ms\"\nburst = 24\nidle_days = {idle_days}\n\
             [[warmup.schedule]]\nname = \"t\"\ndaily = {daily}\nadaptive = true\n{keys}"
        ))
        .section("[throttle]\nbackoff = \"200ms\"")
        .section("[reputation]\nmax_deferral_rate = 1.0\ncooldown = \"1s\"\nmax_cooldown = \"1s\"");
    admin::start(&tempdir(name), &cfg, WAIT)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits for the start of a fresh day; returns its number.
fn fresh_day() -> u64 {
    assert!(wait_until(Duration::from_millis(DAY + 1000), || now_ms()
        % DAY
        < 300));
    now_ms() / DAY
}

/// Waits until day `d` is over.
fn after(d: u64) {
    assert!(wait_until(Duration::from_millis(2 * DAY), || now_ms()
        / DAY
        > d));
}

/// Waits for the day after `d` (its start); returns its number.
fn next_day(d: u64) -> u64 {
    after(d);
    assert_eq!(now_ms() / DAY, d + 1, "a whole day passed unseen");
    d + 1
}

fn body(id: &str) -> Vec<u8> {
    format!("From: <s@snd.test>\r\nSubject: {id}\r\nMessage-ID: <{id}@snd.test>\r\n\r\nHi.\r\n")
        .into_bytes()
}

/// One message per recipient `{prefix}{i}@a.test`.
fn submit(relay: &Relay, prefix: &str, n: usize) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for i in 0..n {
        let rcpt = format!("{prefix}{i}@a.test");
        let r = c.send_mail(
            "s@snd.test",
            &[rcpt.as_str()],
            &body(&format!("{prefix}{i}")),
        );
        assert_eq!(r.code, 250, "{rcpt}: {r}");
    }
    c.quit();
}

fn alpha(admin: SocketAddr) -> Value {
    ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["alpha"].clone()
}

/// Waits until alpha has `n` replies counted (sent + deferred + bounced).
fn replies(admin: SocketAddr, n: u64) {
    let count = |a: &Value| {
        ["sent", "deferred", "bounced"]
            .iter()
            .map(|k| a[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        wait_until(WAIT, || count(&alpha(admin)) >= n),
        "{}",
        alpha(admin)
    );
}

/// Waits until alpha's last decision is `text`; returns alpha's view.
fn decided(relay: &Relay, admin: SocketAddr, text: &str) -> Value {
    let ok = wait_until(WAIT, || alpha(admin)["warmup_decision"] == text);
    assert!(ok, "want {text:?}: {}\n{}", alpha(admin), relay.plain_log());
    alpha(admin)
}

/// The sink: `slow*` recipients throttled, `blocked*` ones blocked, the rest taken.
fn script(s: &Step) -> Option<String> {
    match &s.stage {
        Stage::RcptTo(r) if r.starts_with("slow") => Some(THROTTLE.into()),
        Stage::RcptTo(r) if r.starts_with("blocked") => Some(BLOCK.into()),
        _ => None,
    }
}

fn ramp_events(admin: SocketAddr) -> Vec<Value> {
    let h = admin::get(admin, "/api/history?ip=127.0.0.10");
    h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "warmup")
        .cloned()
        .collect()
}

#[test]
fn a_clean_full_day_advances_with_growth_and_says_why_everywhere() {
    let b = bench(Some(script));
    let (relay, admin) = start(
        "ramp-advance",
        &b,
        "[4, 8, 16, 32, 64]",
        "max_growth = 4",
        30,
    );
    // Day A: cap 4, six messages: four go, two wait for the next day.
    let d = fresh_day();
    submit(&relay, "a", 6);
    b.sink.wait_for_messages(4, WAIT);
    replies(admin, 4);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    assert_eq!(b.sink.messages().len(), 4, "cap 4 on day 0");
    let a = alpha(admin);
    assert_eq!(
        (a["warmup_day"].as_u64(), a["adaptive"].as_bool()),
        (Some(0), Some(true)),
        "{a}"
    );
    // Next day: 4 accepted × 4 = 16, past the table's next step (8): day 2.
    after(d);
    b.sink.wait_for_messages(6, WAIT);
    let a = decided(
        &relay,
        admin,
        "day 2 reached: 0 % throttled, 100 % of cap used",
    );
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(2), Some(16)),
        "{a}"
    );
    let events = ramp_events(admin);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (&events[0]["scope"], &events[0]["cause"]),
        (&Value::from("alpha"), &Value::from("advanced"))
    );
    assert!(
        events[0]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("4 taken of cap 4: 4 accepted, 0 throttled"),
        "{events:?}"
    );
    let metrics = admin::get_text(admin, "/metrics");
    assert!(
        metrics.contains("poolrelay_warmup_decisions_total{ip=\"127.0.0.10\",provider=\"alpha\",decision=\"advanced\"} 1"),
        "{metrics}"
    );
    assert!(relay.plain_log().contains("warm-up: day 2 reached"));
    let page = admin::get_text(admin, "/api/page");
    assert!(page.contains("class=\"ramp-decision advanced\""), "{page}");
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["pool", "status", "--config", "poolrelay.toml"])
        .current_dir(relay.dir())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("adaptive: day 2 reached: 0 % throttled, 100 % of cap used"),
        "{table}"
    );
}

#[test]
fn a_day_limited_by_demand_is_held() {
    let b = bench(Some(script));
    let (relay, admin) = start("ramp-demand", &b, "[10, 20, 40]", "", 30);
    let d = fresh_day();
    submit(&relay, "a", 3);
    b.sink.wait_for_messages(3, WAIT);
    replies(admin, 3);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    after(d);
    submit(&relay, "b", 1);
    let a = decided(&relay, admin, "held at day 0: 30 % of cap used (demand)");
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(0), Some(10)),
        "{a}"
    );
    assert_eq!(ramp_events(admin)[0]["cause"], "held");
}

#[test]
fn a_throttled_share_between_the_thresholds_holds() {
    let b = bench(Some(script));
    let keys = "hold_above = 0.1\nstep_back_above = 0.5";
    let (relay, admin) = start("ramp-hold", &b, "[10, 20, 40]", keys, 30);
    // 8 taken + 2 throttled of cap 10: 20 % throttled.
    let d = fresh_day();
    submit(&relay, "a", 8);
    submit(&relay, "slow", 2);
    replies(admin, 10);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    after(d);
    submit(&relay, "b", 1);
    let a = decided(&relay, admin, "held at day 0: 20 % throttled");
    // Held, and never offered more than the receiver took (8 of 10).
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(0), Some(8)),
        "{a}"
    );
    assert_eq!(a["state"], "warming", "throttling is not a quarantine: {a}");
}

#[test]
fn heavy_throttling_steps_back() {
    let b = bench(Some(script));
    let keys = "max_growth = 4\nstep_back_days = 1";
    let (relay, admin) = start("ramp-back-rate", &b, "[4, 8, 16, 32]", keys, 30);
    // Day A clean and full → day 2 (cap 16).
    let d = fresh_day();
    submit(&relay, "a", 4);
    replies(admin, 4);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    // Day B: half of the replies throttled → back one day (day 1, cap 8 cut to the 4 accepted).
    let d = next_day(d);
    submit(&relay, "b", 4);
    submit(&relay, "slow", 4);
    replies(admin, 12);
    decided(
        &relay,
        admin,
        "day 2 reached: 0 % throttled, 100 % of cap used",
    );
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    after(d);
    submit(&relay, "c", 1);
    let a = decided(&relay, admin, "back to day 1: 50 % throttled");
    // Day 1's cap (8), cut to what the receiver took (4).
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(1), Some(4)),
        "{a}"
    );
    let causes: Vec<Value> = ramp_events(admin)
        .iter()
        .map(|e| e["cause"].clone())
        .collect();
    assert_eq!(causes, ["advanced", "stepped-back"]);
}

#[test]
fn a_block_steps_back() {
    let b = bench(None);
    let (relay, admin) = start(
        "ramp-back-block",
        &b,
        "[4, 8, 16, 32]",
        "max_growth = 4",
        30,
    );
    let d = fresh_day();
    submit(&relay, "a", 4);
    replies(admin, 4);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    // Day B: one block reply (a quarantine for alpha) → back two days, to day 0.
    let d = next_day(d);
    b.sink.set_script(Some(Arc::new(script)));
    submit(&relay, "blocked", 1);
    decided(
        &relay,
        admin,
        "day 2 reached: 0 % throttled, 100 % of cap used",
    );
    replies(admin, 5);
    b.sink.set_script(None);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    after(d);
    // After the (short) quarantine, the next send decides on day B.
    submit(&relay, "c", 1);
    let a = decided(&relay, admin, "back to day 0: blocked");
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(0), Some(4)),
        "{a}"
    );
}

#[test]
fn idle_days_rewarm_at_the_configured_day() {
    let b = bench(Some(script));
    let keys = "max_growth = 4\nrewarm_day = 1";
    let (relay, admin) = start("ramp-rewarm", &b, "[4, 8, 16, 32]", keys, 2);
    let d = fresh_day();
    submit(&relay, "a", 4);
    replies(admin, 4);
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    assert!(wait_until(Duration::from_millis(2 * DAY), || {
        alpha(admin)["warmup_day"] == 2
    }));
    // Two days without a send: the next one starts again at day 1 (cap 8).
    assert!(wait_until(Duration::from_millis(4 * DAY), || now_ms()
        / DAY
        >= d + 2));
    submit(&relay, "b", 1);
    let a = decided(&relay, admin, "re-warming from day 1: idle 2 days");
    assert_eq!(
        (a["warmup_day"].as_u64(), a["cap_today"].as_u64()),
        (Some(1), Some(8)),
        "{a}"
    );
    assert_eq!(ramp_events(admin)[0]["cause"], "rewarmed");
}
