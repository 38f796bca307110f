//! The admin API as a test talks to it: one HTTP/1.1 request per call, JSON in and out, with the
//! bearer token of the relay listening there (its `[admin] token_file`, default
//! `<data_dir>/admin.token`, registered when the kit starts the relay).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::config::{PoolIp, RelayConfig};
use super::net::wait_until;
use super::relay::Relay;

/// Admin address → its relay's token file.
static TOKEN_FILES: Mutex<Option<HashMap<SocketAddr, PathBuf>>> = Mutex::new(None);

/// Notes the token file of the relay started in `dir` with `config_toml` (no-op without
/// `[admin]`); `Relay` calls it at every start.
pub fn register(dir: &Path, config_toml: &str) {
    let Ok(v) = config_toml.parse::<toml::Table>() else {
        return;
    };
    let Some(admin) = v.get("admin").and_then(|a| a.as_table()) else {
        return;
    };
    let Some(listen) = admin
        .get("listen")
        .and_then(|l| l.as_str())
        .and_then(|l| l.parse::<SocketAddr>().ok())
    else {
        return;
    };
    let data_dir = v.get("data_dir").and_then(|d| d.as_str()).unwrap_or("data");
    let file = match admin.get("token_file").and_then(|t| t.as_str()) {
        Some(t) => dir.join(t),
        None => dir.join(data_dir).join("admin.token"),
    };
    TOKEN_FILES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(listen, file);
}

/// The token file of the relay whose admin API is at `admin`.
pub fn token_file(admin: SocketAddr) -> PathBuf {
    TOKEN_FILES
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&admin).cloned())
        .unwrap_or_else(|| panic!("no relay with [admin] listen = {admin} started by the kit"))
}

/// The bearer token of the relay at `admin` (waits up to 20 s for the file to appear).
pub fn token(admin: SocketAddr) -> String {
    let file = token_file(admin);
    let mut token = String::new();
    wait_until(Duration::from_secs(20), || {
        token = std::fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        !token.is_empty()
    });
    assert!(!token.is_empty(), "no token in {}", file.display());
    token
}

/// A relay for the admin API's own tests: delivers nothing, one pool IP (127.0.0.10,
/// out10.test).
pub fn api_only_config() -> RelayConfig {
    RelayConfig::new()
        .no_delivery()
        .admin()
        .pool("default", &[PoolIp::new(10, "out10.test")])
}

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

/// Sends `request` as it is and returns (status, head, body); status 0 when the server closed
/// the connection without an answer.
pub fn raw(admin: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (413, 401) and close before reading everything.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(raw: &str) -> (u16, String, String) {
    let Some((head, rest)) = raw.split_once("\r\n\r\n") else {
        return (0, raw.to_string(), String::new());
    };
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), rest.to_string())
}

/// One request with the relay's token and `extra` header lines; returns (status, head, body).
pub fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(admin, req.as_bytes())
}

/// One JSON request with the token; returns (status, JSON body or `Null`).
pub fn http(admin: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let bearer = format!("Bearer {}", token(admin));
    let (code, head, rest) = request(
        admin,
        method,
        path,
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    assert!(code != 0, "{method} {path}: no HTTP answer: {head}");
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "expected a sized body: {head}"
    );
    (code, serde_json::from_str(&rest).unwrap_or(Value::Null))
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

/// `GET path` as text with the token (`/metrics`, `/api/page`); panics unless 200.
pub fn get_text(admin: SocketAddr, path: &str) -> String {
    let bearer = format!("Bearer {}", token(admin));
    let (code, head, rest) = request(admin, "GET", path, &[("Authorization", &bearer)], "");
    assert!(code == 200, "GET {path}: {head}\n{rest}");
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "expected a sized body: {head}"
    );
    rest
}

/// A connection to the admin API from a chosen loopback address (bind before connect).
pub fn connect_from(admin: SocketAddr, local: std::net::IpAddr) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(admin),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    sock.bind(&SocketAddr::new(local, 0).into())
        .expect("bind the client address");
    sock.connect_timeout(&admin.into(), Duration::from_secs(10))
        .expect("admin connect");
    let s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// `raw` from a chosen loopback address.
pub fn raw_from(
    admin: SocketAddr,
    local: std::net::IpAddr,
    request: &[u8],
) -> (u16, String, String) {
    let mut s = connect_from(admin, local);
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&String::from_utf8_lossy(&raw))
}
