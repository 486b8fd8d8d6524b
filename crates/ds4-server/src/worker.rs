//! The inference worker: one `std::thread` that owns the only [`Session`] and serves typed
//! [`Job`]s in FIFO order (spec/server.md §4.3). Handlers parse JSON, render and tokenize before a
//! job is queued; the worker never sees `serde_json::Value`.
//!
//! Per job: choose the reusable prefix (the spec §5.2 cascade, with the live protocol bindings of
//! §5.3), prefill, decode with the sampler (greedy on DSML syntax, §3.3), split the output with
//! [`StreamParser`], allocate tool-call ids, remember the sampled DSML (§3.5), set the bindings for
//! the next request, canonicalize the live tail when exact replay is off (§3.6), and send
//! [`Event`]s to the handler. A handler that goes away (client disconnected) closes its channel: a
//! queued job is then dropped, and a running one stops at the next token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ds4_chat::dsml::{
    new_tool_call_id, parse_generated_message, turn_suffix, DsmlTracker, ParsedMessage,
    StreamConfig, StreamEvent, StreamParser, ToolMemory,
};
use ds4_chat::{Rendered, Segment, SpecialKind, ThinkMode, Tokenizer, ToolCall};
use ds4_engine::sampler::{Sampler, SamplingParams};
use ds4_engine::{Session, SyncProgress};
use ds4_kvcache::{KeyKind, SaveOutcome, SaveReason};
use tokio::sync::mpsc::UnboundedSender;

use crate::disk::{snapshot_of, DiskKv};
use crate::live::{
    tool_map_for, AnthropicBinding, Bindings, LiveIds, Protocol, ResponsesBinding, ThinkingBinding,
    ToolTail,
};
use crate::metrics::Metrics;
use crate::trace::{token_window, utc_date, Trace};

/// How the output of a job is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `/v1/completions`: raw text, never parsed (spec §4.7).
    Raw,
    /// Chat-style endpoints: reasoning / content / tool calls.
    Chat(StreamConfig),
}

/// Exact-replay counters of one request (spec §3.5), for the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayStats {
    /// Assistant messages rendered from remembered blocks.
    pub mem: usize,
    /// Tool ids loaded from `.kv` tool maps before rendering.
    pub disk: usize,
    /// Assistant messages with calls rendered canonically.
    pub canonical: usize,
    /// Call ids not remembered.
    pub missing_ids: usize,
}

/// What the trace header says about a request (spec §4.14).
#[derive(Debug, Clone, Default)]
pub struct TraceInfo {
    pub model: String,
    pub stream: bool,
    /// Active tool schemas.
    pub tools: usize,
    pub think: ThinkMode,
    /// The request body as received.
    pub request_json: String,
    pub tool_replay: ReplayStats,
    /// spec §4.8.4 "reasoning-sensitive": warned about when no live state keeps the reasoning.
    pub reasoning_sensitive: bool,
}

/// One generation request, already rendered and tokenized.
pub struct Job {
    pub id: u64,
    pub protocol: Protocol,
    pub mode: OutputMode,
    pub rendered: Rendered,
    pub prompt: Vec<u32>,
    pub prompt_text: String,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// The history carries tool calls or tool results (the thinking binding does not apply).
    pub tool_history: bool,
    /// The request ends in tool outputs: what rules 2-3 of spec §5.2 may append to the live state.
    pub tail: Option<ToolTail>,
    /// A tool output names a call only the live state knows (spec §4.8.4, §4.9.2): without a
    /// matching live binding the job fails with 409.
    pub requires_live: bool,
    pub trace: TraceInfo,
    /// Test-only forced output (token ids emitted instead of sampled ones, then EOS).
    pub forced: Option<Vec<u32>>,
    pub events: UnboundedSender<Event>,
}

/// Why generation ended (spec §4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    Error,
}

impl Finish {
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::Error => "error",
        }
    }
    pub fn anthropic(self) -> &'static str {
        match self {
            Finish::Length => "max_tokens",
            Finish::ToolCalls => "tool_use",
            Finish::Stop | Finish::Error => "end_turn",
        }
    }
}

/// Token accounting of one request (spec §4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the effective prompt synced into the session.
    pub prompt: usize,
    /// Of those, reused from the live state.
    pub cached: usize,
    /// Generated tokens (EOS excluded).
    pub generated: usize,
}

impl Usage {
    pub fn written(&self) -> usize {
        self.prompt.saturating_sub(self.cached)
    }
}

/// The end of a job.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub finish: Finish,
    pub usage: Usage,
    /// Raw generated text (stop text removed), lossily decoded.
    pub raw_text: String,
    /// Chat mode: the finished generation split by spec §3.1.
    pub parsed: Option<ParsedMessage>,
    /// Ids of the parsed calls, in order: those announced while streaming, then fresh ones.
    pub tool_ids: Vec<String>,
    /// Whether a tool header was streamed live (then calls are not re-sent at the end).
    pub streamed_tool_header: bool,
    /// Why the finish is `error`.
    pub error: Option<String>,
}

