//! TLS reporting (RFC 8460) with the real binary: deliveries under MTA-STS policies (served by
//! the in-process HTTPS server, trusted through `ca_file`), a restart in between (the counts
//! are in the state store), then `POST /api/tls-reports/send`: the `https:` URI of each
//! domain's `_smtp._tls` record receives the gzipped JSON report, the `mailto:` URI a
//! DKIM-signed `multipart/report; report-type="tlsrpt"` mail through the relay's own queue.
//!
//! World (one sink port, the relay's `delivery.port`; one certificate for the names listed):
//! - 127.0.0.20 `mx.good.test`: STARTTLS, valid certificate;
//! - 127.0.0.21 `mx.wrongname.test`: STARTTLS with a certificate not valid for that name;
//! - 127.0.0.22 `mx.plain.test`: no STARTTLS (as when an attacker strips it);
//! - 127.0.0.24 `mx.rua.test`: where `mailto:tlsrpt@rua.test` goes (plain);
//! - 127.0.0.30: HTTPS for `mta-sts.*.test` and `reports.test` (the `https:` report URI).
//!
//! Domains: `enforce.test` (MTA-STS enforce, MX mx.good.test: one success; reports to https
//! and mailto), `testing.test` (testing, MX mx.wrongname.test: one certificate-host-mismatch;
//! reports to https), `stripped.test` (enforce, MX mx.plain.test: starttls-not-supported at
//! every retry, never delivered; reports to https), `quiet.test` (enforce, no `_smtp._tls`
//! record: no report).

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use mail_parser::MimeHeaders;

const WAIT: Duration = Duration::from_secs(20);
const GOOD: u8 = 20;
const WRONG: u8 = 21;
const PLAIN: u8 = 22;
const RUA: u8 = 24;
const WEB: u8 = 30;

fn policy(mode: &str, mx: &str) -> Served {
    Served::text(&format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"
    ))
}

fn gunzip(bytes: &[u8]) -> serde_json::Value {
    let mut json = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut json)
        .expect("gzip");
    serde_json::from_str(&json).expect("JSON report")
}

/// The required fields of RFC 8460 §4.4, with the values this relay must give.
fn assert_report_header(r: &serde_json::Value) {
    assert_eq!(r["organization-name"], "Relay Test Org", "{r}");
    assert_eq!(r["contact-info"], "mailto:postmaster@relay.test", "{r}");
    assert!(
        r["report-id"].as_str().is_some_and(|id| !id.is_empty()),
        "{r}"
    );
    for k in ["start-datetime", "end-datetime"] {
        let t = r["date-range"][k].as_str().unwrap_or_default();
        // RFC 3339, UTC: 2026-12-07T00:00:00Z.
        assert!(
            t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{k}: {r}"
        );
    }
    let start = r["date-range"]["start-datetime"].as_str().unwrap();
    assert!(start.ends_with("T00:00:00Z"), "a UTC day: {start}");
    assert!(
        r["policies"].as_array().is_some_and(|p| p.len() == 1),
        "{r}"
    );
}

