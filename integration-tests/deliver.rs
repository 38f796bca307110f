//! Delivery: routing (static routes, MX order and fallback, null MX, A fallback), source IPs from
//! the pool with their own EHLO names, STARTTLS policies, retries that survive restarts, and
//! RFC 3464 bounces. The real binary delivers to sinks on 127.0.0.20+ (all on one port, the
//! relay's `delivery.port`), with MX/A records from the in-process DNS server.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use mail_parser::MimeHeaders;

const WAIT: Duration = Duration::from_secs(15);

/// A relay config: trusted 127/8 without AUTH, test DNS, `delivery.port` = the sinks' port,
/// short timeouts and a 1 s retry.
fn config(dns: &DnsServer, sink_port: u16) -> RelayConfig {
    RelayConfig::new().dns(dns).delivery_port(sink_port)
}

/// The pool's source IPs: 127.0.0.10 (`out1.relay.test`), 127.0.0.11 (`out2.relay.test`).
/// `&pool_ips()[..1]`: only the first, so every message may reuse the one connection (the reuse
/// mechanics).
fn pool_ips() -> [PoolIp; 2] {
    [
        PoolIp::new(10, "out1.relay.test"),
        PoolIp::new(11, "out2.relay.test"),
    ]
}

/// `config` with the pool of `pool_ips`.
fn pooled(dns: &DnsServer, sink_port: u16) -> RelayConfig {
    config(dns, sink_port).pool("default", &pool_ips())
}

/// `config` with one pool IP and idle sessions kept 30 s, so every message may reuse one
/// connection.
fn reusing(dns: &DnsServer, sink_port: u16) -> RelayConfig {
    config(dns, sink_port)
        .delivery("idle_timeout", "\"30s\"")
        .pool("default", &pool_ips()[..1])
}

fn start(dir: &Path, cfg: &RelayConfig) -> Relay {
    Relay::start(dir, &cfg.to_toml())
}

fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: <sender@snd.test>\r\nTo: <rcpt@example.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@snd.test>\r\n\r\nHello.\r\n.leading dot line\r\n"
    )
    .into_bytes()
}

/// Submits one message to the relay; asserts the 250.
fn submit(relay: &Relay, from: &str, rcpts: &[&str], subject: &str) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.send_mail(from, rcpts, &body(subject));
    assert_eq!(r.code, 250, "submit: {r}");
    c.quit();
}

fn wait_queue_empty(relay: &Relay) {
    assert!(
        wait_until(WAIT, || relay.queued_ids().is_empty()),
        "queue not empty: {:?}\n{}",
        relay.queued_ids(),
        relay.log()
    );
}

fn envelope_json(relay: &Relay) -> serde_json::Value {
    let mut envs = relay.queued_envelopes();
    assert_eq!(envs.len(), 1, "{envs:?}");
    envs.remove(0)
}

/// The relay's log without ANSI colour codes, so `field=value` can be searched.
fn log_text(relay: &Relay) -> String {
    relay.plain_log()
}

/// The queued envelope whose first recipient is `rcpt`, if any.
fn envelope_for(relay: &Relay, rcpt: &str) -> Option<serde_json::Value> {
    relay
        .queued_envelopes()
        .into_iter()
        .find(|v| v["recipients"][0]["address"] == rcpt)
}

fn ip(n: u8) -> IpAddr {
    lo(n)
}

/// `domain`'s one MX (preference 10), `mx.<domain>` at 127.0.0.`n`.
fn mx(dns: &DnsServer, domain: &str, n: u8) {
    let host = format!("mx.{domain}");
    dns.add_mx(domain, 10, &host);
    dns.add_ip(&host, ip(n));
}

fn at(sink: &Sink, n: u8) -> Vec<Message> {
    sink.messages()
        .into_iter()
        .filter(|m| m.local.ip() == ip(n))
        .collect()
}

/// The `message/delivery-status` part of a DSN, checked to be an RFC 3464 report.
fn delivery_status(dsn: &Message) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(&dsn.data)
        .expect("DSN parses as MIME");
    let ct = parsed.content_type().expect("Content-Type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let part = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .expect("message/delivery-status part");
    String::from_utf8_lossy(part.contents()).into_owned()
}

