//! The live protocol bindings (spec/server.md §5.3), the tool-output tail that rules 2-3 of the
//! reuse cascade (§5.2) append to the live state, and the `.kv` tool-id map selection (§5.4 KTM).
//!
//! A binding says "the live KV at position `pos` is this protocol's last turn": the Responses
//! binding remembers the transcript the client can see (no hidden reasoning), the Anthropic one the
//! call ids it answered with, the thinking one the visible text of a tool-less thinking turn. They
//! are valid only while the live session is still exactly `pos` tokens long and the last job was
//! the one that set them; the worker owns them and publishes the call ids ([`LiveIds`]) so request
//! parsers can accept tool outputs that only the live state knows (§4.8.4, §4.9.2).

use std::collections::HashSet;
use std::sync::Arc;

use ds4_chat::dsml::IdKind;
use ds4_chat::{Rendered, Segment, SpecialKind};

/// Which API a job came from; decides the bindings it may use and set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Chat,
    Completions,
    /// `summary`: the client opted into reasoning summaries (`reasoning.summary`).
    Responses {
        summary: bool,
    },
    Anthropic,
}

impl Protocol {
    /// The `kind:` of a trace header.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Chat => "chat",
            Protocol::Completions => "completions",
            Protocol::Responses { .. } => "responses",
            Protocol::Anthropic => "messages",
        }
    }

    /// The id family of this protocol's tool calls (spec §3.4).
    pub fn id_kind(self) -> IdKind {
        match self {
            Protocol::Anthropic => IdKind::Anthropic,
            _ => IdKind::Call,
        }
    }
}

/// What a request ending in tool outputs offers rules 2-3 of spec §5.2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolTail {
    /// Ids named by the trailing tool outputs.
    pub output_ids: Vec<String>,
    /// Ids of the calls of the assistant message right before them (empty when the client did not
    /// replay it).
    pub call_ids: Vec<String>,
    /// `EOS` + `USER` + tool results (+ user text) + `ASSISTANT` + think marker: only the new turn,
    /// rendered independently of how the client replayed the history (spec §5.3).
    pub rendered: Rendered,
}

impl ToolTail {
    /// The tail of a rendered chat: from the `EOS` that ends the last assistant turn, or, when the
    /// request replays no assistant turn (a tool-output-only request), `EOS` + everything from the
    /// first `USER`. `None` without output ids or without a `USER` marker.
    pub fn from_rendered(
        r: &Rendered,
        output_ids: Vec<String>,
        call_ids: Vec<String>,
    ) -> Option<ToolTail> {
        if output_ids.is_empty() {
            return None;
        }
        let segs = &r.segments;
        let last_eos = segs
            .iter()
            .rposition(|s| *s == Segment::Special(SpecialKind::Eos));
        let mut rendered = Rendered::new();
        match last_eos {
            Some(i) => segs[i..].iter().for_each(|s| push(&mut rendered, s)),
            None => {
                let first_user = segs
                    .iter()
                    .position(|s| *s == Segment::Special(SpecialKind::User))?;
                rendered.push_special(SpecialKind::Eos);
                segs[first_user..]
                    .iter()
                    .for_each(|s| push(&mut rendered, s));
            }
        }
        Some(ToolTail {
            output_ids,
            call_ids,
            rendered,
        })
    }

    /// Whether the outputs (or the calls right before them) name exactly `ids` (as sets).
    pub fn names(&self, ids: &[String]) -> bool {
        let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let same = |v: &[String]| {
            !v.is_empty() && v.iter().map(String::as_str).collect::<HashSet<_>>() == want
        };
        !want.is_empty() && (same(&self.output_ids) || same(&self.call_ids))
    }
}

fn push(r: &mut Rendered, s: &Segment) {
    match s {
        Segment::Special(k) => r.push_special(*k),
        Segment::Text(t) => r.push_text(t),
    }
}

