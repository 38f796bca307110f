//! Interop with software we did not write: Postfix as a client, swaks, dnsmasq.
//! Every interop test is `#[ignore]`d (run by `.ci/run` after it installs the tools) and fails if
//! a tool is missing. The `kit_*` tests check the shared test kit itself and run everywhere.

mod common;

use std::time::Duration;

use common::*;

/// Sink + client: STARTTLS verified against the test CA, peer address, dot-unstuffing, the
/// tempfail/permfail conventions and a per-peer scripted refusal.
#[test]
fn kit_sink_records_sessions_and_scripts() {
    let dir = tempdir("kit-sink");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    let sink = Sink::builder(&[lo(20), lo(21)])
        .starttls(&certs)
        .script(|s: &Step| match &s.stage {
            Stage::RcptTo(a) if s.peer == lo(12) && a.starts_with("blocked") => {
                Some("550 5.7.1 blocked (S3150)".into())
            }
            _ => None,
        })
        .start();

    let mut c = SmtpClient::connect_from(sink.addr(1), lo(10));
    assert_eq!(c.greeting.code, 220);
    assert!(c.ehlo("out1.test").contains(&"STARTTLS".to_string()));
    c.starttls("mx.dest.test", &certs.ca);
    assert!(!c.ehlo("out1.test").contains(&"STARTTLS".to_string()));
    let body = b"Subject: t\r\n\r\n.leading dot\r\nline\r\n";
    let r = c.send_mail(
        "a@src.test",
        &["ok@dest.test", "tempfail@dest.test", "permfail@dest.test"],
        body,
    );
    assert_eq!(r.code, 250, "{r}");
    let r = c.cmd("MAIL FROM:<>");
    assert_eq!(r.code, 250);
    assert_eq!(c.cmd("RCPT TO:<tempfail@dest.test>").code, 451);
    assert_eq!(c.cmd("RCPT TO:<permfail@dest.test>").code, 550);
    c.quit();

    let m = &sink.wait_for_messages(1, Duration::from_secs(5))[0];
    assert_eq!(m.peer, lo(10));
    assert_eq!(m.local, sink.addr(1));
    assert_eq!(m.ehlo, "out1.test");
    assert!(
        m.tls.as_deref().unwrap_or("").starts_with("TLSv1_"),
        "{m:?}"
    );
    assert_eq!(m.rcpt_to, vec!["ok@dest.test"]);
    assert_eq!(m.data, body);

    // The scripted refusal applies to one source address only.
    let mut c = SmtpClient::connect_from(sink.addr(0), lo(12));
    c.ehlo("out3.test");
    assert_eq!(c.cmd("MAIL FROM:<a@src.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<blocked@dest.test>").code, 550);
    let mut c = SmtpClient::connect_from(sink.addr(0), lo(11));
    c.ehlo("out2.test");
    let r = c.send_mail("a@src.test", &["blocked@dest.test"], b"x\r\n");
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(
        sink.wait_for_messages(2, Duration::from_secs(5))[1].peer,
        lo(11)
    );
    assert_eq!(sink.sessions().len(), 3);
}

/// A sink whose STARTTLS is broken: 220 and then no handshake.
#[test]
fn kit_sink_broken_tls() {
    let dir = tempdir("kit-sink-broken");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    for mode in [SinkTls::BrokenClose, SinkTls::BrokenGarbage] {
        let sink = Sink::builder(&[lo(22)]).tls(mode).start();
        let mut c = SmtpClient::connect(sink.addr(0));
        assert!(c.ehlo("x.test").contains(&"STARTTLS".to_string()));
        assert!(c.try_starttls("mx.dest.test", &certs.ca).is_err());
    }
}

fn resolver(ns: std::net::SocketAddr) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let mut server = NameServerConfig::udp_and_tcp(ns.ip());
    for c in &mut server.connections {
        c.port = ns.port();
    }
    let mut b = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    b.options_mut().ndots = 0;
    b.options_mut().timeout = Duration::from_secs(2);
    b.build().expect("resolver")
}

/// The DNS server answers MX / null MX / A / long TXT, NXDOMAIN vs no-data, and changes live.
#[test]
fn kit_dns_server_answers_and_changes() {
    let dns = DnsServer::start();
    dns.add_mx("dest.test", 10, "mx1.dest.test");
    dns.add_mx("dest.test", 20, "mx2.dest.test");
    dns.add_a("mx1.dest.test", "127.0.0.20".parse().unwrap());
    dns.null_mx("nomail.test");
    let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
    dns.add_txt("s1._domainkey.src.test", &long);
    dns.add_a("10.0.0.127.dnsbl.test", "127.0.0.2".parse().unwrap());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = resolver(dns.nameserver());
    rt.block_on(async {
        let mx = r.mx_lookup("dest.test.").await.expect("MX");
        let mut got: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(10, "mx1.dest.test.".into()), (20, "mx2.dest.test.".into())]
        );
        let null = r.mx_lookup("nomail.test.").await.expect("null MX");
        let ex: Vec<String> = null
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::MX(m) => Some(m.exchange.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(ex, vec!["."]);

        let ip = r.ipv4_lookup("mx1.dest.test.").await.expect("A");
        assert_eq!(ip.answers().len(), 1);
        let txt = r.txt_lookup("s1._domainkey.src.test.").await.expect("TXT");
        let joined: String = txt
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, long);

        // No MX at mx1 (it has an A): no-data, not NXDOMAIN.
        let e = r.mx_lookup("mx1.dest.test.").await.unwrap_err();
        assert!(e.is_no_records_found(), "{e:?}");
        assert!(!e.is_nx_domain(), "{e:?}");
        let e = r.mx_lookup("unknown.test.").await.unwrap_err();
        assert!(e.is_nx_domain(), "{e:?}");

        // Delisting mid-test is seen by the next query.
        assert!(r.ipv4_lookup("10.0.0.127.dnsbl.test.").await.is_ok());
        dns.remove_name("10.0.0.127.dnsbl.test");
        let e = r.ipv4_lookup("10.0.0.127.dnsbl.test.").await.unwrap_err();
        assert!(e.is_nx_domain(), "{e:?}");
    });
    assert!(
        dns.queries()
            .contains(&("dest.test".to_string(), RecordType::MX))
    );
}
