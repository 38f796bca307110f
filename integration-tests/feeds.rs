//! Provider feeds (issue 26): SNDS and Postmaster Tools fixtures behind a local HTTPS server
//! with a test CA (`common/feeds.rs`, where the fixture rules live), polled by the real relay
//! on `POST /api/feeds/poll`; verdicts checked in `GET /api/pool` and `GET /api/feeds`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::admin::{self, get, hold_of, http, ip_entry, pool_status};
use common::feeds::{self, Answer, FeedServer};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Destinations: hotmail.test (provider microsoft, 127.0.0.20), gmail.test (provider gmail,
/// 127.0.0.22), other.test (no listed provider, 127.0.0.21).
struct World {
    dns: DnsServer,
    sink: Sink,
}

fn world() -> World {
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20), lo(21), lo(22)]);
    dns.add_mx("hotmail.test", 10, "mx.ms.test");
    dns.add_ip("mx.ms.test", lo(20));
    dns.add_mx("other.test", 10, "mx.other.test");
    dns.add_ip("mx.other.test", lo(21));
    dns.add_mx("gmail.test", 10, "mx.gm.test");
    dns.add_ip("mx.gm.test", lo(22));
    World { dns, sink }
}

/// A relay with pool IPs 127.0.0.`ips`, the feeds of `feeds_toml` (`[feeds.*]` tables), the
/// feed server's CA and a first poll far away (the tests poll through the API).
fn start(
    name: &str,
    w: &World,
    ips: &[u8],
    server: &FeedServer,
    feeds_toml: &str,
) -> (Relay, SocketAddr) {
    start_with(name, w, &[("default", ips)], server, feeds_toml)
}

fn start_with(
    name: &str,
    w: &World,
    pools: &[(&str, &[u8])],
    server: &FeedServer,
    rest: &str,
) -> (Relay, SocketAddr) {
    let mut cfg = RelayConfig::new()
        .dns(&w.dns)
        .delivery_port(w.sink.port())
        .admin()
        .provider("microsoft", &["ms.test"])
        .provider("gmail", &["gm.test"]);
    for (pool, ips) in pools {
        let ips: Vec<PoolIp> = ips
            .iter()
            .map(|n| PoolIp::new(*n, &format!("out{n}.test")))
            .collect();
        cfg = cfg.pool(pool, &ips);
    }
    let feeds_toml = rest;
    let cfg = cfg.section(&format!(
        "[feeds]\nfirst_poll = \"10h\"\ntimeout = \"2s\"\nca_file = \"{}\"\n{feeds_toml}",
        server.ca.display()
    ));
    admin::start(&tempdir(name), &cfg, WAIT)
}

fn snds_toml(server: &FeedServer) -> String {
    format!(
        "[feeds.snds]\nkey = \"{}\"\ndata_url = \"{}?key={{key}}\"\nstatus_url = \"{}?key={{key}}\"\n",
        feeds::SNDS_KEY,
        server.url("/snds/data.aspx"),
        server.url("/snds/ipStatus.aspx")
    )
}

fn poll(admin: SocketAddr) -> Value {
    let (code, v) = http(admin, "POST", "/api/feeds/poll", None);
    assert_eq!(code, 200, "{v}");
    v
}

fn feed<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["feeds"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["feed"] == name))
        .unwrap_or_else(|| panic!("no feed {name} in {v}"))
}

fn provider_state(admin: SocketAddr, ip: &str, provider: &str) -> Value {
    ip_entry(&pool_status(admin), ip)["providers"][provider].clone()
}

/// On probation for `provider`, as the pool view shows it once the IP × provider has counters.
fn on_probation(admin: SocketAddr, ip: &str, provider: &str) -> bool {
    provider_state(admin, ip, provider)["probation"] == true
}

/// What the last poll did for `ip` (its action's result), if anything.
fn action_of(v: &Value, feed_name: &str, ip: &str) -> Option<(String, String)> {
    feed(v, feed_name)["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ip"] == ip)
        .map(|a| {
            (
                a["verdict"].as_str().unwrap().to_string(),
                a["result"].as_str().unwrap().to_string(),
            )
        })
}

