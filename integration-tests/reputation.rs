//! Reputation: reply classification (`poolrelay classify`; the corpus of real bounces is measured
//! in `bounces.rs`), DNSBL monitoring of pool IPs, block replies and bounce rates leading to quarantine.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;

fn poolrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poolrelay"))
}

fn run_json(args: &[&str], stdin: Option<&str>) -> Vec<serde_json::Value> {
    let mut child = poolrelay()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run poolrelay");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "poolrelay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const S3150: &str = "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.";

#[test]
fn classify_reply_from_argument_and_stdin() {
    let v = &run_json(&["classify", "--json", S3150], None)[0];
    assert_eq!(v["class"], "block", "{v}");
    assert_eq!(v["scope"], "ip");
    assert_eq!(v["blames_ip"], true);
    assert_eq!(v["signal"], "block");
    assert_eq!(v["provider"], "microsoft");
    assert_eq!(v["rule"], "microsoft-blocklist");
    assert_eq!(
        (v["code"].as_u64(), v["status"].as_str()),
        (Some(550), Some("5.7.1"))
    );

    // Multi-line replies on stdin, continuation prefixes included.
    let gmail = "421-4.7.28 [203.0.113.5 15] Our system has detected an unusual rate of\r\n421-4.7.28 unsolicited mail originating from your IP address.\r\n421 4.7.28 https://support.google.com/mail/?p=UnsolicitedRateLimitError\r\n";
    let v = &run_json(&["classify", "--json"], Some(gmail))[0];
    assert_eq!(
        (v["class"].as_str(), v["provider"].as_str()),
        (Some("reputation"), Some("gmail")),
        "{v}"
    );
    // A temporary reputation reply slows the IP down; it does not block it.
    assert_eq!(v["signal"], "throttle", "{v}");

    let v = &run_json(
        &[
            "classify",
            "--json",
            "550 5.1.1 <a@example.org>: user unknown",
        ],
        None,
    )[0];
    assert_eq!(
        (
            v["class"].as_str(),
            v["scope"].as_str(),
            v["blames_ip"].as_bool()
        ),
        (Some("bad-recipient"), Some("recipient"), Some(false)),
        "{v}"
    );

    // Human output names class, provider, blame and rule.
    let out = poolrelay()
        .args(["classify", "552 5.2.2 mailbox full"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "class:     mailbox-full",
        "blames:    the recipient",
        "signal:    none",
        "rule:      ",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    // Nothing to classify is an error, not a guess.
    let out = poolrelay().args(["classify", "  "]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn classify_explain_names_status_stage_and_rule() {
    let out = poolrelay()
        .args([
            "classify",
            "--explain",
            "550 5.7.1 Access denied (in reply to MAIL FROM command)",
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "class:     block",
        "status:    5.7.1 (security or policy status",
        "stage:     mail (read from the text)",
        "decided:   fallback rule refused-early, matching \"Access denied\"",
        "specific rules: no match",
        "[[reputation.rule]]",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    // A stage given on the command line; the JSON carries the same signals.
    let v = &run_json(
        &[
            "classify",
            "--json",
            "--explain",
            "--stage",
            "rcpt",
            "550 5.7.1 Access denied",
        ],
        None,
    )[0];
    assert_eq!(v["class"], "policy", "{v}");
    let e = &v["explain"];
    assert_eq!(
        (e["stage"].as_str(), e["stage_source"].as_str()),
        (Some("rcpt"), Some("caller")),
        "{v}"
    );
    assert_eq!(e["decided_by"], "fallback rule", "{v}");
    // A status with one meaning decides before any wording.
    let v = &run_json(
        &["classify", "--json", "--explain", "552 5.2.2 denied"],
        None,
    )[0];
    assert_eq!(
        (
            v["class"].as_str(),
            v["rule"].as_str(),
            v["explain"]["decided_by"].as_str()
        ),
        (Some("mailbox-full"), Some("status:5.2.2"), Some("status")),
        "{v}"
    );
    let out = poolrelay()
        .args(["classify", "--stage", "bogus", "550 x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn classify_uses_operator_rules_from_the_config() {
    let dir = tempdir("classify-rules");
    std::fs::write(
        dir.join("extra-rules.toml"),
        "[[rule]]\nname = \"acme-ip-block\"\nclass = \"block\"\nprovider = \"acme\"\ntext = 'ACME-BLK-\\d+'\n",
    )
    .unwrap();
    let config = dir.join("poolrelay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[reputation]\nrules_file = \"{}\"\n[[reputation.rule]]\nname = \"inline-first\"\nclass = \"rate-limit\"\ncode = '^451$'\ntext = 'ACME-BLK-9'\n",
            dir.join("extra-rules.toml").display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let v = &run_json(
        &[
            "classify",
            "--json",
            "-c",
            c,
            "550 5.7.1 refused ACME-BLK-17",
        ],
        None,
    )[0];
    assert_eq!(
        (
            v["class"].as_str(),
            v["rule"].as_str(),
            v["provider"].as_str()
        ),
        (Some("block"), Some("acme-ip-block"), Some("acme")),
        "{v}"
    );
    let v = &run_json(
        &["classify", "--json", "-c", c, "451 4.7.1 ACME-BLK-9"],
        None,
    )[0];
    assert_eq!(v["rule"], "inline-first", "{v}");
    // Without the config the built-in rules decide.
    let v = &run_json(
        &["classify", "--json", "550 5.7.1 refused ACME-BLK-17"],
        None,
    )[0];
    assert_ne!(v["rule"], "acme-ip-block");

    // A broken regex is a config error naming the rule.
    std::fs::write(&config, "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[reputation.rule]]\nname = \"broken\"\nclass = \"block\"\ntext = '('\n").unwrap();
    let out = poolrelay().args(["check-config", c]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("broken"), "{err}");
}

#[test]
fn classify_message_finds_recipients_in_dsn_and_prose() {
    let dir = tempdir("classify-message");
    let dsn = dir.join("dsn.eml");
    std::fs::write(&dsn, "From: MAILER-DAEMON@mx.example\r\nTo: s@example.com\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@outlook.example\r\nAction: failed\r\nStatus: 5.7.1\r\nRemote-MTA: dns; mx.outlook.example\r\nDiagnostic-Code: smtp; 550 5.7.1 Unfortunately, messages from [203.0.113.5]\r\n weren't sent. Please contact your Internet service provider since part of\r\n their network is on our block list (S3150).\r\n\r\nFinal-Recipient: rfc822; b@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n--b--\r\n").unwrap();
    let prose = dir.join("exim.eml");
    std::fs::write(&prose, "From: Mail Delivery System <Mailer-Daemon@mx.example>\r\nTo: s@example.com\r\nSubject: Mail delivery failed: returning message to sender\r\nAuto-Submitted: auto-replied\r\n\r\nThis message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error. The following address(es) failed:\r\n\r\n  c@example.net\r\n    SMTP error from remote mail server after RCPT TO:<c@example.net>:\r\n    host mx.example.net [192.0.2.1]: 554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\nTo: c@example.net\r\n").unwrap();
    let out = run_json(
        &[
            "classify",
            "--json",
            "--message",
            dsn.to_str().unwrap(),
            prose.to_str().unwrap(),
        ],
        None,
    );
    let r = out[0]["reports"].as_array().unwrap();
    assert_eq!(out[0]["kind"], "dsn");
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[0]["recipient"].as_str(),
            r[0]["class"].as_str(),
            r[0]["remote_mta"].as_str()
        ),
        (
            Some("a@outlook.example"),
            Some("block"),
            Some("mx.outlook.example")
        )
    );
    assert_eq!(
        (r[1]["recipient"].as_str(), r[1]["class"].as_str()),
        (Some("b@example.org"), Some("bad-recipient"))
    );
    let r = out[1]["reports"].as_array().unwrap();
    assert_eq!(out[1]["kind"], "free-text", "{}", out[1]);
    assert_eq!(r.len(), 1, "{}", out[1]);
    assert_eq!(
        (
            r[0]["recipient"].as_str(),
            r[0]["code"].as_u64(),
            r[0]["status"].as_str(),
            r[0]["class"].as_str()
        ),
        (
            Some("c@example.net"),
            Some(554),
            Some("5.7.1"),
            Some("block")
        )
    );
}

// ------------------------------------------------------------------ relay-level tests

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::admin::{get, hold, http, ip_entry, pool_status};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A relay sending from 127.0.0.10 and 127.0.0.11, providers alpha and beta, admin API on;
/// `rest` adds `[reputation]`.
fn start(name: &str, b: &Bench, rest: &str) -> (Relay, SocketAddr) {
    let ips = [PoolIp::new(10, "out10.test"), PoolIp::new(11, "out11.test")];
    admin::start(&tempdir(name), &b.pooled(&ips, rest), WAIT)
}

fn submit(relay: &Relay, rcpts: &[String]) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    for (i, r) in rcpts.iter().enumerate() {
        let body = format!(
            "From: <s@snd.test>\r\nSubject: m{i}\r\nMessage-ID: <m{i}.{r}>\r\n\r\nHello.\r\n"
        );
        let reply = c.send_mail("s@snd.test", &[r.as_str()], body.as_bytes());
        assert_eq!(reply.code, 250, "submit {r}: {reply}");
    }
    c.quit();
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

fn from_ip(sink: &Sink, src: u8) -> usize {
    sink.messages().iter().filter(|m| m.peer == lo(src)).count()
}

#[test]
fn dnsbl_listing_quarantines_and_delisting_reinstates() {
    let b = bench(None);
    // 127.0.0.10 listed from the start, with a reason; 127.0.0.11 answers a Spamhaus-style
    // "query refused" code on the Spamhaus-named zone, which is not a listing.
    b.dns
        .add_ip("10.0.0.127.dnsbl.test", "127.0.0.2".parse().unwrap());
    b.dns
        .add_txt("10.0.0.127.dnsbl.test", "Listed: see https://dnsbl.test/10");
    b.dns.add_ip(
        "11.0.0.127.zen.spamhaus.test",
        "127.255.255.254".parse().unwrap(),
    );
    let (mut relay, admin) = start(
        "rep-dnsbl",
        &b,
        "[reputation]\ndnsbl = [\"dnsbl.test\", \"zen.spamhaus.test\"]\ncheck_interval = \"1s\"\nclean_checks = 2\n",
    );
    assert!(
        wait_until(WAIT, || hold(admin, "127.0.0.10", "all").is_some()),
        "127.0.0.10 not quarantined\n{}",
        relay.log()
    );
    let h = hold(admin, "127.0.0.10", "all").unwrap();
    assert_eq!(h["kind"], "quarantined", "{h}");
    let ev = h["evidence"].as_str().unwrap();
    assert!(
        ev.contains("dnsbl.test 127.0.0.2") && ev.contains("https://dnsbl.test/10"),
        "{h}"
    );
    assert_eq!(
        ip_entry(&pool_status(admin), "127.0.0.10")["state"],
        "quarantined"
    );

    // The refused answer was seen (logged as a failed check) and quarantined nothing.
    assert!(
        relay.wait_for_log("not a listing code of zen.spamhaus.test", WAIT),
        "{}",
        relay.log()
    );
    assert!(hold(admin, "127.0.0.11", "all").is_none());
    assert_eq!(
        ip_entry(&pool_status(admin), "127.0.0.11")["state"],
        "active"
    );

    // Mail flows through the other IP only.
    submit(&relay, &rcpts("x", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    assert_eq!((from_ip(&b.sink, 10), from_ip(&b.sink, 11)), (0, 4));

    // Delisted while the relay is down: after the restart the monitor still knows the
    // quarantine is its own, and releases it after two clean checks; back in rotation, on
    // probation (a trickle of probes, enough for these four).
    relay.kill();
    b.dns.remove_name("10.0.0.127.dnsbl.test");
    relay.restart();
    assert!(
        wait_until(WAIT, || hold(admin, "127.0.0.10", "all").is_none()),
        "not reinstated\n{}",
        relay.log()
    );
    assert!(relay.log().contains("DNSBL delisted: on probation"));
    submit(&relay, &rcpts("y", "a.test", 4));
    b.sink.wait_for_messages(8, WAIT);
    assert!(
        from_ip(&b.sink, 10) >= 1,
        "127.0.0.10 unused after reinstatement"
    );
}

#[test]
fn dnsbl_listing_mid_run_with_provider_scope_and_dns_errors() {
    let b = bench(None);
    // DQS: zen.spamhaus.org is asked as KEY.zen.dq.spamhaus.net (on the test server only).
    let (relay, admin) = start(
        "rep-dnsbl-mid",
        &b,
        "[reputation]\nspamhaus_dqs_key = \"t3stkey\"\ncheck_interval = \"1s\"\nclean_checks = 1\ndnsbl = [\"zen.spamhaus.org\", { zone = \"ms.test\", providers = [\"alpha\"] }]\n",
    );
    // A SERVFAILing list is an error, not a listing.
    b.dns.set_fail("11.0.0.127.ms.test", true);
    assert!(
        relay.wait_for_log("DNSBL check failed", WAIT),
        "{}",
        relay.log()
    );
    assert_eq!(
        ip_entry(&pool_status(admin), "127.0.0.11")["holds"],
        serde_json::json!([])
    );

    // Listed mid-run on the provider-scoped list: quarantined for alpha only.
    b.dns.set_fail("11.0.0.127.ms.test", false);
    b.dns
        .add_ip("11.0.0.127.ms.test", "127.0.0.3".parse().unwrap());
    assert!(
        wait_until(WAIT, || hold(admin, "127.0.0.11", "alpha").is_some()),
        "{}",
        relay.log()
    );
    assert!(hold(admin, "127.0.0.11", "all").is_none());
    // Listed on Spamhaus through DQS: every provider.
    b.dns.add_ip(
        "10.0.0.127.t3stkey.zen.dq.spamhaus.net",
        "127.0.0.4".parse().unwrap(),
    );
    assert!(
        wait_until(WAIT, || hold(admin, "127.0.0.10", "all").is_some()),
        "{}",
        relay.log()
    );
    let ev = hold(admin, "127.0.0.10", "all").unwrap()["evidence"].clone();
    assert!(
        ev.as_str()
            .unwrap()
            .starts_with("zen.spamhaus.org 127.0.0.4"),
        "{ev}"
    );
    let queried: Vec<String> = b.dns.queries().into_iter().map(|(n, _)| n).collect();
    assert!(
        !queried
            .iter()
            .any(|n| n.ends_with("zen.spamhaus.org.") || n.ends_with("zen.spamhaus.org")),
        "the public zone was asked: {queried:?}"
    );
    // beta mail still goes from 127.0.0.11 (listed for alpha only); alpha mail has no IP left
    // and waits (held, not bounced).
    submit(&relay, &rcpts("b", "b.test", 2));
    submit(&relay, &rcpts("a", "a.test", 1));
    b.sink.wait_for_messages(2, WAIT);
    assert_eq!(from_ip(&b.sink, 11), 2);
    assert!(b.sink.messages().iter().all(|m| m.local.ip() == lo(21)));
    // Delisting releases the alpha mail.
    b.dns.remove_name("10.0.0.127.t3stkey.zen.dq.spamhaus.net");
    b.sink.wait_for_messages(3, WAIT);
    assert_eq!(
        b.sink
            .messages()
            .iter()
            .filter(|m| m.local.ip() == lo(20))
            .count(),
        1
    );
}

/// Microsoft's block-list reply to 127.0.0.10 at alpha's MX (127.0.0.20) only.
fn s3150_from_10_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::RcptTo(_)) && s.peer == lo(10) && s.local.ip() == lo(20)).then(|| {
        "550 5.7.1 Unfortunately, messages from [127.0.0.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).".to_string()
    })
}

fn to_alpha_from(sink: &Sink, src: u8) -> usize {
    sink.messages()
        .iter()
        .filter(|m| m.peer == lo(src) && m.local.ip() == lo(20))
        .count()
}

#[test]
fn block_reply_quarantines_for_that_provider_and_redelivers_from_another_ip() {
    let b = bench(Some(s3150_from_10_at_alpha));
    let (relay, admin) = start("rep-block", &b, "[reputation]\ncooldown = \"4s\"\n");
    // Enough alpha mail that the round robin gives some to 127.0.0.10.
    submit(&relay, &rcpts("a", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    let h = hold(admin, "127.0.0.10", "alpha")
        .unwrap_or_else(|| panic!("not quarantined\n{}", relay.log()));
    assert_eq!(
        (h["kind"].as_str(), h["reason"].as_str()),
        (Some("quarantined"), Some("block reply")),
        "{h}"
    );
    assert!(h["evidence"].as_str().unwrap().contains("S3150"), "{h}");
    assert!(h["until"].as_u64().is_some(), "{h}");
    assert!(
        hold(admin, "127.0.0.10", "all").is_none() && hold(admin, "127.0.0.10", "beta").is_none()
    );
    // Every alpha recipient arrived from 127.0.0.11, none bounced, and the blocked one was
    // moved at once (well inside the 1 s retry schedule's second step).
    assert_eq!(
        (to_alpha_from(&b.sink, 10), to_alpha_from(&b.sink, 11)),
        (0, 4)
    );
    let log = relay.log();
    assert!(log.contains("retrying from another source IP"), "{log}");
    assert!(!log.contains("dsn queued"), "a recipient bounced:\n{log}");
    assert!(
        log.contains("class=block") && log.contains("rule=microsoft-blocklist"),
        "{log}"
    );

    // 127.0.0.10 still serves beta.
    submit(&relay, &rcpts("b", "b.test", 4));
    b.sink.wait_for_messages(8, WAIT);
    assert!(
        b.sink
            .messages()
            .iter()
            .any(|m| m.peer == lo(10) && m.local.ip() == lo(21)),
        "127.0.0.10 sent nothing to beta"
    );

    // After the cool-down mail probes 127.0.0.10 at alpha again; now accepted, it stays in.
    b.sink.set_script(None);
    let until = h["until"].as_u64().unwrap();
    assert!(wait_until(WAIT, || hold(admin, "127.0.0.10", "alpha").is_none()));
    assert!(now_s() >= until);
    let mut n = 8;
    assert!(
        wait_until(WAIT, || {
            submit(&relay, &rcpts(&format!("p{n}-"), "a.test", 2));
            n += 2;
            b.sink.wait_for_messages(n, WAIT);
            to_alpha_from(&b.sink, 10) > 0
        }),
        "no probe from 127.0.0.10 after the cool-down\n{}",
        relay.log()
    );
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Content rejections for 127.0.0.10 at alpha; `permfail…@` is an unknown user everywhere.
fn spam_from_10_at_alpha(s: &Step) -> Option<String> {
    if let Stage::RcptTo(a) = &s.stage
        && a.starts_with("permfail")
    {
        return Some(format!(
            "550 5.1.1 <{a}>: Recipient address rejected: User unknown"
        ));
    }
    (matches!(s.stage, Stage::RcptTo(_)) && s.peer == lo(10) && s.local.ip() == lo(20))
        .then(|| "554 5.7.1 Message rejected as spam by content filter".to_string())
}

#[test]
fn hard_bounce_rate_quarantines_bad_recipients_only_warn() {
    let b = bench(Some(spam_from_10_at_alpha));
    let (relay, admin) = start(
        "rep-rate",
        &b,
        "[reputation]\nwindow = 10\nmin_samples = 4\nmax_bounce_rate = 0.3\nbad_recipient_warning = 0.5\n",
    );
    // Unknown recipients at beta from both IPs: the list's fault, never the IP's.
    submit(
        &relay,
        &(0..8)
            .map(|i| format!("permfail{i}@b.test"))
            .collect::<Vec<_>>(),
    );
    assert!(relay.wait_for_log("list hygiene", WAIT), "{}", relay.log());
    assert!(relay.log().contains("sender=snd.test"));
    assert!(
        hold(admin, "127.0.0.10", "beta").is_none() && hold(admin, "127.0.0.11", "beta").is_none()
    );

    // Content rejections of 127.0.0.10 at alpha: a hard-bounce rate, quarantined once the
    // window has 4 samples.
    submit(&relay, &rcpts("c", "a.test", 12));
    assert!(
        wait_until(WAIT, || hold(admin, "127.0.0.10", "alpha").is_some()),
        "{}",
        relay.log()
    );
    let h = hold(admin, "127.0.0.10", "alpha").unwrap();
    assert_eq!(h["reason"], "hard-bounce rate", "{h}");
    let ev = h["evidence"].as_str().unwrap();
    assert!(
        ev.contains("4 hard bounces") && ev.contains("in the last 4 outcomes"),
        "{h}"
    );
    // The numbers behind it: GET /api/reputation.
    let rep = get(admin, "/api/reputation");
    let row = |provider: &str| {
        rep["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ip"] == "127.0.0.10" && r["provider"] == provider)
            .unwrap_or_else(|| panic!("{rep}"))
            .clone()
    };
    assert_eq!(row("alpha")["offences"], 1, "{rep}");
    assert!(
        row("beta")["bad_recipients"].as_u64().unwrap() >= 1,
        "{rep}"
    );
    assert_eq!(row("beta")["hard_bounces"], 0, "{rep}");
    // Those were real bounces (the content's fault); deliveries already under way from
    // 127.0.0.10 finish (and bounce), the rest went from 127.0.0.11.
    assert!(wait_until(WAIT, || relay.queued_ids().is_empty()));
    assert_eq!(to_alpha_from(&b.sink, 10), 0);
    let delivered = to_alpha_from(&b.sink, 11);
    assert!((6..=8).contains(&delivered), "{delivered}");
    // From now on alpha mail goes from 127.0.0.11 only, and is accepted.
    submit(&relay, &rcpts("d", "a.test", 4));
    assert!(wait_until(WAIT, || to_alpha_from(&b.sink, 11) == delivered + 4));
    assert_eq!(to_alpha_from(&b.sink, 10), 0);
    assert!(hold(admin, "127.0.0.11", "alpha").is_none());
}

fn rcpt_attempts(sink: &Sink, addr: &str) -> usize {
    sink.transcripts()
        .to_ascii_lowercase()
        .matches(&format!("rcpt to:<{addr}>"))
        .count()
}

#[test]
fn bad_recipient_bounce_suppresses_the_address_until_removed() {
    let b = bench(None);
    // The sender's domain is deliverable, so the DSNs land at the sink.
    b.dns.add_mx("c.test", 10, "mx.beta.test");
    let (mut relay, admin) = start("rep-suppress", &b, "[reputation]\nsuppress_for = \"1h\"\n");
    send_from(relay.addr(), "s@c.test", "permfail@b.test", "first");
    let dsn_about = |n: usize| {
        b.sink.wait_for_messages(n, WAIT);
        b.sink
            .messages()
            .into_iter()
            .filter(|m| m.mail_from.is_empty() && m.rcpt_to == ["s@c.test"])
            .map(|m| m.data_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(dsn_about(1).len(), 1);
    assert_eq!(rcpt_attempts(&b.sink, "permfail@b.test"), 1);

    // Listed by the API and the CLI, with the bounce that caused it.
    let (_, v) = http(admin, "GET", "/api/suppressions", None);
    let list = v["suppressions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["address"], "permfail@b.test");
    assert!(
        list[0]["reason"].as_str().unwrap().starts_with("550 5.1.1"),
        "{v}"
    );
    let out = suppression_cli(&relay, &["list"]);
    assert!(
        out.contains("permfail@b.test") && out.contains("550 5.1.1"),
        "{out}"
    );

    // The next message to it fails at once, with a DSN that says why; nothing is sent.
    send_from(relay.addr(), "s@c.test", "PermFail@b.test", "second");
    let dsns = dsn_about(2);
    assert_eq!(dsns.len(), 2, "{dsns:?}");
    assert!(
        dsns.iter()
            .any(|d| d.contains("suppressed until") && d.contains("poolrelay suppression remove")),
        "{dsns:?}"
    );
    assert_eq!(rcpt_attempts(&b.sink, "permfail@b.test"), 1);

    // Removed: tried again.
    let out = suppression_cli(&relay, &["remove", "permfail@b.test"]);
    assert!(out.contains("suppression removed"), "{out}");
    assert!(suppression_cli(&relay, &["list"]).contains("no suppressed recipients"));
    send_from(relay.addr(), "s@c.test", "permfail@b.test", "third");
    assert!(
        wait_until(WAIT, || rcpt_attempts(&b.sink, "permfail@b.test") == 2),
        "{}",
        b.sink.transcripts()
    );
    // It bounced again, so it is back on the list, and the list survives a restart.
    assert!(wait_until(WAIT, || suppression_cli(&relay, &["list"])
        .contains("permfail@b.test")));
    assert!(
        !relay.log().contains("cannot save suppressions"),
        "{}",
        relay.log()
    );
    // (Written within a second; a crash before that would lose only the newest ones.)
    let file = relay.data_dir().join("suppressions.json");
    assert!(wait_until(WAIT, || std::fs::read_to_string(&file)
        .is_ok_and(|t| t.contains("permfail@b.test"))));
    relay.restart();
    assert!(wait_until(WAIT, || TcpStream::connect(admin).is_ok()));
    assert!(suppression_cli(&relay, &["list"]).contains("permfail@b.test"));
}

/// A DNSBL refusal in the greeting to 127.0.0.10 at alpha's MX.
fn greeting_block_10_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::Connect) && s.peer == lo(10) && s.local.ip() == lo(20)).then(|| {
        "554 5.7.1 Service unavailable; Client host [127.0.0.10] blocked using zen.spamhaus.org"
            .to_string()
    })
}

#[test]
fn blocked_greeting_quarantines_and_the_mail_goes_from_another_ip() {
    let b = bench(Some(greeting_block_10_at_alpha));
    let (relay, admin) = start("rep-greeting", &b, "");
    submit(&relay, &rcpts("g", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    let h = hold(admin, "127.0.0.10", "alpha")
        .unwrap_or_else(|| panic!("not quarantined\n{}", relay.log()));
    assert!(
        h["evidence"]
            .as_str()
            .unwrap()
            .contains("dnsbl-blocked-using"),
        "{h}"
    );
    assert_eq!(to_alpha_from(&b.sink, 11), 4);
    assert!(!relay.log().contains("dsn queued"), "{}", relay.log());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits for the start of the next pool "hour" (`hour_ms` long, counted from the epoch).
fn next_hour(hour_ms: u64) {
    let next = (now_ms() / hour_ms + 1) * hour_ms;
    assert!(wait_until(WAIT, || now_ms() >= next));
}

fn alpha_10(admin: SocketAddr) -> Value {
    ip_entry(&pool_status(admin), "127.0.0.10")["providers"]["alpha"].clone()
}

#[test]
fn after_the_cooldown_a_probing_ip_takes_a_trickle_until_probes_reinstate_it() {
    // A warm-up day of 480 s: a pool "hour" of 20 s (margin for a loaded CI machine).
    const HOUR_MS: u64 = 20_000;
    let b = bench(Some(s3150_from_10_at_alpha));
    let (relay, admin) = start(
        "rep-probe",
        &b,
        "[warmup]\nday = \"480s\"\n[reputation]\ncooldown = \"3s\"\nprobe_per_hour = 2\nprobe_samples = 3\n",
    );
    submit(&relay, &rcpts("a", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    assert!(
        hold(admin, "127.0.0.10", "alpha").is_some(),
        "not quarantined\n{}",
        relay.log()
    );
    b.sink.set_script(None);
    assert!(wait_until(WAIT, || hold(admin, "127.0.0.10", "alpha").is_none()));

    // Probation: within one hour 127.0.0.10 sends 2 probes to alpha, 127.0.0.11 the other 8.
    next_hour(HOUR_MS);
    let hour = now_ms() / HOUR_MS;
    let (from10, from11) = (to_alpha_from(&b.sink, 10), to_alpha_from(&b.sink, 11));
    submit(&relay, &rcpts("p", "a.test", 10));
    b.sink.wait_for_messages(14, WAIT);
    assert_eq!(
        now_ms() / HOUR_MS,
        hour,
        "the probe phase outlasted its hour"
    );
    assert_eq!(
        (
            to_alpha_from(&b.sink, 10) - from10,
            to_alpha_from(&b.sink, 11) - from11
        ),
        (2, 8),
        "{}",
        relay.log()
    );
    let a = alpha_10(admin);
    assert_eq!(
        (a["state"].as_str(), a["probation"].as_bool()),
        (Some("probation"), Some(true)),
        "{a}"
    );
    assert_eq!(
        (a["used_hour"].as_u64(), a["cap_hour"].as_u64()),
        (Some(2), Some(2)),
        "{a}"
    );

    // Next hour: the third clean probe reinstates it.
    next_hour(HOUR_MS);
    let mut n = 14;
    assert!(
        wait_until(WAIT, || {
            submit(&relay, &rcpts(&format!("q{n}-"), "a.test", 2));
            n += 2;
            b.sink.wait_for_messages(n, WAIT);
            alpha_10(admin)["probation"] == false
        }),
        "probes did not reinstate 127.0.0.10\n{}",
        relay.log()
    );
    assert!(relay.log().contains("probe succeeded: pool IP reinstated"));
    let a = alpha_10(admin);
    assert_eq!(
        (a["state"].as_str(), a["cap_hour"].as_u64()),
        (Some("active"), None),
        "{a}"
    );

    // Its full share again: more than the trickle of 2 out of 10.
    let from10 = to_alpha_from(&b.sink, 10);
    submit(&relay, &rcpts("r", "a.test", 10));
    b.sink.wait_for_messages(n + 10, WAIT);
    let got = to_alpha_from(&b.sink, 10) - from10;
    assert!(got >= 4, "127.0.0.10 sent {got} of 10\n{}", relay.log());
}
