//! DeepSeek V4 Flash as data: [`Config`] resolved once from `deepseek4.*` GGUF metadata (spec/model.md
//! §1.4) and validated (strictly, listing every mismatch, for a file that claims the real shape,
//! i.e. the real widths n_embd 4096 and n_vocab 129280 with any layer count 1..=43; within the §1.5
//! rules for tiny shapes); [`Weights`], typed views of every tensor (§2) into the
//! mapped file; the KV state types (§4); the one [`Backend`] trait; and synthetic models (`synth`).
//!
//! Owns: tensor names, metadata keys and the layout table. Refuses: arithmetic (backends) and
//! sessions (engine). Design decision: tensors are [`Tensor`] values that keep the file alive
//! through an `Arc`, so weights are `'static`, owned by backends, and never copied.

pub mod backend;
pub mod config;
pub mod error;
pub mod kv;
pub mod layout;
pub mod memory;
pub mod model;
pub mod synth;
pub mod weights;

pub use backend::{Backend, BackendError, LayerProbe, Logits};
pub use config::{AttnKind, Config, RopeParams, Routing};
pub use error::{CheckMode, LoadError, Problem};
pub use kv::{CompressorFrontier, KvSnapshot, LayerKvSnapshot};
pub use memory::{kv_memory_estimate, KvMemoryEstimate};
pub use model::Model;
pub use weights::{
    CompressorWeights, HcWeights, IndexerWeights, LayerAttnExtra, LayerWeights, OutputWeights,
    Tensor, Weights,
};
