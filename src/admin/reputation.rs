//! `/api/reputation` (outcome windows per IP × provider, the numbers behind rate quarantines)
//! and `/api/suppressions` (list, remove).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{AdminState, error};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/reputation", get(windows))
        .route("/api/suppressions", get(list))
        .route("/api/suppressions/remove", post(remove))
}

async fn windows(State(st): State<AdminState>) -> Response {
    axum::Json(st.reputation.status()).into_response()
}

#[derive(Serialize)]
struct Suppressed {
    address: String,
    /// `all` (every sender) or `sender-domain`.
    scope: &'static str,
    /// The sender domain whose mail is refused, when `scope` is `sender-domain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_domain: Option<String>,
    why: crate::reputation::suppress::Why,
    reason: String,
    since: u64,
    until: u64,
}

#[derive(Serialize)]
struct SuppressionList {
    suppressions: Vec<Suppressed>,
}

async fn list(State(st): State<AdminState>) -> Response {
    let suppressions = st
        .reputation
        .suppressions()
        .list()
        .into_iter()
        .map(|(address, e)| Suppressed {
            address,
            scope: match e.sender_domain {
                Some(_) => "sender-domain",
                None => "all",
            },
            sender_domain: e.sender_domain,
            why: e.why,
            reason: e.reason,
            since: e.since,
            until: e.until,
        })
        .collect();
    axum::Json(SuppressionList { suppressions }).into_response()
}

#[derive(Deserialize)]
struct RemoveRequest {
    address: String,
    /// Lift only the suppression for this sender domain (absent: every one of the address).
    #[serde(default)]
    sender_domain: Option<String>,
}

#[derive(Serialize)]
struct Removed {
    address: String,
    removed: bool,
}

async fn remove(State(st): State<AdminState>, body: String) -> Response {
    let Ok(req) = serde_json::from_str::<RemoveRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"address\": \"…\"} (optional \"sender_domain\": \"…\")",
        );
    };
    let address = req.address.trim().to_string();
    let domain = req.sender_domain.as_deref().map(str::trim);
    let removed = st.reputation.suppressions().remove(&address, domain);
    axum::Json(Removed { address, removed }).into_response()
}
