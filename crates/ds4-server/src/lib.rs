//! ds4-server: the OpenAI / Anthropic / Responses compatible HTTP server (axum).
//!
//! Owns: HTTP routing, request parsing, SSE, error bodies (spec/server.md §4), the job queue and
//! the inference worker thread. Refuses: rendering and DSML details (`ds4-chat`) and the forward
//! pass (`ds4-engine`).
//!
//! Design decision: one `std::thread` worker owns the only session and receives typed jobs
//! (STYLE §2.7, the llama.cpp server split). Handlers parse JSON, render and tokenize on the
//! async runtime; the worker never sees JSON. Each job carries an unbounded channel back to its
//! handler: when the client disconnects, axum drops the handler's stream, the channel closes, and
//! the worker stops at the next token (or skips the job if it was still queued).

pub mod api;
pub mod disk;
pub mod error;
pub mod metrics;
pub mod state;
pub mod trace;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ds4_chat::dsml::{ToolMemory, TOOL_MEMORY_MAX_BYTES};
use ds4_chat::Tokenizer;
use ds4_engine::Session;

use crate::api::{chat_completions, completions, health, messages, models, responses};
use crate::error::{ApiError, ApiErrorKind, Dialect};
pub use crate::state::{AppState, Inner, ServerConfig};
use crate::worker::Worker;

/// Builds the shared state and starts the worker thread over `session`.
pub fn start(
    cfg: ServerConfig,
    session: Session,
    tokenizer: &'static Tokenizer,
    trace: trace::Trace,
) -> std::io::Result<AppState> {
    start_with_disk(cfg, session, tokenizer, trace, None)
}

/// [`start`] with the disk KV cache (`--kv-disk-dir`) enabled when `disk` is given.
pub fn start_with_disk(
    cfg: ServerConfig,
    session: Session,
    tokenizer: &'static Tokenizer,
    trace: trace::Trace,
    disk: Option<disk::DiskKv>,
) -> std::io::Result<AppState> {
    let metrics = Arc::new(metrics::Metrics::default());
    let trace = Arc::new(trace);
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut worker = Worker::new(
        session,
        tokenizer,
        metrics.clone(),
        trace.clone(),
        cfg.prefill_chunk,
        shutdown.clone(),
    );
    worker.disk = disk;
    let (jobs, handle) = worker::spawn(worker)?;
    let tool_memory = ToolMemory::new(
        if cfg.exact_replay {
            cfg.tool_memory_max_ids
        } else {
            0
        },
        TOOL_MEMORY_MAX_BYTES,
    );
    Ok(Arc::new(Inner {
        cfg,
        tokenizer,
        jobs: Mutex::new(jobs),
        metrics,
        trace,
        tool_memory: Mutex::new(tool_memory),
        next_id: AtomicU64::new(0),
        ready: AtomicBool::new(true),
        shutdown,
        worker: Mutex::new(Some(handle)),
    }))
}

/// The axum application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/chat/completions", post(chat_completions::handler))
        .route("/v1/completions", post(completions::handler))
        .route("/v1/responses", post(responses::handler))
        .route("/v1/messages", post(messages::handler))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    let dialect = if req.uri().path().starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    ApiError::new(ApiErrorKind::NotFound).in_dialect(dialect)
}

/// `--api-key`: `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn authorized(state: &AppState, req: &Request) -> bool {
    let Some(key) = state.cfg.api_key.as_deref() else {
        return true;
    };
    let h = req.headers();
    let bearer = h
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|v| v.trim() == key);
    let x_api_key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == key);
    bearer || x_api_key
}

/// CORS preflight, authentication, CORS headers (spec §4.1) and error counting.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else if req.uri().path() != "/health" && !authorized(&state, &req) {
        let dialect = if req.uri().path().starts_with("/v1/messages") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        };
        ApiError::new(ApiErrorKind::Unauthorized)
            .in_dialect(dialect)
            .into_response()
    } else {
        next.run(req).await
    };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        state.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    if state.cfg.cors {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("*"),
        );
    }
    resp
}

/// Serves until `shutdown` resolves; then stops accepting, ends running generations at the next
/// token (finish `error`, spec §4.3) and waits for open connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flag = state.shutdown.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            flag.store(true, Ordering::Relaxed);
        })
        .await
}
