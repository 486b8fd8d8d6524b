//! `POST /v1/chat/completions` (spec/server.md §4.6).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use ds4_chat::dsml::{StreamConfig, StreamEvent};
use ds4_chat::{render_chat, Message, Role, ThinkMode, ToolCall};
use serde_json::{json, Map, Value};

use super::tools;
use super::{
    check_context, collect, data_event, first_event, forced_output, model_name, opt_bool,
    opt_limit, opt_obj, opt_str, sampling, seed, sse_response, stop_list, unix_now, JsonBody,
    Streamer, ThinkingControl,
};
use crate::error::ApiError;
use crate::live::{Protocol, ToolTail};
use crate::metrics::Endpoint;
use crate::state::{AppState, ServerConfig};
use crate::worker::{Event, Job, Outcome, OutputMode, TraceInfo, Usage};

// ---- request -----------------------------------------------------------------------------------

/// spec §4.6.2 content rules: string; null → ""; array → concatenated strings and `text` fields.
pub fn content_text(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(o) => match o.get("text") {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) => out.push_str(s),
                        Some(_) => return Err(ApiError::invalid_json()),
                    },
                    _ => {}
                }
            }
            Ok(out)
        }
        _ => Ok(String::new()),
    }
}

/// Arguments of a client tool call: a JSON string's text, or any other JSON as text.
pub fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_tool_calls(v: Option<&Value>) -> Result<Vec<ToolCall>, ApiError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let calls = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(ApiError::invalid_json()),
    };
    let mut out = Vec::new();
    for c in calls {
        let Some(c) = c.as_object() else { continue };
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(f) = c.get("function").and_then(Value::as_object) else {
            continue;
        };
        // Entries lacking `name` or `arguments` are silently dropped (spec §4.6.2).
        let (Some(name), Some(args)) = (f.get("name").and_then(Value::as_str), f.get("arguments"))
        else {
            continue;
        };
        out.push(ToolCall {
            id,
            name: name.to_string(),
            arguments: arguments_text(args),
        });
    }
    Ok(out)
}

/// spec §4.6.2: one message object.
pub fn parse_message(v: &Value) -> Result<Message, ApiError> {
    let m = v.as_object().ok_or_else(ApiError::invalid_json)?;
    let role = Role::parse(opt_str(m, "role")?.unwrap_or("user"));
    let mut msg = Message::new(role, content_text(m.get("content"))?);
    msg.reasoning = content_text(m.get("reasoning_content"))?;
    msg.tool_call_id = opt_str(m, "tool_call_id")?.map(str::to_string);
    msg.tool_calls = parse_tool_calls(m.get("tool_calls"))?;
    Ok(msg)
}

/// Generation settings common to chat-style requests, after spec §4.4 resolution.
pub struct GenSettings {
    pub model: String,
    pub think: ThinkMode,
    pub sampling: ds4_engine::sampler::SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// A chat-style job ready to queue.
pub struct ChatJob {
    pub messages: Vec<Message>,
    pub schemas: Vec<String>,
    pub gen: GenSettings,
    pub forced: Option<Vec<u32>>,
    pub param: &'static str,
    pub protocol: Protocol,
    /// Ids named by the trailing tool outputs and the calls right before them (spec §5.2 rules
    /// 2-3); empty for chat completions.
    pub output_ids: Vec<String>,
    pub prev_call_ids: Vec<String>,
    /// A tool output names a call only the live state knows (spec §4.8.4, §4.9.2).
    pub requires_live: bool,
    /// Responses, thinking: a replayed tool call without its reasoning (spec §4.8.4); only a trace
    /// warning when no live state preserves the reasoning.
    pub reasoning_sensitive: bool,
}

/// Tool history: any assistant call or tool message (spec §2.2 `tool_context`).
pub fn has_tool_history(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| !m.tool_calls.is_empty() || matches!(m.role, Role::Tool | Role::Function))
}

/// A chat job rendered and tokenized, before it is queued: what the fuzz target drives too.
pub struct Prepared {
    pub rendered: ds4_chat::Rendered,
    pub prompt: Vec<u32>,
    pub prompt_text: String,
    pub cfg: StreamConfig,
    pub tail: Option<ToolTail>,
}