#[test]
fn source_ip_helo_round_robin_and_starttls() {
    let dir = tempdir("deliver-pool");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    let dns = DnsServer::start();
    let sink = Sink::builder(&[ip(20)]).starttls(&certs).start();
    mx(&dns, "dest.test", 20);
    // No connection reuse here: each message opens its own session, so round-robin shows.
    let relay = start(
        &dir,
        &pooled(&dns, sink.port()).delivery("idle_timeout", "\"0s\""),
    );
    submit(&relay, "sender@snd.test", &["a@dest.test"], "rr1");
    sink.wait_for_messages(1, WAIT);
    submit(&relay, "sender@snd.test", &["b@dest.test"], "rr2");
    let msgs = sink.wait_for_messages(2, WAIT);
    let mut peers: Vec<IpAddr> = msgs.iter().map(|m| m.peer).collect();
    peers.sort();
    assert_eq!(
        peers,
        vec![ip(10), ip(11)],
        "round-robin over both pool IPs"
    );
    for m in &msgs {
        let want = if m.peer == ip(10) {
            "out1.relay.test"
        } else {
            "out2.relay.test"
        };
        assert_eq!(m.ehlo, want, "EHLO is the source IP's own helo");
        assert!(m.tls.is_some(), "STARTTLS used when offered");
        assert!(
            m.data_str().contains("\r\n.leading dot line\r\n"),
            "dot-stuffing round trip"
        );
        assert!(
            m.data_str().ends_with("leading dot line\r\n"),
            "no extra line"
        );
    }
    wait_queue_empty(&relay);
    let log = log_text(&relay);
    assert!(log.contains("source_ip=127.0.0.10"), "{log}");
    assert!(log.contains("status=\"sent\""), "{log}");
    assert!(
        log.contains("tls=TLSv1_3/TLS13_"),
        "TLS version and cipher logged: {log}"
    );
}

#[test]
fn unbindable_pool_ip_fails_over_to_the_next() {
    let dir = tempdir("deliver-bind");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    mx(&dns, "dest.test", 20);
    let pool = [
        PoolIp::at("192.0.2.1", "unbindable.relay.test"),
        PoolIp::new(11, "out2.relay.test"),
    ];
    let relay = start(
        &dir,
        &config(&dns, sink.port())
            .delivery("idle_timeout", "\"0s\"")
            .pool("p", &pool),
    );
    submit(&relay, "sender@snd.test", &["a@dest.test"], "b1");
    submit(&relay, "sender@snd.test", &["b@dest.test"], "b2");
    let msgs = sink.wait_for_messages(2, WAIT);
    for m in &msgs {
        assert_eq!(m.peer, ip(11));
        assert_eq!(m.ehlo, "out2.relay.test");
    }
    assert!(
        log_text(&relay).contains("cannot bind source IP"),
        "{}",
        relay.log()
    );
    wait_queue_empty(&relay);
}

#[test]
fn plaintext_without_starttls_and_after_a_broken_handshake() {
    let dir = tempdir("deliver-tls");
    let dns = DnsServer::start();
    let port = free_port_on(&[ip(20), ip(21)]);
    let plain = Sink::builder(&[ip(20)]).port(port).start();
    let broken = Sink::builder(&[ip(21)])
        .port(port)
        .tls(SinkTls::BrokenGarbage)
        .start();
    mx(&dns, "plain.test", 20);
    mx(&dns, "broken.test", 21);
    let relay = start(&dir, &pooled(&dns, port));
    submit(&relay, "sender@snd.test", &["a@plain.test"], "p");
    submit(&relay, "sender@snd.test", &["b@broken.test"], "b");
    let p = plain.wait_for_messages(1, WAIT);
    assert_eq!(p[0].tls, None);
    let b = broken.wait_for_messages(1, WAIT);
    assert_eq!(
        b[0].tls, None,
        "delivered in plaintext after the failed handshake"
    );
    assert!(
        broken.sessions().len() >= 2,
        "one session with STARTTLS, then a plaintext one:\n{}",
        broken.transcripts()
    );
    assert!(
        broken.transcripts().contains("C: STARTTLS"),
        "{}",
        broken.transcripts()
    );
    assert!(log_text(&relay).contains("TLS handshake failed, delivering in plaintext"));
    wait_queue_empty(&relay);
}

#[test]
fn required_tls_defers_without_starttls_and_verifies_the_mx_name() {
    let dir = tempdir("deliver-required");
    let certs = make_certs(&dir, &["mx.secure.test"]);
    let dns = DnsServer::start();
    let port = free_port_on(&[ip(20), ip(21)]);
    let plain = Sink::builder(&[ip(20)]).port(port).start();
    let secure = Sink::builder(&[ip(21)]).port(port).starttls(&certs).start();
    mx(&dns, "plain.test", 20);
    dns.add_ip("mx.secure.test", ip(21));
    dns.add_ip("mx.wrong.test", ip(21));
    let mut cfg = pooled(&dns, port)
        // A long retry so the deferral stays visible in the spool.
        .delivery("retry", "[\"1h\"]")
        .delivery("ca_file", format!("\"{}\"", certs.ca.display()));
    for domain in ["plain", "wrong", "secure"] {
        cfg = cfg.section(&format!(
            "[[route]]\ndomain = \"{domain}.test\"\nhost = \"mx.{domain}.test:{port}\"\ntls = \"required\""
        ));
    }
    let relay = start(&dir, &cfg);
    submit(&relay, "sender@snd.test", &["a@secure.test"], "s");
    let m = secure.wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some(), "verified TLS to the route host");

    // The certificate is for mx.secure.test: reached as mx.wrong.test it must not verify.
    submit(&relay, "sender@snd.test", &["w@wrong.test"], "w");
    // And mx.plain.test offers no STARTTLS at all.
    submit(&relay, "sender@snd.test", &["b@plain.test"], "p");
    for rcpt in ["w@wrong.test", "b@plain.test"] {
        assert!(
            wait_until(WAIT, || envelope_for(&relay, rcpt)
                .is_some_and(|e| e["recipients"][0]["attempts"] == 1)),
            "{rcpt}: {}",
            relay.log()
        );
        let env = envelope_for(&relay, rcpt).unwrap();
        let r = &env["recipients"][0];
        assert_eq!(r["state"], "pending", "{rcpt} deferred");
        assert_eq!(r["last_reply"]["status"], "4.7.5", "{rcpt}: {r}");
    }
    let log = log_text(&relay);
    assert!(log.contains("TLS handshake with mx.wrong.test"), "{log}");
    assert!(log.contains("does not offer STARTTLS"), "{log}");
    assert_eq!(secure.messages().len(), 1, "nothing sent to the wrong name");
    assert!(plain.messages().is_empty(), "nothing sent in plaintext");
}

