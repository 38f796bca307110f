//! The CLI side of the admin API (`poolrelay pool …`, `poolrelay queue …`): requests with
//! ureq to `[admin] listen` carrying the token of `[admin] token_file`, and the status table.
//! When the API speaks TLS the CLI asks for the relay's `hostname` (the name its certificate
//! carries) at the listen address, and trusts the system roots, `[admin] ca_file` and the
//! certificates in `[tls] certificate` (so a self-signed relay certificate works as it is).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::config::Config;

/// The config at `path` for `poolrelay {command}`, which talks to the admin API: its errors, or
/// a missing `[admin] listen`, are printed and give exit code 2.
pub fn load_config(path: &Path, command: &str) -> Result<Config, ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return Err(ExitCode::from(2));
        }
    };
    if config.admin.is_none() {
        eprintln!("poolrelay {command}: the config has no [admin] listen address");
        return Err(ExitCode::from(2));
    }
    Ok(config)
}

/// Sends one request to the API of `config` and returns (status code, body).
pub fn request(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let admin = config
        .admin
        .as_ref()
        .ok_or("the config has no [admin] listen address")?;
    let token = crate::admin::token::read(&admin.token_path(&config.data_dir)).map_err(|e| {
        format!("{e} (the relay creates it on first start; run this as the relay's user)")
    })?;
    let addr = connect_address(admin.listen);
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(30)));
    let url = if admin.uses_tls() {
        crate::tls::install_crypto_provider();
        builder = builder.tls_config(
            TlsConfig::builder()
                .root_certs(trust_anchors(config)?)
                .build(),
        );
        format!("https://{}:{}{path}", config.hostname, addr.port())
    } else {
        format!("http://{addr}{path}")
    };
    let agent = ureq::Agent::with_parts(builder.build(), DefaultConnector::new(), Pinned(addr));
    let bearer = format!("Bearer {}", token.secret());
    let sent = match method {
        "POST" => {
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            agent
                .post(&url)
                .header("Authorization", &bearer)
                .header("Content-Type", "application/json")
                .send(body.as_str())
        }
        _ => agent.get(&url).header("Authorization", &bearer).call(),
    };
    let mut response = sent.map_err(|e| match e {
        ureq::Error::Io(e) => format!(
            "cannot reach the admin API at {addr}: {e} (is poolrelay running with [admin] listen = \"{}\"?)",
            admin.listen
        ),
        e => format!("admin API {url}: {e}"),
    })?;
    let code = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("admin API {addr}: {e}"))?;
    Ok((code, text))
}

/// Where to connect for `listen`: a wildcard address means this host's loopback.
fn connect_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

fn trust_anchors(config: &Config) -> Result<RootCerts, String> {
    let mut anchors: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let files = config
        .admin
        .as_ref()
        .and_then(|a| a.ca_file.clone())
        .into_iter()
        .chain(config.tls.as_ref().map(|t| t.certificate.clone()));
    for file in files {
        for c in crate::tls::load_certs(&file).map_err(|e| e.to_string())? {
            anchors.push(Certificate::from_der(c.as_ref()).to_owned());
        }
    }
    Ok(RootCerts::new_with_certs(&anchors))
}

/// Resolves every name to the admin listen address: the URL names the relay's hostname for
/// TLS verification, the connection goes to `[admin] listen`.
#[derive(Debug)]
struct Pinned(SocketAddr);

impl Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => crate::text::escape(s).into_owned(),
        other => crate::text::escape(&other.to_string()).into_owned(),
    }
}

/// `GET /api/pool` as a table: one line per IP × provider (one line for an IP without
/// traffic yet), with the hold reason last. With `[cluster]`: the farm's nodes first, the
/// node each IP is on, TODAY and HOUR the farm's with this relay's own today (HERE) beside
/// them, and why the farm refuses as the reason.
pub fn format_status(status: &Value) -> String {
    let farm = status.get("farm").filter(|f| f.is_object());
    let mut rows = vec![
        [
            "POOL", "IP", "STATE", "PROVIDER", "P-STATE", "DAY", "TODAY", "HOUR", "SENT", "DEFER",
            "BOUNCE", "RAMP", "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    if farm.is_some() {
        rows[0].insert(2, "NODE".into());
        // TODAY and HOUR are the farm's; HERE is this relay's own today.
        rows[0].insert(8, "HERE".into());
    }
    for pool in status["pools"].as_array().into_iter().flatten() {
        for ip in pool["ips"].as_array().into_iter().flatten() {
            let reason = match (&ip["reason"], &ip["evidence"]) {
                (Value::String(r), Value::String(e)) if !e.is_empty() => {
                    format!("{} ({})", crate::text::Escaped(r), crate::text::Escaped(e))
                }
                (r, _) => cell(r),
            };
            let mut head = vec![cell(&pool["name"]), cell(&ip["ip"]), cell(&ip["state"])];
            if farm.is_some() {
                head.insert(2, cell(&ip["node"]));
            }
            let providers = ip["providers"].as_object().cloned().unwrap_or_default();
            if providers.is_empty() {
                let mut row = head.to_vec();
                row.extend(["-"; 9].map(String::from));
                if farm.is_some() {
                    row.push("-".into());
                }
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
                    crate::text::escape(&name).into_owned(),
                    cell(&p["state"]),
                    cell(&p["warmup_day"]),
                    used(&p["used_today"], &p["cap_today"]),
                    match &p["pace_per_hour"] {
                        Value::Null => used(&p["used_hour"], &p["cap_hour"]),
                        pace => format!("{} (paced)", used(&p["used_hour"], pace)),
                    },
                    cell(&p["sent"]),
                    cell(&p["deferred"]),
                    cell(&p["bounced"]),
                    ramp(&p),
                    match (&p["backoff_reason"], &p["farm_full"]) {
                        (Value::String(b), _) => format!("backoff: {}", crate::text::Escaped(b)),
                        (_, Value::String(f)) => crate::text::escape(f).into_owned(),
                        _ => reason.clone(),
                    },
                ]);
                if farm.is_some() {
                    row.insert(8, cell(&p["used_today_here"]));
                }
                rows.push(row);
            }
        }
    }
    let mut out = farm.map(format_farm).unwrap_or_default();
    out.push_str(&crate::text::table(&rows));
    out
}

