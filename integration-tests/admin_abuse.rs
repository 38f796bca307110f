//! The admin listener under abuse (issue 25): `Host` must name the listener, even for the open
//! pool status (DNS rebinding); idle connections from one or many addresses never keep the
//! operator out; refused requests and connections grow the log by a bounded number of lines.
//! All against the real binary, clients on their own 127.0.0.N addresses.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{self as adm, connect_from, raw_from, token};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn config() -> RelayConfig {
    adm::api_only_config()
}

/// A relay whose admin API holds at most `max` connections, 2 a client, and waits 60 s for a
/// request's headers; with its `Bearer` authorization value.
fn capped(name: &str, max: u32) -> (Relay, SocketAddr, String) {
    let cfg = config()
        .admin_key("header_timeout", "\"60s\"")
        .admin_key("max_connections", max)
        .admin_key("max_connections_per_client", 2);
    let (relay, admin) = adm::start(&tempdir(name), &cfg, WAIT);
    let bearer = format!("Bearer {}", token(admin));
    (relay, admin, bearer)
}

fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--config", "poolrelay.toml"])
        .collect();
    let (code, text) = run_poolrelay(dir, &args);
    (code == 0, text)
}

fn log_len(relay: &Relay) -> u64 {
    std::fs::metadata(relay.dir().join("relay.log"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The log written since byte `from`.
fn log_since(relay: &Relay, from: u64) -> String {
    let all = std::fs::read(relay.dir().join("relay.log")).unwrap_or_default();
    String::from_utf8_lossy(&all[(from as usize).min(all.len())..]).into_owned()
}

fn addr(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

#[test]
fn host_must_name_the_listener_even_for_the_open_status() {
    let dir = tempdir("admin-host");
    let cfg = config()
        .admin_key("loopback_pool_status_without_token", true)
        .admin_key("allowed_hosts", "[\"admin.example\"]");
    let (relay, admin) = adm::start(&dir, &cfg, WAIT);
    let get = |host: Option<&str>, target: &str| {
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        adm::raw(
            admin,
            format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    let port = admin.port();
    // A rebound page sends its own name: refused before the route, data never sent.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "relay.test.evil.example".into(),
        "127.0.0.2".into(),
    ] {
        let (code, _, body) = get(Some(&host), "/api/pool");
        assert_eq!(code, 421, "Host {host}: {body}");
        assert!(!body.contains("127.0.0.10"), "{body}");
    }
    // The token does not make a foreign name right; nor does the page's shell.
    let bearer = format!("Bearer {}", token(admin));
    let (code, _, _) = adm::raw(
        admin,
        format!("GET /api/pool HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {bearer}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(code, 421);
    assert_eq!(get(Some("evil.example"), "/").0, 421);
    // An absolute target names the host that counts; no Host on HTTP/1.1 is malformed.
    let absolute = format!("http://evil.example:{port}/api/pool");
    assert_eq!(get(Some(&admin.to_string()), &absolute).0, 421);
    assert_eq!(get(None, "/api/pool").0, 400);

    // The listener's own names are served.
    for host in [
        admin.to_string(),
        "127.0.0.1".into(),
        format!("localhost:{port}"),
        "relay.test".into(),
        "Admin.Example.".into(),
    ] {
        let (code, _, body) = get(Some(&host), "/api/pool");
        assert_eq!(code, 200, "Host {host}: {body}");
        assert!(body.contains("127.0.0.10"), "{body}");
    }
    let (ok, out) = cli(relay.dir(), &["pool", "status"]);
    assert!(ok && out.contains("127.0.0.10"), "{out}");
    assert!(
        relay.plain_log().contains("(Host evil.example"),
        "refusal not logged:\n{}",
        relay.plain_log()
    );
    // What hyper refuses itself (400 before any route) is counted too.
    let (code, _, _) = raw_from(admin, lo(44), b"GET /\x01 HTTP/1.1\r\n\r\n");
    assert_eq!(code, 400);
    assert!(
        relay.wait_for_log("refused requests from 127.0.0.44", WAIT),
        "{}",
        relay.plain_log()
    );
}

#[test]
fn check_config_refuses_a_malformed_allowed_host_at_its_line() {
    let dir = tempdir("admin-host-check");
    let cfg = config().admin_key("allowed_hosts", "[\"ok.example\", \"*.example:80\"]");
    let toml = cfg.to_toml();
    std::fs::write(dir.join("poolrelay.toml"), &toml).unwrap();
    let line = toml
        .lines()
        .position(|l| l.starts_with("allowed_hosts"))
        .unwrap()
        + 1;
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["check-config", "poolrelay.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("poolrelay.toml:{line}:")) && err.contains("*.example:80"),
        "{err}"
    );
    assert!(!err.contains("ok.example"), "{err}");
}

/// True when the server closed `s` (EOF or reset), false while it is held open.
fn closed(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 256];
    match (&mut &*s).read(&mut b) {
        // EOF; an answer (a refusal) counts as closed too: idle clients send nothing.
        Ok(0) | Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One client holding many idle connections, then idle connections from many addresses
/// (what kept the CLI on 503 before): the operator still gets `pool status`, from 127.0.0.1
/// with the CLI and with the token from another address.
#[test]
fn idle_connections_never_lock_the_operator_out() {
    let (relay, admin, bearer) = capped("admin-cap", 6);

    // Client A: 8 idle connections from 127.0.0.9; it keeps at most 2 (its newest).
    let a: Vec<TcpStream> = (0..8).map(|_| connect_from(admin, lo(9))).collect();
    assert!(
        wait_until(WAIT, || a.iter().filter(|s| closed(s)).count() == 6),
        "client A holds more than its 2 connections"
    );
    assert!(!closed(&a[7]), "A's newest connection was closed");
    // 20 more addresses, one idle connection each: far past max_connections.
    let others: Vec<TcpStream> = (0..20).map(|n| connect_from(admin, addr(1, n))).collect();
    let (ok, out) = cli(relay.dir(), &["pool", "status"]);
    assert!(
        ok && out.contains("127.0.0.10"),
        "operator locked out: {out}"
    );
    let req = format!(
        "GET /api/pool HTTP/1.1\r\nHost: {admin}\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
    );
    let (code, _, body) = raw_from(admin, lo(77), req.as_bytes());
    assert_eq!(code, 200, "{body}");
    // Never more than max_connections held: most of the idle ones were closed.
    let open = others.iter().filter(|s| !closed(s)).count();
    assert!(open <= 6, "{open} idle connections still held");
}

/// Every slot busy (token holders with slow bodies): 503 for the rest, and a flood of refused
/// connections from one and from many addresses writes a few lines.
#[test]
fn connection_flood_at_the_cap_is_logged_in_bounded_lines() {
    let (relay, admin, bearer) = capped("admin-503", 2);
    // Two POSTs whose bodies never finish: busy until they end. `100 Continue` tells that the
    // handler is reading the body (before that, an idle connection would be closed for a probe).
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect_from(admin, lo(5));
            write!(
                s,
                "POST /api/pool/drain HTTP/1.1\r\nHost: {admin}\r\nAuthorization: {bearer}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            .unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 256];
            while !String::from_utf8_lossy(&got).contains("100 Continue") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => panic!("no 100 Continue: {}", String::from_utf8_lossy(&got)),
                    Ok(k) => got.extend_from_slice(&b[..k]),
                }
            }
            s.write_all(b"{").unwrap();
            s
        })
        .collect();
    let probe = || {
        let req = format!("GET / HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        adm::raw(admin, req.as_bytes()).0
    };
    assert!(
        wait_until(WAIT, || probe() == 503),
        "no 503 with every slot busy"
    );

    let before = log_len(&relay);
    let started = Instant::now();
    let mut refused = 0;
    for n in 0..3000u32 {
        // Half from 127.0.0.9, half from 1500 other addresses.
        let from = if n % 2 == 0 {
            lo(9)
        } else {
            addr(2 + (n / 250) as u8, (n % 250) as u8)
        };
        // Refused at accept, before a byte is read: read only (a request left unread would
        // make the close a reset that can eat the answer).
        let mut c = connect_from(admin, from);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        refused += usize::from(answer.starts_with(b"HTTP/1.1 503"));
    }
    let grown = log_since(&relay, before);
    eprintln!(
        "503 flood: {refused} of 3000 refused in {:?}; log grew {} bytes, {} lines",
        started.elapsed(),
        grown.len(),
        grown.lines().count()
    );
    assert!(refused > 2900, "{refused}");
    let lines = grown
        .lines()
        .filter(|l| l.contains("refused requests"))
        .count();
    assert!((1..=25).contains(&lines), "{lines} lines:\n{grown}");
    assert!(grown.len() < 16 * 1024, "{} bytes:\n{grown}", grown.len());
    assert!(grown.contains("from 127.0.0.9"), "{grown}");
    // The slots come back when the slow bodies end.
    drop(busy);
    assert!(wait_until(WAIT, || probe() == 200), "slots not released");
}

/// Thousands of refused requests with 5 KB paths on one keep-alive connection: one line at
/// once, fields cut and escaped; a minute later one line with the count.
#[test]
fn refused_request_stream_from_one_client_is_one_line_a_minute() {
    let dir = tempdir("admin-flood-one");
    let (relay, admin) = adm::start(&dir, &config(), WAIT);
    let _ = token(admin);
    let before = log_len(&relay);
    let started = Instant::now();
    let long = format!("/api/{}%0a%1b\u{202e}", "A".repeat(5000));
    let n = 3000;

    let mut s = connect_from(admin, lo(9));
    let mut writer = s.try_clone().unwrap();
    let (path, host) = (long.clone(), admin.to_string());
    // Pipelined: written by one thread while this one reads the answers.
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let req = format!("GET {path}/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            if writer.write_all(req.as_bytes()).is_err() {
                break;
            }
        }
    });
    let want = b"HTTP/1.1 401";
    let count = |got: &[u8]| got.windows(want.len()).filter(|w| w == want).count();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while count(&got) < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    sender.join().unwrap();
    assert_eq!(count(&got), n, "not every request answered 401");
    let grown = log_since(&relay, before);
    eprintln!(
        "one client: {n} refused requests ({} KiB of paths) in {:?}; log grew {} bytes, {} lines",
        n * long.len() / 1024,
        started.elapsed(),
        grown.len(),
        grown.lines().count()
    );
    let lines: Vec<&str> = grown
        .lines()
        .filter(|l| l.contains("refused requests"))
        .collect();
    assert_eq!(lines.len(), 1, "{grown}");
    assert!(
        lines[0].contains("1 refused requests from 127.0.0.9"),
        "{grown}"
    );
    assert!(lines[0].len() < 1024, "{lines:?}");
    assert!(!grown.contains(&"A".repeat(101)), "path not cut:\n{grown}");
    assert!(grown.len() < 8 * 1024, "{} bytes:\n{grown}", grown.len());

    // The rest, summed, about a minute after the first line.
    let mut all = String::new();
    assert!(
        wait_until(Duration::from_secs(100), || {
            all = log_since(&relay, before);
            all.contains(&format!("{} refused requests from 127.0.0.9", n - 1))
        }),
        "no count line for 127.0.0.9:\n{all}"
    );
    eprintln!(
        "one client, after the minute: log grew {} bytes, {} lines",
        all.len(),
        all.lines().count()
    );
    assert_eq!(
        all.lines()
            .filter(|l| l.contains("refused requests"))
            .count(),
        2,
        "{all}"
    );
}

/// Refused requests from 1000 addresses (404, 405, 421 with long paths and Host values): at
/// most the minute's budget of lines, each cut and escaped.
#[test]
fn refused_requests_from_many_clients_are_a_bounded_number_of_lines() {
    let dir = tempdir("admin-flood-many");
    let (relay, admin) = adm::start(&dir, &config(), WAIT);
    let bearer = format!("Bearer {}", token(admin));
    let before = log_len(&relay);
    let started = Instant::now();
    let long = format!("/api/{}", "B".repeat(3000));
    let n = 1000u32;
    for i in 0..n {
        let from = addr(3 + (i / 250) as u8, (i % 250) as u8);
        let req = match i % 3 {
            0 => format!(
                "GET {long} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
            ),
            1 => format!(
                "DELETE /api/pool HTTP/1.1\r\nHost: {admin}\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
            ),
            _ => format!(
                "GET {long} HTTP/1.1\r\nHost: {}.evil.example\r\nConnection: close\r\n\r\n",
                "h".repeat(2000)
            ),
        };
        let (code, _, _) = raw_from(admin, from, req.as_bytes());
        assert!(matches!(code, 400 | 404 | 415 | 421), "{code}");
    }
    let grown = log_since(&relay, before);
    eprintln!(
        "{n} clients: {n} refused requests in {:?}; log grew {} bytes, {} lines",
        started.elapsed(),
        grown.len(),
        grown.lines().count()
    );
    let lines: Vec<&str> = grown
        .lines()
        .filter(|l| l.contains("refused requests"))
        .collect();
    assert!(
        (2..=21).contains(&lines.len()),
        "{} lines:\n{grown}",
        lines.len()
    );
    assert!(lines.iter().all(|l| l.len() < 1024), "{lines:?}");
    assert!(!grown.contains(&"B".repeat(101)) && !grown.contains(&"h".repeat(101)));
    assert!(grown.len() < 16 * 1024, "{} bytes:\n{grown}", grown.len());
    assert!(
        grown.contains("refused requests from clients past the"),
        "{grown}"
    );
}
