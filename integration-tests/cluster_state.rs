//! Several relays, one farm (issue 19): holds, suppressions and history that propagate through a
//! real `redis-server` (started by each test on a free loopback port, never a system one), the
//! farm view, an IP moved between nodes, Redis killed and restarted. Redis is an installed tool,
//! so every test here is `#[ignore]`d (run by .ci/run) and fails when `redis-server` is missing.
//! Source IPs 127.0.0.10–12; `a.test` → mx.alpha.test (127.0.0.20, provider alpha), `b.test` →
//! mx.beta.test (127.0.0.21, provider beta).
//!
//! Propagation is asserted within 1 s plus `MARGIN`: the time is measured by polling each
//! node's admin API (one HTTP request per node and poll, on a loaded 2-core machine), which
//! adds its own delay to what the relays take.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{self, get, hold, hold_of, http, ip_entry, pool_status};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const PROPAGATION: Duration = Duration::from_secs(1);
/// What polling the admin APIs adds to the measurement (see the file's comment).
const MARGIN: Duration = Duration::from_secs(1);
const BIN: &str = env!("CARGO_BIN_EXE_poolrelay");

fn node_dir(dir: &Path, node: &str) -> PathBuf {
    let d = dir.join(node);
    std::fs::create_dir_all(&d).expect("node dir");
    d
}

/// One node's config without its pool (`with_pool` adds it): the same ports on reload.
fn node_config(b: &Bench, redis: &RedisServer, node: &str) -> RelayConfig {
    b.config()
        .delivery("idle_timeout", "\"0s\"")
        .section(&format!(
            "[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nprefix = \"farm\"\nresync_interval = \"2s\"\n\n[reputation]\nsuppress_for = \"1h\"\n",
            redis.url()
        ))
}

fn with_pool(cfg: &RelayConfig, ips: &[u8]) -> RelayConfig {
    let ips: Vec<PoolIp> = ips
        .iter()
        .map(|n| PoolIp::new(*n, &format!("out{n}.test")))
        .collect();
    cfg.clone().pool("default", &ips)
}

struct Node {
    relay: Relay,
    admin: SocketAddr,
    base: RelayConfig,
}

fn start_node(dir: &Path, b: &Bench, redis: &RedisServer, name: &str, ips: &[u8]) -> Node {
    let base = node_config(b, redis, name);
    let (relay, admin) = admin::start(&node_dir(dir, name), &with_pool(&base, ips), WAIT);
    Node { relay, admin, base }
}

/// Waits until every node sees all of them and listens to the farm's changes.
fn wait_for_farm(nodes: &[&Node]) {
    for n in nodes {
        assert!(
            n.relay
                .wait_for_log("cluster: subscribed to the farm's changes", WAIT),
            "{}",
            n.relay.log()
        );
        assert!(
            wait_until(WAIT, || pool_status(n.admin)["farm"]["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == nodes.len())),
            "{}",
            pool_status(n.admin)
        );
    }
}

fn post(admin: SocketAddr, path: &str, body: Value) -> Value {
    let (code, v) = http(admin, "POST", path, Some(body));
    assert_eq!(code, 200, "POST {path}: {v}");
    v
}

/// Polls `cond` until it holds; returns how long that took (panics after `WAIT`).
fn time_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(wait_until(WAIT, &mut cond), "never: {what}");
    t.elapsed()
}

fn assert_quick(what: &str, took: Duration) {
    eprintln!("propagation: {what}: {took:?}");
    assert!(
        took <= PROPAGATION + MARGIN,
        "{what} took {took:?} (> {PROPAGATION:?} + {MARGIN:?})"
    );
}

fn submit(relay: &Relay, rcpts: &[String]) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for (i, r) in rcpts.iter().enumerate() {
        let body = format!("From: <s@c.test>\r\nSubject: m{i}\r\n\r\nHello.\r\n");
        let reply = c.send_mail("s@c.test", &[r.as_str()], body.as_bytes());
        assert_eq!(reply.code, 250, "submit {r}: {reply}");
    }
    c.quit();
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// Messages the sink got at alpha's MX from 127.0.0.`src` (DSNs to c.test excluded).
fn to_alpha_from(sink: &Sink, src: u8) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.peer == lo(src) && m.local.ip() == lo(20))
        .count()
}

