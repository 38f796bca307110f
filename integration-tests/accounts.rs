//! Accountability per login and sender domain (issue 26): one customer's bounces, blocks and
//! complaints throttle or suspend that customer, never the pool's IPs that everyone shares.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::admin::{get, hold, http};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

const USERS: [(&str, &str); 3] = [
    ("alice", "secret-a"),
    ("bob", "secret-b"),
    ("carol", "secret-c"),
];

/// A relay with AUTH (alice, bob and carol, each with its own domain), sending from
/// 127.0.0.10 and 127.0.0.11 to the bench's sink, `[accounts]` from `accounts`.
fn start(name: &str, b: &Bench, accounts: &str) -> (Relay, SocketAddr, Certs) {
    start_with(name, b, accounts, "")
}

/// `start` with more sections (`[feedback]`).
fn start_with(name: &str, b: &Bench, accounts: &str, more: &str) -> (Relay, SocketAddr, Certs) {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &["relay.test"]);
    let users = write_users(&dir, &USERS);
    let cfg = b
        .config()
        .listen("starttls", "optional")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("alice", &["alice.test"])
        .sender_login("bob", &["bob.test"])
        .sender_login("carol", &["carol.test"])
        .delivery("idle_timeout", "\"0s\"")
        .pool(
            "default",
            &[PoolIp::new(10, "out10.test"), PoolIp::new(11, "out11.test")],
        )
        .section(&format!("[accounts]\n{accounts}"))
        .section(more);
    let (relay, admin) = admin::start(&dir, &cfg, WAIT);
    (relay, admin, certs)
}

/// One authenticated session of `user` from the untrusted 127.0.0.66.
fn login(relay: &Relay, certs: &Certs, user: &str) -> SmtpClient {
    let pass = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    let mut c = SmtpClient::connect_from(relay.addr(), lo(66));
    c.ehlo("client.test");
    c.starttls("relay.test", &certs.ca);
    c.ehlo("client.test");
    c.auth_plain(user, pass).expect(235);
    c
}

fn body(from: &str, to: &str) -> Vec<u8> {
    format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: for {to}\r\n\r\nHello.\r\n").into_bytes()
}

/// `user` sends one message per recipient from `user@user.test`; every reply is returned.
fn send_as(relay: &Relay, certs: &Certs, user: &str, rcpts: &[String]) -> Vec<Reply> {
    let from = format!("{user}@{user}.test");
    let mut c = login(relay, certs, user);
    let replies = rcpts
        .iter()
        .map(|r| {
            let reply = c.send_mail(&from, &[r.as_str()], &body(&from, r));
            if reply.code != 250 {
                c.cmd("RSET");
            }
            reply
        })
        .collect();
    c.quit();
    replies
}

/// The receiver: `unknown…@` is a user it does not have.
fn unknown_users(s: &Step) -> Option<String> {
    match &s.stage {
        Stage::RcptTo(a) if a.starts_with("unknown") => Some(format!(
            "550 5.1.1 <{a}>: Recipient address rejected: User unknown in virtual mailbox table"
        )),
        _ => None,
    }
}

fn rcpts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@a.test")).collect()
}

fn account(admin: SocketAddr, path: &str, list: &str, name: &str) -> Option<Value> {
    get(admin, path)[list]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == name).cloned())
}

/// Asserts that bob, in good standing, gets 6 messages (recipients named from `prefix`) through
/// both pool IPs, neither of which holds anything for alpha or for all providers.
fn assert_bob_sends_unheld(
    b: &Bench,
    relay: &Relay,
    certs: &Certs,
    admin: SocketAddr,
    prefix: &str,
) {
    b.sink.clear();
    for r in send_as(relay, certs, "bob", &rcpts(prefix, 6)) {
        assert_eq!(r.code, 250, "{r}");
    }
    let got = b.sink.wait_for_messages(6, WAIT);
    assert!(got.iter().all(|m| m.mail_from == "bob@bob.test"));
    for ip in ["127.0.0.10", "127.0.0.11"] {
        for scope in ["alpha", "all"] {
            assert!(hold(admin, ip, scope).is_none(), "{ip} held for {scope}");
        }
    }
    assert_eq!(login_of(admin, "bob").unwrap()["standing"], "good");
}

