//! The admin API as a test talks to it: one HTTP/1.1 request per call, JSON in and out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::config::RelayConfig;
use super::net::wait_until;
use super::relay::Relay;

/// Starts the relay of `cfg` (built with `.admin()`) in `dir`; waits up to `wait` for the admin
/// API (panics with the log otherwise) and returns its address.
pub fn start(dir: &Path, cfg: &RelayConfig, wait: Duration) -> (Relay, SocketAddr) {
    let relay = Relay::start(dir, &cfg.to_toml());
    let admin = cfg.admin_addr().expect("config without .admin()");
    assert!(
        wait_until(wait, || TcpStream::connect(admin).is_ok()),
        "admin API not listening\n{}",
        relay.log()
    );
    (relay, admin)
}

/// One request; returns (status, JSON body or `Null`).
pub fn http(admin: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("HTTP head");
    let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "expected a sized body: {head}"
    );
    (code, serde_json::from_str(rest).unwrap_or(Value::Null))
}

/// `GET path`, asserting a 200.
pub fn get(admin: SocketAddr, path: &str) -> Value {
    let (code, v) = http(admin, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {v}");
    v
}

/// `GET /api/pool`.
pub fn pool_status(admin: SocketAddr) -> Value {
    get(admin, "/api/pool")
}

/// One IP's entry of `GET /api/pool`.
pub fn ip_entry(st: &Value, ip: &str) -> Value {
    st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["ips"].as_array().unwrap().iter())
        .find(|i| i["ip"] == ip)
        .unwrap_or_else(|| panic!("{ip} not in {st}"))
        .clone()
}

/// The first hold of `ip` for `scope` in force (any cause), if any.
pub fn hold(admin: SocketAddr, ip: &str, scope: &str) -> Option<Value> {
    find_hold(admin, ip, |h| h["scope"] == scope)
}

/// The hold of `ip` for `scope` with `cause` in force, if any.
pub fn hold_of(admin: SocketAddr, ip: &str, scope: &str, cause: &str) -> Option<Value> {
    find_hold(admin, ip, |h| h["scope"] == scope && h["cause"] == cause)
}

fn find_hold(admin: SocketAddr, ip: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    ip_entry(&pool_status(admin), ip)["holds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| pred(h))
        .cloned()
}