#[test]
fn mx_order_fallback_and_greeting_4xx() {
    let dir = tempdir("deliver-mx");
    let dns = DnsServer::start();
    // 127.0.0.23 has no listener: connection refused.
    let port = free_port_on(&[ip(20), ip(21), ip(22), ip(23)]);
    let sink = Sink::builder(&[ip(20), ip(21), ip(22)])
        .port(port)
        .script(move |s: &Step| match s.stage {
            Stage::Connect if s.local.ip() == lo(22) => Some("421 4.3.2 busy".into()),
            _ => None,
        })
        .start();
    // order.test: 20 → .21, 10 → .20 (lowest preference first).
    dns.add_mx("order.test", 20, "mx2.order.test");
    dns.add_mx("order.test", 10, "mx1.order.test");
    dns.add_ip("mx1.order.test", ip(20));
    dns.add_ip("mx2.order.test", ip(21));
    // down.test: first MX refuses connections, second works.
    dns.add_mx("down.test", 10, "mx1.down.test");
    dns.add_mx("down.test", 20, "mx2.down.test");
    dns.add_ip("mx1.down.test", ip(23));
    dns.add_ip("mx2.down.test", ip(21));
    // busy.test: first MX greets with 421, second works.
    dns.add_mx("busy.test", 10, "mx1.busy.test");
    dns.add_mx("busy.test", 20, "mx2.busy.test");
    dns.add_ip("mx1.busy.test", ip(22));
    dns.add_ip("mx2.busy.test", ip(21));
    let relay = start(&dir, &pooled(&dns, port));
    submit(&relay, "sender@snd.test", &["a@order.test"], "o");
    submit(&relay, "sender@snd.test", &["b@down.test"], "d");
    submit(&relay, "sender@snd.test", &["c@busy.test"], "b");
    sink.wait_for_messages(3, WAIT);
    let first = at(&sink, 20);
    assert_eq!(first.len(), 1, "{}", sink.transcripts());
    assert_eq!(first[0].rcpt_to, vec!["a@order.test"]);
    let second = at(&sink, 21);
    let mut rcpts: Vec<String> = second.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, vec!["b@down.test", "c@busy.test"]);
    assert!(at(&sink, 22).is_empty());
    wait_queue_empty(&relay);
}

#[test]
fn null_mx_nxdomain_bounce_a_fallback_delivers_and_one_dsn_reports_both() {
    let dir = tempdir("deliver-nullmx");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20), ip(24)]);
    dns.add_ip("nomx.test", ip(20)); // no MX: the A record is the implicit MX
    dns.null_mx("null.test");
    mx(&dns, "snd.test", 24);
    let relay = start(&dir, &pooled(&dns, sink.port()));
    submit(
        &relay,
        "sender@snd.test",
        &["a@nomx.test", "b@null.test", "c@nx.test"],
        "n",
    );
    sink.wait_for_messages(2, WAIT);
    let direct = at(&sink, 20);
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0].rcpt_to, vec!["a@nomx.test"]);
    let dsn = at(&sink, 24);
    assert_eq!(dsn.len(), 1, "one DSN for both failures");
    assert_eq!(dsn[0].mail_from, "", "DSN has the null sender");
    assert_eq!(dsn[0].rcpt_to, vec!["sender@snd.test"]);
    let status = delivery_status(&dsn[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; b@null.test"),
        "{status}"
    );
    assert!(status.contains("Status: 5.1.10"), "{status}");
    assert!(
        status.contains("Final-Recipient: rfc822; c@nx.test"),
        "{status}"
    );
    assert!(status.contains("Status: 5.1.2"), "{status}");
    assert!(!status.contains("a@nomx.test"), "{status}");
    wait_queue_empty(&relay);
}

