//! The tensor layout table (spec/model.md §2.2-2.4): every tensor a config implies, with its GGUF
//! dims and storage class. Validation checks a file against it and the synthetic-model writer
//! generates from it, so the two cannot disagree about names or shapes.

use ds4_gguf::TensorType;

use crate::error::CheckMode;
use crate::{AttnKind, Config};

/// Which tensor types a slot accepts (spec §2.5, §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// Norms, sinks, router bias, HC scale/base.
    F32,
    /// Embedding, HC fns, router, compressors, indexer.
    F16,
    /// Attention projections, shared experts, LM head.
    Q8_0,
    /// Routed experts: IQ2_XXS, Q2_K or Q4_K; gate and up of a layer must match.
    Routed,
    /// `ffn_gate_tid2eid`.
    I32,
}

impl TypeClass {
    /// The types accepted in `mode`. Strict mode accepts exactly what ds4 accepts; small models
    /// may also store any quantized or F16 weight as a wider float type (spec §1.5: "F32 or F16 for
    /// every dense weight"), which every backend reads through the same dequantize path.
    pub fn accepted(self, mode: CheckMode) -> &'static [TensorType] {
        use TensorType::*;
        match (self, mode) {
            (TypeClass::F32, _) => &[F32],
            (TypeClass::I32, _) => &[I32],
            (TypeClass::F16, CheckMode::Strict) => &[F16],
            (TypeClass::F16, CheckMode::Tiny) => &[F16, F32],
            (TypeClass::Q8_0, CheckMode::Strict) => &[Q8_0],
            (TypeClass::Q8_0, CheckMode::Tiny) => &[Q8_0, F16, F32],
            (TypeClass::Routed, CheckMode::Strict) => &[Iq2Xxs, Q2K, Q4K],
            (TypeClass::Routed, CheckMode::Tiny) => &[Iq2Xxs, Q2K, Q4K, Q8_0, F16, F32],
        }
    }

    /// The type the published q2 file uses (routed: IQ2_XXS for gate/up; see [`TensorSlot`]).
    pub fn real_type(self) -> TensorType {
        match self {
            TypeClass::F32 => TensorType::F32,
            TypeClass::F16 => TensorType::F16,
            TypeClass::Q8_0 => TensorType::Q8_0,
            TypeClass::Routed => TensorType::Iq2Xxs,
            TypeClass::I32 => TensorType::I32,
        }
    }
}

/// One expected tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSlot {
    pub name: String,
    /// GGUF order, `dims[0]` contiguous.
    pub dims: Vec<u64>,
    pub class: TypeClass,
    /// `false` only for `exp_probs_b.bias` (spec §8 pitfall 28: missing means zeros).
    pub required: bool,
    /// Layer index, `None` for global tensors.
    pub il: Option<usize>,
}

/// Name of a per-layer tensor: `blk.{il}.{suffix}`.
pub fn layer_tensor_name(il: usize, suffix: &str) -> String {
    format!("blk.{il}.{suffix}")
}

