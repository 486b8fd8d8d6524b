use crate::TensorType;

/// Everything that can be wrong with a GGUF file. Every variant names where: the byte offset, the
/// metadata key or the tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic {found:#010x} at offset 0 (expected 0x46554747, \"GGUF\")")]
    BadMagic { found: u32 },
    #[error("unsupported GGUF version {found} (only version 3 is read)")]
    BadVersion { found: u32 },
    #[error(
        "file truncated while reading {what} at offset {at}: need {need} bytes, file has {len}"
    )]
    Truncated {
        what: String,
        at: u64,
        need: u64,
        len: u64,
    },
    #[error("metadata key {key:?} at offset {at}: {reason}")]
    BadMetadata {
        key: String,
        at: u64,
        reason: String,
    },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor {name:?} has unknown ggml type code {code}")]
    UnknownType { name: String, code: u32 },
    #[error("duplicate {kind} {name:?}")]
    Duplicate { kind: &'static str, name: String },
    #[error("{count} {what} declared at offset {at} cannot fit in a {len}-byte file")]
    ImplausibleCount {
        what: &'static str,
        count: u64,
        at: u64,
        len: u64,
    },
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("missing metadata key {key:?}")]
    MissingKey { key: String },
    #[error("writer: {0}")]
    Writer(String),
    #[error("tensor {name:?} of type {ty}: {n_elems} elements is not a whole number of {block}-element blocks")]
    PartialBlock {
        name: String,
        ty: TensorType,
        n_elems: u64,
        block: usize,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