/// spec §5.3 "Responses binding".
#[derive(Debug, Clone)]
pub struct ResponsesBinding {
    /// `prompt_text` + the visible assistant suffix (ends with the `EOS` spelling).
    pub visible_text: String,
    pub pos: usize,
    pub call_ids: Vec<String>,
}

/// spec §5.3 "Anthropic binding".
#[derive(Debug, Clone)]
pub struct AnthropicBinding {
    pub pos: usize,
    pub call_ids: Vec<String>,
}

/// spec §5.3 "thinking binding".
#[derive(Debug, Clone)]
pub struct ThinkingBinding {
    /// `prompt_text` without its final `<think>`, + `</think>` + content + `EOS`.
    pub visible_text: String,
    pub pos: usize,
}

/// One binding of each kind, all for the same live position (the end of the last job).
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    pub responses: Option<ResponsesBinding>,
    pub anthropic: Option<AnthropicBinding>,
    pub thinking: Option<ThinkingBinding>,
}

impl Bindings {
    /// The call ids the parsers may accept as live.
    pub fn ids(&self) -> LiveIds {
        LiveIds {
            responses: self
                .responses
                .as_ref()
                .map(|b| b.call_ids.clone())
                .unwrap_or_default(),
            anthropic: self
                .anthropic
                .as_ref()
                .map(|b| b.call_ids.clone())
                .unwrap_or_default(),
        }
    }

    /// The visible transcript a checkpoint of the live state should be keyed by (spec §5.6, evict
    /// and shutdown saves), when a visible binding is valid at `pos`.
    pub fn visible_key(&self, pos: usize) -> Option<(&str, ds4_kvcache::KeyKind)> {
        if let Some(b) = self.responses.as_ref().filter(|b| b.pos == pos) {
            return Some((&b.visible_text, ds4_kvcache::KeyKind::ResponsesVisible));
        }
        self.thinking.as_ref().filter(|b| b.pos == pos).map(|b| {
            (
                b.visible_text.as_str(),
                ds4_kvcache::KeyKind::ThinkingVisible,
            )
        })
    }
}

/// Call ids of the live bindings, published by the worker for request validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveIds {
    pub responses: Vec<String>,
    pub anthropic: Vec<String>,
}

/// Most tool-map entries written into one `.kv` file (spec §5.4: the loader accepts 4 x the
/// default `--tool-memory-max-ids`; ds4-kvcache's `MAX_TOOL_ENTRIES` is the same number).
pub const MAX_TOOL_MAP_ENTRIES: usize = 4 * ds4_chat::dsml::TOOL_MEMORY_MAX_IDS;

/// The three block spellings (spec §2.4): opener, closer.
const SPELLINGS: [(&str, &str); 3] = [
    ("<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"),
    ("<DSML｜tool_calls>", "</DSML｜tool_calls>"),
    ("<tool_calls>", "</tool_calls>"),
];

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Every tool-call block in `text` (each spelling, with and without the `\n\n` before it).
pub fn dsml_blocks(text: &[u8]) -> HashSet<&[u8]> {
    let mut out = HashSet::new();
    for (open, close) in SPELLINGS {
        let mut at = 0;
        while let Some(s) = find(text, open.as_bytes(), at) {
            let Some(c) = find(text, close.as_bytes(), s + open.len()) else {
                break;
            };
            let e = c + close.len();
            out.insert(&text[s..e]);
            if s >= 2 && &text[s - 2..s] == b"\n\n" {
                out.insert(&text[s - 2..e]);
            }
            at = e;
        }
    }
    out
}