/// Every tensor of the main model for `cfg`, in the order the real file stores them per layer
/// (embedding, layers, output head).
pub fn tensor_layout(cfg: &Config) -> Vec<TensorSlot> {
    let e = cfg.n_embd as u64;
    let v = cfg.n_vocab as u64;
    let hc_dim = cfg.hc_dim() as u64;
    let hc_mix = cfg.hc_mix() as u64;
    let q_lora = cfg.q_lora_rank as u64;
    let hd = cfg.head_dim as u64;
    let ff = cfg.n_ff_exp as u64;
    let ne = cfg.n_expert as u64;
    let group_in = (cfg.group_heads() * cfg.head_dim) as u64;
    let out_low = cfg.out_low_dim() as u64;
    let idx_hd = cfg.idx_head_dim as u64;

    let global = |name: &str, dims: &[u64], class| TensorSlot {
        name: name.to_string(),
        dims: dims.to_vec(),
        class,
        required: true,
        il: None,
    };
    let mut out = vec![global("token_embd.weight", &[e, v], TypeClass::F16)];
    for il in 0..cfg.n_layer {
        let mut t = |suffix: &str, dims: &[u64], class, required| {
            out.push(TensorSlot {
                name: layer_tensor_name(il, suffix),
                dims: dims.to_vec(),
                class,
                required,
                il: Some(il),
            })
        };
        use TypeClass::*;
        t("hc_attn_fn.weight", &[hc_dim, hc_mix], F16, true);
        t("hc_attn_scale.weight", &[3], F32, true);
        t("hc_attn_base.weight", &[hc_mix], F32, true);
        t("attn_norm.weight", &[e], F32, true);
        t("attn_q_a.weight", &[e, q_lora], Q8_0, true);
        t("attn_q_a_norm.weight", &[q_lora], F32, true);
        t("attn_q_b.weight", &[q_lora, cfg.q_dim() as u64], Q8_0, true);
        t("attn_kv.weight", &[e, hd], Q8_0, true);
        t("attn_kv_a_norm.weight", &[hd], F32, true);
        t("attn_sinks.weight", &[cfg.n_head as u64], F32, true);
        t("attn_output_a.weight", &[group_in, out_low], Q8_0, true);
        t("attn_output_b.weight", &[out_low, e], Q8_0, true);
        let kind = cfg.attn_kinds[il];
        if kind != AttnKind::Window {
            let r = kind.ratio() as u64;
            let cw = kind.coff() as u64 * hd;
            t("attn_compressor_ape.weight", &[cw, r], F16, true);
            t("attn_compressor_kv.weight", &[e, cw], F16, true);
            t("attn_compressor_gate.weight", &[e, cw], F16, true);
            t("attn_compressor_norm.weight", &[hd], F32, true);
        }
        if kind.has_indexer() {
            let iw = kind.coff() as u64 * idx_hd;
            t(
                "indexer.attn_q_b.weight",
                &[q_lora, cfg.idx_q_dim() as u64],
                F16,
                true,
            );
            t(
                "indexer.proj.weight",
                &[e, cfg.n_idx_head as u64],
                F16,
                true,
            );
            t("indexer_compressor_ape.weight", &[iw, 4], F16, true);
            t("indexer_compressor_kv.weight", &[e, iw], F16, true);
            t("indexer_compressor_gate.weight", &[e, iw], F16, true);
            t("indexer_compressor_norm.weight", &[idx_hd], F32, true);
        }
        t("hc_ffn_fn.weight", &[hc_dim, hc_mix], F16, true);
        t("hc_ffn_scale.weight", &[3], F32, true);
        t("hc_ffn_base.weight", &[hc_mix], F32, true);
        t("ffn_norm.weight", &[e], F32, true);
        t("ffn_gate_inp.weight", &[e, ne], F16, true);
        t("exp_probs_b.bias", &[ne], F32, false);
        if il < cfg.n_hash_layer {
            t(
                "ffn_gate_tid2eid.weight",
                &[cfg.n_expert_used as u64, v],
                I32,
                true,
            );
        }
        t("ffn_gate_exps.weight", &[e, ff, ne], Routed, true);
        t("ffn_up_exps.weight", &[e, ff, ne], Routed, true);
        t("ffn_down_exps.weight", &[ff, e, ne], Routed, true);
        t("ffn_gate_shexp.weight", &[e, ff], Q8_0, true);
        t("ffn_up_shexp.weight", &[e, ff], Q8_0, true);
        t("ffn_down_shexp.weight", &[ff, e], Q8_0, true);
    }
    out.push(global(
        "output_hc_base.weight",
        &[cfg.n_hc as u64],
        TypeClass::F32,
    ));
    out.push(global(
        "output_hc_fn.weight",
        &[hc_dim, cfg.n_hc as u64],
        TypeClass::F16,
    ));
    out.push(global("output_hc_scale.weight", &[1], TypeClass::F32));
    out.push(global("output_norm.weight", &[e], TypeClass::F32));
    out.push(global("output.weight", &[e, v], TypeClass::Q8_0));
    out
}
