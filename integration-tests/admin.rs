//! Admin access (issues 13 and 18): the bearer token (created 0600, reused after a restart), 401
//! without it, JSON-only POSTs (415), cross-site requests refused, body cap (413), slow headers
//! cut and the connection cap, the opt-in token-free pool status for loopback, and TLS (CLI and
//! a rustls client) when `[admin] tls = "on"`. All against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::admin::{self as adm, http, ip_entry, pool_status, request, token, token_file};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn config() -> RelayConfig {
    adm::api_only_config()
}

fn state(admin: SocketAddr) -> String {
    ip_entry(&pool_status(admin), "127.0.0.10")["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn cli(dir: &std::path::Path, config: &str, args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = args.iter().copied().chain(["--config", config]).collect();
    let (code, text) = run_poolrelay(dir, &args);
    (code == 0, text)
}

#[test]
fn every_request_needs_the_token_which_survives_restarts() {
    let dir = tempdir("admin-token");
    let cfg = config();
    let (mut relay, admin) = adm::start(&dir, &cfg, WAIT);
    let file = token_file(admin);
    let first = token(admin);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(first.len() >= 32, "{first}");
    assert!(
        !relay.log().contains(&first),
        "the token is in the log:\n{}",
        relay.log()
    );

    for path in [
        "/api/pool",
        "/api/queue",
        "/metrics",
        "/api/page",
        "/api/doctor",
    ] {
        let (code, head, body) = request(admin, "GET", path, &[], "");
        assert_eq!(code, 401, "GET {path} without token: {head}\n{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
        let (code, _, _) = request(
            admin,
            "GET",
            path,
            &[(
                "Authorization",
                "Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )],
            "",
        );
        assert_eq!(code, 401, "GET {path} with a wrong token");
    }
    // A drain without the token does nothing.
    let (code, _, _) = request(
        admin,
        "POST",
        "/api/pool/127.0.0.10/drain",
        &[("Content-Type", "application/json")],
        "{}",
    );
    assert_eq!(code, 401);
    assert_ne!(state(admin), "drained");
    // The shell page is open but holds no data.
    let (code, _, shell) = request(admin, "GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(
        shell.contains("id=\"login\"") && !shell.contains("127.0.0.10"),
        "{shell}"
    );

    // The CLI reads the token file named by the config.
    let (ok, out) = cli(relay.dir(), "poolrelay.toml", &["pool", "status"]);
    assert!(ok && out.contains("127.0.0.10"), "{out}");

    relay.restart();
    assert!(wait_until(WAIT, || TcpStream::connect(admin).is_ok()));
    assert_eq!(token(admin), first, "token replaced on restart");
    assert_eq!(http(admin, "GET", "/api/pool", None).0, 200);
}

#[test]
fn posts_must_be_json_same_origin_and_small() {
    let dir = tempdir("admin-post");
    let (_relay, admin) = adm::start(&dir, &config(), WAIT);
    let bearer = format!("Bearer {}", token(admin));
    let auth = ("Authorization", bearer.as_str());
    let drain = "/api/pool/127.0.0.10/drain";

    let (code, _, body) = request(
        admin,
        "POST",
        drain,
        &[auth, ("Content-Type", "text/plain")],
        "{}",
    );
    assert_eq!(code, 415, "{body}");
    let (code, _, _) = request(admin, "POST", drain, &[auth], "{}");
    assert_eq!(code, 415, "POST without a content type");
    let host = admin.to_string();
    let (code, _, body) = request(
        admin,
        "POST",
        drain,
        &[
            auth,
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        "{}",
    );
    assert_eq!(code, 403, "{body}");
    assert_ne!(state(admin), "drained", "a refused POST acted");

    let big = format!("{{\"reason\":\"{}\"}}", "x".repeat(70 * 1024));
    let (code, _, body) = request(
        admin,
        "POST",
        drain,
        &[auth, ("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(code, 413, "{body}");
    assert_ne!(state(admin), "drained");

    // The same POST from the page's own origin works.
    let origin = format!("http://{host}");
    let (code, _, body) = request(
        admin,
        "POST",
        drain,
        &[
            auth,
            ("Content-Type", "application/json; charset=utf-8"),
            ("Origin", &origin),
        ],
        "{\"reason\":\"test\"}",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(state(admin), "drained");
}

/// Half a request line holds a connection only until the header timeout; past the cap a new
/// connection takes the slot of the oldest idle one (issue 25; 503 with every slot busy is in
/// `admin_abuse.rs`); SMTP is unaffected; slots come back.
#[test]
fn slow_headers_are_cut_and_connections_capped() {
    let dir = tempdir("admin-slow");
    let cfg = config()
        .admin_key("header_timeout", "\"2s\"")
        .admin_key("max_connections", 3);
    let (relay, admin) = adm::start(&dir, &cfg, WAIT);
    let _ = token(admin);
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"GET /api/po").unwrap();
            s
        })
        .collect();
    // Past the cap: served, in the slot of the oldest slow connection.
    let (code, head, _) = request(admin, "GET", "/", &[], "");
    assert_eq!(code, 200, "{head}");
    // The relay still serves mail meanwhile.
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    c.quit();
    // Each slow client is closed (for the new one, or by the header timeout), not left hanging.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        // EOF or a reset: closed. A read timeout: still held open.
        let r = s.read_to_end(&mut buf);
        assert!(
            !matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "slow connection not closed after 30 s: {r:?}"
        );
    }
    // The slots are free again.
    assert!(
        wait_until(WAIT, || request(admin, "GET", "/", &[], "").0 == 200),
        "slots not released"
    );
    assert_eq!(http(admin, "GET", "/api/pool", None).0, 200);
}

#[test]
fn loopback_pool_status_without_token_is_opt_in_and_read_only() {
    let dir = tempdir("admin-open-pool");
    let cfg = config().admin_key("loopback_pool_status_without_token", true);
    let (_relay, admin) = adm::start(&dir, &cfg, WAIT);
    let (code, _, body) = request(admin, "GET", "/api/pool", &[], "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("127.0.0.10"));
    assert_eq!(request(admin, "GET", "/api/queue", &[], "").0, 401);
    let json = ("Content-Type", "application/json");
    assert_eq!(
        request(admin, "POST", "/api/pool/127.0.0.10/drain", &[json], "{}").0,
        401
    );
}

/// `tls = "on"` on 127.0.0.1: plain HTTP gets no answer, a rustls client trusting the test CA
/// does with the token; the CLI speaks HTTPS to the relay's hostname with `ca_file`, and
/// refuses a certificate it cannot verify.
#[test]
fn tls_admin_for_clients_and_cli() {
    let dir = tempdir("admin-tls");
    let certs = make_certs(&dir, &["relay.test"]);
    let base = config().tls(&certs).admin_key("tls", "\"on\"");
    let cfg = base
        .clone()
        .admin_key("ca_file", format!("\"{}\"", certs.ca.display()));
    let (relay, admin) = adm::start(&dir, &cfg, WAIT);
    let secret = token(admin);

    let (code, _, _) = request(admin, "GET", "/", &[], "");
    assert_ne!(code, 200, "plain HTTP answered on a TLS listener");

    let tls = client_tls(&certs.ca);
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let conn = rustls::ClientConnection::new(tls, name).unwrap();
    let tcp = TcpStream::connect(admin).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET /api/pool HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("127.0.0.10"), "{raw}");

    let (ok, out) = cli(
        relay.dir(),
        "poolrelay.toml",
        &["pool", "drain", "127.0.0.10"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(relay.dir(), "poolrelay.toml", &["pool", "status"]);
    assert!(ok && out.contains("drained"), "{out}");
    // Without the CA (the relay's cert.pem is a leaf of the test CA) the CLI must refuse.
    std::fs::write(relay.dir().join("noca.toml"), base.to_toml()).unwrap();
    let (ok, out) = cli(relay.dir(), "noca.toml", &["pool", "status"]);
    assert!(!ok, "CLI trusted an unverifiable certificate: {out}");
    assert!(
        out.to_lowercase().contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );
}

fn client_tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    common::client::client_tls_config(ca)
}

#[test]
fn check_config_refuses_tls_admin_without_a_certificate() {
    let dir = tempdir("admin-check");
    let cfg = config().admin_key("tls", "\"on\"");
    std::fs::write(dir.join("poolrelay.toml"), cfg.to_toml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["check-config", "poolrelay.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (ok, out) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("[tls] is missing"), "{out}");
}
