//! Engine (model + backend) and [`Session`] (one timeline): the narrow boundary the CLI and the
//! server program against, so neither depends on tensor internals.
//!
//! Owns: the token list whose KV state is resident, the logits for the next token, prefix reuse
//! between consecutive prompts, and session snapshots. Refuses: HTTP, chat templates and
//! tokenization (callers pass token ids), and the forward pass (a [`Backend`] does it).
//!
//! Design decision: a session never rewinds by truncating its token list. The compressor
//! frontiers and append-only row counters encode the exact prefix (spec/model.md §4.4), so
//! when a new prompt diverges inside the live tokens the session restores a snapshot taken at
//! or before the divergence point, or rebuilds from token 0.

pub mod engine;
pub mod sampler;
pub mod session;
pub mod testing;

pub use engine::{BackendFactory, BackendKind, Engine, EngineOptions, ModelSource};
pub use session::{Session, SessionSnapshot, SyncProgress, SyncStats};

use ds4_model::BackendError;

/// Errors of the engine layer (STYLE §2.6): context full, backend failures, model loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The prompt (or the prompt plus generated tokens) does not fit the context.
    /// spec/server.md §5.1: a prompt must be strictly shorter than the context.
    #[error("prompt exceeds context: {needed} positions needed, context is {ctx}")]
    ContextFull { needed: usize, ctx: usize },
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// A snapshot taken from a session of another shape (vocabulary or context).
    #[error("snapshot does not fit this session: {0}")]
    BadSnapshot(String),
    /// Decoding needs logits, but the session holds no tokens yet.
    #[error("session is empty: sync a prompt before decoding")]
    Empty,
    #[error("model: {0}")]
    Model(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
