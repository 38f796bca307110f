//! Watching the farm (issue 13): `/metrics` scraped and parsed as Prometheus would, queue control
//! round trips through the API and the CLI, history after a quarantine and a reinstatement.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::admin::{get_text, hold_of, http};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// DNS with `a.test` → mx.alpha.test (127.0.0.20) and `b.test` → mx.beta.test (127.0.0.21), one
/// sink on both, and a relay sending from 127.0.0.10 and .11 with providers alpha and beta.
struct Bench {
    dns: DnsServer,
    sink: Sink,
    relay: Relay,
    admin: SocketAddr,
}

fn bench(name: &str, script: fn(&Step) -> Option<String>, retry: &str, rest: &str) -> Bench {
    let ips = [PoolIp::new(10, "out10.test"), PoolIp::new(11, "out11.test")];
    bench_with(name, script, retry, rest, &ips)
}

/// `bench` where alpha blocks 127.0.0.10 and the block holds for an hour.
fn blocking_bench(name: &str) -> Bench {
    bench(
        name,
        block_10_at_alpha,
        "1s",
        "[reputation]\ncooldown = \"1h\"",
    )
}

/// A refused command for the counters: a null recipient, refused with 501.
fn refused_null_rcpt(relay: &Relay) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<s@snd.test>").expect(250);
    c.cmd("RCPT TO:<>").expect(501);
    c.quit();
}

fn bench_with(
    name: &str,
    script: fn(&Step) -> Option<String>,
    retry: &str,
    rest: &str,
    ips: &[PoolIp],
) -> Bench {
    let dns = DnsServer::start();
    let sink = Sink::builder(&[lo(20), lo(21)]).script(script).start();
    dns.add_mx("a.test", 10, "mx.alpha.test");
    dns.add_ip("mx.alpha.test", lo(20));
    dns.add_mx("b.test", 10, "mx.beta.test");
    dns.add_ip("mx.beta.test", lo(21));
    // Senders' domain: DSNs go to beta too.
    dns.add_mx("snd.test", 10, "mx.beta.test");
    let cfg = RelayConfig::new()
        .dns(&dns)
        .delivery_port(sink.port())
        .delivery("idle_timeout", "\"0s\"")
        .delivery("retry", format!("[\"{retry}\"]"))
        .admin()
        .provider("alpha", &["alpha.test"])
        .provider("beta", &["beta.test"])
        .pool("default", ips)
        .section(rest);
    let relay = Relay::start(&tempdir(name), &cfg.to_toml());
    let admin = cfg.admin_addr().unwrap();
    assert!(
        wait_until(WAIT, || std::net::TcpStream::connect(admin).is_ok()),
        "admin API not listening\n{}",
        relay.log()
    );
    Bench {
        dns,
        sink,
        relay,
        admin,
    }
}

fn submit(relay: &Relay, rcpts: &[String]) -> Vec<String> {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let mut ids = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        let body = format!("From: <s@snd.test>\r\nSubject: m{i}\r\n\r\nHello.\r\n");
        let reply = c.send_mail("s@snd.test", &[r.as_str()], body.as_bytes());
        assert_eq!(reply.code, 250, "submit {r}: {reply}");
        ids.push(reply.text.rsplit(' ').next().unwrap().to_string());
    }
    c.quit();
    ids
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// Microsoft's block-list reply to 127.0.0.10 at alpha's MX (127.0.0.20) only.
fn block_10_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::RcptTo(_)) && s.peer == lo(10) && s.local.ip() == lo(20)).then(|| {
        "550 5.7.1 Unfortunately, messages from [127.0.0.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).".to_string()
    })
}

