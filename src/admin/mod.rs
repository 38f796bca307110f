//! Operator surface over HTTP (JSON, no authentication: bind it to loopback):
//! `GET /api/pool`, `POST /api/pool/drain` and `/api/pool/undrain` with
//! `{"ip": "…", "provider": "gmail", "reason": "…"}` (provider and reason optional), or
//! `POST /api/pool/{ip}/drain` / `…/undrain` with an optional body. `client` is the CLI side.

pub mod client;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::pool::{Pools, Scope};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    ip: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
}

/// Binds `listen` and serves the API in the background. A bind failure stops the start.
pub async fn start(listen: SocketAddr, pools: Arc<Pools>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("admin: cannot listen on {listen}: {e}"))?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "admin API is not on loopback and has no authentication");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(pools)).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tracing::info!(%listen, "admin API listening");
    Ok(())
}

pub fn router(pools: Arc<Pools>) -> Router {
    Router::new()
        .route("/api/pool", get(status))
        .route("/api/pool/drain", post(drain))
        .route("/api/pool/undrain", post(undrain))
        .route("/api/pool/{ip}/drain", post(drain_ip))
        .route("/api/pool/{ip}/undrain", post(undrain_ip))
        .with_state(pools)
        .merge(crate::reputation::suppress::routes())
        .merge(crate::doctor::routes())
}

async fn status(State(pools): State<Arc<Pools>>) -> Response {
    axum::Json(pools.status()).into_response()
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn change(pools: Arc<Pools>, ip: Option<String>, body: String, drain: bool) -> Response {
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
    let scope2 = scope.clone();
    let result = tokio::task::spawn_blocking(move || {
        if drain {
            pools.drain(addr, scope2, &reason).map(|_| true)
        } else {
            pools.undrain(addr, scope2)
        }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match result {
        Ok(changed) => axum::Json(json!({
            "ok": true,
            "ip": addr.to_string(),
            "scope": scope.as_str(),
            "state": if drain { "drained" } else { "undrained" },
            "changed": changed,
        }))
        .into_response(),
        Err(e) if e.contains("not in any pool") => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn drain(State(pools): State<Arc<Pools>>, body: String) -> Response {
    change(pools, None, body, true).await
}

async fn undrain(State(pools): State<Arc<Pools>>, body: String) -> Response {
    change(pools, None, body, false).await
}

async fn drain_ip(
    State(pools): State<Arc<Pools>>,
    Path(ip): Path<String>,
    body: String,
) -> Response {
    change(pools, Some(ip), body, true).await
}

async fn undrain_ip(
    State(pools): State<Arc<Pools>>,
    Path(ip): Path<String>,
    body: String,
) -> Response {
    change(pools, Some(ip), body, false).await
}
