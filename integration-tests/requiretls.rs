//! REQUIRETLS (RFC 8689) through the real binary: offered and accepted only inside TLS, refused
//! in plaintext, kept in the spool envelope; `TLS-Required: No` kept too (REQUIRETLS wins).
//!
//! These configs route every domain to a closed port, so accepted messages stay in the queue
//! where the tests read their envelopes.

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