/// What the worker tells a handler, in order: `Prefill`*, then `Started`, then output events,
/// then `Finished`; or `Failed` / `Conflict` instead of `Started`.
#[derive(Debug, Clone)]
pub enum Event {
    Prefill {
        done: usize,
        total: usize,
    },
    Started {
        usage: Usage,
    },
    /// Chat mode output (never `StreamEvent::ToolCallStart`: see [`Event::ToolCallStart`]).
    Chat(StreamEvent),
    /// An invoke tag completed; `id` is the call's id (spec §3.4: allocated when first seen).
    ToolCallStart {
        index: usize,
        name: String,
        id: String,
    },
    /// Raw mode output.
    Text(String),
    Finished(Box<Outcome>),
    /// Prefill failed (spec §4.12: 500, or an SSE error event if headers were sent).
    Failed(String),
    /// spec §5.2 rule 4: the live state a tool-output-only request needs is gone (409).
    Conflict(String),
}

/// Everything the worker thread owns.
pub struct Worker {
    pub session: Session,
    pub tokenizer: &'static Tokenizer,
    pub metrics: Arc<Metrics>,
    pub trace: Arc<Trace>,
    pub prefill_chunk: usize,
    pub shutdown: Arc<AtomicBool>,
    /// `--kv-disk-dir`: the disk KV cache, if enabled.
    pub disk: Option<Arc<DiskKv>>,
    /// The exact-replay memory, shared with the handlers (spec §3.5).
    pub tool_memory: Arc<Mutex<ToolMemory>>,
    /// Exact DSML replay on (off: `--disable-exact-dsml-tool-replay`, which enables §3.6).
    pub exact_replay: bool,
    /// Call ids of the live bindings, published for the request parsers.
    pub live_ids: Arc<Mutex<LiveIds>>,
    /// Longest checkpoint stored or loaded for the current timeline (spec §5.6 continued saves).
    disk_frontier: usize,
    bindings: Bindings,
    /// `--- trace: … ---` events of the current job, held until its header is written.
    pending_trace: Vec<String>,
    header_written: bool,
}

/// The part of `r` after its first `skip` bytes of [`Rendered::text`], or `None` when `skip` falls
/// inside a special token's spelling (the split would not be a token boundary).
pub fn rendered_suffix(r: &Rendered, mut skip: usize) -> Option<Rendered> {
    let mut out = Rendered::new();
    for seg in &r.segments {
        match seg {
            Segment::Special(kind) => {
                let n = kind.text().len();
                if skip == 0 {
                    out.push_special(*kind);
                } else if skip >= n {
                    skip -= n;
                } else {
                    return None;
                }
            }
            Segment::Text(t) => {
                if skip == 0 {
                    out.push_text(t);
                } else if skip >= t.len() {
                    skip -= t.len();
                } else {
                    let rest = t.get(skip..)?;
                    out.push_text(rest);
                    skip = 0;
                }
            }
        }
    }
    (skip == 0).then_some(out)
}

/// Earliest match of any stop sequence in `text` (spec §4.4).
fn find_stop(text: &[u8], stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.windows(s.len()).position(|w| w == s.as_bytes()))
        .min()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The cache decision of one request (spec §5.2), as the trace reports it.
struct Decision {
    effective: Vec<u32>,
    source: &'static str,
    /// Why the live state was not reused (only on a live miss).
    miss_reason: Option<&'static str>,
    /// Common token prefix of the live state and the prompt.
    common: usize,
    live_len: usize,
}

impl Worker {
    pub fn new(
        session: Session,
        tokenizer: &'static Tokenizer,
        metrics: Arc<Metrics>,
        trace: Arc<Trace>,
        prefill_chunk: usize,
        shutdown: Arc<AtomicBool>,
    ) -> Worker {
        Worker {
            session,
            tokenizer,
            metrics,
            trace,
            prefill_chunk,
            shutdown,
            disk: None,
            tool_memory: Arc::new(Mutex::new(ToolMemory::new(
                ds4_chat::dsml::TOOL_MEMORY_MAX_IDS,
                ds4_chat::dsml::TOOL_MEMORY_MAX_BYTES,
            ))),
            exact_replay: true,
            live_ids: Arc::new(Mutex::new(LiveIds::default())),
            disk_frontier: 0,
            bindings: Bindings::default(),
            pending_trace: Vec::new(),
            header_written: false,
        }
    }

