//! `GET /api/doctor`: the background doctor's last report, and the IPs it holds out.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AdminState;
use crate::doctor::LatestView;

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/api/doctor", get(latest))
}

async fn latest(State(st): State<AdminState>) -> Response {
    let view = match &st.doctor {
        Some(l) => l.view(),
        None => LatestView::default(),
    };
    axum::Json(view).into_response()
}
