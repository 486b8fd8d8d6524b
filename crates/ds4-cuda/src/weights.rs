//! Device copies of the weights, bound by the same names as `ds4_model::Weights`. Blocks stay as
//! in the GGUF except Q8_0, which is repacked ([`repack_q8_0`]) so that rows stream with aligned
//! 16-byte loads. Built either by uploading a model's tensors once, or
//! by generating random-but-valid full-shape weights in GPU memory (`ds4-bench --synthetic`).

use std::sync::Arc;

use ds4_gguf::TensorType;
use ds4_model::{AttnKind, Config, LayerAttnExtra, Tensor, Weights};

use crate::device::DevBuf;
use crate::launch::{DPtr, Kernels};
use crate::Error;

/// One tensor in device memory. `dims` in GGUF order (`dims[0]` contiguous).
pub struct DevTensor {
    buf: DevBuf,
    pub ty: TensorType,
    pub dims: Vec<u64>,
}

impl DevTensor {
    pub fn ptr(&self) -> DPtr {
        self.buf.ptr()
    }
    pub fn n_in(&self) -> usize {
        self.dims[0] as usize
    }
    pub fn n_out(&self) -> usize {
        self.dims.get(1).copied().unwrap_or(1) as usize
    }
    /// Bytes of one row as stored on the device (Q8_0: the int8 quants only).
    pub fn row_bytes(&self) -> u64 {
        if self.ty == TensorType::Q8_0 {
            return self.dims[0];
        }
        self.ty.row_bytes(self.dims[0]).unwrap_or(0)
    }
    /// Q8_0 only: the f16 block scales, `[rows][n_in/32]` (see [`repack_q8_0`]); 0 otherwise.
    pub fn q8_scales_ptr(&self) -> DPtr {
        if self.ty != TensorType::Q8_0 {
            return 0;
        }
        let rows: u64 = self.dims[1..].iter().product();
        self.buf.ptr() + q8_scales_offset((rows * self.dims[0]) as usize) as u64
    }
    /// Bytes of one expert matrix of a 3-D tensor.
    pub fn expert_bytes(&self) -> u64 {
        self.row_bytes() * self.n_out() as u64
    }
    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }
}

/// Byte offset of the scales in a repacked Q8_0 tensor of `n` elements.
pub fn q8_scales_offset(n: usize) -> usize {
    n.div_ceil(256) * 256
}

/// Repacks GGUF Q8_0 blocks (`f16 d, int8 qs[32]`, 34 bytes each) into the device layout: all
/// int8 quants row-major (`n` bytes), then at [`q8_scales_offset`]`(n)` every block's f16 scale in
/// the same order. Rows then start 32-byte aligned and stream with plain 16-byte loads.
pub fn repack_q8_0(raw: &[u8]) -> Result<Vec<u8>, Error> {
    if !raw.len().is_multiple_of(34) {
        return Err(Error::Unsupported(format!(
            "Q8_0 data of {} bytes is not a whole number of 34-byte blocks",
            raw.len()
        )));
    }
    let n_blocks = raw.len() / 34;
    let n = n_blocks * 32;
    let off = q8_scales_offset(n);
    let mut out = vec![0u8; off + 2 * n_blocks];
    let (qs, scales) = out.split_at_mut(off);
    for (b, blk) in raw.chunks_exact(34).enumerate() {
        scales[2 * b..2 * b + 2].copy_from_slice(&blk[..2]);
        qs[32 * b..32 * b + 32].copy_from_slice(&blk[2..]);
    }
    Ok(out)
}

/// `E[v²]/d² = E[((2t+1)/8)²]·E[g²]` for IQ2_XXS over the grid's bytes (ds4-quant synth.rs).
fn iq2xxs_rms_per_d() -> f32 {
    let sum: f64 = ds4_quant::IQ2XXS_GRID
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .map(|b| (b as f64) * (b as f64))
        .sum();
    ((341.0 / 64.0) * sum / 2048.0).sqrt() as f32
}

/// Where tensors come from.
enum Source<'a> {
    File,
    Synthetic {
        kern: &'a Kernels,
        seed: u64,
        routed: TensorType,
    },
}

