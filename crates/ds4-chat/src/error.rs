use thiserror::Error;

/// Everything that can go wrong in `ds4-chat`.
#[derive(Debug, Error)]
pub enum Error {
    /// One of the seven protocol specials of spec/server.md §1.5 is not in the vocabulary.
    #[error("required tokenizer token is missing: {0}")]
    MissingSpecial(&'static str),
    /// A tokenizer metadata key is absent or has the wrong type.
    #[error("tokenizer metadata {key}: {reason}")]
    BadVocab {
        /// GGUF key (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`) or builtin data file.
        key: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The GGUF reader failed.
    #[error(transparent)]
    Gguf(#[from] ds4_gguf::Error),
    /// A DSML tool-call block could not be parsed (spec/server.md §3.1).
    #[error(transparent)]
    Dsml(#[from] DsmlError),
}

/// Why a DSML block did not parse, and where (spec/server.md §3.1 "any other content ... makes the
/// whole parse fail").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid DSML at byte {offset}: {reason}")]
pub struct DsmlError {
    /// Byte offset into the parsed text where parsing stopped.
    pub offset: usize,
    /// What was expected there.
    pub reason: &'static str,
}