#[test]
fn temporary_failure_then_success_on_retry() {
    let dir = tempdir("deliver-retry");
    let dns = DnsServer::start();
    let sink = Sink::builder(&[ip(20)])
        .script(|s: &Step| match s.stage {
            Stage::RcptTo(_) if s.session == 0 => Some("451 4.7.1 greylisted, try later".into()),
            _ => None,
        })
        .start();
    mx(&dns, "dest.test", 20);
    let relay = start(
        &dir,
        &pooled(&dns, sink.port()).delivery("idle_timeout", "\"0s\""),
    );
    submit(&relay, "sender@snd.test", &["a@dest.test"], "t");
    let m = sink.wait_for_messages(1, WAIT);
    assert_eq!(m[0].session, 1, "delivered by the second attempt");
    wait_queue_empty(&relay);
    let log = log_text(&relay);
    assert!(log.contains("greylisted"), "{log}");
    assert!(log.contains("attempt=2"), "{log}");
}

#[test]
fn permanent_failure_sends_rfc3464_dsn_but_never_for_the_null_sender() {
    let dir = tempdir("deliver-dsn");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20), ip(24)]);
    mx(&dns, "dest.test", 20);
    mx(&dns, "snd.test", 24);
    let relay = start(&dir, &pooled(&dns, sink.port()));
    submit(
        &relay,
        "sender@snd.test",
        &["ok@dest.test", "permfail@dest.test"],
        "dsn",
    );
    sink.wait_for_messages(2, WAIT);
    let delivered = at(&sink, 20);
    assert_eq!(delivered.len(), 1, "one transaction for both recipients");
    assert_eq!(delivered[0].rcpt_to, vec!["ok@dest.test"]);
    let dsn = at(&sink, 24);
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0].mail_from, "");
    let status = delivery_status(&dsn[0]);
    for want in [
        "Reporting-MTA: dns; relay.test",
        "Final-Recipient: rfc822; permfail@dest.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.dest.test",
        "Diagnostic-Code: smtp; 550 5.1.1",
    ] {
        assert!(status.contains(want), "{want} missing in:\n{status}");
    }
    assert!(!status.contains("ok@dest.test"), "{status}");
    assert!(
        dsn[0].data_str().contains("Subject: dsn"),
        "original headers"
    );
    wait_queue_empty(&relay);

    // A bounce of a bounce: nothing goes back to the null sender.
    sink.clear();
    submit(&relay, "", &["permfail@dest.test"], "null");
    wait_queue_empty(&relay);
    assert!(
        wait_until(Duration::from_secs(2), || log_text(&relay)
            .contains("message finished")),
        "{}",
        relay.log()
    );
    assert!(sink.messages().is_empty(), "no DSN to <>");
    assert_eq!(
        log_text(&relay).matches("dsn queued").count(),
        1,
        "only the first message bounced to its sender"
    );
}

#[test]
fn restart_keeps_attempts_and_next_attempt() {
    let dir = tempdir("deliver-restart");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    let refuse = Arc::new(AtomicBool::new(true));
    let r2 = refuse.clone();
    sink.set_script(Some(Arc::new(move |s: &Step| match s.stage {
        Stage::RcptTo(_) if r2.load(Ordering::SeqCst) => Some("451 4.3.0 later".into()),
        _ => None,
    })));
    mx(&dns, "dest.test", 20);
    let cfg = pooled(&dns, sink.port()).delivery("retry", "[\"3s\"]");
    let mut relay = start(&dir, &cfg);
    submit(&relay, "sender@snd.test", &["a@dest.test"], "r");
    assert!(wait_until(WAIT, || {
        relay.queued_ids().len() == 1 && envelope_json(&relay)["recipients"][0]["attempts"] == 1
    }));
    relay.kill();
    let env = envelope_json(&relay);
    let next = env["recipients"][0]["next_attempt"].as_u64().unwrap();
    assert!(next > 0);
    assert_eq!(env["recipients"][0]["last_reply"]["code"], 451);
    refuse.store(false, Ordering::SeqCst);
    let sessions_before = sink.sessions().len();
    relay.restart();
    let m = sink.wait_for_messages(1, WAIT);
    let arrived = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        arrived >= next,
        "not retried before next_attempt ({arrived} < {next})"
    );
    assert_eq!(m[0].rcpt_to, vec!["a@dest.test"]);
    assert_eq!(sink.sessions().len(), sessions_before + 1);
    wait_queue_empty(&relay);
    let current = strip_ansi(&relay.log_current());
    assert!(current.contains("attempt=2"), "{current}");
}