/// spec §5.4: the remembered `(id, block)` pairs whose block occurs verbatim in `key_text`, most
/// recently used last, at most [`MAX_TOOL_MAP_ENTRIES`].
pub fn tool_map_for(
    key_text: &[u8],
    entries: Vec<(String, Arc<str>)>,
) -> Vec<ds4_kvcache::ToolMemory> {
    let blocks = dsml_blocks(key_text);
    if blocks.is_empty() {
        return Vec::new();
    }
    let mut map: Vec<ds4_kvcache::ToolMemory> = entries
        .into_iter()
        .filter(|(id, b)| !id.is_empty() && id.len() <= 256 && blocks.contains(b.as_bytes()))
        .map(|(id, b)| ds4_kvcache::ToolMemory {
            id,
            dsml: b.to_string(),
        })
        .collect();
    if map.len() > MAX_TOOL_MAP_ENTRIES {
        map.drain(..map.len() - MAX_TOOL_MAP_ENTRIES);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

    /// spec §8.2 #60 `kv_tool_map_filters_by_dsml_text`.
    #[test]
    fn tool_map_keeps_only_blocks_present_in_the_key_text() {
        let key = format!(
            "<｜User｜>hi<｜Assistant｜></think>ok{BLOCK}<｜User｜><tool_result>1</tool_result>"
        );
        let short = "<DSML｜tool_calls><DSML｜invoke name=\"g\"></DSML｜invoke></DSML｜tool_calls>";
        let entries = vec![
            ("call_a".to_string(), Arc::from(BLOCK)),
            ("call_b".to_string(), Arc::from(BLOCK)),
            (
                "call_c".to_string(),
                Arc::from("\n\n<｜DSML｜tool_calls>other</｜DSML｜tool_calls>"),
            ),
            ("call_d".to_string(), Arc::from(short)),
            // Without its `\n\n` the same block is still found.
            ("call_e".to_string(), Arc::from(BLOCK.trim_start())),
        ];
        let map = tool_map_for(key.as_bytes(), entries.clone());
        let ids: Vec<&str> = map.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["call_a", "call_b", "call_e"]);
        assert!(map.iter().all(|t| key.contains(&t.dsml)));
        let with_short = format!("{key}x{short}");
        assert_eq!(tool_map_for(with_short.as_bytes(), entries).len(), 4);
        assert!(tool_map_for(b"no blocks here", vec![("x".into(), Arc::from(BLOCK))]).is_empty());
    }

    /// spec §8.2 #48/#53: the tail is only the new turn, whatever came before.
    #[test]
    fn tail_starts_at_the_last_eos_or_before_the_first_user() {
        let mut r = Rendered::new();
        r.push_special(SpecialKind::Bos);
        r.push_text("system");
        r.push_special(SpecialKind::User);
        r.push_text("q");
        r.push_special(SpecialKind::Assistant);
        r.push_special(SpecialKind::ThinkEnd);
        r.push_text("calls");
        r.push_special(SpecialKind::Eos);
        r.push_special(SpecialKind::User);
        r.push_text("<tool_result>1</tool_result>");
        r.push_special(SpecialKind::Assistant);
        r.push_special(SpecialKind::Think);
        let t = ToolTail::from_rendered(&r, vec!["a".into()], vec![]).unwrap();
        assert_eq!(
            t.rendered.text(),
            "<｜end▁of▁sentence｜><｜User｜><tool_result>1</tool_result><｜Assistant｜><think>"
        );
        assert!(t.names(&["a".to_string()]));
        assert!(!t.names(&["a".to_string(), "b".to_string()]));
        assert!(!t.names(&[]));
        // No assistant turn replayed: EOS, then from the first USER (the system block is skipped).
        let mut only = Rendered::new();
        only.push_special(SpecialKind::Bos);
        only.push_text("system");
        only.push_special(SpecialKind::User);
        only.push_text("<tool_result>1</tool_result>");
        only.push_special(SpecialKind::Assistant);
        only.push_special(SpecialKind::Think);
        let t = ToolTail::from_rendered(&only, vec!["a".into()], vec!["b".into()]).unwrap();
        assert!(t
            .rendered
            .text()
            .starts_with("<｜end▁of▁sentence｜><｜User｜><tool_result>"));
        assert!(t.names(&["b".to_string()]));
        assert!(ToolTail::from_rendered(&only, vec![], vec![]).is_none());
    }
}
