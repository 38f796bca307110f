//! What outside parties control (issue 18), against the real binary: NUL bytes in DATA/BDAT,
//! control characters from a remote reply on the operator's terminal, logins sending as other
//! customers (`[[access.sender_login]]`), and the DSNs the relay writes (signed, headers only).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use mail_auth::DkimResult;

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "relay.test";

fn poolrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poolrelay"))
}

#[test]
fn nul_bytes_in_data_and_bdat_are_refused() {
    let dir = tempdir("untrusted-nul");
    let cfg = RelayConfig::new()
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9");
    let relay = Relay::start(&dir, &cfg.to_toml());
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    // A line of NUL and a dot: an end-of-data look-alike for a next hop that strips NULs.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.cmd("DATA").expect(354);
    c.send_raw(b"Subject: nul\r\n\r\nbefore\r\n\0.\r\nMAIL FROM:<x@evil.test>\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 550, "{r}");
    assert!(r.text.contains("5.6.0"), "{r}");
    // BDAT: the same.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let chunk = b"Subject: nul\r\n\r\nx\0y\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    let r = c.read_reply();
    assert_eq!(r.code, 550, "{r}");
    assert!(r.text.contains("5.6.0"), "{r}");
    // The session goes on; a clean message still passes.
    let r = c.send_mail(
        "a@example.com",
        &["b@example.org"],
        b"Subject: ok\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    assert_eq!(relay.queued_ids().len(), 1);
}

/// The sink refuses the recipient with a reply full of terminal controls.
fn hostile_reply(step: &Step) -> Option<String> {
    matches!(step.stage, Stage::RcptTo(_)).then(|| {
        "550 5.1.1 no such user \x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{85}\u{202e}gnp.exe\u{2066}"
            .to_string()
    })
}

const RAW: &[char] = &['\x1b', '\x07', '\u{9b}', '\u{85}', '\u{202e}', '\u{2066}'];

#[test]
fn a_reply_full_of_controls_reaches_the_cli_escaped() {
    let b = bench(Some(hostile_reply));
    let dir = tempdir("untrusted-controls");
    let cfg = b.config().pool("default", &[PoolIp::new(10, "out10.test")]);
    let (relay, admin) = admin::start(&dir, &cfg, WAIT);
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.send_mail(
        "s@a.test",
        &["gone@b.test"],
        b"From: <s@a.test>\r\nSubject: t\r\n\r\nhi\r\n",
    )
    .expect(250);
    c.quit();
    // Stored raw (it is what the remote said) ...
    assert!(wait_until(WAIT, || {
        admin::get(admin, "/api/suppressions")["suppressions"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    }));
    let list = |json: bool| {
        let mut cmd = poolrelay();
        cmd.args(["suppression", "list", "--config", "poolrelay.toml"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.current_dir(relay.dir()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // ... and printed escaped: nothing that moves the cursor or reorders text.
    let text = list(false);
    assert!(text.contains("gone@b.test"), "{text}");
    assert!(
        text.contains("\\x1b]0;pwned\\x07\\x1b[2J\\u{009b}31m"),
        "{text}"
    );
    assert!(text.contains("\\u{202e}gnp.exe\\u{2066}"), "{text}");
    assert!(!text.contains(RAW), "{text:?}");
    // JSON: the same value, every control as a \u escape.
    let json = list(true);
    assert!(!json.contains(RAW), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let reason = v["suppressions"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("\u{9b}31m") && reason.contains('\u{202e}'),
        "{v}"
    );
    // The relay's own log: one line per event, no raw control.
    let log = relay.log();
    assert!(log.contains("gone@b.test"), "{log}");
    assert!(!log.contains(RAW), "{log:?}");
}

/// A STARTTLS submission listener with AUTH for `users` (password `pw-` + name) and DKIM keys
/// for both customers' domains, example.com and other.example; `entries` tunes the config (the
/// `[[access.sender_login]]` entries).
fn login_relay(
    name: &str,
    users: &[&str],
    entries: impl FnOnce(RelayConfig) -> RelayConfig,
) -> (Relay, Certs, DnsServer) {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &[HOST]);
    let passwords: Vec<String> = users.iter().map(|u| format!("pw-{u}")).collect();
    let users: Vec<(&str, &str)> = users
        .iter()
        .zip(&passwords)
        .map(|(u, p)| (*u, p.as_str()))
        .collect();
    let users = write_users(&dir, &users);
    let dns = DnsServer::start();
    let mut dkim = String::new();
    for domain in ["example.com", "other.example"] {
        let (key, txt) = keygen(&dir, domain, "s1", "ed25519");
        dns.add_txt(&format!("s1._domainkey.{domain}"), &txt);
        dkim.push_str(&format!(
            "[[dkim]]\ndomain = \"{domain}\"\nselector = \"s1\"\nprivate_key = \"{}\"\n\n",
            key.display()
        ));
    }
    let cfg = RelayConfig::new()
        .listen("starttls", "required")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9")
        .section(&dkim);
    (Relay::start(&dir, &entries(cfg).to_toml()), certs, dns)
}

fn login(relay: &Relay, certs: &Certs, user: &str) -> SmtpClient {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.starttls(HOST, &certs.ca);
    c.ehlo("client.test");
    c.auth_plain(user, &format!("pw-{user}")).expect(235);
    c
}

/// The queued message as it will leave: DKIM prepend first, then the spooled bytes.
fn outgoing(relay: &Relay, id: &str) -> Vec<u8> {
    let (env, body) = relay
        .queued()
        .into_iter()
        .find(|(e, _)| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not queued"));
    let mut out = env["prepend"].as_str().unwrap_or("").as_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn queued_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r}");
    r.text.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn logins_send_only_as_their_own_domains_and_get_only_their_signatures() {
    // alice may send as example.com, bob as other.example and its subdomains; carol has no entry.
    let (relay, certs, dns) = login_relay("untrusted-login", &["alice", "bob", "carol"], |c| {
        c.sender_login("alice", &["example.com"])
            .sender_login("bob", &["other.example", "*.other.example"])
    });
    let mut alice = login(&relay, &certs, "alice");
    // Another customer's domain: refused at MAIL FROM.
    let r = alice.cmd("MAIL FROM:<ceo@other.example>");
    assert_eq!((r.code, r.text.contains("5.7.1")), (553, true), "{r}");
    alice.cmd("RSET").expect(250);
    // Her own domain with her own From: accepted and signed d=example.com, verifiable.
    let r = alice.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: News <news@example.com>\r\nSubject: ok\r\n\r\nhi\r\n",
    );
    let id = queued_id(&r);
    let sent = outgoing(&relay, &id);
    let results = verify_dkim(&dns, &sent);
    assert_eq!(
        results,
        vec![DkimResult::Pass],
        "{}",
        String::from_utf8_lossy(&sent)
    );
    // Her envelope with another customer's From: refused at the end of DATA, nothing signed.
    let r = alice.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: CEO <ceo@other.example>\r\nSubject: spoof\r\n\r\nhi\r\n",
    );
    assert_eq!((r.code, r.text.contains("5.7.1")), (550, true), "{r}");
    // Two From: addresses, one not hers: refused too.
    let r = alice.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: a@example.com, ceo@other.example\r\nSubject: two\r\n\r\nhi\r\n",
    );
    assert_eq!(r.code, 550, "{r}");
    alice.quit();

    // bob may use his domain and its subdomains, not alice's.
    let mut bob = login(&relay, &certs, "bob");
    bob.cmd("MAIL FROM:<a@example.com>").expect(553);
    bob.cmd("RSET").expect(250);
    let r = bob.send_mail(
        "b@mail.other.example",
        &["x@dest.test"],
        b"From: <b@other.example>\r\nSubject: ok\r\n\r\nhi\r\n",
    );
    queued_id(&r);
    bob.quit();

    // A login without an entry may use no sender at all (the null sender passes MAIL FROM).
    let mut carol = login(&relay, &certs, "carol");
    carol.cmd("MAIL FROM:<c@example.com>").expect(553);
    carol.cmd("RSET").expect(250);
    carol.cmd("MAIL FROM:<>").expect(250);
    carol.quit();
    assert_eq!(relay.queued_ids().len(), 2);
}

#[test]
fn without_any_entry_a_login_gets_only_its_own_domain() {
    // No [[access.sender_login]] at all: the default binds logins all the same.
    let (relay, certs, dns) = login_relay(
        "untrusted-login-default",
        &["shop@example.com", "carol"],
        |c| c,
    );
    let warned =
        |log: String| log.contains("these logins may use no sender") && log.contains("carol");
    assert!(
        wait_until(WAIT, || warned(relay.log())),
        "start warning: {}",
        relay.log()
    );
    let mut shop = login(&relay, &certs, "shop@example.com");
    // Another customer's domain: refused at MAIL FROM, and as From: at the end of DATA.
    let r = shop.cmd("MAIL FROM:<ceo@other.example>");
    assert_eq!((r.code, r.text.contains("5.7.1")), (553, true), "{r}");
    shop.cmd("RSET").expect(250);
    let r = shop.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: CEO <ceo@other.example>\r\nSubject: spoof\r\n\r\nhi\r\n",
    );
    assert_eq!((r.code, r.text.contains("5.7.1")), (550, true), "{r}");
    // Its own domain's subdomains are not implied.
    shop.cmd("MAIL FROM:<a@mail.example.com>").expect(553);
    shop.cmd("RSET").expect(250);
    // Its own domain: accepted and signed d=example.com, verifiable.
    let r = shop.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: News <news@example.com>\r\nSubject: ok\r\n\r\nhi\r\n",
    );
    let id = queued_id(&r);
    let sent = outgoing(&relay, &id);
    assert_eq!(
        verify_dkim(&dns, &sent),
        vec![DkimResult::Pass],
        "{}",
        String::from_utf8_lossy(&sent)
    );
    assert!(
        String::from_utf8_lossy(&sent).contains("d=example.com;"),
        "{}",
        String::from_utf8_lossy(&sent)
    );
    shop.quit();

    // A login that is not an address may use nothing, and the reply says what to configure.
    let mut carol = login(&relay, &certs, "carol");
    let r = carol.cmd("MAIL FROM:<c@example.com>").expect(553);
    assert!(
        r.text.contains("5.7.1") && r.text.contains("[[access.sender_login]]"),
        "{r}"
    );
    carol.quit();
    // Only the own-domain message was queued: nothing was signed for other.example.
    assert_eq!(relay.queued_ids(), vec![id]);
}

#[test]
fn dsns_are_signed_for_the_hostname_and_return_only_headers() {
    let b = bench(None);
    let dir = tempdir("untrusted-dsn");
    let (key, txt) = keygen(&dir, HOST, "dsn", "ed25519");
    b.dns.add_txt(&format!("dsn._domainkey.{HOST}"), &txt);
    // The sender's domain is deliverable, so the DSN lands at the sink.
    b.dns.add_mx("c.test", 10, "mx.beta.test");
    let cfg = b
        .config()
        .pool("default", &[PoolIp::new(10, "out10.test")])
        .section(&format!(
            "[[dkim]]\ndomain = \"{HOST}\"\nselector = \"dsn\"\nprivate_key = \"{}\"",
            key.display()
        ));
    let relay = Relay::start(&dir, &cfg.to_toml());
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    // RET=FULL asked: only the headers come back all the same.
    c.cmd("MAIL FROM:<s@c.test> RET=FULL").expect(250);
    c.cmd("RCPT TO:<permfail@b.test>").expect(250);
    c.data(b"From: <s@c.test>\r\nSubject: private\r\n\r\nSECRET-BODY-LINE\r\n")
        .expect(250);
    c.quit();
    b.sink.wait_for_messages(1, WAIT);
    assert!(wait_until(WAIT, || b
        .sink
        .messages()
        .iter()
        .any(|m| m.mail_from.is_empty())));
    let dsn = b
        .sink
        .messages()
        .into_iter()
        .find(|m| m.mail_from.is_empty())
        .unwrap();
    let text = dsn.data_str();
    assert_eq!(dsn.rcpt_to, ["s@c.test"]);
    assert!(text.contains("Subject: private"), "{text}");
    assert!(!text.contains("SECRET-BODY-LINE"), "{text}");
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert_eq!(
        verify_dkim(&b.dns, &dsn.data),
        vec![DkimResult::Pass],
        "{text}"
    );
}

/// Issue 25: a login bound to example.com (its own domain, `shop@example.com`), a DKIM key for
/// example.com, delivery to a sink; `missing_from` as given.
fn author_relay(name: &str, missing_from: &str) -> (Relay, Certs, DnsServer, Sink) {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &[HOST]);
    let users = write_users(&dir, &[("shop@example.com", "pw-shop@example.com")]);
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20)]);
    let (key, txt) = keygen(&dir, "example.com", "s1", "ed25519");
    dns.add_txt("s1._domainkey.example.com", &txt);
    let cfg = RelayConfig::new()
        .listen("starttls", "required")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        // Every refused variant is an error of the session.
        .limit("max_errors", 100)
        .dns(&dns)
        .delivery_port(sink.port())
        .route("*", &format!("[127.0.0.20]:{}", sink.port()))
        .pool("default", &[PoolIp::new(10, "out1.relay.test")])
        .signing("missing_from", format!("\"{missing_from}\""))
        .section("[doctor]\nbackground = false")
        .section(&format!(
            "[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{}\"",
            key.display()
        ));
    (Relay::start(&dir, &cfg.to_toml()), certs, dns, sink)
}

