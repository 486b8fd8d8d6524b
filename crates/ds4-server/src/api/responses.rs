//! `POST /v1/responses`, the OpenAI Responses API (spec/server.md §4.8). Stateless: clients
//! replay the full input; `previous_response_id` is refused.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use ds4_chat::dsml::{new_item_id, StreamEvent};
use ds4_chat::{Message, Role, ToolCall};
use rand::RngCore;
use serde_json::{json, Map, Value};

use super::chat_completions::{arguments_text, submit_chat, ChatJob, GenSettings};
use super::tools::{self, ToolSchema};
use super::{
    arguments_value, collect, first_event, forced_output, model_name, opt_bool, opt_limit, opt_obj,
    opt_str, sampling, seed, JsonBody, Streamer, ThinkingControl,
};
use crate::error::ApiError;
use crate::live::Protocol;
use crate::metrics::Endpoint;
use crate::state::{AppState, ServerConfig};
use crate::worker::{Event, Finish, Outcome, Usage};

fn hex_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

/// spec §4.8.2: text of `content` / `summary` / array `output`; anything but text parts fails.
fn item_text(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(o) => {
                        let ty = o.get("type").and_then(Value::as_str);
                        if !matches!(
                            ty,
                            Some(
                                "input_text"
                                    | "output_text"
                                    | "text"
                                    | "summary_text"
                                    | "reasoning_text"
                            )
                        ) {
                            return Err(ApiError::invalid_json());
                        }
                        match o.get("text") {
                            Some(Value::String(s)) => out.push_str(s),
                            Some(Value::Null) => {}
                            _ => return Err(ApiError::invalid_json()),
                        }
                    }
                    _ => return Err(ApiError::invalid_json()),
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::invalid_json()),
    }
}

/// Output of a tool item: text parts, a string, or raw JSON text.
fn output_text(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        Some(Value::Array(_)) | Some(Value::String(_)) | None | Some(Value::Null) => item_text(v),
        Some(other) => Ok(other.to_string()),
    }
}

struct InputParse {
    messages: Vec<Message>,
    extra_tools: Vec<ToolSchema>,
    requires_live: bool,
    /// A tool output answers a replayed call whose turn carries no reasoning (spec §4.8.4).
    output_without_reasoning: bool,
}