/// The warm-up ramp's last decision ("adaptive:" first on an adaptive schedule).
fn ramp(p: &Value) -> String {
    let adaptive = p["adaptive"] == Value::Bool(true);
    match (&p["warmup_decision"], adaptive) {
        (Value::String(d), true) => format!("adaptive: {}", crate::text::Escaped(d)),
        (Value::String(d), false) => crate::text::escape(d).into_owned(),
        (_, true) => "adaptive".into(),
        _ => "-".into(),
    }
}

/// The farm's nodes, one line each, before the pool table.
fn format_farm(farm: &Value) -> String {
    let now = crate::spool::now_unix();
    let mut out = format!(
        "farm: this node {}, redis {}\n",
        cell(&farm["node"]),
        if farm["redis_up"] == Value::Bool(true) {
            "up"
        } else {
            "DOWN (holds and suppressions local until it returns)"
        }
    );
    let mut rows = vec![["NODE", "LAST-SEEN", "IPS"].map(String::from).to_vec()];
    for n in farm["nodes"].as_array().into_iter().flatten() {
        let ips: Vec<String> = n["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        let seen = crate::text::relative(n["last_seen"].as_u64().unwrap_or(0), now);
        rows.push(vec![cell(&n["name"]), seen, ips.join(" ")]);
    }
    out.push_str(&crate::text::table(&rows));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_connects_to_loopback() {
        let at = |s: &str| connect_address(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:8025"), "127.0.0.1:8025");
        assert_eq!(at("[::]:8025"), "[::1]:8025");
        assert_eq!(at("192.0.2.1:8025"), "192.0.2.1:8025");
    }

    #[test]
    fn the_farm_comes_first_and_each_ip_says_its_node() {
        let v: Value = serde_json::from_str(
            r#"{"pools":[{"name":"default","ips":[
              {"ip":"127.0.0.10","state":"drained","reason":"operator","evidence":"","providers":{},"node":"relay-2"}]}],
              "farm":{"node":"relay-1","redis_up":true,"nodes":[
                {"name":"relay-1","last_seen":1,"ips":["127.0.0.11"]},
                {"name":"relay-2","last_seen":1,"ips":["127.0.0.10"]}]}}"#,
        )
        .unwrap();
        let t = format_status(&v);
        assert!(t.starts_with("farm: this node relay-1, redis up\n"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("relay-2") && l.ends_with("127.0.0.10")),
            "{t}"
        );
        let ip_line = t.lines().find(|l| l.starts_with("default")).unwrap();
        assert!(ip_line.contains("127.0.0.10  relay-2  drained"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("POOL") && l.contains("IP          NODE")),
            "{t}"
        );
    }

    #[test]
    fn with_a_farm_today_is_the_farms_beside_this_relays_and_says_why_it_refuses() {
        let v: Value = serde_json::from_str(
            r#"{"pools":[{"name":"default","ips":[
              {"ip":"127.0.0.12","state":"warming","reason":null,"evidence":null,"node":"a, b","providers":{
                "alpha":{"state":"warming","warmup_day":0,"used_today":10,"cap_today":10,"used_hour":10,"cap_hour":1000,
                  "used_today_here":9,"used_hour_here":9,"counts_from":"farm","farm_full":"farm daily warm-up cap reached",
                  "sent":9,"deferred":0,"bounced":0}}}]}],
              "farm":{"node":"a","redis_up":true,"nodes":[]}}"#,
        )
        .unwrap();
        let t = format_status(&v);
        assert!(
            t.lines()
                .any(|l| l.starts_with("POOL") && l.contains("TODAY  HERE  HOUR")),
            "{t}"
        );
        let line = t.lines().find(|l| l.starts_with("default")).unwrap();
        assert!(line.contains("10/10  9     10/1000"), "{t}");
        assert!(line.ends_with("farm daily warm-up cap reached"), "{t}");
    }

    #[test]
    fn table_has_a_line_per_ip_and_provider() {
        let v: Value = serde_json::from_str(
            r#"{"pools":[{"name":"default","ips":[
              {"ip":"127.0.0.10","state":"warming","reason":null,"evidence":null,"providers":{
                "gmail":{"state":"warming","warmup_day":2,"used_today":5,"cap_today":1000,"used_hour":1,"cap_hour":84,"sent":5,"deferred":0,"bounced":1,
                  "adaptive":true,"warmup_decision":"held at day 2: 12 % throttled"},
                "yahoo":{"state":"active","used_today":9,"used_hour":3,"cap_hour":null,"pace_per_hour":2,"sent":9,"deferred":1,"bounced":0}}},
              {"ip":"127.0.0.11","state":"drained","reason":"operator","evidence":"","providers":{}}]}]}"#,
        )
        .unwrap();
        let t = format_status(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[1].contains("127.0.0.10") && lines[1].contains("5/1000"),
            "{t}"
        );
        assert!(lines[2].contains("3/2 (paced)"), "{t}");
        assert!(
            lines[1].contains("adaptive: held at day 2: 12 % throttled"),
            "{t}"
        );
        assert!(
            lines[3].contains("drained") && lines[3].ends_with("operator"),
            "{t}"
        );
    }
}
