//! The decode forward pass on the GPU, laid out like `ds4-cpu`'s forward.rs (STYLE §2.3): the same
//! steps in spec order, launching kernels instead of looping. One call of [`decode_step`] queues a
//! whole token (embedding to logits) without a host sync, so it can be captured as one CUDA graph;
//! every kernel reads the token and position from the device `Step` buffer.
//!
//! Numerics: f32 activations against the stored weights (the model's semantics, spec §3.13),
//! f64 sums of squares in RMSNorm, FP8/FP4 simulation and f16 rounding of every cached row as the
//! CPU reference does, fixed-order reductions (no float atomics).

use std::sync::Arc;

use ds4_gguf::TensorType;
use ds4_model::{AttnKind, Config};

use crate::device::{DevBuf, Device};
use crate::experts::ExpertKernels;
use crate::launch::{
    AttnPrep, CompressorArgs, DPtr, DenseInput, DenseMat, GemvArgs, GemvMode, HcFold, Kernels,
    RopeArgs, DENSE_MAX_PF,
};
use crate::weights::{DevAttnExtra, DevCompressor, DevHc, DevLayer, DevTensor, DevWeights};
use crate::Error;

const NEG: f32 = -1.0e30;

// ---- spec/model.md §4.1 KV state ----------------------------------------------------------------

/// One compressor's frontier: `coff·R` rows of `coff·D` (kv, score).
pub struct Frontier {
    pub kv: DevBuf,
    pub score: DevBuf,
    pub rows: usize,
    pub width: usize,
}

/// One layer's cache on the device.
pub struct LayerKv {
    /// Raw window ring, `raw_cap` rows of head_dim; row of position p is p mod raw_cap.
    pub ring: DevBuf,
    /// Compressed attention rows (`comp_cap` × head_dim), R ≠ 0.
    pub comp: Option<DevBuf>,
    pub attn_frontier: Option<Frontier>,
    /// Indexer rows (`comp_cap` × idx_head_dim), R = 4.
    pub index_comp: Option<DevBuf>,
    pub index_frontier: Option<Frontier>,
    pub comp_cap: usize,
}

/// The whole KV state of one session.
pub struct KvState {
    pub layers: Vec<LayerKv>,
    pub raw_cap: usize,
    pub ctx: usize,
}

impl KvState {
    pub fn new(dev: &Arc<Device>, cfg: &Config, ctx: usize) -> Result<KvState, Error> {
        let raw_cap = cfg.n_swa.min(ctx).max(1);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let kind = cfg.attn_kinds[il];
            let r = kind.ratio();
            let comp_cap = ctx.checked_div(r).map_or(0, |n| n + 2);
            let frontier = |d: usize| -> Result<Frontier, Error> {
                let (rows, width) = (kind.coff() * r, kind.coff() * d);
                Ok(Frontier {
                    kv: dev.alloc(rows * width * 4)?,
                    score: dev.alloc(rows * width * 4)?,
                    rows,
                    width,
                })
            };
            let (comp, attn_frontier) = if r > 0 {
                (
                    Some(dev.alloc(comp_cap * cfg.head_dim * 4)?),
                    Some(frontier(cfg.head_dim)?),
                )
            } else {
                (None, None)
            };
            let (index_comp, index_frontier) = if kind.has_indexer() {
                (
                    Some(dev.alloc(comp_cap * cfg.idx_head_dim * 4)?),
                    Some(frontier(cfg.idx_head_dim)?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerKv {
                ring: dev.alloc(raw_cap * cfg.head_dim * 4)?,
                comp,
                attn_frontier,
                index_comp,
                index_frontier,
                comp_cap,
            });
        }
        let kv = KvState {
            layers,
            raw_cap,
            ctx,
        };
        kv.reset()?;
        Ok(kv)
    }

    /// Empty state: zero rows, frontier kv 0 and score NEG (spec §3.5 compressor init).
    pub fn reset(&self) -> Result<(), Error> {
        for l in &self.layers {
            l.ring.fill_bytes(0)?;
            for f in [&l.attn_frontier, &l.index_frontier].into_iter().flatten() {
                f.kv.fill_bytes(0)?;
                f.score.upload(0, &vec![NEG; f.rows * f.width])?;
            }
        }
        Ok(())
    }

    /// Bytes of device memory held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.ring.bytes()
                    + l.comp.as_ref().map_or(0, |b| b.bytes())
                    + l.index_comp.as_ref().map_or(0, |b| b.bytes())
                    + [&l.attn_frontier, &l.index_frontier]
                        .into_iter()
                        .flatten()
                        .map(|f| f.kv.bytes() + f.score.bytes())
                        .sum::<usize>()
            })
            .sum()
    }
}

