//! `POST /v1/messages`, the Anthropic Messages API (spec/server.md §4.9).

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use ds4_chat::dsml::{escape_tool_result, StreamEvent};
use ds4_chat::{Message, Role, ToolCall};
use serde_json::{json, Map, Value};

use super::chat_completions::{submit_chat, ChatJob, GenSettings};
use super::tools;
use super::{
    arguments_value, collect, first_event, forced_output, model_name, opt_bool, opt_limit, opt_obj,
    sampling, seed, stop_list, JsonBody, Streamer, ThinkingControl,
};
use crate::error::{ApiError, Dialect};
use crate::live::Protocol;
use crate::metrics::Endpoint;
use crate::state::{AppState, ServerConfig};
use crate::worker::{Event, Outcome, Usage};

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => String::new(),
    }
}

/// spec §4.9.2: one Anthropic message; returns it with the `tool_result` ids it carries.
fn parse_message(v: &Value) -> Result<(Message, Vec<String>), ApiError> {
    let m = v.as_object().ok_or_else(ApiError::invalid_json)?;
    let role = Role::parse(super::opt_str(m, "role")?.unwrap_or("user"));
    let mut msg = Message::new(role, "");
    let mut result_ids = Vec::new();
    match m.get("content") {
        Some(Value::String(s)) => msg.content = s.clone(),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                let Some(o) = b.as_object() else {
                    if let Value::String(s) = b {
                        msg.content.push_str(s);
                    }
                    continue;
                };
                match o.get("type").and_then(Value::as_str) {
                    Some("text") => msg
                        .content
                        .push_str(o.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("thinking") => msg.reasoning.push_str(
                        o.get("thinking")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    ),
                    Some("redacted_thinking") | Some("image") | Some("document") => {}
                    Some("tool_use") => msg.tool_calls.push(ToolCall {
                        id: o
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        name: o
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        arguments: o
                            .get("input")
                            .map_or_else(|| "{}".to_string(), Value::to_string),
                    }),
                    Some("tool_result") => {
                        let text = o.get("content").map(text_of).unwrap_or_default();
                        msg.content.push_str("<tool_result>");
                        msg.content.push_str(&escape_tool_result(&text));
                        msg.content.push_str("</tool_result>");
                        if let Some(id) = o.get("tool_use_id").and_then(Value::as_str) {
                            result_ids.push(id.to_string());
                        }
                    }
                    _ => {
                        msg.content
                            .push_str(o.get("text").and_then(Value::as_str).unwrap_or_default());
                        msg.reasoning.push_str(
                            o.get("thinking")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        );
                    }
                }
            }
        }
        _ => {}
    }
    msg.tool_call_id = result_ids.first().cloned();
    Ok((msg, result_ids))
}

/// spec §4.9.1 `system`: parts joined with `\n`, `x-anthropic-` parts dropped.
fn system_text(v: Option<&Value>) -> String {
    let parts: Vec<String> = match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = String::new();
    for p in parts.iter().filter(|p| !p.starts_with("x-anthropic-")) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(p);
    }
    out
}

