//! `GET /v1/models` and `GET /v1/models/{id}` (spec/server.md §4.5).

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiErrorKind};
use crate::state::{AppState, MODEL_ID};

fn model_object(state: &AppState) -> Value {
    let ctx = state.cfg.ctx;
    let maxc = state.cfg.default_max_tokens.min(ctx);
    json!({
        "id": MODEL_ID,
        "object": "model",
        "created": 1767225600u64,
        "owned_by": "ds4.c",
        "name": "DeepSeek V4 Flash",
        "context_length": ctx,
        "top_provider": {"context_length": ctx, "max_completion_tokens": maxc, "is_moderated": false},
        "supported_parameters": ["tools", "tool_choice", "max_tokens", "temperature", "top_p", "top_k", "min_p",
            "stop", "seed", "stream", "reasoning_effort"],
    })
}

pub async fn list(State(state): State<AppState>) -> Response {
    super::json_response(
        &json!({"object": "list", "data": [model_object(&state)]}),
        true,
    )
}

/// Only the one model exists; any other id is an unknown endpoint (spec §4.2).
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id != MODEL_ID {
        return Err(ApiError::new(ApiErrorKind::NotFound));
    }
    Ok(super::json_response(&model_object(&state), true))
}
