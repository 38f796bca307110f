//! The pool page. `GET /` is a shell without data: it asks for the admin token once (kept in the
//! tab's sessionStorage; a `#token=…` link fills it too) and loads `GET /api/page` with it.
//! That fragment holds every IP with its state, reason and evidence, per provider its warm-up
//! day, today's used/cap, the window's bounce and deferral rates, the complaint rate and the
//! ramp's last decision; two plots per IP (`plot.rs`; ramp decisions marked on the warm-up
//! one); drain and undrain buttons (JSON POSTs with the token); the accounts throttled or
//! suspended (`accounts.rs`). Everything is inline: it works with no internet access.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::{AdminState, history, plot};
use crate::pool::{IpState, IpView};
use crate::reputation::rates::WindowsView;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(shell))
        .route("/api/page", get(content))
}

const WARMUP_DAYS: u64 = 14;
const RATE_HOURS: u64 = 48;

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:8px;color:#222}\
h1{font-size:1.3em}h2{font-size:1.1em;margin:0}section.ip{border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0}\
.head{display:flex;flex-wrap:wrap;gap:8px;align-items:center}.state{padding:2px 8px;border-radius:10px;font-weight:600}\
.active{background:#dfd}.warming{background:#def}.probation{background:#ffd}.backoff{background:#fed}.quarantined{background:#fdd}.drained{background:#ddd}\
.why{margin:6px 0;word-break:break-word}.evidence{color:#555;font-size:.9em}.tbl{overflow-x:auto}\
table{border-collapse:collapse;min-width:100%}td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #eee;white-space:nowrap}\
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots figure{flex:1 1 320px;margin:0}figcaption{font-size:.9em;color:#555}\
svg.plot{display:block;width:100%;height:auto;background:#fafafa}svg text{fill:#444}.axis{stroke:#888}\
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;list-style:none;margin:4px 0;padding:0;font-size:13px}\
.legend li{white-space:nowrap}.swatch{display:inline-block;width:18px;vertical-align:middle;margin-right:5px}\
button{font-size:1em;padding:4px 12px;margin-left:auto}\
@media (max-width:600px){body{padding:4px}section.ip{padding:6px}td,th{padding:3px 5px}}";

const SHELL_STYLE: &str = "#login{max-width:420px;margin:40px auto;display:flex;flex-direction:column;gap:8px}\
#login[hidden]{display:none}#login input{font-size:1em;padding:6px}#login button{margin:0}.msg{color:#a00}";

/// Token handling and the page's actions; the token goes only into `Authorization` headers.
const SCRIPT: &str = "var K='poolrelay-admin-token';\
var m=location.hash.match(/^#token=(.+)$/);if(m){sessionStorage.setItem(K,decodeURIComponent(m[1]));\
history.replaceState(null,'',location.pathname+location.search);}\
function login(msg){document.getElementById('content').innerHTML='';document.getElementById('login').hidden=false;\
document.getElementById('msg').textContent=msg||'';}\
function api(path,opts){opts=opts||{};opts.headers=Object.assign({'Authorization':'Bearer '+sessionStorage.getItem(K)},opts.headers||{});\
return fetch(path,opts).then(function(r){if(r.status===401){sessionStorage.removeItem(K);login('Wrong or missing token.');throw new Error('401');}return r;});}\
function bind(c){c.querySelectorAll('button[data-action]').forEach(function(b){\
b.addEventListener('click',function(){b.disabled=true;\
api('/api/pool/'+encodeURIComponent(b.dataset.ip)+'/'+b.dataset.action,{method:'POST',\
headers:{'Content-Type':'application/json'},body:JSON.stringify({reason:'operator (pool page)'})})\
.then(function(r){if(!r.ok){return r.text().then(function(t){alert(t);});}}).finally(load);});});}\
function load(){if(!sessionStorage.getItem(K)){login();return;}document.getElementById('login').hidden=true;\
api('/api/page').then(function(r){if(!r.ok){throw new Error('HTTP '+r.status);}return r.text();})\
.then(function(h){var c=document.getElementById('content');c.innerHTML=h;bind(c);})\
.catch(function(e){if(e.message!=='401'){document.getElementById('content').textContent='Loading failed: '+e.message;}});}\
document.getElementById('login').addEventListener('submit',function(e){e.preventDefault();\
var t=document.getElementById('token');sessionStorage.setItem(K,t.value.trim());t.value='';load();});\
load();";

/// `GET /`: the login form and an empty container the script fills.
async fn shell() -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>poolrelay: pool</title><style>{STYLE}{SHELL_STYLE}</style></head><body>\
         <form id=\"login\" hidden><h1>poolrelay</h1><label for=\"token\">Admin token (the file named by <code>[admin] token_file</code>)</label>\
         <input id=\"token\" type=\"password\" autocomplete=\"current-password\" required><button type=\"submit\">Open</button>\
         <p id=\"msg\" class=\"msg\"></p></form><div id=\"content\"></div><script>{SCRIPT}</script></body></html>"
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn state_name(s: IpState) -> &'static str {
    match s {
        IpState::Active => "active",
        IpState::Warming => "warming",
        IpState::Probation => "probation",
        IpState::Backoff => "backoff",
        IpState::Quarantined => "quarantined",
        IpState::Drained => "drained",
    }
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// `GET /api/page`: the page's content as an HTML fragment.
async fn content(State(st): State<AdminState>) -> Response {
    let pools = st.pools.clone();
    let mut view = match tokio::task::spawn_blocking(move || pools.status()).await {
        Ok(v) => v,
        Err(e) => {
            return Html(format!(
                "<p>pool status failed: {}</p>",
                esc(&e.to_string())
            ))
            .into_response();
        }
    };
    // `[cluster]`: the farm's counts, read from Redis.
    st.pools.farm_counts(&mut view).await;
    let windows = st.reputation.status();
    let now = crate::spool::now_unix();
    let ips: Vec<std::net::IpAddr> = view
        .pools
        .iter()
        .flat_map(|p| &p.ips)
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    let histories = history::load(&st, ips, WARMUP_DAYS)
        .await
        .unwrap_or_default();
    let mut body = String::new();
    if let Some(farm) = &view.farm {
        farm_section(&mut body, farm, now);
    }
    super::accounts::page_section(&mut body, st.reputation.accounts(), esc);
    for pool in &view.pools {
        let _ = write!(body, "<h1>Pool {}</h1>", esc(&pool.name));
        for ip in &pool.ips {
            let h = histories.iter().find(|h| h.ip == ip.ip);
            ip_section(&mut body, &st, ip, &windows, h, now);
        }
    }
    Html(format!(
        "<p>poolrelay {} · {} IPs · metrics at <code>/metrics</code> (with the token)</p>{body}",
        esc(&st.relay.hostname),
        view.pools.iter().map(|p| p.ips.len()).sum::<usize>(),
    ))
    .into_response()
}

/// The farm (`[cluster]`): every node last seen and the IPs it sends from.
fn farm_section(out: &mut String, farm: &crate::cluster::farm::FarmView, now: u64) {
    let _ = write!(
        out,
        "<section class=\"farm\"><h1>Farm</h1><p>This node: {} · Redis {}</p><div class=\"tbl\"><table><tr><th>node</th><th>last seen</th><th>IPs</th></tr>",
        esc(&farm.node),
        if farm.redis_up {
            "up"
        } else {
            "down: holds and suppressions are local until it returns"
        },
    );
    for n in &farm.nodes {
        let _ = write!(
            out,
            "<tr class=\"node\" data-node=\"{name}\"><td>{name}</td><td>{ago}</td><td>{ips}</td></tr>",
            name = esc(&n.name),
            ago = crate::text::relative(n.last_seen, now),
            ips = esc(&n.ips.join(" ")),
        );
    }
    out.push_str("</table></div></section>");
}

fn ip_section(
    out: &mut String,
    st: &AdminState,
    ip: &IpView,
    windows: &WindowsView,
    h: Option<&crate::reputation::history::HistoryView>,
    now: u64,
) {
    let state = state_name(ip.state);
    let (action, label) = if ip.state == IpState::Drained {
        ("undrain", "Undrain")
    } else {
        ("drain", "Drain")
    };
    let _ = write!(
        out,
        "<section class=\"ip\" data-ip=\"{ip_}\" data-state=\"{state}\"><div class=\"head\">\
         <h2>{ip_}</h2><span class=\"state {state}\">{state}</span><span>{helo} · weight {w}{warm}{node}</span>\
         <button data-action=\"{action}\" data-ip=\"{ip_}\">{label}</button></div>",
        ip_ = esc(&ip.ip),
        helo = esc(&ip.helo),
        w = ip.weight,
        warm = ip
            .warmup
            .as_ref()
            .map(|s| format!(" · warm-up {}", esc(s)))
            .unwrap_or_default(),
        node = ip
            .node
            .as_ref()
            .map(|n| format!(" · on {}", esc(n)))
            .unwrap_or_default(),
    );
    hold_lines(out, ip, now);
    doctor_lines(out, st, &ip.ip);
    out.push_str("<div class=\"tbl\"><table><tr><th>provider</th><th>state</th><th>warm-up day</th><th>today used/cap</th><th>bounce rate</th><th>deferral rate</th><th>complaint rate</th><th>sent</th><th>warm-up ramp</th></tr>");
    for (name, p) in &ip.providers {
        let w = windows
            .windows
            .iter()
            .find(|w| w.ip == ip.ip && &w.provider == name);
        let (bounce, defer) = match w {
            Some(w) => (pct(w.hard_bounces, w.samples), pct(w.deferred, w.samples)),
            None => ("-".into(), "-".into()),
        };
        let complaints = windows
            .complaint_rates
            .iter()
            .find(|c| c.ip == ip.ip && &c.provider == name)
            .map(|c| format!("{:.2}% ({}/{})", 100.0 * c.rate, c.complaints, c.delivered))
            .unwrap_or_else(|| "-".into());
        let cap = p
            .cap_today
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let day = p
            .warmup_day
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let s = state_name(p.state);
        let _ = write!(
            out,
            "<tr class=\"provider\" data-provider=\"{n}\"><td>{n}</td><td><span class=\"state {s}\">{s}</span></td><td>{day}</td><td>{}/{cap}{farm}</td><td>{bounce}</td><td>{defer}</td><td>{complaints}</td><td>{}</td><td class=\"ramp\">{ramp}</td></tr>",
            p.used_today,
            p.sent,
            n = esc(name),
            farm = farm_counts(p),
            ramp = ramp_cell(p),
        );
    }
    out.push_str("</table></div><div class=\"plots\">");
    let r = &st.relay.reputation;
    match h {
        Some(h) => {
            let _ = write!(
                out,
                "<figure>{}<figcaption>Warm-up: sent (bars) vs cap (dashed) per day (UTC), last {WARMUP_DAYS} days; triangles: ramp decisions</figcaption></figure>\
                 <figure>{}<figcaption>Bounce and deferral rate per hour, last {RATE_HOURS} h; dashed: quarantine thresholds; shaded: quarantined</figcaption></figure>",
                plot::warmup(h, now, WARMUP_DAYS),
                plot::rates(h, now, RATE_HOURS, r.max_bounce_rate, r.max_deferral_rate),
            );
        }
        None => out.push_str("<p>no history</p>"),
    }
    out.push_str("</div></section>");
}

/// Why the IP is held: each drain or quarantine with its scope, reason, end and evidence.
fn hold_lines(out: &mut String, ip: &IpView, now: u64) {
    for hold in &ip.holds {
        let _ = write!(
            out,
            "<p class=\"why\"><b>{kind} ({scope})</b>: {reason}{until}<br><span class=\"evidence\">{evidence}</span></p>",
            kind = format!("{:?}", hold.kind).to_lowercase(),
            scope = esc(&hold.scope),
            reason = esc(&hold.reason),
            until = hold
                .until
                .map(|u| format!(
                    ", until {} ({})",
                    crate::text::utc(u),
                    crate::text::relative(u, now)
                ))
                .unwrap_or_default(),
            evidence = esc(&hold.evidence),
        );
    }
}

/// `[cluster]`: beside the farm's count, this relay's own, and why the farm refuses.
fn farm_counts(p: &crate::pool::ProviderView) -> String {
    use crate::pool::CountsFrom;
    let Some(here) = p.used_today_here else {
        return String::new();
    };
    let from = match p.counts_from {
        Some(CountsFrom::Farm) => "farm",
        Some(CountsFrom::FarmLastRead) => "farm, last read: Redis down",
        _ => "this relay only: Redis down",
    };
    let mut out = format!(" <span class=\"farm-counts\">({from}; here {here})</span>");
    if let Some(why) = &p.farm_full {
        let _ = write!(out, "<br><span class=\"farm-full\">{}</span>", esc(why));
    }
    out
}

/// The ramp's last decision ("adaptive" first on an adaptive schedule), "-" without one.
fn ramp_cell(p: &crate::pool::ProviderView) -> String {
    let decision = p.warmup_decision.as_deref().map(esc);
    match (p.adaptive, decision) {
        (true, Some(d)) => format!("adaptive: {d}"),
        (true, None) => "adaptive".into(),
        (false, Some(d)) => d,
        (false, None) => "-".into(),
    }
}

/// The background doctor's failing and warning checks of this IP (FCrDNS, HELO, DNSBL, SPF of
/// the domains it sends for), with the fix.
fn doctor_lines(out: &mut String, st: &AdminState, ip: &str) {
    let Some(report) = st.doctor.as_ref().and_then(|d| d.view().report) else {
        return;
    };
    use crate::doctor::Status;
    let own = report
        .ips
        .iter()
        .filter(|r| r.ip.to_string() == ip)
        .flat_map(|r| r.checks.iter().map(|c| (String::new(), c)));
    let spf = report.domains.iter().flat_map(|d| {
        d.checks
            .iter()
            .filter(|c| c.subject.as_deref() == Some(ip))
            .map(move |c| (format!("{} ", d.domain), c))
    });
    for (domain, c) in own.chain(spf) {
        if !matches!(c.status, Status::Fail | Status::Warn) {
            continue;
        }
        let _ = write!(
            out,
            "<p class=\"why doctor\"><b>doctor {status}</b>: {domain}{name} {detail}<br><span class=\"evidence\">{fix}</span></p>",
            status = format!("{:?}", c.status).to_lowercase(),
            domain = esc(&domain),
            name = c.name,
            detail = esc(&c.detail),
            fix = esc(c.fix.as_deref().unwrap_or("")),
        );
    }
}
