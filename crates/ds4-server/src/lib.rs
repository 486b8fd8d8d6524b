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
pub mod live;
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
    let tool_memory = Arc::new(Mutex::new(ToolMemory::new(
        if cfg.exact_replay {
            cfg.tool_memory_max_ids
        } else {
            0
        },
        TOOL_MEMORY_MAX_BYTES,
    )));
    let live_ids = Arc::new(Mutex::new(live::LiveIds::default()));
    let disk = disk.map(Arc::new);
    let mut worker = Worker::new(
        session,
        tokenizer,
        metrics.clone(),
        trace.clone(),
        cfg.prefill_chunk,
        shutdown.clone(),
    );
    worker.disk = disk.clone();
    worker.tool_memory = tool_memory.clone();
    worker.exact_replay = cfg.exact_replay;
    worker.live_ids = live_ids.clone();
    let (jobs, handle) = worker::spawn(worker)?;
    Ok(Arc::new(Inner {
        cfg,
        tokenizer,
        jobs: Mutex::new(jobs),
        metrics,
        trace,
        tool_memory,
        live_ids,
        disk,
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

/// Entry points for the cargo-fuzz targets in `crates/ds4-server/fuzz` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    use ds4_chat::dsml::{ToolMemory, TOOL_MEMORY_MAX_BYTES};
    use ds4_chat::{SpecialKind, Tokenizer};

    use crate::api::{chat_completions, completions, messages, parse_object, responses};
    use crate::state::ServerConfig;

    /// Call ids a live binding could hold while the request arrives.
    const LIVE: [&str; 2] = ["call_live", "toolu_live"];

    /// One request body through the server's own parser for `endpoint` (0 chat completions,
    /// 1 completions, 2 responses, 3 messages) and, when it parses, the replay memory, the
    /// renderer, the tokenizer and the live-tail split the worker uses. Panics only on a bug:
    /// the tokens must decode to the rendered text, and the tail must be `EOS` + a suffix of it.
    pub fn request(endpoint: u8, body: &[u8]) {
        let cfg = ServerConfig::default();
        let tok = Tokenizer::builtin();
        let live: Vec<String> = LIVE.iter().map(|s| s.to_string()).collect();
        let Ok(obj) = parse_object(body) else { return };
        let job = match endpoint % 4 {
            0 => chat_completions::parse_request(&cfg, &obj, body).map(|(j, _)| j),
            1 => {
                if let Ok(c) = completions::parse_request(&cfg, &obj) {
                    let ids = tok.encode_segments(&c.rendered);
                    assert_eq!(tok.decode(&ids), c.rendered.text().as_bytes());
                }
                return;
            }
            2 => responses::parse_request(&cfg, &obj, body, &live).map(|p| p.job),
            _ => messages::parse_request(&cfg, &obj, body, &live),
        };
        let mut job = match job {
            Ok(j) => j,
            Err(e) => {
                // Error bodies are built for every rejection; they must not panic either.
                let _ = e.body();
                return;
            }
        };
        // A memory that knows some of the ids the input may name, with arbitrary blocks.
        let mut mem = ToolMemory::new(64, TOOL_MEMORY_MAX_BYTES);
        for m in &job.messages {
            for c in &m.tool_calls {
                if c.id.len() % 2 == 0 {
                    mem.remember(&[c.id.as_str()], &c.arguments);
                }
            }
        }
        mem.apply(&mut job.messages);
        let p = chat_completions::prepare(tok, &job);
        assert_eq!(tok.decode(&p.prompt), p.prompt_text.as_bytes());
        if let Some(t) = &p.tail {
            let text = t.rendered.text();
            let rest = text
                .strip_prefix(SpecialKind::Eos.text())
                .unwrap_or_else(|| panic!("tail without EOS: {text:?}"));
            assert!(p.prompt_text.ends_with(rest), "tail {rest:?} not a suffix");
            let ids = tok.encode_segments(&t.rendered);
            assert_eq!(tok.decode(&ids), text.as_bytes());
        }
    }
}
