//! `GET /api/feeds`: each provider feed's last poll (time, ok or the error, rows read, the
//! verdicts and what they did) and the domains' spam-rate verdicts. `POST /api/feeds/poll`:
//! polls every feed now and answers with the new status.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::{AdminState, error};
use crate::reputation::feeds::FeedsView;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/api/feeds", get(status))
        .route("/api/feeds/poll", post(poll))
}

#[derive(Serialize)]
struct Status {
    configured: bool,
    #[serde(flatten)]
    view: FeedsView,
}

async fn status(State(st): State<AdminState>) -> Response {
    let view = st.feeds.as_ref().map(|f| f.view());
    axum::Json(Status {
        configured: view.is_some(),
        view: view.unwrap_or_default(),
    })
    .into_response()
}

async fn poll(State(st): State<AdminState>) -> Response {
    let Some(feeds) = &st.feeds else {
        return error(
            StatusCode::NOT_FOUND,
            "no feed is configured ([feeds.snds], [feeds.postmaster])",
        );
    };
    let view = feeds.poll_now().await;
    axum::Json(Status {
        configured: true,
        view,
    })
    .into_response()
}
