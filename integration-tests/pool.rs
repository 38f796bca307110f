//! Pool: warm-up caps per IP × provider (daily and hourly, counted at the destination by peer
//! address), day advance only after sending days, overflow to warm IPs, holding (never
//! bouncing) when no IP can take a message, pool rules, drain/undrain through the CLI and the
//! admin API, state across restarts, and back-off after a "slow down" reply. Source IPs are
//! 127.0.0.10–12; the sinks' MX names map to test providers `alpha` and `beta`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::admin::{http, ip_entry, pool_status};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// Relay config: trusted 127/8, no connection reuse (so every message is a fresh selection),
/// admin API on a free port, providers alpha/beta; tests add pools, warm-up, rules.
fn config(b: &Bench) -> RelayConfig {
    b.config().delivery("idle_timeout", "\"0s\"")
}

/// Source IP 127.0.0.`n` saying `out{n}.relay.test`.
fn pool_ip(n: u8) -> PoolIp {
    PoolIp::new(n, &format!("out{n}.relay.test"))
}

/// `[warmup]` with a day of `day`, `burst`, and the schedule `t` of `daily` caps.
fn warmup(day: &str, burst: u32, daily: &str) -> String {
    format!(
        "[warmup]\nday = \"{day}\"\nburst = {burst}\n[[warmup.schedule]]\nname = \"t\"\ndaily = {daily}"
    )
}

fn start(name: &str, cfg: &RelayConfig) -> (Relay, SocketAddr) {
    admin::start(&tempdir(name), cfg, WAIT)
}

fn body(subject: &str) -> Vec<u8> {
    format!("From: <s@snd.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@snd.test>\r\n\r\nHello.\r\n")
        .into_bytes()
}

/// Submits one message per recipient over one session; asserts every 250.
fn submit(relay: &Relay, from: &str, rcpts: &[String]) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for (i, r) in rcpts.iter().enumerate() {
        let reply = c.send_mail(
            from,
            &[r.as_str()],
            &body(&format!("m{i}-{}", r.replace('@', "."))),
        );
        assert_eq!(reply.code, 250, "submit {r}: {reply}");
    }
    c.quit();
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// Messages at the sink from source `src` to MX address `dst`.
fn count(sink: &Sink, src: u8, dst: u8) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.peer == lo(src) && m.local.ip() == lo(dst))
        .count()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until a window of `len_ms` (epoch-aligned, as the relay counts them) has just begun,
/// so a step of the test fits inside one window; returns the window number.
fn fresh_window(len_ms: u64) -> u64 {
    assert!(wait_until(Duration::from_millis(len_ms + 1000), || now_ms(
    )
        % len_ms
        < 300));
    now_ms() / len_ms
}

/// `poolrelay pool ARGS --config poolrelay.toml`, run in the relay's directory.
fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .arg("pool")
        .args(args)
        .args(["--config", "poolrelay.toml"])
        .current_dir(dir)
        .output()
        .expect("run poolrelay pool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Queued envelopes (JSON).
fn envelopes(relay: &Relay) -> Vec<Value> {
    relay.queued_envelopes()
}

/// True when `n` messages are queued, every recipient pending with no counted attempt and a
/// hold reply containing `needle`.
fn held(relay: &Relay, n: usize, needle: &str) -> bool {
    let envs = envelopes(relay);
    envs.len() == n
        && envs.iter().all(|e| {
            e["recipients"].as_array().unwrap().iter().all(|r| {
                r["state"] == "pending"
                    && r["attempts"] == 0
                    && r["last_reply"]["status"] == "4.7.0"
                    && r["last_reply"]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(needle))
            })
        })
}