struct Builder<'a> {
    kern: &'a Kernels,
    src: Source<'a>,
    total_bytes: usize,
}

impl Builder<'_> {
    /// Uploads `t` (file source).
    fn upload(&mut self, t: &Tensor) -> Result<DevTensor, Error> {
        if t.ty() == TensorType::Q8_0 && t.dims().len() > 2 {
            return Err(Error::Unsupported(
                "Q8_0 expert tensors (3-D) are not supported on CUDA".into(),
            ));
        }
        let repacked;
        let bytes = if t.ty() == TensorType::Q8_0 {
            repacked = repack_q8_0(t.bytes())?;
            &repacked[..]
        } else {
            t.bytes()
        };
        let buf = self.kern.device().alloc(bytes.len())?;
        buf.upload(0, bytes)?;
        self.total_bytes += bytes.len();
        Ok(DevTensor {
            buf,
            ty: t.ty(),
            dims: t.dims().to_vec(),
        })
    }

    /// A random tensor of type `ty` and `dims` whose values have RMS about `rms`.
    fn random(&mut self, ty: TensorType, dims: &[u64], rms: f32) -> Result<DevTensor, Error> {
        let Source::Synthetic { kern, seed, .. } = &mut self.src else {
            unreachable!("invariant: random() only for synthetic sources")
        };
        let n: u64 = dims.iter().product();
        *seed += 1;
        if ty == TensorType::Q8_0 {
            // Repacked layout: random int8 quants, then scales with RMS(d·q) about `rms`.
            let n = n as usize;
            let off = q8_scales_offset(n);
            let bytes = off + 2 * (n / 32);
            let buf = kern.device().alloc(bytes)?;
            // Every int8 pattern is a valid quant: fill_random gives integer types random bits.
            kern.fill_random(buf.ptr(), off, TensorType::I32, *seed, 0.0, 0.0)?;
            kern.fill_q8_scales(buf.ptr() + off as u64, n / 32, rms / 73.900_27)?;
            self.total_bytes += bytes;
            return Ok(DevTensor {
                buf,
                ty,
                dims: dims.to_vec(),
            });
        }
        let bytes = (n / ty.block_elems() as u64 * ty.block_bytes() as u64) as usize;
        let buf = kern.device().alloc(bytes)?;
        // RMS of a block's values per unit super-scale d, and dmin/d for a zero mean, for random
        // quant fields (derived in ds4-quant's synth.rs). Uniform ±a has RMS a/√3.
        let (rms_per_d, dmin_ratio) = match ty {
            TensorType::Q8_0 => (73.900_27, 0.0),
            TensorType::Q2K => (13.874_437, 1.5),
            TensorType::Q4K => (258.316_9, 7.5),
            TensorType::Iq2Xxs => (iq2xxs_rms_per_d(), 0.0),
            _ => (1.0 / 3f32.sqrt(), 0.0),
        };
        kern.fill_random(buf.ptr(), bytes, ty, *seed, rms / rms_per_d, dmin_ratio)?;
        self.total_bytes += bytes;
        Ok(DevTensor {
            buf,
            ty,
            dims: dims.to_vec(),
        })
    }

    /// `t` from the file, or a random tensor of `ty`/`dims`. Scale follows the input width so
    /// synthetic activations stay in range.
    fn get(
        &mut self,
        t: Option<&Tensor>,
        ty: TensorType,
        dims: &[u64],
    ) -> Result<DevTensor, Error> {
        match (&self.src, t) {
            (Source::File, Some(t)) => self.upload(t),
            (Source::File, None) => Err(Error::Unsupported("missing tensor".into())),
            (Source::Synthetic { .. }, _) => {
                // Norm weights, scales and biases near 1; matrices 1/√n_in so outputs stay O(1).
                let rms = if dims.len() == 1 {
                    0.5
                } else {
                    1.0 / (dims[0] as f32).sqrt()
                };
                self.random(ty, dims, rms)
            }
        }
    }

    fn routed(&self) -> TensorType {
        match self.src {
            Source::Synthetic { routed, .. } => routed,
            Source::File => TensorType::Iq2Xxs,
        }
    }
}

pub struct DevHc {
    pub fn_: DevTensor,
    pub scale: DevTensor,
    pub base: DevTensor,
}

