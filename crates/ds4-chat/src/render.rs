//! spec/server.md §2: chat prompt rendering, thinking modes, tools text, DSML history.

use crate::dsml::{escape_tool_result, render_tool_calls};
use crate::tokenizer::{split_specials, SpecialKind};

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
        self != ThinkMode::None
    }

    /// Applies the 393216 rule: `Max` becomes `High` when `ctx < THINK_MAX_MIN_CTX`.
    /// Returns the mode to render with; the CLI warns when it differs from `self`.
    pub fn effective(self, ctx: usize) -> ThinkMode {
        match self {
            ThinkMode::Max if ctx < THINK_MAX_MIN_CTX => ThinkMode::High,
            mode => mode,
        }
    }

    /// Log name: `none`, `high`, `max`.
    pub fn name(self) -> &'static str {
        match self {
            ThinkMode::None => "none",
            ThinkMode::High => "high",
            ThinkMode::Max => "max",
        }
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
        match name {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => Role::Other,
        }
    }

    fn is_system_like(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }

    fn is_user_like(self) -> bool {
        matches!(self, Role::User | Role::Tool | Role::Function)
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
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Special(kind) => out.push_str(kind.text()),
                Segment::Text(t) => out.push_str(t),
            }
        }
        out
    }

    /// Appends one special token.
    pub fn push_special(&mut self, kind: SpecialKind) {
        self.segments.push(Segment::Special(kind));
    }

    /// Appends untrusted text: tokenized as plain text whatever it contains.
    pub fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.segments.last_mut() {
            Some(Segment::Text(t)) => t.push_str(text),
            _ => self.segments.push(Segment::Text(text.to_owned())),
        }
    }

    /// Appends trusted template text (ours: Tools text, Think Max prefix): special spellings in
    /// it become [`Segment::Special`], as the original's rendered-chat scan would make them.
    pub fn push_template(&mut self, text: &str) {
        for seg in split_specials(text) {
            self.push_segment(seg);
        }
    }

    /// Appends a DSML block the model sampled (exact replay, spec §2.5): its `｜DSML｜` markers are
    /// the special token the model emitted; any other special spelling in it stays text, so a
    /// replayed block can never carry a role marker.
    pub fn push_sampled_dsml(&mut self, raw: &str) {
        let mut parts = raw.split(SpecialKind::Dsml.text());
        if let Some(first) = parts.next() {
            self.push_text(first);
        }
        for part in parts {
            self.push_special(SpecialKind::Dsml);
            self.push_text(part);
        }
    }

    fn push_segment(&mut self, seg: Segment) {
        match seg {
            Segment::Special(kind) => self.push_special(kind),
            Segment::Text(t) => self.push_text(&t),
        }
    }

    /// Appends all segments of `other`.
    pub fn extend(&mut self, other: &Rendered) {
        for seg in &other.segments {
            self.push_segment(seg.clone());
        }
    }
}

// ---- spec §2.3 Tools text --------------------------------------------------------------------

const TOOLS_TEXT_HEAD: &str = r#"## Tools

You have access to a set of tools to help answer the user question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as raw text and set `string="true"`. Preserve characters such as `>`, `&`, and `&&` exactly; never replace normal string characters with XML or HTML entity escapes. Only if a string value itself contains the exact closing parameter tag `</｜DSML｜parameter>`, write that tag as `&lt;/｜DSML｜parameter>` inside the value. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

"#;

const TOOLS_TEXT_TAIL: &str = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls. Use the exact parameter names from the schemas.";

/// The Tools text of spec §2.3 for the given schema lines (joined with `\n`), without a trailing
/// newline. As a plain string: the renderer splits it into template and schema segments.
pub fn tools_text(schemas: &[String]) -> String {
    let mut r = Rendered::new();
    push_tools_text(&mut r, schemas);
    r.text()
}

/// Template parts are trusted (their `<think>` and `｜DSML｜` spellings are specials, as in the
/// original); the schema lines come from the client and stay text.
fn push_tools_text(r: &mut Rendered, schemas: &[String]) {
    r.push_template(TOOLS_TEXT_HEAD);
    for (i, schema) in schemas.iter().enumerate() {
        if i > 0 {
            r.push_text("\n");
        }
        r.push_text(schema);
    }
    r.push_template(TOOLS_TEXT_TAIL);
}

// ---- spec §2.2 Server renderer ----------------------------------------------------------------

