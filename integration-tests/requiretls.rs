//! REQUIRETLS (RFC 8689) through the real binary: offered and accepted only inside TLS, refused
//! in plaintext, kept in the spool envelope; `TLS-Required: No` kept too (REQUIRETLS wins).
//!
//! The inbound tests route every domain to a closed port, so accepted messages stay in the
//! queue where the tests read their envelopes. The delivery tests use their own loopback
//! addresses (127.0.0.20–24, 127.0.0.40–47) so their sinks never share a port by accident.

mod common;

use std::path::PathBuf;

use common::*;

const HOST: &str = "relay.test";

fn start(name: &str) -> (PathBuf, Certs, Relay) {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &[HOST]);
    let cfg = RelayConfig::new()
        .hostname(HOST)
        .listen("starttls", "none")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9");
    let relay = Relay::start(&dir, &cfg.to_toml());
    (dir, certs, relay)
}

/// The envelope of queued message `id` as the spool holds it.
fn envelope(relay: &Relay, id: &str) -> serde_json::Value {
    relay
        .queued_envelopes()
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not queued"))
}

fn queue_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r}");
    r.text.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn requiretls_is_offered_and_accepted_only_inside_tls() {
    let (_dir, certs, relay) = start("requiretls-inbound");
    let mut c = SmtpClient::connect(relay.addr());
    let caps = c.ehlo("client.test");
    assert!(!caps.iter().any(|c| c == "REQUIRETLS"), "{caps:?}");
    // Plaintext: refused with the RFC's reply, and the transaction does not start.
    let r = c.cmd("MAIL FROM:<a@example.com> REQUIRETLS");
    assert_eq!(r.code, 530, "{r}");
    assert!(r.text.contains("5.7.10"), "{r}");
    c.cmd("RCPT TO:<b@example.org>").expect(503);

    c.starttls(HOST, &certs.ca);
    let caps = c.ehlo("client.test");
    assert!(caps.iter().any(|c| c == "REQUIRETLS"), "{caps:?}");
    c.cmd("MAIL FROM:<a@example.com> REQUIRETLS=YES")
        .expect(501);
    c.cmd("MAIL FROM:<a@example.com> REQUIRETLS").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let id = queue_id(&c.data(b"From: a@example.com\r\nSubject: secret\r\n\r\nx\r\n"));
    assert_eq!(envelope(&relay, &id)["tls_request"], "required");

    // Same session, no parameter: nothing asked.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let id = queue_id(&c.data(b"From: a@example.com\r\nSubject: plain\r\n\r\nx\r\n"));
    assert!(envelope(&relay, &id).get("tls_request").is_none());
    c.quit();
}

#[test]
fn tls_required_no_is_kept_unless_requiretls_was_asked() {
    let (_dir, certs, relay) = start("requiretls-header");
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let body = b"From: a@example.com\r\nTLS-Required: No\r\nSubject: news\r\n\r\nx\r\n";
    let id = queue_id(&c.send_mail("a@example.com", &["b@example.org"], body));
    assert_eq!(envelope(&relay, &id)["tls_request"], "not-required");
    // Another value means nothing.
    let other = b"From: a@example.com\r\nTLS-Required: Yes\r\n\r\nx\r\n";
    let id = queue_id(&c.send_mail("a@example.com", &["b@example.org"], other));
    assert!(envelope(&relay, &id).get("tls_request").is_none());

    // REQUIRETLS and the header: REQUIRETLS wins (RFC 8689 §4.1).
    c.starttls(HOST, &certs.ca);
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com> REQUIRETLS").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    let id = queue_id(&c.data(body));
    assert_eq!(envelope(&relay, &id)["tls_request"], "required");
    c.quit();
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Routes `domain.test` to `mx.domain.test` on the sinks' port with `tls = "required"` (web PKI
/// against the test CA): a verified destination.
fn verified_route(cfg: RelayConfig, domain: &str, port: u16) -> RelayConfig {
    cfg.section(&format!(
        "[[route]]\ndomain = \"{domain}.test\"\nhost = \"mx.{domain}.test:{port}\"\ntls = \"required\""
    ))
}

/// Sends one message over STARTTLS with `MAIL FROM:<..> REQUIRETLS` (or without); asserts 250.
fn submit_tls(relay: &Relay, certs: &Certs, requiretls: bool, rcpts: &[&str], subject: &str) {
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.starttls(HOST, &certs.ca);
    c.ehlo("client.test");
    let param = if requiretls { " REQUIRETLS" } else { "" };
    c.cmd(&format!("MAIL FROM:<sender@snd.test>{param}"))
        .expect(250);
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>")).expect(250);
    }
    let body = format!(
        "From: <sender@snd.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@snd.test>\r\n\r\nSecret body.\r\n"
    );
    let r = c.data(body.as_bytes());
    assert_eq!(r.code, 250, "{r}");
    c.quit();
}

