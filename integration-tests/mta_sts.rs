//! MTA-STS (RFC 8461) in delivery, with the real binary: policies served over HTTPS by an
//! in-process server (test CA, the relay trusts only it through `ca_file`), `_mta-sts` TXT,
//! MX and `mta-sts.DOMAIN` A records from the in-process DNS server, SMTP sinks on loopback.
//!
//! The sinks (one port, the relay's `delivery.port`); one certificate, valid for the names it
//! lists (`mx.good.test`, `mx.other.test`, `mta-sts.*`) and not for `mx.wrongname.test`:
//! - 127.0.0.20 `mx.good.test`: STARTTLS with that certificate;
//! - 127.0.0.21 `mx.wrongname.test`: STARTTLS with the same certificate (wrong name there);
//! - 127.0.0.22 `mx.plain.test`: no STARTTLS (as when an attacker strips it);
//! - 127.0.0.23 `mx.other.test`: STARTTLS, valid certificate, never in an `mx` pattern.
//!
//! Pure Rust except `a_farm_shares_fetched_policies_through_redis`, which runs a real
//! `redis-server` and is `#[ignore]`d (run by .ci/run).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

const GOOD: u8 = 20;
const WRONG: u8 = 21;
const PLAIN: u8 = 22;
const OTHER: u8 = 23;
/// The HTTPS server of every `mta-sts.DOMAIN`.
const WEB: u8 = 30;

struct World {
    dns: DnsServer,
    web: HttpsServer,
    certs: Certs,
    sinks: Vec<(u8, Sink)>,
    port: u16,
}

impl World {
    fn start(dir: &Path) -> World {
        let certs = make_certs(
            dir,
            &[
                "mx.good.test",
                "mx.other.test",
                "mta-sts.enforce.test",
                "mta-sts.wrongname.test",
                "mta-sts.stripped.test",
                "mta-sts.testing.test",
                "mta-sts.cache.test",
                "mta-sts.hang.test",
                "mta-sts.fast.test",
                "mta-sts.farm.test",
                "mta-sts.xn--bcher-kva.test",
            ],
        );
        let dns = DnsServer::start();
        let port = free_port_on(&[lo(GOOD), lo(WRONG), lo(PLAIN), lo(OTHER)]);
        let mut sinks = Vec::new();
        for (n, tls) in [(GOOD, true), (WRONG, true), (PLAIN, false), (OTHER, true)] {
            let b = Sink::builder(&[lo(n)]).port(port);
            let b = if tls { b.starttls(&certs) } else { b };
            sinks.push((n, b.start()));
        }
        for (name, n) in [
            ("mx.good.test", GOOD),
            ("mx.wrongname.test", WRONG),
            ("mx.plain.test", PLAIN),
            ("mx.other.test", OTHER),
        ] {
            dns.add_ip(name, lo(n));
        }
        let web = HttpsServer::start(lo(WEB), &certs);
        World {
            dns,
            web,
            certs,
            sinks,
            port,
        }
    }

    fn sink(&self, n: u8) -> &Sink {
        &self.sinks.iter().find(|(i, _)| *i == n).expect("sink").1
    }

    /// `domain` publishes `_mta-sts` with `id` and serves `policy` at `mta-sts.domain`.
    fn publish(&self, domain: &str, id: &str, served: Served) {
        self.dns
            .remove(&format!("_mta-sts.{domain}"), RecordType::TXT);
        self.dns
            .add_txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id};"));
        self.dns.add_ip(&format!("mta-sts.{domain}"), lo(WEB));
        self.web.set(&format!("mta-sts.{domain}"), served);
    }

    /// One pool IP (127.0.0.10), so a session can be reused by the next message.
    fn config(&self, fetch_timeout: &str) -> RelayConfig {
        self.config_from(fetch_timeout, 10)
    }

    /// `config` with the pool IP 127.0.0.`ip`.
    fn config_from(&self, fetch_timeout: &str, ip: u8) -> RelayConfig {
        RelayConfig::new()
            .dns(&self.dns)
            .delivery_port(self.port)
            .delivery("ca_file", format!("\"{}\"", self.certs.ca.display()))
            .delivery(
                "mta_sts",
                format!(
                    "{{ https_port = {}, fetch_timeout = \"{fetch_timeout}\" }}",
                    self.web.port()
                ),
            )
            .pool(
                "default",
                &[PoolIp::new(ip, &format!("out{ip}.relay.test"))],
            )
    }
}