/// spec §4.8.2 input items → messages. `live`: call ids of the live Responses binding (§4.8.4).
fn parse_input(
    input: &Value,
    instructions: Option<&str>,
    live: &[String],
) -> Result<InputParse, ApiError> {
    let mut messages: Vec<Message> = Vec::new();
    if let Some(i) = instructions.filter(|s| !s.is_empty()) {
        messages.push(Message::new(Role::System, i));
    }
    let mut extra_tools = Vec::new();
    let items = match input {
        Value::String(s) => {
            messages.push(Message::new(Role::User, s.clone()));
            return Ok(InputParse {
                messages,
                extra_tools,
                requires_live: false,
                output_without_reasoning: false,
            });
        }
        Value::Array(a) => a,
        _ => return Err(ApiError::invalid_json()),
    };
    let mut pending_reasoning: Option<String> = None;
    let mut known_calls: HashSet<String> = HashSet::new();
    let mut requires_live = false;
    let mut output_without_reasoning = false;
    let flush_reasoning = |messages: &mut Vec<Message>, pending: &mut Option<String>| {
        if let Some(r) = pending.take() {
            let mut m = Message::new(Role::Assistant, "");
            m.reasoning = r;
            messages.push(m);
        }
    };
    for item in items {
        let o = item.as_object().ok_or_else(ApiError::invalid_json)?;
        if let Some(st) = opt_str(o, "status")? {
            if st != "completed" {
                return Err(ApiError::invalid_json());
            }
        }
        let ty = opt_str(o, "type")?.unwrap_or("message");
        let call_id = || {
            o.get("call_id")
                .and_then(Value::as_str)
                .or_else(|| o.get("id").and_then(Value::as_str))
                .unwrap_or_default()
                .to_string()
        };
        let call_args = |keys: &[&str]| -> String {
            keys.iter()
                .find_map(|k| o.get(*k).filter(|v| !v.is_null()))
                .map_or_else(|| "{}".to_string(), arguments_text)
        };
        match ty {
            "message" => {
                let role = Role::parse(opt_str(o, "role")?.unwrap_or("user"));
                let text = item_text(o.get("content"))?;
                if role == Role::Assistant {
                    let mut m = Message::new(Role::Assistant, text);
                    m.reasoning = pending_reasoning.take().unwrap_or_default();
                    messages.push(m);
                } else {
                    if matches!(role, Role::User | Role::Tool | Role::Function) {
                        flush_reasoning(&mut messages, &mut pending_reasoning);
                    }
                    messages.push(Message::new(role, text));
                }
            }
            "reasoning" => {
                let mut text = item_text(o.get("summary"))?;
                let content = item_text(o.get("content"))?;
                if !content.is_empty() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&content);
                }
                let p = pending_reasoning.get_or_insert_with(String::new);
                if !p.is_empty() && !text.is_empty() {
                    p.push('\n');
                }
                p.push_str(&text);
            }
            "function_call"
            | "custom_tool_call"
            | "local_shell_call"
            | "web_search_call"
            | "tool_search_call"
            | "image_generation_call" => {
                let name = match ty {
                    "local_shell_call" => "local_shell".to_string(),
                    "web_search_call" => "web_search_call".to_string(),
                    "tool_search_call" => "tool_search".to_string(),
                    "image_generation_call" => "image_generation_call".to_string(),
                    _ => {
                        let n = opt_str(o, "name")?.unwrap_or_default();
                        match (ty, opt_str(o, "namespace")?) {
                            ("function_call", Some(ns)) => format!("{ns}{n}"),
                            _ => n.to_string(),
                        }
                    }
                };
                let arguments = match ty {
                    "function_call" | "custom_tool_call" => call_args(&["arguments", "input"]),
                    _ => call_args(&["action", "arguments", "input"]),
                };
                let id = call_id();
                known_calls.insert(id.clone());
                let call = ToolCall {
                    id,
                    name,
                    arguments,
                };
                match messages.last_mut() {
                    Some(last) if last.role == Role::Assistant && pending_reasoning.is_none() => {
                        last.tool_calls.push(call)
                    }
                    _ => {
                        let mut m = Message::new(Role::Assistant, "");
                        m.reasoning = pending_reasoning.take().unwrap_or_default();
                        m.tool_calls.push(call);
                        messages.push(m);
                    }
                }
            }
            "function_call_output"
            | "custom_tool_call_output"
            | "local_shell_call_output"
            | "web_search_call_output"
            | "tool_search_output"
            | "tool_search_call_output"
            | "image_generation_call_output" => {
                flush_reasoning(&mut messages, &mut pending_reasoning);
                let id = call_id();
                // spec §4.8.4: the call is in the replay, or only the live binding knows it.
                if !known_calls.contains(&id) {
                    if !live.contains(&id) {
                        return Err(ApiError::bad_request(format!(
                            "Responses continuation state is not available for call_id {id}; retry by replaying the full input history"
                        )));
                    }
                    requires_live = true;
                } else {
                    output_without_reasoning |= messages.iter().rev().any(|m| {
                        m.role == Role::Assistant
                            && m.reasoning.is_empty()
                            && m.tool_calls.iter().any(|c| c.id == id)
                    });
                }
                let content = if ty.starts_with("function") || ty.starts_with("custom") {
                    output_text(o.get("output"))?
                } else {
                    let v = o
                        .get("output")
                        .or_else(|| o.get("result"))
                        .or_else(|| o.get("tools"));
                    output_text(v)?
                };
                if ty == "tool_search_output" {
                    if let Some(t) = o.get("tools") {
                        let raw = serde_json::value::to_raw_value(t)
                            .map_err(|_| ApiError::invalid_json())?;
                        if !t.is_array() {
                            return Err(ApiError::invalid_json());
                        }
                        extra_tools.extend(tools::parse_tools(Some(&raw))?);
                    }
                }
                let mut m = Message::new(Role::Tool, content);
                m.tool_call_id = Some(id);
                messages.push(m);
            }
            "compaction" | "context_compaction" => {}
            _ => return Err(ApiError::invalid_json()),
        }
    }
    if let Some(r) = pending_reasoning.take() {
        let mut m = Message::new(Role::Assistant, "");
        m.reasoning = r;
        messages.push(m);
    }
    Ok(InputParse {
        messages,
        extra_tools,
        requires_live,
        output_without_reasoning,
    })
}

/// A parsed Responses request: the job plus what the response writer needs.
pub struct Parsed {
    pub job: ChatJob,
    pub schemas: Vec<ToolSchema>,
    pub summary: bool,
}

