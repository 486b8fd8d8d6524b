//! spec §3.4: tool call ids.

/// Which id family to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `call_` + 32 lowercase hex (OpenAI chat and Responses).
    Call,
    /// `toolu_` + 32 lowercase hex (Anthropic).
    Anthropic,
}

/// A fresh id from 16 bytes of OS randomness. `taken` is asked about each candidate (ids of the
/// same message, ids already in tool memory) and a new one is drawn while it answers true.
pub fn new_tool_call_id(kind: IdKind, taken: impl Fn(&str) -> bool) -> String {
    unimplemented!()
}

/// Responses function-call item id: `fc_` + 24 lowercase hex.
pub fn new_item_id() -> String {
    unimplemented!()
}
