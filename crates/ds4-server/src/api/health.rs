//! `GET /health` and `GET /metrics`: additions of this port (the original has neither, §4.2).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// 200 `{"status":"ready"}` once the worker runs; 503 `loading` before, `stopping` during shutdown.
pub async fn health(State(state): State<AppState>) -> Response {
    let (code, status) = if state.shutdown.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    let body = json!({
        "status": status,
        "queue_depth": state.metrics.queue_depth.load(Ordering::Relaxed).max(0),
    });
    (code, super::json_response(&body, true)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}