/// spec §4.8.1: a Responses body into a job. `live`: call ids of the live Responses binding.
pub fn parse_request(
    cfg: &ServerConfig,
    m: &Map<String, Value>,
    raw: &[u8],
    live: &[String],
) -> Result<Parsed, ApiError> {
    for key in ["previous_response_id", "conversation"] {
        if m.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(format!(
                "{key} is not supported; replay full input instead"
            )));
        }
    }
    let input = m
        .get("input")
        .ok_or_else(|| ApiError::bad_request("missing input"))?;
    let parsed = parse_input(input, opt_str(m, "instructions")?, live)?;
    let tools_raw = tools::top_level_raw(raw, "tools")?;
    let mut schemas = tools::parse_tools(tools_raw.as_deref())?;
    schemas.extend(parsed.extra_tools);
    let disabled = match m.get("tool_choice") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "none" => true,
        Some(Value::String(s)) if s == "auto" => false,
        Some(Value::String(s)) => {
            return Err(ApiError::bad_request(format!(
                "tool_choice={s} not supported"
            )))
        }
        Some(_) => return Err(ApiError::bad_request("forced tool_choice not supported")),
    };
    let model = model_name(m)?;
    let reasoning = opt_obj(m, "reasoning")?;
    let effort = reasoning.and_then(|r| r.get("effort"));
    let mut control = ThinkingControl::read(&Map::new(), &[effort])?;
    control.explicit = effort.is_some_and(|e| !e.is_null());
    let think = control.mode(&model).effective(cfg.ctx);
    let summary = matches!(
        reasoning
            .and_then(|r| r.get("summary"))
            .and_then(Value::as_str),
        Some("auto" | "concise" | "detailed")
    );
    let mut max_tokens = cfg.default_max_tokens;
    for key in ["max_output_tokens", "max_tokens"] {
        if let Some(n) = opt_limit(m, key)? {
            max_tokens = n;
        }
    }
    let gen = GenSettings {
        sampling: sampling(m, think, false)?,
        seed: seed(&Map::new())?,
        max_tokens,
        stop: Vec::new(),
        stream: opt_bool(m, "stream")?.unwrap_or(false),
        include_usage: false,
        model,
        think,
    };
    let lines = tools::active_lines(&schemas, disabled);
    let (output_ids, prev_call_ids) = tools::trailing_tool_ids(&parsed.messages, |_, m| {
        match (m.role, m.tool_call_id.as_ref()) {
            (Role::Tool, Some(id)) => vec![id.clone()],
            _ => Vec::new(),
        }
    });
    Ok(Parsed {
        job: ChatJob {
            messages: parsed.messages,
            schemas: lines,
            gen,
            forced: None,
            param: "input",
            protocol: Protocol::Responses { summary },
            output_ids,
            prev_call_ids,
            requires_live: parsed.requires_live,
            reasoning_sensitive: parsed.output_without_reasoning && think.is_enabled(),
        },
        schemas,
        summary,
    })
}

pub fn responses_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached, "cache_write_tokens": u.written()},
        "output_tokens": u.generated,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt + u.generated,
    })
}

fn status(f: Finish) -> &'static str {
    match f {
        Finish::Length => "incomplete",
        Finish::Error => "failed",
        _ => "completed",
    }
}

fn item_status(f: Finish) -> &'static str {
    match f {
        Finish::Length | Finish::Error => "incomplete",
        _ => "completed",
    }
}

/// Output items for the parsed calls (spec §4.8.5), with `arguments` set or empty.
fn call_items(
    schemas: &[ToolSchema],
    out: &Outcome,
    ids: &[String],
    st: &str,
    with_args: bool,
) -> Vec<Value> {
    let calls = out.parsed.as_ref().map_or(&[][..], |p| &p.tool_calls[..]);
    calls
        .iter()
        .zip(ids)
        .map(|(c, id)| {
            let schema = schemas.iter().find(|s| s.name == c.name);
            let args = c.compact_arguments();
            if schema.is_some_and(|s| s.hosted_tool_search) {
                return json!({"id": new_item_id(), "type": "tool_search_call", "status": st, "call_id": id,
                    "execution": "client", "arguments": arguments_value(&args)});
            }
            let mut item = Map::new();
            item.insert("id".into(), json!(new_item_id()));
            item.insert("type".into(), json!("function_call"));
            item.insert("status".into(), json!(st));
            match schema.and_then(|s| s.namespace.as_ref().map(|ns| (ns, &s.wire_name))) {
                Some((ns, wire)) => {
                    item.insert("name".into(), json!(wire));
                    item.insert("namespace".into(), json!(ns));
                }
                None => {
                    item.insert("name".into(), json!(c.name));
                }
            }
            item.insert("call_id".into(), json!(id));
            item.insert("arguments".into(), json!(if with_args { args } else { String::new() }));
            Value::Object(item)
        })
        .collect()
}

