//! Tool schemas (spec/server.md §4.6.3, §4.8.3), tool-call ids (§3.4) and the exact-replay
//! memory glue (§3.5) shared by the chat, Anthropic and Responses handlers.

use std::collections::HashMap;

use ds4_chat::{Message, Role};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;
use crate::worker::ReplayStats;

/// One rendered schema line and the names needed to report calls back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSchema {
    /// The line inserted at ⟨SCHEMAS⟩: the client's raw JSON bytes where possible.
    pub line: String,
    /// Name the model sees (`NS+NAME` for namespaced tools).
    pub name: String,
    /// Responses namespace, restored on output (§4.8.3).
    pub namespace: Option<String>,
    /// Name without the namespace prefix.
    pub wire_name: String,
    /// Synthesized from a `{"type":"tool_search"}` entry: reported as `tool_search_call`.
    pub hosted_tool_search: bool,
}

/// The raw value of a top-level key of a JSON object body.
pub fn top_level_raw(body: &[u8], key: &str) -> Result<Option<Box<RawValue>>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let mut map: HashMap<String, Box<RawValue>> =
        serde::Deserialize::deserialize(&mut de).map_err(|_| ApiError::invalid_json())?;
    Ok(map.remove(key))
}

fn str_field(entry: &HashMap<String, Box<RawValue>>, key: &str) -> Option<String> {
    entry
        .get(key)
        .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// Converts a `tools` value into schema lines. `null` → none; a non-array → invalid JSON.
pub fn parse_tools(raw: Option<&RawValue>) -> Result<Vec<ToolSchema>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if raw.get().trim() == "null" {
        return Ok(Vec::new());
    }
    let entries: Vec<Box<RawValue>> =
        serde_json::from_str(raw.get()).map_err(|_| ApiError::invalid_json())?;
    let mut out = Vec::new();
    for e in entries {
        let Ok(map) = serde_json::from_str::<HashMap<String, Box<RawValue>>>(e.get()) else {
            out.push(ToolSchema {
                line: e.get().to_string(),
                name: String::new(),
                namespace: None,
                wire_name: String::new(),
                hosted_tool_search: false,
            });
            continue;
        };
        let ty = str_field(&map, "type");
        if let Some(f) = map.get("function") {
            let fmap: HashMap<String, Box<RawValue>> =
                serde_json::from_str(f.get()).unwrap_or_default();
            let name = str_field(&fmap, "name").unwrap_or_default();
            out.push(ToolSchema {
                line: f.get().to_string(),
                wire_name: name.clone(),
                name,
                namespace: None,
                hosted_tool_search: false,
            });
        } else if ty.as_deref() == Some("namespace") {
            let ns = str_field(&map, "name").unwrap_or_default();
            let inner: Vec<HashMap<String, Box<RawValue>>> = match map.get("tools") {
                Some(t) => serde_json::from_str(t.get()).map_err(|_| ApiError::invalid_json())?,
                None => Vec::new(),
            };
            for t in inner {
                let t = match t.get("function") {
                    Some(f) => serde_json::from_str(f.get()).unwrap_or(t),
                    None => t,
                };
                let wire = str_field(&t, "name").unwrap_or_default();
                let name = format!("{ns}{wire}");
                let desc = t
                    .get("description")
                    .map_or("\"\"".to_string(), |d| d.get().to_string());
                let params = t
                    .get("parameters")
                    .or_else(|| t.get("input_schema"))
                    .map_or(r#"{"type":"object","properties":{}}"#.to_string(), |p| {
                        p.get().to_string()
                    });
                let name_json = Value::String(name.clone()).to_string();
                out.push(ToolSchema {
                    line: format!(
                        r#"{{"name":{name_json},"description":{desc},"parameters":{params}}}"#
                    ),
                    name,
                    namespace: Some(ns.clone()),
                    wire_name: wire,
                    hosted_tool_search: false,
                });
            }
        } else if ty.as_deref() == Some("tool_search") {
            let desc = map
                .get("description")
                .map_or("\"Search available tools.\"".to_string(), |d| {
                    d.get().to_string()
                });
            let params = map
                .get("parameters")
                .map_or(r#"{"type":"object","properties":{}}"#.to_string(), |p| {
                    p.get().to_string()
                });
            out.push(ToolSchema {
                line: format!(
                    r#"{{"name":"tool_search","description":{desc},"parameters":{params}}}"#
                ),
                name: "tool_search".to_string(),
                namespace: None,
                wire_name: "tool_search".to_string(),
                hosted_tool_search: true,
            });
        } else {
            let name = str_field(&map, "name").unwrap_or_default();
            out.push(ToolSchema {
                line: e.get().to_string(),
                wire_name: name.clone(),
                name,
                namespace: None,
                hosted_tool_search: false,
            });
        }
    }
    Ok(out)
}

/// spec §3.5: fills `raw_dsml` of assistant messages from the replay memory before rendering.
/// With the disk cache on, call ids the memory lacks are looked up first in the tool maps of the
/// `.kv` files (step 1: exact replay survives a restart).
pub fn apply_memory(state: &AppState, messages: &mut [Message]) -> ReplayStats {
    let mut stats = ReplayStats::default();
    if !state.cfg.exact_replay {
        stats.canonical = messages
            .iter()
            .filter(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())
            .count();
        return stats;
    }
    if let Some(disk) = &state.disk {
        // The ids the memory lacks, collected under the lock; the directory scan runs without
        // it, so the worker is never held up by disk reads.
        let missing: Vec<String> = match state.tool_memory.lock() {
            Ok(mem) => messages
                .iter()
                .flat_map(|m| {
                    m.tool_calls
                        .iter()
                        .map(|c| c.id.as_str())
                        .chain(m.tool_call_id.as_deref())
                })
                .filter(|id| !id.is_empty() && !mem.contains(id))
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        };
        if !missing.is_empty() {
            let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
            let found = disk.cache.find_tool_memories(&ids);
            if let Ok(mut mem) = state.tool_memory.lock() {
                for t in &found {
                    mem.remember(&[t.id.as_str()], &t.dsml);
                }
            }
            stats.disk = found.len();
        }
    }
    let Ok(mut mem) = state.tool_memory.lock() else {
        return stats;
    };
    let st = mem.apply(messages);
    stats.mem = st.mem;
    stats.canonical = st.canonical;
    stats.missing_ids = st.missing_ids;
    stats
}

/// spec §5.2 rules 2-3: the ids named by the tool outputs that end the request (the messages
/// after the last assistant turn, system messages skipped; `output_ids` says which ids a message
/// carries), and the call ids of that assistant turn.
pub fn trailing_tool_ids(
    messages: &[Message],
    output_ids: impl Fn(usize, &Message) -> Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let mut outputs = Vec::new();
    let mut calls = Vec::new();
    for (i, m) in messages.iter().enumerate().rev() {
        match m.role {
            Role::System | Role::Developer | Role::Other => continue,
            Role::Assistant => {
                calls = m.tool_calls.iter().map(|c| c.id.clone()).collect();
                break;
            }
            Role::User | Role::Tool | Role::Function => {
                let mut ids = output_ids(i, m);
                ids.append(&mut outputs);
                outputs = ids;
            }
        }
    }
    (outputs, calls)
}

/// Schema lines of the active tools (empty when `tool_choice` disabled them).
pub fn active_lines(schemas: &[ToolSchema], disabled: bool) -> Vec<String> {
    if disabled {
        Vec::new()
    } else {
        schemas.iter().map(|s| s.line.clone()).collect()
    }
}
