//! `POST /api/tls-reports/send`: sends every TLS report collected so far (the current period up
//! to now included) instead of waiting for the period's end; 200 with one entry per report
//! (`domain`, `report_id`, `start`, `end`, `policies`, `to: [{uri, ok, detail}]`), 409 when
//! `[tls_reports]` is not enabled. `poolrelay tls-report send` is the CLI side (`command`).

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

/// `poolrelay tls-report send`: one line per report and URI; exit 1 when one failed.
pub fn command(config: &crate::config::Config) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (code, text) = match super::client::request(config, "POST", "/api/tls-reports/send", None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay tls-report send: {e}");
            return ExitCode::FAILURE;
        }
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if code != 200 {
        let why = value["error"].as_str().unwrap_or(text.as_str());
        eprintln!("poolrelay tls-report send: {}", crate::text::escape(why));
        return ExitCode::FAILURE;
    }
    let reports = value["reports"].as_array().cloned().unwrap_or_default();
    if reports.is_empty() {
        println!("no results to report");
    }
    let mut failed = false;
    for r in &reports {
        for t in r["to"].as_array().into_iter().flatten() {
            let ok = t["ok"].as_bool().unwrap_or(false);
            failed |= !ok;
            println!(
                "{} {} {} {}",
                crate::text::escape(r["domain"].as_str().unwrap_or("?")),
                crate::text::escape(t["uri"].as_str().unwrap_or("?")),
                if ok { "sent" } else { "FAILED" },
                crate::text::escape(t["detail"].as_str().unwrap_or("")),
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