/// Parsed `/metrics`.
fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let text = get_text(admin, "/metrics");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// `GET /metrics` with `Accept: accept` (none when empty): (Content-Type, body).
fn scrape_as(admin: SocketAddr, accept: &str) -> (String, String) {
    let bearer = format!("Bearer {}", common::admin::token(admin));
    let mut headers = vec![("Authorization", bearer.as_str())];
    if !accept.is_empty() {
        headers.push(("Accept", accept));
    }
    let (code, head, body) = common::admin::request(admin, "GET", "/metrics", &headers, "");
    assert_eq!(code, 200, "{head}\n{body}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body)
}

const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sum of the samples of `name` whose labels include every one of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn metrics_count_known_traffic() {
    let b = blocking_bench("observe-metrics");
    refused_null_rcpt(&b.relay);
    submit(&b.relay, &rcpts("a", "a.test", 4));
    submit(&b.relay, &rcpts("b", "b.test", 2));
    b.sink.wait_for_messages(6, WAIT);
    // Deliveries are counted when recorded, just after the sink has the message.
    let mut s = scrape(b.admin);
    assert!(
        wait_until(WAIT, || {
            s = scrape(b.admin);
            value(&s, "poolrelay_queue_messages", &[]) == 0.0
                && value(
                    &s,
                    "poolrelay_delivery_outcomes_total",
                    &[("class", "sent")],
                ) == 6.0
        }),
        "{:?}",
        get_text(b.admin, "/metrics")
    );
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(
        v("poolrelay_messages_accepted_total", &[("tls", "no")]),
        6.0
    );
    assert_eq!(
        v(
            "poolrelay_messages_refused_total",
            &[("stage", "rcpt"), ("code", "501")]
        ),
        1.0
    );
    assert_eq!(
        v("poolrelay_dkim_messages_total", &[("result", "unsigned")]),
        6.0
    );
    // 127.0.0.10 was blocked at alpha (then quarantined there), so .11 sent every alpha
    // message; beta took mail from both.
    let ten = [("ip", "127.0.0.10"), ("provider", "alpha")];
    let blocks = v(
        "poolrelay_delivery_outcomes_total",
        &[ten[0], ten[1], ("class", "block")],
    );
    assert!(blocks >= 1.0, "{blocks}");
    assert_eq!(
        v(
            "poolrelay_delivery_outcomes_total",
            &[ten[0], ten[1], ("class", "sent")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "poolrelay_delivery_outcomes_total",
            &[
                ("ip", "127.0.0.11"),
                ("provider", "alpha"),
                ("class", "sent")
            ]
        ),
        4.0
    );
    assert_eq!(
        v(
            "poolrelay_delivery_outcomes_total",
            &[("provider", "beta"), ("class", "sent")]
        ),
        2.0
    );
    assert_eq!(
        v("poolrelay_outbound_transactions_total", &[("tls", "no")]),
        6.0 + blocks
    );
    assert_eq!(
        v(
            "poolrelay_ip_state",
            &[ten[0], ten[1], ("state", "quarantined")]
        ),
        1.0
    );
    assert_eq!(
        v("poolrelay_ip_state", &[ten[0], ten[1], ("state", "active")]),
        0.0
    );
    assert_eq!(
        v(
            "poolrelay_ip_state",
            &[
                ("ip", "127.0.0.10"),
                ("provider", "all"),
                ("state", "active")
            ]
        ),
        1.0
    );
    assert_eq!(
        v(
            "poolrelay_warmup_used_today",
            &[("ip", "127.0.0.11"), ("provider", "alpha")]
        ),
        4.0
    );
    assert_eq!(v("poolrelay_queue_oldest_age_seconds", &[]), 0.0);
    assert!(v("poolrelay_spool_free_bytes", &[]) > 0.0);
    assert_eq!(v("poolrelay_inbound_sessions", &[]), 0.0);

    // Negotiated: text 0.0.4 for a client that asks for it (every family with its HELP, a
    // counter named by its `_total` samples), OpenMetrics otherwise.
    let (ct, text) = scrape_as(b.admin, "text/plain; version=0.0.4");
    assert_eq!(ct, TEXT_004);
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert!(
        text.contains("# HELP poolrelay_messages_accepted_total ")
            && text.contains("# TYPE poolrelay_messages_accepted_total counter\n"),
        "{text}"
    );
    let t = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        value(&t, "poolrelay_messages_accepted_total", &[("tls", "no")]),
        6.0
    );
    for accept in ["", "*/*", "application/openmetrics-text; version=1.0.0"] {
        let (ct, text) = scrape_as(b.admin, accept);
        assert_eq!(ct, OPENMETRICS, "Accept: {accept}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

/// `promtool check metrics` on both forms of a scrape with traffic in every counter.
#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn metrics_pass_promtool() {
    let b = blocking_bench("observe-promtool");
    refused_null_rcpt(&b.relay);
    submit(&b.relay, &rcpts("a", "a.test", 2));
    b.sink.wait_for_messages(2, WAIT);
    assert!(wait_until(WAIT, || {
        value(&scrape(b.admin), "poolrelay_delivery_outcomes_total", &[]) >= 2.0
    }));
    let promtool = |text: &str| {
        use std::io::Write as _;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool must be installed (Debian package prometheus): .ci/run installs it");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ct, text) = scrape_as(b.admin, "text/plain; version=0.0.4");
    assert_eq!(ct, TEXT_004);
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    // promtool lints the 0.0.4 grammar only: in OpenMetrics a counter's HELP names its family
    // (`x`), its samples are `x_total`, which promtool reports as "no help text". That must
    // be all it says, and each such family must have its HELP.
    let (ct, om) = scrape_as(b.admin, "");
    assert_eq!(ct, OPENMETRICS);
    let (_, said) = promtool(&om);
    eprintln!("promtool on OpenMetrics:\n{said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        let family = line
            .strip_suffix(" no help text")
            .and_then(|n| n.strip_suffix("_total"))
            .unwrap_or_else(|| panic!("promtool on OpenMetrics: {line}\n{om}"));
        assert!(
            om.contains(&format!("# HELP {family} "))
                && om.contains(&format!("# TYPE {family} counter\n")),
            "{line}\n{om}"
        );
    }
}

/// Every RCPT deferred: messages stay queued (retry every hour) until the operator acts.
fn defer_all(s: &Step) -> Option<String> {
    matches!(s.stage, Stage::RcptTo(_)).then(|| "451 4.3.0 try later".to_string())
}

fn rcpt_attempts(sink: &Sink) -> usize {
    sink.transcripts().matches("RCPT TO").count()
}

fn queue_cli(b: &Bench, args: &[&str]) -> (bool, String) {
    let config = b.relay.dir().join("poolrelay.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .arg("queue")
        .args(["-c", config.to_str().unwrap()])
        .args(args)
        // The config's data_dir (and so the admin token file) is relative to the relay's dir.
        .current_dir(b.relay.dir())
        .output()
        .expect("run poolrelay queue");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn show(b: &Bench, id: &str) -> (u16, Value) {
    http(b.admin, "GET", &format!("/api/queue/message/{id}"), None)
}

#[test]
fn queue_retry_hold_release_delete_round_trips() {
    let mut b = bench(
        "observe-queue",
        defer_all,
        "1h",
        "[reputation]\nmax_deferral_rate = 1.0",
    );
    let ids = submit(&b.relay, &rcpts("x", "a.test", 3));
    assert!(wait_until(WAIT, || rcpt_attempts(&b.sink) == 3));
    // The attempt is recorded just after the sink's reply.
    assert!(wait_until(WAIT, || {
        let (code, v) = show(&b, &ids[0]);
        code == 200 && v["state"] == "queued" && v["envelope"]["recipients"][0]["attempts"] == 1
    }));

    // Retry: one more attempt at once (the schedule said in an hour).
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/queue/retry",
        Some(json!({"id": ids[0]})),
    );
    assert_eq!((code, v["done"].clone()), (200, json!([ids[0]])), "{v}");
    assert!(wait_until(WAIT, || rcpt_attempts(&b.sink) == 4));
    assert!(wait_until(
        WAIT,
        || show(&b, &ids[0]).1["envelope"]["recipients"][0]["attempts"] == 2
    ));

    // Hold (CLI): kept across a restart, not retried, counted in the summary.
    let (ok, out) = queue_cli(&b, &["hold", &ids[1]]);
    assert!(ok && out.contains(&ids[1]), "{out}");
    assert!(wait_until(WAIT, || show(&b, &ids[1]).1["state"] == "on-hold"));
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/queue/retry",
        Some(json!({"id": ids[1]})),
    );
    assert_eq!(code, 409, "{v}");
    b.relay.restart();
    assert!(wait_until(WAIT, || std::net::TcpStream::connect(b.admin).is_ok()));
    assert_eq!(show(&b, &ids[1]).1["state"], "on-hold");
    let (ok, out) = queue_cli(&b, &["--summary", "--json"]);
    assert!(ok, "{out}");
    let sum: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sum["messages"], 3, "{sum}");
    assert_eq!(sum["by_state"]["on-hold"], 1, "{sum}");
    assert_eq!(sum["by_domain"]["a.test"], 3, "{sum}");
    assert_eq!(sum["by_provider"]["alpha"], 3, "{sum}");
    // The same for people: totals with plurals, a header row per table, UTC dates, one word
    // per state (the API's).
    let (ok, out) = queue_cli(&b, &["--summary"]);
    assert!(ok, "{out}");
    assert!(
        out.starts_with("3 messages, 3 recipients pending, ") && out.contains(", oldest received "),
        "{out}"
    );
    assert!(
        out.contains("\nSTATE    MESSAGES\n") && out.contains("\non-hold  1\n"),
        "{out}"
    );
    let (ok, out) = queue_cli(&b, &["show", &ids[1]]);
    assert!(ok, "{out}");
    assert!(out.contains("\nstate:         on-hold\n"), "{out}");
    assert!(
        out.contains("\nreceived:      20") && out.contains(" UTC ("),
        "{out}"
    );
    let header = out
        .lines()
        .find(|l| l.starts_with("RECIPIENT"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        header.contains("STATE") && header.contains("LAST REPLY"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("x1@a.test")
            && l.contains(" pending ")
            && l.contains("451 4.3.0 try later")),
        "{out}"
    );
    let attempts = rcpt_attempts(&b.sink);
    let (ok, out) = queue_cli(&b, &["retry", "--all", "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // Counts, not ids (a million would not fit an answer): the held one is skipped.
    assert_eq!(
        (v["done"].clone(), v["skipped"].clone()),
        (json!(2), json!(1)),
        "{v}"
    );
    assert!(wait_until(WAIT, || rcpt_attempts(&b.sink) == attempts + 2));

    // Release: due now, attempted at once.
    let before = show(&b, &ids[1]).1["envelope"]["recipients"][0]["attempts"].clone();
    let (ok, out) = queue_cli(&b, &["release", &ids[1]]);
    assert!(ok, "{out}");
    assert!(wait_until(WAIT, || {
        let v = show(&b, &ids[1]).1;
        v["state"] == "queued" && v["envelope"]["recipients"][0]["attempts"] != before
    }));

    // Delete without a DSN, then with one (the DSN is queued for the sender).
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/queue/delete",
        Some(json!({"id": ids[0]})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(show(&b, &ids[0]).0, 404);
    let (ok, out) = queue_cli(&b, &["delete", "--dsn", &ids[2]]);
    assert!(ok, "{out}");
    assert!(wait_until(WAIT, || {
        let q = b.relay.queued_envelopes();
        q.iter().all(|e| e["id"] != ids[0] && e["id"] != ids[2])
            && q.iter().any(|e| e["is_dsn"] == true)
    }));
    assert_eq!(show(&b, &ids[2]).0, 404);
    assert_eq!(
        http(
            b.admin,
            "POST",
            "/api/queue/hold",
            Some(json!({"id": "nope"}))
        )
        .0,
        404
    );
    // Every change is logged with the acting client.
    let log = b.relay.log();
    let actions = log
        .lines()
        .filter(|l| l.contains("queue: operator action") && l.contains("client=127.0.0.1:"))
        .count();
    assert!(actions >= 6, "{log}");
}

fn history(admin: SocketAddr, ip: &str) -> Value {
    let (code, v) = http(admin, "GET", &format!("/api/history?ip={ip}"), None);
    assert_eq!(code, 200, "{v}");
    v
}

fn events(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["scope"].as_str().unwrap()
            )
        })
        .collect()
}

fn hour_sum(v: &Value, provider: &str, key: &str) -> u64 {
    v["hours"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["provider"] == provider)
        .map(|h| h[key].as_u64().unwrap())
        .sum()
}

#[test]
fn history_after_quarantine_and_reinstatement_survives_a_restart() {
    let mut b = blocking_bench("observe-history");
    submit(&b.relay, &rcpts("a", "a.test", 4));
    b.sink.wait_for_messages(4, WAIT);
    assert!(wait_until(WAIT, || {
        hold_of(b.admin, "127.0.0.10", "alpha", "block-reply").is_some()
    }));
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/pool/127.0.0.10/reinstate",
        Some(json!({"provider": "alpha"})),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/pool/127.0.0.11/drain",
        Some(json!({"reason": "maintenance"})),
    );
    assert_eq!(code, 200, "{v}");

    let check = |v: &Value| {
        // Two blocked attempts in flight at once: the second extends the quarantine.
        let mut ev = events(v);
        ev.retain(|e| e != "extended alpha");
        assert_eq!(ev, ["quarantined alpha", "reinstated alpha"], "{v}");
        let q = &v["events"][0];
        assert_eq!(q["reason"], "block reply", "{v}");
        assert!(q["evidence"].as_str().unwrap().contains("S3150"), "{v}");
        assert!(q["until"].as_u64().is_some(), "{v}");
        assert!(hour_sum(v, "alpha", "blocks") >= 1, "{v}");
        assert_eq!(hour_sum(v, "alpha", "sent"), 0, "{v}");
    };
    let ten = history(b.admin, "127.0.0.10");
    check(&ten);
    let eleven = history(b.admin, "127.0.0.11");
    assert_eq!(hour_sum(&eleven, "alpha", "sent"), 4, "{eleven}");
    assert_eq!(events(&eleven), ["drained all"], "{eleven}");
    assert_eq!(eleven["events"][0]["reason"], "maintenance");

    // Kept in the state store: the same after a crash and a restart.
    b.relay.restart();
    assert!(wait_until(WAIT, || std::net::TcpStream::connect(b.admin).is_ok()));
    check(&history(b.admin, "127.0.0.10"));
    assert_eq!(
        hour_sum(&history(b.admin, "127.0.0.11"), "alpha", "sent"),
        4
    );
    assert_eq!(
        http(b.admin, "GET", "/api/history?ip=192.0.2.99", None).0,
        404
    );
}

/// Block replies to 127.0.0.11 at alpha only.
fn block_11_at_alpha(s: &Step) -> Option<String> {
    (matches!(s.stage, Stage::RcptTo(_)) && s.peer == lo(11) && s.local.ip() == lo(20)).then(|| {
        "550 5.7.1 Service unavailable; client host [127.0.0.11] blocked using Spamhaus".to_string()
    })
}

/// 127.0.0.10 warming (cap 50 today), 127.0.0.11 blocked at alpha and then listed on the
/// DNSBL (quarantined for every provider); traffic from both.
fn page_bench(name: &str) -> Bench {
    let ips = [
        PoolIp::new(10, "out10.test").warmup("new"),
        PoolIp::new(11, "out11.test"),
    ];
    let rest = "[warmup]\nday = \"240h\"\n[[warmup.schedule]]\nname = \"new\"\ndaily = [50, 100]\n\
        [reputation]\ncooldown = \"1h\"\ndnsbl = [\"dnsbl.test\"]\ncheck_interval = \"1s\"";
    let b = bench_with(name, block_11_at_alpha, "1s", rest, &ips);
    submit(&b.relay, &rcpts("a", "a.test", 4));
    submit(&b.relay, &rcpts("b", "b.test", 2));
    b.sink.wait_for_messages(6, WAIT);
    b.dns
        .add_ip("11.0.0.127.dnsbl.test", "127.0.0.2".parse().unwrap());
    assert!(
        wait_until(WAIT, || hold_of(
            b.admin,
            "127.0.0.11",
            "all",
            "dnsbl:dnsbl.test"
        )
        .is_some()),
        "{}",
        b.relay.log()
    );
    b
}

/// The `<section>` of one IP in the page.
fn section<'a>(page: &'a str, ip: &str) -> &'a str {
    let start = page
        .find(&format!("<section class=\"ip\" data-ip=\"{ip}\""))
        .unwrap_or_else(|| panic!("no section for {ip} in\n{page}"));
    let end = page[start..].find("</section>").unwrap() + start;
    &page[start..end]
}

/// What must hold of the page, as served or as Chromium built its DOM.
fn check_page(page: &str) {
    assert_eq!(page.matches("<section class=\"ip\"").count(), 2, "{page}");
    let ten = section(page, "127.0.0.10");
    let eleven = section(page, "127.0.0.11");
    assert!(ten.contains("data-state=\"warming\""), "{ten}");
    assert!(eleven.contains("data-state=\"quarantined\""), "{eleven}");
    assert!(eleven.contains("dnsbl listing"), "{eleven}");
    // 10 is warming at alpha: day 0, cap 50 today.
    assert!(
        ten.contains("<td>0</td>") && ten.contains("/50</td>"),
        "{ten}"
    );
    assert!(ten.contains("data-action=\"drain\""), "{ten}");
    for s in [ten, eleven] {
        assert_eq!(s.matches("class=\"plot warmup\"").count(), 1, "{s}");
        assert_eq!(s.matches("class=\"plot rates\"").count(), 1, "{s}");
        assert!(s.contains("class=\"bar sent\""), "no warm-up bars: {s}");
        assert!(
            s.contains("class=\"point deferral\""),
            "no rate points: {s}"
        );
        assert!(s.contains("class=\"threshold bounce\""), "{s}");
        // Legends are HTML that wraps; hover text says dates, not day or hour numbers.
        assert_eq!(s.matches("<ul class=\"legend\">").count(), 2, "{s}");
        assert!(!s.contains(", day ") && !s.contains("<title>hour "), "{s}");
        assert!(
            s.contains(" UTC: "),
            "no date in the rates' hover text: {s}"
        );
    }
    // 10's cap line; 11's quarantine shaded.
    assert!(ten.contains("class=\"cap\""), "{ten}");
    assert!(eleven.contains("class=\"quarantine\""), "{eleven}");
}

#[test]
fn pool_page_shows_states_rates_and_plots() {
    let b = page_bench("observe-page");
    check_page(&get_text(b.admin, "/api/page"));
    // The same states in /metrics: DNSBL listing, warm-up cap, the IP overall.
    let m = scrape(b.admin);
    let listed = |ip| {
        value(
            &m,
            "poolrelay_dnsbl_listed",
            &[("ip", ip), ("zone", "dnsbl.test")],
        )
    };
    assert_eq!((listed("127.0.0.10"), listed("127.0.0.11")), (0.0, 1.0));
    let cap = [("ip", "127.0.0.10"), ("provider", "alpha")];
    assert_eq!(value(&m, "poolrelay_warmup_cap_today", &cap), 50.0);
    let all = |state| [("ip", "127.0.0.11"), ("provider", "all"), ("state", state)];
    assert_eq!(value(&m, "poolrelay_ip_state", &all("quarantined")), 1.0);
    let warming = [
        ("ip", "127.0.0.10"),
        ("provider", "all"),
        ("state", "warming"),
    ];
    assert_eq!(value(&m, "poolrelay_ip_state", &warming), 1.0);
    // The page's buttons call these.
    let (code, v) = http(
        b.admin,
        "POST",
        "/api/pool/127.0.0.10/drain",
        Some(json!({})),
    );
    assert_eq!(code, 200, "{v}");
    let page = get_text(b.admin, "/api/page");
    let ten = section(&page, "127.0.0.10");
    assert!(
        ten.contains("data-state=\"drained\"") && ten.contains("data-action=\"undrain\""),
        "{ten}"
    );
}

/// Lets the page's `fetch` of its content finish before Chromium dumps or shoots it.
const WAIT_FETCH: &str = "--virtual-time-budget=15000";

/// Runs headless Chromium on `url` with `args`; its stdout.
fn chromium(dir: &std::path::Path, args: &[&str], url: &str) -> String {
    let profile = dir.join(format!("chromium-profile-{}", args.len()));
    std::fs::create_dir_all(&profile).unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium must be installed (Debian package chromium): .ci/run installs it");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page in real headless Chromium: the DOM it builds, and a screenshot at phone width
/// (target/screenshots/pool-page.png, kept by CI).
#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn pool_page_in_chromium() {
    let b = page_bench("observe-chromium");
    // Without the token the shell shows only its login form.
    let bare = format!("http://{}/", b.admin);
    let dom = chromium(b.relay.dir(), &["--dump-dom", WAIT_FETCH], &bare);
    assert!(
        dom.contains("id=\"login\"") && !dom.contains("id=\"login\" hidden"),
        "{dom}"
    );
    assert!(
        !dom.contains("<section class=\"ip\""),
        "data without a token: {dom}"
    );
    // A login link (`#token=…`, never sent to the server) fills the session's token; the page
    // then loads its content with it.
    let url = format!(
        "http://{}/#token={}",
        b.admin,
        common::admin::token(b.admin)
    );
    let dom = chromium(b.relay.dir(), &["--dump-dom", WAIT_FETCH], &url);
    check_page(&dom);
    assert!(
        dom.contains("id=\"login\" hidden"),
        "login form still shown: {dom}"
    );
    // Layout measured by Chromium itself at a phone's and a laptop's width.
    let page = measured_page(&b);
    for width in [390, 1280] {
        let report = layout(b.relay.dir(), &page, width);
        eprintln!("layout at {width} px: {report}");
        assert_eq!(report["width"], width, "{report}");
        assert_eq!(report["problems"], json!([]), "at {width} px: {report:#}");
        let counts = &report["counts"];
        // Not vacuous: both IPs' plots, legends and tables were measured.
        assert!(counts["svgText"].as_u64().unwrap() >= 16, "{report}");
        assert!(counts["legend"].as_u64().unwrap() >= 8, "{report}");
        assert!(counts["tables"].as_u64().unwrap() >= 2, "{report}");
        assert!(report["minFont"].as_f64().unwrap() >= 11.0, "{report}");
        assert!(report["plotWidth"].as_f64().unwrap() >= 300.0, "{report}");
    }
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The phone's width in a frame (Chromium makes no narrower window): the picture is 500 px
    // wide, the page in it 390.
    let phone = format!(
        "file://{}",
        frame(b.relay.dir(), &page, 390, 2000).display()
    );
    for (name, size, url) in [
        ("pool-page.png", "500,2000", &phone),
        ("pool-page-laptop.png", "1280,1400", &url),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        let shot = format!("--screenshot={}", path.display());
        let window = format!("--window-size={size}");
        chromium(b.relay.dir(), &[&shot, &window, WAIT_FETCH], url);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "screenshot {} is {len} bytes", path.display());
    }
}