/// A DNSBL refusal in the greeting to 127.0.0.10 at alpha's MX.
fn greeting_block_10_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::Connect) && s.peer == lo(10) && s.local.ip() == lo(20)).then(|| {
        "554 5.7.1 Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org"
            .to_string()
    })
}

/// `poolrelay pool status` of a running node.
fn pool_status_cli(relay: &Relay) -> String {
    let o = Command::new(BIN)
        .current_dir(relay.dir())
        .args(["pool", "status", "--config", "poolrelay.toml"])
        .output()
        .expect("run poolrelay pool status");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn drained(admin: SocketAddr, ip: &str) -> bool {
    hold_of(admin, ip, "all", "operator").is_some()
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_drain_or_quarantine_on_one_node_stops_the_ip_on_the_others_within_a_second() {
    let (dir, redis, b) = farm("cluster-holds", Some(greeting_block_10_at_alpha));
    // Node a sends from 127.0.0.10 only; b and c share it with 127.0.0.11 (NAT, or an IP
    // that moves).
    let a = start_node(&dir, &b, &redis, "a", &[10]);
    let n_b = start_node(&dir, &b, &redis, "b", &[10, 11]);
    let c = start_node(&dir, &b, &redis, "c", &[10, 11]);
    wait_for_farm(&[&a, &n_b, &c]);

    // The farm view: every node, and the node(s) each IP is on.
    let st = pool_status(n_b.admin);
    assert_eq!(st["farm"]["node"], "b", "{st}");
    assert_eq!(st["farm"]["redis_up"], true, "{st}");
    assert_eq!(ip_entry(&st, "127.0.0.10")["node"], "a, b, c", "{st}");
    assert_eq!(ip_entry(&st, "127.0.0.11")["node"], "b, c", "{st}");
    let out = pool_status_cli(&n_b.relay);
    assert!(out.starts_with("farm: this node b, redis up\n"), "{out}");
    for node in ["a", "b", "c"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{node} "))),
            "{out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.contains("127.0.0.11") && l.contains(" b, c ")),
        "{out}"
    );
    let page = admin::get_text(n_b.admin, "/api/page");
    assert!(
        page.contains("<h1>Farm</h1>") && page.contains("data-node=\"c\""),
        "{page}"
    );
    assert!(page.contains(" · on a, b, c"), "{page}");

    // An operator's drain on a: in force on b and c within a second.
    post(
        a.admin,
        "/api/pool/127.0.0.10/drain",
        json!({"reason": "maintenance"}),
    );
    let took = time_until("drain on b and c", || {
        drained(n_b.admin, "127.0.0.10") && drained(c.admin, "127.0.0.10")
    });
    assert_quick("drain a → b, c", took);
    let h = hold_of(c.admin, "127.0.0.10", "all", "operator").unwrap();
    assert_eq!(h["reason"], "maintenance", "{h}");
    assert_eq!(h["kind"], "drained", "{h}");
    // b sends nothing from it.
    submit(&n_b.relay, &rcpts("d", "a.test", 3));
    b.sink.wait_for_messages(3, WAIT);
    assert_eq!(to_alpha_from(&b.sink, 11), 3);
    assert_eq!(to_alpha_from(&b.sink, 10), 0);
    // Undrained on c: released on a and b as quickly.
    post(c.admin, "/api/pool/127.0.0.10/undrain", json!({}));
    let took = time_until("undrain on a and b", || {
        !drained(a.admin, "127.0.0.10") && !drained(n_b.admin, "127.0.0.10")
    });
    assert_quick("undrain c → a, b", took);

    // A quarantine made by reputation on a (alpha's greeting blocks 127.0.0.10).
    submit(&a.relay, &rcpts("q", "a.test", 1));
    time_until("quarantine on a", || {
        hold(a.admin, "127.0.0.10", "alpha").is_some()
    });
    let took = time_until("quarantine on b and c", || {
        hold(n_b.admin, "127.0.0.10", "alpha").is_some()
            && hold(c.admin, "127.0.0.10", "alpha").is_some()
    });
    assert_quick("quarantine a → b, c", took);
    let h = hold(c.admin, "127.0.0.10", "alpha").unwrap();
    assert_eq!(h["kind"], "quarantined", "{h}");
    assert!(
        h["evidence"].as_str().unwrap().contains("zen.spamhaus.org"),
        "{h}"
    );
    // b and c send alpha mail from 127.0.0.11 only (the sink would have refused 10 anyway,
    // but then a quarantine of their own would show in their logs).
    submit(&n_b.relay, &rcpts("e", "a.test", 2));
    submit(&c.relay, &rcpts("f", "a.test", 2));
    assert!(wait_until(WAIT, || to_alpha_from(&b.sink, 11) == 7));
    for n in [&n_b, &c] {
        let log = n.relay.log();
        assert!(!log.contains("pool IP quarantined"), "{log}");
        assert!(log.contains("pool IP held (from the farm)"), "{log}");
    }
    // The source of truth holds it by IP, not by node.
    let fields: Vec<String> = redis.query(&["HKEYS", "farm:holds"]);
    assert!(
        fields.iter().any(|f| f.starts_with("127.0.0.10|alpha|")),
        "{fields:?}"
    );
}

fn rcpt_attempts(sink: &Sink, addr: &str) -> usize {
    sink.transcripts()
        .to_ascii_lowercase()
        .matches(&format!("rcpt to:<{addr}>"))
        .count()
}

fn suppressed(admin: SocketAddr, address: &str) -> bool {
    get(admin, "/api/suppressions")["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["address"] == address)
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_suppression_made_on_one_node_refuses_on_another() {
    let (dir, redis, b) = farm("cluster-suppress", None);
    // The senders' domain is deliverable, so the DSNs land at the sink.
    b.dns.add_mx("c.test", 10, "mx.beta.test");
    let a = start_node(&dir, &b, &redis, "a", &[10]);
    let n_b = start_node(&dir, &b, &redis, "b", &[11]);
    wait_for_farm(&[&a, &n_b]);

    // A bad recipient bounces on a: suppressed there, and on b within a second.
    submit(&a.relay, &["permfail@b.test".to_string()]);
    time_until("suppressed on a", || suppressed(a.admin, "permfail@b.test"));
    let took = time_until("suppressed on b", || {
        suppressed(n_b.admin, "permfail@b.test")
    });
    assert_quick("suppression a → b", took);
    assert_eq!(rcpt_attempts(&b.sink, "permfail@b.test"), 1);

    // Mail to it through b fails at once with a DSN that says why; nothing is tried.
    submit(&n_b.relay, &["PermFail@b.test".to_string()]);
    assert!(
        wait_until(WAIT, || b.sink.messages().iter().any(|m| {
            m.mail_from.is_empty() && m.data_str().contains("suppressed until") && m.peer == lo(11)
        })),
        "{}",
        n_b.relay.log()
    );
    assert_eq!(rcpt_attempts(&b.sink, "permfail@b.test"), 1);

    // Removed on b: removed on a too; mail through a tries it again.
    post(
        n_b.admin,
        "/api/suppressions/remove",
        json!({"address": "permfail@b.test"}),
    );
    let took = time_until("removed on a", || !suppressed(a.admin, "permfail@b.test"));
    assert_quick("removal b → a", took);
    submit(&a.relay, &["permfail@b.test".to_string()]);
    assert!(wait_until(WAIT, || rcpt_attempts(
        &b.sink,
        "permfail@b.test"
    ) == 2));
}

fn reload(relay: &mut Relay, toml: &str) {
    relay.set_config(toml);
    let (code, out) = run_poolrelay(relay.dir(), &["reload", "--config", "poolrelay.toml"]);
    assert!(code == 0, "reload: {out}");
}

fn history(admin: SocketAddr, ip: &str) -> Value {
    get(admin, &format!("/api/history?ip={ip}"))
}

fn sent_in(h: &Value) -> u64 {
    h["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sent"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn an_ip_moved_by_reload_keeps_its_hold_and_history() {
    let (dir, redis, b) = farm("cluster-move", None);
    let mut a = start_node(&dir, &b, &redis, "a", &[10, 12]);
    let mut n_b = start_node(&dir, &b, &redis, "b", &[11]);
    wait_for_farm(&[&a, &n_b]);

    // 127.0.0.10 sends on a and is then drained for beta there.
    submit(&a.relay, &rcpts("h", "b.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    let from_10 = b
        .sink
        .messages()
        .iter()
        .filter(|m| m.peer == lo(10))
        .count() as u64;
    assert!(from_10 >= 1, "round robin over 10 and 12");
    post(
        a.admin,
        "/api/pool/127.0.0.10/drain",
        json!({"provider": "beta", "reason": "moving to b"}),
    );
    assert!(wait_until(WAIT, || sent_in(&history(
        a.admin,
        "127.0.0.10"
    )) == from_10));

    // The IP moves: off a's pool, into b's (as keepalived would move the address).
    reload(&mut a.relay, &with_pool(&a.base, &[12]).to_toml());
    reload(&mut n_b.relay, &with_pool(&n_b.base, &[11, 10]).to_toml());
    assert!(
        wait_until(
            WAIT,
            || ip_entry(&pool_status(n_b.admin), "127.0.0.10")["node"] == "b"
        ),
        "{}",
        pool_status(n_b.admin)
    );
    // Its drain came with it: b's beta mail goes from 11 only, its alpha mail from both.
    let h = hold_of(n_b.admin, "127.0.0.10", "beta", "operator")
        .unwrap_or_else(|| panic!("{}", pool_status(n_b.admin)));
    assert_eq!(h["reason"], "moving to b", "{h}");
    let before = b.sink.messages().len();
    submit(&n_b.relay, &rcpts("m", "b.test", 3));
    b.sink.wait_for_messages(before + 3, WAIT);
    let new: Vec<_> = b.sink.messages()[before..].to_vec();
    assert!(
        new.iter().all(|m| m.peer == lo(11)),
        "{:?}",
        new.iter().map(|m| m.peer).collect::<Vec<_>>()
    );
    // And its history: what a sent from it, and the drain, seen from b.
    let hist = history(n_b.admin, "127.0.0.10");
    assert_eq!(sent_in(&hist), from_10, "{hist}");
    assert!(
        hist["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "drained" && e["reason"] == "moving to b"),
        "{hist}"
    );
    // Undrained on b (where it is now): the farm's record says so, and a (which no longer
    // sends from it) hears of it too.
    post(
        n_b.admin,
        "/api/pool/127.0.0.10/undrain",
        json!({"provider": "beta"}),
    );
    assert!(wait_until(WAIT, || {
        let r: Option<String> = redis.query(&["HGET", "farm:holds", "127.0.0.10|beta|operator"]);
        r.is_some_and(|r| r.contains(r#""hold":null"#) && r.contains(r#""node":"b""#))
    }));
    assert!(
        a.relay
            .wait_for_log("pool IP hold ended (from the farm)", WAIT),
        "{}",
        a.relay.log()
    );
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn redis_killed_and_restarted_local_changes_meet_and_the_later_one_wins() {
    let (dir, mut redis, b) = farm("cluster-outage", None);
    let a = start_node(&dir, &b, &redis, "a", &[10, 11]);
    let n_b = start_node(&dir, &b, &redis, "b", &[10, 11]);
    wait_for_farm(&[&a, &n_b]);
    post(
        a.admin,
        "/api/pool/127.0.0.11/drain",
        json!({"reason": "old"}),
    );
    assert!(wait_until(WAIT, || drained(n_b.admin, "127.0.0.11")));
    submit(&a.relay, &["permfail@b.test".to_string()]);
    assert!(wait_until(WAIT, || suppressed(
        n_b.admin,
        "permfail@b.test"
    )));

    redis.kill();
    for n in [&a, &n_b] {
        assert!(
            n.relay.wait_for_log("cluster: Redis down", WAIT),
            "{}",
            n.relay.log()
        );
    }
    // While it is down each node still changes its holds and suppressions, locally.
    submit(&a.relay, &["permfail@a.test".to_string()]);
    assert!(wait_until(WAIT, || suppressed(a.admin, "permfail@a.test")));
    post(
        n_b.admin,
        "/api/suppressions/remove",
        json!({"address": "permfail@b.test"}),
    );
    assert!(!suppressed(n_b.admin, "permfail@b.test"));
    post(
        a.admin,
        "/api/pool/127.0.0.10/drain",
        json!({"reason": "during the outage"}),
    );
    assert!(drained(a.admin, "127.0.0.10"));
    post(n_b.admin, "/api/pool/127.0.0.11/undrain", json!({}));
    assert!(!drained(n_b.admin, "127.0.0.11"));
    // Each still has the other's old state.
    assert!(drained(a.admin, "127.0.0.11") && !drained(n_b.admin, "127.0.0.10"));
    // Mail keeps flowing through b; a accepts and holds its own (both its IPs are drained
    // there), never bouncing it.
    submit(&n_b.relay, &rcpts("o", "a.test", 2));
    b.sink.wait_for_messages(2, WAIT);
    submit(&a.relay, &rcpts("p", "a.test", 1));

    // Redis returns empty (nothing saved): each node pushes what it changed and pulls the
    // other's; the later change of each record wins on both.
    redis.restart();
    let took = Instant::now();
    assert!(
        wait_until(WAIT, || drained(n_b.admin, "127.0.0.10")
            && !drained(a.admin, "127.0.0.11")),
        "a: {}\nb: {}",
        pool_status(a.admin),
        pool_status(n_b.admin)
    );
    eprintln!("reconciled {:?} after Redis returned", took.elapsed());
    assert!(drained(a.admin, "127.0.0.10") && !drained(n_b.admin, "127.0.0.11"));
    let h = hold_of(n_b.admin, "127.0.0.10", "all", "operator").unwrap();
    assert_eq!(h["reason"], "during the outage", "{h}");
    // The same for suppressions: b's removal and a's addition reach the other.
    assert!(
        wait_until(WAIT, || !suppressed(a.admin, "permfail@b.test")
            && suppressed(n_b.admin, "permfail@a.test")),
        "a: {}\nb: {}",
        get(a.admin, "/api/suppressions"),
        get(n_b.admin, "/api/suppressions")
    );
    // Redis has both records again: the drain, and 11's release (a tombstone).
    let holds: Vec<String> = redis.query(&["HKEYS", "farm:holds"]);
    assert!(
        holds.contains(&"127.0.0.10|all|operator".to_string())
            && holds.contains(&"127.0.0.11|all|operator".to_string()),
        "{holds:?}"
    );
    // And a's held mail goes now, from 11.
    assert!(wait_until(WAIT, || to_alpha_from(&b.sink, 11) >= 1
        && b.sink.messages().len() == 3));
    assert_eq!(
        a.relay
            .log()
            .matches("pool IP hold ended (from the farm)")
            .count(),
        1
    );
}

/// Schedule `new`: 4, 6, then 40 a day, in a 10-day "day" (no window ends during a test).
const WARMUP: &str = "[warmup]\nday = \"240h\"\nburst = 1000\n[[warmup.schedule]]\nname = \"new\"\ndaily = [4, 6, 40]\n";
const WARMUP_DAY_MS: u64 = 240 * 3600 * 1000;

fn warming_pool(base: &RelayConfig, ip: u8) -> RelayConfig {
    base.clone().pool(
        "default",
        &[PoolIp::new(ip, &format!("out{ip}.test")).warmup("new")],
    )
}

/// The warming IP 127.0.0.12 moves from a to b by reload (as keepalived would move the address):
/// its warm-up day and today's count come with it. The farm has it on day 1 (cap 6: yesterday
/// was its day 0); a sends 4 from it, so b may send only 2 more today. A relay that counted
/// alone would be on day 0 with nothing sent (4 more from b).
#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn an_ip_moved_by_reload_keeps_its_warmup_day_and_todays_count() {
    let (dir, redis, b) = farm("cluster-move-warmup", None);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let yesterday = now_ms / WARMUP_DAY_MS - 1;
    let _: () = redis.query(&[
        "HSET",
        "farm:ramp",
        "127.0.0.12|alpha",
        &format!("{{\"day_index\":0,\"last_send_day\":{yesterday}}}"),
    ]);
    let a_base = node_config(&b, &redis, "a").section(WARMUP);
    let b_base = node_config(&b, &redis, "b").section(WARMUP);
    let start = |name: &str, base: &RelayConfig, pool: RelayConfig| {
        let (relay, admin) = admin::start(&node_dir(&dir, name), &pool, WAIT);
        Node {
            relay,
            admin,
            base: base.clone(),
        }
    };
    let mut a = start("a", &a_base, warming_pool(&a_base, 12));
    let mut n_b = start("b", &b_base, with_pool(&b_base, &[11]));
    wait_for_farm(&[&a, &n_b]);
    let b_admin = n_b.admin;

    submit(&a.relay, &rcpts("a", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    assert_eq!(to_alpha_from(&b.sink, 12), 4);

    // The IP moves: a sends from 10 now, b from 12 alone.
    reload(&mut a.relay, &with_pool(&a.base, &[10]).to_toml());
    reload(&mut n_b.relay, &warming_pool(&n_b.base, 12).to_toml());
    assert!(
        wait_until(
            WAIT,
            || ip_entry(&pool_status(b_admin), "127.0.0.12")["node"] == "b"
        ),
        "{}",
        pool_status(b_admin)
    );
    submit(&n_b.relay, &rcpts("b", "a.test", 5));
    assert!(
        n_b.relay
            .wait_for_log("farm daily warm-up cap reached", WAIT),
        "{}",
        n_b.relay.log()
    );
    b.sink.wait_for_messages(6, WAIT);
    assert_eq!(to_alpha_from(&b.sink, 12), 6, "the farm's day-1 cap of 6");
    let st = pool_status(b_admin);
    let alpha = &ip_entry(&st, "127.0.0.12")["providers"]["alpha"];
    assert_eq!(alpha["warmup_day"], 1, "{st}");
    let keys = redis.keys("farm:ipp:127.0.0.12|alpha:d:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let count: Option<u64> = redis.query(&["GET", &keys[0]]);
    assert_eq!(count, Some(6));
    // The other 3 wait on b (held by the cap), not lost.
    let q = get(b_admin, "/api/queue");
    assert_eq!(q["messages"], 3, "{q}");
}

/// Every RCPT at alpha's MX answered after a second with a Spamhaus block.
fn delayed_block_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::RcptTo(_)) && s.local.ip() == lo(20)).then(|| {
        "DELAY:1000:550 5.7.1 Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org"
            .to_string()
    })
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn two_relays_seeing_one_block_at_once_make_one_offence() {
    let (dir, redis, b) = farm("cluster-incident", Some(delayed_block_at_alpha));
    let nodes: Vec<Node> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let base = b
                .config()
                .delivery("idle_timeout", "\"0s\"")
                .section(&format!(
                    "[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nprefix = \"farm\"\nresync_interval = \"2s\"\n\n[reputation]\ncooldown = \"1h\"\n",
                    redis.url()
                ));
            let (relay, admin) =
                admin::start(&node_dir(&dir, name), &with_pool(&base, &[10]), WAIT);
            Node { relay, admin, base }
        })
        .collect();
    wait_for_farm(&[&nodes[0], &nodes[1]]);
    // Three deliveries from 127.0.0.10 in flight on each relay when the receiver answers.
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            s.spawn(move || submit(&n.relay, &rcpts(&format!("n{i}-"), "a.test", 3)));
        }
    });
    assert!(
        wait_until(WAIT, || b.sink.transcripts().matches("RCPT TO:<").count()
            == 6),
        "{}",
        b.sink.transcripts()
    );
    let hold_on = |n: &Node| hold_of(n.admin, "127.0.0.10", "alpha", "block-reply");
    // Every reply answered and counted, and both relays agree on the record.
    assert!(
        wait_until(WAIT, || {
            let (x, y) = (hold_on(&nodes[0]), hold_on(&nodes[1]));
            x.is_some()
                && x == y
                && nodes
                    .iter()
                    .all(|n| n.relay.plain_log().matches("reply classified").count() == 3)
        }),
        "{:?}\n{:?}\n{}\n{}",
        hold_on(&nodes[0]),
        hold_on(&nodes[1]),
        nodes[0].relay.log(),
        nodes[1].relay.log()
    );
    let h = hold_on(&nodes[0]).unwrap();
    assert_eq!(h["offence"], 1, "one offence: {h}");
    assert_eq!(
        h["until"].as_u64().unwrap() - h["since"].as_u64().unwrap(),
        3600,
        "the configured cool-down, not doubled: {h}"
    );
    for n in &nodes {
        let log = n.relay.plain_log();
        assert!(!log.contains("offence=2"), "{log}");
    }
}
