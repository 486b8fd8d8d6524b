//! The inference worker: one `std::thread` that owns the only [`Session`] and serves typed
//! [`Job`]s in FIFO order (spec/server.md §4.3). Handlers parse JSON, render and tokenize before a
//! job is queued; the worker never sees `serde_json::Value`.
//!
//! Per job: choose the reusable prefix (spec §5.2 rules 5-7 and 10), prefill, decode with the
//! sampler (greedy on DSML syntax, §3.3), split the output with [`StreamParser`] and send
//! [`Event`]s to the handler. A handler that goes away (client disconnected) closes its channel:
//! a queued job is then dropped, and a running one stops at the next token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ds4_chat::dsml::{
    parse_generated_message, DsmlTracker, ParsedMessage, StreamConfig, StreamEvent, StreamParser,
};
use ds4_chat::{Rendered, Segment, SpecialKind, Tokenizer};
use ds4_engine::sampler::{Sampler, SamplingParams};
use ds4_engine::{Session, SyncProgress};
use tokio::sync::mpsc::UnboundedSender;

use ds4_kvcache::{SaveOutcome, SaveReason};

use crate::disk::{snapshot_of, DiskKv};
use crate::metrics::Metrics;
use crate::trace::Trace;

/// How the output of a job is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `/v1/completions`: raw text, never parsed (spec §4.7).
    Raw,
    /// Chat-style endpoints: reasoning / content / tool calls.
    Chat(StreamConfig),
}

/// One generation request, already rendered and tokenized.
pub struct Job {
    pub id: u64,
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
    /// Whether a tool header was streamed live (then calls are not re-sent at the end).
    pub streamed_tool_header: bool,
    /// Why the finish is `error`.
    pub error: Option<String>,
}

/// What the worker tells a handler, in order: `Prefill`*, then `Started`, then output events,
/// then `Finished`; or `Failed` instead of `Started`.
#[derive(Debug, Clone)]
pub enum Event {
    Prefill {
        done: usize,
        total: usize,
    },
    Started {
        usage: Usage,
    },
    /// Chat mode output.
    Chat(StreamEvent),
    /// Raw mode output.
    Text(String),
    Finished(Box<Outcome>),
    /// Prefill failed (spec §4.12: 500, or an SSE error event if headers were sent).
    Failed(String),
}