#[test]
fn kill_during_delivery_loses_nothing() {
    let dir = tempdir("deliver-kill");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    let release = Arc::new(AtomicBool::new(false));
    let rel = release.clone();
    // The first session stalls at DATA until the relay has been killed.
    sink.set_script(Some(Arc::new(move |s: &Step| {
        if s.stage == Stage::Data && s.session == 0 {
            wait_until(Duration::from_secs(10), || rel.load(Ordering::SeqCst));
            return Some("451 4.3.0 too late".into());
        }
        None
    })));
    mx(&dns, "dest.test", 20);
    let mut relay = start(&dir, &pooled(&dns, sink.port()));
    submit(&relay, "sender@snd.test", &["a@dest.test"], "k");
    assert!(wait_until(WAIT, || sink.transcripts().contains("C: DATA")));
    relay.kill();
    release.store(true, Ordering::SeqCst);
    assert_eq!(relay.queued_ids().len(), 1, "still queued after the crash");
    relay.restart();
    let m = sink.wait_for_messages(1, WAIT);
    assert_eq!(m[0].rcpt_to, vec!["a@dest.test"]);
    wait_queue_empty(&relay);
}

#[test]
fn static_routes_wildcard_and_catch_all() {
    let dir = tempdir("deliver-routes");
    let dns = DnsServer::start();
    let port = free_port_on(&[ip(20), ip(21), ip(22)]);
    let sink = Sink::builder(&[ip(20), ip(21), ip(22)]).port(port).start();
    dns.add_ip("hub.test", ip(21));
    let cfg = pooled(&dns, port)
        .route("routed.test", &format!("[127.0.0.20]:{port}"))
        .route("*.sub.test", &format!("hub.test:{port}"))
        .route("broken.test", &format!("missing.hub.test:{port}"))
        .route("*", &format!("[127.0.0.22]:{port}"));
    let relay = start(&dir, &cfg);
    submit(
        &relay,
        "sender@snd.test",
        &["a@routed.test", "b@x.sub.test", "c@anywhere.test"],
        "routes",
    );
    sink.wait_for_messages(3, WAIT);
    assert_eq!(at(&sink, 20)[0].rcpt_to, vec!["a@routed.test"]);
    assert_eq!(at(&sink, 21)[0].rcpt_to, vec!["b@x.sub.test"]);
    assert_eq!(at(&sink, 22)[0].rcpt_to, vec!["c@anywhere.test"]);
    assert!(
        !dns.queries().iter().any(|(n, _)| n == "anywhere.test"),
        "no MX lookup for a routed domain"
    );
    // A route host that does not resolve defers (configuration error), it does not bounce.
    submit(&relay, "sender@snd.test", &["d@broken.test"], "broken");
    assert!(
        wait_until(WAIT, || envelope_for(&relay, "d@broken.test")
            .is_some_and(|e| e["recipients"][0]["attempts"] == 1)),
        "{}",
        relay.log()
    );
    let env = envelope_for(&relay, "d@broken.test").unwrap();
    assert_eq!(env["recipients"][0]["state"], "pending");
    assert_eq!(env["recipients"][0]["last_reply"]["status"], "4.4.3");
}

#[test]
fn connection_reused_for_the_next_message() {
    let dir = tempdir("deliver-reuse");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    mx(&dns, "dest.test", 20);
    let relay = start(&dir, &reusing(&dns, sink.port()));
    submit(&relay, "sender@snd.test", &["a@dest.test"], "u1");
    sink.wait_for_messages(1, WAIT);
    // Logged after the session went back to the idle pool.
    assert!(wait_until(WAIT, || log_text(&relay).contains("status=\"sent\"")));
    submit(&relay, "sender@snd.test", &["b@dest.test"], "u2");
    let m = sink.wait_for_messages(2, WAIT);
    assert_eq!(m[0].session, m[1].session, "{}", sink.transcripts());
    assert_eq!(sink.sessions().len(), 1);
    // Reused at once: no RSET round trip; MAIL, RCPT and DATA went in one write.
    assert!(
        !sink.transcripts().contains("C: RSET"),
        "{}",
        sink.transcripts()
    );
    // Idle for a while (past REUSE_WITHOUT_RSET, 2 s): RSET proves it is still there.
    assert!(wait_until(WAIT, || log_text(&relay)
        .matches("status=\"sent\"")
        .count()
        == 2));
    std::thread::sleep(Duration::from_millis(2500));
    submit(&relay, "sender@snd.test", &["c@dest.test"], "u3");
    let m = sink.wait_for_messages(3, WAIT);
    assert_eq!(m[2].session, m[0].session, "{}", sink.transcripts());
    assert!(
        sink.transcripts().contains("C: RSET"),
        "{}",
        sink.transcripts()
    );
    let _: SocketAddr = sink.addr(0);
}

