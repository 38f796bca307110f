//! `GET /api/history?ip=…[&days=N]`: an IP's hourly buckets per provider and its hold changes
//! (`reputation::history`), the last `days` days (default and most: 90).

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{AdminState, error};
use crate::reputation::history::{HistoryView, KEEP_DAYS};

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/api/history", get(history))
}

#[derive(Deserialize)]
struct HistoryQuery {
    ip: Option<String>,
    days: Option<u64>,
}

/// Why an IP's history could not be read (the same words as the store's or the task's error).
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// The history of each of `ips` over the last `days` days, with what is still in memory
/// written first (one flush for all).
pub(super) async fn load(
    st: &AdminState,
    ips: Vec<IpAddr>,
    days: u64,
) -> Result<Vec<HistoryView>, LoadError> {
    let (h, pools) = (st.reputation.history().clone(), st.pools.clone());
    let since = crate::spool::now_unix().saturating_sub(days.clamp(1, KEEP_DAYS) * 86_400);
    tokio::task::spawn_blocking(move || {
        h.flush(&pools);
        ips.into_iter()
            .map(|ip| h.view(ip, since))
            .collect::<Result<_, _>>()
    })
    .await?
    .map_err(LoadError::from)
}

async fn history(State(st): State<AdminState>, Query(q): Query<HistoryQuery>) -> Response {
    let Some(ip) = q.ip else {
        return error(StatusCode::BAD_REQUEST, "missing ?ip=");
    };
    let Ok(addr) = ip.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("not an IP address: {ip:?}"),
        );
    };
    if !st.pools.ips().contains(&addr) {
        return error(StatusCode::NOT_FOUND, format!("{addr} is not in any pool"));
    }
    match load(&st, vec![addr], q.days.unwrap_or(KEEP_DAYS)).await {
        Ok(mut v) => axum::Json(v.pop()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
