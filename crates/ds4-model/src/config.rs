//! Shape and constants of a DS4 model, read once from `deepseek4.*` metadata (spec/model.md §1.4)
//! and checked: strictly against the real model (§1.1, §1.2, §1.3) when the file claims the real
//! widths, else against the §1.5 rules for small models. Metadata keys are strings here only.

use ds4_gguf::{GgufFile, Value, ValueType};

use crate::error::{CheckMode, LoadError, Problem};

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

// ---- spec/model.md §1.1-1.3: the real model ---------------------------------------------------

/// The real model's `n_embd`; with [`REAL_N_VOCAB`] it selects strict checking.
pub const REAL_N_EMBD: usize = 4096;
pub const REAL_N_VOCAB: usize = 129280;
pub const REAL_N_LAYER: usize = 43;

/// ds4's hard-coded layer schedule (spec §1.3): 0 for layers 0-1, then 4 (even) / 128 (odd).
pub fn real_compress_ratio(il: usize) -> u32 {
    if il < 2 {
        0
    } else if il.is_multiple_of(2) {
        4
    } else {
        128
    }
}

impl Config {
    /// The real DeepSeek V4 Flash shape with `n_layer` layers (43 in the published model; fewer
    /// for the full-width, few-layer synthetic files). Every other value is spec §1.1/§1.2.
    pub fn real(n_layer: usize) -> Config {
        Config {
            n_layer,
            n_embd: REAL_N_EMBD,
            n_vocab: REAL_N_VOCAB,
            n_head: 64,
            n_head_kv: 1,
            head_dim: 512,
            n_rot: 64,
            n_out_group: 8,
            q_lora_rank: 1024,
            o_lora_rank: 1024,
            n_expert: 256,
            n_expert_used: 6,
            n_expert_shared: 1,
            n_ff_exp: 2048,
            n_hash_layer: 3,
            n_swa: 128,
            n_idx_head: 64,
            idx_head_dim: 128,
            idx_top_k: 512,
            n_hc: 4,
            sinkhorn_iters: 20,
            context_length: 1_048_576,
            attn_kinds: (0..n_layer)
                .map(|il| AttnKind::from_ratio(real_compress_ratio(il)))
                .collect(),
            rms_eps: 1e-6,
            hc_eps: 1e-6,
            expert_weight_scale: 1.5,
            swiglu_clamp: 10.0,
            rope_freq_base: 10000.0,
            compress_rope_freq_base: 160000.0,
            rope_scale_factor: 16.0,
            yarn_beta_fast: 32.0,
            yarn_beta_slow: 1.0,
            rope_orig_ctx: 65536,
        }
    }

    /// Whether this shape has the real widths (strict validation applies to it).
    pub fn is_real_width(&self) -> bool {
        self.n_embd == REAL_N_EMBD && self.n_vocab == REAL_N_VOCAB
    }

    /// Compression ratio of layer `il` as written to `attention.compress_ratios`.
    pub fn compress_ratio(&self, il: usize) -> u32 {
        self.attn_kinds[il].ratio() as u32
    }

    /// Reads and checks the `deepseek4.*` metadata of `file` (spec §1.4).
    ///
    /// Rule for which checks apply: a file whose `embedding_length` and `vocab_size` are the real
    /// ones (4096, 129280) is checked **strictly**: every §1.1/§1.2 constant, the exact §1.3
    /// schedule for its layers, all swiglu clamps 10. Its `block_count` may be any value in
    /// 1..=43 ("real widths, any layer count"), so full-width synthetic files with a few layers are
    /// still real-shape files. Any other file is checked against the §1.5 rules. Every problem is
    /// reported in one [`LoadError::Invalid`].
    pub fn from_gguf(file: &GgufFile) -> Result<Config, LoadError> {
        let (cfg, mode, problems) = Config::resolve(file);
        match cfg {
            Some(cfg) if problems.is_empty() => Ok(cfg),
            _ => Err(LoadError::Invalid { mode, problems }),
        }
    }

