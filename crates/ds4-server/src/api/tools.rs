//! Tool schemas (spec/server.md §4.6.3, §4.8.3), tool-call ids (§3.4) and the exact-replay
//! memory glue (§3.5) shared by the chat, Anthropic and Responses handlers.

use std::collections::HashMap;

use ds4_chat::dsml::{new_tool_call_id, IdKind};
use ds4_chat::Message;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

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

/// A fresh call id, unique in `taken` and in the replay memory.
pub fn alloc_id(state: &AppState, kind: IdKind, taken: &[String]) -> String {
    let mem = state.tool_memory.lock().ok();
    new_tool_call_id(kind, |c| {
        taken.iter().any(|t| t == c) || mem.as_ref().is_some_and(|m| m.contains(c))
    })
}

/// spec §3.5: fills `raw_dsml` of assistant messages from the replay memory before rendering.
pub fn apply_memory(state: &AppState, messages: &mut [Message], request: u64) {
    if !state.cfg.exact_replay {
        return;
    }
    if let Ok(mut mem) = state.tool_memory.lock() {
        let st = mem.apply(messages);
        if st.mem + st.canonical > 0 {
            state.trace.line(
                request,
                &format!(
                    "tool_replay: mem={} disk=0 canonical={} missing_ids={}",
                    st.mem, st.canonical, st.missing_ids
                ),
            );
        }
    }
}

/// spec §3.5: remembers the sampled block for every id of the turn.
pub fn remember(state: &AppState, ids: &[String], raw_dsml: Option<&str>) {
    let (true, Some(raw)) = (state.cfg.exact_replay, raw_dsml) else {
        return;
    };
    if ids.is_empty() {
        return;
    }
    if let Ok(mut mem) = state.tool_memory.lock() {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        mem.remember(&refs, raw);
    }
}

/// Schema lines of the active tools (empty when `tool_choice` disabled them).
pub fn active_lines(schemas: &[ToolSchema], disabled: bool) -> Vec<String> {
    if disabled {
        Vec::new()
    } else {
        schemas.iter().map(|s| s.line.clone()).collect()
    }
}
