//! Shape and constants of a DS4 model, read once from `deepseek4.*` metadata (spec/model.md §1.4).
//! IMPLEMENTATION OWNER: ds4-model helper (Config::from_gguf, validation). The struct is the contract.

/// What a layer's attention reads besides its raw sliding window (spec §1.3, §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKind {
    /// ratio 0: raw window only.
    Window,
    /// ratio 4: overlapping compressor (coff = 2) plus the indexer.
    Compressed4,
    /// any other ratio R > 0: non-overlapping compressor (coff = 1), no indexer (128 in the real model).
    CompressedN(u32),
}

impl AttnKind {
    /// Compression ratio R (0 for `Window`).
    pub fn ratio(self) -> usize {
        match self {
            AttnKind::Window => 0,
            AttnKind::Compressed4 => 4,
            AttnKind::CompressedN(r) => r as usize,
        }
    }
    /// coff: 2 for the overlapping ratio-4 compressor, else 1.
    pub fn coff(self) -> usize {
        if matches!(self, AttnKind::Compressed4) {
            2
        } else {
            1
        }
    }
    pub fn from_ratio(r: u32) -> AttnKind {
        match r {
            0 => AttnKind::Window,
            4 => AttnKind::Compressed4,
            r => AttnKind::CompressedN(r),
        }
    }
    pub fn has_indexer(self) -> bool {
        matches!(self, AttnKind::Compressed4)
    }
}

/// How a layer picks its experts (spec §3.6 F3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// `il < hash_layer_count`: ids from `ffn_gate_tid2eid[token]`.
    Hash,
    /// biased top-k on sqrt-softplus scores.
    TopK,
}

/// RoPE parameters for one layer kind (spec §3.2 P5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub base: f32,
    /// 1.0 without YaRN; 1/rope_scale_factor with YaRN.
    pub freq_scale: f32,
    pub yarn: bool,
    pub orig_ctx: u32,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

/// Every shape value and constant of the model (spec §1.1, §1.2). Names follow spec §0.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub n_out_group: usize,
    pub q_lora_rank: usize,
    pub o_lora_rank: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_expert_shared: usize,
    pub n_ff_exp: usize,
    pub n_hash_layer: usize,
    pub n_swa: usize,
    pub n_idx_head: usize,
    pub idx_head_dim: usize,
    pub idx_top_k: usize,
    pub n_hc: usize,
    pub sinkhorn_iters: usize,
    /// `deepseek4.context_length` (printed only).
    pub context_length: u64,
    /// Per-layer compression schedule from `attention.compress_ratios`.
    pub attn_kinds: Vec<AttnKind>,
    pub rms_eps: f32,
    pub hc_eps: f32,
    pub expert_weight_scale: f32,
    pub swiglu_clamp: f32,
    pub rope_freq_base: f32,
    pub compress_rope_freq_base: f32,
    pub rope_scale_factor: f32,
    pub yarn_beta_fast: f32,
    pub yarn_beta_slow: f32,
    pub rope_orig_ctx: u32,
}

impl Config {
    pub fn n_nope(&self) -> usize {
        self.head_dim - self.n_rot
    }
    pub fn hc_dim(&self) -> usize {
        self.n_hc * self.n_embd
    }
    /// 2·n_hc + n_hc²
    pub fn hc_mix(&self) -> usize {
        2 * self.n_hc + self.n_hc * self.n_hc
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn group_heads(&self) -> usize {
        self.n_head / self.n_out_group
    }
    pub fn out_low_dim(&self) -> usize {
        self.n_out_group * self.o_lora_rank
    }
    pub fn idx_q_dim(&self) -> usize {
        self.n_idx_head * self.idx_head_dim
    }
    pub fn kq_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    pub fn indexer_score_scale(&self) -> f32 {
        1.0 / ((self.idx_head_dim * self.n_idx_head) as f32).sqrt()
    }
    pub fn routing(&self, il: usize) -> Routing {
        if il < self.n_hash_layer {
            Routing::Hash
        } else {
            Routing::TopK
        }
    }
    /// RoPE parameters of layer `il` (ratio 0: base 10000 plain; else compressed base + YaRN).
    pub fn rope(&self, il: usize) -> RopeParams {
        if self.attn_kinds[il] == AttnKind::Window {
            RopeParams {
                base: self.rope_freq_base,
                freq_scale: 1.0,
                yarn: false,
                orig_ctx: self.rope_orig_ctx,
                beta_fast: self.yarn_beta_fast,
                beta_slow: self.yarn_beta_slow,
            }
        } else {
            RopeParams {
                base: self.compress_rope_freq_base,
                freq_scale: 1.0 / self.rope_scale_factor,
                yarn: true,
                orig_ctx: self.rope_orig_ctx,
                beta_fast: self.yarn_beta_fast,
                beta_slow: self.yarn_beta_slow,
            }
        }
    }
}
