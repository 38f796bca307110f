//! `poolrelay doctor` against test zones on a loopback DNS server and SMTP sinks: one IP and one
//! domain that pass every check, one broken in each way, each check's status and the exit code;
//! `[doctor] enforce` in `serve` holding and releasing an IP through the pool.

mod common;
#[path = "doctor/zones.rs"]
mod zones;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use zones::*;

const BIN: &str = env!("CARGO_BIN_EXE_poolrelay");
const WAIT: Duration = Duration::from_secs(20);
const V6: &str = "::1";

/// `poolrelay doctor ARGS --config poolrelay.toml` in `dir`: (exit code, stdout, stderr).
fn doctor(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .arg("doctor")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run poolrelay doctor");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The check `name` (with `subject`, if given) of the IP or domain `section`.
fn check<'a>(report: &'a Value, section: &str, name: &str, subject: Option<&str>) -> &'a Value {
    let checks = report["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ip"] == section)
        .or_else(|| {
            report["domains"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["domain"] == section)
        })
        .unwrap_or_else(|| panic!("{section} not in the report"))["checks"]
        .as_array()
        .unwrap();
    checks
        .iter()
        .find(|c| c["name"] == name && subject.is_none_or(|s| c["subject"] == s))
        .unwrap_or_else(|| panic!("no check {name} {subject:?} for {section}: {checks:?}"))
}

