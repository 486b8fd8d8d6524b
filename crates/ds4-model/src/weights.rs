//! Typed views of every tensor (spec/model.md §2), bound once by name after the whole layout was
//! checked against [`crate::layout::tensor_layout`]. Field names are the GGUF names without
//! `blk.N.` / `.weight` (spec §2.3), so a grep from the spec lands here.

use std::collections::HashMap;
use std::sync::Arc;

use ds4_gguf::{GgufFile, TensorInfo, TensorType};

use crate::error::{CheckMode, Problem};
use crate::layout::{layer_tensor_name, tensor_layout, TypeClass};
use crate::{AttnKind, Config};

/// A view of one tensor's bytes. Keeps the file alive; cloning is cheap. Shapes are GGUF order
/// (`dims[0]` contiguous): a 2-D weight `[n_in, n_out]` is `n_out` rows of `n_in` values.
#[derive(Clone)]
pub struct Tensor {
    file: Arc<GgufFile>,
    info: TensorInfo,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {} {:?})",
            self.info.name, self.info.ty, self.info.dims
        )
    }
}

impl Tensor {
    /// The named tensor of `file`, if present.
    pub fn bind(file: &Arc<GgufFile>, name: &str) -> Option<Tensor> {
        file.tensor(name).map(|info| Tensor {
            file: file.clone(),
            info: info.clone(),
        })
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
        assert_eq!(
            self.ty(),
            TensorType::F32,
            "invariant: f32s() on {}",
            self.name()
        );
        self.bytes()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
    /// The values of an I32 tensor.
    pub fn i32s(&self) -> Vec<i32> {
        assert_eq!(
            self.ty(),
            TensorType::I32,
            "invariant: i32s() on {}",
            self.name()
        );
        self.bytes()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
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
// One value per layer, bound once: boxing the large variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LayerAttnExtra {
    Window,
    Compressed4 {
        compressor: CompressorWeights,
        indexer: IndexerWeights,
    },
    CompressedN {
        compressor: CompressorWeights,
    },
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

// ---- binding ----------------------------------------------------------------------------------

impl Weights {
    /// Checks every tensor `cfg` implies (spec §2.2-2.4) for presence, type (per `mode`) and dims,
    /// appending one [`Problem`] per mismatch to `problems`; binds the typed views only if this
    /// check found nothing. Also checks the routed gate/up types match per layer and that hash
    /// tables hold expert ids below `n_expert` (backends index with them unchecked).
    pub fn bind(
        file: &Arc<GgufFile>,
        cfg: &Config,
        mode: CheckMode,
        problems: &mut Vec<Problem>,
    ) -> Option<Weights> {
        let before = problems.len();
        let mut found: HashMap<String, Tensor> = HashMap::new();
        for slot in tensor_layout(cfg) {
            let Some(t) = Tensor::bind(file, &slot.name) else {
                if slot.required {
                    problems.push(Problem::MissingTensor { name: slot.name });
                }
                continue;
            };
            let accepted = slot.class.accepted(mode);
            let mut ok = true;
            if !accepted.contains(&t.ty()) {
                let names: Vec<&str> = accepted.iter().map(|t| t.name()).collect();
                problems.push(Problem::TensorType {
                    name: slot.name.clone(),
                    expected: names.join(" or "),
                    found: t.ty(),
                });
                ok = false;
            }
            if t.dims() != slot.dims.as_slice() {
                problems.push(Problem::TensorDims {
                    name: slot.name.clone(),
                    expected: slot.dims.clone(),
                    found: t.dims().to_vec(),
                });
                ok = false;
            }
            if ok && slot.class == TypeClass::I32 {
                check_expert_ids(&t, cfg.n_expert, problems);
            }
            found.insert(slot.name, t);
        }
        for il in 0..cfg.n_layer {
            let gate = found.get(&layer_tensor_name(il, "ffn_gate_exps.weight"));
            let up = found.get(&layer_tensor_name(il, "ffn_up_exps.weight"));
            if let (Some(g), Some(u)) = (gate, up) {
                if g.ty() != u.ty() {
                    problems.push(Problem::TensorType {
                        name: u.name().to_string(),
                        expected: format!(
                            "{} (the type of ffn_gate_exps in the same layer)",
                            g.ty()
                        ),
                        found: u.ty(),
                    });
                }
            }
        }
        if problems.len() != before {
            return None;
        }
        Some(Weights::assemble(cfg, found))
    }

    /// Builds the structs from tensors already checked to be all present.
    fn assemble(cfg: &Config, found: HashMap<String, Tensor>) -> Weights {
        let mut f = Found(found);
        let token_embd = f.take("token_embd.weight");
        let layers = (0..cfg.n_layer).map(|il| f.layer(cfg, il)).collect();
        let head = OutputWeights {
            output_hc_base: f.take("output_hc_base.weight"),
            output_hc_fn: f.take("output_hc_fn.weight"),
            output_hc_scale: f.take("output_hc_scale.weight"),
            output_norm: f.take("output_norm.weight"),
            output: f.take("output.weight"),
        };
        Weights {
            token_embd,
            layers,
            head,
        }
    }
}

/// Checked tensors by name, taken out one by one while the structs are built.
struct Found(HashMap<String, Tensor>);

impl Found {
    fn take(&mut self, name: &str) -> Tensor {
        self.0
            .remove(name)
            .expect("invariant: every required tensor was checked present")
    }

    fn l(&mut self, il: usize, suffix: &str) -> Tensor {
        self.take(&layer_tensor_name(il, suffix))
    }

    fn hc(&mut self, il: usize, which: &str) -> HcWeights {
        HcWeights {
            fn_: self.l(il, &format!("hc_{which}_fn.weight")),
            scale: self.l(il, &format!("hc_{which}_scale.weight")),
            base: self.l(il, &format!("hc_{which}_base.weight")),
        }
    }

    fn compressor(&mut self, il: usize, prefix: &str) -> CompressorWeights {
        CompressorWeights {
            ape: self.l(il, &format!("{prefix}_ape.weight")),
            kv: self.l(il, &format!("{prefix}_kv.weight")),
            gate: self.l(il, &format!("{prefix}_gate.weight")),
            norm: self.l(il, &format!("{prefix}_norm.weight")),
        }
    }

    fn layer(&mut self, cfg: &Config, il: usize) -> LayerWeights {
        let hc_attn = self.hc(il, "attn");
        let attn_norm = self.l(il, "attn_norm.weight");
        let attn_q_a = self.l(il, "attn_q_a.weight");
        let attn_q_a_norm = self.l(il, "attn_q_a_norm.weight");
        let attn_q_b = self.l(il, "attn_q_b.weight");
        let attn_kv = self.l(il, "attn_kv.weight");
        let attn_kv_a_norm = self.l(il, "attn_kv_a_norm.weight");
        let attn_sinks = self.l(il, "attn_sinks.weight");
        let attn_output_a = self.l(il, "attn_output_a.weight");
        let attn_output_b = self.l(il, "attn_output_b.weight");
        let attn_extra = match cfg.attn_kinds[il] {
            AttnKind::Window => LayerAttnExtra::Window,
            AttnKind::Compressed4 => LayerAttnExtra::Compressed4 {
                compressor: self.compressor(il, "attn_compressor"),
                indexer: IndexerWeights {
                    attn_q_b: self.l(il, "indexer.attn_q_b.weight"),
                    proj: self.l(il, "indexer.proj.weight"),
                    compressor: self.compressor(il, "indexer_compressor"),
                },
            },
            AttnKind::CompressedN(_) => LayerAttnExtra::CompressedN {
                compressor: self.compressor(il, "attn_compressor"),
            },
        };
        LayerWeights {
            hc_attn,
            attn_norm,
            attn_q_a,
            attn_q_a_norm,
            attn_q_b,
            attn_kv,
            attn_kv_a_norm,
            attn_sinks,
            attn_output_a,
            attn_output_b,
            attn_extra,
            hc_ffn: self.hc(il, "ffn"),
            ffn_norm: self.l(il, "ffn_norm.weight"),
            ffn_gate_inp: self.l(il, "ffn_gate_inp.weight"),
            exp_probs_b: self.0.remove(&layer_tensor_name(il, "exp_probs_b.bias")),
            ffn_gate_tid2eid: self
                .0
                .remove(&layer_tensor_name(il, "ffn_gate_tid2eid.weight")),
            ffn_gate_exps: self.l(il, "ffn_gate_exps.weight"),
            ffn_up_exps: self.l(il, "ffn_up_exps.weight"),
            ffn_down_exps: self.l(il, "ffn_down_exps.weight"),
            ffn_gate_shexp: self.l(il, "ffn_gate_shexp.weight"),
            ffn_up_shexp: self.l(il, "ffn_up_shexp.weight"),
            ffn_down_shexp: self.l(il, "ffn_down_shexp.weight"),
        }
    }
}

fn check_expert_ids(t: &Tensor, n_expert: usize, problems: &mut Vec<Problem>) {
    let bad = t.bytes().chunks_exact(4).enumerate().find_map(|(i, b)| {
        let id = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (id < 0 || id as usize >= n_expert).then_some((i, id))
    });
    if let Some((i, id)) = bad {
        problems.push(Problem::TensorData {
            name: t.name().to_string(),
            reason: format!("element {i} is expert id {id}, outside 0..{n_expert}"),
        });
    }
}
