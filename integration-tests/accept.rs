//! Accept: the inbound SMTP server of the real binary. Listeners (STARTTLS, implicit TLS, plain),
//! EHLO capabilities, AUTH over TLS only with lockout, relay access and address tricks, envelope
//! parameters, limits, strict line endings and the SMTP smuggling defence, pipelining, and the
//! spool (250 only once files exist, restart recovery).
//!
//! Every config routes all domains to a closed port (127.0.0.1:9) and points DNS at it too, so
//! accepted messages stay deferred in `data/spool/queue/` where the tests inspect them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

const HOST: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(10);

struct Env {
    dir: PathBuf,
    certs: Certs,
    users: PathBuf,
}

fn env(name: &str) -> Env {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &[HOST]);
    let users = write_users(&dir, &[("alice", "secret"), ("bob", "hunter2")]);
    Env { dir, certs, users }
}

/// A STARTTLS listener with optional AUTH, the users file, only 127.0.0.1 trusted, 100 errors
/// per session; DNS and every route point at the closed 127.0.0.1:9 (no `[delivery]` keys).
fn config(e: &Env) -> RelayConfig {
    RelayConfig::new()
        .listen("starttls", "optional")
        .tls(&e.certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&e.users)
        .sender_login("alice", &["example.com"])
        .sender_login("bob", &["example.com"])
        .limit("max_errors", 100)
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9")
}

fn start(e: &Env, cfg: &RelayConfig) -> Relay {
    Relay::start(&e.dir, &cfg.to_toml())
}

/// One relay with a plain-start listener (STARTTLS offered, AUTH optional).
fn simple(name: &str) -> (Env, Relay) {
    simple_with(name, |c| c)
}

/// `simple`, and a client that has said EHLO client.test.
fn session(name: &str) -> (Env, Relay, SmtpClient) {
    let (e, relay) = simple(name);
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    (e, relay, c)
}

/// `simple` with `tune` applied to the config.
fn simple_with(name: &str, tune: impl FnOnce(RelayConfig) -> RelayConfig) -> (Env, Relay) {
    let e = env(name);
    let relay = start(&e, &tune(config(&e)));
    (e, relay)
}

/// Queue id from `250 2.0.0 Ok: queued as ID`, after checking both spool files exist already.
#[track_caller]
fn queued(relay: &Relay, r: &Reply) -> String {
    assert_eq!(r.code, 250, "expected queued, got {r}");
    let id = r
        .text
        .rsplit(' ')
        .next()
        .expect("queue id in reply")
        .to_string();
    assert!(r.text.contains("queued as"), "{r}");
    // No waiting: the relay must not say 250 before the message is in the spool.
    assert!(
        relay.queued_ids().contains(&id),
        "{id} not in the spool at 250"
    );
    id
}