// ---- activations ----------------------------------------------------------------------------------

/// Every activation buffer of one decode step, sized once from `Config` (nothing is allocated
/// per token), and the routed-expert kernels the step launches.
pub struct Scratch {
    /// Routed-expert SwiGLU/down kernels (kernels/experts.cu; generic GEMV for other shapes).
    pub experts: ExpertKernels,
    /// `Step { token, pos }`
    pub step: DevBuf,
    /// The HC streams, ping-ponged between `x` and `x2` by the fused HC step (it reads one while
    /// writing the other).
    pub x: DevBuf,
    pub x2: DevBuf,
    /// Zero between launches: `hc_fused`'s count of finished blocks.
    pub hc_counter: DevBuf,
    /// `hc_fused`'s per-block partial sums.
    pub hc_part: DevBuf,
    pub hc_scale: DevBuf,
    pub mix: DevBuf,
    pub hcw: DevBuf,
    pub xa: DevBuf,
    /// The FFN input after its RMSNorm (routed experts read it).
    pub xn: DevBuf,
    pub qa: DevBuf,
    pub qn: DevBuf,
    pub q: DevBuf,
    pub kv_raw: DevBuf,
    pub kvp: DevBuf,
    pub scp: DevBuf,
    /// The indexer compressor's projections (its own buffers: every projection of `xa` runs in
    /// one launch).
    pub ikvp: DevBuf,
    pub iscp: DevBuf,
    pub qi: DevBuf,
    pub iw: DevBuf,
    pub scores: DevBuf,
    pub list: DevBuf,
    /// Zero between launches: `index_select`'s count of finished blocks.
    pub index_counter: DevBuf,
    pub index_gate: DevBuf,
    pub o: DevBuf,
    /// attention_split's per-slice partial outputs, (max, sum) pairs and head-group counters.
    pub att_part_o: DevBuf,
    pub att_part_ml: DevBuf,
    pub att_counters: DevBuf,
    pub low: DevBuf,
    pub attn_out: DevBuf,
    pub router: DevBuf,
    pub sel: DevBuf,
    pub route_w: DevBuf,
    pub mid: DevBuf,
    /// The shared expert's output; the routed down projection adds it (F7).
    pub sh_out: DevBuf,
    pub shmid: DevBuf,
    pub ffn_out: DevBuf,
    pub head_in: DevBuf,
    pub logits: DevBuf,
}

impl Scratch {
    pub fn new(dev: &Arc<Device>, cfg: &Config, ctx: usize) -> Result<Scratch, Error> {
        let f = |n: usize| dev.alloc(n * 4);
        let comp_cap = ctx / 4 + 2;
        let width = (2 * cfg.head_dim).max(2 * cfg.idx_head_dim);
        Ok(Scratch {
            experts: ExpertKernels::new(dev)?,
            step: f(2)?,
            x: f(cfg.hc_dim())?,
            x2: f(cfg.hc_dim())?,
            hc_counter: f(1)?,
            hc_part: f(Kernels::HC_BLOCKS_MAX * (2 + cfg.hc_mix()))?,
            hc_scale: f(1)?,
            mix: f(cfg.hc_mix().max(cfg.n_hc))?,
            hcw: f(cfg.hc_mix())?,
            xa: f(cfg.n_embd)?,
            xn: f(cfg.n_embd)?,
            qa: f(cfg.q_lora_rank)?,
            qn: f(cfg.q_lora_rank)?,
            q: f(cfg.q_dim())?,
            kv_raw: f(cfg.head_dim)?,
            kvp: f(width)?,
            scp: f(width)?,
            ikvp: f(width)?,
            iscp: f(width)?,
            qi: f(cfg.idx_q_dim())?,
            iw: f(cfg.n_idx_head)?,
            scores: f(comp_cap)?,
            list: f(comp_cap.max(cfg.idx_top_k))?,
            index_counter: f(1)?,
            index_gate: f(1)?,
            o: f(cfg.q_dim())?,
            att_part_o: f(cfg.n_head * Kernels::ATT_SPLIT_MAX * cfg.head_dim)?,
            att_part_ml: f(cfg.n_head * Kernels::ATT_SPLIT_MAX * 2)?,
            att_counters: f(cfg.n_head.div_ceil(Kernels::ATT_HG))?,
            low: f(cfg.out_low_dim())?,
            attn_out: f(cfg.n_embd)?,
            router: f(cfg.n_expert)?,
            sel: f(cfg.n_expert_used)?,
            route_w: f(cfg.n_expert_used)?,
            mid: f(cfg.n_expert_used * cfg.n_ff_exp)?,
            sh_out: f(cfg.n_embd)?,
            shmid: f(cfg.n_ff_exp)?,
            ffn_out: f(cfg.n_embd)?,
            head_in: f(cfg.n_embd)?,
            logits: f(cfg.n_vocab)?,
        })
    }
}