    /// Serves jobs until every sender is gone or shutdown is requested with the queue empty, then
    /// saves the live session to disk (spec §5.6 "shutdown").
    pub fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let job = match jobs.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if self.shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                // spec §4.3 does better here: a queued request whose client left is dropped.
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                self.trace.line(job.id, "client left while queued: dropped");
                continue;
            }
            self.header_written = false;
            self.pending_trace.clear();
            self.run_job(job);
            // Every path through `run_job` writes a header; events are never lost regardless.
            self.flush_pending();
        }
        self.header_written = true;
        self.save_live(0, SaveReason::Shutdown);
    }

    /// A `--- trace: … ---` event of the current job.
    fn note(&mut self, job: u64, msg: String) {
        if !self.trace.enabled() {
            return;
        }
        if self.header_written {
            self.trace.line(job, &msg);
        } else {
            self.pending_trace
                .push(format!("--- trace: request {job}: {msg} ---\n"));
        }
    }

    fn flush_pending(&mut self) {
        for l in self.pending_trace.drain(..) {
            self.trace.write(l.as_bytes());
        }
    }

    /// Saves the live session (spec §5.6: always the current position). The key is the visible
    /// transcript when a Responses or thinking binding is valid here, else the token text; the
    /// tool map holds the remembered calls whose blocks the key text contains (§5.4).
    /// Failures are traced, never fatal: the disk cache is an optimisation.
    fn save_live(&mut self, job: u64, reason: SaveReason) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let n = self.session.tokens().len();
        if n == 0 || n < disk.policy.min_tokens {
            return;
        }
        let (key, kind) = match self.bindings.visible_key(n) {
            Some((text, kind)) => (text.as_bytes().to_vec(), kind),
            None => (
                self.tokenizer.decode(self.session.tokens()),
                KeyKind::TokenText,
            ),
        };
        let tool_map = match (self.exact_replay, self.tool_memory.lock()) {
            (true, Ok(mem)) => tool_map_for(&key, mem.entries()),
            _ => Vec::new(),
        };
        let result = self
            .session
            .snapshot()
            .map_err(|e| e.to_string())
            .and_then(|snap| {
                disk.save_keyed(&key, kind, reason, &snap, &tool_map)
                    .map_err(|e| e.to_string())
            });
        let msg = match result {
            Ok(SaveOutcome::Written { path, bytes }) => {
                self.metrics.disk_saves.fetch_add(1, Ordering::Relaxed);
                format!(
                    "saved {n} tokens ({bytes} bytes, key={kind:?}, {} tool ids) to {}",
                    tool_map.len(),
                    path.display()
                )
            }
            Ok(other) => format!("not saved: {other:?}"),
            Err(e) => format!("save failed: {e}"),
        };
        self.note(job, format!("kv disk {reason:?}: {msg}"));
    }

    /// spec §5.2 rules 8-9 on a live miss: save the live session (`evict`), then load the best
    /// disk checkpoint for `text` and return the effective prompt built on it (`rendered` is the
    /// structure of `text`).
    fn disk_prefix(&mut self, job: u64, rendered: &Rendered, text: &str) -> Option<Vec<u32>> {
        self.disk.as_ref()?;
        self.save_live(job, SaveReason::Evict);
        let disk = self.disk.clone()?;
        let loaded =
            disk.load_prefix(text.as_bytes(), |k| rendered_suffix(rendered, k).is_some())?;
        let mut loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.note(job, format!("kv disk load failed: {e}"));
                return None;
            }
        };
        let rest = rendered_suffix(rendered, loaded.key_len)?;
        let (key_len, key_kind) = (loaded.key_len, loaded.key_kind);
        let tool_map = std::mem::take(&mut loaded.tool_map);
        let snap = snapshot_of(loaded);
        if let Err(e) = self.session.restore(&snap) {
            self.note(job, format!("kv disk restore failed: {e}"));
            return None;
        }
        // spec §5.7: the file's tool map joins the replay memory (KTM across restarts).
        if self.exact_replay && !tool_map.is_empty() {
            if let Ok(mut mem) = self.tool_memory.lock() {
                for t in &tool_map {
                    mem.remember(&[t.id.as_str()], &t.dsml);
                }
            }
        }
        self.metrics.disk_hits.fetch_add(1, Ordering::Relaxed);
        self.note(
            job,
            format!(
                "kv disk hit: {} tokens, {key_len} key bytes, key={key_kind:?}, {} tool ids",
                snap.tokens.len(),
                tool_map.len()
            ),
        );
        let mut eff = snap.tokens;
        if key_kind != KeyKind::TokenText {
            // QUIRK(spec/server.md §10.1): a visible key ends with an EOS the KV never evaluated.
            eff.push(self.tokenizer.special().eos);
        }
        eff.extend(self.tokenizer.encode_segments(&rest));
        Some(eff)
    }

    /// spec §5.2 rules 1-7 (and 10): the effective prompt and where it came from, or the 409
    /// message of rule 4.
    fn decide(&self, job: &Job) -> Result<Decision, String> {
        let live = self.session.tokens();
        let pos = live.len();
        let eos = self.tokenizer.special().eos;
        let common = common_prefix(live, &job.prompt);
        let hit = |effective: Vec<u32>, source| Decision {
            effective,
            source,
            miss_reason: None,
            common,
            live_len: pos,
        };
        // QUIRK(spec/server.md §10.1): a visible transcript ends with an EOS that was sampled but
        // never evaluated; feed it, as a cold prefill of the same text would.
        let visible = |text: &str| -> Option<Vec<u32>> {
            if job.prompt_text.len() <= text.len() || !job.prompt_text.starts_with(text) {
                return None;
            }
            let rest = rendered_suffix(&job.rendered, text.len())?;
            let mut eff = live.to_vec();
            eff.push(eos);
            eff.extend(self.tokenizer.encode_segments(&rest));
            Some(eff)
        };
        let with_tail = |t: &ToolTail| {
            let mut eff = live.to_vec();
            eff.extend(self.tokenizer.encode_segments(&t.rendered));
            eff
        };
        if pos > 0 {
            match job.protocol {
                Protocol::Responses { .. } => {
                    if let Some(b) = self.bindings.responses.as_ref().filter(|b| b.pos == pos) {
                        // Rule 1.
                        if let Some(eff) = visible(&b.visible_text) {
                            return Ok(hit(eff, "responses-visible"));
                        }
                        // Rule 2.
                        if let Some(t) = job.tail.as_ref().filter(|t| t.names(&b.call_ids)) {
                            return Ok(hit(with_tail(t), "responses-tool-output"));
                        }
                    }
                }
                Protocol::Anthropic => {
                    // Rule 3.
                    if let Some(b) = self.bindings.anthropic.as_ref().filter(|b| b.pos == pos) {
                        if let Some(t) = job.tail.as_ref().filter(|t| t.names(&b.call_ids)) {
                            return Ok(hit(with_tail(t), "anthropic-tool-output"));
                        }
                    }
                }
                Protocol::Chat | Protocol::Completions => {}
            }
        }
        // Rule 4.
        if job.requires_live {
            return Err(match job.protocol {
                Protocol::Anthropic => "Anthropic continuation state is not available; retry by replaying the full messages history",
                _ => "Responses continuation state is not available; retry by replaying the full input history",
            }
            .to_string());
        }
        if pos > 0 {
            // Rule 5.
            if job.prompt.starts_with(live) {
                return Ok(hit(job.prompt.clone(), "memory-token"));
            }
            // Rule 6: the live KV holds hidden reasoning the re-rendered prompt drops.
            if matches!(job.protocol, Protocol::Chat | Protocol::Anthropic) {
                if let Some(b) = self.bindings.thinking.as_ref().filter(|b| b.pos == pos) {
                    if let Some(eff) = visible(&b.visible_text) {
                        return Ok(hit(eff, "thinking-visible"));
                    }
                }
            }
            // Rule 7: live bytes are a prefix of the rendered text; tokenize only the remainder.
            let live_bytes = self.tokenizer.decode(live);
            if job.prompt_text.as_bytes().starts_with(&live_bytes) {
                if let Some(rest) = rendered_suffix(&job.rendered, live_bytes.len()) {
                    let mut eff = live.to_vec();
                    eff.extend(self.tokenizer.encode_segments(&rest));
                    return Ok(hit(eff, "memory-text"));
                }
            }
        }
        let miss_reason = if pos == 0 {
            "no-live-checkpoint"
        } else if job.prompt.len() < pos {
            "incoming-prompt-shorter-than-live-checkpoint"
        } else {
            "token-mismatch"
        };
        Ok(Decision {
            effective: job.prompt.clone(),
            source: "none",
            miss_reason: Some(miss_reason),
            common,
            live_len: pos,
        })
    }

    /// The request header, cache decision, request JSON and rendered prompt (spec §4.14).
    fn trace_head(&mut self, job: &Job, d: &Decision, cached: usize) {
        if !self.trace.enabled() {
            return;
        }
        let s = &job.sampling;
        let t = &job.trace;
        let r = t.tool_replay;
        let mut h = format!(
            "===== request {} {} =====\nkind: {}\nmodel: {}\nstream: {}\ntools: {}\nthink_mode: {}\n\
             prompt_tokens: {}\neffective_tokens: {}\ncached_tokens: {}\n\
             sampling: temperature={} top_p={} top_k={} min_p={} seed={} max_tokens={} stop={:?}\n\
             --- cache decision ---\nlive_tokens: {}\ncommon_prefix: {}\n",
            job.id,
            utc_date(crate::api::unix_now()),
            job.protocol.name(),
            t.model,
            t.stream,
            t.tools,
            t.think.name(),
            job.prompt.len(),
            d.effective.len(),
            cached,
            s.temperature,
            s.top_p,
            s.top_k,
            s.min_p,
            job.seed,
            job.max_tokens,
            job.stop,
            d.live_len,
            d.common,
        );
        if let Some(reason) = d.miss_reason {
            h.push_str(&format!("miss_reason: {reason}\n"));
        }
        h.push_str(&format!(
            "tool_replay: mem={} disk={} canonical={} missing_ids={}\ncache_source: {}\n",
            r.mem, r.disk, r.canonical, r.missing_ids, d.source
        ));
        if d.miss_reason.is_some() && d.live_len > 0 {
            let live = self.session_history_window(d.common);
            let lo = d.common.saturating_sub(8);
            let hi = (d.common + 8).min(job.prompt.len());
            h.push_str(&format!(
                "mismatch_window: token {} (showing {lo}..{hi})\n  live:   {live}\n  prompt: {}\n",
                d.common,
                token_window(self.tokenizer, &job.prompt[lo.min(hi)..hi])
            ));
        }
        self.trace.write(h.as_bytes());
        self.header_written = true;
        self.flush_pending();
        self.trace.section("request json", &t.request_json);
        self.trace.section("rendered prompt", &job.prompt_text);
        self.trace.write(b"--- generated ---\n");
    }

    /// ±8 tokens of the live state around `at` (the first mismatch), before it is replaced.
    fn session_history_window(&self, at: usize) -> String {
        let live = self.session.tokens();
        let lo = at.saturating_sub(8).min(live.len());
        let hi = (at + 8).min(live.len());
        token_window(self.tokenizer, &live[lo..hi])
    }

    fn run_job(&mut self, job: Job) {
        let started = Instant::now();
        let mut decision = match self.decide(&job) {
            Ok(d) => d,
            Err(msg) => {
                let d = Decision {
                    effective: Vec::new(),
                    source: "none",
                    miss_reason: Some("live-tool-state-missing"),
                    common: 0,
                    live_len: self.session.tokens().len(),
                };
                self.trace_head(&job, &d, 0);
                self.note(job.id, format!("409: {msg}"));
                self.trace.write(b"===== end request =====\n");
                let _ = job.events.send(Event::Conflict(msg));
                return;
            }
        };
        // spec §5.2 rules 8-9.
        if decision.source == "none" {
            if let Some(eff) = self.disk_prefix(job.id, &job.rendered, &job.prompt_text) {
                decision.effective = eff;
                decision.source = "disk-text";
            }
        }
        let ctx = self.session.ctx();
        let resident = if decision.effective.starts_with(self.session.tokens()) {
            self.session.tokens().len()
        } else {
            0
        };
        self.trace_head(&job, &decision, resident);
        let effective = decision.effective;
        let source = decision.source;
        if job.trace.reasoning_sensitive
            && !matches!(source, "responses-visible" | "responses-tool-output")
        {
            self.note(
                job.id,
                "warning: replayed tool call without reasoning in thinking mode and no live state that kept it".to_string(),
            );
        }
        if effective.len() >= ctx {
            self.note(job.id, "prompt exceeds context".to_string());
            self.trace.write(b"\n===== end request =====\n");
            let _ = job
                .events
                .send(Event::Failed("prompt exceeds context".to_string()));
            return;
        }
        // spec §5.6: the frontier of continued saves restarts on a miss and sits at the restored
        // length after a disk hit.
        match source {
            "none" => self.disk_frontier = 0,
            "disk-text" => self.disk_frontier = self.session.tokens().len(),
            _ => {}
        }
        let stops = match &self.disk {
            Some(d) if effective.len() < ctx => d.policy.save_stops(
                &effective,
                resident,
                self.disk_frontier,
                source == "none",
                self.tokenizer.special(),
            ),
            _ => Vec::new(),
        };
        // Prefill up to each save point, save the live session there, then prefill the rest.
        let mut stats: Option<ds4_engine::SyncStats> = None;
        for (stop, reason) in stops.into_iter().chain([(effective.len(), None)]) {
            let events = job.events.clone();
            let mut progress = |p: SyncProgress| {
                // spec §4.12: a failed keepalive does not abort prefill; the KV stays reusable.
                let _ = events.send(Event::Prefill {
                    done: p.done,
                    total: p.total,
                });
            };
            match self
                .session
                .sync(&effective[..stop], self.prefill_chunk, &mut progress)
            {
                Ok(s) => {
                    stats = Some(match stats {
                        // Earlier parts were prefilled by this request too.
                        Some(c) => ds4_engine::SyncStats {
                            reused: c.reused,
                            prefilled: c.prefilled + s.prefilled,
                        },
                        None => s,
                    });
                }
                Err(e) => {
                    self.set_bindings(Bindings::default());
                    self.note(job.id, format!("prefill failed: {e}"));
                    self.trace.write(b"\n===== end request =====\n");
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    return;
                }
            }
            if let Some(reason) = reason {
                self.save_live(job.id, reason);
                self.disk_frontier = self.disk_frontier.max(stop);
            }
        }
        let stats = stats.unwrap_or_default();
        // spec §5.2 last paragraph: a request invalidates the bindings it did not use. The one it
        // used is consumed too: the live state moves past it now.
        self.set_bindings(Bindings::default());
        // spec §3.6: a rewrite behind the live end needs the state at the prompt's end.
        let canonicalize = self.may_canonicalize(&job);
        if canonicalize {
            if let Err(e) = self.session.keep_checkpoint(1) {
                self.note(job.id, format!("canonicalization checkpoint failed: {e}"));
            }
        }
        let prefill_s = started.elapsed().as_secs_f64();
        self.metrics
            .record_prefill(stats.prefilled, stats.reused, prefill_s);
        let mut usage = Usage {
            prompt: effective.len(),
            cached: stats.reused,
            generated: 0,
        };
        if job.events.send(Event::Started { usage }).is_err() {
            self.note(job.id, "stream closed during prefill".to_string());
            self.session.clear_checkpoints();
            self.trace.write(b"\n===== end request =====\n");
            return;
        }
        let decode_start = Instant::now();
        let mut outcome = self.decode(&job, &mut usage);
        self.metrics
            .record_decode(usage.generated, decode_start.elapsed().as_secs_f64());
        self.after_turn(&job, &mut outcome);
        if canonicalize {
            self.canonicalize(&job, &outcome);
            self.session.clear_checkpoints();
        }
        self.trace_summary(&job, &outcome);
        let _ = job.events.send(Event::Finished(Box::new(outcome)));
    }

    fn set_bindings(&mut self, b: Bindings) {
        if let Ok(mut ids) = self.live_ids.lock() {
            *ids = b.ids();
        }
        self.bindings = b;
    }

    fn trace_summary(&mut self, job: &Job, out: &Outcome) {
        if !self.trace.enabled() {
            return;
        }
        let mut s = format!(
            "\n--- parsed ---\nfinish: {}\nprompt_tokens: {} cached_tokens: {} generated_tokens: {}\n",
            out.finish.openai(),
            out.usage.prompt,
            out.usage.cached,
            out.usage.generated
        );
        if let Some(e) = &out.error {
            s.push_str(&format!("error: {e}\n"));
        }
        if let Some(p) = &out.parsed {
            s.push_str(&format!(
                "reasoning: {:?}\ncontent: {:?}\ntool_calls: {}\n",
                p.reasoning.as_deref().unwrap_or(""),
                p.content,
                p.tool_calls.len()
            ));
            for (c, id) in p.tool_calls.iter().zip(&out.tool_ids) {
                s.push_str(&format!("  {id} {} {}\n", c.name, c.compact_arguments()));
            }
        }
        s.push_str(&format!("===== end request {} =====\n", job.id));
        self.trace.write(s.as_bytes());
    }

    /// Ids for the parsed calls, remembered blocks (spec §3.5) and the bindings of spec §5.3.
    fn after_turn(&mut self, job: &Job, out: &mut Outcome) {
        let Some(msg) = out.parsed.as_ref() else {
            return;
        };
        let kind = job.protocol.id_kind();
        while out.tool_ids.len() < msg.tool_calls.len() {
            let id = self.alloc_id(kind, &out.tool_ids);
            out.tool_ids.push(id);
        }
        out.tool_ids.truncate(msg.tool_calls.len());
        if self.exact_replay && !out.tool_ids.is_empty() {
            if let (Some(raw), Ok(mut mem)) = (msg.raw_dsml.as_deref(), self.tool_memory.lock()) {
                let ids: Vec<&str> = out.tool_ids.iter().map(String::as_str).collect();
                mem.remember(&ids, raw);
            }
        }
        let b = self.bindings_for(job, out);
        self.set_bindings(b);
    }

    /// A fresh call id, unique in `taken` and in the replay memory (spec §3.4).
    fn alloc_id(&self, kind: ds4_chat::dsml::IdKind, taken: &[String]) -> String {
        let mem = self.tool_memory.lock().ok();
        new_tool_call_id(kind, |c| {
            taken.iter().any(|t| t == c) || mem.as_ref().is_some_and(|m| m.contains(c))
        })
    }

    /// spec §5.3: what the next request may continue from.
    fn bindings_for(&self, job: &Job, out: &Outcome) -> Bindings {
        let mut b = Bindings::default();
        let pos = self.session.tokens().len();
        let (OutputMode::Chat(cfg), Some(msg)) = (job.mode, out.parsed.as_ref()) else {
            return b;
        };
        if pos == 0 || matches!(out.finish, Finish::Error | Finish::Length) {
            return b;
        }
        let calls = !msg.tool_calls.is_empty();
        match job.protocol {
            Protocol::Responses { summary } => {
                let mut v = job.prompt_text.clone();
                if cfg.thinking {
                    if summary && out.finish == Finish::ToolCalls {
                        v.push_str(msg.reasoning.as_deref().unwrap_or(""));
                    }
                    v.push_str(SpecialKind::ThinkEnd.text());
                }
                v.push_str(&msg.content);
                if calls {
                    v.push_str(&self.replayed_block(msg, &out.tool_ids));
                }
                v.push_str(SpecialKind::Eos.text());
                b.responses = Some(ResponsesBinding {
                    visible_text: v,
                    pos,
                    call_ids: out.tool_ids.clone(),
                });
            }
            Protocol::Anthropic if calls => {
                b.anthropic = Some(AnthropicBinding {
                    pos,
                    call_ids: out.tool_ids.clone(),
                });
            }
            _ => {}
        }
        // Thinking binding (spec §5.3; §8.2 #75 gate).
        if cfg.thinking
            && !cfg.tools_active
            && !job.tool_history
            && !calls
            && out.finish == Finish::Stop
            && msg.reasoning.is_some()
        {
            if let Some(base) = job.prompt_text.strip_suffix(SpecialKind::Think.text()) {
                b.thinking = Some(ThinkingBinding {
                    visible_text: format!(
                        "{base}{}{}{}",
                        SpecialKind::ThinkEnd.text(),
                        msg.content,
                        SpecialKind::Eos.text()
                    ),
                    pos,
                });
            }
        }
        b
    }

    /// The block the next request will render for this turn's calls: the sampled bytes under
    /// exact replay, else the canonical rendering of the parsed calls.
    fn replayed_block(&self, msg: &ParsedMessage, ids: &[String]) -> String {
        match (self.exact_replay, msg.raw_dsml.as_deref()) {
            (true, Some(raw)) => raw.to_string(),
            _ => ds4_chat::dsml::render_tool_calls(&tool_calls(msg, ids)).text(),
        }
    }

    /// spec §3.6 applies: replay disabled, chat or Anthropic with tools.
    fn may_canonicalize(&self, job: &Job) -> bool {
        !self.exact_replay
            && matches!(job.protocol, Protocol::Chat | Protocol::Anthropic)
            && matches!(job.mode, OutputMode::Chat(c) if c.tools_active)
    }

    /// spec §3.6: after a tool-call turn with exact replay disabled, rewrite the live tail into the
    /// canonical text the next request will render, so that request reuses the whole turn. The
    /// rewrite restores the checkpoint kept at the end of the prompt (better than the original's
    /// full rebuild) or, without one, the best disk checkpoint, then prefills the canonical tail.
    fn canonicalize(&mut self, job: &Job, out: &Outcome) {
        let (OutputMode::Chat(cfg), Some(msg)) = (job.mode, out.parsed.as_ref()) else {
            return;
        };
        if msg.tool_calls.is_empty() || out.finish != Finish::ToolCalls {
            return;
        }
        let calls = tool_calls(msg, &out.tool_ids);
        let suffix = turn_suffix(
            cfg.thinking,
            msg.reasoning.as_deref().unwrap_or(""),
            &msg.content,
            &calls,
            None,
        );
        let mut expected = job.rendered.clone();
        expected.extend(&suffix);
        let tokens = self.tokenizer.encode_segments(&expected);
        let text = expected.text();
        let live = self.session.tokens();
        // Already canonical: the next request extends the live state by token or text prefix.
        if tokens.starts_with(live) || text.as_bytes().starts_with(&self.tokenizer.decode(live)) {
            self.note(
                job.id,
                "canonicalize: live tail already canonical".to_string(),
            );
            return;
        }
        if common_prefix(live, &tokens) < job.prompt.len() {
            self.note(
                job.id,
                "canonicalize: skipped (prompt not resident)".to_string(),
            );
            return;
        }
        if self.session.n_checkpoints() == 0 {
            if let Some(eff) = self.disk_prefix(job.id, &expected, &text) {
                self.note(
                    job.id,
                    format!("canonicalize: disk checkpoint, {} tokens", eff.len()),
                );
            }
        }
        let events = job.events.clone();
        let mut progress = |p: SyncProgress| {
            let _ = events.send(Event::Prefill {
                done: p.done,
                total: p.total,
            });
        };
        match self
            .session
            .sync(&tokens, self.prefill_chunk, &mut progress)
        {
            Ok(s) => {
                self.note(
                    job.id,
                    format!(
                        "canonicalize: rewrote the live tail, reused {} prefilled {} (now {} tokens)",
                        s.reused,
                        s.prefilled,
                        tokens.len()
                    ),
                );
                // The bindings were set for the sampled tail, which is gone.
                self.set_bindings(Bindings::default());
            }
            Err(e) => {
                self.set_bindings(Bindings::default());
                self.note(job.id, format!("canonicalize failed: {e}"));
            }
        }
    }

    fn decode(&mut self, job: &Job, usage: &mut Usage) -> Outcome {
        let eos = self.tokenizer.special().eos;
        let ctx = self.session.ctx();
        let room = ctx.saturating_sub(self.session.tokens().len());
        let max_tokens = job.max_tokens.min(room);
        let hold = job
            .stop
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        let tools_active = matches!(job.mode, OutputMode::Chat(c) if c.tools_active);
        let mut sampler = Sampler::new(job.sampling, job.seed);
        let mut tracker = DsmlTracker::new();
        let mut em = Emitter {
            job,
            parser: match job.mode {
                OutputMode::Chat(cfg) => Some(StreamParser::new(cfg)),
                OutputMode::Raw => None,
            },
            text_pending: Vec::new(),
            evs: Vec::new(),
            ids: Vec::new(),
            memory: self.tool_memory.clone(),
        };
        let mut forced = job.forced.as_ref().map(|f| f.iter().copied());
        let mut raw: Vec<u8> = Vec::new();
        let mut sent = 0usize; // bytes of `raw` handed to the parser / client
        let mut finish = Finish::Length;
        let mut error = None;
        let mut stop_hit = false;
        let mut client_gone = false;

        while usage.generated < max_tokens {
            if self.shutdown.load(Ordering::Relaxed) {
                finish = Finish::Error;
                error = Some("shutdown requested".to_string());
                break;
            }
            let token = match forced.as_mut() {
                Some(it) => it.next().unwrap_or(eos),
                None => {
                    let greedy = tools_active && tracker.is_dsml_syntax();
                    sampler.sample_with(self.session.logits(), greedy)
                }
            };
            if token == eos {
                finish = Finish::Stop;
                break;
            }
            usage.generated += 1;
            let bytes = self.tokenizer.token_bytes(token);
            raw.extend_from_slice(bytes);
            self.trace.write(bytes);
            if tools_active {
                tracker.push(bytes);
            }
            if let Some(m) = find_stop(&raw, &job.stop) {
                raw.truncate(m);
                stop_hit = true;
                finish = Finish::Stop;
                break;
            }
            let safe = raw.len().saturating_sub(hold).max(sent);
            if safe > sent {
                if !em.emit(&raw[sent..safe], false) {
                    client_gone = true;
                }
                sent = safe;
            }
            if client_gone {
                finish = Finish::Error;
                error = Some("client stream write failed".to_string());
                break;
            }
            let closed = em.parser.as_ref().is_some_and(|p| p.block_closed());
            if closed || usage.generated >= max_tokens {
                if closed {
                    finish = Finish::ToolCalls;
                    // The closer joins the live state (spec §5.1: it ends at the last DSML token),
                    // so a continuation appends exactly the next turn (§5.2 rules 1-3).
                    if let Err(e) = self.session.push(token) {
                        // A live state without its closer must not be continued.
                        self.session.reset();
                        finish = Finish::Error;
                        error = Some(e.to_string());
                    }
                }
                break;
            }
            // The sampled token joins the timeline only when decoding continues, so the live
            // state ends at the last emitted token and never contains EOS (spec §5.1).
            if let Err(e) = self.session.push(token) {
                finish = Finish::Error;
                error = Some(e.to_string());
                break;
            }
            // spec §5.6: continued saves during decode, never inside a tool-call block.
            let in_tool_block = em
                .parser
                .as_ref()
                .is_some_and(|p| p.block_started() && !p.block_closed());
            let live = self.session.tokens().len();
            let due = self
                .disk
                .as_ref()
                .is_some_and(|d| d.policy.continued_due(live, self.disk_frontier));
            if due && !in_tool_block {
                self.save_live(job.id, SaveReason::Continued);
                self.disk_frontier = live;
            }
        }
        if !client_gone {
            let tail = raw[sent.min(raw.len())..].to_vec();
            em.emit(&tail, true);
        }
        if stop_hit {
            // spec §4.4: a stop-sequence hit invalidates the live checkpoint.
            self.session.reset();
        }
        let raw_text = String::from_utf8_lossy(&raw).into_owned();
        let mut streamed_tool_header = false;
        let mut parsed = None;
        let tool_ids = std::mem::take(&mut em.ids);
        if let (OutputMode::Chat(cfg), Some(p)) = (job.mode, em.parser.as_ref()) {
            streamed_tool_header = p.streamed_tool_header();
            if tools_active && p.block_started() && !p.block_closed() && finish != Finish::Error {
                finish = Finish::Error;
                error = Some("unterminated tool call".to_string());
            }
            let msg = parse_generated_message(&raw_text, cfg.thinking);
            if !msg.tool_calls.is_empty() {
                finish = Finish::ToolCalls;
            } else if msg.error.is_some() && finish == Finish::ToolCalls {
                // spec §3.1 failure handling: the malformed block is returned as text.
                finish = Finish::Stop;
            }
            if let Some(e) = &msg.error {
                self.note(
                    job.id,
                    format!("tool parser: invalid tool call returned as assistant text: {e}"),
                );
            }
            parsed = Some(msg);
        }
        Outcome {
            finish,
            usage: *usage,
            raw_text,
            parsed,
            tool_ids,
            streamed_tool_header,
            error,
        }
    }
}

