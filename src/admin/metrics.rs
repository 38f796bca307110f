//! `GET /metrics`: Prometheus text exposition (`crate::metrics`), levels read now.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AdminState;
use crate::delivery::queue::Request;
use crate::metrics::Levels;

pub(super) fn routes() -> Router<AdminState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(st): State<AdminState>, headers: HeaderMap) -> Response {
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
        dnsbl_zones: crate::reputation::dnsbl::List::from_settings(&st.relay.reputation)
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
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (content_type, body) = if wants_text_004(accept) {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render_text_004(&levels),
        )
    } else {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(&levels),
        )
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

/// True when `accept` prefers `text/plain` (Prometheus text 0.0.4) over OpenMetrics, by q
/// value; OpenMetrics wins ties and an Accept naming neither (as before negotiation).
fn wants_text_004(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut q, mut version) = (1.0f32, None);
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                    q = v.trim().parse().unwrap_or(0.0);
                }
                Some((k, v)) if k.trim().eq_ignore_ascii_case("version") => {
                    version = Some(v.trim().to_string());
                }
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => {
                text = text.max(q);
            }
            _ => {}
        }
    }
    text > om
}

#[cfg(test)]
mod tests {
    use super::wants_text_004;

    #[test]
    fn accept_picks_the_format() {
        assert!(wants_text_004("text/plain; version=0.0.4"));
        assert!(wants_text_004("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(!wants_text_004(""));
        assert!(!wants_text_004("*/*"));
        // What Prometheus sends: OpenMetrics first.
        assert!(!wants_text_004(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(wants_text_004(
            "application/openmetrics-text;q=0.2,text/plain;version=0.0.4"
        ));
    }
}