/// The server closed a connection that was reused without RSET: the message goes on a new
/// connection at once, not deferred.
#[test]
fn a_reused_connection_found_closed_is_replaced_without_deferral() {
    let dir = tempdir("deliver-stale");
    let dns = DnsServer::start();
    let mails = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = mails.clone();
    let sink = Sink::builder(&[ip(20)])
        .script(move |s: &Step| match s.stage {
            // The second transaction on the first connection: gone without a word.
            Stage::MailFrom(_) if seen.fetch_add(1, Ordering::SeqCst) == 1 => Some("DROP".into()),
            _ => None,
        })
        .start();
    mx(&dns, "dest.test", 20);
    let relay = start(&dir, &reusing(&dns, sink.port()));
    submit(&relay, "sender@snd.test", &["a@dest.test"], "s1");
    sink.wait_for_messages(1, WAIT);
    assert!(wait_until(WAIT, || log_text(&relay).contains("status=\"sent\"")));
    submit(&relay, "sender@snd.test", &["b@dest.test"], "s2");
    let m = sink.wait_for_messages(2, WAIT);
    assert_eq!(m[1].rcpt_to, ["b@dest.test"]);
    assert_ne!(m[0].session, m[1].session, "{}", sink.transcripts());
    assert!(relay.wait_for_log("reused connection was closed", WAIT));
    wait_queue_empty(&relay);
    assert!(
        !log_text(&relay).contains("status=\"deferred\""),
        "{}",
        relay.log()
    );
}

#[test]
fn delay_warning_once_then_expiry_bounce() {
    let dir = tempdir("deliver-expire");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20), ip(24)]);
    mx(&dns, "dest.test", 20);
    mx(&dns, "snd.test", 24);
    let relay = start(
        &dir,
        &pooled(&dns, sink.port())
            .delivery("delay_warning", "\"1s\"")
            .delivery("max_age", "\"4s\""),
    );
    // `tempfail@` always gets 451 from the sink.
    submit(&relay, "sender@snd.test", &["tempfail@dest.test"], "late");
    let dsns = sink.wait_for_messages(2, Duration::from_secs(20));
    wait_queue_empty(&relay);
    let dsns: Vec<Message> = dsns
        .into_iter()
        .filter(|m| m.local.ip() == ip(24))
        .collect();
    assert_eq!(dsns.len(), 2, "one delay warning, one failure");
    let delay = delivery_status(&dsns[0]);
    assert!(delay.contains("Action: delayed"), "{delay}");
    assert!(
        delay.contains("Final-Recipient: rfc822; tempfail@dest.test"),
        "{delay}"
    );
    let failed = delivery_status(&dsns[1]);
    assert!(failed.contains("Action: failed"), "{failed}");
    assert!(failed.contains("Status: 4.4.7"), "{failed}");
    assert!(failed.contains("4.3.0"), "last remote reply kept: {failed}");
    assert!(at(&sink, 20).is_empty());
}

#[test]
fn ipv6_pool_address_for_an_ipv6_destination() {
    let dir = tempdir("deliver-v6");
    let dns = DnsServer::start();
    let v6: IpAddr = "::1".parse().unwrap();
    let port = free_port_on(&[ip(20), v6]);
    let sink = Sink::builder(&[ip(20), v6]).port(port).start();
    dns.add_mx("six.test", 10, "mx.six.test");
    dns.add_ip("mx.six.test", v6);
    mx(&dns, "four.test", 20);
    let pool = [
        PoolIp::new(10, "out4.relay.test"),
        PoolIp::at("::1", "out6.relay.test"),
    ];
    let relay = start(&dir, &config(&dns, port).pool("dual", &pool));
    submit(
        &relay,
        "sender@snd.test",
        &["a@six.test", "b@four.test"],
        "v6",
    );
    sink.wait_for_messages(2, WAIT);
    let m6: Vec<Message> = sink
        .messages()
        .into_iter()
        .filter(|m| m.local.ip() == v6)
        .collect();
    assert_eq!(m6.len(), 1);
    assert_eq!(m6[0].peer, v6);
    assert_eq!(m6[0].ehlo, "out6.relay.test");
    let m4 = at(&sink, 20);
    assert_eq!(m4[0].peer, ip(10));
    assert_eq!(m4[0].ehlo, "out4.relay.test");
    wait_queue_empty(&relay);
}

#[test]
fn eight_bit_and_smtputf8_parameters_are_passed_on() {
    let dir = tempdir("deliver-8bit");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    mx(&dns, "dest.test", 20);
    let relay = start(&dir, &pooled(&dns, sink.port()));
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<s\u{e9}nder@snd.test> BODY=8BITMIME SMTPUTF8")
        .expect(250);
    c.cmd("RCPT TO:<j\u{f6}rg@dest.test>").expect(250);
    let r = c.data("Subject: gr\u{fc}\u{df}e\r\n\r\nk\u{e4}se\r\n".as_bytes());
    assert_eq!(r.code, 250, "{r}");
    let m = sink.wait_for_messages(1, WAIT);
    assert_eq!(m[0].mail_from, "s\u{e9}nder@snd.test");
    assert_eq!(m[0].rcpt_to, vec!["j\u{f6}rg@dest.test"]);
    assert!(
        m[0].mail_params.contains("BODY=8BITMIME"),
        "{}",
        m[0].mail_params
    );
    assert!(
        m[0].mail_params.contains("SMTPUTF8"),
        "{}",
        m[0].mail_params
    );
    assert!(m[0].data_str().ends_with("k\u{e4}se\r\n"));
    wait_queue_empty(&relay);
}