// ---- spec/model.md §3.2 P2 matrix-vector products ------------------------------------------------

/// `y = W·x` (+ optional grouping, scale, add, gate), dispatching on the tensor's stored type.
struct Mv<'a> {
    w: &'a DevTensor,
    x: DPtr,
    y: DPtr,
    add: DPtr,
    xscale: DPtr,
    gate: DPtr,
    rows_per_group: usize,
    alpha: f32,
    prefetch: [(DPtr, usize); DENSE_MAX_PF],
}

impl<'a> Mv<'a> {
    fn new(w: &'a DevTensor, x: DPtr, y: DPtr) -> Mv<'a> {
        Mv {
            w,
            x,
            y,
            add: 0,
            xscale: 0,
            gate: 0,
            rows_per_group: 0,
            alpha: 1.0,
            prefetch: [(0, 0); DENSE_MAX_PF],
        }
    }
    fn run(self, k: &Kernels) -> Result<(), Error> {
        if self.w.ty == TensorType::Q8_0 {
            let mut m = dense_mat(self.w, self.y)?;
            m.add = self.add;
            m.gate = self.gate;
            m.alpha = self.alpha;
            m.rows_per_group = self.rows_per_group as i32;
            let input = DenseInput {
                x: self.x,
                n_in: self.w.n_in(),
                xscale: self.xscale,
                prefetch: self.prefetch,
                ..Default::default()
            };
            return k.dense(input, &[m]);
        }
        let a = GemvArgs {
            w: self.w.ptr(),
            x: self.x,
            y: self.y,
            add: self.add,
            xscale: self.xscale,
            gate: self.gate,
            row_bytes: self.w.row_bytes(),
            n_in: self.w.n_in() as i32,
            n_rows: self.w.n_out() as i32,
            rows_per_group: self.rows_per_group as i32,
            alpha: self.alpha,
            ..Default::default()
        };
        k.gemv(self.w.ty, GemvMode::Plain, a, 1)
    }
}

/// One matrix of a dense launch (Q8_0, F16 or F32): `y = W·x`.
fn dense_mat(w: &DevTensor, y: DPtr) -> Result<DenseMat, Error> {
    if !matches!(w.ty, TensorType::Q8_0 | TensorType::F16 | TensorType::F32) || w.dims.len() > 2 {
        return Err(Error::Unsupported(format!(
            "{} matrix {:?} in a dense launch",
            w.ty, w.dims
        )));
    }
    Ok(DenseMat {
        w: w.ptr(),
        s: w.q8_scales_ptr(),
        y,
        ty: w.ty.code() as i32,
        n_rows: w.n_out() as i32,
        alpha: 1.0,
        ..Default::default()
    })
}

/// The SwiGLU pair `y = silu(min(gate·x, c))·clamp(up·x, ±c)` as one dense matrix (shared expert).
fn dense_swiglu(gate: &DevTensor, up: &DevTensor, y: DPtr) -> Result<DenseMat, Error> {
    if gate.ty != up.ty || gate.dims != up.dims {
        return Err(Error::Unsupported(
            "shared expert gate and up differ in type or shape".into(),
        ));
    }
    let mut m = dense_mat(gate, y)?;
    m.w2 = up.ptr();
    m.s2 = up.q8_scales_ptr();
    m.swiglu = 1;
    Ok(m)
}

/// The most bytes one dense launch prefetches into L2 for the next one (well inside the 50 MB L2,
/// which the kernels in between use too).
const PREFETCH_CAP: usize = 24 << 20;

/// A dense launch's L2 prefetch list: the tensors' bytes in order, cut at [`PREFETCH_CAP`] (or
/// when the slots run out). Given to the last dense launch before a stretch of small kernels
/// (attention, HC step, routing), so the next dense launch's weights arrive while HBM would
/// otherwise be idle. A repacked Q8_0 tensor keeps its scales at the end: they go first, so a cut
/// never leaves every tile's scales to come from HBM.
fn prefetch_list(tensors: &[&DevTensor]) -> [(DPtr, usize); DENSE_MAX_PF] {
    let mut ranges = Vec::new();
    for t in tensors {
        if t.ty == TensorType::Q8_0 {
            let n: usize = t.dims.iter().product::<u64>() as usize;
            ranges.push((t.q8_scales_ptr(), n / 16));
            ranges.push((t.ptr(), n));
        } else {
            ranges.push((t.ptr(), t.bytes()));
        }
    }
    let mut out = [(0, 0); DENSE_MAX_PF];
    let mut left = PREFETCH_CAP;
    for (slot, (p, bytes)) in out.iter_mut().zip(ranges) {
        let n = bytes.min(left);
        if n == 0 {
            break;
        }
        *slot = (p, n);
        left -= n;
    }
    out
}

/// The weights of a layer's first dense launch (the projections of its attention input).
fn xa_weights(l: &DevLayer) -> Vec<&DevTensor> {
    let mut v = vec![&l.attn_q_a, &l.attn_kv];
    match &l.attn_extra {
        DevAttnExtra::Window => {}
        DevAttnExtra::CompressedN { compressor: c } => v.extend([&c.kv, &c.gate]),
        DevAttnExtra::Compressed4 {
            compressor: c,
            indexer,
        } => v.extend([
            &c.kv,
            &c.gate,
            &indexer.compressor.kv,
            &indexer.compressor.gate,
        ]),
    }
    v
}

// ---- spec/model.md §3.3 embedding, §3.4 hyper-connections ----------------------------------------

/// §3.4: the pending HC post of the previous sublayer (output `y`, 0 for none) applied to the
/// streams in `x_in`, written to `x_out`, then steps 1-6: pre/post/combine to `s.hcw` and the
/// sublayer input before its RMSNorm to `s.xa` (the consumer normalises). One launch. With
/// [`Kernels::hc_fold`] the launch stops after its block shares and the returned [`HcFold`] goes
/// to the consuming dense launch, which finishes the step.
fn hc_step(
    k: &Kernels,
    cfg: &Config,
    hc: &DevHc,
    s: &Scratch,
    (x_in, x_out): (DPtr, DPtr),
    y: DPtr,
) -> Result<Option<HcFold>, Error> {
    if hc.fn_.ty != TensorType::F16 {
        return Err(Error::Unsupported(format!(
            "HC mixer is {}, the CUDA backend reads F16",
            hc.fn_.ty
        )));
    }
    k.hc_fused(
        x_in,
        x_out,
        y,
        s.hcw.ptr(),
        (hc.fn_.ptr(), hc.scale.ptr(), hc.base.ptr()),
        s.hcw.ptr(),
        s.xa.ptr(),
        (s.hc_counter.ptr(), s.hc_part.ptr()),
        cfg,
        k.hc_fold(),
    )?;
    Ok(k.hc_fold().then_some(HcFold {
        streams: x_out,
        part: s.hc_part.ptr(),
        scale: hc.scale.ptr(),
        base: hc.base.ptr(),
        hcw: s.hcw.ptr(),
        xa: s.xa.ptr(),
        n_hc: cfg.n_hc,
        n_mix: cfg.hc_mix(),
        sinkhorn_iters: cfg.sinkhorn_iters,
        hc_eps: cfg.hc_eps,
        rms_eps: cfg.rms_eps,
    }))
}

// ---- spec/model.md §3.5 attention sublayer -------------------------------------------------------

/// §3.5 C2-C9 for one compressor stream of width `dim`, from its projections `kvp`/`scp` (C1).
fn compressor(
    c: &DevCompressor,
    f: &Frontier,
    cache: &DevBuf,
    (kvp, scp): (DPtr, DPtr),
    kind: AttnKind,
    dim: usize,
    qat: bool,
) -> CompressorArgs {
    CompressorArgs {
        kvp,
        scp,
        ape: c.ape.ptr(),
        norm_w: c.norm.ptr(),
        state_kv: f.kv.ptr(),
        state_sc: f.score.ptr(),
        cache: cache.ptr(),
        r: kind.ratio() as i32,
        coff: kind.coff() as i32,
        d: dim as i32,
        qat: qat as i32,
    }
}

/// §3.5 A1-A14. Reads and appends this layer's KV state; `s.x` is updated in place.
#[allow(clippy::too_many_arguments)]
fn attention_sublayer(
    k: &Kernels,
    cfg: &Config,
    il: usize,
    l: &DevLayer,
    kv: &LayerKv,
    raw_cap: usize,
    s: &Scratch,
    hc: Option<HcFold>,
) -> Result<(), Error> {
    let kind = cfg.attn_kinds[il];
    let rope = RopeArgs::new(&cfg.rope(il), cfg.n_rot);
    // Every projection of xa in one launch: A3 q_a, A5 kv, A9/A10.1 C1 compressor kv and score,
    // A10 indexer weights (skipped while the indexer gate is closed).
    let mut mats = vec![
        dense_mat(&l.attn_q_a, s.qa.ptr())?,
        dense_mat(&l.attn_kv, s.kv_raw.ptr())?,
    ];
    let gate = s.index_gate.ptr();
    match &l.attn_extra {
        DevAttnExtra::Window => {}
        DevAttnExtra::CompressedN { compressor: c } => {
            mats.push(dense_mat(&c.kv, s.kvp.ptr())?);
            mats.push(dense_mat(&c.gate, s.scp.ptr())?);
        }
        DevAttnExtra::Compressed4 {
            compressor: c,
            indexer,
        } => {
            let ic = &indexer.compressor;
            mats.push(dense_mat(&c.kv, s.kvp.ptr())?);
            mats.push(dense_mat(&c.gate, s.scp.ptr())?);
            mats.push(dense_mat(&ic.kv, s.ikvp.ptr())?);
            mats.push(dense_mat(&ic.gate, s.iscp.ptr())?);
            let mut proj = dense_mat(&indexer.proj, s.iw.ptr())?;
            proj.gate = gate;
            proj.alpha = cfg.indexer_score_scale();
            mats.push(proj);
        }
    }
    // A2: the sublayer's RMSNorm of the HC output, applied while staging the input.
    let from_xa = DenseInput {
        x: s.xa.ptr(),
        n_in: cfg.n_embd,
        norm: Some((l.attn_norm.ptr(), cfg.rms_eps)),
        hc,
        ..Default::default()
    };
    k.dense(from_xa, &mats)?;
    // A4 q_b and A10.2 the indexer's queries, both from qn = RMSNorm(qa) ⊙ q_a_norm (normalised
    // inside the launch).
    let mut mats = vec![dense_mat(&l.attn_q_b, s.q.ptr())?];
    if let DevAttnExtra::Compressed4 { indexer, .. } = &l.attn_extra {
        let mut qi = dense_mat(&indexer.attn_q_b, s.qi.ptr())?;
        qi.gate = gate;
        mats.push(qi);
    }
    let from_qn = DenseInput {
        x: s.qa.ptr(),
        n_in: cfg.q_lora_rank,
        norm: Some((l.attn_q_a_norm.ptr(), cfg.rms_eps)),
        prefetch: prefetch_list(&[&l.attn_output_a]), // read after the attention kernels
        ..Default::default()
    };
    k.dense(from_qn, &mats)?;
    // A4-A10.2 side by side in one launch, then the indexer scores and top-k.
    let (comp, list, compressors, indexer_q) = match (&l.attn_extra, &kv.comp, &kv.attn_frontier) {
        (DevAttnExtra::Window, _, _) => (0, 0, Vec::new(), None),
        (DevAttnExtra::CompressedN { compressor: c }, Some(cache), Some(f)) => {
            let attn = compressor(
                c,
                f,
                cache,
                (s.kvp.ptr(), s.scp.ptr()),
                kind,
                cfg.head_dim,
                false,
            );
            (cache.ptr(), 0, vec![attn], None)
        }
        (
            DevAttnExtra::Compressed4 {
                compressor: c,
                indexer,
            },
            Some(cache),
            Some(f),
        ) => {
            let (Some(icache), Some(ifr)) = (&kv.index_comp, &kv.index_frontier) else {
                return Err(Error::Unsupported(format!(
                    "layer {il}: indexer state missing"
                )));
            };
            let attn = compressor(
                c,
                f,
                cache,
                (s.kvp.ptr(), s.scp.ptr()),
                kind,
                cfg.head_dim,
                false,
            );
            let idx = compressor(
                &indexer.compressor,
                ifr,
                icache,
                (s.ikvp.ptr(), s.iscp.ptr()),
                kind,
                cfg.idx_head_dim,
                true,
            );
            (
                cache.ptr(),
                s.list.ptr(),
                vec![attn, idx],
                Some((s.qi.ptr(), cfg.n_idx_head, gate)),
            )
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "layer {il}: KV state does not match the layer kind"
            )))
        }
    };
    k.attn_prep(&AttnPrep {
        q: s.q.ptr(),
        kv_raw: s.kv_raw.ptr(),
        kv_norm_w: l.attn_kv_a_norm.ptr(),
        ring: (kv.ring.ptr(), raw_cap),
        compressors: &compressors,
        indexer_q,
        step: s.step.ptr(),
        rope,
        n_head: cfg.n_head,
        head_dim: cfg.head_dim,
        eps: cfg.rms_eps,
    })?; // A4-A9, A10.1, A10.2 (queries)
    if let (Some(icache), true) = (&kv.index_comp, indexer_q.is_some()) {
        k.index_select(
            (icache.ptr(), s.qi.ptr(), s.iw.ptr()),
            s.step.ptr(),
            gate,
            (kind.ratio(), cfg.n_idx_head, cfg.idx_top_k),
            s.scores.ptr(),
            s.list.ptr(),
            s.index_counter.ptr(),
            kv.comp_cap,
        )?; // A10.2 scores and top-k
    }
    let max_rows = raw_cap
        + match kind {
            AttnKind::Window => 0,
            AttnKind::Compressed4 => cfg.idx_top_k.min(kv.comp_cap),
            AttnKind::CompressedN(_) => kv.comp_cap,
        };
    k.attention_split(
        s.q.ptr(),
        (kv.ring.ptr(), raw_cap),
        comp,
        list,
        l.attn_sinks.ptr(),
        s.step.ptr(),
        cfg,
        kind.ratio(),
        rope,
        s.o.ptr(),
        (
            s.att_part_o.ptr(),
            s.att_part_ml.ptr(),
            s.att_counters.ptr(),
        ),
        max_rows,
    )?; // A11, A12
    let mut mv = Mv::new(&l.attn_output_a, s.o.ptr(), s.low.ptr()); // A13: 8 groups of 8 heads
    mv.rows_per_group = cfg.o_lora_rank;
    mv.run(k)?;
    let mut mv = Mv::new(&l.attn_output_b, s.low.ptr(), s.attn_out.ptr());
    mv.prefetch = prefetch_list(&[&l.ffn_gate_inp, &l.ffn_gate_shexp, &l.ffn_up_shexp]); // after the HC step
    mv.run(k) // A14: HC post in the next hc_step
}