/// Parsed calls as the client will send them back (compact arguments, the ids it was given).
fn tool_calls(msg: &ParsedMessage, ids: &[String]) -> Vec<ToolCall> {
    msg.tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: ids.get(i).cloned().unwrap_or_default(),
            name: c.name.clone(),
            arguments: c.compact_arguments(),
        })
        .collect()
}

/// Hands generated bytes to the stream parser (chat) or the UTF-8 hold-back (raw) and sends the
/// resulting events; allocates a call id at each invoke tag (spec §3.4).
struct Emitter<'a> {
    job: &'a Job,
    parser: Option<StreamParser>,
    /// Raw mode UTF-8 hold-back.
    text_pending: Vec<u8>,
    evs: Vec<StreamEvent>,
    ids: Vec<String>,
    memory: Arc<Mutex<ToolMemory>>,
}

impl Emitter<'_> {
    /// Returns false when the client is gone.
    fn emit(&mut self, bytes: &[u8], final_flush: bool) -> bool {
        let mut ok = true;
        let events = &self.job.events;
        match &mut self.parser {
            Some(p) => {
                p.push(bytes, &mut self.evs);
                if final_flush {
                    p.finish(&mut self.evs);
                }
                for e in self.evs.drain(..) {
                    let ev = match e {
                        StreamEvent::ToolCallStart { index, name } => {
                            let mem = self.memory.lock().ok();
                            let taken = &self.ids;
                            let id = new_tool_call_id(self.job.protocol.id_kind(), |c| {
                                taken.iter().any(|t| t == c)
                                    || mem.as_ref().is_some_and(|m| m.contains(c))
                            });
                            self.ids.push(id.clone());
                            Event::ToolCallStart { index, name, id }
                        }
                        e => Event::Chat(e),
                    };
                    ok &= events.send(ev).is_ok();
                }
            }
            None => {
                self.text_pending.extend_from_slice(bytes);
                let n = if final_flush {
                    self.text_pending.len()
                } else {
                    ds4_chat::utf8_stream_safe_len(&self.text_pending)
                };
                if n > 0 {
                    let s = String::from_utf8_lossy(&self.text_pending[..n]).into_owned();
                    self.text_pending.drain(..n);
                    ok &= events.send(Event::Text(s)).is_ok();
                }
            }
        }
        ok
    }
}

