//! GGUF v3 container: a bounds-checked reader over a memory map (or owned bytes) and a streaming
//! writer, plus the one table of tensor types ([`TensorType`]) every other crate sizes blocks with.
//!
//! Owns: the file format, and nothing about DeepSeek V4 (tensor names and metadata meaning live in
//! `ds4-model`). Design decision: every count, length and offset read from a file is checked against
//! the file's size *before* it is used to index or allocate, so a hostile file yields a typed
//! [`Error`] naming the key, tensor or offset, never a panic or a huge allocation.

mod types;
pub use types::TensorType;

mod error;
pub use error::Error;

mod value;
pub use value::{Value, ValueType};

mod reader;
pub use reader::{GgufFile, TensorInfo};

mod writer;
pub use writer::{GgufWriter, TensorSpec};

/// GGUF magic, "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The only GGUF version this crate reads and writes.
pub const GGUF_VERSION: u32 = 3;
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
