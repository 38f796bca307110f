//! Operator surface over HTTP (JSON; every request needs the bearer token of `[admin]
//! token_file`, see `guard.rs`; TLS off loopback, see `serve.rs`). Routes:
//! - `GET /`: the pool page's shell, which asks for the token and loads `GET /api/page`
//!   (`page.rs`);
//! - `GET /api/pool`; `POST /api/pool/drain`, `/api/pool/undrain`, `/api/pool/reinstate` with
//!   `{"ip": "…", "provider": "gmail", "reason": "…"}` (provider and reason optional), or
//!   `POST /api/pool/{ip}/drain` (`undrain`, `reinstate`) with an optional body (`pool.rs`);
//! - `GET /api/reputation`, `GET /api/suppressions`, `POST /api/suppressions/remove`
//!   (`reputation.rs`);
//! - `GET /api/logins`, `GET /api/sender-domains`, `POST /api/logins/release` with
//!   `{"login": "…", "by": "…"}`, `POST /api/sender-domains/release` with `{"domain": "…"}`
//!   (`accounts.rs`);
//! - `GET /api/doctor`: the background doctor's last report (`doctor.rs`);
//! - `GET /api/feeds`, `POST /api/feeds/poll`: provider feeds' status, a poll now (`feeds.rs`);
//! - `POST /api/reload` with an optional `{"config": "/path"}`: hot reload (`reload.rs`);
//! - `POST /api/tls-reports/send`: send the TLS reports collected so far now (`tls_reports.rs`);
//! - `POST /api/feedback` with `{"report_base64": "…"}` (or `{"report": "…"}`): one complaint
//!   report; `GET /api/complaints`: the recent traced complaints (`feedback.rs`).
//!
//! The CLI side (`poolrelay pool …`, `queue …`, `reload` …) is `cli`.

mod accounts;
mod doctor;
mod feedback;
mod feeds;
pub mod guard;
mod history;
pub mod host;
mod metrics;
mod page;
mod plot;
mod pool;
mod queue;
mod reload;
mod reputation;
mod serve;
mod settings;
mod slots;
mod tally;
pub mod tls_reports;
pub mod token;

pub use reload::{Applied, Refused, Request, Trigger};
pub use settings::{Settings, TlsMode};

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
    /// What the handlers read of the config the relay started with.
    pub relay: Arc<Relay>,
    /// Hot reload requests (`POST /api/reload`); `None`: not offered.
    pub reload: Option<Trigger>,
    /// Provider feeds (`None`: none configured).
    pub feeds: Option<Arc<crate::reputation::feeds::Feeds>>,
    /// TLS reporting (`[tls_reports]`); `None`: not enabled.
    pub tls_reports: Option<Arc<crate::tls_reports::Service>>,
    /// Complaint intake (`POST /api/feedback`, `GET /api/complaints`); `None`: not offered.
    pub feedback: Option<Arc<crate::feedback::Feedback>>,
}

/// The config the relay started with, as far as the API reads it (server fills it in; a reload
/// does not change it, as before).
pub struct Relay {
    /// The relay's name: the page's title, a `Host` the API answers to.
    pub hostname: String,
    /// Where the token file is by default.
    pub data_dir: PathBuf,
    /// `[tls]`, for the API off loopback.
    pub tls: Option<CertFiles>,
    /// `[reputation]`: the DNSBL zones `/metrics` names, the thresholds the page plots.
    pub reputation: crate::reputation::Settings,
    /// `[feedback]` (its defaults when absent): the largest report `POST /api/feedback` takes.
    pub feedback: crate::feedback::Settings,
}

/// A certificate chain and its private key (PEM files).
pub struct CertFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Why the admin API could not start: the relay does not start either.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("admin: listen {listen} needs TLS but [tls] has no certificate")]
    NoCertificate { listen: std::net::SocketAddr },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsFileError),
    #[error("admin: cannot listen on {listen}: {source}")]
    Bind {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Loads (or creates) the token, binds `[admin] listen` and serves the API in the background.
/// A bind, token or certificate failure stops the start.
pub async fn start(settings: &Settings, state: AdminState) -> Result<(), StartError> {
    let listen = settings.listen;
    let token = token::load_or_create(&settings.token_path(&state.relay.data_dir))?;
    let tls = if settings.uses_tls() {
        let files = state
            .relay
            .tls
            .as_ref()
            .ok_or(StartError::NoCertificate { listen })?;
        let config = crate::tls::server_config(&files.certificate, &files.private_key)?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind { listen, source })?;
    let policy = guard::Policy {
        hosts: host::Allowed::new(listen.ip(), &state.relay.hostname, &settings.allowed_hosts),
        token: token.secret().to_string(),
        loopback_pool_status_without_token: settings.loopback_pool_status_without_token,
        max_body: settings::MAX_BODY,
        max_report_body: feedback::max_body(&state.relay.feedback),
    };
    let tally = Arc::new(std::sync::Mutex::new(tally::Tally::new(
        std::time::Instant::now(),
    )));
    let app = router(
        state,
        serve::Guarded {
            policy,
            tally: tally.clone(),
        },
    );
    let limits = serve::Limits {
        header_timeout: settings.header_timeout.0,
        max_connections: settings.max_connections,
        max_connections_per_client: settings.max_connections_per_client,
    };
    tracing::info!(%listen, tls = tls.is_some(), "admin API listening");
    tokio::spawn(serve::flush_loop(tally.clone()));
    tokio::spawn(serve::accept_loop(listener, app, tls, limits, tally));
    Ok(())
}

/// The routes behind the guard (`guard.rs`) and the body cap.
fn router(state: AdminState, guarded: serve::Guarded) -> Router {
    pool::routes()
        .merge(reputation::routes())
        .merge(accounts::routes())
        .merge(doctor::routes())
        .merge(feeds::routes())
        .merge(queue::routes())
        .merge(metrics::routes())
        .merge(history::routes())
        .merge(page::routes())
        .merge(reload::routes())
        .merge(tls_reports::routes())
        .merge(feedback::routes(&state.relay.feedback))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(settings::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guarded),
            serve::guarded,
        ))
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