/// Renders and tokenizes a chat job (after the replay memory filled its blocks).
pub fn prepare(tokenizer: &ds4_chat::Tokenizer, job: &ChatJob) -> Prepared {
    let rendered = render_chat(&job.messages, &job.schemas, job.gen.think);
    let prompt = tokenizer.encode_segments(&rendered);
    let prompt_text = rendered.text();
    let cfg = StreamConfig {
        thinking: job.gen.think.is_enabled(),
        tools_active: !job.schemas.is_empty(),
    };
    let tail = match job.protocol {
        Protocol::Responses { .. } | Protocol::Anthropic => {
            ToolTail::from_rendered(&rendered, job.output_ids.clone(), job.prev_call_ids.clone())
        }
        Protocol::Chat | Protocol::Completions => None,
    };
    Prepared {
        rendered,
        prompt,
        prompt_text,
        cfg,
        tail,
    }
}

/// Renders, tokenizes, checks the context and queues (spec §4.3).
pub fn submit_chat(
    state: &AppState,
    id: u64,
    mut job: ChatJob,
    request_json: &[u8],
) -> Result<(tokio::sync::mpsc::UnboundedReceiver<Event>, StreamConfig), ApiError> {
    let tool_replay = tools::apply_memory(state, &mut job.messages);
    let p = prepare(state.tokenizer, &job);
    check_context(state, p.prompt.len(), job.param)?;
    let cfg = p.cfg;
    let tool_history = has_tool_history(&job.messages);
    let trace = TraceInfo {
        model: job.gen.model.clone(),
        stream: job.gen.stream,
        tools: job.schemas.len(),
        think: job.gen.think,
        request_json: if state.trace.enabled() {
            String::from_utf8_lossy(request_json).into_owned()
        } else {
            String::new()
        },
        tool_replay,
        reasoning_sensitive: job.reasoning_sensitive,
    };
    let rx = state.submit(|events| Job {
        id,
        protocol: job.protocol,
        mode: OutputMode::Chat(cfg),
        rendered: p.rendered,
        prompt: p.prompt,
        prompt_text: p.prompt_text,
        sampling: job.gen.sampling,
        seed: job.gen.seed,
        max_tokens: job.gen.max_tokens,
        stop: job.gen.stop,
        tool_history,
        tail: p.tail,
        requires_live: job.requires_live,
        trace,
        forced: job.forced,
        events,
    })?;
    Ok((rx, cfg))
}

/// spec §4.6.1: a chat completions body into a job.
pub fn parse_request(
    cfg: &ServerConfig,
    m: &Map<String, Value>,
    raw: &[u8],
) -> Result<(ChatJob, bool), ApiError> {
    let messages = match m.get("messages") {
        None => return Err(ApiError::bad_request("missing messages")),
        Some(Value::Array(a)) => a.iter().map(parse_message).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::invalid_json()),
    };
    let tools_raw = tools::top_level_raw(raw, "tools")?;
    let schemas = tools::parse_tools(tools_raw.as_deref())?;
    let disabled = matches!(m.get("tool_choice"), Some(Value::String(s)) if s == "none");
    let model = model_name(m)?;
    let control = ThinkingControl::read(m, &[m.get("reasoning_effort")])?;
    let think = control.mode(&model).effective(cfg.ctx);
    let mut max_tokens = cfg.default_max_tokens;
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = opt_limit(m, key)? {
            max_tokens = n;
        }
    }
    let include_usage = match opt_obj(m, "stream_options")? {
        Some(o) => opt_bool(o, "include_usage")?.unwrap_or(false),
        None => false,
    };
    let gen = GenSettings {
        sampling: sampling(m, think, true)?,
        seed: seed(m)?,
        max_tokens,
        stop: stop_list(m.get("stop")),
        stream: opt_bool(m, "stream")?.unwrap_or(false),
        include_usage,
        model,
        think,
    };
    let schemas = tools::active_lines(&schemas, disabled);
    Ok((
        ChatJob {
            messages,
            schemas,
            gen,
            forced: None,
            param: "messages",
            protocol: Protocol::Chat,
            output_ids: Vec::new(),
            prev_call_ids: Vec::new(),
            requires_live: false,
            reasoning_sensitive: false,
        },
        disabled,
    ))
}

