//! [`Model`]: one opened model file, its resolved [`Config`] and its bound [`Weights`].

use std::path::Path;
use std::sync::Arc;

use ds4_gguf::GgufFile;

use crate::error::{CheckMode, LoadError};
use crate::{Config, Weights};

/// A loaded, validated model. The weights are views into `file` (mapped, never copied).
pub struct Model {
    pub file: Arc<GgufFile>,
    pub config: Config,
    pub weights: Weights,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("file", &self.file)
            .field("n_layer", &self.config.n_layer)
            .field("n_embd", &self.config.n_embd)
            .field("n_vocab", &self.config.n_vocab)
            .finish()
    }
}

impl Model {
    /// Maps `path` and validates it (see [`Config::from_gguf`] for the strict/tiny rule).
    pub fn open(path: impl AsRef<Path>) -> Result<Model, LoadError> {
        Model::from_file(Arc::new(GgufFile::open(path)?))
    }

    /// A model over GGUF bytes held in memory (synthetic models in tests and benchmarks).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model, LoadError> {
        Model::from_file(Arc::new(GgufFile::from_bytes(bytes)?))
    }

    /// Validates metadata and every tensor of an already-parsed file, reporting all problems of
    /// both in one error.
    pub fn from_file(file: Arc<GgufFile>) -> Result<Model, LoadError> {
        let (config, mode, mut problems) = Config::resolve(&file);
        let weights = config
            .as_ref()
            .and_then(|cfg| Weights::bind(&file, cfg, mode, &mut problems));
        match (config, weights) {
            (Some(config), Some(weights)) if problems.is_empty() => Ok(Model {
                file,
                config,
                weights,
            }),
            _ => Err(LoadError::Invalid { mode, problems }),
        }
    }

    /// "Quant bits" of the routed experts, detected from layer 0's gate tensor as ds4 does
    /// (spec/server.md §1.9; recorded in disk cache files): 2 for IQ2_XXS/Q2_K, 4 for Q4_K, and the
    /// storage width (8, 16, 32) for small models with Q8_0/F16/F32 experts.
    pub fn expert_quant_bits(&self) -> u32 {
        use ds4_gguf::TensorType::*;
        match self.weights.layers.first().map(|l| l.ffn_gate_exps.ty()) {
            Some(Iq2Xxs | Q2K) => 2,
            Some(Q4K) => 4,
            Some(Q8_0 | Q8K) => 8,
            Some(F16 | Bf16) => 16,
            Some(F32 | I32) | None => 32,
        }
    }

    /// Which rule set this model passed.
    pub fn check_mode(&self) -> CheckMode {
        if self.config.is_real_width() {
            CheckMode::Strict
        } else {
            CheckMode::Tiny
        }
    }
}
