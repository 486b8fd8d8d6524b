//! spec §3.1: parsing a finished generation.

use super::syntax::{decode_entities, find, is_ws, parse_attrs};
use super::Syntax;
use crate::json;
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
        compact_json(&self.arguments)
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

/// Compact JSON of `text` (whitespace outside strings removed), or `{}` if it is not valid JSON.
pub(crate) fn compact_json(text: &str) -> String {
    if json::is_valid(text) {
        json::minify(text)
    } else {
        "{}".to_owned()
    }
}

/// The block start patterns of spec §3.1 step 2, in priority order.
const BLOCK_STARTS: [(&str, Syntax); 6] = [
    ("\n\n<｜DSML｜tool_calls>", Syntax::Full),
    ("<｜DSML｜tool_calls>", Syntax::Full),
    ("\n\n<DSML｜tool_calls>", Syntax::Short),
    ("<DSML｜tool_calls>", Syntax::Short),
    ("\n\n<tool_calls>", Syntax::Xml),
    ("<tool_calls>", Syntax::Xml),
];

/// Splits a finished generation (everything sampled after the prompt, EOS excluded) into reasoning,
/// content and tool calls, exactly as spec §3.1. `thinking`: whether thinking was enabled for the
/// request (tool blocks are then only searched after the last `</think>`).
pub fn parse_generated_message(text: &str, thinking: bool) -> ParsedMessage {
    // Step 1: DSML inside reasoning is never executable.
    let search_from = if thinking {
        text.rfind("</think>").map(|p| p + "</think>".len())
    } else {
        Some(0)
    };
    // Step 2: pattern priority, not earliest position.
    let found = search_from.and_then(|from| {
        BLOCK_STARTS.iter().find_map(|&(pat, syntax)| {
            find(&text.as_bytes()[from..], pat.as_bytes()).map(|p| (from + p, pat.len(), syntax))
        })
    });
    let Some((start, pat_len, syntax)) = found else {
        // Step 3.
        let (reasoning, content) = split_reasoning(text);
        return ParsedMessage {
            reasoning,
            content,
            ..ParsedMessage::default()
        };
    };
    match parse_block(text, start + pat_len, syntax) {
        Ok((calls, end)) => {
            let (reasoning, content) = split_reasoning(text[..start].trim_end_matches(is_ascii_ws));
            ParsedMessage {
                reasoning,
                content,
                tool_calls: calls,
                raw_dsml: Some(text[start..end].to_owned()),
                syntax: Some(syntax),
                error: None,
            }
        }
        Err(error) => ParsedMessage {
            reasoning: None,
            content: text.to_owned(),
            syntax: Some(syntax),
            error: Some(error),
            ..ParsedMessage::default()
        },
    }
}

fn is_ascii_ws(c: char) -> bool {
    c.is_ascii() && is_ws(c as u8)
}

/// Step 6: drop a leading `<think>`, split at the first `</think>`.
fn split_reasoning(text: &str) -> (Option<String>, String) {
    let body = text.strip_prefix("<think>").unwrap_or(text);
    match body.split_once("</think>") {
        Some((reasoning, content)) => (Some(reasoning.to_owned()), content.to_owned()),
        None => (None, text.to_owned()),
    }
}

/// Cursor over the block text with the failure reasons of spec §3.1 step 4.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    syntax: Syntax,
}

