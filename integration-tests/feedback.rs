//! Complaint intake and tracing (issue 26): messages relayed through the real binary by two
//! logins from two pools, the bytes a sink received wrapped in the report shapes receivers send
//! (Microsoft JMRP with a nearly empty machine part, Yahoo CFL, headers only), sent over SMTP to
//! the feedback address, the CLI and the API; the traced complaint read back from
//! `GET /api/complaints`. The corpus test reads ../shared/ (run by .ci/run with `--ignored`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_poolrelay");
const FBL: &str = "fbl@relay.test";

struct Setup {
    dir: PathBuf,
    certs: Certs,
    bench: Bench,
    relay: Relay,
    admin: std::net::SocketAddr,
}

/// alice (shop.test, DKIM-signed) sends from pool "a" (127.0.0.11), bob (other.test, no key)
/// from pool "b" (127.0.0.12), to a.test (provider alpha, sink on 127.0.0.20). Only 127.0.0.1
/// is trusted: the tests' reporters on other loopback addresses are strangers.
fn setup(name: &str, feedback_extra: &str) -> Setup {
    setup_with(name, feedback_extra, "")
}

/// `setup` with more sections (`[cluster]`).
fn setup_with(name: &str, feedback_extra: &str, sections: &str) -> Setup {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &["relay.test"]);
    let users = write_users(&dir, &[("alice", "secret"), ("bob", "secret")]);
    let bench = bench(None);
    let (key, txt) = keygen(&dir, "shop.test", "s1", "ed25519");
    bench.dns.add_txt("s1._domainkey.shop.test", &txt);
    let cfg = bench
        .config()
        .listen("starttls", "optional")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("alice", &["shop.test"])
        .sender_login("bob", &["other.test"])
        .pool("a", &[PoolIp::new(11, "out-a.relay.test")])
        .pool("b", &[PoolIp::new(12, "out-b.relay.test")])
        .section("[[pool_rule]]\nuser = \"alice\"\npool = \"a\"\n\n[[pool_rule]]\nuser = \"bob\"\npool = \"b\"")
        .section(&format!(
            "[[dkim]]\ndomain = \"shop.test\"\nselector = \"s1\"\nprivate_key = \"{}\"",
            key.display()
        ))
        .section("[doctor]\nbackground = false")
        .section(sections)
        .section(&format!(
            "[feedback]\naddresses = [\"{FBL}\"]\nfeedback_id = [\"login\", \"sender-domain\", \"pool\"]\n\
             sender_id = \"poolrelay\"\n{feedback_extra}"
        ));
    let (relay, admin) = admin::start(&dir, &cfg, WAIT);
    Setup {
        dir,
        certs,
        bench,
        relay,
        admin,
    }
}

/// What one login sent, as the receiver got it.
struct Sent {
    queue_id: String,
    delivered: Vec<u8>,
    /// The source IP the sink saw.
    peer: std::net::IpAddr,
}

impl Setup {
    /// `login` submits one message (AUTH over STARTTLS from 127.0.0.66); returns its queue id
    /// and the bytes the sink got, once the relay has finished with it.
    fn send_as(&self, login: &str, from: &str, rcpt: &str, subject: &str) -> Sent {
        let before = self.bench.sink.messages().len();
        let mut c = SmtpClient::connect_from(self.relay.addr(), lo(66));
        c.ehlo("client.test");
        c.starttls("relay.test", &self.certs.ca);
        c.ehlo("client.test");
        c.auth_plain(login, "secret").expect(235);
        let msg = format!(
            "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\
             Date: Mon, 07 Dec 2026 17:00:00 +0000\r\nMessage-ID: <{subject}@{}>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nBuy now.\r\n",
            from.rsplit_once('@').unwrap().1
        );
        let r = c.send_mail(from, &[rcpt], msg.as_bytes());
        assert_eq!(r.code, 250, "{r}\n{}", self.relay.log());
        let queue_id = r.text.rsplit(' ').next().unwrap().trim().to_string();
        c.quit();
        let msgs = self.bench.sink.wait_for_messages(before + 1, WAIT);
        let m = msgs
            .iter()
            .find(|m| m.subject() == subject)
            .expect("delivered")
            .clone();
        // The delivery record is written before the relay logs the attempt.
        assert!(
            wait_until(WAIT, || self
                .relay
                .log()
                .lines()
                .any(|l| l.contains(&queue_id) && l.contains("delivery attempt"))),
            "{}",
            self.relay.log()
        );
        Sent {
            queue_id,
            delivered: m.data,
            peer: m.peer,
        }
    }

