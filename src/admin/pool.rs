//! `/api/pool`: the pools' state, and the operator's drains, undrains and reinstatements.

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::{AdminState, error};
use crate::pool::{HoldError, Scope};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/pool", get(status))
        .route("/api/pool/{action}", post(change_body))
        .route("/api/pool/{ip}/{action}", post(change_ip))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    ip: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Drain,
    Undrain,
    Reinstate,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "drain" => Some(Action::Drain),
            "undrain" => Some(Action::Undrain),
            "reinstate" => Some(Action::Reinstate),
            _ => None,
        }
    }

    /// The state the request asked for, as the reply says it.
    fn state(self) -> &'static str {
        match self {
            Action::Drain => "drained",
            Action::Undrain => "undrained",
            Action::Reinstate => "reinstated",
        }
    }
}

#[derive(Serialize)]
struct ChangeReply {
    ok: bool,
    ip: String,
    scope: String,
    state: &'static str,
    changed: bool,
}

async fn status(State(st): State<AdminState>) -> Response {
    let mut view = st.pools.status();
    st.pools.farm_counts(&mut view).await;
    axum::Json(view).into_response()
}

async fn change_body(
    State(st): State<AdminState>,
    Path(action): Path<String>,
    body: String,
) -> Response {
    change(st, None, &action, body).await
}

async fn change_ip(
    State(st): State<AdminState>,
    Path((ip, action)): Path<(String, String)>,
    body: String,
) -> Response {
    change(st, Some(ip), &action, body).await
}

async fn change(st: AdminState, ip: Option<String>, action: &str, body: String) -> Response {
    let Some(action) = Action::parse(action) else {
        return error(StatusCode::NOT_FOUND, format!("no such action: {action:?}"));
    };
    let req: HoldRequest = if body.trim().is_empty() {
        HoldRequest::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
        }
    };
    let Some(ip) = ip.or(req.ip) else {
        return error(StatusCode::BAD_REQUEST, "missing \"ip\"");
    };
    let Ok(addr) = ip.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("not an IP address: {ip:?}"),
        );
    };
    let scope = Scope::parse(req.provider.as_deref());
    let reason = req.reason.unwrap_or_else(|| "operator".into());
    // The store write is blocking I/O.
    let (pools, scope2) = (st.pools.clone(), scope.clone());
    let result = tokio::task::spawn_blocking(move || match action {
        Action::Drain => pools.drain(addr, scope2, &reason).map(|_| true),
        Action::Undrain => pools.undrain(addr, scope2),
        Action::Reinstate => pools.reinstate(addr, scope2),
    })
    .await;
    match result {
        Ok(Ok(changed)) => axum::Json(ChangeReply {
            ok: true,
            ip: addr.to_string(),
            scope: scope.as_str().to_string(),
            state: action.state(),
            changed,
        })
        .into_response(),
        Ok(Err(e @ HoldError::NotInPool(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