fn pair(a: &str, b: &str) -> Option<(String, String)> {
    Some((a.to_string(), b.to_string()))
}

#[test]
fn snds_red_traps_and_blocked_range_quarantine_for_microsoft_yellow_is_probation() {
    let w = world();
    let server = FeedServer::start(&tempdir("feeds-snds-srv"), Vec::new());
    server.set(
        "/snds/data.aspx",
        Answer::Body(200, feeds::SNDS_DATA.into()),
    );
    server.set(
        "/snds/ipStatus.aspx",
        Answer::Body(200, feeds::SNDS_STATUS.into()),
    );
    let (relay, admin) = start(
        "feeds-snds",
        &w,
        &[10, 11, 12, 13, 14],
        &server,
        &snds_toml(&server),
    );

    let before = get(admin, "/api/feeds");
    assert_eq!(before["configured"], true, "{before}");
    let v = poll(admin);
    let snds = feed(&v, "snds");
    assert_eq!(snds["result"], "ok", "{v}\n{}", relay.log());
    assert_eq!(snds["rows"], 7, "{v}");
    assert!(snds["last_fetch"].as_u64().is_some(), "{v}");

    // RED: quarantined for microsoft with the SNDS line as evidence; other providers untouched.
    let h = hold_of(admin, "127.0.0.10", "microsoft", "feed:snds")
        .unwrap_or_else(|| panic!("127.0.0.10 not quarantined\n{}", relay.log()));
    assert_eq!(h["kind"], "quarantined", "{h}");
    assert_eq!(h["offence"], 1, "{h}");
    let ev = h["evidence"].as_str().unwrap();
    assert!(
        ev.contains("SNDS 12/6/2026 12:00 AM–12/7/2026 12:00 AM: filter RED, complaint rate 0.5%"),
        "{ev}"
    );
    assert!(hold_of(admin, "127.0.0.10", "gmail", "feed:snds").is_none());
    let holds10 = ip_entry(&pool_status(admin), "127.0.0.10")["holds"].clone();
    assert!(
        holds10
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["scope"] == "microsoft"),
        "{holds10}"
    );
    // YELLOW: probation (the trickle: see the next test), no hold in force.
    assert_eq!(
        action_of(&v, "snds", "127.0.0.11"),
        pair("probation", "probation"),
        "{v}"
    );
    assert!(
        ip_entry(&pool_status(admin), "127.0.0.11")["holds"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Trap hits over trap_hits_max (0), and a blocked range in the IP status list.
    let traps =
        hold_of(admin, "127.0.0.12", "microsoft", "feed:snds").expect("trap hits quarantine");
    assert!(
        traps["evidence"].as_str().unwrap().contains("trap hits 3"),
        "{traps}"
    );
    let blocked =
        hold_of(admin, "127.0.0.14", "microsoft", "feed:snds").expect("blocked range quarantine");
    assert!(
        blocked["evidence"]
            .as_str()
            .unwrap()
            .contains("127.0.0.14-127.0.0.14 blocked: Blocked due to user complaints"),
        "{blocked}"
    );
    // GREEN: nothing.
    let green = ip_entry(&pool_status(admin), "127.0.0.13");
    assert_eq!(green["holds"].as_array().unwrap().len(), 0, "{green}");
    assert_eq!(action_of(&v, "snds", "127.0.0.13"), None, "{v}");

    // The same day's data polled again acts on nothing new (no second offence).
    let again = poll(admin);
    let results: Vec<&str> = feed(&again, "snds")["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert!(results.iter().all(|r| *r == "already-acted"), "{again}");
    assert_eq!(
        hold_of(admin, "127.0.0.10", "microsoft", "feed:snds").unwrap()["offence"],
        1
    );

    // The key is a secret: never in the log, the API or the status file.
    assert!(
        !relay.log().contains(feeds::SNDS_KEY),
        "SNDS key in the log"
    );
    assert!(!again.to_string().contains(feeds::SNDS_KEY));
    let file = std::fs::read_to_string(relay.data_dir().join("feeds.json")).unwrap();
    assert!(
        file.contains("filter RED") && !file.contains(feeds::SNDS_KEY),
        "{file}"
    );
    // GREEN the next day: nothing special, the quarantine ends by its own cool-down.
    let green = feeds::SNDS_DATA
        .replace("RED", "GREEN")
        .replace("YELLOW", "GREEN")
        .replace(",3,out12", ",0,out12");
    server.set(
        "/snds/data.aspx",
        Answer::Body(200, green.replace("12/6/2026", "12/7/2026")),
    );
    server.set("/snds/ipStatus.aspx", Answer::Body(200, String::new()));
    // Through the CLI this time (`poolrelay feeds poll`).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["feeds", "poll", "--config", "poolrelay.toml"])
        .current_dir(relay.dir())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with("snds: ok at ") && out.contains("(5 rows)"),
        "{out}"
    );
    let still = hold_of(admin, "127.0.0.10", "microsoft", "feed:snds").expect("still quarantined");
    assert_eq!(still["evidence"], h["evidence"]);
    assert!(
        feed(&get(admin, "/api/feeds"), "snds")["actions"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The requests carried the key where the URL template put it.
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.target == format!("/snds/data.aspx?key={}", feeds::SNDS_KEY))
    );
}

#[test]
fn red_keeps_the_ip_sending_to_other_providers_and_yellow_takes_a_trickle() {
    let w = world();
    let server = FeedServer::start(&tempdir("feeds-send-srv"), Vec::new());
    server.set(
        "/snds/data.aspx",
        Answer::Body(200, feeds::SNDS_DATA.into()),
    );
    server.set("/snds/ipStatus.aspx", Answer::Body(200, String::new()));
    // 127.0.0.10 (RED) sends for snd.test, 127.0.0.11 (YELLOW) for yellow.test.
    let rest = format!(
        "{}[reputation]\nprobe_per_hour = 1\n[[pool_rule]]\npool = \"yellow\"\nsender_domain = \"yellow.test\"\n",
        snds_toml(&server)
    );
    let (relay, admin) = start_with(
        "feeds-send",
        &w,
        &[("default", &[10]), ("yellow", &[11])],
        &server,
        &rest,
    );
    let v = poll(admin);
    assert!(
        hold_of(admin, "127.0.0.10", "microsoft", "feed:snds").is_some(),
        "{v}\n{}",
        relay.log()
    );
    assert_eq!(
        action_of(&v, "snds", "127.0.0.11"),
        pair("probation", "probation"),
        "{v}"
    );

    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let mut send = |from: &str, to: &str| {
        let body = format!("From: <{from}>\r\nSubject: to {to}\r\n\r\nHello.\r\n");
        assert_eq!(c.send_mail(from, &[to], body.as_bytes()).code, 250);
    };
    for to in ["u@hotmail.test", "u@other.test", "u@gmail.test"] {
        send("s@snd.test", to);
    }
    for n in 0..3 {
        send("s@yellow.test", &format!("y{n}@hotmail.test"));
    }
    c.quit();
    // Delivered: other.test and gmail.test from the RED IP, one probe to microsoft from the
    // YELLOW IP (probe_per_hour = 1). Held: the RED IP's microsoft mail, two yellow ones.
    let got = w.sink.wait_for_messages(3, WAIT);
    let mut seen: Vec<(String, std::net::IpAddr)> =
        got.iter().map(|m| (m.rcpt_to.join(","), m.peer)).collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], ("u@gmail.test".to_string(), lo(10)), "{seen:?}");
    assert_eq!(seen[1], ("u@other.test".to_string(), lo(10)), "{seen:?}");
    assert!(
        seen[2].0.starts_with('y') && seen[2].1 == lo(11),
        "{seen:?}"
    );
    assert!(
        wait_until(WAIT, || relay.queued_ids().len() == 3),
        "{:?}",
        relay.queued_ids()
    );
    let p = provider_state(admin, "127.0.0.11", "microsoft");
    assert!(on_probation(admin, "127.0.0.11", "microsoft"), "{p}");
    assert_eq!(
        (p["used_hour"].as_u64(), p["cap_hour"].as_u64()),
        (Some(1), Some(1)),
        "{p}"
    );
    assert_eq!(w.sink.messages().len(), 3, "nothing else left");
}