fn response_object(
    resp_id: &str,
    created: u64,
    model: &str,
    out: &Outcome,
    output: Vec<Value>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), json!(resp_id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created));
    r.insert("status".into(), json!(status(out.finish)));
    r.insert("model".into(), json!(model));
    if out.finish == Finish::Error {
        r.insert(
            "error".into(),
            json!({"code": "server_error", "message": "generation failed"}),
        );
    }
    if out.finish == Finish::Length {
        r.insert("incomplete_details".into(), json!({"reason": "max_tokens"}));
    }
    r.insert("output".into(), Value::Array(output));
    r.insert("usage".into(), responses_usage(&out.usage));
    Value::Object(r)
}

fn final_items(schemas: &[ToolSchema], out: &Outcome, summary: bool) -> Vec<Value> {
    let parsed = out.parsed.clone().unwrap_or_default();
    let st = item_status(out.finish);
    let mut items = Vec::new();
    if let Some(r) = parsed
        .reasoning
        .as_deref()
        .filter(|r| summary && !r.is_empty())
    {
        items.push(
            json!({"id": hex_id("rs_"), "type": "reasoning", "status": st,
            "summary": [{"type": "summary_text", "text": r}]}),
        );
    }
    if !parsed.content.is_empty() {
        items.push(
            json!({"id": hex_id("msg_"), "type": "message", "status": st, "role": "assistant",
            "content": [{"type": "output_text", "text": parsed.content, "annotations": []}]}),
        );
    }
    items.extend(call_items(schemas, out, &out.tool_ids, st, true));
    items
}

/// spec §4.8.6 event sequence.
struct ResponsesStreamer {
    schemas: Vec<ToolSchema>,
    summary: bool,
    resp_id: String,
    created: u64,
    model: String,
    seq: u64,
    next_output: usize,
    /// (item id, output index, text so far)
    reasoning: Option<(String, usize, String)>,
    message: Option<(String, usize, String)>,
}

impl ResponsesStreamer {
    fn ev(&mut self, ty: &str, fields: Value) -> SseEvent {
        let mut m = Map::new();
        m.insert("type".into(), json!(ty));
        m.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        super::data_event(&Value::Object(m))
    }
}