// ---- spec/model.md §3.6 FFN sublayer -------------------------------------------------------------

/// §3.6 F1-F8; `s.x` is updated in place.
/// `next`: the weights of the dense launch after this sublayer's HC step (the next layer's
/// attention projections, or the output head), prefetched by its last dense launch.
fn ffn_sublayer(
    k: &Kernels,
    cfg: &Config,
    l: &DevLayer,
    s: &Scratch,
    next: &[&DevTensor],
    hc: Option<HcFold>,
) -> Result<(), Error> {
    let xf = s.xn.ptr(); // F1: RMSNorm(hc_step's output) ⊙ ffn_norm, written by the first launch
                         // F2 router logits and F6 the shared expert's SwiGLU, both from xf, in one launch.
    let from_xf = DenseInput {
        x: s.xa.ptr(),
        n_in: cfg.n_embd,
        norm: Some((l.ffn_norm.ptr(), cfg.rms_eps)),
        clamp: cfg.swiglu_clamp,
        x_out: xf,
        hc,
        ..Default::default()
    };
    k.dense(
        from_xf,
        &[
            dense_mat(&l.ffn_gate_inp, s.router.ptr())?,
            dense_swiglu(&l.ffn_gate_shexp, &l.ffn_up_shexp, s.shmid.ptr())?,
        ],
    )?;
    // F6 the shared expert's down projection right away (it needs nothing from the routed
    // experts): two dense launches back to back, and the last one before the routing and the
    // routed experts (which leave HBM bandwidth spare) prefetches the next dense launch's weights.
    let mut mv = Mv::new(&l.ffn_down_shexp, s.shmid.ptr(), s.sh_out.ptr());
    mv.prefetch = prefetch_list(next);
    mv.run(k)?;
    k.route(
        s.router.ptr(),
        l.exp_probs_b.as_ref().map_or(0, |t| t.ptr()),
        l.ffn_gate_tid2eid.as_ref().map_or(0, |t| t.ptr()),
        s.step.ptr(),
        cfg.n_expert,
        cfg.n_expert_used,
        cfg.expert_weight_scale,
        s.sel.ptr(),
        s.route_w.ptr(),
    )?; // F3, F4
    let n_used = cfg.n_expert_used;
    let (gate, up) = (&l.ffn_gate_exps, &l.ffn_up_exps);
    if gate.ty != up.ty {
        return Err(Error::Unsupported(
            "routed gate and up experts differ in type".into(),
        ));
    }
    let a = GemvArgs {
        w: gate.ptr(),
        w2: up.ptr(),
        x: xf,
        y: s.mid.ptr(),
        sel: s.sel.ptr(),
        route_w: s.route_w.ptr(),
        row_bytes: gate.row_bytes(),
        expert_bytes: gate.expert_bytes(),
        n_in: gate.n_in() as i32,
        n_rows: gate.n_out() as i32,
        n_sel: n_used as i32,
        clamp: cfg.swiglu_clamp,
        alpha: 1.0,
        ..Default::default()
    };
    s.experts.swiglu(gate.ty, &a, n_used)?; // F5
    let d = &l.ffn_down_exps;
    let a = GemvArgs {
        w: d.ptr(),
        x: s.mid.ptr(),
        y: s.ffn_out.ptr(),
        add: s.sh_out.ptr(), // F7: moe + sh (the add is commutative: the same bits either order)
        sel: s.sel.ptr(),
        row_bytes: d.row_bytes(),
        expert_bytes: d.expert_bytes(),
        n_in: d.n_in() as i32,
        n_rows: d.n_out() as i32,
        n_sel: n_used as i32,
        alpha: 1.0,
        ..Default::default()
    };
    s.experts.down(d.ty, &a) // F5: Σ_k in selection order, + sh; F8: HC post in the next hc_step
}