/// Measures, in the page it runs in, what a reader sees: rendered text sizes (SVG text scaled
/// with its plot), text overlapping text in a plot or leaving it, legend items clipped or
/// overlapping, tables without a scrolling wrapper, anything past the right edge. Posts the
/// report as JSON to the frame around the page (`layout`).
const MEASURE: &str = r#"window.addEventListener('load',function(){
var P=[],W=innerWidth,minFont=1e9,plotWidth=1e9,n={svgText:0,legend:0,tables:0,html:0};
function r(e){return e.getBoundingClientRect();}
function overlap(a,b){return Math.min(a.right,b.right)-Math.max(a.left,b.left)>1&&Math.min(a.bottom,b.bottom)-Math.max(a.top,b.top)>1;}
function inside(a,b){return a.left>=b.left-0.5&&a.right<=b.right+0.5&&a.top>=b.top-0.5&&a.bottom<=b.bottom+0.5;}
function name(e){return e.tagName+' "'+e.textContent.slice(0,40)+'"';}
document.querySelectorAll('svg.plot').forEach(function(svg){
 var s=svg.getScreenCTM().a,box=r(svg),ts=[].slice.call(svg.querySelectorAll('text'));
 plotWidth=Math.min(plotWidth,box.width);
 if(box.right>W+0.5)P.push('plot past the right edge: '+box.right);
 ts.forEach(function(t,i){n.svgText++;
  var px=parseFloat(getComputedStyle(t).fontSize)*s;minFont=Math.min(minFont,px);
  if(px<11)P.push('svg text of '+px.toFixed(1)+' px: '+name(t));
  if(!inside(r(t),box))P.push('svg text outside its plot: '+name(t));
  ts.slice(i+1).forEach(function(u){if(overlap(r(t),r(u)))P.push('svg text overlaps: '+name(t)+' / '+name(u));});});});