fn policy(mode: &str, mx: &[&str]) -> Served {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str("max_age: 86400\r\n");
    Served::text(&text)
}

fn to(sink: &Sink, rcpt: &str) -> Vec<Message> {
    sink.messages()
        .into_iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == rcpt))
        .collect()
}

/// The queued envelope of `rcpt` once its `n`-th attempt is logged (the envelope file may
/// count deferrals in place, one behind).
fn deferred(relay: &Relay, rcpt: &str, n: u64) -> serde_json::Value {
    let logged = || {
        relay.plain_log().lines().any(|l| {
            l.contains("delivery attempt")
                && l.contains(&format!("recipient={rcpt} "))
                && l.contains(&format!(" attempt={n} "))
        })
    };
    assert!(wait_until(WAIT, logged), "{rcpt}: {}", relay.plain_log());
    relay
        .queued_envelopes()
        .into_iter()
        .find(|v| v["recipients"][0]["address"] == rcpt)
        .expect("still queued")
}

#[test]
fn enforce_delivers_only_over_verified_tls_to_listed_mx_hosts() {
    let dir = tempdir("mta-sts-enforce");
    let w = World::start(&dir);
    // enforce.test: the preferred MX is not in the policy, the second is.
    w.dns.add_mx("enforce.test", 10, "mx.other.test");
    w.dns.add_mx("enforce.test", 20, "mx.good.test");
    w.publish("enforce.test", "1", policy("enforce", &["mx.good.test"]));
    w.dns.add_mx("wrongname.test", 10, "mx.wrongname.test");
    w.publish(
        "wrongname.test",
        "1",
        policy("enforce", &["*.wrongname.test"]),
    );
    w.dns.add_mx("stripped.test", 10, "mx.plain.test");
    w.publish("stripped.test", "1", policy("enforce", &["mx.plain.test"]));
    w.dns.add_mx("testing.test", 10, "mx.wrongname.test");
    w.publish(
        "testing.test",
        "1",
        policy("testing", &["mx.wrongname.test"]),
    );
    let (relay, admin) = admin::start(&dir, &w.config("10s").admin(), WAIT);

    submit_one(relay.addr(), "a@enforce.test", "enforce");
    submit_one(relay.addr(), "b@wrongname.test", "wrongname");
    submit_one(relay.addr(), "c@stripped.test", "stripped");
    submit_one(relay.addr(), "d@testing.test", "testing");

    // enforce + valid certificate: delivered over TLS to the listed MX only.
    let good = w.sink(GOOD).wait_for_messages(1, WAIT);
    assert!(good[0].tls.is_some(), "over TLS");
    assert_eq!(good[0].rcpt_to, ["a@enforce.test"]);
    assert!(
        w.sink(OTHER).sessions().is_empty(),
        "an MX not in the policy is never contacted:\n{}",
        w.sink(OTHER).transcripts()
    );

    // testing + wrong name: delivered all the same (reported, not enforced).
    assert!(
        wait_until(WAIT, || !to(w.sink(WRONG), "d@testing.test").is_empty()),
        "{}",
        relay.plain_log()
    );

    // enforce + wrong name, enforce + STARTTLS stripped: deferred with 4.7.5, several
    // attempts, never delivered (not in plaintext either).
    let env = deferred(&relay, "b@wrongname.test", 2);
    let r = &env["recipients"][0];
    assert_eq!(r["state"], "pending");
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    assert!(
        r["last_reply"]["text"]
            .as_str()
            .unwrap()
            .contains("mta-sts policy: TLS handshake with mx.wrongname.test"),
        "{r}"
    );
    let env = deferred(&relay, "c@stripped.test", 2);
    let r = &env["recipients"][0];
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    assert!(
        r["last_reply"]["text"]
            .as_str()
            .unwrap()
            .contains("does not offer STARTTLS"),
        "{r}"
    );
    assert!(to(w.sink(WRONG), "b@wrongname.test").is_empty());
    assert!(w.sink(PLAIN).messages().is_empty(), "nothing in plaintext");
    assert!(
        !w.sink(PLAIN).transcripts().contains("MAIL FROM"),
        "{}",
        w.sink(PLAIN).transcripts()
    );

    let log = relay.plain_log();
    for needle in [
        "tls_failure=certificate-host-mismatch",
        "tls_failure=starttls-not-supported",
        "tls_policy=mta-sts",
        "MX host refused by TLS policy, not contacted",
        "MTA-STS testing: TLS would fail under enforce",
    ] {
        assert!(log.contains(needle), "{needle}:\n{log}");
    }
    // The policy is fetched once per domain and kept (same id).
    assert_eq!(w.web.requests_for("mta-sts.enforce.test"), 1);

    let metrics = admin::get_text(admin, "/metrics");
    for needle in [
        "poolrelay_tls_deliveries_total{policy=\"mta-sts\",result=\"tls\"} 2",
        "poolrelay_tls_deliveries_total{policy=\"mta-sts\",result=\"certificate-host-mismatch\"}",
        "poolrelay_tls_deliveries_total{policy=\"mta-sts\",result=\"starttls-not-supported\"}",
    ] {
        assert!(metrics.contains(needle), "{needle}:\n{metrics}");
    }
}