#[test]
fn garbled_failing_or_slow_feeds_change_nothing_and_say_why() {
    let w = world();
    let server = FeedServer::start(&tempdir("feeds-bad-srv"), Vec::new());
    server.set(
        "/snds/data.aspx",
        Answer::Body(500, "Internal Server Error".into()),
    );
    server.set(
        "/snds/ipStatus.aspx",
        Answer::Body(200, feeds::GARBLED.into()),
    );
    let toml = format!("max_size = \"2KB\"\n{}", snds_toml(&server));
    let (relay, admin) = start("feeds-bad", &w, &[10, 11], &server, &toml);
    let nothing_held = || {
        let st = pool_status(admin);
        ["127.0.0.10", "127.0.0.11"].iter().all(|ip| {
            ip_entry(&st, ip)["holds"].as_array().unwrap().is_empty()
                && !on_probation(admin, ip, "microsoft")
        })
    };

    let v = poll(admin);
    let snds = feed(&v, "snds");
    assert_eq!(snds["result"], "error", "{v}");
    let err = snds["error"].as_str().unwrap();
    assert!(err.contains("HTTP 500"), "{err}");
    assert!(err.contains("unreadable IP status"), "{err}");
    assert!(!err.contains(feeds::SNDS_KEY), "key in the error: {err}");
    assert!(nothing_held());

    // Columns moved: the whole file is refused, even its RED row.
    server.set(
        "/snds/data.aspx",
        Answer::Body(200, feeds::SNDS_DATA_SHIFTED.into()),
    );
    server.set("/snds/ipStatus.aspx", Answer::Body(200, String::new()));
    let v = poll(admin);
    assert_eq!(feed(&v, "snds")["result"], "error", "{v}");
    assert!(
        feed(&v, "snds")["error"]
            .as_str()
            .unwrap()
            .contains("unknown filter result"),
        "{v}"
    );
    assert!(nothing_held());

    // An answer larger than max_size (2 KB): refused, even with its rows well formed.
    let big = feeds::SNDS_DATA_RED_10.repeat(40);
    assert!(big.len() > 2048);
    server.set("/snds/data.aspx", Answer::Body(200, big));
    let v = poll(admin);
    assert!(
        feed(&v, "snds")["error"]
            .as_str()
            .unwrap()
            .contains("larger than 2000 bytes"),
        "{v}"
    );
    assert!(nothing_held());

    // A server that does not answer within the timeout (2 s).
    server.set("/snds/data.aspx", Answer::Hang(6000));
    let v = poll(admin);
    let err = feed(&v, "snds")["error"].as_str().unwrap().to_string();
    assert!(
        err.to_ascii_lowercase().contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert!(nothing_held());
    assert_eq!(get(admin, "/api/feeds")["feeds"][0]["result"], "error");

    // The fetch results are counted.
    let metrics = admin::get_text(admin, "/metrics");
    assert!(
        metrics.contains("poolrelay_feed_fetches_total{feed=\"snds\",result=\"error\"} 4"),
        "{metrics}"
    );
    drop(relay);
}

fn postmaster_toml(server: &FeedServer, key_file: &std::path::Path) -> String {
    format!(
        "[feeds.postmaster]\nkey_file = \"{}\"\ndomains = [\"snd.test\"]\napi_base = \"{}\"\n",
        key_file.display(),
        server.url("")
    )
}

fn write_key_file(path: &std::path::Path, pem: &str, token_uri: &str) {
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "poolrelay@test-project.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": token_uri,
    });
    std::fs::write(path, key.to_string()).unwrap();
}

