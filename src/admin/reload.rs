//! `POST /api/reload`: hot reload of the config file in use, or of `{"config": "/path"}`.
//! 200 with what needs a restart; 422 with every error (`file:line: …`) when the new config is
//! refused (the running one stays).

use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::{AdminState, error};

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