// ---- spec/model.md §3.7 output head, §3.1 the whole step -----------------------------------------

fn output_head(
    k: &Kernels,
    cfg: &Config,
    w: &DevWeights,
    s: &Scratch,
    x: DPtr,
) -> Result<(), Error> {
    k.rms_scale(x, cfg.hc_dim(), cfg.rms_eps, s.hc_scale.ptr())?; // 1
    let mut mv = Mv::new(&w.output_hc_fn, x, s.mix.ptr()); // 2
    mv.xscale = s.hc_scale.ptr();
    mv.run(k)?;
    k.head_collapse(
        s.mix.ptr(),
        w.output_hc_scale.ptr(),
        w.output_hc_base.ptr(),
        x,
        w.output_norm.ptr(),
        s.head_in.ptr(),
        cfg,
    )?; // 3-5
    Mv::new(&w.output, s.head_in.ptr(), s.logits.ptr()).run(k) // 6
}

/// Queues one whole token (spec §3.1) for the token and position in `s.step`. No host sync.
pub fn decode_step(
    k: &Kernels,
    cfg: &Config,
    w: &DevWeights,
    kv: &KvState,
    s: &Scratch,
) -> Result<(), Error> {
    k.embed(
        w.token_embd.ptr(),
        s.step.ptr(),
        s.x.ptr(),
        cfg.n_embd,
        cfg.n_hc,
    )?; // §3.3
    if cfg.attn_kinds.contains(&AttnKind::Compressed4) {
        k.set_index_gate(s.step.ptr(), 4, cfg.idx_top_k, s.index_gate.ptr())?;
    }
    // The streams alternate between two buffers; each sublayer's HC post runs at the start of the
    // next hc_step (fused), the last one before the head.
    let bufs = [s.x.ptr(), s.x2.ptr()];
    let (mut cur, mut pending) = (0usize, 0 as DPtr);
    for (il, (l, lkv)) in w.layers.iter().zip(&kv.layers).enumerate() {
        let hc = hc_step(k, cfg, &l.hc_attn, s, (bufs[cur], bufs[1 - cur]), pending)?; // A1
        cur = 1 - cur;
        attention_sublayer(k, cfg, il, l, lkv, kv.raw_cap, s, hc)?;
        let hc = hc_step(
            k,
            cfg,
            &l.hc_ffn,
            s,
            (bufs[cur], bufs[1 - cur]),
            s.attn_out.ptr(),
        )?; // A14 + F1
        cur = 1 - cur;
        let next = match w.layers.get(il + 1) {
            Some(nl) => xa_weights(nl),
            None => vec![&w.output],
        };
        ffn_sublayer(k, cfg, l, s, &next, hc)?;
        pending = s.ffn_out.ptr();
    }
    if pending != 0 {
        k.hc_post(bufs[cur], pending, s.hcw.ptr(), cfg.n_embd, cfg.n_hc)?; // F8 of the last layer
    }
    output_head(k, cfg, w, s, bufs[cur])
}

