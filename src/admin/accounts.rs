//! `/api/logins` and `/api/sender-domains`: counts, rates, standing and history of each account,
//! and the operator's release of a throttled or suspended one (logged with who asked and from
//! where, kept in the account's history).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{AdminState, error};
use crate::reputation::accounts::{AccountView, Accounts, Key, Kind, Standing, percent};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/logins", get(logins))
        .route("/api/sender-domains", get(domains))
        .route("/api/logins/release", post(release_login))
        .route("/api/sender-domains/release", post(release_domain))
}

#[derive(Serialize)]
struct Logins {
    logins: Vec<AccountView>,
}

#[derive(Serialize)]
struct Domains {
    sender_domains: Vec<AccountView>,
}

async fn logins(State(st): State<AdminState>) -> Response {
    let logins = st.reputation.accounts().list(Kind::Login);
    axum::Json(Logins { logins }).into_response()
}

async fn domains(State(st): State<AdminState>) -> Response {
    let sender_domains = st.reputation.accounts().list(Kind::Domain);
    axum::Json(Domains { sender_domains }).into_response()
}

/// `{"login": "alice", "by": "anna"}` (or `"domain"` for a sender domain); `by` names the
/// operator for the history (default `api`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    login: Option<String>,
    domain: Option<String>,
    by: Option<String>,
}

async fn release_login(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    release(st, peer, body, Kind::Login).await
}

async fn release_domain(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    release(st, peer, body, Kind::Domain).await
}

async fn release(st: AdminState, peer: SocketAddr, body: String, kind: Kind) -> Response {
    let field = match kind {
        Kind::Login => "login",
        Kind::Domain => "domain",
    };
    let req: ReleaseRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    };
    let name = match kind {
        Kind::Login => req.login,
        Kind::Domain => req.domain,
    };
    let Some(name) = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"{field}\": \"…\", \"by\": \"…\"}}"),
        );
    };
    let key = match kind {
        Kind::Login => Key::login(&name),
        Kind::Domain => Key::domain(&name),
    };
    // A name for the log and the history, not a document.
    let by: String = req
        .by
        .map(|b| b.trim().chars().take(MAX_BY).collect::<String>())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "api".to_string());
    let accounts = st.reputation.accounts().clone();
    let peer = peer.to_string();
    // The store's commit fsyncs: off the async workers.
    let released = tokio::task::spawn_blocking(move || accounts.release(&key, &by, Some(&peer)))
        .await
        .ok()
        .flatten();
    match released {
        Some(v) => axum::Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no such {field}: {name:?}")),
    }
}

/// Characters of `by` kept.
const MAX_BY: usize = 100;

/// Rows the pool page shows at most.
const PAGE_ROWS: usize = 100;

/// The pool page's accounts section: how many stand where, and every throttled or suspended
/// login and sender domain with why (`page.rs`; `esc` escapes for HTML).
pub(super) fn page_section(out: &mut String, accounts: &Accounts, esc: fn(&str) -> String) {
    use std::fmt::Write as _;
    let mut all = accounts.list(Kind::Login);
    all.extend(accounts.list(Kind::Domain));
    let count = |kind: Kind, s: Standing| {
        all.iter()
            .filter(|a| a.kind == kind && a.standing == s)
            .count()
    };
    let _ = write!(
        out,
        "<section class=\"accounts\"><h1>Accounts</h1><p>Logins: {} good, {} throttled, {} suspended · sender domains: {} good, {} throttled, {} suspended · release with <code>poolrelay login release NAME</code></p>",
        count(Kind::Login, Standing::Good),
        count(Kind::Login, Standing::Throttled),
        count(Kind::Login, Standing::Suspended),
        count(Kind::Domain, Standing::Good),
        count(Kind::Domain, Standing::Throttled),
        count(Kind::Domain, Standing::Suspended),
    );
    let held: Vec<&AccountView> = all
        .iter()
        .filter(|a| a.standing != Standing::Good)
        .take(PAGE_ROWS)
        .collect();
    if !held.is_empty() {
        out.push_str("<div class=\"tbl\"><table><tr><th>account</th><th>standing</th><th>complaints</th><th>bounces</th><th>blocks</th><th>why</th></tr>");
        let rate = |r: Option<f64>| r.map(percent).unwrap_or_else(|| "–".into());
        for a in held {
            let _ = write!(
                out,
                "<tr class=\"account\" data-account=\"{kind} {name}\"><td>{kind} {name}</td><td>{standing}</td><td>{c}</td><td>{b}</td><td>{k}</td><td>{why}</td></tr>",
                kind = a.kind.as_str(),
                name = esc(&a.name),
                standing = a.standing.as_str(),
                c = rate(a.complaint_rate),
                b = rate(a.bounce_rate),
                k = rate(a.block_rate),
                why = esc(a.why.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>");
}