#[test]
fn reports_go_to_https_and_mailto_uris_with_the_rfc_8460_fields() {
    let dir = tempdir("tls-reports");
    let certs = make_certs(
        &dir,
        &[
            "mx.good.test",
            "mta-sts.enforce.test",
            "mta-sts.testing.test",
            "mta-sts.quiet.test",
            "mta-sts.stripped.test",
            "reports.test",
        ],
    );
    let dns = DnsServer::start();
    let port = free_port_on(&[lo(GOOD), lo(WRONG), lo(PLAIN), lo(RUA)]);
    let good = Sink::builder(&[lo(GOOD)])
        .port(port)
        .starttls(&certs)
        .start();
    let wrong = Sink::builder(&[lo(WRONG)])
        .port(port)
        .starttls(&certs)
        .start();
    let plain = Sink::builder(&[lo(PLAIN)]).port(port).start();
    let rua = Sink::builder(&[lo(RUA)]).port(port).start();
    let web = HttpsServer::start(lo(WEB), &certs);
    dns.add_ip("mx.good.test", lo(GOOD));
    dns.add_ip("mx.wrongname.test", lo(WRONG));
    dns.add_ip("mx.plain.test", lo(PLAIN));
    dns.add_mx("rua.test", 10, "mx.rua.test");
    dns.add_ip("mx.rua.test", lo(RUA));
    dns.add_ip("reports.test", lo(WEB));
    web.set(
        "reports.test",
        Served::Reply(200, "text/plain".into(), "thanks".into()),
    );
    let https_rua = format!("https://reports.test:{}/v1/tlsrpt", web.port());
    for (domain, mode, mx) in [
        ("enforce", "enforce", "mx.good.test"),
        ("testing", "testing", "mx.wrongname.test"),
        ("quiet", "enforce", "mx.good.test"),
        ("stripped", "enforce", "mx.plain.test"),
    ] {
        let d = format!("{domain}.test");
        dns.add_mx(&d, 10, mx);
        dns.add_txt(&format!("_mta-sts.{d}"), "v=STSv1; id=1;");
        dns.add_ip(&format!("mta-sts.{d}"), lo(WEB));
        web.set(&format!("mta-sts.{d}"), policy(mode, mx));
    }
    dns.add_txt(
        "_smtp._tls.enforce.test",
        &format!("v=TLSRPTv1; rua={https_rua},mailto:tlsrpt@rua.test"),
    );
    for d in ["testing", "stripped"] {
        let rua = format!("v=TLSRPTv1;rua={https_rua}");
        dns.add_txt(&format!("_smtp._tls.{d}.test"), &rua);
    }
    // Reports are mailed From: tlsrpt@relay.test, signed with this key.
    let (key, txt) = keygen(&dir, "relay.test", "s1", "ed25519");
    dns.add_txt("s1._domainkey.relay.test", &txt);
    let cfg = RelayConfig::new()
        .hostname("relay.test")
        .dns(&dns)
        .delivery_port(port)
        .delivery("ca_file", format!("\"{}\"", certs.ca.display()))
        .delivery("mta_sts", format!("{{ https_port = {} }}", web.port()))
        .pool("default", &[PoolIp::new(10, "out1.relay.test")])
        .admin()
        .section(&format!(
            "[[dkim]]\ndomain = \"relay.test\"\nselector = \"s1\"\nprivate_key = \"{}\"",
            key.display()
        ))
        .section(&format!(
            "[tls_reports]\nenabled = true\norganization = \"Relay Test Org\"\n\
             contact = \"mailto:postmaster@relay.test\"\nfrom = \"tlsrpt@relay.test\"\n\
             ca_file = \"{}\"",
            certs.ca.display()
        ));
    let (mut relay, admin_addr) = admin::start(&dir, &cfg, WAIT);

    submit_one(relay.addr(), "a@enforce.test", "enforce");
    submit_one(relay.addr(), "b@testing.test", "testing");
    submit_one(relay.addr(), "c@quiet.test", "quiet");
    submit_one(relay.addr(), "d@stripped.test", "stripped");
    good.wait_for_messages(2, WAIT);
    wrong.wait_for_messages(1, WAIT);
    let refused = || {
        relay
            .plain_log()
            .contains("tls_failure=starttls-not-supported")
    };
    assert!(wait_until(WAIT, refused), "{}", relay.plain_log());
    // A clean restart: the counts come back from the state store.
    relay.stop();
    relay.restart();
    assert!(
        wait_until(WAIT, || std::net::TcpStream::connect(admin_addr).is_ok()),
        "{}",
        relay.log()
    );

    let (code, sent) = admin::http(admin_addr, "POST", "/api/tls-reports/send", None);
    assert_eq!(code, 200, "{sent}");
    let reports = sent["reports"].as_array().cloned().unwrap_or_default();
    let mut domains: Vec<&str> = reports
        .iter()
        .filter_map(|r| r["domain"].as_str())
        .collect();
    domains.sort();
    assert_eq!(
        domains,
        ["enforce.test", "stripped.test", "testing.test"],
        "{sent}"
    );
    for r in &reports {
        for t in r["to"].as_array().unwrap() {
            assert_eq!(t["ok"], true, "{sent}");
        }
    }

    let metrics = admin::get_text(admin_addr, "/metrics");
    for line in [
        "poolrelay_tls_reports_sent_total{scheme=\"https\",result=\"ok\"} 3",
        "poolrelay_tls_reports_sent_total{scheme=\"mailto\",result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }

    // https: one POST per domain, gzip JSON as RFC 8460 §5.1 says.
    let posts = web.posts();
    assert_eq!(posts.len(), 3, "{posts:?}");
    let mut by_domain = std::collections::HashMap::new();
    for p in &posts {
        assert_eq!(p.path, "/v1/tlsrpt");
        assert_eq!(p.content_type, "application/tlsrpt+gzip");
        let r = gunzip(&p.body);
        assert_report_header(&r);
        let domain = r["policies"][0]["policy"]["policy-domain"]
            .as_str()
            .unwrap()
            .to_string();
        by_domain.insert(domain, r);
    }
    let enforce = &by_domain["enforce.test"]["policies"][0];
    assert_eq!(enforce["policy"]["policy-type"], "sts");
    let strings: Vec<&str> = enforce["policy"]["policy-string"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(strings.contains(&"mode: enforce"), "{enforce}");
    assert_eq!(
        enforce["policy"]["mx-host"],
        serde_json::json!(["mx.good.test"])
    );
    assert_eq!(enforce["summary"]["total-successful-session-count"], 1);
    assert_eq!(enforce["summary"]["total-failure-session-count"], 0);

    let testing = &by_domain["testing.test"]["policies"][0];
    assert_eq!(testing["policy"]["policy-type"], "sts");
    assert_eq!(testing["summary"]["total-successful-session-count"], 0);
    assert_eq!(testing["summary"]["total-failure-session-count"], 1);
    let detail = &testing["failure-details"][0];
    assert_eq!(
        detail["result-type"], "certificate-host-mismatch",
        "{testing}"
    );
    assert_eq!(detail["failed-session-count"], 1);
    assert_eq!(detail["receiving-mx-hostname"], "mx.wrongname.test");
    assert_eq!(detail["receiving-ip"], "127.0.0.21");
    assert_eq!(detail["sending-mta-ip"], "127.0.0.10");

    // Each retry to the stripped MX is one more failed session of the same kind.
    let stripped = &by_domain["stripped.test"]["policies"][0];
    let failures = stripped["summary"]["total-failure-session-count"]
        .as_u64()
        .unwrap();
    assert!(failures >= 1, "{stripped}");
    let detail = &stripped["failure-details"][0];
    assert_eq!(
        detail["result-type"], "starttls-not-supported",
        "{stripped}"
    );
    assert_eq!(detail["failed-session-count"].as_u64(), Some(failures));
    assert_eq!(detail["receiving-ip"], "127.0.0.22");
    assert!(plain.messages().is_empty(), "never in plaintext");

    // mailto: through the queue, signed, in the RFC 8460 §5.3 format.
    let mail = rua.wait_for_messages(1, WAIT);
    let m = &mail[0];
    assert_eq!(m.rcpt_to, ["tlsrpt@rua.test"]);
    assert_eq!(m.mail_from, "tlsrpt@relay.test");
    let dkim = verify_dkim(&dns, &m.data);
    assert!(
        dkim.iter()
            .any(|r| matches!(r, mail_auth::DkimResult::Pass)),
        "{dkim:?}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("MIME");
    let ct = parsed.content_type().expect("Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    let header = |name: &str| {
        parsed
            .header_raw(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header("TLS-Report-Domain"), "enforce.test");
    assert_eq!(header("TLS-Report-Submitter"), "relay.test");
    let id = by_domain["enforce.test"]["report-id"]
        .as_str()
        .unwrap()
        .to_string();
    let mailed_id = reports
        .iter()
        .find(|r| r["domain"] == "enforce.test")
        .and_then(|r| r["report_id"].as_str())
        .unwrap();
    assert_eq!(mailed_id, id, "one report, both URIs");
    assert_eq!(
        parsed.subject(),
        Some(
            format!("Report Domain: enforce.test Submitter: relay.test Report-ID: <{id}>").as_str()
        )
    );
    let part = parsed
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "application" && c.subtype() == Some("tlsrpt+gzip"))
        })
        .expect("application/tlsrpt+gzip part");
    let r = gunzip(part.contents());
    assert_eq!(r["report-id"], id.as_str());
    assert_report_header(&r);

    // Reported results are forgotten: the CLI sends only what came since, the retries to the
    // stripped MX (if one happened meanwhile).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["tls-report", "send", "--config"])
        .arg(dir.join("poolrelay.toml"))
        .current_dir(&dir)
        .output()
        .expect("run poolrelay tls-report send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines == ["no results to report"]
            || lines
                .iter()
                .all(|l| l.starts_with("stripped.test https://") && l.contains(" sent HTTP 200")),
        "{stdout}"
    );
    let again = lines
        .iter()
        .filter(|l| l.starts_with("stripped.test"))
        .count();
    assert_eq!(web.posts().len(), 3 + again);
    assert_eq!(rua.messages().len(), 1, "enforce.test reported once");
}