/// Remembered visible text of a thinking turn (spec §5.3 "thinking binding").
struct ThinkingBinding {
    visible_text: String,
    pos: usize,
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
    pub disk: Option<DiskKv>,
    /// Longest checkpoint stored or loaded for the current timeline (spec §5.6 continued saves).
    disk_frontier: usize,
    thinking_binding: Option<ThinkingBinding>,
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
            disk_frontier: 0,
            thinking_binding: None,
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
            self.run_job(job);
        }
        self.save_live(0, SaveReason::Shutdown);
    }

    /// Saves the live session (spec §5.6: always the current position, key = its token text).
    /// Failures are traced, never fatal: the disk cache is an optimisation.
    fn save_live(&mut self, job: u64, reason: SaveReason) {
        let Some(disk) = &self.disk else { return };
        let n = self.session.tokens().len();
        if n == 0 || n < disk.policy.min_tokens {
            return;
        }
        let key = self.tokenizer.decode(self.session.tokens());
        let result = self
            .session
            .snapshot()
            .map_err(|e| e.to_string())
            .and_then(|snap| disk.save(&key, reason, &snap).map_err(|e| e.to_string()));
        let msg = match result {
            Ok(SaveOutcome::Written { path, bytes }) => {
                self.metrics.disk_saves.fetch_add(1, Ordering::Relaxed);
                format!("saved {n} tokens ({bytes} bytes) to {}", path.display())
            }
            Ok(other) => format!("not saved: {other:?}"),
            Err(e) => format!("save failed: {e}"),
        };
        self.trace.line(job, &format!("kv disk {reason:?}: {msg}"));
    }

    /// spec §5.2 rules 8-9 on a live miss: save the live session (`evict`), then load the best
    /// disk checkpoint for the prompt and return the effective prompt built on it.
    fn disk_prefix(&mut self, job: &Job) -> Option<Vec<u32>> {
        self.save_live(job.id, SaveReason::Evict);
        let disk = self.disk.as_ref()?;
        let rendered = &job.rendered;
        let loaded = disk.load_prefix(job.prompt_text.as_bytes(), |k| {
            rendered_suffix(rendered, k).is_some()
        })?;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.trace
                    .line(job.id, &format!("kv disk load failed: {e}"));
                return None;
            }
        };
        let rest = rendered_suffix(rendered, loaded.key_len)?;
        let key_len = loaded.key_len;
        let snap = snapshot_of(loaded);
        if let Err(e) = self.session.restore(&snap) {
            self.trace
                .line(job.id, &format!("kv disk restore failed: {e}"));
            return None;
        }
        self.metrics.disk_hits.fetch_add(1, Ordering::Relaxed);
        self.trace.line(
            job.id,
            &format!(
                "kv disk hit: {} tokens, {key_len} key bytes",
                snap.tokens.len()
            ),
        );
        let mut eff = snap.tokens;
        eff.extend(self.tokenizer.encode_segments(&rest));
        Some(eff)
    }

    /// spec §5.2: the effective prompt and where it came from.
    fn effective_prompt(&self, job: &Job) -> (Vec<u32>, &'static str) {
        let live = self.session.tokens();
        if live.is_empty() {
            return (job.prompt.clone(), "none");
        }
        if job.prompt.starts_with(live) {
            return (job.prompt.clone(), "memory-token");
        }
        // Rule 6: the live KV holds hidden reasoning the re-rendered prompt drops.
        if let Some(b) = &self.thinking_binding {
            if b.pos == live.len()
                && job.prompt_text.len() > b.visible_text.len()
                && job.prompt_text.starts_with(&b.visible_text)
            {
                if let Some(rest) = rendered_suffix(&job.rendered, b.visible_text.len()) {
                    let mut eff = live.to_vec();
                    // QUIRK(spec/server.md §10.1): the visible text ends with EOS, which was sampled
                    // but never evaluated; feed it, as a cold prefill of the same text would.
                    eff.push(self.tokenizer.special().eos);
                    eff.extend(self.tokenizer.encode_segments(&rest));
                    return (eff, "thinking-visible");
                }
            }
        }
        // Rule 7: live bytes are a prefix of the rendered text; tokenize only the remainder.
        let live_bytes = self.tokenizer.decode(live);
        if job.prompt_text.as_bytes().starts_with(&live_bytes) {
            if let Some(rest) = rendered_suffix(&job.rendered, live_bytes.len()) {
                let mut eff = live.to_vec();
                eff.extend(self.tokenizer.encode_segments(&rest));
                return (eff, "memory-text");
            }
        }
        (job.prompt.clone(), "none")
    }

    fn run_job(&mut self, job: Job) {
        let started = Instant::now();
        let (mut effective, mut source) = self.effective_prompt(&job);
        if source == "none" && self.disk.is_some() {
            if let Some(eff) = self.disk_prefix(&job) {
                effective = eff;
                source = "disk-text";
            }
        }
        let live_len = self.session.tokens().len();
        let ctx = self.session.ctx();
        self.trace.line(
            job.id,
            &format!(
                "cache: live={} prompt={} effective={} source={}",
                live_len,
                job.prompt.len(),
                effective.len(),
                source
            ),
        );
        if effective.len() >= ctx {
            let _ = job
                .events
                .send(Event::Failed("prompt exceeds context".to_string()));
            return;
        }
        let events = job.events.clone();
        let mut progress = |p: SyncProgress| {
            // spec §4.12: a failed keepalive does not abort prefill; the KV stays reusable.
            let _ = events.send(Event::Prefill {
                done: p.done,
                total: p.total,
            });
        };
        // spec §5.6: the frontier of continued saves restarts on a miss and sits at the restored
        // length after a disk hit.
        match source {
            "none" => self.disk_frontier = 0,
            "disk-text" => self.disk_frontier = self.session.tokens().len(),
            _ => {}
        }
        let resident = if effective.starts_with(self.session.tokens()) {
            self.session.tokens().len()
        } else {
            0
        };
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
                    self.thinking_binding = None;
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
        if source != "thinking-visible" {
            self.thinking_binding = None;
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
            self.trace.line(job.id, "stream closed during prefill");
            return;
        }
        let decode_start = Instant::now();
        let outcome = self.decode(&job, &mut usage);
        self.metrics
            .record_decode(usage.generated, decode_start.elapsed().as_secs_f64());
        self.trace
            .line(job.id, &format!("generated: {:?}", outcome.raw_text));
        self.trace
            .line(job.id, &format!("finish: {}", outcome.finish.openai()));
        self.remember_thinking(&job, &outcome);
        let _ = job.events.send(Event::Finished(Box::new(outcome)));
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
        let mut parser = match job.mode {
            OutputMode::Chat(cfg) => Some(StreamParser::new(cfg)),
            OutputMode::Raw => None,
        };
        let mut forced = job.forced.as_ref().map(|f| f.iter().copied());
        let mut raw: Vec<u8> = Vec::new();
        let mut sent = 0usize; // bytes of `raw` handed to the parser / client
        let mut text_pending: Vec<u8> = Vec::new(); // raw mode UTF-8 hold-back
        let mut evs = Vec::new();
        let mut finish = Finish::Length;
        let mut error = None;
        let mut stop_hit = false;
        let mut client_gone = false;

        let emit = |bytes: &[u8],
                    parser: &mut Option<StreamParser>,
                    text_pending: &mut Vec<u8>,
                    evs: &mut Vec<StreamEvent>,
                    final_flush: bool|
         -> bool {
            let mut ok = true;
            match parser {
                Some(p) => {
                    p.push(bytes, evs);
                    if final_flush {
                        p.finish(evs);
                    }
                    for e in evs.drain(..) {
                        ok &= job.events.send(Event::Chat(e)).is_ok();
                    }
                }
                None => {
                    text_pending.extend_from_slice(bytes);
                    let n = if final_flush {
                        text_pending.len()
                    } else {
                        ds4_chat::utf8_stream_safe_len(text_pending)
                    };
                    if n > 0 {
                        let s = String::from_utf8_lossy(&text_pending[..n]).into_owned();
                        text_pending.drain(..n);
                        ok &= job.events.send(Event::Text(s)).is_ok();
                    }
                }
            }
            ok
        };

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
                if !emit(
                    &raw[sent..safe],
                    &mut parser,
                    &mut text_pending,
                    &mut evs,
                    false,
                ) {
                    client_gone = true;
                }
                sent = safe;
            }
            if client_gone {
                finish = Finish::Error;
                error = Some("client stream write failed".to_string());
                break;
            }
            if parser.as_ref().is_some_and(|p| p.block_closed()) {
                finish = Finish::ToolCalls;
                break;
            }
            if usage.generated >= max_tokens {
                finish = Finish::Length;
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
            let in_tool_block = parser
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
            emit(&tail, &mut parser, &mut text_pending, &mut evs, true);
        }
        if stop_hit {
            // spec §4.4: a stop-sequence hit invalidates the live checkpoint.
            self.session.reset();
        }
        let raw_text = String::from_utf8_lossy(&raw).into_owned();
        let mut streamed_tool_header = false;
        let mut parsed = None;
        if let (OutputMode::Chat(cfg), Some(p)) = (job.mode, parser.as_ref()) {
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
                self.trace.line(
                    job.id,
                    &format!("tool parser: invalid tool call returned as assistant text: {e}"),
                );
            }
            parsed = Some(msg);
        }
        Outcome {
            finish,
            usage: *usage,
            raw_text,
            parsed,
            streamed_tool_header,
            error,
        }
    }

    /// spec §5.3: remember the visible text of a tool-less thinking turn so the next request, which
    /// drops the hidden reasoning, can continue from the live state.
    fn remember_thinking(&mut self, job: &Job, out: &Outcome) {
        self.thinking_binding = None;
        let OutputMode::Chat(cfg) = job.mode else {
            return;
        };
        let Some(msg) = &out.parsed else { return };
        if !cfg.thinking || cfg.tools_active || job.tool_history || out.finish != Finish::Stop {
            return;
        }
        if msg.reasoning.is_none() || !msg.tool_calls.is_empty() || self.session.tokens().is_empty()
        {
            return;
        }
        let Some(base) = job.prompt_text.strip_suffix(SpecialKind::Think.text()) else {
            return;
        };
        let visible_text = format!(
            "{base}{}{}{}",
            SpecialKind::ThinkEnd.text(),
            msg.content,
            SpecialKind::Eos.text()
        );
        self.thinking_binding = Some(ThinkingBinding {
            visible_text,
            pos: self.session.tokens().len(),
        });
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
