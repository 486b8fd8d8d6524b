//! `POST /v1/completions` (spec/server.md §4.7): the legacy text API. The output is never parsed:
//! in thinking mode the text carries the raw reasoning and the literal `</think>`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use ds4_chat::render_completion;
use serde_json::{json, Map, Value};

use super::chat_completions::openai_usage;
use super::{
    check_context, collect, data_event, first_event, forced_output, model_name, opt_bool,
    opt_limit, opt_obj, sampling, seed, sse_response, stop_list, unix_now, JsonBody, Streamer,
    ThinkingControl,
};
use crate::error::ApiError;
use crate::live::Protocol;
use crate::metrics::Endpoint;
use crate::state::{AppState, ServerConfig};
use crate::worker::{Event, Job, OutputMode, TraceInfo};

struct TextStreamer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl TextStreamer {
    fn chunk(&self, text: &str, finish: Option<&str>) -> SseEvent {
        data_event(&json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        }))
    }
}

impl Streamer for TextStreamer {
    fn on_event(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Text(s) => out.push(self.chunk(&s, None)),
            Event::Finished(o) => {
                out.push(self.chunk("", Some(o.finish.openai())));
                if self.include_usage {
                    out.push(data_event(&json!({
                        "id": self.id, "object": "text_completion", "created": self.created,
                        "model": self.model, "choices": [], "usage": openai_usage(&o.usage),
                    })));
                }
                out.push(SseEvent::default().data("[DONE]"));
            }
            _ => {}
        }
    }

    fn error_event(&self, msg: &str) -> SseEvent {
        super::openai_error_event(msg)
    }
}

/// A parsed `/v1/completions` body (spec §4.7), rendered.
pub struct CompletionRequest {
    pub rendered: ds4_chat::Rendered,
    pub model: String,
    pub think: ds4_chat::ThinkMode,
    pub params: ds4_engine::sampler::SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// spec §4.7 request fields.
pub fn parse_request(
    cfg: &ServerConfig,
    m: &Map<String, Value>,
) -> Result<CompletionRequest, ApiError> {
    let prompt = match m.get("prompt") {
        None => return Err(ApiError::bad_request("missing prompt")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Some(_) => String::new(),
    };
    let model = model_name(m)?;
    let think = ThinkingControl::read(m, &[m.get("reasoning_effort")])?
        .mode(&model)
        .effective(cfg.ctx);
    Ok(CompletionRequest {
        params: sampling(m, think, true)?,
        seed: seed(m)?,
        max_tokens: opt_limit(m, "max_tokens")?.unwrap_or(cfg.default_max_tokens),
        stop: stop_list(m.get("stop")),
        stream: opt_bool(m, "stream")?.unwrap_or(false),
        include_usage: match opt_obj(m, "stream_options")? {
            Some(o) => opt_bool(o, "include_usage")?.unwrap_or(false),
            None => false,
        },
        rendered: render_completion(&prompt, think),
        model,
        think,
    })
}

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    state.metrics.request(Endpoint::Completions);
    let body = body?;
    let CompletionRequest {
        rendered,
        model,
        think,
        params,
        seed,
        max_tokens,
        stop,
        stream,
        include_usage,
    } = parse_request(&state.cfg, &body.obj)?;
    let tokens = state.tokenizer.encode_segments(&rendered);
    check_context(&state, tokens.len(), "prompt")?;
    let id = state.next_request_id();
    let prompt_text = rendered.text();
    let forced = forced_output(&state, &headers);
    let trace = TraceInfo {
        model: model.clone(),
        stream,
        tools: 0,
        think,
        request_json: if state.trace.enabled() {
            String::from_utf8_lossy(&body.raw).into_owned()
        } else {
            String::new()
        },
        tool_replay: Default::default(),
        reasoning_sensitive: false,
    };
    let mut rx = state.submit(|events| Job {
        id,
        protocol: Protocol::Completions,
        mode: OutputMode::Raw,
        rendered,
        prompt: tokens,
        prompt_text,
        sampling: params,
        seed,
        max_tokens,
        stop,
        tool_history: false,
        tail: None,
        requires_live: false,
        trace,
        forced,
        events,
    })?;
    if !stream {
        let out = collect(rx).await?;
        let v = json!({
            "id": format!("cmpl-{id}"), "object": "text_completion", "created": unix_now(), "model": model,
            "choices": [{"text": out.raw_text, "index": 0, "finish_reason": out.finish.openai()}],
            "usage": openai_usage(&out.usage),
        });
        return Ok(super::json_response(&v, true));
    }
    let first = first_event(&mut rx).await?;
    Ok(sse_response(
        first,
        rx,
        TextStreamer {
            id: format!("cmpl-{id}"),
            created: unix_now(),
            model,
            include_usage,
        },
    ))
}
