//! One module per API dialect, plus what they share: the JSON extractor, typed field readers,
//! thinking/sampling resolution (spec/server.md §4.4), and the two ways to drive a job (collect
//! for a JSON response, stream for SSE).

pub mod chat_completions;
pub mod completions;
pub mod health;
pub mod messages;
pub mod models;
pub mod responses;
pub mod tools;

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use ds4_chat::ThinkMode;
use ds4_engine::sampler::{seed_from_entropy, SamplingParams};
use futures_util::Stream;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ApiErrorKind};
use crate::state::AppState;
use crate::worker::{Event, Outcome};

/// spec/server.md §4.4: deeper nesting is rejected (stack safety).
pub const MAX_JSON_DEPTH: usize = 256;

/// spec §4.12: a `: prefill` comment when this long passed since the last write.
const KEEPALIVE: Duration = Duration::from_secs(5);

// ---- request bodies ----------------------------------------------------------------------------

/// A JSON object body, plus its raw bytes (tool schemas are forwarded byte-exact, §4.6.3).
/// Rejections are [`ApiError`]s; handlers take `Result<JsonBody, ApiError>` to choose the shape.
pub struct JsonBody {
    pub obj: Map<String, Value>,
    pub raw: Bytes,
}

/// Deepest `[`/`{` nesting of a JSON text (strings skipped), stopping early past `limit`.
pub fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a JSON object with the spec's nesting limit instead of serde_json's default 128.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if json_depth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(ApiError::invalid_json());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // The depth was bounded above, so the recursion stays well inside the thread's stack.
    de.disable_recursion_limit();
    let v: Value =
        serde::Deserialize::deserialize(&mut de).map_err(|_| ApiError::invalid_json())?;
    de.end().map_err(|_| ApiError::invalid_json())?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid_json()),
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.cfg.max_body_bytes;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::new(ApiErrorKind::TooLarge { limit }));
        }
        let raw = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                // A chunked body can still cross the limit; axum reports it as a length-limit error.
                if format!("{e:?}").contains("LengthLimit") {
                    ApiError::new(ApiErrorKind::TooLarge { limit })
                } else {
                    ApiError::bad_request("bad HTTP request")
                }
            })?;
        let obj = parse_object(&raw)?;
        Ok(JsonBody { obj, raw })
    }
}

// ---- typed field readers (a type mismatch on a recognised field is `invalid JSON request`) ----

pub fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

pub fn opt_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(ApiError::invalid_json),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

pub fn opt_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

pub fn opt_obj<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ApiError::invalid_json()),
    }
}

/// spec §4.4 output length: negative → 0, fractional truncated, huge clamped.
pub fn opt_limit(m: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    Ok(opt_f64(m, key)?.map(|v| {
        if v.is_nan() || v <= 0.0 {
            0
        } else {
            v.min(i32::MAX as f64) as usize
        }
    }))
}

/// spec §4.4 stop sequences: a string or an array of strings (others ignored).
pub fn stop_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The `model` field, echoed verbatim (default `deepseek-v4-flash`).
pub fn model_name(m: &Map<String, Value>) -> Result<String, ApiError> {
    Ok(opt_str(m, "model")?
        .unwrap_or(crate::state::MODEL_ID)
        .to_string())
}

// ---- thinking and sampling (spec §4.4) ---------------------------------------------------------

/// An effort string: `Some(None)` = thinking off, `Some(Some(Max))`, `Some(Some(High))`.
fn parse_effort(v: Option<&Value>) -> Result<Option<ThinkMode>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "max" => Ok(Some(ThinkMode::Max)),
            "xhigh" | "high" | "medium" | "low" | "minimal" => Ok(Some(ThinkMode::High)),
            "none" => Ok(Some(ThinkMode::None)),
            _ => Err(ApiError::invalid_json()),
        },
        Some(_) => Err(ApiError::invalid_json()),
    }
}

/// Thinking controls gathered from a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThinkingControl {
    /// A `thinking`/`think` key (or Responses `reasoning.effort`) was present.
    pub explicit: bool,
    /// `Some(false)` when thinking was disabled explicitly.
    pub enabled: Option<bool>,
    pub effort: Option<ThinkMode>,
}

impl ThinkingControl {
    /// Reads `thinking`, `think` and the named effort field (chat, completions, messages).
    pub fn read(
        m: &Map<String, Value>,
        efforts: &[Option<&Value>],
    ) -> Result<ThinkingControl, ApiError> {
        let mut c = ThinkingControl {
            explicit: m.contains_key("thinking") || m.contains_key("think"),
            ..Default::default()
        };
        match m.get("thinking") {
            Some(Value::Bool(b)) => c.enabled = Some(*b),
            Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
                Some("enabled") => c.enabled = Some(true),
                Some("disabled") => c.enabled = Some(false),
                _ => {}
            },
            _ => {}
        }
        if let Some(b) = opt_bool(m, "think")? {
            c.enabled = Some(b);
        }
        for e in efforts {
            if let Some(mode) = parse_effort(*e)? {
                c.effort = Some(mode);
            }
        }
        Ok(c)
    }

    /// The mode before the 393216 rule.
    pub fn mode(&self, model: &str) -> ThinkMode {
        let mut disabled = self.enabled == Some(false);
        if !self.explicit && model == "deepseek-chat" {
            disabled = true;
        }
        if disabled || self.effort == Some(ThinkMode::None) {
            ThinkMode::None
        } else if self.effort == Some(ThinkMode::Max) {
            ThinkMode::Max
        } else {
            ThinkMode::High
        }
    }
}