#[test]
fn an_opportunistic_session_is_not_reused_for_an_enforced_delivery() {
    let dir = tempdir("mta-sts-reuse");
    let w = World::start(&dir);
    // Same MX for both: one destination, one pool IP, so reuse would be possible.
    w.dns.add_mx("nopolicy.test", 10, "mx.good.test");
    w.dns.add_mx("enforce.test", 10, "mx.good.test");
    w.publish("enforce.test", "1", policy("enforce", &["mx.good.test"]));
    let relay = Relay::start(&dir, &w.config("10s").to_toml());
    submit_one(relay.addr(), "a@nopolicy.test", "first");
    let m = w.sink(GOOD).wait_for_messages(1, WAIT);
    assert!(
        m[0].tls.is_some(),
        "opportunistic TLS, certificate unchecked"
    );
    submit_one(relay.addr(), "b@enforce.test", "second");
    let m = w.sink(GOOD).wait_for_messages(2, WAIT);
    assert_ne!(
        m[0].session,
        m[1].session,
        "the enforced delivery opened a verified session of its own:\n{}",
        w.sink(GOOD).transcripts()
    );
    // And a verified session may carry a delivery without a policy.
    submit_one(relay.addr(), "c@enforce.test", "third");
    let m = w.sink(GOOD).wait_for_messages(3, WAIT);
    assert_eq!(m[1].session, m[2].session, "{}", w.sink(GOOD).transcripts());
}

#[test]
fn a_route_tls_setting_wins_over_the_domain_policy() {
    let dir = tempdir("mta-sts-route");
    let w = World::start(&dir);
    // enforce.test's policy allows only mx.good.test; the route sends to the wrong name with
    // opportunistic TLS, and the route wins.
    w.dns.add_mx("enforce.test", 10, "mx.good.test");
    w.publish("enforce.test", "1", policy("enforce", &["mx.good.test"]));
    let cfg = w.config("10s").section(&format!(
        "[[route]]\ndomain = \"enforce.test\"\nhost = \"mx.wrongname.test:{}\"\ntls = \"opportunistic\"",
        w.port
    ));
    let relay = Relay::start(&dir, &cfg.to_toml());
    submit_one(relay.addr(), "a@enforce.test", "routed");
    let m = w.sink(WRONG).wait_for_messages(1, WAIT);
    assert_eq!(m[0].rcpt_to, ["a@enforce.test"]);
    assert!(w.sink(GOOD).messages().is_empty());
    assert_eq!(
        w.web.requests_for("mta-sts.enforce.test"),
        0,
        "no policy looked up"
    );
    assert!(
        relay.plain_log().contains("tls_policy=route"),
        "{}",
        relay.plain_log()
    );
}