/// Starts the worker thread; join the handle after shutdown so its final disk save completes.
pub fn spawn(
    worker: Worker,
) -> std::io::Result<(std::sync::mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("ds4-worker".to_string())
        .spawn(move || worker.run(rx))?;
    Ok((tx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_match_is_the_earliest_of_all_sequences() {
        let stops = vec!["cd".to_string(), "b".to_string(), String::new()];
        assert_eq!(find_stop(b"abcdef", &stops), Some(1));
        assert_eq!(find_stop(b"xyz", &stops), None);
        assert_eq!(find_stop(b"xyz", &[]), None);
    }

    #[test]
    fn rendered_suffix_splits_text_but_never_inside_a_special() {
        let mut r = Rendered::new();
        r.push_special(SpecialKind::Bos);
        r.push_text("hello world");
        r.push_special(SpecialKind::User);
        r.push_text("tail");
        let bos = SpecialKind::Bos.text().len();
        let rest = rendered_suffix(&r, bos + 6).unwrap();
        assert_eq!(
            rest.text(),
            format!("world{}tail", SpecialKind::User.text())
        );
        assert_eq!(rendered_suffix(&r, 0).unwrap().text(), r.text());
        assert_eq!(rendered_suffix(&r, r.text().len()).unwrap().text(), "");
        assert!(rendered_suffix(&r, 1).is_none(), "inside BOS");
        assert!(
            rendered_suffix(&r, r.text().len() + 1).is_none(),
            "past the end"
        );
    }
}