/// Checks that the shape fits what the decode kernels assume (the launchers assert these as
/// invariants): a model outside them gets one clear error when the backend is created, not a panic.
pub fn check_shape(cfg: &Config) -> Result<(), Error> {
    let mut bad = Vec::new();
    if cfg.n_hc > 8 || cfg.hc_mix() > 80 {
        bad.push(format!("{} hyper-connection streams (at most 8)", cfg.n_hc));
    }
    if !cfg.head_dim.is_multiple_of(128) || cfg.head_dim > 512 {
        bad.push(format!(
            "head_dim {} (a multiple of 128, at most 512)",
            cfg.head_dim
        ));
    }
    if !cfg.n_head.is_multiple_of(Kernels::ATT_HG) {
        bad.push(format!(
            "{} heads (a multiple of {})",
            cfg.n_head,
            Kernels::ATT_HG
        ));
    }
    if !cfg.n_embd.is_multiple_of(32) || !cfg.q_lora_rank.is_multiple_of(32) {
        bad.push(format!(
            "n_embd {} and q_lora_rank {} (multiples of 32)",
            cfg.n_embd, cfg.q_lora_rank
        ));
    }
    if cfg.n_expert > 1024 || cfg.n_expert_used > 16 {
        bad.push(format!(
            "{} experts, {} per token (at most 1024 and 16)",
            cfg.n_expert, cfg.n_expert_used
        ));
    }
    if !cfg.o_lora_rank.is_multiple_of(8) {
        bad.push(format!("o_lora_rank {} (a multiple of 8)", cfg.o_lora_rank));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "the CUDA backend does not support this shape: {}",
            bad.join("; ")
        )))
    }
}

/// Checks that the weights are in types the kernels read.
pub fn check_types(w: &DevWeights) -> Result<(), Error> {
    if w.token_embd.ty != TensorType::F16 {
        return Err(Error::Unsupported(format!(
            "token_embd is {}, the CUDA backend reads F16",
            w.token_embd.ty
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_outside_the_kernels_are_refused_with_every_reason() {
        let real = Config::real(43);
        assert!(check_shape(&real).is_ok());
        let mut cfg = real.clone();
        cfg.n_hc = 9;
        cfg.head_dim = 192;
        cfg.n_head = 6;
        let msg = check_shape(&cfg).unwrap_err().to_string();
        for needle in ["streams", "head_dim 192", "6 heads"] {
            assert!(msg.contains(needle), "{msg}");
        }
    }
}
