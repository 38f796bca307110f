//! `GET /metrics`: Prometheus text exposition (`crate::metrics`), levels read now.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AdminState;
use crate::delivery::queue::Request;
use crate::metrics::Levels;

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(st): State<AdminState>) -> Response {
    let summary = st.queue.ask(Request::Summary, "metrics").await.ok();
    let num = |k: &str| summary.as_ref().and_then(|s| s[k].as_u64());
    let pools = st.pools.clone();
    let view = tokio::task::spawn_blocking(move || pools.status())
        .await
        .ok();
    let levels = Levels {
        queue_messages: num("messages").unwrap_or(0),
        queue_oldest: num("oldest"),
        spool_bytes: num("bytes").unwrap_or(0),
        spool_free_bytes: st.spool.free_space().ok(),
        pools: view,
        dnsbl_zones: crate::reputation::dnsbl::List::from_settings(&st.config.reputation)
            .map(|lists| lists.into_iter().map(|l| l.zone).collect())
            .unwrap_or_default(),
        doctor: st
            .doctor
            .as_ref()
            .and_then(|d| d.view().report.map(|r| r.summary)),
        accounts: {
            use crate::reputation::accounts::Kind;
            let a = st.reputation.accounts();
            let mut all = a.list(Kind::Login);
            all.extend(a.list(Kind::Domain));
            all
        },
        now: crate::spool::now_unix(),
    };
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        crate::metrics::render(&levels),
    )
        .into_response()
}
