//! `POST /api/reload`: hot reload of the config file in use, or of `{"config": "/path"}`.
//! 200 with what needs a restart; 422 with every error (`file:line: …`) when the new config is
//! refused (the running one stays). The request travels on a channel (`Trigger`) to the server
//! loop, where `crate::reload` does the work.

use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{AdminState, error};

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub config: PathBuf,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// A refused reload: every error, `file:line: message`.
pub type Refused = Vec<String>;

/// One reload request: an optional other config file, and where the answer goes.
pub struct Request {
    pub config: Option<PathBuf>,
    pub reply: oneshot::Sender<Result<Applied, Refused>>,
}

/// Asks the server loop for a reload (the admin API holds one; `crate::reload` answers).
#[derive(Clone)]
pub struct Trigger(pub mpsc::Sender<Request>);

impl Trigger {
    pub async fn reload(&self, config: Option<PathBuf>) -> Result<Applied, Refused> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Request { config, reply })
            .await
            .map_err(|_| vec!["the relay is stopping".to_string()])?;
        answer
            .await
            .unwrap_or_else(|_| Err(vec!["the relay is stopping".to_string()]))
    }
}

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/api/reload", post(reload))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    config: Option<PathBuf>,
}

async fn reload(State(st): State<AdminState>, body: Bytes) -> Response {
    let Some(trigger) = &st.reload else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "reload is not available");
    };
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
        }
    };
    match trigger.reload(body.config).await {
        Ok(applied) => axum::Json(applied).into_response(),
        Err(errors) => {
            let body = serde_json::json!({ "error": errors.join("\n"), "errors": errors });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
    }
}
