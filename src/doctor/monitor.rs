//! The checks inside `serve`: a round at start and every `check_interval`; each check's status
//! change is logged once (not every round); the last report is `GET /api/doctor`.
//!
//! Enforcement (`enforce = true`): an IP whose `fcrdns` fails, or whose `spf_pass` fails for any
//! domain it sends for, is drained through the pool's API with reason `doctor`; it is undrained
//! when all of those pass again. A check that warns (DNS error, no verdict) changes nothing.
//! The doctor never overrides another hold on the IP (an operator drain, a DNSBL quarantine) and
//! only lifts its own. With `enforce = false` its leftover holds are lifted at start.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::report::{Report, Status};
use super::run::{Doctor, Options};
use crate::config::Config;
use crate::pool::{Pools, Scope};

/// The reason of the drains the doctor makes (how it recognises its own).
pub const REASON: &str = "doctor";

#[derive(Default)]
struct Latest {
    report: Option<Report>,
    enforce: bool,
    /// IPs the doctor holds out of rotation, with why.
    held: Vec<(IpAddr, String)>,
}

/// The running relay's state, for the admin API (set once by `start`).
static LATEST: OnceLock<Arc<Mutex<Latest>>> = OnceLock::new();

/// `GET /api/doctor`: the last report (`null` before the first round ends).
pub fn routes() -> Router {
    Router::new().route("/api/doctor", get(latest))
}

async fn latest() -> Response {
    let Some(l) = LATEST.get() else {
        return axum::Json(json!({ "enabled": false, "report": null })).into_response();
    };
    let l = l.lock().expect("doctor lock");
    let held: Vec<_> = l
        .held
        .iter()
        .map(|(ip, why)| json!({ "ip": ip.to_string(), "reason": REASON, "why": why }))
        .collect();
    axum::Json(json!({
        "enabled": true,
        "enforce": l.enforce,
        "held": held,
        "report": l.report,
    }))
    .into_response()
}

/// Starts the background checks when `[doctor] background` is on.
pub fn start(config: Arc<Config>, pools: Arc<Pools>) -> Result<(), String> {
    let settings = &config.doctor;
    if !settings.enforce {
        release_all(&pools);
    }
    if !settings.background {
        return Ok(());
    }
    // Bad `[doctor] domains` stop the start, like any config error.
    let domains = super::targets::domains(&config, &[])?;
    if domains.is_empty() && super::targets::ips(&config).is_empty() {
        return Ok(());
    }
    let doctor = Arc::new(Doctor::new(config.clone())?);
    let opts = Options {
        domains: Vec::new(),
        probe: settings.probe && settings.background_probe,
    };
    let shared = LATEST
        .get_or_init(|| Arc::new(Mutex::new(Latest::default())))
        .clone();
    shared.lock().expect("doctor lock").enforce = settings.enforce;
    let every = settings.check_interval.0.max(Duration::from_millis(100));
    let enforce = settings.enforce;
    tracing::info!(interval = %humantime::format_duration(every), enforce, "doctor checks started");
    tokio::spawn(async move {
        let mut seen: HashMap<String, Status> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let report = match doctor.run(&opts).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "doctor checks cannot run");
                    continue;
                }
            };
            log_changes(&report, &mut seen);
            let held = if enforce {
                let (p, r) = (pools.clone(), report.clone());
                tokio::task::spawn_blocking(move || apply(&p, &r))
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let mut l = shared.lock().expect("doctor lock");
            l.report = Some(report);
            l.held = held;
        }
    });
    Ok(())
}