/// spec §4.9.1: a Messages body into a job. `live` are the call ids of the live Anthropic binding
/// (§5.3): a `tool_result` may answer one of them without the replayed `tool_use`.
pub fn parse_request(
    cfg: &ServerConfig,
    m: &Map<String, Value>,
    raw: &[u8],
    live: &[String],
) -> Result<ChatJob, ApiError> {
    let list = match m.get("messages") {
        None => return Err(ApiError::bad_request("missing messages")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid_json()),
    };
    let mut messages = Vec::with_capacity(list.len() + 1);
    let mut results: Vec<Vec<String>> = Vec::with_capacity(list.len() + 1);
    let mut known_ids: HashSet<String> = HashSet::new();
    let mut requires_live = false;
    for v in list {
        let (msg, result_ids) = parse_message(v)?;
        // spec §4.9.2: a tool_result answers a tool_use of an earlier assistant message, or a
        // call of the live Anthropic binding (then the request needs the live state).
        for id in &result_ids {
            if known_ids.contains(id) {
                continue;
            }
            if !live.contains(id) {
                return Err(ApiError::bad_request(format!(
                    "Anthropic continuation state is not available for tool_use_id {id}; retry by replaying the full messages history"
                )));
            }
            requires_live = true;
        }
        if msg.role == Role::Assistant {
            known_ids.extend(msg.tool_calls.iter().map(|c| c.id.clone()));
        }
        messages.push(msg);
        results.push(result_ids);
    }
    let system = system_text(m.get("system"));
    if !system.is_empty() {
        messages.push(Message::new(Role::System, system));
    }
    let tools_raw = tools::top_level_raw(raw, "tools")?;
    let schemas = tools::parse_tools(tools_raw.as_deref())?;
    let disabled = matches!(m.get("tool_choice"), Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("none"));
    let model = model_name(m)?;
    let effort_cfg = opt_obj(m, "output_config")?.and_then(|o| o.get("effort"));
    let control = ThinkingControl::read(m, &[effort_cfg, m.get("reasoning_effort")])?;
    let think = control.mode(&model).effective(cfg.ctx);
    let gen = GenSettings {
        sampling: sampling(m, think, true)?,
        seed: seed(m)?,
        max_tokens: opt_limit(m, "max_tokens")?.unwrap_or(cfg.default_max_tokens),
        stop: stop_list(m.get("stop_sequences")),
        stream: opt_bool(m, "stream")?.unwrap_or(false),
        include_usage: false,
        model,
        think,
    };
    let (output_ids, prev_call_ids) = tools::trailing_tool_ids(&messages, |i, _| {
        results.get(i).cloned().unwrap_or_default()
    });
    Ok(ChatJob {
        messages,
        schemas: tools::active_lines(&schemas, disabled),
        gen,
        forced: None,
        param: "messages",
        protocol: Protocol::Anthropic,
        output_ids,
        prev_call_ids,
        requires_live,
        reasoning_sensitive: false,
    })
}

pub fn anthropic_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt.saturating_sub(u.cached + u.written()),
        "output_tokens": u.generated,
        "cache_read_input_tokens": u.cached,
        "cache_creation_input_tokens": u.written(),
    })
}

fn response_json(id: &str, model: &str, out: &Outcome) -> Value {
    let parsed = out.parsed.clone().unwrap_or_default();
    let ids = &out.tool_ids;
    let mut blocks = Vec::new();
    if let Some(r) = parsed.reasoning.as_deref().filter(|r| !r.is_empty()) {
        blocks.push(json!({"type": "thinking", "thinking": r, "signature": id}));
    }
    if !parsed.content.is_empty() {
        blocks.push(json!({"type": "text", "text": parsed.content}));
    }
    for (c, cid) in parsed.tool_calls.iter().zip(ids) {
        blocks.push(json!({"type": "tool_use", "id": cid, "name": c.name, "input": arguments_value(&c.compact_arguments())}));
    }
    if blocks.iter().all(|b| b["type"] == "thinking") {
        blocks.push(json!({"type": "text", "text": ""}));
    }
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": blocks,
        "stop_reason": out.finish.anthropic(), "stop_sequence": null, "usage": anthropic_usage(&out.usage),
    })
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Block {
    Thinking,
    Text,
    Tool,
}

/// spec §4.9.4 event sequence.
struct AnthropicStreamer {
    id: String,
    model: String,
    index: usize,
    open: Option<Block>,
    thinking_seen: bool,
    text_seen: bool,
}

fn named(name: &str, v: Value) -> SseEvent {
    SseEvent::default().event(name).data(v.to_string())
}