fn queued_message(relay: &Relay, id: &str) -> (serde_json::Value, Vec<u8>) {
    relay
        .queued()
        .into_iter()
        .find(|(e, _)| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not queued"))
}

fn msg_bytes(relay: &Relay, id: &str) -> Vec<u8> {
    queued_message(relay, id).1
}

fn envelope(relay: &Relay, id: &str) -> serde_json::Value {
    queued_message(relay, id).0
}

/// The message as the client sent it: the relay's Received header (first line plus its
/// tab-indented continuation lines) removed.
fn without_received(msg: &[u8]) -> Vec<u8> {
    assert!(msg.starts_with(b"Received: "), "no Received header first");
    let mut pos = 0;
    loop {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("CRLF")
            + pos
            + 2;
        pos = end;
        if msg.get(pos) != Some(&b'\t') {
            return msg[pos..].to_vec();
        }
    }
}

fn tmp_files(relay: &Relay) -> usize {
    std::fs::read_dir(relay.data_dir().join("spool/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A client from an untrusted address that did STARTTLS and EHLO again.
fn tls_client(relay: &Relay, e: &Env, from: u8) -> SmtpClient {
    let mut c = SmtpClient::connect_from(relay.addr(), lo(from));
    c.ehlo("client.test");
    c.starttls(HOST, &e.certs.ca);
    c.ehlo("client.test");
    c
}

#[test]
fn greeting_and_ehlo_capabilities_before_and_after_tls() {
    let e = env("caps");
    let p2 = free_port();
    let relay = start(
        &e,
        &config(&e)
            .listener(format!("127.0.0.1:{p2}"), "none", "none")
            .limit("message_size", "\"1234567\""),
    );
    let mut c = SmtpClient::connect(relay.addr());
    assert_eq!(c.greeting.text, "220 relay.test ESMTP poolrelay");
    let r = c.cmd("EHLO client.test").expect(250);
    assert_eq!(r.lines()[0], HOST);
    let caps = r.lines()[1..]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    for want in [
        "PIPELINING",
        "SIZE 1234567",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(caps.iter().any(|c| c == want), "{want} missing: {caps:?}");
    }
    assert!(
        !caps.iter().any(|c| c.starts_with("AUTH")),
        "AUTH before TLS: {caps:?}"
    );
    assert!(caps.iter().any(|c| c == "CHUNKING"), "{caps:?}");
    c.starttls(HOST, &e.certs.ca);
    assert_eq!(c.tls_version().as_deref(), Some("TLSv1_3"));
    let caps = c.ehlo("client.test");
    assert!(caps.iter().any(|c| c == "AUTH PLAIN LOGIN"), "{caps:?}");
    assert!(!caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "PIPELINING"), "{caps:?}");
    c.cmd("STARTTLS").expect(503);
    c.quit();

    // HELO works; ESMTP parameters need EHLO.
    let mut c = SmtpClient::connect(relay.addr());
    assert_eq!(c.cmd("HELO client.test").expect(250).text, "250 relay.test");
    c.cmd("MAIL FROM:<a@example.com> SIZE=10").expect(555);
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let r = c.data(b"Subject: helo\r\n\r\nx\r\n");
    let id = queued(&relay, &r);
    let msg = String::from_utf8(msg_bytes(&relay, &id)).unwrap();
    assert!(msg.contains(&format!("with SMTP id {id}")), "{msg}");
    c.quit();

    // tls = "none" still offers STARTTLS ([tls] is set); auth = "none" never offers AUTH.
    let mut c = SmtpClient::connect(format!("127.0.0.1:{p2}").parse().unwrap());
    let caps = c.ehlo("client.test");
    assert!(caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    c.starttls(HOST, &e.certs.ca);
    let caps = c.ehlo("client.test");
    assert!(!caps.iter().any(|c| c.starts_with("AUTH")), "{caps:?}");
    c.auth_plain("alice", "secret").expect(502);
    c.quit();
}

#[test]
fn auth_plain_and_login_over_starttls_and_implicit_tls() {
    let e = env("auth");
    let p2 = free_port();
    let relay = start(
        &e,
        &config(&e)
            .listen("starttls", "required")
            .listener(format!("127.0.0.1:{p2}"), "implicit", "required")
            .access("received_auth_user", true),
    );
    // STARTTLS + AUTH PLAIN (initial response), from an untrusted address.
    let mut c = tls_client(&relay, &e, 66);
    c.auth_plain("alice", "secret").expect(235);
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").expect(503);
    let r = c.send_mail(
        "alice@example.com",
        &["x@example.org"],
        b"Subject: 1\r\n\r\nhi\r\n",
    );
    let id = queued(&relay, &r);
    let msg = String::from_utf8(msg_bytes(&relay, &id)).unwrap();
    assert!(msg.contains("from client.test ([127.0.0.66])"), "{msg}");
    assert!(msg.contains("(using TLSv1.3 with cipher TLS13_"), "{msg}");
    assert!(msg.contains("(authenticated as alice)"), "{msg}");
    assert!(
        msg.contains(&format!("by relay.test (poolrelay) with ESMTPSA id {id}")),
        "{msg}"
    );
    assert!(msg.contains("for <x@example.org>;"), "{msg}");
    assert_eq!(envelope(&relay, &id)["user"], "alice");
    c.quit();

    // STARTTLS + AUTH LOGIN (three steps).
    let mut c = tls_client(&relay, &e, 66);
    c.auth_login("bob", "hunter2").expect(235);
    let r = c.send_mail(
        "bob@example.com",
        &["x@example.org"],
        b"Subject: 2\r\n\r\nhi\r\n",
    );
    queued(&relay, &r);
    c.quit();

    // AUTH PLAIN without initial response: 334, then the token; "*" cancels.
    let mut c = tls_client(&relay, &e, 66);
    let r = c.cmd("AUTH PLAIN");
    assert_eq!(r.text, "334 ");
    c.cmd("*").expect(501);
    c.cmd("AUTH PLAIN").expect(334);
    c.cmd("AGJvYgBodW50ZXIy").expect(235); // \0bob\0hunter2
    c.quit();

    // Implicit TLS (465-style): PLAIN and LOGIN with an initial response.
    let a2: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let mut c = SmtpClient::connect_tls_from(a2, lo(66), HOST, &e.certs.ca);
    assert_eq!(c.greeting.text, "220 relay.test ESMTP poolrelay");
    let caps = c.ehlo("client.test");
    assert!(caps.iter().any(|c| c == "AUTH PLAIN LOGIN"), "{caps:?}");
    assert!(!caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    c.cmd("MAIL FROM:<a@example.com>").expect(530);
    c.auth_plain("alice", "secret").expect(235);
    let r = c.send_mail(
        "alice@example.com",
        &["y@example.org"],
        b"Subject: 3\r\n\r\nhi\r\n",
    );
    queued(&relay, &r);
    c.quit();
    let mut c = SmtpClient::connect_tls_from(a2, lo(66), HOST, &e.certs.ca);
    c.ehlo("client.test");
    c.cmd("AUTH LOGIN Ym9i").expect(334); // initial response = user name
    c.cmd("aHVudGVyMg==").expect(235);
    c.quit();

    // A `required` listener wants AUTH even from a trusted network.
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.cmd("MAIL FROM:<a@example.com>").expect(530);
    assert!(r.text.contains("5.7.0 Authentication required"), "{r}");
    c.quit();
    assert!(!relay.log().contains("secret"), "password in the log");
    assert!(
        !relay.log().contains("AGFsaWNlAHNlY3JldA"),
        "AUTH payload in the log"
    );
}

#[test]
fn auth_before_tls_is_refused_with_538() {
    let (e, relay) = simple("auth538");
    let mut c = SmtpClient::connect_from(relay.addr(), lo(66));
    c.ehlo("client.test");
    let r = c.auth_plain("alice", "secret").expect(538);
    assert!(
        r.text
            .contains("5.7.11 Encryption required for requested authentication mechanism"),
        "{r}"
    );
    c.cmd("AUTH LOGIN").expect(538);
    // Still usable, and still no relaying for this untrusted client.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(554);
    c.quit();
    let _ = e;
}

#[test]
fn wrong_passwords_lock_the_address_out() {
    let (e, relay) = simple_with("lockout", |c| {
        c.access("auth_max_failures", 3)
            .access("auth_lockout", "\"1h\"")
    });
    let mut c = tls_client(&relay, &e, 67);
    let r = c.auth_plain("alice", "wrongpw1").expect(535);
    assert!(r.text.contains("5.7.8"), "{r}");
    c.auth_login("alice", "wrongpw2").expect(535);
    c.auth_plain("nosuchuser", "wrongpw3").expect(454);
    assert!(c.is_closed(WAIT), "not disconnected after lockout");

    // Locked out even with the right password; other addresses are not.
    let mut c = tls_client(&relay, &e, 67);
    let r = c.auth_plain("alice", "secret").expect(454);
    assert!(r.text.contains("4.7.0"), "{r}");
    assert!(c.is_closed(WAIT));
    let mut c = tls_client(&relay, &e, 68);
    c.auth_plain("alice", "secret").expect(235);
    c.quit();

    assert!(relay.wait_for_log("AUTH lockout", WAIT));
    let log = relay.plain_log();
    assert_eq!(
        log.matches("AUTH lockout").count(),
        1,
        "lockout logged once"
    );
    let line = log.lines().find(|l| l.contains("AUTH lockout")).unwrap();
    assert!(
        line.contains("client=127.0.0.67") && line.contains("WARN"),
        "{line}"
    );
    assert!(!log.contains("wrongpw"), "password in the log");
}

/// Guesses sent at once on parallel sessions must not all pass the lockout check before the
/// first failure is counted: the limit holds for the address, not per session.
#[test]
fn parallel_sessions_cannot_outrun_the_lockout() {
    use base64::Engine;
    let (e, relay) = simple_with("lockpar", |c| {
        c.access("auth_max_failures", 3)
            .access("auth_lockout", "\"1h\"")
    });
    let mut clients: Vec<SmtpClient> = (0..10).map(|_| tls_client(&relay, &e, 69)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let guess = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0guess{i}"));
        c.send_raw(format!("AUTH PLAIN {guess}\r\n").as_bytes());
    }
    let codes: Vec<u16> = clients.iter_mut().map(|c| c.read_reply().code).collect();
    let guesses_refused = codes.iter().filter(|&&c| c == 535).count();
    assert_eq!(guesses_refused, 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 454).count(), 8, "{codes:?}");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An argon2id check takes ~19 MiB: guesses from many addresses at once must not each get
/// their own (40 took ~760 MiB), nor leave it behind in the allocator (~350 MiB): the
/// relay checks passwords on one thread per core, each reusing its memory.
#[test]
fn password_checks_from_many_addresses_use_bounded_memory() {
    use base64::Engine;
    let (e, relay) = simple("authmem");
    let mut clients: Vec<SmtpClient> = (0..24).map(|i| tls_client(&relay, &e, 100 + i)).collect();
    let pid = relay.pid().expect("relay running");
    let before = peak_rss_kib(pid);
    let guess = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    for c in clients.iter_mut() {
        c.send_raw(format!("AUTH PLAIN {guess}\r\n").as_bytes());
    }
    for c in clients.iter_mut() {
        c.read_reply().expect(535);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let grown_mib = peak_rss_kib(pid).saturating_sub(before) / 1024;
    assert!(
        grown_mib < cores * 20 + 50,
        "peak RSS grew by {grown_mib} MiB"
    );
}

/// Every relay trick a scanner tries (nmap smtp-open-relay style).
const TRICKS: &[&str] = &[
    "<user@example.org>",
    "<user%example.org@relay.test>",
    "<user%example.org>",
    "<example.org!user>",
    "<example.org!user@relay.test>",
    "<@relay.test:user@example.org>",
    "<@relay.test,@hop.test:user@example.org>",
    "<\"user@example.org\">",
    "<\"user@example.org\"@relay.test>",
    "<user@example.org@relay.test>",
    "<user@example.org.>",
    "<user@[127.0.0.1]>",
    "<user@[IPv6:::1]>",
    "<\"user%example.org\"@[127.0.0.1]>",
    "<postmaster>",
    "<user>",
    "user@example.org",
    "<jörg@exämple.de>",
];

#[test]
fn untrusted_client_is_refused_relay_whatever_the_address() {
    let (_e, relay) = simple("relaydeny");
    let mut c = SmtpClient::connect_from(relay.addr(), lo(66));
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    for t in TRICKS {
        let r = c.cmd(&format!("RCPT TO:{t}"));
        assert_eq!(r.code, 554, "{t}: {r}");
        assert!(r.text.contains("5.7.1 Relay access denied"), "{t}: {r}");
    }
    c.cmd("DATA").expect(554);
    c.quit();
    assert!(relay.queued_ids().is_empty());
    assert!(relay.wait_for_log("Relay access denied", WAIT));
}

#[test]
fn trusted_network_relays_without_auth_and_addresses_are_strict() {
    let (_e, relay) = simple("trusted");
    let mut c = SmtpClient::connect(relay.addr()); // 127.0.0.1 is in networks
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    for t in TRICKS {
        let r = c.cmd(&format!("RCPT TO:{t}"));
        let want = match *t {
            "<user@example.org>" | "<@relay.test:user@example.org>" => 250,
            "<@relay.test,@hop.test:user@example.org>" => 250,
            "<jörg@exämple.de>" => 553,
            _ => 501,
        };
        assert_eq!(r.code, want, "{t}: {r}");
        if want == 501 {
            assert!(
                r.text.contains("5.1.3") || r.text.contains("5.5.4"),
                "{t}: {r}"
            );
        }
    }
    let r = c.data(b"Subject: t\r\n\r\nx\r\n");
    let id = queued(&relay, &r);
    let env = envelope(&relay, &id);
    // Source routes are dropped (RFC 5321 appendix C): three times the same mailbox.
    let rcpts: Vec<&str> = env["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["user@example.org"; 3]);
    assert_eq!(env["sender"], "a@example.com");
    assert_eq!(env["client"], "127.0.0.1");
    assert_eq!(env["helo"], "client.test");
    // Bad sender syntax is refused at MAIL.
    c.cmd("MAIL FROM:<a%b@example.com>").expect(501);
    c.cmd("MAIL FROM:<a@b@example.com>").expect(501);
    c.quit();
    assert!(relay.wait_for_log("message accepted", WAIT));
    let log = relay.plain_log();
    // A refused MAIL FROM is logged with the address the client gave.
    assert!(
        log.lines()
            .any(|l| l.contains("refused") && l.contains("sender=\"a%b@example.com\"")),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("message accepted"))
        .unwrap();
    for field in [
        "queue_id=",
        "client=127.0.0.1",
        "sender=a@example.com",
        "rcpts=3",
        "size=",
        "tls=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn null_sender_and_envelope_parameters() {
    let (_e, relay, mut c) = session("params");
    c.cmd("MAIL FROM:<> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1 AUTH=<>")
        .expect(250);
    c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org")
        .expect(250);
    c.cmd("RCPT TO:<c@example.org> NOTIFY=NEVER").expect(250);
    c.cmd("RCPT TO:<d@example.org> NOTIFY=SOMETIMES")
        .expect(501);
    c.cmd("RCPT TO:<d@example.org> XFOO=1").expect(555);
    let r = c.data(b"Subject: bounce\r\n\r\n8bit: \xc3\xa9\r\n");
    let id = queued(&relay, &r);
    let env = envelope(&relay, &id);
    assert_eq!(env["sender"], "");
    assert_eq!(env["ret"], "HDRS");
    assert_eq!(env["envid"], "QQ+2B1");
    assert_eq!(env["body_8bit"], true);
    assert_eq!(env["recipients"][0]["notify"], "SUCCESS,FAILURE");
    assert_eq!(env["recipients"][0]["orcpt"], "rfc822;b@example.org");
    assert_eq!(env["recipients"][1]["notify"], "NEVER");
    assert_eq!(env["recipients"].as_array().unwrap().len(), 2);

    let r = c.cmd("MAIL FROM:<a@example.com> FOO=bar").expect(555);
    assert!(r.text.contains("5.5.4"), "{r}");
    c.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME")
        .expect(555);
    c.cmd("MAIL FROM:<a@example.com> RET=MAYBE").expect(501);
    c.cmd("MAIL FROM:<a@example.com> SIZE=1 SIZE=2").expect(501);
    c.cmd("MAIL FROM:<a@example.com> BODY=7BIT").expect(250);
    c.cmd("MAIL FROM:<b@example.com>").expect(503);
    c.cmd("RSET").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(503);
    c.quit();
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let (_e, relay, mut c) = session("utf8");
    let r = c.cmd("MAIL FROM:<jörg@exämple.de>").expect(553);
    assert!(r.text.contains("5.6.7"), "{r}");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<用户@例子.广告>").expect(553);
    c.cmd("RSET").expect(250);
    c.cmd("MAIL FROM:<jörg@exämple.de> SMTPUTF8").expect(250);
    c.cmd("RCPT TO:<用户@例子.广告>").expect(250);
    let r = c.data("Subject: ü\r\n\r\nx\r\n".as_bytes());
    let id = queued(&relay, &r);
    let env = envelope(&relay, &id);
    assert_eq!(env["sender"], "jörg@exämple.de");
    assert_eq!(env["recipients"][0]["address"], "用户@例子.广告");
    assert_eq!(env["smtputf8"], true);
    let msg = String::from_utf8(msg_bytes(&relay, &id)).unwrap();
    assert!(msg.contains("with UTF8SMTP id"), "{msg}");
    c.quit();
}

#[test]
fn size_limit_declared_and_actual() {
    let (_e, relay) = simple_with("size", |c| c.limit("message_size", 2000));
    let mut c = SmtpClient::connect(relay.addr());
    let caps = c.ehlo("client.test");
    assert!(caps.iter().any(|c| c == "SIZE 2000"), "{caps:?}");
    let r = c.cmd("MAIL FROM:<a@example.com> SIZE=2001").expect(552);
    assert!(r.text.contains("5.3.4"), "{r}");
    // Too large even for a u64 is still "too large" (RFC 1870), not a syntax error.
    let r = c
        .cmd("MAIL FROM:<a@example.com> SIZE=99999999999999999999999")
        .expect(552);
    assert!(r.text.contains("5.3.4"), "{r}");
    c.cmd("MAIL FROM:<a@example.com> SIZE=12x").expect(501);
    c.cmd("MAIL FROM:<a@example.com> SIZE=1000").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    let r = c.data(&big).expect(552);
    assert!(r.text.contains("5.3.4"), "{r}");
    // The session goes on; nothing was kept.
    c.cmd("NOOP").expect(250);
    assert!(relay.queued_ids().is_empty());
    assert!(relay.spool_files("msg").is_empty());
    assert_eq!(tmp_files(&relay), 0);
    let r = c.send_mail("a@example.com", &["b@example.org"], &big[..1500]);
    queued(&relay, &r);
    c.quit();
}

#[test]
fn recipients_per_message_limit() {
    let (_e, relay) = simple_with("rcptlimit", |c| c.limit("recipients_per_message", 2));
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b1@example.org>").expect(250);
    c.cmd("RCPT TO:<b2@example.org>").expect(250);
    let r = c.cmd("RCPT TO:<b3@example.org>").expect(452);
    assert!(r.text.contains("4.5.3"), "{r}");
    let id = queued(&relay, &c.data(b"Subject: r\r\n\r\nx\r\n"));
    assert_eq!(
        envelope(&relay, &id)["recipients"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    c.quit();
}

#[test]
fn per_user_daily_cap_survives_restart() {
    let e = env("dailycap");
    let mut relay = start(
        &e,
        &config(&e)
            .listen("starttls", "required")
            .limit("per_user_daily", 2),
    );
    let mut c = tls_client(&relay, &e, 66);
    c.auth_plain("alice", "secret").expect(235);
    // A refused message does not use up the allowance.
    let r = c.send_mail(
        "alice@example.com",
        &["x@example.org"],
        b"Subject: 0\r\n\r\nbare\nlf\r\n",
    );
    assert_eq!(r.code, 550, "{r}");
    for n in 1..=2 {
        let body = format!("Subject: {n}\r\n\r\nx\r\n");
        queued(
            &relay,
            &c.send_mail("alice@example.com", &["x@example.org"], body.as_bytes()),
        );
    }
    let r = c.cmd("MAIL FROM:<alice@example.com>").expect(452);
    assert!(
        r.text
            .contains("4.7.1 Daily message limit of 2 reached for user alice"),
        "{r}"
    );
    c.quit();
    // Another user has their own allowance.
    let mut c = tls_client(&relay, &e, 66);
    c.auth_plain("bob", "hunter2").expect(235);
    c.cmd("MAIL FROM:<bob@example.com>").expect(250);
    c.quit();

    relay.restart();
    let mut c = tls_client(&relay, &e, 66);
    c.auth_plain("alice", "secret").expect(235);
    c.cmd("MAIL FROM:<alice@example.com>").expect(452);
    c.quit();
    assert_eq!(relay.queued_ids().len(), 2);
}

#[test]
fn bare_lf_and_bare_cr_in_data_are_refused() {
    let (_e, relay, mut c) = session("bare");
    for body in [
        &b"Subject: lf\r\n\r\nline\nline\r\n"[..],
        b"Subject: cr\r\n\r\nline\rline\r\n",
        b"Subject: lf-header\nX: y\r\n\r\nx\r\n",
        b"Subject: cr-end\r\n\r\nx\r\r\n",
        b"Subject: lf-start\r\n\r\n\nx\r\n",
    ] {
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.cmd("RCPT TO:<b@example.org>").expect(250);
        c.cmd("DATA").expect(354);
        c.send_raw(body);
        c.send_raw(b".\r\n");
        let r = c.read_reply();
        assert_eq!(r.code, 550, "{body:?}: {r}");
        assert!(r.text.contains("5.6.11 Bare LF/CR not allowed"), "{r}");
    }
    c.cmd("NOOP").expect(250);
    c.quit();
    assert!(relay.queued_ids().is_empty());
    assert!(relay.spool_files("msg").is_empty());
    assert!(wait_until(WAIT, || tmp_files(&relay) == 0));
    assert!(relay.wait_for_log("message refused", WAIT));
    // Like an accepted one, a refused message is logged with its queue id, size and TLS.
    let log = relay.plain_log();
    let line = log.lines().find(|l| l.contains("message refused")).unwrap();
    for field in ["queue_id=", "size=", "tls=no", "rcpts=1", "reply="] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

#[test]
fn bare_lf_and_bare_cr_in_commands_are_not_executed() {
    let (_e, _relay, mut c) = session("barecmd");
    c.send_raw(b"MAIL FROM:<a@example.com>\n");
    let r = c.read_reply();
    assert_eq!(r.code, 500, "{r}");
    assert!(r.text.contains("5.5.2"), "{r}");
    c.cmd("RCPT TO:<b@example.org>").expect(503); // the MAIL above did not happen
    c.send_raw(b"MAIL FROM:<a@example.com>\rRSET\r\n");
    c.read_reply().expect(500);
    c.send_raw(b"NOOP\r\r\n");
    c.read_reply().expect(500);
    c.cmd("RCPT TO:<b@example.org>").expect(503);
    c.cmd("NOOP").expect(250);
    c.quit();
}

#[test]
fn smtp_smuggling_is_impossible() {
    let (_e, relay, mut c) = session("smuggle");
    let smuggled = "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n\
                    Subject: smuggled\r\n\r\nevil\r\n.\r\n";
    for fake_end in [
        "\n.\r\n",
        "\n.\n",
        "\r.\r",
        "\r.\r\n",
        "\r\n.\n",
        "\r\n.\r",
        "\n.\r",
        "\r\n.\r\r\n",
    ] {
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.cmd("RCPT TO:<b@example.org>").expect(250);
        c.cmd("DATA").expect(354);
        c.send_raw(format!("Subject: outer\r\n\r\nhello{fake_end}{smuggled}").as_bytes());
        // The real end is the CRLF.CRLF that closes `smuggled`: one reply for the whole thing.
        let r = c.read_reply();
        assert_eq!(r.code, 550, "{fake_end:?}: {r}");
        // No replies for smuggled commands are pending: the next reply is NOOP's.
        c.cmd("NOOP").expect(250);
    }
    assert!(relay.queued_ids().is_empty());

    // A correct message whose text looks like commands stays one message.
    let body = b"Subject: one\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@example.com>\r\n";
    let r = c.send_mail("a@example.com", &["b@example.org"], body);
    let id = queued(&relay, &r);
    c.cmd("NOOP").expect(250);
    c.quit();
    assert_eq!(relay.queued_ids().len(), 1);
    assert_eq!(without_received(&msg_bytes(&relay, &id)), body);
    assert_eq!(envelope(&relay, &id)["sender"], "a@example.com");
}

#[test]
fn dot_unstuffing_is_exact() {
    let (_e, relay, mut c) = session("dots");
    let body = b"Subject: dots\r\n\r\n.\r\n..\r\n...x\r\n.y\r\nmid.dle\r\n. \r\n\r\n.\r\nend";
    let r = c.send_mail("a@example.com", &["b@example.org"], body);
    let id = queued(&relay, &r);
    let mut want = body.to_vec();
    want.extend_from_slice(b"\r\n"); // the kit ends the data with CRLF
    assert_eq!(without_received(&msg_bytes(&relay, &id)), want);
    assert_eq!(
        envelope(&relay, &id)["size"].as_u64().unwrap(),
        msg_bytes(&relay, &id).len() as u64
    );

    // A client that did not stuff: the leading dot is removed (RFC 5321 §4.5.2).
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.cmd("DATA").expect(354);
    c.send_raw(b"Subject: raw\r\n\r\n.y\r\n..z\r\n.\r\n");
    let id = queued(&relay, &c.read_reply());
    assert_eq!(
        without_received(&msg_bytes(&relay, &id)),
        b"Subject: raw\r\n\r\ny\r\n.z\r\n"
    );

    // Empty message.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.cmd("DATA").expect(354);
    c.send_raw(b".\r\n");
    let id = queued(&relay, &c.read_reply());
    assert_eq!(without_received(&msg_bytes(&relay, &id)), b"");
    c.quit();
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let (_e, relay) = simple("pipe");
    let mut c = SmtpClient::connect(relay.addr());
    c.send_raw(b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad%x@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n");
    assert_eq!(c.read_reply().code, 250);
    let codes: Vec<u16> = (0..5).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 501, 250, 354]);
    c.send_raw(b"Subject: p\r\n\r\nx\r\n.\r\nNOOP\r\nRSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.org>\r\nNOOP\r\n");
    let id = queued(&relay, &c.read_reply());
    let codes: Vec<u16> = (0..5).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 250, 250]);
    let env = envelope(&relay, &id);
    let rcpts: Vec<&str> = env["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["b@example.org", "c@example.org"]);
    c.send_raw(b"QUIT\r\n");
    c.read_reply().expect(221);
    assert!(c.is_closed(WAIT));
}

/// Reads one (possibly multi-line) reply byte by byte, so nothing after it is consumed.
fn read_raw_reply(s: &mut dyn Read) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).unwrap();
        out.push(b[0]);
        if out.ends_with(b"\r\n") {
            let body = &out[..out.len() - 2];
            let last = body.rsplit(|&c| c == b'\n').next().unwrap();
            if last.get(3) == Some(&b' ') {
                return String::from_utf8(out).unwrap();
            }
        }
    }
}

/// Sends `STARTTLS` with a plaintext command pipelined behind it, then does the handshake by
/// hand (the kit's client refuses to, rightly).
#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let (e, relay) = simple("inject");
    let mut tcp = TcpStream::connect(relay.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_raw_reply(&mut tcp).starts_with("220 "));
    tcp.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(read_raw_reply(&mut tcp).starts_with("250"));
    tcp.write_all(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        .unwrap();
    let r = read_raw_reply(&mut tcp);
    assert!(r.starts_with("220 "), "{r}");
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let conn = rustls::ClientConnection::new(common::client::client_tls_config(&e.certs.ca), name)
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"NOOP\r\n").unwrap();
    tls.flush().unwrap();
    // Had the injected MAIL run inside TLS, its reply (503, no EHLO yet) would come first.
    let r = read_raw_reply(&mut tls);
    assert!(r.starts_with("250 "), "{r}");
    tls.write_all(b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\n")
        .unwrap();
    assert!(read_raw_reply(&mut tls).starts_with("250"));
    let r = read_raw_reply(&mut tls);
    assert!(
        r.starts_with("250 "),
        "MAIL after TLS must be the first one: {r}"
    );
    assert!(relay.wait_for_log("discarding input pipelined after STARTTLS", WAIT));
}

#[test]
fn restart_recovers_committed_and_removes_half_written() {
    let (_e, mut relay) = simple("recover");
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let id = queued(
        &relay,
        &c.send_mail(
            "a@example.com",
            &["b@example.org"],
            b"Subject: keep\r\n\r\nx\r\n",
        ),
    );
    // A second message in the middle of DATA when the relay crashes; past 64 KiB it is
    // streamed to a file under spool/tmp.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.cmd("DATA").expect(354);
    c.send_raw(b"Subject: half\r\n\r\n");
    for _ in 0..2000 {
        c.send_raw(b"half a message, line after line after line after line\r\n");
    }
    assert!(
        wait_until(WAIT, || tmp_files(&relay) == 1),
        "no tmp file mid-DATA"
    );
    relay.kill();
    drop(c);
    assert_eq!(tmp_files(&relay), 1);
    relay.restart();
    assert_eq!(tmp_files(&relay), 0, "half-written message not removed");
    assert_eq!(relay.queued_ids().len(), 1);
    assert_eq!(relay.queued_ids()[0], id);
    assert_eq!(
        without_received(&msg_bytes(&relay, &id)),
        b"Subject: keep\r\n\r\nx\r\n"
    );
    // `poolrelay queue` (mailq) shows the same, without touching the spool.
    let queue = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
            .arg("queue")
            .args(args)
            .args(["--config", "poolrelay.toml"])
            .current_dir(&relay.dir)
            .output()
            .expect("run poolrelay queue");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(queue(&["--count"]).trim(), "1");
    let listing = queue(&[]);
    assert!(
        listing.contains(&id)
            && listing.contains("a@example.com")
            && listing.contains("b@example.org"),
        "{listing}"
    );
    // A header row, the arrival as a UTC date, one word per state, a correct plural.
    assert!(listing.starts_with("ID "), "{listing}");
    assert!(
        listing.contains(" UTC ") && listing.contains("(pending, "),
        "{listing}"
    );
    assert!(
        listing.ends_with("-- 1 message, 1 recipient\n"),
        "{listing}"
    );
}

#[test]
fn overlong_lines_and_too_many_errors_end_the_session() {
    let (_e, relay) = simple_with("errors", |c| c.limit("max_errors", 3));
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    c.send_raw(long.as_bytes());
    let r = c.read_reply().expect(500);
    assert!(r.text.contains("5.5.2"), "{r}");
    c.cmd("NOOP").expect(250);
    c.cmd("FOO").expect(500);
    c.cmd("BAR").expect(500);
    c.cmd("BAZ").expect(500);
    let r = c.read_reply();
    assert_eq!(
        r.text,
        "421 4.7.0 relay.test Too many errors, closing connection"
    );
    assert!(c.is_closed(WAIT));

    // A line that never ends: cut off.
    let mut c = SmtpClient::connect(relay.addr());
    let chunk = vec![b'x'; 1024];
    for _ in 0..100 {
        if c.try_send_raw(&chunk).is_err() {
            break;
        }
    }
    assert!(c.is_closed(WAIT));
    assert!(relay.wait_for_log("endless command line", WAIT));
}

#[test]
fn command_and_data_timeouts() {
    let (_e, relay) = simple_with("timeouts", |c| {
        c.limit("command_timeout", "\"1s\"")
            .limit("data_timeout", "\"1s\"")
    });
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.read_reply(); // nothing sent: the server times out
    assert_eq!(r.code, 421, "{r}");
    assert!(r.text.contains("4.4.2"), "{r}");
    assert!(c.is_closed(WAIT));

    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.cmd("DATA").expect(354);
    c.send_raw(b"Subject: slow\r\n\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 421, "{r}");
    assert!(c.is_closed(WAIT));
    assert!(relay.queued_ids().is_empty());
    assert!(wait_until(WAIT, || tmp_files(&relay) == 0));
}

#[test]
fn session_limit_refuses_with_421() {
    let (_e, relay) = simple_with("sessions", |c| c.limit("max_sessions", 2));
    // The launcher's readiness probes may still hold a slot for a moment: retry until 220.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut got = None;
        assert!(wait_until(WAIT, || {
            let c = SmtpClient::connect(relay.addr());
            let ok = c.greeting.code == 220;
            if ok {
                got = Some(c);
            }
            ok
        }));
        open.push(got.unwrap());
    }
    let c = SmtpClient::connect(relay.addr());
    assert_eq!(c.greeting.code, 421, "{}", c.greeting);
    assert!(c.greeting.text.contains("4.3.2"), "{}", c.greeting);
    open.pop().unwrap().quit();
    assert!(wait_until(WAIT, || SmtpClient::connect(relay.addr())
        .greeting
        .code
        == 220));
}

#[test]
fn a_listener_that_cannot_bind_is_a_startup_error() {
    let e = env("bind");
    let cfg = config(&e);
    let port = cfg.port;
    let _taken = std::net::TcpListener::bind(cfg.addr()).unwrap();
    let (status, log) = Relay::start_expect_exit(&e.dir, &cfg.to_toml(), WAIT);
    let status = status.expect("relay kept running");
    assert!(!status.success());
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
}

#[test]
fn a_bad_users_file_is_a_startup_error() {
    let e = env("badusers");
    std::fs::write(&e.users, "alice:plaintext-password\n").unwrap();
    let (status, log) = Relay::start_expect_exit(&e.dir, &config(&e).to_toml(), WAIT);
    assert!(!status.expect("relay kept running").success());
    assert!(log.contains("users:1: user alice: unknown hash"), "{log}");
    assert!(!log.contains("plaintext-password"), "{log}");
}

#[test]
fn ipv6_clients_are_matched_against_v6_networks() {
    let dir = tempdir("ipv6");
    let p6 = free_port();
    let cfg = RelayConfig::new()
        .listener(format!("[::1]:{p6}"), "none", "none")
        .networks(&["::1/128"])
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9");
    let p4 = cfg.port;
    let relay = Relay::start(&dir, &cfg.to_toml());
    let mut c = SmtpClient::connect(format!("[::1]:{p6}").parse().unwrap());
    c.ehlo("client.test");
    let id = queued(
        &relay,
        &c.send_mail(
            "a@example.com",
            &["b@example.org"],
            b"Subject: v6\r\n\r\nx\r\n",
        ),
    );
    assert_eq!(envelope(&relay, &id)["client"], "::1");
    let msg = String::from_utf8(msg_bytes(&relay, &id)).unwrap();
    assert!(msg.contains("from client.test ([::1])"), "{msg}");
    c.quit();
    // 127.0.0.1 is not in networks here.
    let mut c = SmtpClient::connect(format!("127.0.0.1:{p4}").parse().unwrap());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(554);
    c.quit();
}

#[test]
fn bdat_chunks_are_stored_exactly_and_checked_like_data() {
    let (_e, relay) = simple_with("bdat", |c| c.limit("message_size", 2000));
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    // Pipelined: chunk octets follow each BDAT command; dots are not special in BDAT.
    let (c1, c2) = (
        &b"Subject: b\r\n\r\n.x\r\n"[..],
        &b"\r\n.\r\nMAIL FROM:<e@x.test>\r\n"[..],
    );
    let mut wire = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n".to_vec();
    wire.extend_from_slice(format!("BDAT {}\r\n", c1.len()).as_bytes());
    wire.extend_from_slice(c1);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", c2.len()).as_bytes());
    wire.extend_from_slice(c2);
    c.send_raw(&wire);
    c.read_reply().expect(250);
    c.read_reply().expect(250);
    let r = c.read_reply().expect(250);
    assert!(
        r.text.contains(&format!("{} octets received", c1.len())),
        "{r}"
    );
    let id = queued(&relay, &c.read_reply());
    assert_eq!(without_received(&msg_bytes(&relay, &id)), [c1, c2].concat());
    c.cmd("NOOP").expect(250);

    // Refused BDAT still swallows its octets: "NOOP\r\n" here is data, not a command.
    c.send_raw(b"BDAT 6\r\nNOOP\r\n");
    c.read_reply().expect(503);
    c.cmd("RSET").expect(250);

    // Bare LF inside a chunk, bare CR across a chunk boundary, a lone CR at the end.
    for chunks in [
        vec![&b"Subject: x\r\n\r\nbare\nlf\r\n"[..]],
        vec![&b"Subject: x\r\n\r\nsplit\r"[..], b"x\r\n"],
        vec![&b"Subject: x\r\n\r\nend\r"[..]],
    ] {
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.cmd("RCPT TO:<b@example.org>").expect(250);
        let mut last = None;
        for (i, ch) in chunks.iter().enumerate() {
            let tail = if i + 1 == chunks.len() { " LAST" } else { "" };
            c.send_raw(format!("BDAT {}{tail}\r\n", ch.len()).as_bytes());
            c.send_raw(ch);
            let r = c.read_reply();
            if r.code != 250 {
                last = Some(r);
                break;
            }
        }
        let r = last.expect("bare CR/LF accepted in BDAT");
        assert!(r.text.contains("550 5.6.11"), "{chunks:?}: {r}");
    }

    // Over the size limit; DATA cannot follow BDAT.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let big = vec![b'x'; 2500];
    c.send_raw(b"BDAT 2500 LAST\r\n");
    c.send_raw(&big);
    let r = c.read_reply().expect(552);
    assert!(r.text.contains("5.3.4"), "{r}");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.send_raw(b"BDAT 3\r\nab\r");
    c.read_reply().expect(250);
    c.cmd("DATA").expect(503);
    // RFC 3030: the recipients are fixed once the first chunk is in.
    c.cmd("RCPT TO:<late@example.org>").expect(503);
    c.cmd("RSET").expect(250);
    c.quit();
    assert_eq!(relay.queued_ids().len(), 1);
    assert!(wait_until(WAIT, || tmp_files(&relay) == 0));
}

#[test]
fn storage_errors_give_452_and_leave_nothing_behind() {
    let e = env("storage");
    let relay = start(
        &e,
        &config(&e)
            .listen("starttls", "required")
            .limit("per_user_daily", 1),
    );
    let spool = relay.data_dir().join("spool");
    let mut c = tls_client(&relay, &e, 66);
    c.auth_plain("alice", "secret").expect(235);

    // Past 64 KiB a message streams to a file under spool/tmp. That file cannot be created:
    // 452 at the end of DATA, the session goes on.
    let mut large = b"Subject: large\r\n\r\n".to_vec();
    while large.len() < 100 * 1024 {
        large.extend_from_slice(b"a line of a message too large to be kept in memory\r\n");
    }
    std::fs::remove_dir(spool.join("tmp")).unwrap();
    std::fs::write(spool.join("tmp"), b"not a directory").unwrap();
    let r = c.send_mail("alice@example.com", &["x@example.org"], &large);
    assert_eq!(r.code, 452, "{r}");
    assert!(r.text.contains("4.3.1 Insufficient system storage"), "{r}");
    std::fs::remove_file(spool.join("tmp")).unwrap();
    std::fs::create_dir(spool.join("tmp")).unwrap();

    // The commit into queue/ fails: 452 at the end of DATA, the tmp file is gone, and the
    // daily allowance (1) was given back.
    std::fs::rename(spool.join("queue"), spool.join("queue.away")).unwrap();
    std::fs::write(spool.join("queue"), b"not a directory").unwrap();
    let r = c.send_mail("alice@example.com", &["x@example.org"], &large);
    assert_eq!(r.code, 452, "{r}");
    assert!(r.text.contains("4.3.1"), "{r}");
    assert_eq!(tmp_files(&relay), 0);
    std::fs::remove_file(spool.join("queue")).unwrap();
    std::fs::rename(spool.join("queue.away"), spool.join("queue")).unwrap();
    assert!(relay.spool_files("msg").is_empty());
    assert!(relay.queued_ids().is_empty());

    // (A failing spool log is covered by the spool's unit tests: /dev/full as a segment.)
    let r = c.send_mail(
        "alice@example.com",
        &["x@example.org"],
        b"Subject: s\r\n\r\nx\r\n",
    );
    queued(&relay, &r);
    c.cmd("MAIL FROM:<alice@example.com>").expect(452);
    c.quit();
}

#[test]
fn hundreds_of_concurrent_sessions_cost_no_thread_each() {
    let (_e, relay) = simple("concurrent");
    let mut clients: Vec<SmtpClient> = (0..300)
        .map(|_| {
            let mut c = SmtpClient::connect(relay.addr());
            assert_eq!(c.greeting.code, 220, "{}", c.greeting);
            c.ehlo("client.test");
            c
        })
        .collect();
    let pid = relay.pid().expect("relay running");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert!(threads < 64, "{threads} threads for 300 open sessions");
    // Every session is still served, in whatever order clients speak.
    for (i, c) in clients.iter_mut().enumerate().rev() {
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.cmd(&format!("RCPT TO:<r{i}@example.org>")).expect(250);
    }
    for c in clients.iter_mut().step_by(10) {
        let r = c.data(b"Subject: c\r\n\r\nx\r\n");
        queued(&relay, &r);
    }
    assert_eq!(relay.queued_ids().len(), 30);
}

/// smtp-proto reads `BDAT 999999999999999999995` as a 5-octet chunk (its saturating parser wraps
/// back to the last digit); a count that does not fit must never be read as a smaller one, or
/// the octets after it would be taken as commands.
#[test]
fn bdat_chunk_size_too_large_to_represent_is_not_misread() {
    let (_e, relay, mut c) = session("bdatbig");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.send_raw(b"BDAT 999999999999999999995 LAST\r\nhello");
    let r = c.read_reply();
    assert_eq!(r.code, 501, "{r}");
    assert!(r.text.contains("5.5.4"), "{r}");
    // The following octets are of unknown length: the session cannot go on.
    assert!(c.is_closed(WAIT));
    assert!(relay.queued_ids().is_empty());
}