    /// Reads the metadata and collects every problem without stopping. The config is `None` when
    /// values are missing or unusable; in strict mode it is the real shape (so tensor checks can
    /// still run and report their own mismatches alongside the metadata ones).
    pub(crate) fn resolve(file: &GgufFile) -> (Option<Config>, CheckMode, Vec<Problem>) {
        let mut m = Meta {
            file,
            problems: Vec::new(),
        };
        let raw = RawMeta::read(&mut m);
        let strict =
            raw.n_embd == Some(REAL_N_EMBD as u32) && raw.n_vocab == Some(REAL_N_VOCAB as u32);
        if strict {
            let cfg = raw.check_strict(&mut m);
            (cfg, CheckMode::Strict, m.problems)
        } else {
            let cfg = raw.check_tiny(&mut m);
            (cfg, CheckMode::Tiny, m.problems)
        }
    }

    /// The `deepseek4.*` metadata entries that describe this config, in the order the real file
    /// has them (used by the synthetic-model writer; the reader accepts any order).
    pub fn to_metadata(&self) -> Vec<(String, Value)> {
        let u = |v: usize| Value::U32(v as u32);
        let k = |s: &str| format!("{ARCH}.{s}");
        vec![
            (k("block_count"), u(self.n_layer)),
            (k("context_length"), Value::U64(self.context_length)),
            (k("embedding_length"), u(self.n_embd)),
            (k("vocab_size"), u(self.n_vocab)),
            (k("attention.head_count"), u(self.n_head)),
            (k("attention.head_count_kv"), u(self.n_head_kv)),
            (k("attention.key_length"), u(self.head_dim)),
            (k("attention.value_length"), u(self.head_dim)),
            (k("rope.dimension_count"), u(self.n_rot)),
            (k("attention.q_lora_rank"), u(self.q_lora_rank)),
            (k("attention.output_lora_rank"), u(self.o_lora_rank)),
            (k("attention.output_group_count"), u(self.n_out_group)),
            (k("expert_count"), u(self.n_expert)),
            (k("expert_used_count"), u(self.n_expert_used)),
            (k("expert_feed_forward_length"), u(self.n_ff_exp)),
            (k("expert_shared_count"), u(self.n_expert_shared)),
            (k("expert_group_count"), u(0)),
            (k("expert_group_used_count"), u(0)),
            (k("hash_layer_count"), u(self.n_hash_layer)),
            (k("attention.sliding_window"), u(self.n_swa)),
            (k("attention.indexer.head_count"), u(self.n_idx_head)),
            (k("attention.indexer.key_length"), u(self.idx_head_dim)),
            (k("attention.indexer.top_k"), u(self.idx_top_k)),
            (k("hyper_connection.count"), u(self.n_hc)),
            (
                k("hyper_connection.sinkhorn_iterations"),
                u(self.sinkhorn_iters),
            ),
            (k("hyper_connection.epsilon"), Value::F32(self.hc_eps)),
            (
                k("attention.compress_ratios"),
                Value::Array(
                    ValueType::U32,
                    (0..self.n_layer)
                        .map(|il| Value::U32(self.compress_ratio(il)))
                        .collect(),
                ),
            ),
            (
                k("swiglu_clamp_exp"),
                Value::Array(
                    ValueType::F32,
                    vec![Value::F32(self.swiglu_clamp); self.n_layer],
                ),
            ),
            (
                k("rope.scaling.original_context_length"),
                Value::U64(self.rope_orig_ctx as u64),
            ),
            (k("rope.freq_base"), Value::F32(self.rope_freq_base)),
            (k("rope.scaling.factor"), Value::F32(self.rope_scale_factor)),
            (
                k("rope.scaling.yarn_beta_fast"),
                Value::F32(self.yarn_beta_fast),
            ),
            (
                k("rope.scaling.yarn_beta_slow"),
                Value::F32(self.yarn_beta_slow),
            ),
            (
                k("attention.compress_rope_freq_base"),
                Value::F32(self.compress_rope_freq_base),
            ),
            (
                k("expert_weights_scale"),
                Value::F32(self.expert_weight_scale),
            ),
            (k("expert_weights_norm"), Value::Bool(true)),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.rms_eps),
            ),
        ]
    }
}

// ---- spec/model.md §1.4: reading keys with the loader's type rules ----------------------------

const ARCH: &str = "deepseek4";

/// Tensors every layer has whatever its kind (spec §2.3 without the optional router bias).
const MIN_TENSORS_PER_LAYER: usize = 23;

/// Metadata reader that records problems instead of failing.
struct Meta<'a> {
    file: &'a GgufFile,
    problems: Vec<Problem>,
}

