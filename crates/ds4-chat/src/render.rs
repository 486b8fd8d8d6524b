//! spec/server.md §2: chat prompt rendering, thinking modes, tools text, DSML history.

use crate::tokenizer::SpecialKind;

/// Thinking mode of one request (spec §2.1). `High` and `Max` enable thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ThinkMode {
    /// Non-thinking: the assistant turn opens with `</think>`.
    None,
    /// Thinking: the assistant turn opens with `<think>` (the server default).
    #[default]
    High,
    /// Thinking plus the Think Max prompt prefix after BOS; only with a context of
    /// at least [`THINK_MAX_MIN_CTX`] tokens (see [`ThinkMode::effective`]).
    Max,
}

/// Smallest context size (tokens) at which Think Max is honoured (spec §2.1 "393216 rule").
pub const THINK_MAX_MIN_CTX: usize = 393216;

/// The Think Max prefix inserted right after BOS (spec §2.1, exact bytes, ends with `\n\n`).
pub const THINK_MAX_PREFIX: &str = "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

/// System text of `/v1/completions` and the CLI default (spec §2.9; no trailing period).
pub const COMPLETION_SYSTEM_TEXT: &str = "You are a helpful assistant";

impl ThinkMode {
    /// Whether the model is asked to think (`High` or `Max`).
    pub fn is_enabled(self) -> bool {
        unimplemented!()
    }

    /// Applies the 393216 rule: `Max` becomes `High` when `ctx < THINK_MAX_MIN_CTX`.
    /// Returns the mode to render with; the CLI warns when it differs from `self`.
    pub fn effective(self, ctx: usize) -> ThinkMode {
        unimplemented!()
    }

    /// Log name: `none`, `high`, `max`.
    pub fn name(self) -> &'static str {
        unimplemented!()
    }
}

/// Message role after protocol parsing (spec §2.2). Unknown roles are kept as `Other` and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `system`: goes to the system block.
    System,
    /// `developer`: goes to the system block.
    Developer,
    /// `user`
    User,
    /// `assistant`
    Assistant,
    /// `tool`: rendered as a `<tool_result>` inside a user turn.
    Tool,
    /// `function`: same as `Tool`.
    Function,
    /// Anything else: ignored by the renderer.
    Other,
}

impl Role {
    /// Parses a wire role name; unknown names give `Other`.
    pub fn parse(name: &str) -> Role {
        unimplemented!()
    }
}

/// One tool call of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    /// Client-visible id (`call_…` / `toolu_…`), used for the replay memory lookup.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as JSON text (the decoded string when the client sent a JSON string). The canonical
    /// renderer keeps this text's key order; anything that is not a JSON object is rendered as one
    /// `arguments` string parameter (spec §2.5).
    pub arguments: String,
}

/// One chat message after protocol parsing (spec §2.2, §4.6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Role.
    pub role: Role,
    /// Content text (array parts already concatenated).
    pub content: String,
    /// Reasoning text; empty when none.
    pub reasoning: String,
    /// Tool calls of an assistant message, in order.
    pub tool_calls: Vec<ToolCall>,
    /// `tool_call_id` of a tool message (not rendered; used by the server to validate ids).
    pub tool_call_id: Option<String>,
    /// Exact sampled DSML block for this message's calls (from [`crate::dsml::ToolMemory`]); when set
    /// it is emitted verbatim instead of the canonical rendering (spec §2.5, §3.5).
    pub raw_dsml: Option<String>,
}

impl Message {
    /// A message with only a role and content.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            reasoning: String::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            raw_dsml: None,
        }
    }
}

/// A piece of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A protocol special placed by the template: always exactly one token.
    Special(SpecialKind),
    /// Text that is tokenized as plain text: a special spelling inside it stays ordinary text.
    Text(String),
}

/// A rendered prompt: the structure the tokenizer needs plus the exact bytes of spec §2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    /// Segments in order; adjacent `Text` segments are merged by the `push_*` methods.
    pub segments: Vec<Segment>,
}

impl Rendered {
    /// Empty prompt.
    pub fn new() -> Rendered {
        Rendered::default()
    }

    /// The exact rendered bytes of spec §2 (specials spelled out). Use this for cache keys, traces
    /// and text-prefix matching.
    pub fn text(&self) -> String {
        unimplemented!()
    }

    /// Appends one special token.
    pub fn push_special(&mut self, kind: SpecialKind) {
        unimplemented!()
    }

    /// Appends untrusted text: tokenized as plain text whatever it contains.
    pub fn push_text(&mut self, text: &str) {
        unimplemented!()
    }

    /// Appends trusted template text (ours, or DSML the model itself sampled): special spellings in
    /// it become [`Segment::Special`], as the original's rendered-chat scan would make them.
    pub fn push_template(&mut self, text: &str) {
        unimplemented!()
    }

    /// Appends all segments of `other`.
    pub fn extend(&mut self, other: &Rendered) {
        unimplemented!()
    }
}

/// The Tools text of spec §2.3 for the given schema lines (joined with `\n`), without a trailing
/// newline. As a plain string: the renderer splits it into template and schema segments.
pub fn tools_text(schemas: &[String]) -> String {
    unimplemented!()
}

/// Renders a chat (spec §2.2 exact algorithm). `tool_schemas` are the raw JSON schema lines of
/// spec §4.6.3; pass an empty slice when tools are not active (none given, or `tool_choice:"none"`).
/// `think` must already be the effective mode ([`ThinkMode::effective`]).
pub fn render_chat(messages: &[Message], tool_schemas: &[String], think: ThinkMode) -> Rendered {
    unimplemented!()
}

/// `/v1/completions` rendering (spec §2.9): BOS, [Think Max prefix], [`COMPLETION_SYSTEM_TEXT`],
/// USER, prompt, ASSISTANT, `<think>` or `</think>`.
pub fn render_completion(prompt: &str, think: ThinkMode) -> Rendered {
    unimplemented!()
}

/// CLI one-shot rendering (spec §2.9): BOS, [Think Max prefix], system text (if `Some` and not
/// empty), USER, prompt, ASSISTANT, think marker. Prompt and system are plain text. (The CLI's own
/// "prompt starts with BOS means pre-rendered" rule is the caller's: use
/// [`crate::Tokenizer::encode_rendered`] then.)
pub fn render_cli_prompt(system: Option<&str>, prompt: &str, think: ThinkMode) -> Rendered {
    unimplemented!()
}
