//! `POST /api/tls-reports/send`: sends every TLS report collected so far (the current period up
//! to now included) instead of waiting for the period's end; 200 with one entry per report
//! (`domain`, `report_id`, `start`, `end`, `policies`, `to: [{uri, ok, detail}]`), 409 when
//! `[tls_reports]` is not enabled. `poolrelay tls-report send` is the CLI side (`cli::tls_reports`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AdminState, error};

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/api/tls-reports/send", post(send))
}

async fn send(State(st): State<AdminState>) -> Response {
    let Some(service) = &st.tls_reports else {
        return error(StatusCode::CONFLICT, "[tls_reports] is not enabled");
    };
    match service.send_now().await {
        Ok(sent) => axum::Json(serde_json::json!({ "reports": sent })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
