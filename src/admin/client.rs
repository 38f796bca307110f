//! The CLI side of the admin API (`poolrelay pool …`): one HTTP/1.1 request over a plain TCP
//! connection to `admin.listen` (loopback), and the status table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Sends one request and returns (status code, body). `Connection: close` keeps it simple.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to the admin API at {addr}: {e} (is poolrelay running with [admin] listen = \"{addr}\"?)"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("admin API {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("admin API {addr}: {e}"))?;
    parse_response(&raw).ok_or_else(|| format!("admin API {addr}: malformed HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let code: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[end + 4..];
    let text = if chunked {
        let mut out = Vec::new();
        loop {
            let nl = body.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&body[..nl]).ok()?.trim(), 16).ok()?;
            body = &body[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(..size)?);
            body = body.get(size + 2..)?;
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Some((code, text))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /api/pool` as a table: one line per IP × provider (one line for an IP without
/// traffic yet), with the hold reason last.
pub fn format_status(status: &Value) -> String {
    let mut rows = vec![
        [
            "POOL", "IP", "STATE", "PROVIDER", "P-STATE", "DAY", "TODAY", "HOUR", "SENT", "DEFER",
            "BOUNCE", "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for pool in status["pools"].as_array().into_iter().flatten() {
        for ip in pool["ips"].as_array().into_iter().flatten() {
            let reason = match (&ip["reason"], &ip["evidence"]) {
                (Value::String(r), Value::String(e)) if !e.is_empty() => format!("{r} ({e})"),
                (r, _) => cell(r),
            };
            let head = [cell(&pool["name"]), cell(&ip["ip"]), cell(&ip["state"])];
            let providers = ip["providers"].as_object().cloned().unwrap_or_default();
            if providers.is_empty() {
                let mut row = head.to_vec();
                row.extend(["-"; 8].map(String::from));
                row.push(reason.clone());
                rows.push(row);
            }
            for (name, p) in providers {
                let used = |u: &Value, c: &Value| match c {
                    Value::Null => cell(u),
                    c => format!("{}/{}", cell(u), cell(c)),
                };
                let mut row = head.to_vec();
                row.extend([
                    name,
                    cell(&p["state"]),
                    cell(&p["warmup_day"]),
                    used(&p["used_today"], &p["cap_today"]),
                    used(&p["used_hour"], &p["cap_hour"]),
                    cell(&p["sent"]),
                    cell(&p["deferred"]),
                    cell(&p["bounced"]),
                    match &p["backoff_reason"] {
                        Value::String(b) => format!("backoff: {b}"),
                        _ => reason.clone(),
                    },
                ]);
                rows.push(row);
            }
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let (c, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((c, b.as_str()), (200, "{}"));
        let (c, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c, b.as_str()), (404, "abcde"));
    }

    #[test]
    fn table_has_a_line_per_ip_and_provider() {
        let v: Value = serde_json::from_str(
            r#"{"pools":[{"name":"default","ips":[
              {"ip":"127.0.0.10","state":"warming","reason":null,"evidence":null,"providers":{
                "gmail":{"state":"warming","warmup_day":2,"used_today":5,"cap_today":1000,"used_hour":1,"cap_hour":84,"sent":5,"deferred":0,"bounced":1}}},
              {"ip":"127.0.0.11","state":"drained","reason":"operator","evidence":"","providers":{}}]}]}"#,
        )
        .unwrap();
        let t = format_status(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].contains("127.0.0.10") && lines[1].contains("5/1000"),
            "{t}"
        );
        assert!(
            lines[2].contains("drained") && lines[2].ends_with("operator"),
            "{t}"
        );
    }
}