/// Logs each check whose status changed since the last round (first seen: problems only).
fn log_changes(report: &Report, seen: &mut HashMap<String, Status>) {
    for (section, c) in report.checks() {
        let key = format!(
            "{section} {} {}",
            c.name,
            c.subject.as_deref().unwrap_or("")
        );
        let changed = match seen.insert(key, c.status) {
            None => matches!(c.status, Status::Warn | Status::Fail),
            Some(before) => before != c.status,
        };
        if !changed {
            continue;
        }
        let subject = c.subject.as_deref().unwrap_or("");
        let fix = c.fix.as_deref().unwrap_or("");
        match c.status {
            Status::Fail => {
                tracing::warn!(target: "doctor", section = %section, check = c.name, subject, detail = %c.detail, fix, "doctor: check fails")
            }
            Status::Warn => {
                tracing::warn!(target: "doctor", section = %section, check = c.name, subject, detail = %c.detail, "doctor: check warns")
            }
            Status::Pass | Status::Info => {
                tracing::info!(target: "doctor", section = %section, check = c.name, subject, detail = %c.detail, "doctor: check passes again")
            }
        }
    }
}

/// Per IP: `Some(why)` to hold, `None` to release; IPs with an undecided check are left out.
fn verdicts(report: &Report) -> HashMap<IpAddr, Option<String>> {
    let mut out = HashMap::new();
    for ip in &report.ips {
        let mut failing = Vec::new();
        let mut undecided = false;
        let spf = report.domains.iter().flat_map(|d| {
            d.checks
                .iter()
                .filter(|c| c.name == "spf_pass" && c.subject == Some(ip.ip.to_string()))
                .map(move |c| (format!("spf {}", d.domain), c))
        });
        let fcrdns = ip
            .checks
            .iter()
            .filter(|c| c.name == "fcrdns")
            .map(|c| ("fcrdns".to_string(), c));
        for (what, c) in fcrdns.chain(spf) {
            match c.status {
                Status::Fail => failing.push(format!("{what}: {}", c.detail)),
                Status::Warn => undecided = true,
                Status::Pass | Status::Info => {}
            }
        }
        if !failing.is_empty() {
            out.insert(ip.ip, Some(failing.join("; ")));
        } else if !undecided {
            out.insert(ip.ip, None);
        }
    }
    out
}

/// The doctor's drain of `ip`, if the hold on all providers is its own.
fn own_hold(pools: &Pools, ip: IpAddr) -> Option<bool> {
    pools
        .holds()
        .into_iter()
        .find(|(i, h)| *i == ip && h.scope == Scope::All.as_str())
        .map(|(_, h)| h.reason == REASON)
}

/// Brings the doctor's drains in line with the report; returns the IPs it holds.
fn apply(pools: &Pools, report: &Report) -> Vec<(IpAddr, String)> {
    let mut held = Vec::new();
    for (ip, verdict) in verdicts(report) {
        let hold = own_hold(pools, ip);
        match (verdict, hold) {
            (Some(why), None) => {
                tracing::warn!(source_ip = %ip, why = %why, "doctor: taking the IP out of rotation");
                match pools.drain(ip, Scope::All, REASON) {
                    Ok(()) => held.push((ip, why)),
                    Err(e) => tracing::error!(source_ip = %ip, error = %e, "doctor: cannot drain"),
                }
            }
            (Some(why), Some(true)) => held.push((ip, why)),
            // Held by someone else already: leave their hold alone.
            (Some(_), Some(false)) => {}
            (None, Some(true)) => {
                tracing::info!(source_ip = %ip, "doctor: checks pass again, back in rotation");
                if let Err(e) = pools.undrain(ip, Scope::All) {
                    tracing::error!(source_ip = %ip, error = %e, "doctor: cannot undrain");
                }
            }
            (None, _) => {}
        }
    }
    // Undecided IPs keep the doctor's hold and stay listed.
    for ip in pools.ips() {
        if own_hold(pools, ip) == Some(true) && !held.iter().any(|(i, _)| *i == ip) {
            held.push((ip, "held: checks undecided this round".into()));
        }
    }
    held.sort();
    held
}

