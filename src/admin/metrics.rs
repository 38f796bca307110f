//! `GET /metrics`: Prometheus text exposition (`crate::metrics`), levels read now. The stages'
//! gauges (doctor, accounts, pools) are registered here, where their state is at hand, so
//! `crate::metrics` stays below the stages.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AdminState;
use crate::delivery::queue::Request;
use crate::metrics::Levels;
use crate::pool::{IpState, PoolsView};

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    let summary = st.queue.ask(Request::Summary, "metrics").await.ok();
    let num = |k: &str| summary.as_ref().and_then(|s| s[k].as_u64());
    let pools = st.pools.clone();
    let view = tokio::task::spawn_blocking(move || pools.status())
        .await
        .ok();
    let now = crate::spool::now_unix();
    let stages = Stages {
        pools: view,
        dnsbl_zones: crate::reputation::dnsbl::List::from_settings(&st.relay.reputation)
            .map(|lists| lists.into_iter().map(|l| l.zone).collect())
            .unwrap_or_default(),
        doctor: st
            .doctor
            .as_ref()
            .and_then(|d| d.view().report.map(|r| r.summary)),
        accounts: {
            use crate::reputation::accounts::Kind;
            let a = st.reputation.accounts();
            let mut all = a.list(Kind::Login);
            all.extend(a.list(Kind::Domain));
            all
        },
        now,
    };
    let levels = Levels {
        queue_messages: num("messages").unwrap_or(0),
        queue_oldest: num("oldest"),
        spool_bytes: num("bytes").unwrap_or(0),
        spool_free_bytes: st.spool.free_space().ok(),
        now,
        stages: stage_gauges(&stages),
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (content_type, body) = if wants_text_004(accept) {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render_text_004(&levels),
        )
    } else {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(&levels),
        )
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

/// The stages' state read for one scrape.
struct Stages {
    pools: Option<PoolsView>,
    /// Configured DNSBL zones (a listed IP without a hold for a zone reads 0).
    dnsbl_zones: Vec<String>,
    /// The background doctor's last round: checks per status (pass, info, warn, fail).
    doctor: Option<crate::doctor::report::Summary>,
    /// Logins and sender domains (`reputation::accounts`).
    accounts: Vec<crate::reputation::accounts::AccountView>,
    now: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpProvider {
    ip: String,
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpProviderState {
    ip: String,
    provider: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DoctorStatus {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpZone {
    ip: String,
    zone: String,
}

const STATES: [(IpState, &str); 6] = [
    (IpState::Active, "active"),
    (IpState::Warming, "warming"),
    (IpState::Probation, "probation"),
    (IpState::Backoff, "backoff"),
    (IpState::Quarantined, "quarantined"),
    (IpState::Drained, "drained"),
];

/// The stages' gauges, in the order `/metrics` has always listed them.
fn stage_gauges(l: &Stages) -> Registry {
    let mut r = crate::metrics::stage_registry();
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(d) = &l.doctor {
        let checks = Family::<DoctorStatus, Gauge>::default();
        for (status, count) in [
            ("pass", d.pass),
            ("info", d.info),
            ("warn", d.warn),
            ("fail", d.fail),
        ] {
            checks
                .get_or_create(&DoctorStatus { status })
                .set(n(count as u64));
        }
        r.register(
            "doctor_checks",
            "Checks of the background doctor's last round, by status (see GET /api/doctor)",
            checks,
        );
    }
    crate::reputation::accounts::metrics::register(&mut r, &l.accounts);
    let Some(view) = &l.pools else { return r };
    let used = Family::<IpProvider, Gauge>::default();
    let cap = Family::<IpProvider, Gauge>::default();
    let ramp_day = Family::<IpProvider, Gauge>::default();
    let state = Family::<IpProviderState, Gauge>::default();
    let dnsbl = Family::<IpZone, Gauge>::default();
    for ip in view.pools.iter().flat_map(|p| &p.ips) {
        let states = std::iter::once(("all", ip.state))
            .chain(ip.providers.iter().map(|(p, v)| (p.as_str(), v.state)));
        for (provider, s) in states {
            for (st, name) in STATES {
                let labels = IpProviderState {
                    ip: ip.ip.clone(),
                    provider: provider.to_string(),
                    state: name,
                };
                state.get_or_create(&labels).set(i64::from(st == s));
            }
        }
        for (provider, p) in &ip.providers {
            let labels = IpProvider {
                ip: ip.ip.clone(),
                provider: provider.clone(),
            };
            used.get_or_create(&labels).set(n(p.used_today));
            if let Some(c) = p.cap_today {
                cap.get_or_create(&labels).set(n(c));
            }
            if let Some(d) = p.warmup_day {
                ramp_day.get_or_create(&labels).set(i64::from(d));
            }
        }
        for zone in &l.dnsbl_zones {
            let listed = ip.holds.iter().any(|h| {
                matches!(&h.cause, crate::pool::Cause::Dnsbl(z) if z == zone) && h.in_force(l.now)
            });
            let labels = IpZone {
                ip: ip.ip.clone(),
                zone: zone.clone(),
            };
            dnsbl.get_or_create(&labels).set(i64::from(listed));
        }
    }
    r.register(
        "warmup_used_today",
        "Messages sent today per source IP and provider (counted against the warm-up cap)",
        used,
    );
    r.register(
        "warmup_cap_today",
        "Today's warm-up cap per source IP and provider (absent when not capped)",
        cap,
    );
    r.register(
        "warmup_day",
        "The warm-up ramp's day (index into its schedule) per source IP and provider",
        ramp_day,
    );
    r.register(
        "ip_state",
        "1 for the state a source IP is in, per provider (provider=\"all\": the IP overall)",
        state,
    );
    r.register(
        "dnsbl_listed",
        "1 while a source IP is listed on a DNSBL zone",
        dnsbl,
    );
    r
}

/// True when `accept` prefers `text/plain` (Prometheus text 0.0.4) over OpenMetrics, by q
/// value; OpenMetrics wins ties and an Accept naming neither (as before negotiation).
fn wants_text_004(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut q, mut version) = (1.0f32, None);
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                    q = v.trim().parse().unwrap_or(0.0);
                }
                Some((k, v)) if k.trim().eq_ignore_ascii_case("version") => {
                    version = Some(v.trim().to_string());
                }
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => {
                text = text.max(q);
            }
            _ => {}
        }
    }
    text > om
}

#[cfg(test)]
mod tests {
    use super::wants_text_004;

    #[test]
    fn accept_picks_the_format() {
        assert!(wants_text_004("text/plain; version=0.0.4"));
        assert!(wants_text_004("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(!wants_text_004(""));
        assert!(!wants_text_004("*/*"));
        // What Prometheus sends: OpenMetrics first.
        assert!(!wants_text_004(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(wants_text_004(
            "application/openmetrics-text;q=0.2,text/plain;version=0.0.4"
        ));
    }
}
