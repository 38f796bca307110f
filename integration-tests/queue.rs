//! A deep queue (issue 14), at a small N for the behaviours: envelopes and bodies read from the
//! spool at each attempt, the active-set bound, fairness between destinations, a backlog
//! recovered after kill -9. Timings are in `bench/queue-depth.sh`.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::admin::get;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn defer_all(s: &Step) -> Option<String> {
    matches!(s.stage, Stage::RcptTo(_)).then(|| "451 4.3.0 try later".to_string())
}

fn rcpt_attempts(sink: &Sink) -> usize {
    sink.transcripts().matches("RCPT TO").count()
}

/// Sends `n` messages, the i-th to `{prefix}{i}@{domain}` with subject `{prefix}{i}`.
fn submit(relay: &Relay, prefix: &str, domain: &str, n: usize) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for i in 0..n {
        let body =
            format!("From: <s@snd.test>\r\nSubject: {prefix}{i}\r\n\r\nBody of {prefix}{i}.\r\n");
        let rcpt = format!("{prefix}{i}@{domain}");
        let reply = c.send_mail("s@snd.test", &[rcpt.as_str()], body.as_bytes());
        assert_eq!(reply.code, 250, "submit {rcpt}: {reply}");
    }
    c.quit();
}

/// Subject → how many times the sink got it, checking each body matches its subject.
fn delivered(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in sink.messages() {
        let data = m.data_str();
        let subject = data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("?")
            .to_string();
        assert!(
            data.contains(&format!("Body of {subject}.")),
            "body does not match its subject: {data}"
        );
        assert_eq!(
            m.rcpt_to,
            [format!("{subject}@{}", rcpt_domain(&m))],
            "{data}"
        );
        *seen.entry(subject).or_default() += 1;
    }
    seen
}

fn rcpt_domain(m: &common::sink::Message) -> String {
    m.rcpt_to[0].rsplit('@').next().unwrap().to_string()
}

fn summary(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/api/queue")
}

/// With an active set of 2, thirty deferred messages wait as index entries; each attempt
/// reads its envelope and body from the spool. An envelope edited on disk while the message
/// waits is what the next attempt uses: the relay kept no copy of its own.
#[test]
fn each_attempt_reads_the_message_from_the_spool_within_the_active_limit() {
    let dns = DnsServer::start();
    let sink = Sink::builder(&[lo(20), lo(21)]).script(defer_all).start();
    dns.add_mx("a.test", 10, "mx.a.test");
    dns.add_ip("mx.a.test", lo(20));
    dns.add_mx("b.test", 10, "mx.b.test");
    dns.add_ip("mx.b.test", lo(21));
    let cfg = RelayConfig::new()
        .dns(&dns)
        .delivery_port(sink.port())
        .delivery("retry", "[\"1h\"]")
        .delivery("active_limit", 2)
        .admin();
    let relay = Relay::start(&tempdir("queue-from-spool"), &cfg.to_toml());
    let admin = cfg.admin_addr().unwrap();
    let n = 30;
    submit(&relay, "m", "a.test", n);
    assert!(
        wait_until(WAIT, || rcpt_attempts(&sink) >= n),
        "every message tried once\n{}",
        relay.log()
    );
    assert!(wait_until(WAIT, || summary(admin)["active"] == 0));
    let s = summary(admin);
    assert_eq!(s["messages"], n, "{s}");
    assert_eq!(s["active_limit"], 2, "{s}");
    assert_eq!(s["by_domain"]["a.test"], n, "{s}");

    // m7's envelope now says b.test: the relay must read it from disk to know.
    let envs = relay.spool_files("env");
    let m7 = envs
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("m7@a.test"))
        .expect("m7 moved to files when it was deferred");
    let text = std::fs::read_to_string(m7).unwrap();
    std::fs::write(m7, text.replace("m7@a.test", "m7@b.test")).unwrap();

    sink.set_script(None);
    let (code, v) = common::admin::http(
        admin,
        "POST",
        "/api/queue/retry",
        Some(serde_json::json!({"all": true})),
    );
    assert_eq!(code, 200, "{v}");
    let mut max_active = 0;
    assert!(
        wait_until(WAIT, || {
            let s = summary(admin);
            max_active = max_active.max(s["active"].as_u64().unwrap());
            sink.messages().len() >= n && s["messages"] == 0
        }),
        "all delivered\n{}",
        relay.log()
    );
    assert!(max_active <= 2, "active set bound: saw {max_active}");
    let seen = delivered(&sink);
    assert_eq!(seen.len(), n, "{seen:?}");
    assert!(seen.values().all(|&c| c == 1), "each once: {seen:?}");
    let m7 = sink
        .messages()
        .into_iter()
        .find(|m| m.data_str().contains("Subject: m7\r\n"));
    assert_eq!(
        m7.unwrap().rcpt_to,
        ["m7@b.test"],
        "the envelope on disk was used"
    );
}