impl Meta<'_> {
    fn get(&mut self, key: &str, optional: bool) -> Option<(String, &Value)> {
        let full = format!("{ARCH}.{key}");
        let file = self.file;
        match file.get(&full) {
            Some(v) => Some((full, v)),
            None => {
                if !optional {
                    self.problems.push(Problem::MissingKey { key: full });
                }
                None
            }
        }
    }

    fn wrong_type(&mut self, key: String, expected: &'static str, v: &Value) {
        self.problems.push(Problem::KeyType {
            key,
            expected,
            found: v.type_desc(),
        });
    }

    /// `required_u32`: GGUF type UINT32 only.
    fn u32_opt(&mut self, key: &str, optional: bool) -> Option<u32> {
        let (full, v) = self.get(key, optional)?;
        match v {
            Value::U32(x) => Some(*x),
            v => {
                let v = v.clone();
                self.wrong_type(full, "u32", &v);
                None
            }
        }
    }

    fn u32(&mut self, key: &str) -> Option<u32> {
        self.u32_opt(key, false)
    }

    /// `required_u64`: UINT64 or UINT32.
    fn u64(&mut self, key: &str) -> Option<u64> {
        let (full, v) = self.get(key, false)?;
        match v {
            Value::U64(x) => Some(*x),
            Value::U32(x) => Some(*x as u64),
            v => {
                let v = v.clone();
                self.wrong_type(full, "u64 or u32", &v);
                None
            }
        }
    }

    /// `required_f32`: FLOAT32, FLOAT64, UINT32 or INT32.
    fn f32(&mut self, key: &str) -> Option<f32> {
        let (full, v) = self.get(key, false)?;
        match *v {
            Value::F32(x) => Some(x),
            Value::F64(x) => Some(x as f32),
            Value::U32(x) => Some(x as f32),
            Value::I32(x) => Some(x as f32),
            ref v => {
                let v = v.clone();
                self.wrong_type(full, "f32, f64, u32 or i32", &v);
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        let (full, v) = self.get(key, false)?;
        match v {
            Value::Bool(b) => Some(*b),
            v => {
                let v = v.clone();
                self.wrong_type(full, "bool", &v);
                None
            }
        }
    }

    /// Array of u32 or i32 (negative entries are reported).
    fn u32_array(&mut self, key: &str) -> Option<Vec<u32>> {
        let (full, v) = self.get(key, false)?;
        let v = v.clone();
        let Some((ValueType::U32 | ValueType::I32, items)) = v.as_array() else {
            self.wrong_type(full, "array of u32 or i32", &v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            match *it {
                Value::U32(x) => out.push(x),
                Value::I32(x) if x >= 0 => out.push(x as u32),
                ref x => {
                    self.problems.push(Problem::KeyValue {
                        key: format!("{full}[{i}]"),
                        expected: "a non-negative ratio".into(),
                        found: x.to_string(),
                    });
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Array of f32 or f64.
    fn f32_array(&mut self, key: &str) -> Option<Vec<f32>> {
        let (full, v) = self.get(key, false)?;
        let v = v.clone();
        let Some((ValueType::F32 | ValueType::F64, items)) = v.as_array() else {
            self.wrong_type(full, "array of f32 or f64", &v);
            return None;
        };
        Some(
            items
                .iter()
                .filter_map(|it| it.as_f64().map(|x| x as f32))
                .collect(),
        )
    }

    fn value_problem(
        &mut self,
        key: &str,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) {
        self.problems.push(Problem::KeyValue {
            key: format!("{ARCH}.{key}"),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
}

/// Every key as read (None: missing or wrong type, already reported).
struct RawMeta {
    n_layer: Option<u32>,
    n_embd: Option<u32>,
    n_vocab: Option<u32>,
    n_head: Option<u32>,
    n_head_kv: Option<u32>,
    head_dim: Option<u32>,
    value_dim: Option<u32>,
    n_rot: Option<u32>,
    q_lora_rank: Option<u32>,
    o_lora_rank: Option<u32>,
    n_out_group: Option<u32>,
    n_expert: Option<u32>,
    n_expert_used: Option<u32>,
    n_ff_exp: Option<u32>,
    n_expert_shared: Option<u32>,
    n_hash_layer: Option<u32>,
    expert_group_count: Option<u32>,
    expert_group_used_count: Option<u32>,
    n_swa: Option<u32>,
    n_idx_head: Option<u32>,
    idx_head_dim: Option<u32>,
    idx_top_k: Option<u32>,
    n_hc: Option<u32>,
    sinkhorn_iters: Option<u32>,
    context_length: u64,
    compress_ratios: Option<Vec<u32>>,
    swiglu_clamps: Option<Vec<f32>>,
    rope_orig_ctx: Option<u64>,
    rope_freq_base: Option<f32>,
    rope_scale_factor: Option<f32>,
    yarn_beta_fast: Option<f32>,
    yarn_beta_slow: Option<f32>,
    compress_rope_freq_base: Option<f32>,
    expert_weight_scale: Option<f32>,
    rms_eps: Option<f32>,
    hc_eps: Option<f32>,
    expert_weights_norm: Option<bool>,
}

impl RawMeta {
    fn read(m: &mut Meta<'_>) -> RawMeta {
        // spec §1.4: context_length is printed only, and read only when it is UINT64.
        let context_length = match m.file.get(&format!("{ARCH}.context_length")) {
            Some(Value::U64(v)) => *v,
            _ => 0,
        };
        RawMeta {
            n_layer: m.u32("block_count"),
            n_embd: m.u32("embedding_length"),
            n_vocab: m.u32("vocab_size"),
            n_head: m.u32("attention.head_count"),
            n_head_kv: m.u32("attention.head_count_kv"),
            head_dim: m.u32("attention.key_length"),
            value_dim: m.u32("attention.value_length"),
            n_rot: m.u32("rope.dimension_count"),
            q_lora_rank: m.u32("attention.q_lora_rank"),
            o_lora_rank: m.u32("attention.output_lora_rank"),
            n_out_group: m.u32("attention.output_group_count"),
            n_expert: m.u32("expert_count"),
            n_expert_used: m.u32("expert_used_count"),
            n_ff_exp: m.u32("expert_feed_forward_length"),
            n_expert_shared: m.u32("expert_shared_count"),
            n_hash_layer: m.u32("hash_layer_count"),
            // spec §8 pitfall 28: may be absent; must be 0 when present.
            expert_group_count: m.u32_opt("expert_group_count", true),
            expert_group_used_count: m.u32_opt("expert_group_used_count", true),
            n_swa: m.u32("attention.sliding_window"),
            n_idx_head: m.u32("attention.indexer.head_count"),
            idx_head_dim: m.u32("attention.indexer.key_length"),
            idx_top_k: m.u32("attention.indexer.top_k"),
            n_hc: m.u32("hyper_connection.count"),
            sinkhorn_iters: m.u32("hyper_connection.sinkhorn_iterations"),
            context_length,
            compress_ratios: m.u32_array("attention.compress_ratios"),
            swiglu_clamps: m.f32_array("swiglu_clamp_exp"),
            rope_orig_ctx: m.u64("rope.scaling.original_context_length"),
            rope_freq_base: m.f32("rope.freq_base"),
            rope_scale_factor: m.f32("rope.scaling.factor"),
            yarn_beta_fast: m.f32("rope.scaling.yarn_beta_fast"),
            yarn_beta_slow: m.f32("rope.scaling.yarn_beta_slow"),
            compress_rope_freq_base: m.f32("attention.compress_rope_freq_base"),
            expert_weight_scale: m.f32("expert_weights_scale"),
            rms_eps: m.f32("attention.layer_norm_rms_epsilon"),
            hc_eps: m.f32("hyper_connection.epsilon"),
            expert_weights_norm: m.bool("expert_weights_norm"),
        }
    }

    /// Integer keys with their real values, for strict comparison.
    fn u32_keys(&self, real: &Config) -> Vec<(&'static str, Option<u32>, usize)> {
        vec![
            ("embedding_length", self.n_embd, real.n_embd),
            ("vocab_size", self.n_vocab, real.n_vocab),
            ("attention.head_count", self.n_head, real.n_head),
            ("attention.head_count_kv", self.n_head_kv, real.n_head_kv),
            ("attention.key_length", self.head_dim, real.head_dim),
            ("attention.value_length", self.value_dim, real.head_dim),
            ("rope.dimension_count", self.n_rot, real.n_rot),
            ("attention.q_lora_rank", self.q_lora_rank, real.q_lora_rank),
            (
                "attention.output_lora_rank",
                self.o_lora_rank,
                real.o_lora_rank,
            ),
            (
                "attention.output_group_count",
                self.n_out_group,
                real.n_out_group,
            ),
            ("expert_count", self.n_expert, real.n_expert),
            ("expert_used_count", self.n_expert_used, real.n_expert_used),
            ("expert_feed_forward_length", self.n_ff_exp, real.n_ff_exp),
            (
                "expert_shared_count",
                self.n_expert_shared,
                real.n_expert_shared,
            ),
            ("hash_layer_count", self.n_hash_layer, real.n_hash_layer),
            ("attention.sliding_window", self.n_swa, real.n_swa),
            (
                "attention.indexer.head_count",
                self.n_idx_head,
                real.n_idx_head,
            ),
            (
                "attention.indexer.key_length",
                self.idx_head_dim,
                real.idx_head_dim,
            ),
            ("attention.indexer.top_k", self.idx_top_k, real.idx_top_k),
            ("hyper_connection.count", self.n_hc, real.n_hc),
            (
                "hyper_connection.sinkhorn_iterations",
                self.sinkhorn_iters,
                real.sinkhorn_iters,
            ),
        ]
    }

    fn f32_keys(&self, real: &Config) -> Vec<(&'static str, Option<f32>, f32)> {
        vec![
            ("rope.freq_base", self.rope_freq_base, real.rope_freq_base),
            (
                "rope.scaling.factor",
                self.rope_scale_factor,
                real.rope_scale_factor,
            ),
            (
                "rope.scaling.yarn_beta_fast",
                self.yarn_beta_fast,
                real.yarn_beta_fast,
            ),
            (
                "rope.scaling.yarn_beta_slow",
                self.yarn_beta_slow,
                real.yarn_beta_slow,
            ),
            (
                "attention.compress_rope_freq_base",
                self.compress_rope_freq_base,
                real.compress_rope_freq_base,
            ),
            (
                "expert_weights_scale",
                self.expert_weight_scale,
                real.expert_weight_scale,
            ),
            (
                "attention.layer_norm_rms_epsilon",
                self.rms_eps,
                real.rms_eps,
            ),
            ("hyper_connection.epsilon", self.hc_eps, real.hc_eps),
        ]
    }

    /// Checks shared by both modes: optional group keys, the weights-norm flag, array lengths.
    fn check_common(&self, m: &mut Meta<'_>, n_layer: usize) {
        for (key, v) in [
            ("expert_group_count", self.expert_group_count),
            ("expert_group_used_count", self.expert_group_used_count),
        ] {
            if let Some(v) = v.filter(|&v| v != 0) {
                m.value_problem(key, "0 (no group-limited routing)", v);
            }
        }
        if self.expert_weights_norm == Some(false) {
            m.value_problem("expert_weights_norm", true, false);
        }
        if let Some(r) = &self.compress_ratios {
            if r.len() < n_layer {
                m.value_problem(
                    "attention.compress_ratios",
                    format!("at least {n_layer} entries"),
                    r.len(),
                );
            }
        }
        if let Some(c) = &self.swiglu_clamps {
            if c.len() < n_layer {
                m.value_problem(
                    "swiglu_clamp_exp",
                    format!("at least {n_layer} entries"),
                    c.len(),
                );
            }
        }
    }

    /// spec §1.1/§1.2 strict mode. Returns the real config for the file's layer count so tensor
    /// checks can proceed even when metadata values are wrong.
    fn check_strict(&self, m: &mut Meta<'_>) -> Option<Config> {
        let n_layer = match self.n_layer {
            Some(n) if (1..=REAL_N_LAYER as u32).contains(&n) => n as usize,
            Some(n) => {
                m.value_problem(
                    "block_count",
                    format!("1..={REAL_N_LAYER} for a real-width model"),
                    n,
                );
                REAL_N_LAYER
            }
            None => REAL_N_LAYER,
        };
        let mut real = Config::real(n_layer);
        real.context_length = self.context_length;
        for (key, found, want) in self.u32_keys(&real) {
            if let Some(v) = found.filter(|&v| v as usize != want) {
                m.value_problem(key, want, v);
            }
        }
        for (key, found, want) in self.f32_keys(&real) {
            // spec §1.4: relative tolerance 1e-6.
            if let Some(v) =
                found.filter(|&v| ((v - want).abs() > 1e-6 * want.abs()) || !v.is_finite())
            {
                m.value_problem(key, want, v);
            }
        }
        if let Some(v) = self
            .rope_orig_ctx
            .filter(|&v| v != real.rope_orig_ctx as u64)
        {
            m.value_problem(
                "rope.scaling.original_context_length",
                real.rope_orig_ctx,
                v,
            );
        }
        self.check_common(m, n_layer);
        if let Some(r) = &self.compress_ratios {
            for (il, &ratio) in r.iter().enumerate().take(n_layer) {
                let want = real_compress_ratio(il);
                if ratio != want {
                    m.value_problem(&format!("attention.compress_ratios[{il}]"), want, ratio);
                }
            }
        }
        if let Some(c) = &self.swiglu_clamps {
            for (il, &v) in c.iter().enumerate().take(n_layer) {
                if v != 10.0 {
                    m.value_problem(&format!("swiglu_clamp_exp[{il}]"), 10, v);
                }
            }
        }
        Some(real)
    }

    /// spec §1.5 rules for small models. `None` when a value is missing or breaks a rule that the
    /// tensor checks depend on.
    fn check_tiny(&self, m: &mut Meta<'_>) -> Option<Config> {
        let before = m.problems.len();
        let n_layer = self.n_layer.unwrap_or(0) as usize;
        self.check_common(m, n_layer);
        // A hostile block_count would make the layout table (built next) huge; a file cannot
        // claim more layers than its tensor directory can hold.
        let n_tensors = m.file.tensors().len();
        if n_layer > n_tensors / MIN_TENSORS_PER_LAYER {
            m.value_problem(
                "block_count",
                format!(
                    "at most {} for a file of {n_tensors} tensors",
                    n_tensors / MIN_TENSORS_PER_LAYER
                ),
                n_layer,
            );
            return None;
        }
        let Some(cfg) = self.tiny_config() else {
            if m.problems.len() == before {
                m.problems.push(Problem::Rule(format!(
                    "{ARCH}.*: metadata unusable (an empty swiglu_clamp_exp or an original context above u32)"
                )));
            }
            return None;
        };
        let mut rule = |ok: bool, what: String| {
            if !ok {
                m.problems.push(Problem::Rule(what));
            }
        };
        for (name, v) in [
            ("block_count", cfg.n_layer),
            ("embedding_length", cfg.n_embd),
            ("vocab_size", cfg.n_vocab),
            ("attention.head_count", cfg.n_head),
            ("attention.key_length", cfg.head_dim),
            ("attention.q_lora_rank", cfg.q_lora_rank),
            ("attention.output_lora_rank", cfg.o_lora_rank),
            ("attention.output_group_count", cfg.n_out_group),
            ("expert_count", cfg.n_expert),
            ("expert_used_count", cfg.n_expert_used),
            ("expert_feed_forward_length", cfg.n_ff_exp),
            ("attention.sliding_window", cfg.n_swa),
            ("attention.indexer.head_count", cfg.n_idx_head),
            ("attention.indexer.top_k", cfg.idx_top_k),
            ("hyper_connection.count", cfg.n_hc),
            ("hyper_connection.sinkhorn_iterations", cfg.sinkhorn_iters),
        ] {
            rule(v > 0, format!("{ARCH}.{name} must be positive"));
        }
        rule(
            cfg.n_head_kv == 1,
            format!(
                "n_head_kv = {} (the model has one shared KV head)",
                cfg.n_head_kv
            ),
        );
        rule(
            self.value_dim.map(|v| v as usize) == Some(cfg.head_dim),
            format!(
                "value_length {:?} must equal key_length {}",
                self.value_dim, cfg.head_dim
            ),
        );
        rule(
            cfg.n_expert_shared == 1,
            format!(
                "expert_shared_count = {} (exactly one shared expert)",
                cfg.n_expert_shared
            ),
        );
        rule(
            cfg.n_expert_used <= cfg.n_expert,
            format!(
                "expert_used_count {} > expert_count {}",
                cfg.n_expert_used, cfg.n_expert
            ),
        );
        rule(
            cfg.n_rot.is_multiple_of(2) && cfg.n_rot > 0,
            format!("n_rot = {} must be even and positive", cfg.n_rot),
        );
        rule(
            cfg.n_rot <= cfg.head_dim && (cfg.head_dim - cfg.n_rot).is_multiple_of(64),
            format!(
                "head_dim - n_rot = {} - {} must be a multiple of 64 (FP8 blocks)",
                cfg.head_dim, cfg.n_rot
            ),
        );
        rule(
            cfg.idx_head_dim == 128,
            format!(
                "indexer key_length = {} (the Hadamard transform is fixed at 128)",
                cfg.idx_head_dim
            ),
        );
        rule(
            cfg.idx_head_dim >= cfg.n_rot,
            format!(
                "indexer key_length {} < n_rot {}",
                cfg.idx_head_dim, cfg.n_rot
            ),
        );
        rule(
            cfg.n_out_group > 0 && cfg.n_head.is_multiple_of(cfg.n_out_group),
            format!(
                "n_head {} is not a multiple of output_group_count {}",
                cfg.n_head, cfg.n_out_group
            ),
        );
        rule(
            cfg.n_embd.is_multiple_of(32),
            format!("n_embd = {} must be a multiple of 32", cfg.n_embd),
        );
        for (key, v) in [
            ("attention.layer_norm_rms_epsilon", cfg.rms_eps),
            ("hyper_connection.epsilon", cfg.hc_eps),
            ("rope.freq_base", cfg.rope_freq_base),
            (
                "attention.compress_rope_freq_base",
                cfg.compress_rope_freq_base,
            ),
            ("rope.scaling.factor", cfg.rope_scale_factor),
            ("expert_weights_scale", cfg.expert_weight_scale),
            ("swiglu_clamp_exp", cfg.swiglu_clamp),
        ] {
            rule(
                v.is_finite() && v > 0.0,
                format!("{ARCH}.{key} = {v} must be finite and positive"),
            );
        }
        rule(
            cfg.rope_orig_ctx > 0,
            format!("{ARCH}.rope.scaling.original_context_length must be positive"),
        );
        if let Some(c) = &self.swiglu_clamps {
            if c.iter().take(cfg.n_layer).any(|&v| v != cfg.swiglu_clamp) {
                rule(
                    false,
                    format!(
                        "{ARCH}.swiglu_clamp_exp: entries differ ({c:?}); one clamp for all layers"
                    ),
                );
            }
        }
        (m.problems.len() == before).then_some(cfg)
    }

    fn tiny_config(&self) -> Option<Config> {
        let n_layer = self.n_layer? as usize;
        let ratios = self.compress_ratios.as_ref()?;
        if ratios.len() < n_layer {
            return None;
        }
        let z = |v: Option<u32>| v.map(|v| v as usize);
        Some(Config {
            n_layer,
            n_embd: z(self.n_embd)?,
            n_vocab: z(self.n_vocab)?,
            n_head: z(self.n_head)?,
            n_head_kv: z(self.n_head_kv)?,
            head_dim: z(self.head_dim)?,
            n_rot: z(self.n_rot)?,
            n_out_group: z(self.n_out_group)?,
            q_lora_rank: z(self.q_lora_rank)?,
            o_lora_rank: z(self.o_lora_rank)?,
            n_expert: z(self.n_expert)?,
            n_expert_used: z(self.n_expert_used)?,
            n_expert_shared: z(self.n_expert_shared)?,
            n_ff_exp: z(self.n_ff_exp)?,
            n_hash_layer: z(self.n_hash_layer)?,
            n_swa: z(self.n_swa)?,
            n_idx_head: z(self.n_idx_head)?,
            idx_head_dim: z(self.idx_head_dim)?,
            idx_top_k: z(self.idx_top_k)?,
            n_hc: z(self.n_hc)?,
            sinkhorn_iters: z(self.sinkhorn_iters)?,
            context_length: self.context_length,
            attn_kinds: ratios[..n_layer]
                .iter()
                .map(|&r| AttnKind::from_ratio(r))
                .collect(),
            rms_eps: self.rms_eps?,
            hc_eps: self.hc_eps?,
            expert_weight_scale: self.expert_weight_scale?,
            swiglu_clamp: *self.swiglu_clamps.as_ref()?.first()?,
            rope_freq_base: self.rope_freq_base?,
            compress_rope_freq_base: self.compress_rope_freq_base?,
            rope_scale_factor: self.rope_scale_factor?,
            yarn_beta_fast: self.yarn_beta_fast?,
            yarn_beta_slow: self.yarn_beta_slow?,
            rope_orig_ctx: u32::try_from(self.rope_orig_ctx?).ok()?,
        })
    }
}