    /// One report over SMTP from `client` (no AUTH): the reply at the end of DATA.
    fn report_smtp(&self, client: u8, report: &[u8]) -> Reply {
        let mut c = SmtpClient::connect_from(self.relay.addr(), lo(client));
        c.ehlo("reporter.test");
        c.cmd("MAIL FROM:<>").expect(250);
        let r = c.cmd(&format!("RCPT TO:<{FBL}>"));
        if r.code != 250 {
            return r;
        }
        let r = c.data(report);
        c.quit();
        r
    }

    fn complaints(&self) -> Vec<Value> {
        admin::get(self.admin, "/api/complaints")["complaints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn complaint_of(&self, queue_id: &str) -> Value {
        self.complaints()
            .into_iter()
            .find(|c| c["queue_id"] == queue_id)
            .unwrap_or_else(|| panic!("no complaint for {queue_id}: {:?}", self.complaints()))
    }

    fn reports_counted(&self, result: &str) -> u64 {
        let text = admin::get_text(self.admin, "/metrics");
        let needle = format!("poolrelay_feedback_reports_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The receiver's own Received line on top of what it got.
fn as_received(s: &Sent, rcpt: &str) -> Vec<u8> {
    let mut out = format!(
        "Received: from out.relay.test ({ip}) by mx.alpha.test with ESMTP;\r\n\
         \tMon, 07 Dec 2026 17:00:01 +0000\r\nX-HmXmrOriginalRecipient: <{rcpt}>\r\n",
        ip = s.peer
    )
    .into_bytes();
    out.extend_from_slice(&s.delivered);
    out
}

/// Microsoft JMRP: an ARF container whose machine part says little more than the type; the
/// facts are in the attached original.
fn jmrp(original: &[u8]) -> Vec<u8> {
    let mut r =
        b"From: staff@hotmail.test\r\nTo: fbl@relay.test\r\nSubject: complaint about message\r\n\
        Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/report; report-type=feedback-report; boundary=\"jmrp_b\"\r\n\r\n\
        --jmrp_b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\
        --jmrp_b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
        User-Agent: Microsoft JMRP\r\nVersion: 1.0\r\n\r\n\
        --jmrp_b\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
            .to_vec();
    r.extend_from_slice(original);
    r.extend_from_slice(b"\r\n--jmrp_b--\r\n");
    r
}

/// Yahoo CFL: ARF, the recipient redacted, the original attached (`part` = `message/rfc822`)
/// or only its header section (`text/rfc822-headers`).
fn cfl(original: &[u8], part: &str) -> Vec<u8> {
    let original = if part == "text/rfc822-headers" {
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(original.len(), |p| p + 4);
        &original[..end]
    } else {
        original
    };
    let mut r = format!(
        "From: feedback@yahoo.test\r\nTo: fbl@relay.test\r\nSubject: Yahoo CFL report\r\n\
         Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"cfl_b\"\r\n\r\n\
         --cfl_b\r\nContent-Type: text/plain\r\n\r\nThis is a complaint.\r\n\
         --cfl_b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 0.1\r\n\
         Original-Rcpt-To: redacted@yahoo.test\r\nArrival-Date: Mon, 07 Dec 2026 17:00:01 +0000\r\n\r\n\
         --cfl_b\r\nContent-Type: {part}\r\n\r\n"
    )
    .into_bytes();
    r.extend_from_slice(original);
    r.extend_from_slice(b"\r\n--cfl_b--\r\n");
    r
}

fn header_value(msg: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n").peekable();
    while let Some(l) = lines.next() {
        if let Some((n, v)) = l.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            let mut v = v.to_string();
            while let Some(next) = lines.peek().filter(|n| n.starts_with([' ', '\t'])) {
                v.push_str(next);
                lines.next();
            }
            return Some(v.trim().to_string());
        }
    }
    None
}

/// Replaces the first trace header's value in `msg` by `f(value)`.
fn with_trace(msg: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
    let text = format!("\r\n{}", String::from_utf8_lossy(msg));
    // At a line start (the DKIM-Signature's h= names it too).
    let name = "\r\nX-Poolrelay-Trace:";
    let start = text.find(name).expect("trace header") + name.len();
    let mut end = start;
    loop {
        let eol = end + text[end..].find("\r\n").unwrap();
        end = eol + 2;
        if !text[end..].starts_with([' ', '\t']) {
            break;
        }
    }
    let value: String = text[start..end].split_whitespace().collect();
    format!("{} {}\r\n{}", &text[2..start], f(&value), &text[end..]).into_bytes()
}

#[test]
fn relayed_messages_carry_a_signed_opaque_trace_and_a_feedback_id() {
    let s = setup("fb-headers", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let bob = s.send_as("bob", "bob@other.test", "two@a.test", "m2");
    let trace = header_value(&alice.delivered, "X-Poolrelay-Trace").expect("trace header");
    assert!(trace.starts_with("v1."), "{trace}");
    assert!(
        !trace.contains("alice") && !trace.contains(&alice.queue_id),
        "the reference must not show the login or queue id: {trace}"
    );
    assert_eq!(
        header_value(&alice.delivered, "Feedback-ID").as_deref(),
        Some("alice:shop.test:a:poolrelay")
    );
    // Signed: the signature lists the trace header and verifies.
    let sig = header_value(&alice.delivered, "DKIM-Signature").expect("signed");
    let h: String = sig.split_whitespace().collect();
    assert!(
        h.to_ascii_lowercase().contains("x-poolrelay-trace"),
        "h= must cover the trace header: {sig}"
    );
    let results = verify_dkim(&s.bench.dns, &alice.delivered);
    assert!(
        results.contains(&mail_auth::DkimResult::Pass),
        "{results:?}"
    );
    // Without a DKIM key both headers are still there.
    assert!(header_value(&bob.delivered, "X-Poolrelay-Trace").is_some());
    assert_eq!(
        header_value(&bob.delivered, "Feedback-ID").as_deref(),
        Some("bob:other.test:b:poolrelay")
    );
    assert_eq!((alice.peer, bob.peer), (lo(11), lo(12)));
}

#[test]
fn jmrp_and_cfl_reports_trace_to_the_ip_login_and_queue_id() {
    let s = setup("fb-trace", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let bob = s.send_as("bob", "bob@other.test", "two@a.test", "m2");

    let r = s.report_smtp(77, &jmrp(&as_received(&alice, "one@a.test")));
    assert_eq!(r.code, 250, "{r}\n{}", s.relay.log());
    let c = s.complaint_of(&alice.queue_id);
    assert_eq!(c["login"], "alice");
    assert_eq!(c["source_ip"], "127.0.0.11");
    assert_eq!(c["provider"], "alpha");
    assert_eq!(c["sender_domain"], "shop.test");
    assert_eq!(c["recipient"], "one@a.test");
    assert_eq!(c["evidence"], "trace");
    assert_eq!(c["feedback_type"], "abuse");
    assert_eq!(c["dispatched"], true);

    // CFL with only the original's header section, recipient redacted.
    let r = s.report_smtp(78, &cfl(&bob.delivered, "text/rfc822-headers"));
    assert_eq!(r.code, 250, "{r}");
    let c = s.complaint_of(&bob.queue_id);
    assert_eq!(c["login"], "bob");
    assert_eq!(c["source_ip"], "127.0.0.12");
    assert_eq!(c["provider"], "alpha");
    assert_eq!(c["sender_domain"], "other.test");
    assert_eq!(c["recipient"], "two@a.test");
    assert_eq!(c["evidence"], "trace");
    assert_eq!(c["shape"], "arf-headers");
    assert_eq!(s.reports_counted("complaint"), 2);
    // Reports are never relayed.
    assert_eq!(s.bench.sink.messages().len(), 2);
    assert!(s.relay.log().contains("feedback: complaint traced"));
}

#[test]
fn reports_that_lost_the_trace_fall_back_to_received_and_the_records() {
    let s = setup("fb-fallback", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    // A receiver that dropped our header: its Received names our IP.
    let stripped = as_received(&alice, "one@a.test");
    let text = String::from_utf8_lossy(&stripped).replace("X-Poolrelay-Trace:", "X-Dropped:");
    let r = s.report_smtp(77, &cfl(text.as_bytes(), "message/rfc822"));
    assert_eq!(r.code, 250, "{r}");
    let c = s.complaint_of(&alice.queue_id);
    assert_eq!(c["evidence"], "received");
    assert_eq!(c["source_ip"], "127.0.0.11");
    assert_eq!(c["login"], "alice");
    // Nor a Received naming us: the Message-ID finds the delivery record.
    let bare =
        String::from_utf8_lossy(&alice.delivered).replace("X-Poolrelay-Trace:", "X-Dropped:");
    let (code, v) = admin::http(
        s.admin,
        "POST",
        "/api/feedback",
        Some(
            json!({ "report": String::from_utf8(cfl(bare.as_bytes(), "message/rfc822")).unwrap() }),
        ),
    );
    assert_eq!(code, 200, "{v}");
    // Traced, but the message (one recipient) drew its complaint already: not counted twice.
    assert_eq!(v["result"], "duplicate", "{v}");
    assert_eq!(v["complaint"]["dispatched"], false);
    assert_eq!(v["complaint"]["evidence"], "records");
    assert_eq!(v["complaint"]["queue_id"], alice.queue_id.as_str());
    assert_eq!(v["complaint"]["source_ip"], "127.0.0.11");
    assert_eq!(v["complaint"]["login"], "alice");
    // The report's own Source-IP names our IP; the records fill in the rest.
    let with_ip = String::from_utf8(cfl(bare.as_bytes(), "message/rfc822"))
        .unwrap()
        .replace(
            "Version: 0.1\r\n",
            "Version: 0.1\r\nSource-IP: 127.0.0.11\r\n",
        );
    let (code, v) = admin::http(
        s.admin,
        "POST",
        "/api/feedback",
        Some(json!({ "report": with_ip })),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["complaint"]["evidence"], "source-ip", "{v}");
    assert_eq!(v["complaint"]["source_ip"], "127.0.0.11");
    assert_eq!(v["complaint"]["queue_id"], alice.queue_id.as_str());
    assert_eq!(v["complaint"]["provider"], "alpha");
    assert_eq!(s.reports_counted("complaint"), 1);
    assert_eq!(s.reports_counted("duplicate"), 2);
    assert_eq!(s.complaints().len(), 1);
}

#[test]
fn forged_or_altered_references_are_refused_and_attribute_nothing() {
    let s = setup("fb-forged", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let bob = s.send_as("bob", "bob@other.test", "two@a.test", "m2");
    // Someone rewrites bob's reference to frame alice: flip one sealed character.
    let altered = with_trace(&bob.delivered, |v| {
        let mut b = v.as_bytes().to_vec();
        let i = b.len() - 3;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    });
    let r = s.report_smtp(77, &jmrp(&altered));
    assert_eq!((r.code, r.text.contains("5.7.1")), (550, true), "{r}");
    // A reference made without our key (other key id, or ours with made-up data).
    let foreign = with_trace(&alice.delivered, |_| {
        "v1.0badc0de.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()
    });
    let r = s.report_smtp(78, &cfl(&foreign, "message/rfc822"));
    assert_eq!(r.code, 550, "{r}");
    assert!(s.complaints().is_empty(), "{:?}", s.complaints());
    assert_eq!(s.reports_counted("forged"), 2);
    // The API says so too.
    let (code, v) = admin::http(
        s.admin,
        "POST",
        "/api/feedback",
        Some(json!({ "report": String::from_utf8_lossy(&jmrp(&altered)) })),
    );
    assert_eq!((code, v["result"].as_str()), (422, Some("forged")), "{v}");
    assert!(s.complaints().is_empty());
}

#[test]
fn a_message_that_is_not_a_report_is_accepted_counted_and_never_relayed() {
    let s = setup("fb-not-report", "");
    let r = s.report_smtp(
        77,
        b"From: someone@else.test\r\nTo: fbl@relay.test\r\nSubject: please unsubscribe me\r\n\r\nthanks\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(s.reports_counted("not-a-report"), 1);
    assert!(s.complaints().is_empty());
    assert!(s.relay.log().contains("feedback: not a report"));
    assert!(s.relay.queued_ids().is_empty());
    assert!(s.bench.sink.messages().is_empty());
}

/// The state store holds the trace keys: nobody but poolrelay's user reads it.
#[test]
fn the_state_store_with_the_trace_keys_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup("fb-private-state", "");
    let meta = std::fs::metadata(s.dir.join("data/state.redb")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // The first start makes the key, and says so (its id, never the key).
    let log = s.relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("made a new one"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("refused as forged") && line.contains("key="),
        "{line}"
    );
}

#[test]
fn strangers_may_only_give_feedback_recipients_within_size_and_rate() {
    let s = setup("fb-limits", "max_size = \"16KiB\"\nper_client_hourly = 2");
    let mut c = SmtpClient::connect_from(s.relay.addr(), lo(77));
    c.ehlo("stranger.test");
    c.cmd("MAIL FROM:<x@stranger.test>").expect(250);
    c.cmd(&format!("RCPT TO:<{FBL}>")).expect(250);
    // No relaying beside it.
    let r = c.cmd("RCPT TO:<victim@a.test>");
    assert_eq!(r.code, 554, "{r}");
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789012345678901234567890123456789012345678901234567890123456789\r\n".repeat(300)
    );
    let r = c.data(big.as_bytes());
    assert_eq!((r.code, r.text.contains("5.3.4")), (552, true), "{r}");
    // That was the first of two reports this hour; the second goes through, the third waits.
    c.cmd("MAIL FROM:<x@stranger.test>").expect(250);
    c.cmd(&format!("RCPT TO:<{FBL}>")).expect(250);
    c.data(b"Subject: two\r\n\r\nhi\r\n").expect(250);
    c.cmd("MAIL FROM:<x@stranger.test>").expect(250);
    let r = c.cmd(&format!("RCPT TO:<{FBL}>"));
    assert_eq!((r.code, r.text.contains("4.7.1")), (450, true), "{r}");
    c.quit();
    // A client that may relay keeps reports and mail apart.
    let mut c = SmtpClient::connect(s.relay.addr());
    c.ehlo("trusted.test");
    c.cmd("MAIL FROM:<x@shop.test>").expect(250);
    c.cmd("RCPT TO:<one@a.test>").expect(250);
    let r = c.cmd(&format!("RCPT TO:<{FBL}>"));
    assert_eq!((r.code, r.text.contains("4.5.3")), (452, true), "{r}");
    c.quit();
    // Another client is not held back.
    let r = s.report_smtp(78, b"Subject: other\r\n\r\nhi\r\n");
    assert_eq!(r.code, 250, "{r}");
    assert!(s.bench.sink.messages().is_empty());
}

/// Two relays of one farm (a real redis-server): a report about a message one relay sent,
/// arriving at the other, verifies with the farm's key and names the login and queue id.
#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_farm_shares_the_trace_key() {
    let redis_dir = tempdir("fb-farm-redis");
    let redis = RedisServer::start(&redis_dir);
    let farm = |node: &str| {
        format!(
            "[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nprefix = \"farm\"",
            redis.url()
        )
    };
    let one = setup_with("fb-farm-1", "", &farm("one"));
    let two = setup_with("fb-farm-2", "", &farm("two"));
    let alice = one.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let r = two.report_smtp(77, &jmrp(&as_received(&alice, "one@a.test")));
    assert_eq!(r.code, 250, "{r}\n{}", two.relay.log());
    let c = two.complaint_of(&alice.queue_id);
    assert_eq!(c["evidence"], "trace");
    assert_eq!(c["login"], "alice");
    // The other relay has no delivery record: the receiver's Received names the IP.
    assert_eq!(c["source_ip"], "127.0.0.11");
    // Both seal with the same key, kept in each relay's state store.
    let bob = two.send_as("bob", "bob@other.test", "two@a.test", "m2");
    let r = one.report_smtp(78, &cfl(&bob.delivered, "text/rfc822-headers"));
    assert_eq!(r.code, 250, "{r}\n{}", one.relay.log());
    assert_eq!(one.complaint_of(&bob.queue_id)["login"], "bob");
}

/// Runs `poolrelay feedback` in the relay's directory with `input` on stdin.
fn cli(dir: &Path, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["feedback", "--config", "poolrelay.toml"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run poolrelay feedback");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_cli_hands_a_report_to_the_running_relay() {
    let s = setup("fb-cli", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let (code, out) = cli(&s.dir, &[], &jmrp(&as_received(&alice, "one@a.test")));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "complaint queue_id={} login=alice source_ip=127.0.0.11",
            alice.queue_id
        )),
        "{out}"
    );
    let altered = with_trace(&alice.delivered, |v| format!("{v}x"));
    let (code, out) = cli(&s.dir, &[], &jmrp(&altered));
    assert_eq!(code, 77, "forged → EX_NOPERM: {out}");
    let (code, out) = cli(&s.dir, &["--list"], b"");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// The feedback reports of the bounce corpus (Sisimai's reason `feedback`): the ARF ones are
/// reports (of messages we did not send: untraced), the others (Apple's unsubscribe mail, an
/// SES JSON notification) are not; none is an error.
#[test]
#[ignore = "reads ../shared/corpus/bounces (run by .ci/run)"]
fn corpus_feedback_reports_are_read() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/bounces");
    let expected = std::fs::read_to_string(corpus.join("expected.tsv"))
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()));
    let mut files: Vec<String> = expected
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.get(4) == Some(&"feedback")).then(|| f[0].to_string())
        })
        .collect();
    files.dedup();
    assert!(files.len() >= 7, "{files:?}");
    let s = setup("fb-corpus", "");
    for f in &files {
        let raw = std::fs::read(corpus.join("eml").join(f)).unwrap();
        let (code, v) = admin::http(
            s.admin,
            "POST",
            "/api/feedback",
            Some(json!({ "report_base64": base64_of(&raw) })),
        );
        assert_eq!(code, 200, "{f}: {v}");
        let want = if f.starts_with("arf-") && f != "arf-26.eml" {
            "untraced"
        } else {
            "not-a-report"
        };
        assert_eq!(v["result"], want, "{f}: {v}");
    }
}