pub struct DevCompressor {
    pub ape: DevTensor,
    pub kv: DevTensor,
    pub gate: DevTensor,
    pub norm: DevTensor,
}

pub struct DevIndexer {
    pub attn_q_b: DevTensor,
    pub proj: DevTensor,
    pub compressor: DevCompressor,
}

// One value per layer, built once: boxing the large variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
pub enum DevAttnExtra {
    Window,
    Compressed4 {
        compressor: DevCompressor,
        indexer: DevIndexer,
    },
    CompressedN {
        compressor: DevCompressor,
    },
}

pub struct DevLayer {
    pub hc_attn: DevHc,
    pub attn_norm: DevTensor,
    pub attn_q_a: DevTensor,
    pub attn_q_a_norm: DevTensor,
    pub attn_q_b: DevTensor,
    pub attn_kv: DevTensor,
    pub attn_kv_a_norm: DevTensor,
    pub attn_sinks: DevTensor,
    pub attn_output_a: DevTensor,
    pub attn_output_b: DevTensor,
    pub attn_extra: DevAttnExtra,
    pub hc_ffn: DevHc,
    pub ffn_norm: DevTensor,
    pub ffn_gate_inp: DevTensor,
    pub exp_probs_b: Option<DevTensor>,
    pub ffn_gate_tid2eid: Option<DevTensor>,
    pub ffn_gate_exps: DevTensor,
    pub ffn_up_exps: DevTensor,
    pub ffn_down_exps: DevTensor,
    pub ffn_gate_shexp: DevTensor,
    pub ffn_up_shexp: DevTensor,
    pub ffn_down_shexp: DevTensor,
}

pub struct DevWeights {
    pub token_embd: DevTensor,
    pub layers: Vec<DevLayer>,
    pub output_hc_base: DevTensor,
    pub output_hc_fn: DevTensor,
    pub output_hc_scale: DevTensor,
    pub output_norm: DevTensor,
    pub output: DevTensor,
    /// Bytes of all tensors on the device.
    pub total_bytes: usize,
}

/// Which routed-expert quantization a synthetic model uses (spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticQuant {
    /// IQ2_XXS gate/up, Q2_K down (the published q2 file).
    Q2,
    /// Q4_K gate/up/down (the q4 file).
    Q4,
}

impl DevWeights {
    /// Uploads every tensor of `w` once.
    pub fn upload(kern: &Arc<Kernels>, cfg: &Config, w: &Weights) -> Result<DevWeights, Error> {
        let mut b = Builder {
            kern,
            src: Source::File,
            total_bytes: 0,
        };
        build(&mut b, cfg, Some(w))
    }