fn login_of(admin: SocketAddr, name: &str) -> Option<Value> {
    account(admin, "/api/logins", "logins", name)
}

fn volume(v: &Value) -> u64 {
    let c = &v["counts"];
    ["delivered", "bounced", "bad_recipients", "recipient_side"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

fn poolrelay_cli(relay: &Relay, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(args)
        .args(["--config", "poolrelay.toml"])
        .current_dir(relay.dir())
        .output()
        .expect("run poolrelay")
}

/// Alice mails a list of unknown users (the sink knows none of them) until her bounce rate
/// suspends her: 4 of 4 over 50 %.
fn suspend_alice_by_a_bad_list(name: &str) -> (Bench, Relay, SocketAddr, Certs) {
    let b = bench(Some(unknown_users));
    let (relay, admin, certs) = start(
        name,
        &b,
        "min_volume = 4\nmax_bounce_rate = 0.5\nthrottle_per_hour = 100\n",
    );
    for r in send_as(&relay, &certs, "alice", &rcpts("unknown", 4)) {
        assert_eq!(r.code, 250, "{r}");
    }
    assert!(
        wait_until(WAIT, || login_of(admin, "alice")
            .is_some_and(|v| v["standing"] == "suspended")),
        "{}\n{}",
        get(admin, "/api/logins"),
        relay.log()
    );
    (b, relay, admin, certs)
}

/// Carol throttled (at most `per_hour` messages an hour), clear of the hour's end: 2 unknown of
/// her 5 recipients = 40 %, over 25 % (half the limit), under 50 %. Asserts that she is
/// throttled with those 5 counted.
fn throttle_carol_by_a_bad_list(name: &str, per_hour: u32) -> (Bench, Relay, SocketAddr, Certs) {
    clear_of_the_hour_end();
    let b = bench(Some(unknown_users));
    let (relay, admin, certs) = start(
        name,
        &b,
        &format!(
            "min_volume = 4\nmax_bounce_rate = 0.5\nthrottle_at = 0.5\nthrottle_per_hour = {per_hour}\n"
        ),
    );
    let mut to = rcpts("ok", 3);
    to.extend(rcpts("unknown", 2));
    for r in send_as(&relay, &certs, "carol", &to) {
        assert_eq!(r.code, 250, "{r}");
    }
    assert!(
        wait_until(WAIT, || login_of(admin, "carol")
            .is_some_and(|v| volume(&v) == 5 && v["standing"] == "throttled")),
        "{}",
        get(admin, "/api/logins")
    );
    (b, relay, admin, certs)
}

/// Unknown recipients are the customer's list: alice's suspend alice (and her domain) while bob
/// sends on through the same two IPs, and a restart keeps the suspension.
#[test]
fn a_logins_bad_list_suspends_it_while_others_send_and_a_restart_keeps_it() {
    let (b, mut relay, admin, certs) = suspend_alice_by_a_bad_list("acct-suspend");
    let v = login_of(admin, "alice").unwrap();
    assert_eq!(v["counts"]["bad_recipients"], 4, "{v}");
    assert_eq!(
        v["why"], "bounce rate 100 % (4 of 4) over 50 % in 7 days",
        "{v}"
    );
    let domain = account(admin, "/api/sender-domains", "sender_domains", "alice.test").unwrap();
    assert_eq!(domain["standing"], "suspended", "{domain}");
    assert!(relay.log().contains("account suspended"), "{}", relay.log());
    // The pool page lists her, with why.
    let page = common::admin::get_text(admin, "/api/page");
    let row = page
        .split("<tr class=\"account\"")
        .find(|r| r.contains("data-account=\"login alice\""))
        .unwrap_or_else(|| panic!("{page}"));
    assert!(
        row.contains("<td>suspended</td>") && row.contains("bounce rate 100 %"),
        "{row}"
    );
    assert!(
        page.contains("Logins: 0 good, 0 throttled, 1 suspended"),
        "{page}"
    );

    // The state store keeps it over a restart.
    relay.restart();
    let mut c = login(&relay, &certs, "alice");
    let r = c.cmd("MAIL FROM:<alice@alice.test>");
    assert_eq!(
        (r.code, r.lines()[0]),
        (
            550,
            "5.7.1 login alice suspended: bounce rate 100 % (4 of 4) over 50 % in 7 days; sending stays refused until the relay's operator releases it"
        ),
        "{r}"
    );
    c.quit();
    // Her domain from a trusted client without a login: refused too.
    let mut t = SmtpClient::connect(relay.addr());
    t.ehlo("client.test");
    let r = t.cmd("MAIL FROM:<news@alice.test>");
    assert_eq!(r.code, 550, "{r}");
    assert!(r.text.contains("sender domain alice.test suspended"), "{r}");
    t.quit();

    // Bob sends on, through the same IPs, which carry no hold.
    assert_bob_sends_unheld(&b, &relay, &certs, admin, "bob");
}

/// The operator's release (CLI with a name, or API) lets a suspended account send again, logged
/// and in its history.
#[test]
fn the_operators_release_by_cli_or_api_lets_it_send_again() {
    let (b, relay, admin, certs) = suspend_alice_by_a_bad_list("acct-release");
    // By name; the release is logged and in her history.
    let out = poolrelay_cli(&relay, &["login", "release", "alice", "--by", "ops-anna"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "login alice: released, now good"
    );
    assert!(relay.wait_for_log("account released", WAIT));
    let line = relay
        .plain_log()
        .lines()
        .find(|l| l.contains("account released"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("by=\"ops-anna\"") || line.contains("by=ops-anna"),
        "{line}"
    );
    let v = login_of(admin, "alice").unwrap();
    let last = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["standing"].as_str(), last["by"].as_str()),
        (Some("good"), Some("ops-anna")),
        "{v}"
    );
    assert!(
        last["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    // The API's release records the peer and defaults `by`; unknown logins are a 404.
    let (code, v) = http(
        admin,
        "POST",
        "/api/sender-domains/release",
        Some(json!({"domain": "alice.test"})),
    );
    assert_eq!((code, v["standing"].as_str()), (200, Some("good")), "{v}");
    let (code, _) = http(
        admin,
        "POST",
        "/api/logins/release",
        Some(json!({"login": "nobody"})),
    );
    assert_eq!(code, 404);
    let (code, _) = http(
        admin,
        "POST",
        "/api/logins/release",
        Some(json!({"user": "alice"})),
    );
    assert_eq!(code, 400);

    // Alice sends again; her window started afresh.
    b.sink.clear();
    let r = send_as(&relay, &certs, "alice", &["ok@a.test".to_string()]);
    assert_eq!(r[0].code, 250, "{}", r[0]);
    b.sink.wait_for_messages(1, WAIT);
    let list = poolrelay_cli(&relay, &["login", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("alice") && l.contains("good")),
        "{text}"
    );
}

/// Waits, if need be, for a new clock hour with two minutes ahead (the throttle counts per
/// clock hour).
fn clear_of_the_hour_end() {
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 3600
    };
    assert!(wait_until(Duration::from_secs(200), || secs() < 3600 - 120));
}

/// Over the warning level a login is throttled: it may start `throttle_per_hour` messages an
/// hour, then MAIL FROM says 450 4.7.1 and why; bob is not throttled.
#[test]
fn a_throttled_login_sends_a_few_an_hour_then_hears_why() {
    let (_b, relay, admin, _certs) = throttle_carol_by_a_bad_list("acct-throttle", 6);
    let certs = &_certs;
    assert_eq!(login_of(admin, "carol").unwrap()["sent_this_hour"], 5);
    // One more fits in this hour; the next is refused with the reason.
    let r = send_as(
        &relay,
        certs,
        "carol",
        &["ok9@a.test".to_string(), "ok10@a.test".to_string()],
    );
    assert_eq!(r[0].code, 250, "{}", r[0]);
    assert_eq!(r[1].code, 450, "{}", r[1]);
    assert_eq!(
        r[1].lines()[0],
        "4.7.1 login carol throttled: bounce rate 40 % (2 of 5) over 25 % in 7 days; at most 6 messages an hour"
    );
    let r = send_as(&relay, certs, "bob", &rcpts("bob", 2));
    assert!(r.iter().all(|r| r.code == 250), "{r:?}");
    let text = get_metrics(admin);
    assert!(
        text.contains(
            "poolrelay_account_standing{kind=\"login\",name=\"carol\",standing=\"throttled\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("poolrelay_accounts{kind=\"login\",standing=\"throttled\"} 1"),
        "{text}"
    );
}

fn get_metrics(admin: SocketAddr) -> String {
    common::admin::get_text(admin, "/metrics")
}

const FBL: &str = "fbl@relay.test";

/// A receiver's ARF report (RFC 5965) about `original`, the message as it arrived there.
fn arf(original: &[u8]) -> Vec<u8> {
    let mut r = b"From: feedback@provider.test\r\nTo: fbl@relay.test\r\nSubject: complaint\r\n\
        Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf_b\"\r\n\r\n\
        --arf_b\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n\
        --arf_b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
        User-Agent: ProviderFBL/1.0\r\nVersion: 1\r\n\r\n\
        --arf_b\r\nContent-Type: message/rfc822\r\n\r\n"
        .to_vec();
    r.extend_from_slice(original);
    r.extend_from_slice(b"\r\n--arf_b--\r\n");
    r
}

/// Sends `report` to the feedback address from 127.0.0.77 (a stranger, no AUTH).
fn report(relay: &Relay, report: &[u8]) -> Reply {
    let mut c = SmtpClient::connect_from(relay.addr(), lo(77));
    c.ehlo("reporter.test");
    let r = c.send_mail("", &[FBL], report);
    c.quit();
    r
}

fn complaints(admin: SocketAddr) -> Vec<Value> {
    get(admin, "/api/complaints")["complaints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The test: real complaint reports about alice's relayed messages suspend alice (the
/// accounts take the blame, so the IP windows are told not to count them) while bob keeps
/// sending through the same two IPs, which carry no hold.
#[test]
fn one_logins_complaints_suspend_it_while_others_send_through_the_same_ips() {
    let b = bench(None);
    let (relay, admin, certs) = start_with(
        "acct-complaints",
        &b,
        "min_volume = 10\n",
        &format!("[feedback]\naddresses = [\"{FBL}\"]\n"),
    );
    for r in send_as(&relay, &certs, "alice", &rcpts("a", 10)) {
        assert_eq!(r.code, 250, "{r}");
    }
    for r in send_as(&relay, &certs, "bob", &rcpts("b", 10)) {
        assert_eq!(r.code, 250, "{r}");
    }
    let got = b.sink.wait_for_messages(20, WAIT);
    let from_ip = |who: &str, ip: u8| {
        got.iter()
            .filter(|m| m.mail_from.starts_with(who) && m.peer == lo(ip))
            .count()
    };
    assert!(
        from_ip("bob", 10) + from_ip("alice", 10) > 0
            && from_ip("bob", 11) + from_ip("alice", 11) > 0,
        "both IPs in use"
    );
    assert!(wait_until(WAIT, || login_of(admin, "alice")
        .is_some_and(|v| v["counts"]["delivered"] == 10)));
    // Two recipients of alice's mail complain; the receiver sends the reports.
    let alice: Vec<&Message> = got
        .iter()
        .filter(|m| m.mail_from == "alice@alice.test")
        .collect();
    for m in &alice[..2] {
        let r = report(&relay, &arf(&m.data));
        assert_eq!(r.code, 250, "{r}\n{}", relay.log());
    }
    assert!(
        wait_until(WAIT, || complaints(admin).len() == 2),
        "{:?}\n{}",
        complaints(admin),
        relay.log()
    );
    for c in complaints(admin) {
        assert_eq!(c["login"], "alice", "{c}");
        assert_eq!(c["evidence"], "trace", "{c}");
        // The account took the blame: the IP × provider windows do not count it.
        assert_eq!(c["blamed"], true, "{c}");
    }
    let v = login_of(admin, "alice").unwrap();
    assert_eq!(v["standing"], "suspended", "{v}");
    assert_eq!(v["counts"]["complained"], 2, "{v}");
    assert_eq!(
        v["why"], "complaint rate 10 % (1 of 10) over 0.3 % in 7 days",
        "{v}"
    );
    let mut c = login(&relay, &certs, "alice");
    let r = c.cmd("MAIL FROM:<alice@alice.test>");
    assert_eq!(r.code, 550, "{r}");
    assert!(
        r.lines()[0].starts_with("5.7.1 login alice suspended: complaint rate 10 %"),
        "{r}"
    );
    c.quit();

    // Bob goes on through the same IPs; neither IP is held for alice's complaints.
    assert_bob_sends_unheld(&b, &relay, &certs, admin, "c");
}

/// A relay of a farm sharing `redis`, trusting 127.0.0.1, `[accounts]` strict.
fn farm_node(
    dir: &std::path::Path,
    b: &Bench,
    redis: &RedisServer,
    node: &str,
) -> (Relay, SocketAddr) {
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    let rest = format!(
        "[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nprefix = \"farm\"\nresync_interval = \"2s\"\n\n[accounts]\nmin_volume = 3\nmax_bounce_rate = 0.5\n",
        redis.url()
    );
    let cfg = b.pooled(&[PoolIp::new(10, "out10.test")], &rest);
    let (relay, admin) = admin::start(&dir, &cfg, WAIT);
    assert!(
        relay.wait_for_log("cluster: subscribed to the farm's changes", WAIT),
        "{}",
        relay.log()
    );
    (relay, admin)
}

fn mail_from(relay: &Relay, from: &str) -> Reply {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    c.quit();
    r
}

/// With `[cluster]` a suspension made on one relay refuses the account on every relay, and a
/// release made on another lets it send everywhere again (needs `redis-server`).
#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_suspension_on_one_relay_holds_on_the_farm_and_a_release_anywhere_ends_it() {
    let dir = tempdir("acct-farm");
    let redis = RedisServer::start(&dir);
    let b = bench(Some(unknown_users));
    let (one, _admin1) = farm_node(&dir, &b, &redis, "relay-1");
    let (two, admin2) = farm_node(&dir, &b, &redis, "relay-2");
    let mut c = SmtpClient::connect(one.addr());
    c.ehlo("client.test");
    for to in rcpts("unknown", 3) {
        let from = "news@spam.test";
        c.send_mail(from, &[to.as_str()], &body(from, &to))
            .expect(250);
    }
    c.quit();
    // Suspended on relay 1 by its own bounces; relay 2 sent none of that mail.
    assert!(
        wait_until(WAIT, || mail_from(&two, "news@spam.test").code == 550),
        "{}\n{}",
        one.log(),
        two.log()
    );
    let r = mail_from(&two, "other@spam.test");
    assert!(r.text.contains("sender domain spam.test suspended"), "{r}");
    assert_eq!(mail_from(&two, "news@fine.test").code, 250);
    // Released on relay 2: relay 1 lets the domain send again.
    let (code, v) = http(
        admin2,
        "POST",
        "/api/sender-domains/release",
        Some(json!({"domain": "spam.test", "by": "ops"})),
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(WAIT, || mail_from(&one, "news@spam.test").code == 250),
        "{}",
        one.log()
    );
    assert!(
        one.log().contains("account released (from the farm)"),
        "{}",
        one.log()
    );
}

/// MAIL FROM takes a place in a throttled login's hour: sessions in parallel cannot pass the
/// throttle together, and one that RSETs gives its place back.
#[test]
fn parallel_sessions_of_a_throttled_login_share_its_places_and_rset_gives_one_back() {
    let (_b, relay, admin, certs) = throttle_carol_by_a_bad_list("acct-parallel", 8);
    // 5 of 8 this hour: of six sessions at MAIL FROM before any queues, three pass.
    let mut sessions: Vec<SmtpClient> = (0..6).map(|_| login(&relay, &certs, "carol")).collect();
    let codes: Vec<u16> = sessions
        .iter_mut()
        .map(|c| c.cmd("MAIL FROM:<carol@carol.test>").code)
        .collect();
    assert_eq!(codes, vec![250, 250, 250, 450, 450, 450]);
    // One RSETs: its place goes to the next MAIL FROM, and only to that one.
    sessions[0].cmd("RSET").expect(250);
    sessions[3].cmd("MAIL FROM:<carol@carol.test>").expect(250);
    assert_eq!(sessions[4].cmd("MAIL FROM:<carol@carol.test>").code, 450);
    // One leaves without queueing: its place is given back too.
    sessions.remove(1).quit();
    assert!(wait_until(WAIT, || login_of(admin, "carol")
        .is_some_and(|v| v["sent_this_hour"] == 7)));
    sessions[3].cmd("MAIL FROM:<carol@carol.test>").expect(250);
    for c in sessions {
        c.quit();
    }
}