document.querySelectorAll('ul.legend').forEach(function(ul){
 var box=r(ul),lis=[].slice.call(ul.children);
 if(box.right>W+0.5)P.push('legend past the right edge: '+name(ul));
 lis.forEach(function(li,i){n.legend++;var b=r(li);
  if(!inside(b,box)||b.right>W+0.5||li.scrollWidth>li.clientWidth+1)P.push('legend item clipped: '+name(li));
  lis.slice(i+1).forEach(function(m){if(overlap(b,r(m)))P.push('legend items overlap: '+name(li)+' / '+name(m));});});});
document.querySelectorAll('#content *').forEach(function(e){
 if(e.closest('svg'))return;
 var own=[].some.call(e.childNodes,function(c){return c.nodeType===3&&c.textContent.trim();});
 if(!own)return;n.html++;
 var px=parseFloat(getComputedStyle(e).fontSize);minFont=Math.min(minFont,px);
 if(px<11)P.push('text of '+px+' px: '+name(e));
 if(!e.closest('.tbl')&&r(e).right>W+0.5)P.push('cut at the right edge: '+name(e));});
document.querySelectorAll('#content table').forEach(function(t){n.tables++;var w=t.parentElement;
 if(!w.classList.contains('tbl')||getComputedStyle(w).overflowX!=='auto')P.push('table without a scrolling wrapper');
 if(r(w).right>W+0.5)P.push('table wrapper past the right edge: '+r(w).right);});