/// Issue 25: `From:` holds exactly one valid mailbox (several only with a `Sender:` the login
/// owns); anything else is refused at the end of DATA with 550 and a reason, before signing,
/// leaving nothing in the spool and nothing for delivery.
#[test]
fn malformed_from_headers_are_refused_before_signing() {
    let (relay, certs, dns, sink) = author_relay("untrusted-from", "refuse");
    let mut c = login(&relay, &certs, "shop@example.com");
    let refused: &[(&[u8], &str, &str)] = &[
        (
            b"From: ceo@victim.example@example.com\r\n",
            "5.6.0",
            "more than one '@'",
        ),
        (
            b"From: (Mallory <ceo@victim.example> news@example.com\r\n",
            "5.6.0",
            "comment that is not closed",
        ),
        (
            b"From: news@example.com (Mallory <ceo@victim.example>\r\n",
            "5.6.0",
            "comment that is not closed",
        ),
        (
            b"From: \"CEO <ceo@victim.example> news@example.com\r\n",
            "5.6.0",
            "quoted string that is not closed",
        ),
        (
            b"From: ceo@victim.example <news@example.com>\r\n",
            "5.6.0",
            "display name",
        ),
        (b"From:\r\n", "5.6.0", "is empty"),
        (b"From: undisclosed-recipients:;\r\n", "5.6.0", "group"),
        (
            b"From: news@example.com\r\nFrom: ceo@victim.example\r\n",
            "5.6.0",
            "2 From: headers",
        ),
        (
            b"From: \xff\xfe\xfd <news@example.com>\r\n",
            "5.6.0",
            "not UTF-8",
        ),
        (
            b"From: a@example.com, b@example.com\r\n",
            "5.6.0",
            "Sender:",
        ),
        (b"To: x@dest.test\r\n", "5.6.0", "no From: header"),
        (
            b"From: CEO <ceo@victim.example>\r\n",
            "5.7.1",
            "From: address not owned",
        ),
        (
            b"From: a@example.com, b@example.com\r\nSender: ceo@victim.example\r\n",
            "5.7.1",
            "Sender: address not owned",
        ),
        (
            b"From: a@example.com, ceo@victim.example\r\nSender: a@example.com\r\n",
            "5.7.1",
            "From: address not owned",
        ),
    ];
    for (headers, status, why) in refused {
        let msg = [*headers, b"Subject: spoof\r\n\r\nhi\r\n"].concat();
        c.cmd("MAIL FROM:<news@example.com> BODY=8BITMIME")
            .expect(250);
        c.cmd("RCPT TO:<x@dest.test>").expect(250);
        let r = c.data(&msg);
        let shown = String::from_utf8_lossy(headers);
        assert_eq!(r.code, 550, "{shown:?}: {r}");
        assert!(
            r.text.contains(status) && r.text.contains(why),
            "{shown:?}: {r}"
        );
    }
    // A large message (a spool file, signed from disk) and BDAT take the same check.
    let mut big = b"From: ceo@victim.example@example.com\r\nSubject: spoof\r\n\r\n".to_vec();
    while big.len() < 300 * 1024 {
        big.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    let r = c.send_mail("news@example.com", &["x@dest.test"], &big);
    assert_eq!((r.code, r.text.contains("5.6.0")), (550, true), "{r}");
    c.cmd("MAIL FROM:<news@example.com>").expect(250);
    c.cmd("RCPT TO:<x@dest.test>").expect(250);
    let chunk =
        b"From: (Mallory <ceo@victim.example> news@example.com\r\nSubject: spoof\r\n\r\nhi\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    let r = c.read_reply();
    assert_eq!((r.code, r.text.contains("5.6.0")), (550, true), "{r}");
    // Nothing reached the spool: no queued message, no message file.
    assert!(relay.queued_ids().is_empty(), "{:?}", relay.queued_ids());
    assert!(relay.spool_files("msg").is_empty());

    // A valid From:, and several authors with a Sender: the login owns: signed, verifiable.
    for headers in [
        &b"From: News <news@example.com>\r\n"[..],
        b"From: a@example.com, \"B, Sales\" <b@example.com>\r\nSender: news@example.com\r\n",
    ] {
        let msg = [headers, b"To: x@dest.test\r\nSubject: ok\r\n\r\nhi\r\n"].concat();
        let r = c.send_mail("news@example.com", &["x@dest.test"], &msg);
        queued_id(&r);
    }
    c.quit();
    let delivered = sink.wait_for_messages(2, WAIT);
    assert_eq!(delivered.len(), 2);
    for m in &delivered {
        assert_eq!(
            verify_dkim(&dns, &m.data),
            vec![DkimResult::Pass],
            "{}",
            m.data_str()
        );
        assert!(m.data_str().contains("d=example.com;"), "{}", m.data_str());
    }
    // None of the refused ones was delivered after all.
    assert!(!wait_until(Duration::from_millis(500), || sink
        .messages()
        .len()
        > 2));
    assert!(
        sink.messages()
            .iter()
            .all(|m| !m.data_str().contains("Subject: spoof"))
    );
}

/// Issue 25: `missing_from = "accept-unsigned"` lets a message without `From:` through, unsigned;
/// it lets nothing malformed through. The key is checked at config load.
#[test]
fn missing_from_can_be_accepted_unsigned_and_is_checked_at_load() {
    let (relay, certs, _dns, sink) = author_relay("untrusted-no-from", "accept-unsigned");
    let mut c = login(&relay, &certs, "shop@example.com");
    let r = c.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"Subject: no from\r\n\r\nhi\r\n",
    );
    queued_id(&r);
    let r = c.send_mail(
        "news@example.com",
        &["x@dest.test"],
        b"From: ceo@victim.example@example.com\r\nSubject: spoof\r\n\r\nhi\r\n",
    );
    assert_eq!((r.code, r.text.contains("5.6.0")), (550, true), "{r}");
    c.quit();
    let delivered = sink.wait_for_messages(1, WAIT);
    assert!(delivered[0].data_str().contains("Subject: no from"));
    assert!(
        !delivered[0].data_str().contains("DKIM-Signature:"),
        "{}",
        delivered[0].data_str()
    );

    let dir = tempdir("untrusted-no-from-config");
    let base = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";
    for (signing, needle) in [
        ("[signing]\nmissing_from = \"sometimes\"\n", "missing_from"),
        (
            "[signing]\nrequire = true\nmissing_from = \"accept-unsigned\"\n",
            "contradicts require",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, format!("{base}{signing}")).unwrap();
        let out = poolrelay().arg("check-config").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{signing}: {text}");
        assert!(text.contains(needle), "{signing}: {text}");
    }
}
