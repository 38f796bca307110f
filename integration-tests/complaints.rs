//! Complaints acting on the pool (issue 26, docs/complaint-rates.md): messages relayed through
//! the real binary from a pool IP, the bytes the sink got sent back as ARF reports to
//! `POST /api/feedback`; the complaint rate of that IP × provider quarantines it (cause
//! `complaints`), and the complainer is refused later mail from that sender domain with a DSN
//! saying why, listed and lifted with its scope.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::admin::{get, get_text, hold_of, http};
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
    let cfg = b.pooled(&[PoolIp::new(10, "out10.test")], rest);
    admin::start(dir, &cfg, WAIT)
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
    send_from(relay.addr(), "news@shop.test", "Eve@a.test", "first");
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
    send_from(relay.addr(), "hello@other.test", "eve@a.test", "second");
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
    send_from(relay.addr(), "news@shop.test", "eve@a.test", "third");
    assert!(
        wait_until(WAIT, || rcpt_attempts(&b.sink, "eve@a.test") == 2),
        "{}",
        b.sink.transcripts()
    );
}

/// An ARF report (RFC 5965) from a receiver's feedback loop, the original attached.
fn arf(original: &[u8]) -> String {
    let mut r = String::from(
        "From: fbl@feedback.alpha.test\r\nTo: fbl@relay.test\r\nSubject: FW: complaint\r\n\
         Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf_b\"\r\n\r\n\
         --arf_b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\
         --arf_b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: AlphaFBL/1.0\r\nVersion: 1\r\n\r\n\
         --arf_b\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n",
    );
    r.push_str(&String::from_utf8_lossy(original));
    r.push_str("\r\n--arf_b--\r\n");
    r
}

/// Hands one report to the intake; returns the traced complaint.
fn report(admin: SocketAddr, original: &[u8]) -> Value {
    let (code, v) = http(
        admin,
        "POST",
        "/api/feedback",
        Some(serde_json::json!({ "report": arf(original) })),
    );
    assert_eq!(
        (code, &v["result"]),
        (200, &Value::from("complaint")),
        "{v}"
    );
    v["complaint"].clone()
}

/// What `GET /api/reputation` says of 127.0.0.10 × `provider`'s outcome window: messages sent.
fn sent_from_10(admin: SocketAddr, provider: &str) -> u64 {
    get(admin, "/api/reputation")["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["ip"] == "127.0.0.10" && w["provider"] == provider)
        .map_or(0, |w| w["sent"].as_u64().unwrap())
}

fn metric(admin: SocketAddr, line_start: &str) -> Option<String> {
    get_text(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().to_string()))
}

#[test]
fn complaints_over_the_rate_quarantine_the_ip_for_that_provider_and_suppress_the_complainers() {
    let b = bench(None);
    b.dns.add_mx("shop.test", 10, "mx.beta.test");
    let dir = tempdir("complaints-rate");
    // Ten messages make a rate here; 10 % warns, over 20 % quarantines.
    let rest = "[reputation]\ncomplaint_min_delivered = 10\nwarn_complaint_rate = 0.1\n\
                max_complaint_rate = 0.2\ncooldown = \"1h\"\n\n\
                [feedback]\naddresses = [\"fbl@relay.test\"]\n";
    let (relay, admin) = start(&dir, &b, rest);
    for i in 0..10 {
        send_from(
            relay.addr(),
            "news@shop.test",
            &format!("u{i}@a.test"),
            &format!("m{i}"),
        );
    }
    send_from(relay.addr(), "news@shop.test", "v0@b.test", "to beta");
    b.sink.wait_for_messages(11, WAIT);
    // Counted once the relay has read the sink's replies.
    assert!(wait_until(WAIT, || sent_from_10(admin, "alpha") == 10));
    let delivered = |rcpt: &str| {
        b.sink
            .messages()
            .into_iter()
            .find(|m| m.rcpt_to == [rcpt])
            .unwrap()
            .data
    };

    // 1 of 10 is 10 %: not over the warning line; 2 of 10 is: warned once, not quarantined.
    let c = report(admin, &delivered("u0@a.test"));
    assert_eq!(
        (&c["source_ip"], &c["provider"], &c["sender_domain"]),
        (
            &Value::from("127.0.0.10"),
            &Value::from("alpha"),
            &Value::from("shop.test")
        ),
        "{c}"
    );
    report(admin, &delivered("u1@a.test"));
    assert!(hold_of(admin, "127.0.0.10", "alpha", "complaints").is_none());
    let warnings = || {
        get(admin, "/api/history?ip=127.0.0.10")["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "warning" && e["cause"] == "complaints")
            .count()
    };
    assert_eq!(warnings(), 1);
    assert!(relay.log().contains("complaint rate over the warning line"));

    // 3 of 10 is over 20 %: quarantined for alpha, with the rate as evidence; beta untouched.
    report(admin, &delivered("u2@a.test"));
    let h = hold_of(admin, "127.0.0.10", "alpha", "complaints").expect("quarantined for alpha");
    assert_eq!(h["reason"], "complaint rate");
    let evidence = h["evidence"].as_str().unwrap();
    assert!(
        evidence.starts_with("3 complaints / 10 delivered from 127.0.0.10 to alpha in the last 7days = 30.00% > 20.00%"),
        "{evidence}"
    );
    assert!(common::admin::hold(admin, "127.0.0.10", "beta").is_none());
    assert_eq!(warnings(), 1, "over the line is not a second warning");
    let rates = get(admin, "/api/reputation")["complaint_rates"].clone();
    assert_eq!(rates[0]["provider"], "alpha", "{rates}");
    assert_eq!(
        (&rates[0]["complaints"], &rates[0]["level"]),
        (&Value::from(3), &Value::from("over"))
    );
    assert_eq!(
        metric(admin, "poolrelay_complaints_total{provider=\"alpha\"}").as_deref(),
        Some("3")
    );
    assert_eq!(
        metric(
            admin,
            "poolrelay_complaint_rate{ip=\"127.0.0.10\",provider=\"alpha\"}"
        )
        .as_deref(),
        Some("0.3")
    );
    // A late complaint about mail sent before the quarantine: the same incident.
    report(admin, &delivered("u3@a.test"));
    let later = hold_of(admin, "127.0.0.10", "alpha", "complaints").unwrap();
    assert_eq!(
        (&later["offence"], &later["since"]),
        (&h["offence"], &h["since"])
    );
    assert!(
        later["evidence"]
            .as_str()
            .unwrap()
            .ends_with("; 2 complaints in one incident"),
        "{later}"
    );

    // The complainers get no more mail from shop.test: a DSN at once, nothing sent.
    send_from(relay.addr(), "news@shop.test", "u1@a.test", "again");
    assert!(
        wait_until(WAIT, || dsns_to(&b.sink, "news@shop.test")
            .iter()
            .any(|d| d.contains("suppressed for mail from shop.test"))),
        "{}",
        relay.log()
    );
    assert_eq!(rcpt_attempts(&b.sink, "u1@a.test"), 1);
    let (_, v) = http(admin, "GET", "/api/suppressions", None);
    let listed = v["suppressions"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{v}");
    assert!(
        listed.iter().all(|e| e["sender_domain"] == "shop.test"
            && e["reason"] == "complained (feedback report from AlphaFBL/1.0)"),
        "{v}"
    );
}
