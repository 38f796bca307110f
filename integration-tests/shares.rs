//! Pool shares per message (issue 12): the source IP is picked per message, then a connection of
//! that IP is reused or opened, so weights and warm-up caps are shares of messages at any
//! concurrency, with connection reuse on. Counts are taken at the sinks by peer address.
//! Source IPs 127.0.0.10–12; `a.test` → mx.alpha.test (127.0.0.20, provider alpha), `b.test` →
//! mx.beta.test (127.0.0.21, provider beta).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::admin::{hold_of, ip_entry, pool_status};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Connection reuse on (idle sessions kept 30 s), admin API, providers alpha and beta.
fn config(b: &Bench, ips: &[PoolIp]) -> RelayConfig {
    b.config()
        .delivery("idle_timeout", "\"30s\"")
        .pool("default", ips)
}

fn start(name: &str, cfg: &RelayConfig) -> (Relay, SocketAddr) {
    admin::start(&tempdir(name), cfg, WAIT)
}

fn body(tag: &str) -> Vec<u8> {
    format!(
        "From: <s@snd.test>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@snd.test>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// One message at a time: each is at the sink before the next is submitted (the case where a
/// reused connection used to carry everything).
fn send_one_by_one(relay: &Relay, sink: &Sink, domain: &str, n: usize) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let before = sink.messages().len();
    for i in 0..n {
        let rcpt = format!("seq{i}-{before}@{domain}");
        let r = c.send_mail("s@snd.test", &[&rcpt], &body(&format!("seq{i}-{before}")));
        assert_eq!(r.code, 250, "{r}");
        sink.wait_for_messages(before + i + 1, WAIT);
    }
    c.quit();
}

/// `n` messages over `sessions` concurrent client sessions.
fn send_concurrently(relay: &Relay, domain: &str, n: usize, sessions: usize) {
    let addr = relay.addr();
    let per = n / sessions;
    let threads: Vec<_> = (0..sessions)
        .map(|t| {
            let domain = domain.to_string();
            std::thread::spawn(move || {
                let mut c = SmtpClient::connect(addr);
                c.ehlo("client.test");
                for i in 0..per {
                    let rcpt = format!("c{t}-{i}@{domain}");
                    let r = c.send_mail("s@snd.test", &[&rcpt], &body(&format!("c{t}-{i}")));
                    assert_eq!(r.code, 250, "{r}");
                }
                c.quit();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Messages at the sink from source 127.0.0.`src` to MX 127.0.0.`dst`.
fn from(sink: &Sink, src: u8, dst: u8) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.peer == lo(src) && m.local.ip() == lo(dst))
        .count()
}

/// `from` for three source IPs to one destination, in that order.
fn from_each(sink: &Sink, srcs: [u8; 3], dst: u8) -> (usize, usize, usize) {
    let [a, b, c] = srcs.map(|src| from(sink, src, dst));
    (a, b, c)
}

fn sessions_to(sink: &Sink, dst: u8) -> usize {
    sink.sessions()
        .iter()
        .filter(|s| s.local.is_some_and(|l| l.ip() == lo(dst)))
        .count()
}

#[test]
fn equal_weights_one_message_at_a_time_alternate_and_reuse_connections() {
    let b = bench(None);
    let cfg = config(
        &b,
        &[PoolIp::new(10, "o10.test"), PoolIp::new(11, "o11.test")],
    );
    let (relay, _admin) = start("shares-seq-equal", &cfg);
    send_one_by_one(&relay, &b.sink, "a.test", 12);
    assert_eq!((from(&b.sink, 10, 20), from(&b.sink, 11, 20)), (6, 6));
    // Each IP kept its connection: two sessions carried the twelve messages.
    assert_eq!(sessions_to(&b.sink, 20), 2, "{}", b.sink.transcripts());
    assert!(relay.log().contains("reusing connection"));
}

#[test]
fn weights_three_to_one_hold_at_concurrency_twenty_with_few_connections() {
    let b = bench(None);
    let cfg = config(
        &b,
        &[
            PoolIp::new(10, "o10.test").weight(3),
            PoolIp::new(11, "o11.test"),
        ],
    );
    let (relay, _admin) = start("shares-conc-weights", &cfg);
    send_concurrently(&relay, "a.test", 400, 20);
    b.sink.wait_for_messages(400, Duration::from_secs(60));
    let (n10, n11) = (from(&b.sink, 10, 20), from(&b.sink, 11, 20));
    assert_eq!(n10 + n11, 400);
    // 3:1 within 10 %.
    assert!((270..=330).contains(&n10), "{n10}:{n11}");
    assert!((90..=110).contains(&n11), "{n10}:{n11}");
    let conns = sessions_to(&b.sink, 20);
    assert!(conns <= 100, "{conns} connections for 400 messages");
    // Sequentially as well: 3:1 exactly over a multiple of four.
    b.sink.clear();
    send_one_by_one(&relay, &b.sink, "a.test", 8);
    assert_eq!((from(&b.sink, 10, 20), from(&b.sink, 11, 20)), (6, 2));
}

/// A warm IP, a warming IP (day-0 cap 3, above which its weighted share would go) and a drained
/// one: the warming IP gets exactly its cap, one message at a time and twenty at once.
#[test]
fn a_warming_ip_gets_exactly_its_cap_at_concurrency_one_and_twenty() {
    let b = bench(None);
    let cfg = config(
        &b,
        &[
            PoolIp::new(10, "o10.test"),
            PoolIp::new(12, "o12.test").warmup("new"),
            PoolIp::new(11, "o11.test"),
        ],
    )
    .section("[warmup]\nday = \"240h\"\nburst = 100\n[[warmup.schedule]]\nname = \"new\"\ndaily = [3, 6]");
    let (relay, admin) = start("shares-warming", &cfg);
    let (code, v) = admin::http(
        admin,
        "POST",
        "/api/pool/127.0.0.11/drain",
        Some(serde_json::json!({"reason": "spare"})),
    );
    assert_eq!(code, 200, "{v}");
    send_one_by_one(&relay, &b.sink, "a.test", 20);
    assert_eq!(from_each(&b.sink, [10, 12, 11], 20), (17, 3, 0));
    send_concurrently(&relay, "b.test", 20, 20);
    b.sink.wait_for_messages(40, WAIT);
    assert_eq!(from_each(&b.sink, [10, 12, 11], 21), (17, 3, 0));
    let p = &ip_entry(&pool_status(admin), "127.0.0.12")["providers"];
    assert_eq!(
        (
            p["alpha"]["used_today"].as_u64(),
            p["alpha"]["cap_today"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        (
            p["beta"]["used_today"].as_u64(),
            p["beta"]["cap_today"].as_u64()
        ),
        (Some(3), Some(3))
    );
}

/// Provider alpha refuses source 127.0.0.`src` with a Spamhaus-style block reply at RCPT.
fn alpha_blocks(s: &Step, src: u8) -> Option<String> {
    match &s.stage {
        Stage::RcptTo(_) if s.peer == lo(src) && s.local.ip() == lo(20) => Some(format!(
            "550 5.7.1 Service unavailable; Client host [127.0.0.{src}] blocked using zen.spamhaus.org"
        )),
        _ => None,
    }
}

#[test]
fn an_ip_quarantined_for_one_provider_keeps_its_share_elsewhere() {
    let b = bench(Some(|s| alpha_blocks(s, 12)));
    let cfg = config(
        &b,
        &[
            PoolIp::new(10, "o10.test"),
            PoolIp::new(11, "o11.test"),
            PoolIp::new(12, "o12.test"),
        ],
    )
    .section("[reputation]\nblock_threshold = 1");
    let (relay, admin) = start("shares-quarantine", &cfg);
    // The block reply quarantines .12 for alpha; its message goes again from another IP.
    send_one_by_one(&relay, &b.sink, "a.test", 6);
    assert!(
        hold_of(admin, "127.0.0.12", "alpha", "block-reply").is_some(),
        "{}",
        relay.log()
    );
    assert_eq!(from(&b.sink, 12, 20), 0);
    // Another destination: all three IPs in rotation, equal shares.
    send_one_by_one(&relay, &b.sink, "b.test", 12);
    assert_eq!(from_each(&b.sink, [10, 11, 12], 21), (4, 4, 4));
    // And alpha still never gets .12.
    send_one_by_one(&relay, &b.sink, "a.test", 4);
    assert_eq!(from(&b.sink, 12, 20), 0);
    assert_eq!(from(&b.sink, 10, 20) + from(&b.sink, 11, 20), 10);
}

/// A block-reply quarantine for alpha and a DNSBL listing of the same IP are two records: the
/// delisting ends only the second, and puts the IP on probation (a trickle), not straight back
/// at full share.
#[test]
fn a_delisting_leaves_a_block_reply_quarantine_in_place_and_means_probation() {
    let b = bench(Some(|s| alpha_blocks(s, 10)));
    let cfg = config(&b, &[PoolIp::new(10, "o10.test"), PoolIp::new(11, "o11.test")]).section(
        "[warmup]\nday = \"240h\"\n[reputation]\nblock_threshold = 1\ndnsbl = [\"dnsbl.test\"]\ncheck_interval = \"1s\"\nclean_checks = 1\nprobe_per_hour = 2\nprobe_samples = 50",
    );
    let (relay, admin) = start("shares-delist", &cfg);
    send_one_by_one(&relay, &b.sink, "a.test", 2);
    assert!(
        wait_until(WAIT, || hold_of(
            admin,
            "127.0.0.10",
            "alpha",
            "block-reply"
        )
        .is_some()),
        "{}",
        relay.log()
    );
    b.dns
        .add_ip("10.0.0.127.dnsbl.test", "127.0.0.2".parse().unwrap());
    let dnsbl_held = || hold_of(admin, "127.0.0.10", "all", "dnsbl:dnsbl.test").is_some();
    assert!(wait_until(WAIT, dnsbl_held), "{}", relay.log());
    b.dns.remove_name("10.0.0.127.dnsbl.test");
    assert!(wait_until(WAIT, || !dnsbl_held()), "{}", relay.log());
    assert!(relay.log().contains("DNSBL delisted: on probation"));
    let ip10 = ip_entry(&pool_status(admin), "127.0.0.10");
    assert!(
        hold_of(admin, "127.0.0.10", "alpha", "block-reply").is_some(),
        "the block-reply quarantine stays: {ip10}"
    );
    assert_eq!(ip10["providers"]["alpha"]["state"], "quarantined", "{ip10}");
    // Alpha: still nothing from .10.
    let alpha_before = from(&b.sink, 10, 20);
    send_one_by_one(&relay, &b.sink, "a.test", 4);
    assert_eq!(from(&b.sink, 10, 20), alpha_before);
    // Beta: probation, 2 an hour, not half of 6.
    send_one_by_one(&relay, &b.sink, "b.test", 6);
    assert_eq!((from(&b.sink, 10, 21), from(&b.sink, 11, 21)), (2, 4));
    let beta = &ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["beta"];
    assert_eq!(beta["state"], "probation", "{beta}");
}
