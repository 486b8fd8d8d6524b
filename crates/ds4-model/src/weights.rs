//! Typed views of every tensor (spec/model.md §2), bound once by name.
//! IMPLEMENTATION OWNER: ds4-model helper (binding + layout validation). Field names are the GGUF
//! names without `blk.N.` / `.weight` (spec §2.3), so a grep from the spec lands here.

use std::sync::Arc;

use ds4_gguf::{GgufFile, TensorInfo, TensorType};

/// A view of one tensor's bytes. Keeps the file alive; cloning is cheap. Shapes are GGUF order
/// (`dims[0]` contiguous): a 2-D weight `[n_in, n_out]` is `n_out` rows of `n_in` values.
#[derive(Clone)]
pub struct Tensor {
    file: Arc<GgufFile>,
    info: TensorInfo,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {} {:?})", self.info.name, self.info.ty, self.info.dims)
    }
}

impl Tensor {
    /// The named tensor of `file`, if present.
    pub fn bind(file: &Arc<GgufFile>, name: &str) -> Option<Tensor> {
        file.tensor(name).map(|info| Tensor { file: file.clone(), info: info.clone() })
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ty(&self) -> TensorType {
        self.info.ty
    }
    pub fn dims(&self) -> &[u64] {
        &self.info.dims
    }
    /// Elements per row (`dims[0]`).
    pub fn n_in(&self) -> usize {
        self.info.dims[0] as usize
    }
    /// Rows per matrix (`dims[1]`, 1 for vectors).
    pub fn n_out(&self) -> usize {
        self.info.dims.get(1).copied().unwrap_or(1) as usize
    }
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.info.row_bytes() as usize
    }
    /// All bytes of the tensor.
    pub fn bytes(&self) -> &[u8] {
        self.file.tensor_data(&self.info)
    }
    /// Bytes of row `r` (of the flattened row list).
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }
    /// Bytes of expert `e` of a 3-D `[n_in, n_out, n_expert]` tensor.
    pub fn expert(&self, e: usize) -> &[u8] {
        let per = self.row_bytes() * self.n_out();
        &self.bytes()[e * per..(e + 1) * per]
    }
    /// The values of an F32 tensor.
    pub fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.ty(), TensorType::F32, "invariant: f32s() on {}", self.name());
        self.bytes().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
    /// The values of an I32 tensor.
    pub fn i32s(&self) -> Vec<i32> {
        assert_eq!(self.ty(), TensorType::I32, "invariant: i32s() on {}", self.name());
        self.bytes().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// A layer's hyper-connection mixer (`hc_attn_*` or `hc_ffn_*`).
#[derive(Debug, Clone)]
pub struct HcWeights {
    /// F16 `[n_hc·n_embd, hc_mix]`
    pub fn_: Tensor,
    /// F32 `[3]`: (s_pre, s_post, s_comb)
    pub scale: Tensor,
    /// F32 `[hc_mix]`
    pub base: Tensor,
}

/// A compressor (`attn_compressor_*` or `indexer_compressor_*`), spec §2.4.
#[derive(Debug, Clone)]
pub struct CompressorWeights {
    /// F16 `[coff·D, R]`: row p is the APE for phase p.
    pub ape: Tensor,
    /// F16 `[n_embd, coff·D]`
    pub kv: Tensor,
    /// F16 `[n_embd, coff·D]`
    pub gate: Tensor,
    /// F32 `[D]`
    pub norm: Tensor,
}

/// The ratio-4 indexer (spec §2.4, §3.5 A10).
#[derive(Debug, Clone)]
pub struct IndexerWeights {
    /// `indexer.attn_q_b`, F16 `[q_lora_rank, n_idx_head·idx_head_dim]`
    pub attn_q_b: Tensor,
    /// `indexer.proj`, F16 `[n_embd, n_idx_head]`
    pub proj: Tensor,
    /// `indexer_compressor_*`
    pub compressor: CompressorWeights,
}

/// Layer-kind-specific tensors (STYLE §2.2: in the variant that needs them, not behind Options).
#[derive(Debug, Clone)]
pub enum LayerAttnExtra {
    Window,
    Compressed4 { compressor: CompressorWeights, indexer: IndexerWeights },
    CompressedN { compressor: CompressorWeights },
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub hc_attn: HcWeights,
    pub attn_norm: Tensor,
    pub attn_q_a: Tensor,
    pub attn_q_a_norm: Tensor,
    pub attn_q_b: Tensor,
    pub attn_kv: Tensor,
    pub attn_kv_a_norm: Tensor,
    pub attn_sinks: Tensor,
    pub attn_output_a: Tensor,
    pub attn_output_b: Tensor,
    pub attn_extra: LayerAttnExtra,
    pub hc_ffn: HcWeights,
    pub ffn_norm: Tensor,
    /// F16 (or F32 in MTP) `[n_embd, n_expert]`
    pub ffn_gate_inp: Tensor,
    /// `exp_probs_b.bias`, F32 `[n_expert]`, optional in the main model.
    pub exp_probs_b: Option<Tensor>,
    /// `ffn_gate_tid2eid`, I32 `[n_expert_used, n_vocab]`, hash layers only.
    pub ffn_gate_tid2eid: Option<Tensor>,
    pub ffn_gate_exps: Tensor,
    pub ffn_up_exps: Tensor,
    pub ffn_down_exps: Tensor,
    pub ffn_gate_shexp: Tensor,
    pub ffn_up_shexp: Tensor,
    pub ffn_down_shexp: Tensor,
}

/// Output head tensors (spec §2.2).
#[derive(Debug, Clone)]
pub struct OutputWeights {
    pub output_hc_base: Tensor,
    pub output_hc_fn: Tensor,
    pub output_hc_scale: Tensor,
    pub output_norm: Tensor,
    pub output: Tensor,
}

/// Every tensor of the main model.
#[derive(Debug, Clone)]
pub struct Weights {
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    pub head: OutputWeights,
}