/// Lifts every hold the doctor made (enforcement turned off).
fn release_all(pools: &Pools) {
    for ip in pools.ips() {
        if own_hold(pools, ip) == Some(true) {
            tracing::info!(source_ip = %ip, "doctor: enforce is off, lifting its hold");
            if let Err(e) = pools.undrain(ip, Scope::All) {
                tracing::error!(source_ip = %ip, error = %e, "doctor: cannot undrain");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::{Check, DomainReport, IpReport};
    use std::path::Path;

    const A: &str = "127.0.0.10";
    const B: &str = "127.0.0.11";

    fn pools() -> Pools {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"{A}\"\nhelo = \"a.test\"\n[[pool.ip]]\naddress = \"{B}\"\nhelo = \"b.test\"\n"
        );
        Pools::from_config(&Config::parse(Path::new("t.toml"), &text).unwrap())
    }

    /// A report where A passes everything and B's FCrDNS and SPF are as given.
    fn report(fcrdns: Status, spf: Status) -> Report {
        let ip = |ip: &str, s: Status| IpReport {
            ip: ip.parse().unwrap(),
            helo: "x".into(),
            pools: vec!["default".into()],
            checks: vec![Check::new("fcrdns", s, "…")],
        };
        let domain = DomainReport {
            domain: "d.test".into(),
            sources: vec!["dkim".into()],
            ips: vec![A.parse().unwrap(), B.parse().unwrap()],
            checks: vec![
                Check::pass("spf_pass", "pass").about(A),
                Check::new("spf_pass", spf, "…").about(B),
            ],
        };
        Report::new(vec![ip(A, Status::Pass), ip(B, fcrdns)], vec![domain])
    }

    fn hold_of(p: &Pools, ip: &str) -> Option<String> {
        let ip: IpAddr = ip.parse().unwrap();
        p.holds()
            .into_iter()
            .find(|(i, h)| *i == ip && h.scope == "all")
            .map(|(_, h)| h.reason)
    }

    #[test]
    fn holds_on_fcrdns_or_spf_failure_and_releases_when_all_pass() {
        let p = pools();
        let held = apply(&p, &report(Status::Fail, Status::Pass));
        assert_eq!(held.len(), 1);
        assert!(held[0].1.starts_with("fcrdns"), "{held:?}");
        assert_eq!(hold_of(&p, B).as_deref(), Some(REASON));
        assert_eq!(hold_of(&p, A), None);
        // An undecided round (DNS error) keeps the hold; an SPF failure alone keeps it too.
        assert_eq!(apply(&p, &report(Status::Warn, Status::Pass)).len(), 1);
        assert_eq!(hold_of(&p, B).as_deref(), Some(REASON));
        let held = apply(&p, &report(Status::Pass, Status::Fail));
        assert!(held[0].1.starts_with("spf d.test"), "{held:?}");
        assert!(apply(&p, &report(Status::Pass, Status::Pass)).is_empty());
        assert_eq!(hold_of(&p, B), None);
        // A warning alone never takes an IP out.
        assert!(apply(&p, &report(Status::Warn, Status::Warn)).is_empty());
        assert_eq!(hold_of(&p, B), None);
    }

    #[test]
    fn never_overrides_or_lifts_another_hold() {
        let p = pools();
        let b: IpAddr = B.parse().unwrap();
        p.drain(b, Scope::All, "operator").unwrap();
        assert!(apply(&p, &report(Status::Fail, Status::Fail)).is_empty());
        assert_eq!(hold_of(&p, B).as_deref(), Some("operator"));
        apply(&p, &report(Status::Pass, Status::Pass));
        release_all(&p);
        assert_eq!(hold_of(&p, B).as_deref(), Some("operator"));
        // Its own hold is lifted when enforcement is turned off.
        p.undrain(b, Scope::All).unwrap();
        apply(&p, &report(Status::Fail, Status::Pass));
        release_all(&p);
        assert_eq!(hold_of(&p, B), None);
    }
}