fn base64_of(raw: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The last complaint `GET /api/complaints` lists.
fn last_complaint(s: &Setup) -> Value {
    s.complaints().pop().expect("a complaint")
}

/// A stranger's report without a trace header, naming a pool IP (`Source-IP`, or a
/// `Received:` of the original) and a victim's `From:`: counts against the IP, names nobody.
#[test]
fn a_report_without_a_trace_names_no_customer_from_its_own_content() {
    let s = setup("fb-untraced-content", "");
    s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let forged = b"From: x@shop.test\r\nTo: someone@a.test\r\nSubject: framed\r\n\
        Message-ID: <made-up@shop.test>\r\n\r\nhi\r\n";
    let report = String::from_utf8(cfl(forged, "message/rfc822"))
        .unwrap()
        .replace(
            "Version: 0.1\r\n",
            "Version: 0.1\r\nSource-IP: 127.0.0.11\r\n",
        );
    let r = s.report_smtp(77, report.as_bytes());
    assert_eq!(r.code, 250, "{r}");
    let c = last_complaint(&s);
    assert_eq!(c["evidence"], "source-ip", "{c}");
    assert_eq!(c["source_ip"], "127.0.0.11", "{c}");
    assert_eq!(c["sender_domain"], Value::Null, "{c}");
    assert_eq!(c["login"], Value::Null, "{c}");
    assert_eq!(c["queue_id"], Value::Null, "{c}");
    // The same through a Received: naming bob's pool IP.
    let forged = b"Received: from out (out [127.0.0.12]) by mx.a.test\r\n\
        From: y@other.test\r\nTo: someone@a.test\r\nSubject: framed 2\r\n\r\nhi\r\n";
    let r = s.report_smtp(78, &jmrp(forged));
    assert_eq!(r.code, 250, "{r}");
    let c = last_complaint(&s);
    assert_eq!(c["evidence"], "received", "{c}");
    assert_eq!(c["source_ip"], "127.0.0.12", "{c}");
    assert_eq!(c["sender_domain"], Value::Null, "{c}");
    assert_eq!(c["login"], Value::Null, "{c}");
    assert_eq!(s.reports_counted("complaint"), 2);
}

/// A genuine Message-ID without the recipient it went to finds where the message went (IP,
/// provider), not who sent it: Message-IDs are seen by every recipient.
#[test]
fn a_message_id_alone_does_not_name_the_login() {
    let s = setup("fb-mid-alone", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let bare = String::from_utf8_lossy(&alice.delivered)
        .replace("X-Poolrelay-Trace:", "X-Dropped:")
        .replace("To: <one@a.test>\r\n", "");
    let r = s.report_smtp(77, &cfl(bare.as_bytes(), "message/rfc822"));
    assert_eq!(r.code, 250, "{r}");
    let c = last_complaint(&s);
    assert_eq!(c["evidence"], "records", "{c}");
    assert_eq!(c["source_ip"], "127.0.0.11", "{c}");
    assert_eq!(c["provider"], "alpha", "{c}");
    assert_eq!(c["login"], Value::Null, "{c}");
    assert_eq!(c["sender_domain"], Value::Null, "{c}");
    assert_eq!(c["queue_id"], Value::Null, "{c}");
}

/// A genuine trace header copied onto another message (as a client can when stamping is off)
/// is passed over: the report traces to the message it is about, by its own records.
#[test]
fn a_trace_header_copied_onto_another_message_is_passed_over() {
    let s = setup("fb-copied-trace", "");
    let alice = s.send_as("alice", "alice@shop.test", "one@a.test", "m1");
    let bob = s.send_as("bob", "bob@other.test", "two@a.test", "m2");
    let alices = header_value(&alice.delivered, "X-Poolrelay-Trace").unwrap();
    // bob's message as a relay with `trace = false` delivers it: alice's header on top.
    let copied = with_trace(&bob.delivered, |_| alices.clone());
    let r = s.report_smtp(77, &jmrp(&copied));
    assert_eq!(r.code, 250, "{r}\n{}", s.relay.log());
    let c = last_complaint(&s);
    assert_ne!(c["login"], "alice", "{c}");
    assert_eq!(c["evidence"], "records", "{c}");
    assert_eq!(c["queue_id"], bob.queue_id.as_str(), "{c}");
    assert_eq!(c["login"], "bob", "{c}");
    assert_eq!(c["sender_domain"], "other.test", "{c}");
    assert!(s.relay.log().contains("trace header of another message"));
}

/// One traced message to three recipients: reports naming recipients it never went to draw one
/// complaint between them; each real recipient's report counts once.
#[test]
fn made_up_recipients_draw_one_complaint_per_message() {
    let s = setup("fb-made-up-rcpts", "");
    let before = s.bench.sink.messages().len();
    let mut c = SmtpClient::connect_from(s.relay.addr(), lo(66));
    c.ehlo("client.test");
    c.starttls("relay.test", &s.certs.ca);
    c.ehlo("client.test");
    c.auth_plain("alice", "secret").expect(235);
    let rcpts = ["one@a.test", "two@a.test", "three@a.test"];
    let msg = "From: <alice@shop.test>\r\nTo: <list@shop.test>\r\nSubject: m3\r\n\
               Date: Mon, 07 Dec 2026 17:00:00 +0000\r\nMessage-ID: <m3@shop.test>\r\n\r\nBuy.\r\n";
    let r = c.send_mail("alice@shop.test", &rcpts, msg.as_bytes());
    assert_eq!(r.code, 250, "{r}");
    let queue_id = r.text.rsplit(' ').next().unwrap().trim().to_string();
    c.quit();
    let msgs = s.bench.sink.wait_for_messages(before + 1, WAIT);
    let m = msgs.iter().find(|m| m.subject() == "m3").unwrap().clone();
    assert!(
        wait_until(WAIT, || s
            .relay
            .log()
            .lines()
            .any(|l| l.contains(&queue_id) && l.contains("delivery attempt"))),
        "{}",
        s.relay.log()
    );
    let sent = Sent {
        queue_id: queue_id.clone(),
        delivered: m.data,
        peer: m.peer,
    };
    let results: Vec<u16> = ["x1@a.test", "x2@a.test", "x3@a.test"]
        .iter()
        .map(|fake| s.report_smtp(77, &jmrp(&as_received(&sent, fake))).code)
        .collect();
    assert_eq!(results, [250, 250, 250]);
    assert_eq!(s.reports_counted("complaint"), 1, "{}", s.relay.log());
    assert_eq!(s.reports_counted("duplicate"), 2);
    // A recipient it went to counts, once.
    s.report_smtp(78, &jmrp(&as_received(&sent, "two@a.test")))
        .expect(250);
    s.report_smtp(78, &jmrp(&as_received(&sent, "two@a.test")))
        .expect(250);
    assert_eq!(s.reports_counted("complaint"), 2);
    assert_eq!(s.reports_counted("duplicate"), 3);
    let charged: Vec<Value> = s
        .complaints()
        .into_iter()
        .filter(|c| c["queue_id"] == queue_id.as_str())
        .collect();
    assert_eq!(charged.len(), 2, "{charged:?}");
    assert_eq!(charged[1]["recipient"], "two@a.test");
}
