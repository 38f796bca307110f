//! The checks inside `serve`: a round at start and every `check_interval`; each check's status
//! change is logged once (not every round); the last report is `GET /api/doctor`.
//!
//! Enforcement (`enforce = true`): an IP whose `fcrdns` fails, or whose `spf_pass` fails for any
//! domain it sends for, is drained through the pool's API with reason `doctor`; it is undrained
//! when all of those pass again. A check that warns (DNS error, no verdict) changes nothing.
//! The doctor's hold is its own record (cause `doctor`) beside any other hold on the IP (an
//! operator drain, a DNSBL quarantine): it never changes those, and only lifts its own. With
//! `enforce = false` its leftover holds are lifted at start.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::Inputs;
use super::report::{Report, Status};
use super::run::{Doctor, DoctorError, Options, Tools};
use crate::pool::{Cause, Pools, Scope};

/// The reason of the drains the doctor makes (how it recognises its own).
pub const REASON: &str = "doctor";

#[derive(Default)]
struct LatestInner {
    report: Option<Report>,
    enforce: bool,
    /// IPs the doctor holds out of rotation, with why.
    held: Vec<(IpAddr, String)>,
}

/// The running doctor's last round, shared with the admin API.
#[derive(Default)]
pub struct Latest(Mutex<LatestInner>);

/// One IP the doctor holds out.
#[derive(Debug, Clone, Serialize)]
pub struct HeldView {
    pub ip: String,
    pub reason: &'static str,
    pub why: String,
}

/// `GET /api/doctor`: the last report (`null` before the first round ends).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatestView {
    pub enabled: bool,
    pub enforce: bool,
    pub held: Vec<HeldView>,
    pub report: Option<Report>,
}

impl Latest {
    pub fn view(&self) -> LatestView {
        let l = self.0.lock().expect("doctor lock");
        LatestView {
            enabled: true,
            enforce: l.enforce,
            held: l
                .held
                .iter()
                .map(|(ip, why)| HeldView {
                    ip: ip.to_string(),
                    reason: REASON,
                    why: why.clone(),
                })
                .collect(),
            report: l.report.clone(),
        }
    }
}

/// Starts the background checks when `[doctor] background` is on; returns their shared state.
/// `tools` builds what the checks go through, only when they run.
pub fn start(
    inputs: Inputs,
    tools: impl FnOnce() -> Result<Tools, DoctorError>,
    pools: Arc<Pools>,
) -> Result<Option<Arc<Latest>>, DoctorError> {
    let settings = inputs.settings.clone();
    if !settings.enforce {
        release_all(&pools);
    }
    if !settings.background {
        return Ok(None);
    }
    // Bad `[doctor] domains` stop the start, like any config error.
    let domains = super::targets::domains(&inputs, &[])?;
    if domains.is_empty() && super::targets::ips(&inputs).is_empty() {
        return Ok(None);
    }
    let doctor = Arc::new(Doctor::new(inputs, tools()?));
    let opts = Options {
        domains: Vec::new(),
        probe: settings.probe && settings.background_probe,
    };
    let shared = Arc::new(Latest::default());
    shared.0.lock().expect("doctor lock").enforce = settings.enforce;
    let latest = shared.clone();
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
            let mut l = shared.0.lock().expect("doctor lock");
            l.report = Some(report);
            l.held = held;
        }
    });
    Ok(Some(latest))
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

/// Whether the doctor's own hold (its own record, beside any other) is on `ip`.
fn own_hold(pools: &Pools, ip: IpAddr) -> bool {
    pools
        .holds()
        .into_iter()
        .any(|(i, h)| i == ip && h.cause == Cause::Doctor)
}

/// Brings the doctor's drains in line with the report; returns the IPs it holds.
fn apply(pools: &Pools, report: &Report) -> Vec<(IpAddr, String)> {
    let mut held = Vec::new();
    for (ip, verdict) in verdicts(report) {
        let hold = own_hold(pools, ip);
        match (verdict, hold) {
            (Some(why), false) => {
                tracing::warn!(source_ip = %ip, why = %why, "doctor: taking the IP out of rotation");
                match pools.drain_for(ip, Scope::All, Cause::Doctor, REASON) {
                    Ok(()) => held.push((ip, why)),
                    Err(e) => tracing::error!(source_ip = %ip, error = %e, "doctor: cannot drain"),
                }
            }
            (Some(why), true) => held.push((ip, why)),
            (None, true) => {
                tracing::info!(source_ip = %ip, "doctor: checks pass again, back in rotation");
                if let Err(e) = pools.undrain_for(ip, Scope::All, Cause::Doctor) {
                    tracing::error!(source_ip = %ip, error = %e, "doctor: cannot undrain");
                }
            }
            (None, false) => {}
        }
    }
    // Undecided IPs keep the doctor's hold and stay listed.
    for ip in pools.ips() {
        if own_hold(pools, ip) && !held.iter().any(|(i, _)| *i == ip) {
            held.push((ip, "held: checks undecided this round".into()));
        }
    }
    held.sort();
    held
}

/// Lifts every hold the doctor made (enforcement turned off).
fn release_all(pools: &Pools) {
    for ip in pools.ips() {
        if own_hold(pools, ip) {
            tracing::info!(source_ip = %ip, "doctor: enforce is off, lifting its hold");
            if let Err(e) = pools.undrain_for(ip, Scope::All, Cause::Doctor) {
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
        Pools::without_store(
            &crate::config::Config::parse(Path::new("t.toml"), &text)
                .unwrap()
                .pool_settings(),
        )
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

    /// The reason of the doctor's hold on `ip`, else of any other hold on all providers.
    fn hold_of(p: &Pools, ip: &str) -> Option<String> {
        let ip: IpAddr = ip.parse().unwrap();
        let holds: Vec<_> = p
            .holds()
            .into_iter()
            .filter(|(i, h)| *i == ip && h.scope == "all")
            .map(|(_, h)| h)
            .collect();
        holds
            .iter()
            .find(|h| h.cause == Cause::Doctor)
            .or(holds.first())
            .map(|h| h.reason.clone())
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
        // Its own record beside the operator's drain.
        assert_eq!(apply(&p, &report(Status::Fail, Status::Fail)).len(), 1);
        assert_eq!(hold_of(&p, B).as_deref(), Some(REASON));
        apply(&p, &report(Status::Pass, Status::Pass));
        assert_eq!(hold_of(&p, B).as_deref(), Some("operator"));
        // Its own hold is lifted when enforcement is turned off; the operator's stays.
        apply(&p, &report(Status::Fail, Status::Pass));
        release_all(&p);
        assert_eq!(hold_of(&p, B).as_deref(), Some("operator"));
        p.undrain(b, Scope::All).unwrap();
        assert_eq!(hold_of(&p, B), None);
    }
}