#[test]
fn per_destination_concurrency_limit() {
    use std::sync::atomic::AtomicUsize;
    let dir = tempdir("deliver-concurrency");
    let dns = DnsServer::start();
    let active = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (a, m) = (active.clone(), max.clone());
    // A transaction counts from EHLO to the end of DATA; DATA is slow so overlaps would show.
    let sink = Sink::builder(&[ip(20)])
        .script(move |s: &Step| {
            match s.stage {
                Stage::Ehlo(_) => {
                    let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                }
                Stage::Data => std::thread::sleep(Duration::from_millis(300)),
                Stage::DataEnd(_) => {
                    a.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
            None
        })
        .start();
    mx(&dns, "dest.test", 20);
    let relay = start(
        &dir,
        &pooled(&dns, sink.port())
            .delivery("idle_timeout", "\"0s\"")
            .delivery("concurrency_per_destination", 1),
    );
    for i in 0..3 {
        submit(
            &relay,
            "sender@snd.test",
            &[&format!("r{i}@dest.test")],
            "c",
        );
    }
    sink.wait_for_messages(3, WAIT);
    assert_eq!(max.load(Ordering::SeqCst), 1, "{}", sink.transcripts());
    assert_eq!(sink.sessions().len(), 3);
    wait_queue_empty(&relay);
}

#[test]
fn bounce_is_reported_while_other_recipients_wait_for_retry() {
    let dir = tempdir("deliver-early-dsn");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20), ip(24)]);
    mx(&dns, "dest.test", 20);
    mx(&dns, "snd.test", 24);
    let cfg = pooled(&dns, sink.port()).delivery("retry", "[\"1h\"]");
    let relay = start(&dir, &cfg);
    submit(
        &relay,
        "sender@snd.test",
        &["permfail@dest.test", "tempfail@dest.test"],
        "early",
    );
    let dsn = sink.wait_for_messages(1, WAIT);
    assert_eq!(dsn[0].local.ip(), ip(24));
    let status = delivery_status(&dsn[0]);
    assert!(status.contains("permfail@dest.test"), "{status}");
    assert!(!status.contains("tempfail@dest.test"), "{status}");
    // The DSN is queued before the bounce is saved (a crash in between repeats the DSN).
    assert!(wait_until(WAIT, || envelope_for(
        &relay,
        "permfail@dest.test"
    )
    .is_some_and(|e| e["recipients"][0]["state"] == "bounced")));
    let env = envelope_for(&relay, "permfail@dest.test").expect("still queued");
    assert_eq!(env["recipients"][1]["state"], "pending");
}

#[test]
fn dns_failure_defers_and_never_bounces() {
    let dir = tempdir("deliver-servfail");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    mx(&dns, "dest.test", 20);
    dns.set_fail("dest.test", true);
    let relay = start(&dir, &pooled(&dns, sink.port()));
    submit(&relay, "sender@snd.test", &["a@dest.test"], "sf");
    assert!(
        wait_until(WAIT, || envelope_for(&relay, "a@dest.test")
            .is_some_and(|e| e["recipients"][0]["attempts"] == 1)),
        "{}",
        relay.log()
    );
    let env = envelope_for(&relay, "a@dest.test").unwrap();
    assert_eq!(env["recipients"][0]["state"], "pending");
    assert_eq!(env["recipients"][0]["last_reply"]["status"], "4.4.3");
    dns.set_fail("dest.test", false);
    let m = sink.wait_for_messages(1, WAIT);
    assert_eq!(m[0].rcpt_to, vec!["a@dest.test"]);
    wait_queue_empty(&relay);
    assert!(!log_text(&relay).contains("dsn queued"));
}

#[test]
fn a_burst_shares_a_few_reused_connections() {
    let dir = tempdir("deliver-burst");
    let dns = DnsServer::start();
    let sink = Sink::start(&[ip(20)]);
    mx(&dns, "dest.test", 20);
    let relay = start(
        &dir,
        &pooled(&dns, sink.port())
            .delivery("concurrency_per_destination", 2)
            .delivery("idle_timeout", "\"30s\""),
    );
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for i in 0..30 {
        let r = c.send_mail(
            "sender@snd.test",
            &[&format!("r{i}@dest.test")],
            &body("burst"),
        );
        assert_eq!(r.code, 250, "{r}");
    }
    c.quit();
    let msgs = sink.wait_for_messages(30, Duration::from_secs(30));
    let mut rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 30);
    // Each source IP keeps its own connections (at most 2 at once to the destination), and
    // the two IPs share the messages equally.
    assert!(
        sink.sessions().len() <= 4,
        "{} sessions for 30 messages with 2 allowed per source IP",
        sink.sessions().len()
    );
    let from10 = msgs.iter().filter(|m| m.peer == ip(10)).count();
    assert_eq!((from10, msgs.len() - from10), (15, 15));
    wait_queue_empty(&relay);
}