if(document.documentElement.scrollWidth>W)P.push('page scrolls sideways: '+document.documentElement.scrollWidth+' > '+W);
parent.postMessage(JSON.stringify({width:W,minFont:minFont,plotWidth:plotWidth,counts:n,problems:P}),'*');});"#;

/// The served shell (its style) with the content `/api/page` serves in it and `MEASURE` in
/// place of the shell's script (which would ask for a token on a file:// page), as a file.
fn measured_page(b: &Bench) -> std::path::PathBuf {
    let (code, _, shell) = common::admin::request(b.admin, "GET", "/", &[], "");
    assert_eq!(code, 200, "{shell}");
    let content = get_text(b.admin, "/api/page");
    let script = shell.find("<script>").expect("shell script");
    let end = shell.find("</script>").expect("shell script end") + "</script>".len();
    let page = format!(
        "{}<script>{MEASURE}</script>{}",
        &shell[..script],
        &shell[end..]
    )
    .replace(
        "<div id=\"content\"></div>",
        &format!("<div id=\"content\">{content}</div>"),
    );
    assert!(page.contains("<section class=\"ip\""), "{page}");
    let path = b.relay.dir().join("measured-page.html");
    std::fs::write(&path, page).unwrap();
    path
}

/// An outer page holding `page` in a frame `width` × `height` px that shows the report
/// `page` posts to it.
fn frame(
    dir: &std::path::Path,
    page: &std::path::Path,
    width: u32,
    height: u32,
) -> std::path::PathBuf {
    let frame = dir.join(format!("frame-{width}.html"));
    std::fs::write(
        &frame,
        format!(
            "<!DOCTYPE html><html><body style=\"margin:0\"><iframe src=\"{}\" style=\"border:0;width:{width}px;height:{height}px\"></iframe>\
             <script>addEventListener('message',function(e){{var o=document.createElement('pre');o.id='layout';o.textContent=e.data;document.body.appendChild(o);}});</script></body></html>",
            page.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    frame
}

/// Chromium's layout report of `page` in a frame `width` px wide: headless Chromium makes no
/// window narrower than 500 px, a frame can be; the frame's page is laid out at its width
/// (media queries included) and posts its report to this outer page, which shows it.
fn layout(dir: &std::path::Path, page: &std::path::Path, width: u32) -> Value {
    let frame = frame(dir, page, width, 900);
    let window = format!("--window-size={},1000", width.max(500) + 20);
    let url = format!("file://{}", frame.display());
    let dom = chromium(dir, &["--dump-dom", &window, WAIT_FETCH], &url);
    let start = dom
        .find("<pre id=\"layout\">")
        .unwrap_or_else(|| panic!("no layout report in {dom}"))
        + 17;
    let end = dom[start..].find("</pre>").unwrap() + start;
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}