/// Accepts connections and never answers: a destination that hangs every attempt.
fn blackhole() -> SocketAddr {
    let l = TcpListener::bind((lo(22), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            held.lock().unwrap().push(s);
        }
    });
    addr
}

/// A sink for `fast.test`, a destination that hangs every attempt for `slow.test`, and a relay
/// config with an active set of 6 and one slot per destination.
fn slow_and_fast() -> (Sink, RelayConfig) {
    let sink = Sink::start(&[lo(21)]);
    let hole = blackhole();
    let cfg = RelayConfig::new()
        .delivery("retry", "[\"1h\"]")
        .delivery("active_limit", 6)
        .delivery("concurrency_per_destination", 1)
        .delivery("command_timeout", "\"5m\"")
        .admin()
        .route("slow.test", &hole.to_string())
        .route("fast.test", &sink.addr(0).to_string());
    (sink, cfg)
}

/// A destination that hangs every attempt has a backlog that could fill the whole active set;
/// it gets at most its share, and mail to another destination is delivered meanwhile.
#[test]
fn a_hanging_destinations_backlog_does_not_hold_up_another() {
    let (sink, cfg) = slow_and_fast();
    let relay = Relay::start(&tempdir("queue-fair"), &cfg.to_toml());
    let admin = cfg.admin_addr().unwrap();
    let backlog = 60;
    submit(&relay, "slow", "slow.test", backlog);
    assert!(
        wait_until(WAIT, || summary(admin)["active"].as_u64() == Some(2)),
        "the slow destination takes its share (2 × its concurrency) and no more\n{}",
        summary(admin)
    );
    submit(&relay, "fast", "fast.test", 20);
    assert!(
        wait_until(WAIT, || sink.messages().len() >= 20),
        "the other destination's mail was delivered: {} of 20\n{}",
        sink.messages().len(),
        summary(admin)
    );
    let s = summary(admin);
    assert_eq!(
        s["by_domain"]["slow.test"], backlog,
        "none of the backlog went: {s}"
    );
    assert!(s["active"].as_u64().unwrap() <= 6, "{s}");
    let seen = delivered(&sink);
    assert!(seen.keys().all(|k| k.starts_with("fast")), "{seen:?}");
    assert_eq!(seen.len(), 20);
}