#[test]
fn a_broken_policy_keeps_the_cached_one_and_a_new_id_replaces_it() {
    let dir = tempdir("mta-sts-cache");
    let w = World::start(&dir);
    w.dns.add_mx("cache.test", 20, "mx.good.test");
    w.publish("cache.test", "1", policy("enforce", &["mx.good.test"]));
    let mut relay = Relay::start(&dir, &w.config("10s").to_toml());
    submit_one(relay.addr(), "a@cache.test", "one");
    let m = w.sink(GOOD).wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some());

    // A new id, but the policy file is now garbage; a plaintext MX is preferred. The cached
    // policy stays in force: mx.plain.test is not in it, so it is never contacted.
    w.dns.add_mx("cache.test", 10, "mx.plain.test");
    w.publish("cache.test", "2", Served::text("<html>maintenance</html>"));
    submit_one(relay.addr(), "b@cache.test", "two");
    w.sink(GOOD).wait_for_messages(2, WAIT);
    assert_eq!(
        w.web.requests_for("mta-sts.cache.test"),
        2,
        "the new id was fetched"
    );
    assert!(
        w.sink(PLAIN).sessions().is_empty(),
        "{}",
        w.sink(PLAIN).transcripts()
    );
    assert!(
        relay
            .plain_log()
            .contains("MTA-STS policy fetch failed, keeping the cached policy"),
        "{}",
        relay.plain_log()
    );

    // The sink counts a message before the relay hears its 250: wait for the relay to finish it,
    // or the kill below makes it deliver "two" again.
    assert!(wait_until(WAIT, || {
        relay
            .plain_log()
            .matches("message finished, removed from queue")
            .count()
            >= 2
    }));
    // The policy survives a restart (state store), the server now failing with 500.
    w.web.set(
        "mta-sts.cache.test",
        Served::Reply(500, "text/plain".into(), "down".into()),
    );
    relay.restart();
    submit_one(relay.addr(), "c@cache.test", "three");
    w.sink(GOOD).wait_for_messages(3, WAIT);
    assert!(
        w.sink(PLAIN).sessions().is_empty(),
        "{}",
        w.sink(PLAIN).transcripts()
    );

    // A new id with a valid policy replaces it: now only mx.other.test is allowed.
    w.dns.add_mx("cache.test", 30, "mx.other.test");
    w.publish("cache.test", "3", policy("enforce", &["mx.other.test"]));
    submit_one(relay.addr(), "d@cache.test", "four");
    let m = w.sink(OTHER).wait_for_messages(1, WAIT);
    assert_eq!(m[0].rcpt_to, ["d@cache.test"]);
    assert!(m[0].tls.is_some());
    assert_eq!(w.sink(GOOD).messages().len(), 3, "no longer allowed");
}

#[test]
fn a_hanging_policy_does_not_delay_another_domain_on_the_same_mx() {
    let dir = tempdir("mta-sts-hang");
    let w = World::start(&dir);
    w.dns.add_mx("hang.test", 10, "mx.good.test");
    w.publish("hang.test", "1", Served::Hang);
    w.dns.add_mx("fast.test", 10, "mx.good.test");
    w.publish("fast.test", "1", policy("enforce", &["mx.good.test"]));
    // A fetch limit far beyond the wait below: only independence lets fast.test through.
    let relay = Relay::start(&dir, &w.config("120s").to_toml());
    submit_one(relay.addr(), "a@hang.test", "hang");
    assert!(
        wait_until(WAIT, || w.web.requests_for("mta-sts.hang.test") >= 1),
        "{}",
        relay.plain_log()
    );
    let started = Instant::now();
    submit_one(relay.addr(), "b@fast.test", "fast");
    let m = w.sink(GOOD).wait_for_messages(1, WAIT);
    assert_eq!(m[0].rcpt_to, ["b@fast.test"]);
    assert!(m[0].tls.is_some());
    assert!(started.elapsed() < WAIT);
    assert!(
        to(w.sink(GOOD), "a@hang.test").is_empty(),
        "hang.test still waits for its policy"
    );
}