/// Microsoft's IP-reputation deferral (a three-digit status detail).
const S775: &str = "451 4.7.650 The mail server [127.0.0.10] has been temporarily rate limited due to IP reputation. (S775)";

/// The log lines that contain every one of `needles`.
fn log_lines_with(relay: &Relay, needles: &[&str]) -> Vec<String> {
    log_text(relay)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// smtp-proto keeps each status part in a byte (4.7.650 became 4.7.255): the live replies of a
/// pipelined batch are logged, classified by the status rules and stored whole.
#[test]
fn three_digit_status_details_are_kept_whole_on_live_replies() {
    let dir = tempdir("deliver-status-whole");
    let dns = DnsServer::start();
    let sink = Sink::builder(&[ip(20)])
        .script(|s: &Step| {
            match &s.stage {
            Stage::RcptTo(a) if a.starts_with("rl@") => Some(S775.into()),
            Stage::RcptTo(a) if a.starts_with("ban@") => Some(
                "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP."
                    .into(),
            ),
            _ => None,
        }
        })
        .start();
    dns.add_mx("m.test", 10, "mx.microsoft.test");
    dns.add_ip("mx.microsoft.test", ip(20));
    let cfg = config(&dns, sink.port())
        .pool("default", &pool_ips()[..1])
        .provider("microsoft", &["microsoft.test"]);
    let relay = start(&dir, &cfg);
    submit(
        &relay,
        "sender@snd.test",
        &["rl@m.test", "ban@m.test"],
        "st",
    );
    assert!(
        wait_until(WAIT, || log_lines_with(&relay, &["reply classified"]).len()
            >= 2),
        "{}",
        relay.log()
    );
    let rl = log_lines_with(
        &relay,
        &["reply classified", "reply=451 4.7.650 The mail server"],
    );
    assert!(
        rl.iter()
            .any(|l| l.contains("provider=microsoft") && l.contains("rule=microsoft-")),
        "{rl:?}\n{}",
        relay.log()
    );
    // Only its status (not its text) names 5.7.708: the status rule decided.
    let ban = log_lines_with(&relay, &["reply classified", "reply=550 5.7.708"]);
    assert!(
        ban.iter()
            .any(|l| l.contains("rule=microsoft-banned-ip-status")),
        "{ban:?}\n{}",
        relay.log()
    );
    // Stored whole: the deferred recipient's last reply (its status, or the reply quoted when
    // it counted against the IP).
    assert!(
        wait_until(WAIT, || {
            let env = envelope_json(&relay);
            let last = env["recipients"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["address"] == "rl@m.test"))
                .map(|r| r["last_reply"].to_string())
                .unwrap_or_default();
            last.contains("4.7.650")
        }),
        "{:?}",
        relay.queued_envelopes()
    );
    let log = log_text(&relay);
    assert!(!log.contains(".255"), "a cut status:\n{log}");
}

/// A permanent refusal with a three-digit detail reaches the sender's DSN whole.
#[test]
fn three_digit_status_detail_is_kept_whole_in_the_dsn() {
    let dir = tempdir("deliver-status-dsn");
    let dns = DnsServer::start();
    let sink = Sink::builder(&[ip(20), ip(24)])
        .script(|s: &Step| {
            (matches!(s.stage, Stage::RcptTo(_)) && s.local.ip() == ip(20))
                .then(|| "550 5.7.606 Access denied, banned sending IP [127.0.0.10]".to_string())
        })
        .start();
    dns.add_mx("m.test", 10, "mx.microsoft.test");
    dns.add_ip("mx.microsoft.test", ip(20));
    mx(&dns, "snd.test", 24);
    // No pool: the refusal is the recipient's answer (a pool IP would be blamed and retried).
    let relay = start(&dir, &config(&dns, sink.port()));
    submit(&relay, "sender@snd.test", &["banned@m.test"], "dsn-st");
    let dsn = sink.wait_for_messages(1, WAIT);
    assert_eq!(dsn[0].local.ip(), ip(24));
    let status = delivery_status(&dsn[0]);
    for want in [
        "Final-Recipient: rfc822; banned@m.test",
        "Status: 5.7.606",
        "Diagnostic-Code: smtp; 550 5.7.606 Access denied",
    ] {
        assert!(status.contains(want), "{want} missing in:\n{status}");
    }
    assert!(
        !dsn[0].data_str().contains("5.7.255"),
        "{}",
        dsn[0].data_str()
    );
    wait_queue_empty(&relay);
}