/// A backlog (in the log and in files) survives kill -9; after the restart new mail is accepted
/// while the queue is indexed, and everything is delivered exactly once.
#[test]
fn a_backlog_survives_kill_9_and_is_delivered_once() {
    let sink = Sink::builder(&[lo(20)]).script(defer_all).start();
    let cfg = RelayConfig::new()
        .delivery("retry", "[\"2s\"]")
        .admin()
        .route("a.test", &sink.addr(0).to_string());
    let mut relay = Relay::start(&tempdir("queue-restart"), &cfg.to_toml());
    let n = 40;
    submit(&relay, "old", "a.test", n);
    assert!(wait_until(WAIT, || rcpt_attempts(&sink) >= n));
    relay.kill();
    assert_eq!(relay.queued_ids().len(), n, "all queued at the kill");
    sink.set_script(None);
    relay.restart();
    submit(&relay, "new", "a.test", 5);
    let admin = cfg.admin_addr().unwrap();
    assert!(
        wait_until(WAIT, || sink.messages().len() >= n + 5
            && summary(admin)["messages"] == 0),
        "{} of {} delivered\n{}",
        sink.messages().len(),
        n + 5,
        relay.log()
    );
    let seen = delivered(&sink);
    assert_eq!(seen.len(), n + 5, "{seen:?}");
    assert!(seen.values().all(|&c| c == 1), "each once: {seen:?}");
    assert!(relay.log().contains("spool recovered"), "{}", relay.log());
    assert!(relay.queued_ids().is_empty());
}

/// A message for a hanging destination and a healthy one waits in both destinations' queues:
/// its healthy recipient is delivered at once, not behind the other destination's backlog.
#[test]
fn a_message_for_two_destinations_does_not_wait_behind_ones_backlog() {
    let (sink, cfg) = slow_and_fast();
    let relay = Relay::start(&tempdir("queue-multi"), &cfg.to_toml());
    let admin = cfg.admin_addr().unwrap();
    submit(&relay, "slow", "slow.test", 30);
    assert!(
        wait_until(WAIT, || summary(admin)["active"].as_u64() == Some(2)),
        "{}",
        summary(admin)
    );
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    // The hanging destination's recipient first: the message used to wait in its queue only.
    let body = b"From: <s@snd.test>\r\nSubject: both\r\n\r\nBody of both.\r\n";
    let reply = c.send_mail("s@snd.test", &["both@slow.test", "both@fast.test"], body);
    assert_eq!(reply.code, 250, "{reply}");
    c.quit();
    assert!(
        wait_until(WAIT, || sink.messages().len() == 1),
        "the healthy destination's recipient was delivered\n{}\n{}",
        summary(admin),
        relay.log()
    );
    assert_eq!(sink.messages()[0].rcpt_to, ["both@fast.test"]);
    let s = summary(admin);
    assert_eq!(
        s["by_domain"]["slow.test"], 31,
        "its other recipient waits: {s}"
    );
}

/// A deferral that changes nothing but the attempt count and the next attempt does not
/// rewrite the envelope file; the count is still right, and a kill -9 loses nothing.
#[test]
fn a_repeated_deferral_does_not_rewrite_the_envelope() {
    let sink = Sink::builder(&[lo(20)]).script(defer_all).start();
    let cfg = RelayConfig::new()
        .delivery("retry", "[\"1s\"]")
        .admin()
        .route("a.test", &sink.addr(0).to_string());
    let mut relay = Relay::start(&tempdir("queue-defer"), &cfg.to_toml());
    let admin = cfg.admin_addr().unwrap();
    submit(&relay, "m", "a.test", 1);
    assert!(wait_until(WAIT, || rcpt_attempts(&sink) >= 4));
    let envs = relay.spool_files("env");
    assert_eq!(envs.len(), 1, "moved to files at its first deferral");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&envs[0]).unwrap()).unwrap();
    assert_eq!(
        on_disk["recipients"][0]["attempts"], 1,
        "written once, at the first deferral: {on_disk}"
    );
    let id = on_disk["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(WAIT, || {
            let v = get(admin, &format!("/api/queue/message/{id}"));
            v["envelope"]["recipients"][0]["attempts"].as_u64() >= Some(3)
        }),
        "the scheduler counts the attempts not in the file"
    );
    relay.kill();
    sink.set_script(None);
    relay.restart();
    assert!(
        wait_until(WAIT, || sink.messages().len() == 1
            && summary(admin)["messages"] == 0),
        "{}",
        relay.log()
    );
    assert_eq!(delivered(&sink).get("m0"), Some(&1));
}
