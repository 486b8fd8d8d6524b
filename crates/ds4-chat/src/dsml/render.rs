//! spec §2.5, §2.6, §3.6: rendering tool calls and results back into a prompt.

use crate::json;
use crate::render::{Rendered, ToolCall};
use crate::tokenizer::SpecialKind;

const PARAM_CLOSE: &str = "</｜DSML｜parameter>";

/// Entity-escapes an attribute value (spec §2.4): `&`, `<`, `>`, `"`.
pub(crate) fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Pushes a parameter value, writing each exact closing tag inside it as `escape` + `/｜DSML｜parameter>`.
/// The escape is ours, so its marker is a template special: that is how the original tokenizes it
/// and how the model writes it. Everything else in the value stays text.
fn push_value(r: &mut Rendered, value: &str, escape: &str) {
    let mut rest = value;
    while let Some(at) = rest.find(PARAM_CLOSE) {
        r.push_text(&rest[..at]);
        r.push_text(escape);
        r.push_text("/");
        r.push_special(SpecialKind::Dsml);
        r.push_text("parameter>");
        rest = &rest[at + PARAM_CLOSE.len()..];
    }
    r.push_text(rest);
}

fn push_param(r: &mut Rendered, key: &str, is_string: bool) {
    r.push_text("<");
    r.push_special(SpecialKind::Dsml);
    r.push_text("parameter name=\"");
    r.push_text(&escape_attr(key));
    r.push_text(if is_string {
        "\" string=\"true\">"
    } else {
        "\" string=\"false\">"
    });
}

fn push_tag(r: &mut Rendered, open: &str, rest: &str) {
    r.push_text(open);
    r.push_special(SpecialKind::Dsml);
    r.push_text(rest);
}

/// The canonical DSML block for `calls` (spec §2.5 "canonical fallback"), starting with `\n\n` and
/// ending right after `</｜DSML｜tool_calls>`. Tags are template segments; names, keys and values
/// are text. Empty when `calls` is empty.
pub fn render_tool_calls(calls: &[ToolCall]) -> Rendered {
    let mut r = Rendered::new();
    if calls.is_empty() {
        return r;
    }
    push_tag(&mut r, "\n\n<", "tool_calls>\n");
    for call in calls {
        push_tag(&mut r, "<", "invoke name=\"");
        r.push_text(&escape_attr(&call.name));
        r.push_text("\">\n");
        match json::object_members(&call.arguments) {
            Some(members) => {
                for m in members {
                    match m
                        .value
                        .starts_with('"')
                        .then(|| json::decode_string(m.value))
                        .flatten()
                    {
                        Some(s) => {
                            push_param(&mut r, &m.key, true);
                            push_value(&mut r, &s, "&lt;");
                        }
                        None => {
                            push_param(&mut r, &m.key, false);
                            push_value(&mut r, &json::minify(m.value), "\\u003c");
                        }
                    }
                    push_tag(&mut r, "</", "parameter>\n");
                }
            }
            None => {
                push_param(&mut r, "arguments", true);
                push_value(&mut r, &call.arguments, "&lt;");
                push_tag(&mut r, "</", "parameter>\n");
            }
        }
        push_tag(&mut r, "</", "invoke>\n");
    }
    push_tag(&mut r, "</", "tool_calls>");
    r
}

/// Tool output as it goes between `<tool_result>` and `</tool_result>` (spec §2.6): only
/// `</tool_result>` is escaped, as `&lt;/tool_result>`.
pub fn escape_tool_result(output: &str) -> String {
    output.replace("</tool_result>", "&lt;/tool_result>")
}

/// A whole `<tool_result>…</tool_result>` element for `output` (spec §2.6). The Anthropic parser
/// appends these to a user message's content (spec §4.9.2).
pub fn wrap_tool_result(output: &str) -> String {
    format!("<tool_result>{}</tool_result>", escape_tool_result(output))
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
    let mut r = Rendered::new();
    if thinking {
        r.push_text(reasoning);
        r.push_special(SpecialKind::ThinkEnd);
    }
    r.push_text(content);
    match raw_dsml {
        Some(raw) => r.push_sampled_dsml(raw),
        None => r.extend(&render_tool_calls(calls)),
    }
    r.push_special(SpecialKind::Eos);
    r
}