#[test]
fn warming_ip_cap_per_provider_overflows_to_the_warm_ip() {
    let b = bench(None);
    let cfg = config(&b)
        .pool("default", &[pool_ip(10).warmup("t"), pool_ip(11)])
        .section(&warmup("24h", 24, "[3, 6]"));
    let (relay, admin) = start("pool-overflow", &cfg);
    submit(&relay, "s@snd.test", &rcpts("x", "a.test", 10));
    submit(&relay, "s@snd.test", &rcpts("y", "b.test", 10));
    b.sink.wait_for_messages(20, WAIT);
    // The warming IP sends its daily cap to each provider, no more; the rest overflows.
    assert_eq!(count(&b.sink, 10, 20), 3, "warming IP to alpha");
    assert_eq!(count(&b.sink, 11, 20), 7, "warm IP to alpha");
    assert_eq!(count(&b.sink, 10, 21), 3, "warming IP to beta");
    assert_eq!(count(&b.sink, 11, 21), 7, "warm IP to beta");
    for m in b.sink.messages() {
        let want = if m.peer == lo(10) {
            "out10.relay.test"
        } else {
            "out11.relay.test"
        };
        assert_eq!(m.ehlo, want);
    }

    let ip10 = ip_entry(&pool_status(admin), "127.0.0.10");
    assert_eq!(ip10["state"], "warming", "{ip10}");
    let alpha = &ip10["providers"]["alpha"];
    assert_eq!(alpha["warmup_day"], 0, "{ip10}");
    assert_eq!(alpha["used_today"], 3, "{ip10}");
    assert_eq!(alpha["cap_today"], 3, "{ip10}");
    assert_eq!(alpha["state"], "warming", "{ip10}");
    let ip11 = ip_entry(&pool_status(admin), "127.0.0.11");
    assert_eq!(ip11["state"], "active", "{ip11}");
    assert!(
        wait_until(
            WAIT,
            || ip_entry(&pool_status(admin), "127.0.0.11")["providers"]["alpha"]["sent"] == 7
        ),
        "{}",
        pool_status(admin)
    );

    let (ok, table, err) = cli(relay.dir(), &["status"]);
    assert!(ok, "{err}");
    let line = table
        .lines()
        .find(|l| l.contains("127.0.0.10") && l.contains("alpha"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("warming") && line.contains("3/3"), "{table}");
}

#[test]
fn day_advances_only_after_sending_days_and_capped_mail_waits() {
    const DAY: u64 = 4000;
    let b = bench(None);
    let cfg = config(&b)
        .pool("default", &[pool_ip(10).warmup("t")])
        .section(&warmup("4s", 24, "[2, 3, 5]"));
    let (relay, admin) = start("pool-days", &cfg);
    // Day D: cap 2. Four messages: two go, two wait (held, not counted as attempts).
    let d = fresh_window(DAY);
    submit(&relay, "s@snd.test", &rcpts("d0-", "a.test", 4));
    b.sink.wait_for_messages(2, WAIT);
    assert!(
        wait_until(Duration::from_secs(2), || held(
            &relay,
            2,
            "pool default: no source IP has capacity for provider alpha"
        )),
        "{:#?}\n{}",
        envelopes(&relay),
        relay.log()
    );
    assert_eq!(now_ms() / DAY, d, "test step outran the day");
    assert_eq!(b.sink.messages().len(), 2, "daily cap 2 on day 0");

    // Day D+1 (a sending day came before): index 1, cap 3, the two held ones go.
    b.sink
        .wait_for_messages(4, Duration::from_millis(2 * DAY + 2000));
    assert!(now_ms() / DAY > d);
    let alpha = ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["alpha"].clone();
    assert_eq!(alpha["warmup_day"], 1, "{alpha}");
    assert_eq!(alpha["cap_today"], 3, "{alpha}");
    let send_day = now_ms() / DAY;

    // Two idle days, then send: the index moves by one (to 2, cap 5), not by the idle days.
    assert!(wait_until(Duration::from_millis(4 * DAY), || now_ms()
        / DAY
        >= send_day + 3));
    let d2 = fresh_window(DAY);
    submit(&relay, "s@snd.test", &rcpts("d2-", "a.test", 6));
    b.sink.wait_for_messages(9, WAIT);
    assert!(
        wait_until(Duration::from_secs(2), || held(
            &relay,
            1,
            "no source IP has capacity"
        )),
        "{:#?}",
        envelopes(&relay)
    );
    let alpha = ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["alpha"].clone();
    assert_eq!(now_ms() / DAY, d2, "test step outran the day");
    assert_eq!(alpha["warmup_day"], 2, "{alpha}");
    assert_eq!(alpha["used_today"], 5, "{alpha}");
    assert_eq!(alpha["cap_today"], 5, "{alpha}");
    assert_eq!(b.sink.messages().len(), 9);
    assert!(b.sink.messages().iter().all(|m| m.peer == lo(10)));
}

#[test]
fn hourly_cap_spreads_the_daily_cap_over_the_day() {
    // Day 120 s → an "hour" of 5 s; daily 48 → hourly ceil(48/24) × burst 1 = 2. The test can
    // cross a "day", which moves the warm-up on a day: 48 on every day it can reach.
    const HOUR: u64 = 5000;
    let b = bench(None);
    let cfg = config(&b)
        .pool("default", &[pool_ip(10).warmup("t")])
        .section(&warmup("120s", 1, "[48, 48, 48]"));
    let (relay, _admin) = start("pool-hourly", &cfg);
    fresh_window(HOUR);
    submit(&relay, "s@snd.test", &rcpts("h", "a.test", 5));
    // Record the hour window of each arrival.
    let mut per_window: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_millis(4 * HOUR + 5000);
    while seen < 5 && Instant::now() < deadline {
        let n = b.sink.messages().len();
        if n > seen {
            *per_window.entry(now_ms() / HOUR).or_default() += n - seen;
            seen = n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        seen,
        5,
        "all delivered in the end: {per_window:?}\n{}",
        relay.log()
    );
    assert!(
        per_window.values().all(|&n| n <= 2),
        "at most 2 per hour: {per_window:?}"
    );
    assert!(per_window.len() >= 3, "spread over 3 hours: {per_window:?}");
}

#[test]
fn pool_rules_by_sender_domain_pattern_and_authenticated_user() {
    let b = bench(None);
    let dir = tempdir("pool-rules");
    let certs = make_certs(&dir, &["relay.test"]);
    let users = write_users(&dir, &[("bulkuser", "secret")]);
    let cfg = config(&b)
        .listen("starttls", "optional")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("bulkuser", &["shop.test", "snd.test"])
        .pool("default", &[pool_ip(10)])
        .pool("bulk", &[pool_ip(11)])
        .pool("vip", &[pool_ip(12)])
        .section(
            r#"
[[pool_rule]]
user = "bulkuser"
pool = "bulk"
[[pool_rule]]
sender_domain = "news.test"
pool = "bulk"
[[pool_rule]]
sender = "ceo@*"
pool = "vip"
"#,
        );
    let relay = Relay::start(&dir, &cfg.to_toml());
    submit(&relay, "a@shop.test", &["p1@a.test".to_string()]);
    submit(&relay, "a@news.test", &["p2@a.test".to_string()]);
    submit(&relay, "ceo@shop.test", &["p3@a.test".to_string()]);
    // An authenticated user from an untrusted address.
    let mut c = SmtpClient::connect_from(relay.addr(), lo(66));
    c.ehlo("client.test");
    c.starttls("relay.test", &certs.ca);
    c.ehlo("client.test");
    c.auth_plain("bulkuser", "secret").expect(235);
    let r = c.send_mail("b@shop.test", &["p4@a.test"], &body("auth"));
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    let msgs = b.sink.wait_for_messages(4, WAIT);
    let peer_of = |rcpt: &str| {
        msgs.iter()
            .find(|m| m.rcpt_to.iter().any(|r| r == rcpt))
            .unwrap_or_else(|| panic!("{rcpt} not delivered"))
            .peer
    };
    assert_eq!(peer_of("p1@a.test"), lo(10), "no rule: default pool");
    assert_eq!(peer_of("p2@a.test"), lo(11), "sender_domain rule");
    assert_eq!(peer_of("p3@a.test"), lo(12), "sender pattern rule");
    assert_eq!(peer_of("p4@a.test"), lo(11), "user rule");
}

#[test]
fn drain_undrain_at_run_time_hold_without_bounce_and_survive_restart() {
    let b = bench(None);
    let cfg = config(&b)
        .pool("default", &[pool_ip(10), pool_ip(11), pool_ip(12)])
        .section("[throttle]\nhold_warning_interval = \"1h\"");
    let (mut relay, admin) = start("pool-drain", &cfg);
    let dir = relay.dir().to_path_buf();
    let (ok, out, err) = cli(&dir, &["drain", "127.0.0.10"]);
    assert!(ok && out.contains("drained"), "{out}{err}");
    submit(&relay, "s@snd.test", &rcpts("a", "a.test", 6));
    b.sink.wait_for_messages(6, WAIT);
    assert_eq!(count(&b.sink, 10, 20), 0, "drained IP takes nothing");
    assert_eq!(count(&b.sink, 11, 20) + count(&b.sink, 12, 20), 6);

    // Drain the rest (API and CLI): mail is held, never bounced.
    let (code, v) = http(admin, "POST", "/api/pool/127.0.0.11/drain", None);
    assert_eq!(code, 200, "{v}");
    let (ok, out, err) = cli(&dir, &["drain", "127.0.0.12", "--reason", "maintenance"]);
    assert!(ok, "{out}{err}");
    submit(&relay, "s@snd.test", &rcpts("h", "a.test", 2));
    assert!(
        wait_until(WAIT, || held(
            &relay,
            2,
            "pool default: every source IP is drained or quarantined for provider alpha"
        )),
        "{:#?}\n{}",
        envelopes(&relay),
        relay.log()
    );
    assert!(relay.wait_for_log("no usable source IP", WAIT));
    assert_eq!(b.sink.messages().len(), 6);

    // Restart: drains and counters come back from the state store; mail stays held.
    relay.stop();
    relay.restart();
    assert!(wait_until(WAIT, || TcpStream::connect(admin).is_ok()));
    let st = pool_status(admin);
    for ip in ["127.0.0.10", "127.0.0.11", "127.0.0.12"] {
        assert_eq!(ip_entry(&st, ip)["state"], "drained", "{st}");
    }
    assert_eq!(ip_entry(&st, "127.0.0.12")["reason"], "maintenance", "{st}");
    let sent = |st: &Value, ip: &str| {
        ip_entry(st, ip)["providers"]["alpha"]["sent"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(sent(&st, "127.0.0.11") + sent(&st, "127.0.0.12"), 6, "{st}");
    let (ok, table, _) = cli(&dir, &["status"]);
    assert!(ok);
    assert_eq!(
        table.lines().filter(|l| l.contains("drained")).count(),
        3,
        "{table}"
    );
    assert!(held(&relay, 2, "drained or quarantined"));

    // Undrain one IP through the API: held mail goes at once (not at its 5-minute recheck).
    let (code, v) = http(
        admin,
        "POST",
        "/api/pool/undrain",
        Some(json!({"ip": "127.0.0.11"})),
    );
    assert_eq!(code, 200, "{v}");
    b.sink.wait_for_messages(8, WAIT);
    assert_eq!(count(&b.sink, 11, 20), 6 - count(&b.sink, 12, 20) + 2);
    assert!(wait_until(WAIT, || relay.queued_ids().is_empty()));
    assert!(
        b.sink.messages().iter().all(|m| !m.mail_from.is_empty()),
        "no bounce was sent"
    );
    assert!(!relay.log().contains("status=bounced") && !relay.log().contains("status=\"bounced\""));

    let (ok, _, err) = cli(&dir, &["undrain", "127.0.0.99"]);
    assert!(!ok && err.contains("not in any pool"), "{err}");
    let (code, _) = http(
        admin,
        "POST",
        "/api/pool/drain",
        Some(json!({"ip": "bogus"})),
    );
    assert_eq!(code, 400);
}

/// Gmail/Yahoo style: `421` to MAIL FROM (pipelined with RCPT), then the connection closes.
fn slow_down_alpha_from_10(s: &Step) -> Option<String> {
    (s.peer == lo(10) && s.local.ip() == lo(20) && matches!(s.stage, Stage::MailFrom(_)))
        .then(|| "421 4.7.28 Our system has detected an unusual rate of unsolicited mail".into())
}

#[test]
fn slow_down_reply_backs_off_that_ip_for_that_provider_only() {
    let b = bench(Some(slow_down_alpha_from_10));
    let cfg = config(&b).pool("default", &[pool_ip(10), pool_ip(11)]);
    let (relay, admin) = start("pool-backoff", &cfg);
    submit(&relay, "s@snd.test", &rcpts("a", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    assert_eq!(count(&b.sink, 11, 20), 4, "alpha mail went through .11");
    let alpha = ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["alpha"].clone();
    // Backed off (the Reputation stage may also quarantine it for alpha on such a reply).
    assert!(
        alpha["state"] == "backoff" || alpha["state"] == "quarantined",
        "{alpha}"
    );
    assert!(
        alpha["backoff_reason"].as_str().unwrap().contains("4.7.28"),
        "{alpha}"
    );
    let sessions_10_alpha = || {
        b.sink
            .sessions()
            .iter()
            .filter(|s| {
                s.peer.is_some_and(|p| p.ip() == lo(10))
                    && s.local.is_some_and(|l| l.ip() == lo(20))
            })
            .count()
    };
    let before = sessions_10_alpha();
    // More alpha mail: .10 is not tried; beta still gets mail from .10.
    submit(&relay, "s@snd.test", &rcpts("b", "a.test", 4));
    submit(&relay, "s@snd.test", &rcpts("c", "b.test", 4));
    b.sink.wait_for_messages(12, WAIT);
    assert_eq!(sessions_10_alpha(), before, "no new alpha session from .10");
    assert_eq!(count(&b.sink, 11, 20), 8);
    assert!(count(&b.sink, 10, 21) >= 1, "beta is not backed off");
}

#[test]
fn provider_throttles_messages_per_connection_and_per_hour() {
    // Day 120 s → an "hour" of 5 s. alpha: 2 messages per connection; beta: 2 per hour.
    const HOUR: u64 = 5000;
    let b = bench(None);
    let dir = tempdir("pool-throttle");
    let cfg = config(&b)
        .delivery("idle_timeout", "\"30s\"")
        .provider_key("alpha", "max_per_connection", 2)
        .provider_key("beta", "max_per_hour", 2)
        .pool("default", &[pool_ip(10)])
        .section("[warmup]\nday = \"120s\"");
    let relay = Relay::start(&dir, &cfg.to_toml());
    // One after the other, so each could reuse the previous connection.
    for i in 0..5 {
        submit(&relay, "s@snd.test", &[format!("c{i}@a.test")]);
        b.sink.wait_for_messages(i + 1, WAIT);
    }
    let mut per_session: std::collections::BTreeMap<usize, usize> = Default::default();
    for m in b.sink.messages() {
        *per_session.entry(m.session).or_default() += 1;
    }
    assert!(
        per_session.values().all(|&n| n <= 2),
        "at most 2 per connection: {per_session:?}"
    );
    assert!(
        per_session.values().any(|&n| n == 2),
        "connections are reused: {per_session:?}"
    );

    b.sink.clear();
    fresh_window(HOUR);
    let w = now_ms() / HOUR;
    submit(&relay, "s@snd.test", &rcpts("h", "b.test", 3));
    b.sink.wait_for_messages(2, WAIT);
    assert!(
        wait_until(Duration::from_secs(2), || held(
            &relay,
            1,
            "no source IP has capacity for provider beta (127.0.0.10 hourly cap reached)"
        )),
        "{:#?}",
        envelopes(&relay)
    );
    assert_eq!(now_ms() / HOUR, w, "test step outran the hour");
    assert_eq!(b.sink.messages().len(), 2);
    b.sink.wait_for_messages(3, Duration::from_millis(2 * HOUR));
    assert!(now_ms() / HOUR > w);
}
