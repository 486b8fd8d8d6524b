//! spec §2.5, §2.6, §3.6: rendering tool calls and results back into a prompt.

use crate::render::{Rendered, ToolCall};

/// The canonical DSML block for `calls` (spec §2.5 "canonical fallback"), starting with `\n\n` and
/// ending right after `</｜DSML｜tool_calls>`. Tags are template segments; names, keys and values
/// are text. Empty when `calls` is empty.
pub fn render_tool_calls(calls: &[ToolCall]) -> Rendered {
    unimplemented!()
}

/// Tool output as it goes between `<tool_result>` and `</tool_result>` (spec §2.6): only
/// `</tool_result>` is escaped, as `&lt;/tool_result>`.
pub fn escape_tool_result(output: &str) -> String {
    unimplemented!()
}

/// What the next request is expected to render for a finished assistant turn, appended after this
/// turn's prompt (spec §3.6 step 1): `reasoning + </think>` when thinking, then content, the DSML
/// block (`raw_dsml` verbatim when given, else canonical from `calls`), then EOS.
pub fn turn_suffix(
    thinking: bool,
    reasoning: &str,
    content: &str,
    calls: &[ToolCall],
    raw_dsml: Option<&str>,
) -> Rendered {
    unimplemented!()
}
