//! `POST /api/feedback` (one complaint report, for `poolrelay feedback < report.eml`) and
//! `GET /api/complaints` (the recent traced complaints).

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{AdminState, error};
use crate::feedback::{Handled, Settings, Traced, Via};

use super::guard::REPORT_PATH as PATH;

/// The body limit of `PATH`: the largest report, base64-encoded, in JSON.
pub(super) fn max_body(settings: &Settings) -> usize {
    let report = settings.max_size.0;
    usize::try_from(report.saturating_mul(4) / 3).unwrap_or(usize::MAX) + 64 * 1024
}

pub(super) fn routes(settings: &Settings) -> Router<AdminState> {
    Router::new()
        .route(
            PATH,
            post(report).layer(DefaultBodyLimit::max(max_body(settings))),
        )
        .route("/api/complaints", get(complaints))
}

/// The report: its bytes in base64 (any bytes), or as text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    report_base64: Option<String>,
    report: Option<String>,
}

#[derive(Serialize)]
struct ReportResult {
    /// `complaint`, `not-a-complaint`, `untraced`, `not-a-report` or `forged`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    complaint: Option<Traced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn report(State(st): State<AdminState>, body: axum::Json<ReportBody>) -> Response {
    let Some(feedback) = st.feedback.clone() else {
        return error(StatusCode::NOT_FOUND, "complaint intake is not running");
    };
    let raw = match (&body.report_base64, &body.report) {
        (Some(b), None) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(raw) => raw,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("report_base64: {e}")),
        },
        (None, Some(text)) => text.clone().into_bytes(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give the report as \"report_base64\" or as \"report\" (one of them)",
            );
        }
    };
    let max = st.relay.feedback.max_size.0;
    if raw.len() as u64 > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("report larger than [feedback] max_size ({max} bytes)"),
        );
    }
    let handled = tokio::task::spawn_blocking(move || feedback.handle(&raw, Via::Api, "api")).await;
    let (code, body) = match handled {
        Ok(Ok(h)) => {
            let result = h.result();
            match h {
                Handled::Complaint(t) | Handled::NotAComplaint(t) | Handled::Duplicate(t) => (
                    StatusCode::OK,
                    ReportResult {
                        result,
                        complaint: Some(*t),
                        reason: None,
                    },
                ),
                Handled::Forged(why) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ReportResult {
                        result,
                        complaint: None,
                        reason: Some(format!("{why}; it attributes nothing")),
                    },
                ),
                Handled::UnknownKey => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ReportResult {
                        result,
                        complaint: None,
                        reason: Some(
                            "sealed with a trace key this relay does not know yet; try again later"
                                .into(),
                        ),
                    },
                ),
                Handled::NotAReport(why) => (
                    StatusCode::OK,
                    ReportResult {
                        result,
                        complaint: None,
                        reason: Some(why.to_string()),
                    },
                ),
                Handled::Untraced { .. } => (
                    StatusCode::OK,
                    ReportResult {
                        result,
                        complaint: None,
                        reason: Some("the report names no message poolrelay sent".into()),
                    },
                ),
            }
        }
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    (code, axum::Json(body)).into_response()
}

#[derive(Serialize)]
struct ComplaintList {
    complaints: Vec<Traced>,
}

async fn complaints(State(st): State<AdminState>) -> Response {
    let complaints = st.feedback.as_ref().map(|f| f.recent()).unwrap_or_default();
    axum::Json(ComplaintList { complaints }).into_response()
}
