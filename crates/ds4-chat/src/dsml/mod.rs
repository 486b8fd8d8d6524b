//! DSML, the model's tool-call syntax (spec/server.md §2.4–§2.6, §3).
//!
//! * [`parse_generated_message`]: a finished generation -> reasoning, content, tool calls (§3.1).
//! * [`StreamParser`]: the same split done incrementally while tokens stream, with the hold-back
//!   rules of §4.12 and the live argument projection of §3.7.
//! * [`DsmlTracker`]: syntax-vs-payload state used for greedy sampling on DSML syntax (§3.3).
//! * [`new_tool_call_id`]: unguessable ids (§3.4); [`ToolMemory`]: exact replay (§3.5).
//! * [`render_tool_calls`] / [`turn_suffix`]: the canonical DSML renderer (§2.5, §3.6).

mod ids;
mod memory;
mod parse;
mod render;
mod stream;
mod syntax;
mod track;

pub use ids::{new_item_id, new_tool_call_id, IdKind};
pub use memory::{ToolMemory, ToolMemoryStats, TOOL_MEMORY_MAX_BYTES, TOOL_MEMORY_MAX_IDS};
pub use parse::{parse_generated_message, ParsedCall, ParsedMessage};
pub use render::{escape_tool_result, render_tool_calls, turn_suffix, wrap_tool_result};
pub use stream::{StreamConfig, StreamEvent, StreamParser};
pub use track::{DecodeState, DsmlTracker};

/// The three DSML spellings (spec §2.4). A block never mixes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// `<｜DSML｜tool_calls>`: canonical.
    Full,
    /// `<DSML｜tool_calls>`: first bar omitted.
    Short,
    /// `<tool_calls>`: plain XML.
    Xml,
}