// ---- response ----------------------------------------------------------------------------------

pub fn openai_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.generated,
        "total_tokens": u.prompt + u.generated,
        "prompt_tokens_details": {"cached_tokens": u.cached, "cache_write_tokens": u.written()},
    })
}

fn tool_calls_json(out: &Outcome, ids: &[String]) -> Vec<Value> {
    let calls = out.parsed.as_ref().map_or(&[][..], |p| &p.tool_calls[..]);
    calls
        .iter()
        .zip(ids)
        .map(|(c, id)| {
            json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.compact_arguments()}})
        })
        .collect()
}

fn finish_json(id: u64, model: &str, out: &Outcome) -> Value {
    let parsed = out.parsed.clone().unwrap_or_default();
    let ids = &out.tool_ids;
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), json!(parsed.content));
    if let Some(r) = parsed.reasoning.as_deref().filter(|r| !r.is_empty()) {
        message.insert("reasoning_content".into(), json!(r));
    }
    let calls = tool_calls_json(out, ids);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": out.finish.openai()}],
        "usage": openai_usage(&out.usage),
    })
}

/// spec §4.6.5 chunk sequence.
struct ChatStreamer {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChatStreamer {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        data_event(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    }
}

impl Streamer for ChatStreamer {
    fn on_event(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Started { .. } => out.push(self.chunk(json!({"role": "assistant"}), None)),
            Event::Chat(StreamEvent::Reasoning(s)) => {
                out.push(self.chunk(json!({"reasoning_content": s}), None))
            }
            Event::Chat(StreamEvent::Content(s)) => {
                out.push(self.chunk(json!({"content": s}), None))
            }
            Event::ToolCallStart { index, name, id } => {
                out.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
            }
            Event::Chat(StreamEvent::ToolArguments { index, fragment }) => out.push(self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                None,
            )),
            Event::Finished(o) => {
                let n_calls = o.parsed.as_ref().map_or(0, |p| p.tool_calls.len());
                if n_calls > 0 && !o.streamed_tool_header {
                    let calls: Vec<Value> = tool_calls_json(&o, &o.tool_ids)
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut c)| {
                            c["index"] = json!(i);
                            c
                        })
                        .collect();
                    out.push(self.chunk(json!({"tool_calls": calls}), None));
                }
                out.push(self.chunk(json!({}), Some(o.finish.openai())));
                if self.include_usage {
                    out.push(data_event(&json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": openai_usage(&o.usage),
                    })));
                }
                out.push(SseEvent::default().data("[DONE]"));
            }
            Event::Chat(StreamEvent::ToolCallEnd { .. } | StreamEvent::ToolCallStart { .. })
            | Event::Text(_)
            | Event::Prefill { .. }
            | Event::Failed(_)
            | Event::Conflict(_) => {}
        }
    }

    fn error_event(&self, msg: &str) -> SseEvent {
        super::openai_error_event(msg)
    }
}

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    state.metrics.request(Endpoint::ChatCompletions);
    let body = body?;
    let (mut job, _) = parse_request(&state.cfg, &body.obj, &body.raw)?;
    job.forced = forced_output(&state, &headers);
    let id = state.next_request_id();
    let (stream, include_usage, model) =
        (job.gen.stream, job.gen.include_usage, job.gen.model.clone());
    let (mut rx, _) = submit_chat(&state, id, job, &body.raw)?;
    if !stream {
        let out = collect(rx).await?;
        return Ok(super::json_response(&finish_json(id, &model, &out), true));
    }
    let first = first_event(&mut rx).await?;
    let streamer = ChatStreamer {
        id: format!("chatcmpl-{id}"),
        created: unix_now(),
        model,
        include_usage,
    };
    Ok(sse_response(first, rx, streamer))
}
