//! Operator surface over HTTP (JSON, no authentication: bind it to loopback). Routes:
//! - `GET /api/pool`; `POST /api/pool/drain`, `/api/pool/undrain`, `/api/pool/reinstate` with
//!   `{"ip": "…", "provider": "gmail", "reason": "…"}` (provider and reason optional), or
//!   `POST /api/pool/{ip}/drain` (`undrain`, `reinstate`) with an optional body (`pool.rs`);
//! - `GET /api/reputation`, `GET /api/suppressions`, `POST /api/suppressions/remove`
//!   (`reputation.rs`);
//! - `GET /api/doctor`: the background doctor's last report (`doctor.rs`);
//! - `POST /api/reload` with an optional `{"config": "/path"}`: hot reload (`reload.rs`).
//!
//! `client` is the CLI side.

pub mod client;
mod doctor;
mod history;
mod metrics;
mod page;
mod plot;
mod pool;
mod queue;
pub mod queue_cli;
mod reload;
mod reputation;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::Config;
use crate::delivery::queue::QueueHandle;
use crate::pool::Pools;
use crate::reputation::rates::Tracker;
use crate::spool::Spool;

/// What the handlers act on: the running relay's stages.
#[derive(Clone)]
pub struct AdminState {
    pub pools: Arc<Pools>,
    pub reputation: Arc<Tracker>,
    /// The background doctor's last round (`None`: not running).
    pub doctor: Option<Arc<crate::doctor::Latest>>,
    /// Commands into the delivery scheduler, which owns the queued envelopes.
    pub queue: QueueHandle,
    pub spool: Arc<Spool>,
    pub config: Arc<Config>,
    /// Hot reload requests (`POST /api/reload`); `None`: not offered.
    pub reload: Option<crate::reload::Trigger>,
}

/// Binds `listen` and serves the API in the background. A bind failure stops the start.
pub async fn start(listen: SocketAddr, state: AdminState) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("admin: cannot listen on {listen}: {e}"))?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "admin API is not on loopback and has no authentication");
    }
    tokio::spawn(async move {
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tracing::info!(%listen, "admin API listening");
    Ok(())
}

pub fn router(state: AdminState) -> Router {
    pool::routes()
        .merge(reputation::routes())
        .merge(doctor::routes())
        .merge(queue::routes())
        .merge(metrics::routes())
        .merge(history::routes())
        .merge(page::routes())
        .merge(reload::routes())
        .with_state(state)
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
    };
    (code, axum::Json(body)).into_response()
}