impl<'a> Cursor<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, DsmlError> {
        Err(DsmlError {
            offset: self.pos,
            reason,
        })
    }

    fn skip_ws(&mut self) {
        let b = self.text.as_bytes();
        while self.pos < b.len() && is_ws(b[self.pos]) {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn at_open(&self, tag: &str) -> bool {
        self.rest()
            .strip_prefix(self.syntax.open())
            .is_some_and(|r| r.starts_with(tag))
    }

    /// Consumes `OPEN tag ... >` and returns its attributes.
    fn open_tag(&mut self, tag: &str) -> Result<super::syntax::Attrs, DsmlError> {
        self.pos += self.syntax.open().len() + tag.len();
        let Some(gt) = self.rest().find('>') else {
            return self.fail("tag without '>'");
        };
        let attrs_text = &self.rest()[..gt];
        let Some(attrs) = parse_attrs(attrs_text) else {
            return self.fail("malformed attributes");
        };
        self.pos += gt + 1;
        Ok(attrs)
    }

    /// Value bytes up to the next parameter closer, which is consumed.
    fn param_body(&mut self) -> Result<&'a str, DsmlError> {
        let close = self.syntax.param_close();
        let Some(end) = self.rest().find(close) else {
            return self.fail("missing parameter closer");
        };
        let body = &self.rest()[..end];
        self.pos += end + close.len();
        Ok(body)
    }
}

/// A parameter's value as JSON text.
fn param_json(body: &str, string_attr: Option<&str>) -> String {
    match string_attr {
        None | Some("true") => {
            let mut out = String::from('"');
            json::escape_into(&decode_entities(body), &mut out);
            out.push('"');
            out
        }
        Some(_) => {
            let trimmed = body.trim_matches(is_ascii_ws);
            if trimmed.is_empty() {
                "null".to_owned()
            } else if json::is_valid(trimmed) {
                json::minify(trimmed)
            } else {
                // Copied verbatim: the assembled arguments become invalid JSON and every response
                // writer reports `{}` (spec §3.1).
                body.to_owned()
            }
        }
    }
}

fn push_member(args: &mut String, sep: &str, key: &str, value: &str) {
    if args.len() > 1 {
        args.push_str(sep);
    }
    args.push('"');
    json::escape_into(key, args);
    args.push_str(if sep == ", " { "\": " } else { "\":" });
    args.push_str(value);
}

/// Step 4: parses from just after the opener; returns the calls and the end of the closer.
fn parse_block(
    text: &str,
    from: usize,
    syntax: Syntax,
) -> Result<(Vec<ParsedCall>, usize), DsmlError> {
    let mut c = Cursor {
        text,
        pos: from,
        syntax,
    };
    let mut calls = Vec::new();
    loop {
        c.skip_ws();
        if c.eat(syntax.block_close()) {
            return Ok((calls, c.pos));
        }
        if c.rest().is_empty() {
            return c.fail("end of text before the block closer");
        }
        if !c.at_open("invoke") {
            return c.fail("expected an invoke tag");
        }
        let attrs = c.open_tag("invoke")?;
        let Some(name) = attrs.name else {
            return c.fail("invoke without a name");
        };
        let mut args = String::from("{");
        loop {
            c.skip_ws();
            if c.eat(syntax.invoke_close()) {
                break;
            }
            if !c.at_open("parameter") {
                return c.fail("expected a parameter tag or the invoke closer");
            }
            let attrs = c.open_tag("parameter")?;
            let Some(key) = attrs.name else {
                return c.fail("parameter without a name");
            };
            let save = c.pos;
            c.skip_ws();
            if attrs.string.is_none() && c.at_open("parameter") {
                // Loose nesting recovery: an object of leaf parameters; the outer closer is optional.
                let mut object = String::from("{");
                while c.at_open("parameter") {
                    let leaf = c.open_tag("parameter")?;
                    let Some(leaf_key) = leaf.name else {
                        return c.fail("parameter without a name");
                    };
                    let body = c.param_body()?;
                    push_member(
                        &mut object,
                        ",",
                        &leaf_key,
                        &param_json(body, leaf.string.as_deref()),
                    );
                    c.skip_ws();
                }
                object.push('}');
                c.eat(syntax.param_close());
                push_member(&mut args, ", ", &key, &object);
            } else {
                c.pos = save;
                let body = c.param_body()?;
                push_member(
                    &mut args,
                    ", ",
                    &key,
                    &param_json(body, attrs.string.as_deref()),
                );
            }
        }
        args.push('}');
        calls.push(ParsedCall {
            name,
            arguments: args,
        });
    }
}
