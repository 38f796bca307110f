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
    let doctor = Arc::new(Doctor::new(config.clone())?);
    let opts = Options {
        domains: Vec::new(),
        probe: settings.probe && settings.background_probe,
    };
    // Bad `[doctor] domains` stop the start, like any config error.
    super::targets::domains(&config, &[])?;
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