#[test]
fn postmaster_bad_ip_quarantines_for_gmail_and_the_domain_spam_rate_is_a_verdict() {
    let w = world();
    let dir = tempdir("feeds-pm");
    let (pem, public) = feeds::rsa_key();
    let server = FeedServer::start(&dir, public);
    let key_file = dir.join("service-account.json");
    write_key_file(&key_file, &pem, &server.token_uri());
    server.set("/token", Answer::Token);
    server.set(
        "/v2/domains/snd.test/domainStats:query",
        Answer::Body(200, feeds::spam_rate_json("snd.test")),
    );
    let stats = Answer::Body(200, feeds::traffic_stats_json("snd.test"));
    // Whatever yesterday is: the path names it.
    let yesterday = {
        let t = std::time::SystemTime::now() - Duration::from_secs(86400);
        let s = humantime::format_rfc3339_seconds(t).to_string();
        s[..10].replace('-', "")
    };
    server.set(
        &format!("/v1/domains/snd.test/trafficStats/{yesterday}"),
        stats,
    );
    let (relay, admin) = start(
        "feeds-pm-relay",
        &w,
        &[10, 12, 13],
        &server,
        &postmaster_toml(&server, &key_file),
    );

    let v = poll(admin);
    let pm = feed(&v, "postmaster");
    assert_eq!(pm["result"], "ok", "{v}\n{:#?}", server.seen());
    // The token came from a JWT the server verified; the API calls carried it.
    let seen = server.seen();
    assert!(seen.iter().any(|s| s.target == "/token"), "{seen:#?}");
    let query = seen
        .iter()
        .find(|s| s.target == "/v2/domains/snd.test/domainStats:query")
        .expect("v2 query");
    assert_eq!(query.method, "POST");
    assert_eq!(
        query.authorization.as_deref(),
        Some(format!("Bearer {}", feeds::ACCESS_TOKEN).as_str())
    );
    let body: Value = serde_json::from_str(&query.body).unwrap();
    assert_eq!(
        body["metricDefinitions"][0]["baseMetric"]["standardMetric"], "SPAM_RATE",
        "{body}"
    );

    // BAD → quarantined for gmail only; LOW → probation for gmail; HIGH → nothing.
    let h = hold_of(admin, "127.0.0.12", "gmail", "feed:postmaster")
        .unwrap_or_else(|| panic!("127.0.0.12 not quarantined\n{v}\n{}", relay.log()));
    assert!(
        h["evidence"]
            .as_str()
            .unwrap()
            .contains("snd.test: IP reputation BAD"),
        "{h}"
    );
    assert!(hold_of(admin, "127.0.0.12", "microsoft", "feed:postmaster").is_none());
    assert_eq!(
        action_of(&v, "postmaster", "127.0.0.13"),
        pair("probation", "probation"),
        "{v}"
    );
    assert!(
        ip_entry(&pool_status(admin), "127.0.0.10")["holds"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The domain's spam rate 0.42 % is over Google's 0.3 %.
    let d = &v["domains"][0];
    assert_eq!(
        (
            d["domain"].as_str(),
            d["level"].as_str(),
            d["date"].as_str()
        ),
        (Some("snd.test"), Some("over"), Some("2026-12-06")),
        "{v}"
    );
    assert_eq!(d["spam_rate"].as_f64(), Some(0.0042));
    assert!(
        d["evidence"].as_str().unwrap().contains("spam rate 0.42 %"),
        "{d}"
    );

    // `poolrelay doctor` shows the feed's last poll and fails the domain over 0.3 %.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args([
            "doctor",
            "--config",
            "poolrelay.toml",
            "--json",
            "--no-probe",
        ])
        .current_dir(relay.dir())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let feed_check = |name: &str, subject: &str| {
        report["feeds"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["name"] == name && c["subject"] == subject)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {name} {subject} in {report}"))
    };
    assert_eq!(
        feed_check("feed", "postmaster")["status"],
        "pass",
        "{report}"
    );
    let rate = feed_check("spam_rate", "snd.test");
    assert_eq!(rate["status"], "fail", "{rate}");
    assert!(
        rate["detail"].as_str().unwrap().contains("0.42 %"),
        "{rate}"
    );
    assert_eq!(o.status.code(), Some(1));

    // A token refusal (the key is not the one Google knows): an error, nothing changes.
    let (other_pem, _) = feeds::rsa_key();
    write_key_file(&key_file, &other_pem, &server.token_uri());
    let v = poll(admin);
    let pm = feed(&v, "postmaster");
    assert_eq!(pm["result"], "error", "{v}");
    assert!(
        pm["error"].as_str().unwrap().contains("token refused"),
        "{v}"
    );
    assert!(
        pm["error"]
            .as_str()
            .unwrap()
            .contains("Invalid JWT Signature"),
        "{v}"
    );
    assert!(
        !relay.log().contains("PRIVATE KEY"),
        "key material in the log"
    );
    assert!(hold_of(admin, "127.0.0.12", "gmail", "feed:postmaster").is_some());
    assert_eq!(
        v["domains"][0]["level"], "over",
        "the last verdict stays: {v}"
    );
}