#[test]
fn requiretls_goes_only_to_verified_servers_that_offer_it_else_bounces() {
    let dir = tempdir("requiretls-delivery");
    let names = [HOST, "mx.secure.test", "mx.norq.test", "mx.snd.test"];
    let certs = make_certs(&dir, &names);
    let dns = DnsServer::start();
    let ips = [lo(20), lo(21), lo(22), lo(23), lo(24)];
    let port = free_port_on(&ips);
    // Verified (route tls = required), offers REQUIRETLS: the one place it may go.
    let secure = requiretls_sink(lo(20), port, &certs);
    // Verified, but no REQUIRETLS in its EHLO reply.
    let norq = Sink::builder(&[lo(21)]).port(port).starttls(&certs).start();
    // Opportunistic (MX, no policy), even though it offers STARTTLS and REQUIRETLS.
    let opp = requiretls_sink(lo(22), port, &certs);
    // No STARTTLS at all.
    let plain = Sink::builder(&[lo(23)]).port(port).start();
    // The sender's domain, verified and offering REQUIRETLS: where the DSN goes.
    let back = requiretls_sink(lo(24), port, &certs);
    dns.add_ip("mx.secure.test", lo(20));
    dns.add_ip("mx.norq.test", lo(21));
    dns.add_mx("opp.test", 10, "mx.opp.test");
    dns.add_ip("mx.opp.test", lo(22));
    dns.add_mx("plain.test", 10, "mx.plain.test");
    dns.add_ip("mx.plain.test", lo(23));
    dns.add_ip("mx.snd.test", lo(24));
    let mut cfg = RelayConfig::new()
        .hostname(HOST)
        .listen("starttls", "none")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .dns(&dns)
        .delivery_port(port)
        .delivery("ca_file", format!("\"{}\"", certs.ca.display()))
        .pool("default", &[PoolIp::new(10, "out1.relay.test")]);
    for d in ["secure", "norq", "snd"] {
        cfg = verified_route(cfg, d, port);
    }
    let relay = Relay::start(&dir, &cfg.to_toml());

    // Without REQUIRETLS the same destinations take it: the control.
    submit_tls(&relay, &certs, false, &["a@plain.test"], "control");
    let m = plain.wait_for_messages(1, WAIT);
    assert_eq!(m[0].subject(), "control");

    let rcpts = ["a@secure.test", "b@norq.test", "c@opp.test", "d@plain.test"];
    submit_tls(&relay, &certs, true, &rcpts, "secret");
    let m = secure.wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some(), "{}", secure.transcripts());
    assert!(
        m[0].mail_params
            .split_whitespace()
            .any(|p| p == "REQUIRETLS"),
        "REQUIRETLS on MAIL FROM: {:?}",
        m[0].mail_params
    );

    // A DSN for the three others (one per destination), itself REQUIRETLS (RFC 8689 §5),
    // each recipient with 5.7.30.
    let failed = &rcpts[1..];
    let all_reported = || {
        let text: String = back.messages().iter().map(|m| m.data_str()).collect();
        failed
            .iter()
            .all(|r| text.contains(&format!("Final-Recipient: rfc822; {r}")))
    };
    assert!(wait_until(WAIT, all_reported), "{}", back.transcripts());
    let dsns = back.messages();
    for d in &dsns {
        assert!(
            d.mail_params.split_whitespace().any(|p| p == "REQUIRETLS"),
            "{:?}",
            d.mail_params
        );
    }
    let text: String = dsns.iter().map(|m| m.data_str()).collect();
    assert_eq!(text.matches("Status: 5.7.30").count(), 3, "{text}");
    assert!(
        text.contains("mx.norq.test does not offer REQUIRETLS"),
        "{text}"
    );
    assert!(!text.contains("Secret body."), "headers only: {text}");
    assert!(
        wait_until(WAIT, || relay.queued_ids().is_empty()),
        "{}",
        relay.log()
    );

    // Never sent anywhere else; the opportunistic and plaintext hosts were not even contacted
    // for it, the verified one without REQUIRETLS got no MAIL FROM.
    assert!(norq.messages().is_empty(), "{}", norq.transcripts());
    assert!(
        !norq.transcripts().contains("C: MAIL"),
        "{}",
        norq.transcripts()
    );
    assert!(opp.sessions().is_empty(), "{}", opp.transcripts());
    assert_eq!(
        plain.messages().len(),
        1,
        "only the control: {}",
        plain.transcripts()
    );
    assert_eq!(plain.sessions().len(), 1, "{}", plain.transcripts());
}