fn status(report: &Value, section: &str, name: &str, subject: Option<&str>) -> String {
    check(report, section, name, subject)["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn detail(report: &Value, section: &str, name: &str, subject: Option<&str>) -> String {
    check(report, section, name, subject)["detail"]
        .as_str()
        .unwrap()
        .to_string()
}

fn fix(report: &Value, section: &str, name: &str, subject: Option<&str>) -> String {
    check(report, section, name, subject)["fix"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Every check of a section.
fn statuses(report: &Value, section: &str) -> Vec<(String, String)> {
    report["ips"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["domains"].as_array().unwrap())
        .find(|s| s["ip"] == section || s["domain"] == section)
        .unwrap()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{} {}",
                    c["name"].as_str().unwrap(),
                    c["subject"].as_str().unwrap_or("")
                ),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every check of the good IP and domain passes.
fn assert_good(r: &Value) {
    for section in ["127.0.0.10", "good.test", V6] {
        for (name, st) in statuses(r, section) {
            assert_eq!(st, "pass", "{section} {name}: {r:#}");
        }
    }
    let good = |name, subject| detail(r, "good.test", name, subject);
    assert!(
        good("dkim", Some("s1")).contains("k=ed25519"),
        "{}",
        good("dkim", Some("s1"))
    );
    assert!(
        good("dkim", Some("s2")).contains("k=rsa"),
        "{}",
        good("dkim", Some("s2"))
    );
    assert!(good("dmarc", None).contains("p=reject"));
    assert!(
        good("mta_sts_policy", None).contains("mode=enforce, mx=mx.good.test"),
        "{}",
        good("mta_sts_policy", None)
    );
    assert!(
        good("spf_lookups", None).contains("1 of 10"),
        "{}",
        good("spf_lookups", None)
    );
    assert_eq!(status(r, V6, "ptr", None), "pass");
    assert!(detail(r, V6, "ptr", None).contains("ip6.arpa"));
}

/// Each broken IP fails its one check, with the record to publish.
fn assert_broken_ips(r: &Value) {
    assert_eq!(status(r, "127.0.0.11", "ptr", None), "fail");
    assert_eq!(status(r, "127.0.0.11", "fcrdns", None), "fail");
    assert_eq!(
        status(r, "127.0.0.11", "helo", None),
        "pass",
        "helo resolves to the IP"
    );
    assert!(
        fix(r, "127.0.0.11", "ptr", None)
            .contains("11.0.0.127.in-addr.arpa. IN PTR out11.good.test.")
    );
    assert_eq!(status(r, "127.0.0.12", "ptr", None), "pass");
    assert_eq!(status(r, "127.0.0.12", "fcrdns", None), "fail");
    assert!(fix(r, "127.0.0.12", "fcrdns", None).contains("out12.good.test. IN A 127.0.0.12"));
    assert_eq!(status(r, "127.0.0.13", "fcrdns", None), "pass");
    assert_eq!(status(r, "127.0.0.13", "helo", None), "fail");
    // No SPF at the HELO name: a note (only the relay's own bounces are judged by it).
    assert_eq!(status(r, "127.0.0.13", "spf_helo", None), "info");
    assert!(
        fix(r, "127.0.0.13", "spf_helo", None)
            .contains("mail13.good.test. IN TXT \"v=spf1 ip4:127.0.0.13 -all\"")
    );
    assert!(fix(r, "127.0.0.13", "helo", None).contains("helo = \"out13.good.test\""));
    assert_eq!(status(r, "127.0.0.14", "fcrdns", None), "pass");
    assert_eq!(status(r, "127.0.0.14", "dnsbl", Some("bl.test")), "fail");
    let listed = check(r, "127.0.0.14", "dnsbl", Some("bl.test"))["detail"].to_string();
    assert!(
        listed.contains("127.0.0.2") && listed.contains("Listed for testing"),
        "{listed}"
    );
    assert_eq!(status(r, "127.0.0.10", "dnsbl", Some("bl.test")), "pass");
}

/// Each broken domain fails where it is broken, and only there.
fn assert_broken_domains(r: &Value) {
    assert_eq!(
        status(r, "spfmiss.test", "spf_pass", Some("127.0.0.10")),
        "pass"
    );
    assert_eq!(status(r, "spfmiss.test", "spf_pass", Some(V6)), "fail");
    assert_eq!(
        fix(r, "spfmiss.test", "spf_pass", Some(V6)),
        "publish spfmiss.test. IN TXT \"v=spf1 ip6:::1 ip4:127.0.0.10 -all\""
    );
    assert_eq!(status(r, "spflong.test", "spf", None), "pass");
    assert_eq!(status(r, "spflong.test", "spf_lookups", None), "fail");
    assert!(detail(r, "spflong.test", "spf_lookups", None).starts_with("11 DNS lookups"));
    assert_eq!(
        status(r, "spflong.test", "spf_pass", Some("127.0.0.10")),
        "fail",
        "permerror past 10 lookups"
    );
    assert_eq!(status(r, "spfloop.test", "spf_lookups", None), "fail");
    let l = check(r, "spfloop.test", "spf_lookups", None).clone();
    assert!(
        l["detail"]
            .as_str()
            .unwrap()
            .contains("include loop: spfloop.test → a.spfloop.test → spfloop.test"),
        "{l}"
    );
    assert!(
        l["fix"]
            .as_str()
            .unwrap()
            .contains("remove include:spfloop.test"),
        "{l}"
    );
    assert_eq!(
        status(r, "spfloop.test", "spf_pass", Some("127.0.0.10")),
        "fail"
    );
    assert_eq!(status(r, "spfsyntax.test", "spf", None), "fail");
    // A record that is a permanent error is one for every IP too, as receivers see it.
    for d in ["spfunknown.test", "spftwo.test", "spfsyntax.test"] {
        assert_eq!(status(r, d, "spf", None), "fail");
        let spf = detail(r, d, "spf", None);
        let per_ip = detail(r, d, "spf_pass", Some("127.0.0.10"));
        assert!(per_ip.starts_with("permerror "), "{d}: {per_ip} ({spf})");
        assert!(fix(r, d, "spf_pass", Some("127.0.0.10")).contains("see spf"));
    }
    assert!(detail(r, "spftwo.test", "spf", None).contains("permerror"));
    assert_eq!(status(r, "dkimother.test", "dkim", Some("s1")), "fail");
    assert!(detail(r, "dkimother.test", "dkim", Some("s1")).contains("another ed25519 key"));
    assert!(
        fix(r, "dkimother.test", "dkim", Some("s1"))
            .starts_with("publish s1._domainkey.dkimother.test. IN TXT")
    );
    assert_eq!(status(r, "dkimbad.test", "dkim", Some("s1")), "fail");
    let bad = check(r, "dkimbad.test", "dkim", Some("s1"))["detail"].to_string();
    assert!(bad.contains("malformed"), "{bad}");
    assert_eq!(status(r, "nodmarc.test", "dmarc", None), "fail");
    assert!(
        fix(r, "nodmarc.test", "dmarc", None)
            .starts_with("publish _dmarc.nodmarc.test. IN TXT \"v=DMARC1; p=quarantine")
    );
    assert_eq!(status(r, "pnone.test", "dmarc", None), "warn");
    assert!(
        fix(r, "pnone.test", "dmarc", None)
            .contains("\"v=DMARC1; p=quarantine; rua=mailto:d@pnone.test\"")
    );
    let pm = Some("postmaster@refusedpm.test");
    assert_eq!(status(r, "refusedpm.test", "rcpt", pm), "fail");
    assert!(detail(r, "refusedpm.test", "rcpt", pm).contains("550 5.1.1"));
    let abuse = Some("abuse@refusedpm.test");
    assert_eq!(status(r, "refusedpm.test", "rcpt", abuse), "pass");
    // Each broken domain fails only where it is broken.
    for (d, broken) in [
        ("spfmiss.test", &["spf_pass ::1"][..]),
        ("spflong.test", &["spf_lookups ", "spf_pass 127.0.0.10"]),
        ("spfloop.test", &["spf_lookups ", "spf_pass 127.0.0.10"]),
        ("spfsyntax.test", &["spf ", "spf_pass 127.0.0.10"]),
        ("spfunknown.test", &["spf ", "spf_pass 127.0.0.10"]),
        ("spftwo.test", &["spf ", "spf_pass 127.0.0.10"]),
        ("dkimother.test", &["dkim s1"]),
        ("dkimbad.test", &["dkim s1"]),
        ("nodmarc.test", &["dmarc "]),
        ("refusedpm.test", &["rcpt postmaster@refusedpm.test"]),
    ] {
        let failing: Vec<String> = statuses(r, d)
            .into_iter()
            .filter(|(_, s)| s == "fail")
            .map(|(n, _)| n)
            .collect();
        assert_eq!(failing, broken, "{d}: {r:#}");
    }
}

#[test]
fn every_check_passes_for_the_good_ip_and_domain_and_fails_each_broken_one() {
    let dir = tempdir("doctor-all");
    let dns = DnsServer::start();
    let sink = sinks(&dir);
    let (_web, ca, sts) = policy_server(&dns, &dir);
    let mut dkim = publish_good(&dns, &dir);
    publish_broken_ips(&dns);
    dkim.push_str(&publish_broken_domains(&dns, &dir));
    let rest = format!("{dkim}{BROKEN}{sts}");
    std::fs::write(
        dir.join("poolrelay.toml"),
        config_with(&dns, sink.port(), &ca, &rest),
    )
    .unwrap();

    let (code, out, err) = doctor(
        &dir,
        &[
            "--config",
            "poolrelay.toml",
            "--json",
            "--domain",
            "refusedpm.test",
        ],
    );
    assert_eq!(code, 1, "a failure exits 1\n{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["ok"], false);

    assert_good(&r);
    assert_broken_ips(&r);
    assert_broken_domains(&r);
    // Every failure says what to do.
    for section in r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r["domains"].as_array().unwrap())
    {
        for c in section["checks"].as_array().unwrap() {
            if c["status"] == "fail" {
                assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
            }
        }
    }

    // The probes stopped before DATA: no message, a RSET and QUIT after the RCPTs.
    assert!(sink.messages().is_empty());
    assert!(
        sink.sessions().iter().all(|s| s.tls.is_some()),
        "STARTTLS when offered"
    );
    let t = sink.transcripts();
    assert!(
        t.contains("RCPT TO:<postmaster@good.test>") && t.contains("RCPT TO:<abuse@good.test>"),
        "{t}"
    );
    assert!(
        t.contains("MAIL FROM:<>")
            && t.contains("RSET")
            && t.contains("QUIT")
            && !t.contains("DATA"),
        "{t}"
    );

    // The table: a block per IP and domain, the fix under each failure.
    let (code, text, _) = doctor(&dir, &["--config", "poolrelay.toml", "--no-probe"]);
    assert_eq!(code, 1);
    for needle in [
        "IP 127.0.0.12 (helo out12.good.test; pool bad)",
        "FAIL  fcrdns",
        "fix: publish out12.good.test. IN A 127.0.0.12",
        "domain spfmiss.test (pool_rule; sent from 127.0.0.10, ::1)",
        "info  rcpt postmaster@good.test",
        "FAILED: ",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
}

#[test]
fn all_good_exits_zero_and_usage_errors_exit_two() {
    let dir = tempdir("doctor-good");
    let dns = DnsServer::start();
    let sink = sinks(&dir);
    let (_web, ca, sts) = policy_server(&dns, &dir);
    let dkim = publish_good(&dns, &dir);
    let rest = format!(
        "{dkim}\n[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"out10.good.test\"\n{sts}"
    );
    std::fs::write(
        dir.join("poolrelay.toml"),
        config_with(&dns, sink.port(), &ca, &rest),
    )
    .unwrap();
    let (code, out, err) = doctor(&dir, &["--config", "poolrelay.toml"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("OK: ") && !out.contains("FAIL"), "{out}");
    assert!(out.contains("pass  rcpt postmaster@good.test"), "{out}");

    // `--domain` adds a domain; a broken one turns the exit code.
    domain(&dns, "extra.test", None, Some(REJECT), lo(20));
    let (code, out, _) = doctor(
        &dir,
        &[
            "--config",
            "poolrelay.toml",
            "--json",
            "--no-probe",
            "--domain",
            "extra.test",
        ],
    );
    assert_eq!(code, 1);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status(&r, "extra.test", "spf", None), "fail");
    assert_eq!(
        check(&r, "extra.test", "spf", None)["fix"],
        "publish extra.test. IN TXT \"v=spf1 ip4:127.0.0.10 ~all\""
    );

    // The probe goes where delivery would: a static route wins over the MX (which here
    // refuses postmaster@).
    domain(
        &dns,
        "routed.test",
        Some("v=spf1 ip4:127.0.0.10 -all"),
        Some(REJECT),
        lo(21),
    );
    let port = sink.port();
    let routed =
        format!("{rest}\n[[route]]\ndomain = \"routed.test\"\nhost = \"[127.0.0.20]:{port}\"\n");
    std::fs::write(
        dir.join("routed.toml"),
        config_with(&dns, port, &ca, &routed),
    )
    .unwrap();
    let (code, out, err) = doctor(
        &dir,
        &[
            "--config",
            "routed.toml",
            "--json",
            "--domain",
            "routed.test",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let pm = Some("postmaster@routed.test");
    assert_eq!(status(&r, "routed.test", "rcpt", pm), "pass");
    assert!(detail(&r, "routed.test", "rcpt", pm).contains("[127.0.0.20:"));

    for args in [
        &["--config", "poolrelay.toml", "--domain", "not a domain"][..],
        &["--config", "missing.toml"],
        &["--config", "poolrelay.toml", "--bogus"],
    ] {
        let (code, _, err) = doctor(&dir, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A bad `[doctor] domains` entry is a config error for check-config, doctor and serve alike.
    let bad = format!("{rest}\n[doctor]\ndomains = [\"not a domain\"]\n");
    std::fs::write(dir.join("bad.toml"), base_config(&dns, sink.port(), &bad)).unwrap();
    let o = Command::new(BIN)
        .args(["check-config", "bad.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("doctor.domains"));
    assert_eq!(doctor(&dir, &["--config", "bad.toml"]).0, 2);
}

fn http(admin: SocketAddr, path: &str) -> (u16, Value) {
    admin::http(admin, "GET", path, None)
}

fn pool_ip(admin: SocketAddr, ip: &str) -> Value {
    let (_, st) = http(admin, "/api/pool");
    st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["ips"].as_array().unwrap())
        .find(|i| i["ip"] == ip)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn enforce_holds_an_ip_failing_fcrdns_or_spf_and_releases_it_when_it_passes() {
    let dir = tempdir("doctor-enforce");
    let dns = DnsServer::start();
    named_ip(&dns, lo(10), "out10.good.test");
    dns.add_ptr(lo(12), "out12.good.test"); // no A yet: FCrDNS fails
    domain(
        &dns,
        "good.test",
        Some("v=spf1 ip4:127.0.0.10 -all"),
        Some(REJECT),
        lo(20),
    );
    let admin = free_port();
    let rest = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[pool]]
name = "default"
[[pool.ip]]
address = "127.0.0.10"
helo = "out10.good.test"
[[pool.ip]]
address = "127.0.0.12"
helo = "out12.good.test"

[doctor]
domains = ["good.test"]
check_interval = "300ms"
enforce = true
"#
    );
    let relay = Relay::start(&dir, &base_config(&dns, free_port(), &rest));
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let held = |ip: &str| {
        let v = pool_ip(admin, ip);
        v["state"] == "drained" && v["reason"] == "doctor"
    };
    assert!(
        wait_until(WAIT, || held("127.0.0.12")),
        "{}\n{}",
        pool_ip(admin, "127.0.0.12"),
        relay.log()
    );
    assert!(!held("127.0.0.10"));
    // The API's report is stored right after the pool changes, in the same round.
    assert!(wait_until(WAIT, || http(admin, "/api/doctor").1["held"][0]
        ["ip"]
        == "127.0.0.12"));
    let (code, d) = http(admin, "/api/doctor");
    assert_eq!(code, 200);
    assert_eq!(d["enforce"], true);
    assert_eq!(d["held"][0]["ip"], "127.0.0.12", "{d}");
    let why = d["held"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("fcrdns") && why.contains("spf good.test"),
        "{why}"
    );
    assert_eq!(
        check(&d["report"], "127.0.0.12", "fcrdns", None)["status"],
        "fail"
    );
    // The pool page and /metrics show the doctor's verdicts too.
    let page = admin::get_text(admin, "/api/page");
    assert!(
        page.contains("doctor Fail") && page.contains("fcrdns"),
        "{page}"
    );
    let metrics = admin::get_text(admin, "/metrics");
    let fails = metrics
        .lines()
        .find(|l| l.starts_with("poolrelay_doctor_checks{status=\"fail\"}"))
        .unwrap_or_else(|| panic!("no doctor_checks in\n{metrics}"));
    assert!(!fails.ends_with(" 0"), "{fails}");

    // Half fixed (A record, SPF still without the IP): still held, for SPF alone.
    dns.add_a("out12.good.test", "127.0.0.12".parse().unwrap());
    assert!(wait_until(WAIT, || {
        let (_, d) = http(admin, "/api/doctor");
        d["held"][0]["why"]
            .as_str()
            .is_some_and(|w| !w.contains("fcrdns"))
    }));
    assert!(held("127.0.0.12"));

    // Fully fixed: back in rotation, and the change is logged; the failure was logged once.
    dns.remove("good.test", RecordType::TXT);
    dns.add_txt("good.test", "v=spf1 ip4:127.0.0.10 ip4:127.0.0.12 -all");
    assert!(
        wait_until(WAIT, || pool_ip(admin, "127.0.0.12")["state"] == "active"),
        "{}",
        relay.log()
    );
    assert!(wait_until(WAIT, || http(admin, "/api/doctor").1["held"]
        == Value::Array(vec![])));
    assert!(relay.wait_for_log("doctor: checks pass again, back in rotation", WAIT));
    let log = relay.log();
    let fcrdns_failures = log
        .lines()
        .filter(|l| {
            l.contains("doctor: check fails") && l.contains("127.0.0.12") && l.contains("fcrdns")
        })
        .count();
    assert_eq!(fcrdns_failures, 1, "logged once per change:\n{log}");
}