/// The check named `name` of domain `domain` in `poolrelay doctor --json` output.
fn doctor_check(report: &serde_json::Value, domain: &str, name: &str) -> serde_json::Value {
    report["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .find(|d| d["domain"] == domain)
        .and_then(|d| d["checks"].as_array())
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{domain} {name}: {report:#}"))
}

#[test]
fn doctor_fetches_and_checks_the_operators_own_policies() {
    let dir = tempdir("mta-sts-doctor");
    let w = World::start(&dir);
    w.dns.add_mx("enforce.test", 10, "mx.good.test");
    w.publish("enforce.test", "1", policy("enforce", &["mx.good.test"]));
    w.dns.add_txt(
        "_smtp._tls.enforce.test",
        "v=TLSRPTv1; rua=mailto:tls@enforce.test",
    );
    // An enforce policy that leaves out one of the domain's MX hosts.
    w.dns.add_mx("stripped.test", 10, "mx.good.test");
    w.dns.add_mx("stripped.test", 20, "mx.plain.test");
    w.publish("stripped.test", "1", policy("enforce", &["mx.good.test"]));
    w.publish("cache.test", "1", Served::text("<html>not a policy</html>"));
    std::fs::write(dir.join("poolrelay.toml"), w.config("10s").to_toml()).unwrap();
    let mut args = vec![
        "doctor",
        "--config",
        "poolrelay.toml",
        "--json",
        "--no-probe",
    ];
    for d in ["enforce.test", "stripped.test", "cache.test"] {
        args.extend(["--domain", d]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(&args)
        .current_dir(&dir)
        .output()
        .expect("run poolrelay doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));

    let c = doctor_check(&r, "enforce.test", "mta_sts");
    assert_eq!(c["status"], "pass", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("id=1"), "{c}");
    let c = doctor_check(&r, "enforce.test", "mta_sts_policy");
    assert_eq!(c["status"], "pass", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("mode=enforce, mx=mx.good.test, max_age=86400"),
        "{c}"
    );
    assert_eq!(
        doctor_check(&r, "enforce.test", "tls_rpt")["status"],
        "pass"
    );

    let c = doctor_check(&r, "stripped.test", "mta_sts_policy");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("mx.plain.test"),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("mx: mx.plain.test"),
        "{c}"
    );

    let c = doctor_check(&r, "cache.test", "mta_sts_policy");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("sts-policy-invalid"),
        "{c}"
    );
}

#[test]
#[ignore = "needs redis-server (installed and run by .ci/run)"]
fn a_farm_shares_fetched_policies_through_redis() {
    let dir = tempdir("mta-sts-farm");
    let w = World::start(&dir);
    let redis = RedisServer::start(&dir);
    w.dns.add_mx("farm.test", 10, "mx.good.test");
    w.publish("farm.test", "1", policy("enforce", &["mx.good.test"]));
    let node = |name: &str, ip: u8| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = w.config_from("10s", ip).section(&format!(
            "[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nprefix = \"farm\"\n",
            redis.url()
        ));
        let relay = Relay::start(&d, &cfg.to_toml());
        assert!(
            relay.wait_for_log("cluster: Redis up", WAIT),
            "{}",
            relay.log()
        );
        relay
    };
    let a = node("a", 10);
    submit_one(a.addr(), "x@farm.test", "from-a");
    let m = w.sink(GOOD).wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some());
    assert_eq!(w.web.requests_for("mta-sts.farm.test"), 1);
    let shared: Option<String> = redis.query(&["GET", "farm:mta-sts:farm.test"]);
    assert!(
        shared
            .as_deref()
            .is_some_and(|j| j.contains("\"id\":\"1\"")),
        "{shared:?}"
    );

    // Another relay of the farm takes the policy from Redis: no second fetch, and the policy
    // is in force there (the plaintext MX it leaves out is not contacted).
    w.dns.add_mx("farm.test", 5, "mx.plain.test");
    let b = node("b", 11);
    submit_one(b.addr(), "y@farm.test", "from-b");
    let m = w.sink(GOOD).wait_for_messages(2, WAIT);
    assert_eq!(m[1].rcpt_to, ["y@farm.test"]);
    assert_eq!(
        w.web.requests_for("mta-sts.farm.test"),
        1,
        "{}",
        b.plain_log()
    );
    assert!(
        w.sink(PLAIN).sessions().is_empty(),
        "{}",
        w.sink(PLAIN).transcripts()
    );
}

/// A recipient domain in Unicode (SMTPUTF8) gets its MTA-STS policy, looked up and fetched under
/// its A-labels (`bücher.test` → `xn--bcher-kva.test`): `enforce` keeps the message from an MX
/// host the policy does not list (before: the fetch failed and it went opportunistically).
#[test]
fn a_unicode_domain_gets_its_policy_under_its_a_labels() {
    let dir = tempdir("mta-sts-idna");
    let w = World::start(&dir);
    w.dns.add_mx("xn--bcher-kva.test", 10, "mx.plain.test");
    w.publish(
        "xn--bcher-kva.test",
        "1",
        policy("enforce", &["mx.good.test"]),
    );
    let cfg = w.config("10s").delivery("retry", "[\"1h\"]");
    let relay = Relay::start(&dir, &cfg.to_toml());
    let rcpt = "a@bücher.test";
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<sender@snd.test> SMTPUTF8").expect(250);
    c.cmd(&format!("RCPT TO:<{rcpt}>")).expect(250);
    let r = c.data(b"From: <sender@snd.test>\r\nSubject: idna\r\n\r\nHello.\r\n");
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    let r = deferred_once(&relay, rcpt, WAIT);
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    let text = r["last_reply"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(
            "mx.plain.test is not an MX host allowed by the policy of xn--bcher-kva.test"
        ),
        "{r}"
    );
    assert!(w.web.requests_for("mta-sts.xn--bcher-kva.test") >= 1);
    assert!(w.sink(PLAIN).messages().is_empty());
}