/// The relay of the MTA-STS tests: STARTTLS listener, test DNS and CA, policies fetched from
/// `web`, deliveries to `port`, one pool IP, a long retry (a deferral stays in the queue).
fn sts_config(certs: &Certs, dns: &DnsServer, port: u16, web: &HttpsServer) -> RelayConfig {
    RelayConfig::new()
        .hostname(HOST)
        .listen("starttls", "none")
        .tls(certs)
        .networks(&["127.0.0.1/32"])
        .dns(dns)
        .delivery_port(port)
        .delivery("ca_file", format!("\"{}\"", certs.ca.display()))
        .delivery("mta_sts", format!("{{ https_port = {} }}", web.port()))
        .delivery("retry", "[\"1h\"]")
        .pool("default", &[PoolIp::new(10, "out1.relay.test")])
}

/// An MX sink on `ip` with STARTTLS (the test CA's certificate) that offers REQUIRETLS.
fn requiretls_sink(ip: std::net::IpAddr, port: u16, certs: &Certs) -> Sink {
    Sink::builder(&[ip])
        .port(port)
        .starttls(certs)
        .requiretls()
        .start()
}

fn sts_policy(mode: &str, mx: &str) -> Served {
    Served::text(&format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"
    ))
}

/// MTA-STS verifies the MX: `enforce` carries REQUIRETLS to a server offering it; `testing`
/// counts as `enforce` for REQUIRETLS (RFC 8689 §4.2.1), so a certificate for the wrong name
/// defers it instead of the opportunistic delivery a plain message gets. `TLS-Required: No`
/// lets a message pass an enforce policy's certificate failure (opportunistic STARTTLS).
#[test]
fn requiretls_over_mta_sts_testing_counts_as_enforce_and_tls_required_no_relaxes_it() {
    let dir = tempdir("requiretls-sts");
    let names = [
        HOST,
        "mx.good.test",
        "mta-sts.enforce.test",
        "mta-sts.testing.test",
    ];
    let certs = make_certs(&dir, &names);
    let dns = DnsServer::start();
    let port = free_port_on(&[lo(40), lo(41)]);
    let good = requiretls_sink(lo(40), port, &certs);
    // Offers REQUIRETLS, but its certificate is not valid for mx.wrongname.test.
    let wrong = requiretls_sink(lo(41), port, &certs);
    let web = HttpsServer::start(lo(42), &certs);
    dns.add_ip("mx.good.test", lo(40));
    dns.add_ip("mx.wrongname.test", lo(41));
    for (domain, mode, mx) in [
        ("enforce.test", "enforce", "mx.good.test"),
        ("testing.test", "testing", "mx.wrongname.test"),
        ("strict.test", "enforce", "mx.wrongname.test"),
    ] {
        dns.add_mx(domain, 10, mx);
        dns.add_txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=1;");
        dns.add_ip(&format!("mta-sts.{domain}"), lo(42));
        web.set(&format!("mta-sts.{domain}"), sts_policy(mode, mx));
    }
    // A long retry: the deferral stays visible in the queue.
    let cfg = sts_config(&certs, &dns, port, &web);
    let relay = Relay::start(&dir, &cfg.to_toml());

    submit_tls(&relay, &certs, true, &["a@enforce.test"], "enforced");
    let m = good.wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some());
    assert!(
        m[0].mail_params
            .split_whitespace()
            .any(|p| p == "REQUIRETLS"),
        "{:?}",
        m[0].mail_params
    );

    // The control: without REQUIRETLS, testing mode delivers despite the wrong name.
    submit_tls(&relay, &certs, false, &["b@testing.test"], "control");
    let m = wrong.wait_for_messages(1, WAIT);
    assert_eq!(m[0].subject(), "control");
    submit_tls(&relay, &certs, true, &["c@testing.test"], "secret");
    let deferred = || {
        relay.queued_envelopes().into_iter().any(|e| {
            let r = &e["recipients"][0];
            r["address"] == "c@testing.test" && r["attempts"] == 1
        })
    };
    assert!(wait_until(WAIT, deferred), "{}", relay.plain_log());
    let env = relay
        .queued_envelopes()
        .into_iter()
        .find(|e| e["recipients"][0]["address"] == "c@testing.test")
        .unwrap();
    assert_eq!(env["recipients"][0]["state"], "pending", "{env}");
    assert_eq!(
        env["recipients"][0]["last_reply"]["status"], "4.7.5",
        "{env}"
    );
    assert_eq!(
        wrong.messages().len(),
        1,
        "only the control: {}",
        wrong.transcripts()
    );
}