/// Client sampling knobs; ignored in thinking mode (spec §4.4).
pub fn sampling(
    m: &Map<String, Value>,
    think: ThinkMode,
    with_top_k_min_p: bool,
) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let temperature = opt_f64(m, "temperature")?;
    let top_p = opt_f64(m, "top_p")?;
    let (top_k, min_p) = if with_top_k_min_p {
        (opt_f64(m, "top_k")?, opt_f64(m, "min_p")?)
    } else {
        (None, None)
    };
    if think.is_enabled() {
        return Ok(d);
    }
    Ok(SamplingParams {
        temperature: temperature.map_or(d.temperature, |v| v as f32),
        top_p: top_p.map_or(d.top_p, |v| v as f32),
        min_p: min_p.map_or(d.min_p, |v| v as f32),
        top_k: top_k.map_or(d.top_k, |v| {
            v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
        }),
    })
}

/// Request `seed` if > 0, else entropy (spec §4.4).
pub fn seed(m: &Map<String, Value>) -> Result<u64, ApiError> {
    Ok(match opt_f64(m, "seed")? {
        Some(s) if s >= 1.0 => s.min(u64::MAX as f64) as u64,
        _ => seed_from_entropy(),
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// TEST ONLY: the forced output of the `x-ds4-test-output` header (percent-encoded UTF-8, since
/// header values are ASCII), when the server runs with `--test-forced-output`.
pub fn forced_output(state: &AppState, headers: &HeaderMap) -> Option<Vec<u32>> {
    if !state.cfg.test_forced_output {
        return None;
    }
    let text = percent_decode(headers.get("x-ds4-test-output")?.as_bytes());
    Some(state.tokenizer.encode_rendered(&text))
}

/// `%XX` → byte; everything else verbatim (a malformed escape is kept as text).
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// 400 when the rendered prompt does not fit (spec §4.3: checked before queueing).
pub fn check_context(
    state: &AppState,
    n_prompt: usize,
    param: &'static str,
) -> Result<(), ApiError> {
    if n_prompt >= state.cfg.ctx {
        return Err(ApiError::new(ApiErrorKind::ContextLength {
            n_prompt_tokens: n_prompt,
            n_ctx: state.cfg.ctx,
            param,
        }));
    }
    Ok(())
}

// ---- driving a job -----------------------------------------------------------------------------

/// Waits for a non-streaming job's outcome. A prefill failure is a 500 (spec §4.12).
pub async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Outcome, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Finished(out) => return Ok(*out),
            Event::Failed(msg) => return Err(ApiError::internal(msg)),
            Event::Conflict(msg) => return Err(ApiError::new(ApiErrorKind::Conflict(msg))),
            _ => {}
        }
    }
    Err(ApiError::internal("generation was interrupted"))
}

/// Waits for a streaming job's first event: prefill progress or start sends the headers, a
/// failure before that is an ordinary error response (spec §4.12).
pub async fn first_event(rx: &mut UnboundedReceiver<Event>) -> Result<Event, ApiError> {
    match rx.recv().await {
        Some(Event::Failed(msg)) => Err(ApiError::internal(msg)),
        Some(Event::Conflict(msg)) => Err(ApiError::new(ApiErrorKind::Conflict(msg))),
        Some(ev) => Ok(ev),
        None => Err(ApiError::internal("generation was interrupted")),
    }
}

/// Turns worker events into SSE events for one dialect.
pub trait Streamer: Send + 'static {
    /// SSE events for one worker event; `Prefill` is handled by [`sse_response`].
    fn on_event(&mut self, ev: Event, out: &mut Vec<SseEvent>);
    /// An error after headers were sent (spec §4.12 SSE error event).
    fn error_event(&self, msg: &str) -> SseEvent;
}

/// An SSE response over a job's events, starting with `first`.
pub fn sse_response<S: Streamer>(
    first: Event,
    rx: UnboundedReceiver<Event>,
    streamer: S,
) -> Response {
    struct St<S> {
        rx: UnboundedReceiver<Event>,
        streamer: S,
        queue: std::collections::VecDeque<SseEvent>,
        first: Option<Event>,
        last_write: Instant,
        done: bool,
    }
    let st = St {
        rx,
        streamer,
        queue: Default::default(),
        first: Some(first),
        last_write: Instant::now(),
        done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                st.last_write = Instant::now();
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            let ev = match st.first.take() {
                Some(e) => Some(e),
                None => st.rx.recv().await,
            };
            let mut out = Vec::new();
            match ev {
                None => {
                    st.done = true;
                }
                Some(Event::Prefill { .. }) => {
                    if st.last_write.elapsed() >= KEEPALIVE {
                        out.push(SseEvent::default().comment("prefill"));
                    }
                }
                Some(Event::Failed(msg) | Event::Conflict(msg)) => {
                    out.push(st.streamer.error_event(&msg));
                    st.done = true;
                }
                Some(ev @ Event::Finished(_)) => {
                    st.streamer.on_event(ev, &mut out);
                    st.done = true;
                }
                Some(ev) => st.streamer.on_event(ev, &mut out),
            }
            st.queue.extend(out);
        }
    });
    sse(stream).into_response()
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(s: S) -> Sse<S> {
    Sse::new(s)
}

/// `data: JSON` event.
pub fn data_event(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// OpenAI-style SSE error event (spec §4.12).
pub fn openai_error_event(msg: &str) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(serde_json::json!({"error": {"message": msg, "type": "server_error"}}).to_string())
}

/// JSON response body with the trailing newline of spec §4.1.
pub fn json_response(v: &Value, newline: bool) -> Response {
    let mut body = v.to_string();
    if newline {
        body.push('\n');
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Arguments text as a JSON value (parsed calls carry compact JSON; `{}` when unparsable).
pub fn arguments_value(compact: &str) -> Value {
    serde_json::from_str::<Value>(compact)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()))
}
