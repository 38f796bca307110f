//! Complaints acting on the pool (issue 26, docs/complaint-rates.md): a complainer suppressed for
//! the sender domain complained about gets a DSN saying why, listed and lifted with its scope.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::admin::http;
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A relay sending from 127.0.0.10 to alpha (a.test) and beta (b.test); `rest` adds sections.
fn start(dir: &std::path::Path, b: &Bench, rest: &str) -> (Relay, SocketAddr) {
    let cfg = b
        .config()
        .delivery("idle_timeout", "\"0s\"")
        .pool("default", &[PoolIp::new(10, "out10.test")])
        .section(rest);
    admin::start(dir, &cfg, WAIT)
}

fn send(relay: &Relay, from: &str, to: &str, subject: &str) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let body = format!("From: <{from}>\r\nSubject: {subject}\r\n\r\nHello.\r\n");
    c.send_mail(from, &[to], body.as_bytes()).expect(250);
    c.quit();
}

fn suppression_cli(relay: &Relay, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .arg("suppression")
        .args(args)
        .args(["--config", "poolrelay.toml"])
        .current_dir(relay.dir())
        .output()
        .expect("run poolrelay suppression");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// DSNs the sink got for `sender`.
fn dsns_to(sink: &Sink, sender: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty() && m.rcpt_to == [sender])
        .map(|m| m.data_str())
        .collect()
}

fn rcpt_attempts(sink: &Sink, addr: &str) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(addr)))
        .count()
}

#[test]
fn a_complainer_is_refused_mail_from_that_sender_domain_with_a_dsn_saying_why() {
    let b = bench(None);
    // The senders' domains are deliverable, so their DSNs land at the sink.
    b.dns.add_mx("shop.test", 10, "mx.beta.test");
    b.dns.add_mx("other.test", 10, "mx.beta.test");
    let dir = tempdir("complaints-suppressed");
    // What the complaint actor stores for a report from feedback.alpha.test about mail from
    // shop.test to eve@a.test (the relay reads it at start).
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let entry = serde_json::json!({
        "eve@a.test|shop.test": {
            "reason": "complained (feedback report from feedback.alpha.test)",
            "since": now_s(),
            "until": now_s() + 3600,
            "why": "complained",
            "sender_domain": "shop.test",
        }
    });
    std::fs::write(dir.join("data/suppressions.json"), entry.to_string()).unwrap();
    let (relay, admin) = start(&dir, &b, "");

    // Listed with its scope and reason.
    let (_, v) = http(admin, "GET", "/api/suppressions", None);
    let list = v["suppressions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["address"], "eve@a.test");
    assert_eq!(list[0]["scope"], "sender-domain");
    assert_eq!(list[0]["sender_domain"], "shop.test");
    assert_eq!(list[0]["why"], "complained");
    let out = suppression_cli(&relay, &["list"]);
    assert!(
        out.contains("eve@a.test  mail from shop.test")
            && out.contains("complained (feedback report from feedback.alpha.test)"),
        "{out}"
    );

    // From shop.test (envelope and From:): fails at once, nothing sent, a DSN says why.
    send(&relay, "news@shop.test", "Eve@a.test", "first");
    b.sink.wait_for_messages(1, WAIT);
    let dsns = dsns_to(&b.sink, "news@shop.test");
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(
        dsns[0].contains("5.7.1")
            && dsns[0].contains("suppressed for mail from shop.test")
            && dsns[0].contains("reported mail from this sender domain as spam")
            && dsns[0].contains("--sender-domain shop.test"),
        "{}",
        dsns[0]
    );
    assert_eq!(rcpt_attempts(&b.sink, "eve@a.test"), 0);

    // From another sender domain: delivered.
    send(&relay, "hello@other.test", "eve@a.test", "second");
    assert!(
        wait_until(WAIT, || rcpt_attempts(&b.sink, "eve@a.test") == 1),
        "{}",
        b.sink.transcripts()
    );
    assert!(dsns_to(&b.sink, "hello@other.test").is_empty());

    // Lifted for shop.test: delivered from it too.
    let out = suppression_cli(
        &relay,
        &["remove", "eve@a.test", "--sender-domain", "shop.test"],
    );
    assert!(out.contains("suppression removed"), "{out}");
    let (_, v) = http(admin, "GET", "/api/suppressions", None);
    assert_eq!(v["suppressions"], Value::Array(vec![]), "{v}");
    send(&relay, "news@shop.test", "eve@a.test", "third");
    assert!(
        wait_until(WAIT, || rcpt_attempts(&b.sink, "eve@a.test") == 2),
        "{}",
        b.sink.transcripts()
    );
}
