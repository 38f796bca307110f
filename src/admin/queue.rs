//! `/api/queue`: summary, one message, and the operator's retry, hold, release and delete. Every
//! change is logged by the scheduler with the acting client's address.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{AdminState, error};
use crate::delivery::queue::{Action, Failure, Request, Select};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/queue", get(summary))
        .route("/api/queue/message/{id}", get(show))
        .route("/api/queue/{action}", post(change))
}

/// `{"id": "…"}`, `{"all": true}` or `{"domain": "…"}`; `dsn` for delete.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    id: Option<String>,
    #[serde(default)]
    all: bool,
    domain: Option<String>,
    #[serde(default)]
    dsn: bool,
}

fn answer(r: Result<serde_json::Value, Failure>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e @ Failure::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ (Failure::Busy(_) | Failure::Conflict(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn summary(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    answer(st.queue.ask(Request::Summary, &peer.to_string()).await)
}

async fn show(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    answer(st.queue.ask(Request::Show(id), &peer.to_string()).await)
}

async fn change(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(action): Path<String>,
    body: String,
) -> Response {
    let action = match action.as_str() {
        "retry" => Action::Retry,
        "hold" => Action::Hold,
        "release" => Action::Release,
        "delete" => Action::Delete,
        _ => return error(StatusCode::NOT_FOUND, format!("no such action: {action:?}")),
    };
    let req: ChangeRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    };
    let select = match (req.id, req.all, req.domain) {
        (Some(id), false, None) => Select::Id(id.trim().to_string()),
        (None, true, None) => Select::All,
        (None, false, Some(d)) => Select::Domain(d),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"id\", \"all\": true, \"domain\"",
            );
        }
    };
    if req.dsn && action != Action::Delete {
        return error(StatusCode::BAD_REQUEST, "\"dsn\" is for delete only");
    }
    let req = Request::Change {
        action,
        select,
        dsn: req.dsn,
    };
    answer(st.queue.ask(req, &peer.to_string()).await)
}