impl AnthropicStreamer {
    fn close(&mut self, out: &mut Vec<SseEvent>) {
        let Some(b) = self.open.take() else { return };
        if b == Block::Thinking {
            out.push(named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.index,
                    "delta": {"type": "signature_delta", "signature": self.id}}),
            ));
        }
        out.push(named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": self.index}),
        ));
        self.index += 1;
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut Vec<SseEvent>) {
        self.close(out);
        out.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.index, "content_block": block}),
        ));
        self.open = Some(kind);
    }

    fn delta(&self, delta: Value) -> SseEvent {
        named(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.index, "delta": delta}),
        )
    }
}

impl Streamer for AnthropicStreamer {
    fn on_event(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Started { usage } => out.push(named(
                "message_start",
                json!({"type": "message_start", "message": {"id": self.id, "type": "message", "role": "assistant",
                    "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": anthropic_usage(&usage)}}),
            )),
            Event::Chat(StreamEvent::Reasoning(s)) => {
                if self.open != Some(Block::Thinking) {
                    self.open_block(Block::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), out);
                    self.thinking_seen = true;
                }
                out.push(self.delta(json!({"type": "thinking_delta", "thinking": s})));
            }
            Event::Chat(StreamEvent::Content(s)) => {
                if self.open != Some(Block::Text) {
                    self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
                    self.text_seen = true;
                }
                out.push(self.delta(json!({"type": "text_delta", "text": s})));
            }
            Event::ToolCallStart { name, id, .. } => {
                self.open_block(Block::Tool, json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
            }
            Event::Chat(StreamEvent::ToolArguments { fragment, .. }) if self.open == Some(Block::Tool) => {
                out.push(self.delta(json!({"type": "input_json_delta", "partial_json": fragment})));
            }
            Event::Chat(StreamEvent::ToolCallEnd { .. }) => self.close(out),
            Event::Finished(o) => {
                self.close(out);
                let parsed = o.parsed.clone().unwrap_or_default();
                if !o.streamed_tool_header {
                    for (c, cid) in parsed.tool_calls.iter().zip(&o.tool_ids) {
                        self.open_block(Block::Tool, json!({"type": "tool_use", "id": cid, "name": c.name, "input": {}}), out);
                        out.push(self.delta(json!({"type": "input_json_delta", "partial_json": c.compact_arguments()})));
                        self.close(out);
                    }
                }
                if self.thinking_seen && !self.text_seen && parsed.tool_calls.is_empty() {
                    self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
                    self.close(out);
                }
                out.push(named(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": o.finish.anthropic(), "stop_sequence": null},
                        "usage": {"output_tokens": o.usage.generated}}),
                ));
                out.push(named("message_stop", json!({"type": "message_stop"})));
            }
            _ => {}
        }
    }

    fn error_event(&self, msg: &str) -> SseEvent {
        named(
            "error",
            json!({"type": "error", "error": {"type": "api_error", "message": msg}}),
        )
    }
}

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let anthropic = |e: ApiError| e.in_dialect(Dialect::Anthropic);
    state.metrics.request(Endpoint::Messages);
    let body = body.map_err(anthropic)?;
    let live = state.live_ids().anthropic;
    let mut job = parse_request(&state.cfg, &body.obj, &body.raw, &live).map_err(anthropic)?;
    job.forced = forced_output(&state, &headers);
    let id = state.next_request_id();
    let (stream, model) = (job.gen.stream, job.gen.model.clone());
    let (mut rx, _) = submit_chat(&state, id, job, &body.raw).map_err(anthropic)?;
    let msg_id = format!("chatcmpl-{id}");
    if !stream {
        let out = collect(rx).await.map_err(anthropic)?;
        return Ok(super::json_response(
            &response_json(&msg_id, &model, &out),
            true,
        ));
    }
    let first = first_event(&mut rx).await.map_err(anthropic)?;
    let streamer = AnthropicStreamer {
        id: msg_id,
        model,
        index: 0,
        open: None,
        thinking_seen: false,
        text_seen: false,
    };
    Ok(super::sse_response(first, rx, streamer))
}