impl Streamer for ResponsesStreamer {
    fn on_event(&mut self, ev: Event, out: &mut Vec<SseEvent>) {
        match ev {
            Event::Started { .. } => {
                let r = json!({"response": {"id": self.resp_id, "object": "response", "created_at": self.created,
                    "status": "in_progress", "model": self.model, "output": []}});
                out.push(self.ev("response.created", r));
            }
            Event::Chat(StreamEvent::Reasoning(s)) => {
                if !self.summary {
                    return;
                }
                if self.reasoning.is_none() {
                    let id = hex_id("rs_");
                    let idx = self.next_output;
                    self.next_output += 1;
                    let item = json!({"output_index": idx, "item": {"id": id, "type": "reasoning",
                        "status": "in_progress", "summary": []}});
                    out.push(self.ev("response.output_item.added", item));
                    let part = json!({"item_id": id, "output_index": idx, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""}});
                    out.push(self.ev("response.reasoning_summary_part.added", part));
                    self.reasoning = Some((id, idx, String::new()));
                }
                if let Some((id, idx, text)) = self.reasoning.as_mut() {
                    text.push_str(&s);
                    let d =
                        json!({"item_id": id, "output_index": idx, "summary_index": 0, "delta": s});
                    out.push(self.ev("response.reasoning_summary_text.delta", d));
                }
            }
            Event::Chat(StreamEvent::Content(s)) => {
                if self.message.is_none() {
                    let id = hex_id("msg_");
                    let idx = self.next_output;
                    self.next_output += 1;
                    let item = json!({"output_index": idx, "item": {"id": id, "type": "message",
                        "status": "in_progress", "role": "assistant", "content": []}});
                    out.push(self.ev("response.output_item.added", item));
                    let part = json!({"item_id": id, "output_index": idx, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}});
                    out.push(self.ev("response.content_part.added", part));
                    self.message = Some((id, idx, String::new()));
                }
                if let Some((id, idx, text)) = self.message.as_mut() {
                    text.push_str(&s);
                    let d =
                        json!({"item_id": id, "output_index": idx, "content_index": 0, "delta": s});
                    out.push(self.ev("response.output_text.delta", d));
                }
            }
            Event::Finished(o) => {
                let st = item_status(o.finish);
                let mut output = Vec::new();
                let think_closed = o.parsed.as_ref().is_some_and(|p| p.reasoning.is_some());
                if let Some((id, idx, text)) = self.reasoning.take() {
                    let e = json!({"item_id": id, "output_index": idx, "summary_index": 0, "text": text});
                    out.push(self.ev("response.reasoning_summary_text.done", e));
                    let e = json!({"item_id": id, "output_index": idx, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text}});
                    out.push(self.ev("response.reasoning_summary_part.done", e));
                    let item = json!({"id": id, "type": "reasoning",
                        "status": if think_closed { "completed" } else { "incomplete" },
                        "summary": [{"type": "summary_text", "text": text}]});
                    out.push(self.ev(
                        "response.output_item.done",
                        json!({"output_index": idx, "item": item.clone()}),
                    ));
                    output.push(item);
                }
                if let Some((id, idx, text)) = self.message.take() {
                    let e = json!({"item_id": id, "output_index": idx, "content_index": 0, "text": text});
                    out.push(self.ev("response.output_text.done", e));
                    let part = json!({"type": "output_text", "text": text, "annotations": []});
                    let e = json!({"item_id": id, "output_index": idx, "content_index": 0, "part": part.clone()});
                    out.push(self.ev("response.content_part.done", e));
                    let item = json!({"id": id, "type": "message", "status": st, "role": "assistant", "content": [part]});
                    out.push(self.ev(
                        "response.output_item.done",
                        json!({"output_index": idx, "item": item.clone()}),
                    ));
                    output.push(item);
                }
                let ids = &o.tool_ids;
                let done_items = call_items(&self.schemas, &o, ids, st, true);
                let added_items = call_items(&self.schemas, &o, ids, "in_progress", false);
                for (mut added, done) in added_items.into_iter().zip(done_items) {
                    let idx = self.next_output;
                    self.next_output += 1;
                    added["id"] = done["id"].clone();
                    out.push(self.ev(
                        "response.output_item.added",
                        json!({"output_index": idx, "item": added}),
                    ));
                    if done["type"] == "function_call" {
                        let item_id = done["id"].clone();
                        let args = done["arguments"].clone();
                        let d = json!({"item_id": item_id, "output_index": idx, "delta": args});
                        out.push(self.ev("response.function_call_arguments.delta", d));
                        let mut e = json!({"item_id": item_id, "output_index": idx, "name": done["name"], "arguments": args});
                        if let Some(ns) = done.get("namespace") {
                            e["namespace"] = ns.clone();
                        }
                        out.push(self.ev("response.function_call_arguments.done", e));
                    }
                    out.push(self.ev(
                        "response.output_item.done",
                        json!({"output_index": idx, "item": done.clone()}),
                    ));
                    output.push(done);
                }
                let resp = response_object(&self.resp_id, self.created, &self.model, &o, output);
                let terminal = match o.finish {
                    Finish::Length => "response.incomplete",
                    Finish::Error => "response.failed",
                    _ => "response.completed",
                };
                out.push(self.ev(terminal, json!({"response": resp})));
            }
            _ => {}
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
    state.metrics.request(Endpoint::Responses);
    let body = body?;
    let Parsed {
        mut job,
        schemas,
        summary,
    } = parse_request(
        &state.cfg,
        &body.obj,
        &body.raw,
        &state.live_ids().responses,
    )?;
    job.forced = forced_output(&state, &headers);
    let id = state.next_request_id();
    let (stream, model) = (job.gen.stream, job.gen.model.clone());
    let (mut rx, _) = submit_chat(&state, id, job, &body.raw)?;
    let resp_id = hex_id("resp_");
    let created = super::unix_now();
    if !stream {
        let out = collect(rx).await?;
        let items = final_items(&schemas, &out, summary);
        return Ok(super::json_response(
            &response_object(&resp_id, created, &model, &out, items),
            false,
        ));
    }
    let first = first_event(&mut rx).await?;
    let streamer = ResponsesStreamer {
        schemas,
        summary,
        resp_id,
        created,
        model,
        seq: 0,
        next_output: 0,
        reasoning: None,
        message: None,
    };
    Ok(super::sse_response(first, rx, streamer))
}