/// RFC 8689 §4.2.1: `testing` counts as `enforce` for REQUIRETLS, the `mx` patterns too, so an
/// MX host the policy does not list gets no REQUIRETLS message even with a valid certificate
/// (deferred, never contacted); a plain message still goes there. A policy that cannot be
/// fetched defers a REQUIRETLS message (the next try may get it) instead of bouncing it.
#[test]
fn requiretls_defers_for_an_mx_outside_a_testing_policy_and_for_a_failed_policy_fetch() {
    let dir = tempdir("requiretls-sts-mx");
    let names = [HOST, "mx.outside.test", "mta-sts.outside.test"];
    let certs = make_certs(&dir, &names);
    let dns = DnsServer::start();
    let port = free_port_on(&[lo(43)]);
    // Offers REQUIRETLS with a certificate valid for its name: only the policy keeps it out.
    let outside = requiretls_sink(lo(43), port, &certs);
    let web = HttpsServer::start(lo(44), &certs);
    dns.add_ip("mx.outside.test", lo(43));
    dns.add_mx("outside.test", 10, "mx.outside.test");
    dns.add_txt("_mta-sts.outside.test", "v=STSv1; id=1;");
    dns.add_ip("mta-sts.outside.test", lo(44));
    web.set(
        "mta-sts.outside.test",
        sts_policy("testing", "mx.listed.test"),
    );
    // A policy announced whose host has no address: every fetch fails.
    dns.add_mx("nofetch.test", 10, "mx.outside.test");
    dns.add_txt("_mta-sts.nofetch.test", "v=STSv1; id=1;");
    let cfg = sts_config(&certs, &dns, port, &web);
    let relay = Relay::start(&dir, &cfg.to_toml());

    submit_tls(&relay, &certs, true, &["a@outside.test"], "secret");
    let r = deferred_once(&relay, "a@outside.test", WAIT);
    assert_eq!(r["state"], "pending", "{r}");
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    let text = r["last_reply"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("mx.outside.test is not an MX host allowed by the policy of outside.test"),
        "{r}"
    );
    // The control: a plain message goes there (testing only reports).
    submit_tls(&relay, &certs, false, &["b@outside.test"], "control");
    let m = outside.wait_for_messages(1, WAIT);
    assert_eq!(m[0].subject(), "control");

    submit_tls(&relay, &certs, true, &["c@nofetch.test"], "fetch");
    let r = deferred_once(&relay, "c@nofetch.test", WAIT);
    assert_eq!(r["state"], "pending", "not bounced: {r}");
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    let text = r["last_reply"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("the policy of nofetch.test could not be fetched"),
        "{r}"
    );
    assert_eq!(outside.messages().len(), 1, "{}", outside.transcripts());
}