#[test]
fn without_feeds_the_api_says_so() {
    let w = world();
    let cfg = RelayConfig::new()
        .dns(&w.dns)
        .delivery_port(w.sink.port())
        .admin();
    let (_relay, admin) = admin::start(&tempdir("feeds-none"), &cfg, WAIT);
    assert_eq!(get(admin, "/api/feeds")["configured"], false);
    let (code, v) = http(admin, "POST", "/api/feeds/poll", None);
    assert_eq!(code, 404, "{v}");
}

#[test]
fn bad_feed_settings_are_config_errors_with_file_and_line() {
    let dir = tempdir("feeds-config");
    let cfg = RelayConfig::new().section(
        "[feeds]\ninterval = \"24h\"\n[feeds.snds]\nkey = \"\"\ndata_url = \"http://snds.example/data?key={key}\"\n[feeds.postmaster]\nkey_file = \"missing.json\"\ndomains = [\"example.com\"]\n",
    );
    let text = cfg.to_toml();
    std::fs::write(dir.join("bad.toml"), &text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["check-config", "bad.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (key, needle, message) in [
        ("key", "key = \"\"", "must not be empty"),
        ("data_url", "data_url", "must be an https:// URL"),
        ("key_file", "key_file", "file missing.json not found"),
    ] {
        let expected = format!("bad.toml:{}: {key}: {message}", line_of(needle));
        assert!(err.contains(&expected), "{expected}\n{err}");
    }
}

/// v2 spam rate for `domain`: `rate` on 2026-12-`day`.
fn spam_rate_on(domain: &str, day: u32, rate: f64) -> Answer {
    let body = serde_json::json!({"domainStats": [
        {"name": format!("domains/{domain}/domainStats/a{day}"), "metric": "spam_rate",
         "value": {"doubleValue": rate}, "date": {"year": 2026, "month": 12, "day": day}}
    ]});
    Answer::Body(200, body.to_string())
}

/// With `[accounts]`, Postmaster's verdict holds the sender domain over 0.3 % (its evidence
/// answers MAIL FROM for that domain, whoever logs in for it), the login's other domain still
/// sends, a restart keeps the hold, and a good rate polled through `poolrelay feeds poll`
/// lifts it.
#[test]
fn postmaster_over_holds_that_sender_domain_for_its_logins_until_a_good_rate() {
    let w = world();
    let dir = tempdir("feeds-pm-acct");
    let (pem, public) = feeds::rsa_key();
    let server = FeedServer::start(&dir, public);
    let key_file = dir.join("service-account.json");
    write_key_file(&key_file, &pem, &server.token_uri());
    server.set("/token", Answer::Token);
    let stats = |d: &str| format!("/v2/domains/{d}/domainStats:query");
    server.set(&stats("snd.test"), spam_rate_on("snd.test", 6, 0.0042));
    server.set(&stats("good.test"), spam_rate_on("good.test", 6, 0.0004));

    let relay_dir = tempdir("feeds-pm-acct-relay");
    let certs = make_certs(&relay_dir, &["relay.test"]);
    let users = write_users(&relay_dir, &[("alice", "secret-a")]);
    let cfg = RelayConfig::new()
        .dns(&w.dns)
        .delivery_port(w.sink.port())
        .admin()
        .listen("starttls", "optional")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("alice", &["snd.test", "good.test"])
        .pool("default", &[PoolIp::new(10, "out10.test")])
        // No allowance an hour: a held domain's MAIL FROM is refused at once.
        .section("[accounts]\nthrottle_per_hour = 0\n")
        .section(&format!(
            "[feeds]\nfirst_poll = \"10h\"\ntimeout = \"2s\"\nca_file = \"{}\"\n\
             [feeds.postmaster]\nkey_file = \"{}\"\ndomains = [\"snd.test\", \"good.test\"]\n\
             api_base = \"{}\"\nip_reputation = false\n",
            server.ca.display(),
            key_file.display(),
            server.url("")
        ));
    let (mut relay, admin) = admin::start(&relay_dir, &cfg, WAIT);
    let smtp = relay.addr();
    let mail_from = |from: &str| {
        let mut c = SmtpClient::connect_from(smtp, lo(66));
        c.ehlo("client.test");
        c.starttls("relay.test", &certs.ca);
        c.ehlo("client.test");
        c.auth_plain("alice", "secret-a").expect(235);
        let r = c.cmd(&format!("MAIL FROM:<{from}>"));
        c.quit();
        r
    };
    let domain = |name: &str| {
        get(admin, "/api/sender-domains")["sender_domains"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == name).cloned())
    };
    assert_eq!(mail_from("alice@snd.test").code, 250, "nothing heard yet");

    let v = poll(admin);
    assert_eq!(feed(&v, "postmaster")["result"], "ok", "{v}");
    let evidence = "Postmaster 2026-12-06 snd.test: spam rate 0.42 %";
    let r = mail_from("alice@snd.test");
    assert_eq!(
        r.text,
        format!(
            "450 4.7.1 sender domain snd.test throttled: {evidence}, over Google's spam-rate \
             action line; at most 0 messages an hour"
        ),
        "{r:?}"
    );
    assert_eq!(mail_from("alice@good.test").code, 250);
    let held = domain("snd.test").expect("an account for snd.test");
    assert_eq!(held["standing"], "throttled", "{held}");
    assert!(
        held["why"].as_str().unwrap().starts_with(evidence),
        "{held}"
    );
    assert_eq!(held["postmaster"]["level"], "over", "{held}");
    assert!(
        domain("good.test").is_none(),
        "an `Ok` domain gets no account"
    );

    // A restart without the feed's saved verdicts still holds: the accounts keep it.
    relay.stop();
    std::fs::remove_file(relay.data_dir().join("feeds.json")).unwrap();
    relay.restart();
    assert!(wait_until(WAIT, || std::net::TcpStream::connect(admin).is_ok()));
    assert_eq!(mail_from("alice@snd.test").code, 450);

    // Google's rate back under 0.1 %: `poolrelay feeds poll` lifts the hold.
    server.set(&stats("snd.test"), spam_rate_on("snd.test", 7, 0.0005));
    let (code, out) = run_poolrelay(
        relay.dir(),
        &["feeds", "poll", "--config", "poolrelay.toml"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(mail_from("alice@snd.test").code, 250);
    let lifted = domain("snd.test").unwrap();
    assert_eq!(lifted["standing"], "good", "{lifted}");
    assert_eq!(lifted["postmaster"]["level"], "ok", "{lifted}");
}
