//! spec §3.1: parsing a finished generation.

use super::Syntax;
use crate::DsmlError;

/// One parsed tool call (no id: the server assigns one, §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// Function name (entity-decoded).
    pub name: String,
    /// Arguments object as JSON text in DSML order, spelled `{"k": "v", "n": 2}` (spec §3.1 step 5).
    /// Can be invalid JSON when a `string="false"` body was not JSON; response writers re-parse and
    /// report `{}` then. Use [`ParsedCall::compact_arguments`] for the wire.
    pub arguments: String,
}

impl ParsedCall {
    /// Arguments as compact JSON (no whitespace, same key order), or `{}` if they are not valid
    /// JSON (spec §4.6.4).
    pub fn compact_arguments(&self) -> String {
        unimplemented!()
    }
}

/// Result of [`parse_generated_message`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedMessage {
    /// Text before the first `</think>` (leading `<think>` dropped); `None` when there is no `</think>`.
    pub reasoning: Option<String>,
    /// Visible text (whole raw text when there is no `</think>` or when parsing failed).
    pub content: String,
    /// Parsed calls, in order.
    pub tool_calls: Vec<ParsedCall>,
    /// Exact bytes of the block from its located start (including a leading `\n\n` when that pattern
    /// matched) through the end of the closer: what [`super::ToolMemory`] stores.
    pub raw_dsml: Option<String>,
    /// Which spelling the block used.
    pub syntax: Option<Syntax>,
    /// Set when a block was found but was malformed; content is then the whole raw text.
    pub error: Option<DsmlError>,
}

/// Splits a finished generation (everything sampled after the prompt, EOS excluded) into reasoning,
/// content and tool calls, exactly as spec §3.1. `thinking`: whether thinking was enabled for the
/// request (tool blocks are then only searched after the last `</think>`).
pub fn parse_generated_message(text: &str, thinking: bool) -> ParsedMessage {
    unimplemented!()
}
