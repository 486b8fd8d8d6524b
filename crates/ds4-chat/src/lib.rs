//! `ds4-chat`: everything between JSON-shaped chat messages and token ids, for DeepSeek V4 Flash.
//!
//! Owns the byte-level BPE tokenizer (spec/server.md §1), the chat renderer with its thinking modes
//! (§2), and DSML, the model's tool-call syntax (§3): parsing finished generations, an incremental
//! stream parser, the syntax-vs-payload tracker the sampler consults, tool-call ids, the exact-replay
//! memory and the canonical DSML renderer. It refuses to own HTTP, JSON request shapes or sampling:
//! the server turns requests into [`Message`]s, and the engine asks [`dsml::DsmlTracker`] whether the
//! next token is syntax.
//!
//! The design decision a newcomer would question: the renderer does not return a string but a
//! [`Rendered`] list of [`Segment`]s. The original renders one string and then re-scans it for the
//! seven special spellings, so a user who types `<｜User｜>` forges a control token. Here the
//! template's own markers become [`Segment::Special`] and every byte that came from a client is
//! [`Segment::Text`], tokenized with [`Tokenizer::encode_segments`] as plain text. The exact text of
//! spec §2 is still available ([`Rendered::text`]) for cache keys and traces.

#![deny(missing_docs)]

pub mod dsml;
mod error;
mod json;
mod pretok;
mod render;
mod tokenizer;

pub use error::{DsmlError, Error};
pub use render::{
    render_chat, render_cli_prompt, render_completion, tools_text, Message, Rendered, Role,
    Segment, ThinkMode, ToolCall, COMPLETION_SYSTEM_TEXT, THINK_MAX_MIN_CTX, THINK_MAX_PREFIX,
};
pub use tokenizer::{
    builtin_vocab, utf8_stream_safe_len, SpecialKind, SpecialTokens, StreamDecoder, Tokenizer,
};