/// `[delivery] tls = "required"` is a floor for MX destinations, not a policy: an MTA-STS
/// `enforce` policy still refuses an MX host it does not list, and a REQUIRETLS message to a
/// destination with no policy bounces (the MX name comes from DNS nobody vouched for), while a
/// plain message there goes over verified TLS.
#[test]
fn a_global_required_is_a_floor_and_does_not_satisfy_requiretls() {
    let dir = tempdir("requiretls-floor");
    let names = [HOST, "mx.floor.test", "mta-sts.strict.test"];
    let certs = make_certs(&dir, &names);
    let dns = DnsServer::start();
    let port = free_port_on(&[lo(46)]);
    let mx = requiretls_sink(lo(46), port, &certs);
    let web = HttpsServer::start(lo(47), &certs);
    dns.add_ip("mx.floor.test", lo(46));
    dns.add_mx("nopolicy.test", 10, "mx.floor.test");
    dns.add_mx("strict.test", 10, "mx.floor.test");
    dns.add_txt("_mta-sts.strict.test", "v=STSv1; id=1;");
    dns.add_ip("mta-sts.strict.test", lo(47));
    web.set(
        "mta-sts.strict.test",
        sts_policy("enforce", "mx.listed.test"),
    );
    let cfg = sts_config(&certs, &dns, port, &web).delivery("tls", "\"required\"");
    let relay = Relay::start(&dir, &cfg.to_toml());

    submit_tls(&relay, &certs, false, &["a@nopolicy.test"], "control");
    let m = mx.wait_for_messages(1, WAIT);
    assert!(m[0].tls.is_some(), "{}", mx.transcripts());

    // The policy's refusal stands under the global `required` (before: delivered as a route).
    submit_tls(&relay, &certs, false, &["b@strict.test"], "strict");
    let r = deferred_once(&relay, "b@strict.test", WAIT);
    assert_eq!(r["last_reply"]["status"], "4.7.5", "{r}");
    let text = r["last_reply"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("mx.floor.test is not an MX host allowed by the policy of strict.test"),
        "{r}"
    );

    submit_tls(&relay, &certs, true, &["c@nopolicy.test"], "secret");
    let skipped = || {
        relay.plain_log().lines().any(|l| {
            l.contains("recipient=c@nopolicy.test")
                && l.contains("550 5.7.30 REQUIRETLS support required")
                && l.contains("status=\"bounced\"")
        })
    };
    assert!(wait_until(WAIT, skipped), "{}", relay.plain_log());
    assert_eq!(
        mx.messages().len(),
        1,
        "only the control: {}",
        mx.transcripts()
    );
}