/// Renders a chat (spec §2.2 exact algorithm). `tool_schemas` are the raw JSON schema lines of
/// spec §4.6.3; pass an empty slice when tools are not active (none given, or `tool_choice:"none"`).
/// `think` must already be the effective mode ([`ThinkMode::effective`]).
pub fn render_chat(messages: &[Message], tool_schemas: &[String], think: ThinkMode) -> Rendered {
    let tools_active = !tool_schemas.is_empty();
    let thinking = think.is_enabled();
    let last_user_idx = messages.iter().rposition(|m| m.role.is_user_like());
    let tool_context = tools_active
        || messages.iter().any(|m| {
            (m.role == Role::Assistant && !m.tool_calls.is_empty())
                || matches!(m.role, Role::Tool | Role::Function)
        });

    let mut r = Rendered::new();
    r.push_special(SpecialKind::Bos);
    if think == ThinkMode::Max {
        r.push_template(THINK_MAX_PREFIX);
    }
    // Step 1: the system block, tools text first so a cold-cache trim cuts client text instead.
    let mut system_empty = true;
    if tools_active {
        push_tools_text(&mut r, tool_schemas);
        system_empty = false;
    }
    for m in messages.iter().filter(|m| m.role.is_system_like()) {
        if !system_empty {
            r.push_text("\n\n");
        }
        r.push_text(&m.content);
        // An empty first system message leaves the block empty: no separator before the next.
        system_empty = system_empty && m.content.is_empty();
    }

    // Step 3.
    let mut pending_assistant = false;
    let mut pending_tool_result = false;
    for (idx, m) in messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer | Role::Other => {}
            Role::User => {
                r.push_special(SpecialKind::User);
                r.push_text(&m.content);
                pending_assistant = true;
                pending_tool_result = false;
            }
            Role::Tool | Role::Function => {
                if !pending_tool_result {
                    r.push_special(SpecialKind::User);
                }
                r.push_text("<tool_result>");
                r.push_text(&escape_tool_result(&m.content));
                r.push_text("</tool_result>");
                pending_assistant = true;
                pending_tool_result = true;
            }
            Role::Assistant => {
                if pending_assistant {
                    r.push_special(SpecialKind::Assistant);
                    let after_last_user = last_user_idx.is_none_or(|u| idx > u);
                    if thinking && (tool_context || after_last_user) {
                        r.push_special(SpecialKind::Think);
                        r.push_text(&m.reasoning);
                    }
                    r.push_special(SpecialKind::ThinkEnd);
                }
                r.push_text(&m.content);
                push_calls(&mut r, m);
                r.push_special(SpecialKind::Eos);
                pending_assistant = false;
                pending_tool_result = false;
            }
        }
    }
    // Step 4.
    if pending_assistant {
        push_assistant_open(&mut r, think);
    }
    r
}

/// Exact replay when the memory found the sampled block, else the canonical renderer.
fn push_calls(r: &mut Rendered, m: &Message) {
    if m.tool_calls.is_empty() {
        return;
    }
    match &m.raw_dsml {
        Some(raw) => r.push_sampled_dsml(raw),
        None => r.extend(&render_tool_calls(&m.tool_calls)),
    }
}

fn push_assistant_open(r: &mut Rendered, think: ThinkMode) {
    r.push_special(SpecialKind::Assistant);
    r.push_special(if think.is_enabled() {
        SpecialKind::Think
    } else {
        SpecialKind::ThinkEnd
    });
}

// ---- spec §2.9 Renderings outside the chat renderer ---------------------------------------------

/// `/v1/completions` rendering (spec §2.9): BOS, [Think Max prefix], [`COMPLETION_SYSTEM_TEXT`],
/// USER, prompt, ASSISTANT, `<think>` or `</think>`.
pub fn render_completion(prompt: &str, think: ThinkMode) -> Rendered {
    render_cli_prompt(Some(COMPLETION_SYSTEM_TEXT), prompt, think)
}

/// CLI one-shot rendering (spec §2.9): BOS, [Think Max prefix], system text (if `Some` and not
/// empty), USER, prompt, ASSISTANT, think marker. Prompt and system are plain text. (The CLI's own
/// "prompt starts with BOS means pre-rendered" rule is the caller's: use
/// [`crate::Tokenizer::encode_rendered`] then.)
pub fn render_cli_prompt(system: Option<&str>, prompt: &str, think: ThinkMode) -> Rendered {
    let mut r = Rendered::new();
    r.push_special(SpecialKind::Bos);
    if think == ThinkMode::Max {
        r.push_template(THINK_MAX_PREFIX);
    }
    if let Some(system) = system {
        r.push_text(system);
    }
    r.push_special(SpecialKind::User);
    r.push_text(prompt);
    push_assistant_open(&mut r, think);
    r
}
