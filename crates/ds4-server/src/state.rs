//! Shared server state: the resolved configuration, the tokenizer, the worker's job queue, the
//! tool replay memory and the counters. Handlers own request state; the worker owns the session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ds4_chat::dsml::ToolMemory;
use ds4_chat::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::disk::DiskKv;
use crate::error::{ApiError, ApiErrorKind};
use crate::live::LiveIds;
use crate::metrics::Metrics;
use crate::trace::Trace;
use crate::worker::{Event, Job};

/// The one model id the server lists (spec/server.md §4.5).
pub const MODEL_ID: &str = "deepseek-v4-flash";

/// Resolved server settings (the high args of `main.rs`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--ctx`: context size of the session.
    pub ctx: usize,
    /// `-n/--tokens`: default `max_tokens`.
    pub default_max_tokens: usize,
    /// `--cors`: add the three CORS headers to every response.
    pub cors: bool,
    /// `--api-key`: require `Authorization: Bearer KEY` or `x-api-key: KEY`.
    pub api_key: Option<String>,
    /// `--max-body-bytes`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Prefill chunk (tokens); chunk ends are aligned to absolute multiples of it.
    pub prefill_chunk: usize,
    /// Exact DSML replay memory (off with `--disable-exact-dsml-tool-replay`).
    pub exact_replay: bool,
    /// `--tool-memory-max-ids`.
    pub tool_memory_max_ids: usize,
    /// TEST ONLY (`--test-forced-output`): honour the `x-ds4-test-output` request header, whose
    /// text replaces sampling for that request (tokenized, then EOS).
    pub test_forced_output: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ctx: 32768,
            default_max_tokens: 393216,
            cors: false,
            api_key: None,
            max_body_bytes: 64 << 20,
            prefill_chunk: 2048,
            exact_replay: true,
            tool_memory_max_ids: ds4_chat::dsml::TOOL_MEMORY_MAX_IDS,
            test_forced_output: false,
        }
    }
}

/// Everything handlers share.
pub struct Inner {
    pub cfg: ServerConfig,
    pub tokenizer: &'static Tokenizer,
    pub jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    pub metrics: Arc<Metrics>,
    pub trace: Arc<Trace>,
    /// Exact-replay memory (spec §3.5), shared with the worker, which fills it after each turn.
    pub tool_memory: Arc<Mutex<ToolMemory>>,
    /// Call ids of the worker's live bindings (spec §5.3), for request validation.
    pub live_ids: Arc<Mutex<LiveIds>>,
    /// `--kv-disk-dir`: consulted for tool ids before rendering (spec §3.5 step 1).
    pub disk: Option<Arc<DiskKv>>,
    pub next_id: AtomicU64,
    pub ready: AtomicBool,
    pub shutdown: Arc<AtomicBool>,
    /// The worker thread; taken and joined by [`Inner::join_worker`].
    pub worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub type AppState = Arc<Inner>;

impl Inner {
    /// After shutdown was requested: waits until the worker finished its job and its shutdown
    /// save (spec/server.md §5.6). Returns at once if already joined.
    pub fn join_worker(&self) {
        let handle = self.worker.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            self.shutdown.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }

    /// The live bindings' call ids as of now.
    pub fn live_ids(&self) -> LiveIds {
        self.live_ids.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Process-wide response counter (`chatcmpl-N`, `cmpl-N`), starting at 1.
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a job; the receiver gets its [`Event`]s. Dropping the receiver cancels the job.
    pub fn submit(
        &self,
        make: impl FnOnce(tokio::sync::mpsc::UnboundedSender<Event>) -> Job,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(ApiError::new(ApiErrorKind::Unavailable(
                "server shutting down".to_string(),
            )));
        }
        let (tx, rx) = unbounded_channel();
        let job = make(tx);
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let sent = match self.jobs.lock() {
            Ok(q) => q.send(job).is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::internal("inference worker is not running"));
        }
        Ok(rx)
    }
}
