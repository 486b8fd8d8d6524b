//! Chat rendering + structural tokenization on arbitrary requests.
//!
//! Two input shapes: bytes that parse as a JSON chat request (converted with the spec §4.6.2
//! content rules), or arbitrary structured messages. Invariants: nothing panics; the tokens decode
//! to exactly `Rendered::text()`; every special token comes from a `Segment::Special`; when no text
//! segment spells a special, structural and rendered-scan tokenization agree; client text never
//! adds a USER/ASSISTANT/BOS/EOS token.
#![no_main]

use arbitrary::Arbitrary;
use ds4_chat::{render_chat, Message, Role, Segment, SpecialKind, ThinkMode, Tokenizer, ToolCall};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Arbitrary)]
struct FuzzMessage {
    role: u8,
    content: String,
    reasoning: String,
    calls: Vec<(String, String)>,
    raw_dsml: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct FuzzRequest {
    messages: Vec<FuzzMessage>,
    schemas: Vec<String>,
    think: u8,
}

const ROLES: [Role; 7] = [
    Role::System,
    Role::Developer,
    Role::User,
    Role::Assistant,
    Role::Tool,
    Role::Function,
    Role::Other,
];

fn think_of(b: u8) -> ThinkMode {
    [ThinkMode::None, ThinkMode::High, ThinkMode::Max][usize::from(b % 3)]
}

/// spec §4.6.2 `content`: string; null -> ""; array -> concatenated strings and `text` fields.
fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
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

fn from_json(v: &Value) -> Option<(Vec<Message>, Vec<String>, ThinkMode)> {
    let messages = v.get("messages")?.as_array()?;
    let messages = messages
        .iter()
        .map(|m| {
            let role = Role::parse(m.get("role").and_then(Value::as_str).unwrap_or("user"));
            let calls = m
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .filter_map(|c| {
                            let f = c.get("function")?;
                            let arguments = match f.get("arguments")? {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            Some(ToolCall {
                                id: c.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                                name: f.get("name")?.as_str()?.to_owned(),
                                arguments,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Message {
                reasoning: text_of(m.get("reasoning_content")),
                tool_calls: calls,
                ..Message::new(role, text_of(m.get("content")))
            }
        })
        .collect();
    let schemas = v
        .get("tools")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .map(|s| s.get("function").unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    let think = if v.get("think") == Some(&Value::Bool(false)) {
        ThinkMode::None
    } else {
        ThinkMode::High
    };
    Some((messages, schemas, think))
}

fn from_arbitrary(data: &[u8]) -> Option<(Vec<Message>, Vec<String>, ThinkMode)> {
    let req = FuzzRequest::arbitrary(&mut arbitrary::Unstructured::new(data)).ok()?;
    let messages = req
        .messages
        .into_iter()
        .map(|m| Message {
            reasoning: m.reasoning,
            tool_calls: m
                .calls
                .into_iter()
                .map(|(name, arguments)| ToolCall {
                    id: String::new(),
                    name,
                    arguments,
                })
                .collect(),
            raw_dsml: m.raw_dsml,
            ..Message::new(ROLES[usize::from(m.role % 7)], m.content)
        })
        .collect();
    Some((messages, req.schemas, think_of(req.think)))
}

fn spells_special(s: &str) -> bool {
    SpecialKind::ALL.iter().any(|k| s.contains(k.text()))
}

fuzz_target!(|data: &[u8]| {
    let parsed = match serde_json::from_slice::<Value>(data) {
        Ok(v) => from_json(&v),
        Err(_) => from_arbitrary(data),
    };
    let Some((messages, schemas, think)) = parsed else {
        return;
    };
    let tok = Tokenizer::builtin();
    let r = render_chat(&messages, &schemas, think);
    let text = r.text();
    let ids = tok.encode_segments(&r);
    assert_eq!(tok.decode(&ids), text.as_bytes());

    let n_special_segments = r
        .segments
        .iter()
        .filter(|s| matches!(s, Segment::Special(_)))
        .count();
    let n_special_ids = ids
        .iter()
        .filter(|&&id| tok.special().kind_of(id).is_some())
        .count();
    assert_eq!(n_special_ids, n_special_segments);

    let any_spelled = r
        .segments
        .iter()
        .any(|s| matches!(s, Segment::Text(t) if spells_special(t)));
    if !any_spelled {
        assert_eq!(ids, tok.encode_rendered(text.as_bytes()));
    }

    // Role markers come only from message structure: one BOS, at most one USER per user-like
    // message and one ASSISTANT per assistant message plus the final opener.
    let count = |k: SpecialKind| ids.iter().filter(|&&id| id == tok.special().id(k)).count();
    assert_eq!(count(SpecialKind::Bos), 1);
    let n_user_like = messages
        .iter()
        .filter(|m| matches!(m.role, Role::User | Role::Tool | Role::Function))
        .count();
    let n_assistant = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    assert!(count(SpecialKind::User) <= n_user_like);
    assert!(count(SpecialKind::Assistant) <= n_assistant + 1);
    assert_eq!(count(SpecialKind::Eos), n_assistant);
});