    /// Full-shape random weights generated on the GPU (no file).
    pub fn synthetic(
        kern: &Arc<Kernels>,
        cfg: &Config,
        quant: SyntheticQuant,
        seed: u64,
    ) -> Result<DevWeights, Error> {
        let routed = match quant {
            SyntheticQuant::Q2 => TensorType::Iq2Xxs,
            SyntheticQuant::Q4 => TensorType::Q4K,
        };
        let mut b = Builder {
            kern,
            src: Source::Synthetic { kern, seed, routed },
            total_bytes: 0,
        };
        let mut w = build(&mut b, cfg, None)?;
        // Valid expert ids for the hash layers (spec §3.6 F3), generated on the host.
        for (il, l) in w.layers.iter_mut().enumerate() {
            if let Some(t) = &l.ffn_gate_tid2eid {
                let n = cfg.n_expert_used * cfg.n_vocab;
                let mut ids = Vec::with_capacity(n);
                let mut s = seed ^ (il as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for _ in 0..n {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ids.push((s % cfg.n_expert as u64) as i32);
                }
                t.buf.upload(0, &ids)?;
            }
        }
        Ok(w)
    }
}

fn build(b: &mut Builder, cfg: &Config, w: Option<&Weights>) -> Result<DevWeights, Error> {
    use TensorType::*;
    let (e, v, hc) = (cfg.n_embd as u64, cfg.n_vocab as u64, cfg.hc_dim() as u64);
    let mix = cfg.hc_mix() as u64;
    let token_embd = b.get(w.map(|w| &w.token_embd), F16, &[e, v])?;
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for il in 0..cfg.n_layer {
        let lw = w.map(|w| &w.layers[il]);
        let hc_of = |b: &mut Builder, h: Option<&ds4_model::HcWeights>| -> Result<DevHc, Error> {
            Ok(DevHc {
                fn_: b.get(h.map(|h| &h.fn_), F16, &[hc, mix])?,
                scale: b.get(h.map(|h| &h.scale), F32, &[3])?,
                base: b.get(h.map(|h| &h.base), F32, &[mix])?,
            })
        };
        let comp_of = |b: &mut Builder,
                       c: Option<&ds4_model::CompressorWeights>,
                       width: u64,
                       r: u64,
                       d: u64|
         -> Result<DevCompressor, Error> {
            Ok(DevCompressor {
                ape: b.get(c.map(|c| &c.ape), F16, &[width, r])?,
                kv: b.get(c.map(|c| &c.kv), F16, &[e, width])?,
                gate: b.get(c.map(|c| &c.gate), F16, &[e, width])?,
                norm: b.get(c.map(|c| &c.norm), F32, &[d])?,
            })
        };
        let hd = cfg.head_dim as u64;
        let kind = cfg.attn_kinds[il];
        let (r, coff) = (kind.ratio() as u64, kind.coff() as u64);
        let attn_extra = match (kind, lw.map(|l| &l.attn_extra)) {
            (AttnKind::Window, _) => DevAttnExtra::Window,
            (AttnKind::Compressed4, x) => {
                let (c, i) = match x {
                    Some(LayerAttnExtra::Compressed4 {
                        compressor,
                        indexer,
                    }) => (Some(compressor), Some(indexer)),
                    _ => (None, None),
                };
                let ihd = cfg.idx_head_dim as u64;
                DevAttnExtra::Compressed4 {
                    compressor: comp_of(b, c, coff * hd, r, hd)?,
                    indexer: DevIndexer {
                        attn_q_b: b.get(
                            i.map(|i| &i.attn_q_b),
                            F16,
                            &[cfg.q_lora_rank as u64, cfg.idx_q_dim() as u64],
                        )?,
                        proj: b.get(i.map(|i| &i.proj), F16, &[e, cfg.n_idx_head as u64])?,
                        compressor: comp_of(b, i.map(|i| &i.compressor), coff * ihd, r, ihd)?,
                    },
                }
            }
            (AttnKind::CompressedN(_), x) => {
                let c = match x {
                    Some(LayerAttnExtra::CompressedN { compressor }) => Some(compressor),
                    _ => None,
                };
                DevAttnExtra::CompressedN {
                    compressor: comp_of(b, c, coff * hd, r, hd)?,
                }
            }
        };
        if w.is_some()
            && matches!(attn_extra, DevAttnExtra::Window) != matches!(kind, AttnKind::Window)
        {
            return Err(Error::Unsupported(format!(
                "layer {il}: tensors do not match its kind"
            )));
        }
        let routed = lw.map(|l| l.ffn_gate_exps.ty()).unwrap_or(b.routed());
        let down_ty = lw
            .map(|l| l.ffn_down_exps.ty())
            .unwrap_or(if routed == Iq2Xxs { Q2K } else { routed });
        let (ff, ne) = (cfg.n_ff_exp as u64, cfg.n_expert as u64);
        let q = cfg.q_lora_rank as u64;
        let layer = DevLayer {
            hc_attn: hc_of(b, lw.map(|l| &l.hc_attn))?,
            attn_norm: b.get(lw.map(|l| &l.attn_norm), F32, &[e])?,
            attn_q_a: b.get(lw.map(|l| &l.attn_q_a), Q8_0, &[e, q])?,
            attn_q_a_norm: b.get(lw.map(|l| &l.attn_q_a_norm), F32, &[q])?,
            attn_q_b: b.get(lw.map(|l| &l.attn_q_b), Q8_0, &[q, cfg.q_dim() as u64])?,
            attn_kv: b.get(lw.map(|l| &l.attn_kv), Q8_0, &[e, hd])?,
            attn_kv_a_norm: b.get(lw.map(|l| &l.attn_kv_a_norm), F32, &[hd])?,
            attn_sinks: b.get(lw.map(|l| &l.attn_sinks), F32, &[cfg.n_head as u64])?,
            attn_output_a: b.get(
                lw.map(|l| &l.attn_output_a),
                Q8_0,
                &[
                    (cfg.group_heads() * cfg.head_dim) as u64,
                    cfg.out_low_dim() as u64,
                ],
            )?,
            attn_output_b: b.get(
                lw.map(|l| &l.attn_output_b),
                Q8_0,
                &[cfg.out_low_dim() as u64, e],
            )?,
            attn_extra,
            hc_ffn: hc_of(b, lw.map(|l| &l.hc_ffn))?,
            ffn_norm: b.get(lw.map(|l| &l.ffn_norm), F32, &[e])?,
            ffn_gate_inp: b.get(lw.map(|l| &l.ffn_gate_inp), F16, &[e, ne])?,
            exp_probs_b: match lw {
                Some(l) => l.exp_probs_b.as_ref().map(|t| b.upload(t)).transpose()?,
                None => Some(b.get(None, F32, &[ne])?),
            },
            ffn_gate_tid2eid: match lw {
                Some(l) => l
                    .ffn_gate_tid2eid
                    .as_ref()
                    .map(|t| b.upload(t))
                    .transpose()?,
                None if il < cfg.n_hash_layer => {
                    let n = cfg.n_expert_used * cfg.n_vocab * 4;
                    let buf = b.kern.device().alloc(n)?;
                    b.total_bytes += n;
                    Some(DevTensor {
                        buf,
                        ty: I32,
                        dims: vec![cfg.n_expert_used as u64, v],
                    })
                }
                None => None,
            },
            ffn_gate_exps: b.get(lw.map(|l| &l.ffn_gate_exps), routed, &[e, ff, ne])?,
            ffn_up_exps: b.get(lw.map(|l| &l.ffn_up_exps), routed, &[e, ff, ne])?,
            ffn_down_exps: b.get(lw.map(|l| &l.ffn_down_exps), down_ty, &[ff, e, ne])?,
            ffn_gate_shexp: b.get(lw.map(|l| &l.ffn_gate_shexp), Q8_0, &[e, ff])?,
            ffn_up_shexp: b.get(lw.map(|l| &l.ffn_up_shexp), Q8_0, &[e, ff])?,
            ffn_down_shexp: b.get(lw.map(|l| &l.ffn_down_shexp), Q8_0, &[ff, e])?,
        };
        layers.push(layer);
    }
    let h = w.map(|w| &w.head);
    let nh = cfg.n_hc as u64;
    Ok(DevWeights {
        token_embd,
        layers,
        output_hc_base: b.get(h.map(|h| &h.output_hc_base), F32, &[nh])?,
        output_hc_fn: b.get(h.map(|h| &h.output_hc_fn), F16, &[hc, nh])?,
        output_hc_scale: b.get(h.map(|h| &h.output_hc_scale), F32, &[1])?,
        output_norm: b.get(h.map(|h| &h.output_norm), F32, &[e])?,
        output: b.get(h.map(|h| &h.output), Q8_0, &[e, v])?,
        total_bytes: b.total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_repack_splits_quants_and_scales_in_block_order() {
        // Three blocks with distinct scales and quants.
        let mut raw = Vec::new();
        for b in 0..3u8 {
            raw.extend_from_slice(&half::f16::from_f32(0.5 + b as f32).to_le_bytes());
            raw.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(b * 40)));
        }
        let out = repack_q8_0(&raw).unwrap();
        let off = q8_scales_offset(96);
        assert_eq!(off, 256);
        assert_eq!(out.len(), off + 6);
        for b in 0..3 {
            assert_eq!(&out[32 * b..32 * b + 32], &raw[34 * b + 2..34 * b + 34]);
            assert_eq!(&out[off + 2 * b..off + 2 * b + 2], &raw[34 * b..34 * b + 2]);
        }
        assert!(out[96..off].iter().all(|&v| v == 0), "padding stays zero");
        assert!(repack_q8_0(&raw[..33]).is_err(), "a torn block is an error");
    }
}
