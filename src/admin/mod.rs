//! Operator surface over HTTP (JSON; every request needs the bearer token of `[admin]
//! token_file`, see `guard.rs`; TLS off loopback, see `serve.rs`). Routes:
//! - `GET /`: the pool page's shell, which asks for the token and loads `GET /api/page`
//!   (`page.rs`);
//! - `GET /api/pool`; `POST /api/pool/drain`, `/api/pool/undrain`, `/api/pool/reinstate` with
//!   `{"ip": "…", "provider": "gmail", "reason": "…"}` (provider and reason optional), or
//!   `POST /api/pool/{ip}/drain` (`undrain`, `reinstate`) with an optional body (`pool.rs`);
//! - `GET /api/reputation`, `GET /api/suppressions`, `POST /api/suppressions/remove`
//!   (`reputation.rs`);
//! - `GET /api/doctor`: the background doctor's last report (`doctor.rs`).
//!
//! `client` is the CLI side.

pub mod client;
mod doctor;
pub mod guard;
mod history;
mod metrics;
mod page;
mod plot;
mod pool;
mod queue;
pub mod queue_cli;
mod reputation;
mod serve;
mod settings;
pub mod token;

pub use settings::{Settings, TlsMode};

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
}

/// Loads (or creates) the token, binds `[admin] listen` and serves the API in the background.
/// A bind, token or certificate failure stops the start.
pub async fn start(settings: &Settings, state: AdminState) -> Result<(), String> {
    let listen = settings.listen;
    let token = token::load_or_create(&settings.token_path(&state.config.data_dir))?;
    let tls = if settings.uses_tls() {
        let files = state.config.tls.as_ref().ok_or_else(|| {
            format!("admin: listen {listen} needs TLS but [tls] has no certificate")
        })?;
        let config = crate::tls::server_config(&files.certificate, &files.private_key)?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("admin: cannot listen on {listen}: {e}"))?;
    let policy = guard::Policy {
        token: token.secret().to_string(),
        loopback_pool_status_without_token: settings.loopback_pool_status_without_token,
        max_body: settings::MAX_BODY,
    };
    let app = router(state, policy);
    let limits = serve::Limits {
        header_timeout: settings.header_timeout.0,
        max_connections: settings.max_connections,
    };
    tracing::info!(%listen, tls = tls.is_some(), "admin API listening");
    tokio::spawn(serve::accept_loop(listener, app, tls, limits));
    Ok(())
}

/// The routes behind the guard (`guard.rs`) and the body cap.
pub fn router(state: AdminState, policy: guard::Policy) -> Router {
    pool::routes()
        .merge(reputation::routes())
        .merge(doctor::routes())
        .merge(queue::routes())
        .merge(metrics::routes())
        .merge(history::routes())
        .merge(page::routes())
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(settings::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(policy),
            guarded,
        ))
}

/// Runs `guard::check` before the handler; a refusal is a JSON error (401 with
/// `WWW-Authenticate: Bearer`), logged with the peer and path (never the token).
async fn guarded(
    axum::extract::State(policy): axum::extract::State<Arc<guard::Policy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let head = guard::RequestHead {
        method: req.method(),
        path: req.uri().path(),
        headers: req.headers(),
        peer_is_loopback: peer.is_some_and(|p| p.ip().is_loopback()),
    };
    match guard::check(&head, &policy) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(%peer, method = %req.method(), path = req.uri().path(), ?refusal, "admin request refused");
            let code = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = error(code, refusal.message());
            if code == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"poolrelay admin\""),
                );
            }
            response
        }
    }
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
