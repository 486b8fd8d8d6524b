//! `ApiError`: every error a client can see, in the OpenAI or the Anthropic shape
//! (spec/server.md §4.13). User errors are not logged; internal ones are logged and shown only
//! by their message, never with internal detail.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Which error body shape a route uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// What went wrong, with the status code of spec/server.md §4.13.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiErrorKind {
    /// 400 `invalid JSON request` and the other fixed 400 messages.
    #[error("{0}")]
    BadRequest(String),
    /// 400 with the context-length body.
    #[error(
        "Prompt has {n_prompt_tokens} tokens, but the configured context size is {n_ctx} tokens"
    )]
    ContextLength {
        n_prompt_tokens: usize,
        n_ctx: usize,
        param: &'static str,
    },
    /// 401: `--api-key` set and the request did not carry it.
    #[error("invalid API key")]
    Unauthorized,
    /// 404 `unknown endpoint`.
    #[error("unknown endpoint")]
    NotFound,
    /// 409: live continuation state vanished.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than `--max-body-bytes`.
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge { limit: usize },
    /// 500: prefill failure and other internal errors (message only).
    #[error("{0}")]
    Internal(String),
    /// 503: shutting down or the worker is gone.
    #[error("{0}")]
    Unavailable(String),
}

/// An error response: kind plus the dialect that decides the body shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub dialect: Dialect,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind) -> ApiError {
        ApiError {
            kind,
            dialect: Dialect::OpenAi,
        }
    }
    pub fn invalid_json() -> ApiError {
        ApiError::bad_request("invalid JSON request")
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::BadRequest(msg.into()))
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::Internal(msg.into()))
    }
    /// The same error in another body shape.
    pub fn in_dialect(mut self, dialect: Dialect) -> ApiError {
        self.dialect = dialect;
        self
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ApiErrorKind::BadRequest(_) | ApiErrorKind::ContextLength { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiErrorKind::NotFound => StatusCode::NOT_FOUND,
            ApiErrorKind::Conflict(_) => StatusCode::CONFLICT,
            ApiErrorKind::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiErrorKind::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiErrorKind::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_type(&self) -> &'static str {
        match (self.dialect, &self.kind) {
            (Dialect::Anthropic, ApiErrorKind::Unauthorized) => "authentication_error",
            (Dialect::OpenAi, ApiErrorKind::Unauthorized) => "invalid_api_key",
            (Dialect::Anthropic, ApiErrorKind::Internal(_)) => "api_error",
            (Dialect::Anthropic, ApiErrorKind::Unavailable(_)) => "overloaded_error",
            (Dialect::Anthropic, ApiErrorKind::NotFound) => "not_found_error",
            (Dialect::Anthropic, ApiErrorKind::TooLarge { .. }) => "request_too_large",
            // spec §4.13: one type for everything on the OpenAI side, as the original does.
            _ => "invalid_request_error",
        }
    }

    /// The JSON body (without the trailing newline).
    pub fn body(&self) -> serde_json::Value {
        let message = self.kind.to_string();
        match (&self.kind, self.dialect) {
            (
                ApiErrorKind::ContextLength {
                    n_prompt_tokens,
                    n_ctx,
                    param,
                },
                Dialect::OpenAi,
            ) => json!({
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": "context_length_exceeded",
                    "n_prompt_tokens": n_prompt_tokens,
                    "n_ctx": n_ctx,
                }
            }),
            (
                ApiErrorKind::ContextLength {
                    n_prompt_tokens,
                    n_ctx,
                    ..
                },
                Dialect::Anthropic,
            ) => json!({
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": message,
                    "n_prompt_tokens": n_prompt_tokens,
                    "n_ctx": n_ctx,
                }
            }),
            // spec §4.13: the standard body is used for every endpoint, /v1/messages included,
            // except the context-length case. Anthropic SDKs also read `type`, so it is added at
            // the top level without changing the `error` object the spec defines.
            (_, Dialect::Anthropic) => json!({
                "type": "error",
                "error": {"message": message, "type": self.error_type()}
            }),
            (_, Dialect::OpenAi) => {
                json!({"error": {"message": message, "type": self.error_type()}})
            }
        }
    }
}

impl From<ApiErrorKind> for ApiError {
    fn from(kind: ApiErrorKind) -> ApiError {
        ApiError::new(kind)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiErrorKind::Internal(msg) = &self.kind {
            eprintln!("ds4-server: internal error: {msg}");
        }
        let mut body = self.body().to_string();
        body.push('\n');
        let mut resp = (self.status(), body).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
