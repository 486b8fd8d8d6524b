//! The whole DS4 forward pass over a chunk of tokens, in spec/model.md §3 order.
//!
//! One function per spec step. A chunk runs layer by layer (spec §3.8): every per-token step is
//! batched over the chunk (so a weight row is read once per chunk), and the cache-touching steps
//! (raw push, compressors, indexer, attention: A8-A12) walk the tokens in position order, so a
//! chunk gives the same result as feeding its tokens one at a time. Decode is a chunk of one.

use ds4_model::{Config, LayerAttnExtra, LayerWeights, Routing, Tensor, Weights};
use rayon::prelude::*;

use crate::kv::{CompressedRows, Compressor, KvState, LayerKv, RawWindow};
use crate::matmul::{axpy, dot, dot_seq, matmul, matvec_exact, Mat};
use crate::ops::{self, HcMix, RopeAngles};

// ---- Small f32 parameters, read once ----------------------------------------------------------

/// A compressor's small tensors as f32: the APE rows (`R` rows of `coff·D`) and the norm weight.
pub struct CompressorParams {
    pub ape: Vec<f32>,
    pub norm: Vec<f32>,
}

/// A layer's small tensors (norms, sinks, HC scale/base, router bias, tid2eid) as f32/i32.
/// These are a few KiB per layer; the matrices stay views into the mapped file.
pub struct LayerParams {
    pub hc_attn_scale: Vec<f32>,
    pub hc_attn_base: Vec<f32>,
    pub attn_norm: Vec<f32>,
    pub attn_q_a_norm: Vec<f32>,
    pub attn_kv_a_norm: Vec<f32>,
    pub attn_sinks: Vec<f32>,
    pub attn_compressor: Option<CompressorParams>,
    pub indexer_compressor: Option<CompressorParams>,
    pub hc_ffn_scale: Vec<f32>,
    pub hc_ffn_base: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// Zeros when `exp_probs_b` is absent (spec pitfall 28).
    pub exp_probs_b: Vec<f32>,
    /// `[n_vocab][n_expert_used]` on hash layers, empty otherwise.
    pub tid2eid: Vec<i32>,
}

fn dequant_all(t: &Tensor) -> Vec<f32> {
    let n: usize = t.dims().iter().product::<u64>() as usize;
    let mut out = vec![0.0f32; n];
    for (r, o) in out.chunks_exact_mut(t.n_in()).enumerate() {
        ds4_quant::dequantize_row(t.ty(), t.row(r), o);
    }
    out
}

impl LayerParams {
    pub fn new(cfg: &Config, l: &LayerWeights) -> LayerParams {
        let comp = |c: &ds4_model::CompressorWeights| CompressorParams {
            ape: dequant_all(&c.ape),
            norm: dequant_all(&c.norm),
        };
        let (attn_compressor, indexer_compressor) = match &l.attn_extra {
            LayerAttnExtra::Window => (None, None),
            LayerAttnExtra::Compressed4 {
                compressor,
                indexer,
            } => (Some(comp(compressor)), Some(comp(&indexer.compressor))),
            LayerAttnExtra::CompressedN { compressor } => (Some(comp(compressor)), None),
        };
        LayerParams {
            hc_attn_scale: dequant_all(&l.hc_attn.scale),
            hc_attn_base: dequant_all(&l.hc_attn.base),
            attn_norm: dequant_all(&l.attn_norm),
            attn_q_a_norm: dequant_all(&l.attn_q_a_norm),
            attn_kv_a_norm: dequant_all(&l.attn_kv_a_norm),
            attn_sinks: dequant_all(&l.attn_sinks),
            attn_compressor,
            indexer_compressor,
            hc_ffn_scale: dequant_all(&l.hc_ffn.scale),
            hc_ffn_base: dequant_all(&l.hc_ffn.base),
            ffn_norm: dequant_all(&l.ffn_norm),
            exp_probs_b: l
                .exp_probs_b
                .as_ref()
                .map(dequant_all)
                .unwrap_or_else(|| vec![0.0; cfg.n_expert]),
            tid2eid: l
                .ffn_gate_tid2eid
                .as_ref()
                .map(|t| t.i32s())
                .unwrap_or_default(),
        }
    }
}

/// The output head's small tensors.
pub struct HeadParams {
    pub output_hc_base: Vec<f32>,
    pub output_hc_scale: Vec<f32>,
    pub output_norm: Vec<f32>,
}

impl HeadParams {
    pub fn new(w: &Weights) -> HeadParams {
        HeadParams {
            output_hc_base: dequant_all(&w.head.output_hc_base),
            output_hc_scale: dequant_all(&w.head.output_hc_scale),
            output_norm: dequant_all(&w.head.output_norm),
        }
    }
}

// ---- Scratch: every activation buffer of a chunk ----------------------------------------------

/// Activation buffers for a chunk of up to `n_tok` tokens, each `[n_tok][width]`. Grown only when
/// a larger chunk arrives, so steady decode allocates nothing.
#[derive(Default)]
pub struct Scratch {
    n_tok: usize,
    /// HC state X, `[n_tok][n_hc·n_embd]`, stream-major per token.
    pub x: Vec<f32>,
    flat: Vec<f32>,
    mix_m: Vec<f32>,
    mixes: Vec<HcMix>,
    xa: Vec<f32>,
    qa: Vec<f32>,
    q: Vec<f32>,
    kv: Vec<f32>,
    comp_kv: Vec<f32>,
    comp_sc: Vec<f32>,
    idx_kv: Vec<f32>,
    idx_sc: Vec<f32>,
    idx_q: Vec<f32>,
    idx_w: Vec<f32>,
    heads: Vec<f32>,
    low: Vec<f32>,
    /// Sublayer outputs before HC post (`attn_out`, `ffn_out` in the golden records).
    pub attn_out: Vec<f32>,
    pub ffn_out: Vec<f32>,
    router: Vec<f32>,
    probs: Vec<f32>,
    sel: Vec<usize>,
    sel_w: Vec<f32>,
    by_expert: Vec<Vec<(usize, usize)>>,
    xe: Vec<f32>,
    ge: Vec<f32>,
    ue: Vec<f32>,
    de: Vec<f32>,
    dk: Vec<f32>,
    gs: Vec<f32>,
    us: Vec<f32>,
    sh: Vec<f32>,
    head_e: Vec<f32>,
    // Per-token cache-step buffers (sized by the visible rows, grown on demand).
    comp_row: Vec<f32>,
    att: Vec<f32>,
    visible: Vec<Visible>,
    idx_scores: Vec<f32>,
    top: Vec<usize>,
    grp_in: Vec<f32>,
    grp_out: Vec<f32>,
}

/// A row attention reads: a raw-window position or a compressed row number.
#[derive(Clone, Copy)]
enum Visible {
    Raw(usize),
    Comp(usize),
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Scratch {
    /// Sizes the per-token cache-step buffers for a session of `ctx` positions: the most rows one
    /// token can attend (raw window plus the largest visible compressed set), the indexer's score
    /// list, and one slot per expert list, so decode never grows them.
    pub fn reserve_for_ctx(&mut self, cfg: &Config, ctx: usize) {
        let max_comp = cfg
            .attn_kinds
            .iter()
            .map(|k| match k.ratio() {
                0 => 0,
                r if k.has_indexer() => (ctx / r + 2).min(cfg.idx_top_k),
                r => ctx / r + 2,
            })
            .max()
            .unwrap_or(0);
        let max_rows = cfg.n_swa.min(ctx) + max_comp;
        grow(&mut self.att, cfg.n_head * max_rows);
        self.visible.reserve(max_rows);
        let max_index = if cfg.attn_kinds.iter().any(|k| k.has_indexer()) {
            ctx / 4 + 2
        } else {
            0
        };
        grow(&mut self.idx_scores, max_index);
        self.top.reserve(max_index.max(cfg.n_expert));
        self.by_expert.resize_with(cfg.n_expert, Vec::new);
        for list in &mut self.by_expert {
            list.reserve(1);
        }
    }

    /// Makes every buffer hold at least `n_tok` tokens.
    pub fn ensure(&mut self, cfg: &Config, n_tok: usize) {
        if n_tok <= self.n_tok {
            return;
        }
        self.n_tok = n_tok;
        let hc = cfg.hc_dim();
        let comp_w = 2 * cfg.head_dim;
        let idx_w = 2 * cfg.idx_head_dim;
        for (v, w) in [
            (&mut self.x, hc),
            (&mut self.flat, hc),
            (&mut self.mix_m, cfg.hc_mix()),
            (&mut self.xa, cfg.n_embd),
            (&mut self.qa, cfg.q_lora_rank),
            (&mut self.q, cfg.q_dim()),
            (&mut self.kv, cfg.head_dim),
            (&mut self.comp_kv, comp_w),
            (&mut self.comp_sc, comp_w),
            (&mut self.idx_kv, idx_w),
            (&mut self.idx_sc, idx_w),
            (&mut self.idx_q, cfg.idx_q_dim()),
            (&mut self.idx_w, cfg.n_idx_head),
            (&mut self.heads, cfg.q_dim()),
            (&mut self.low, cfg.out_low_dim()),
            (&mut self.attn_out, cfg.n_embd),
            (&mut self.ffn_out, cfg.n_embd),
            (&mut self.router, cfg.n_expert),
            (&mut self.probs, cfg.n_expert),
            (&mut self.sel_w, cfg.n_expert_used),
            (&mut self.xe, cfg.n_embd),
            (&mut self.ge, cfg.n_ff_exp),
            (&mut self.ue, cfg.n_ff_exp),
            (&mut self.de, cfg.n_embd),
            (&mut self.dk, cfg.n_expert_used * cfg.n_embd),
            (&mut self.gs, cfg.n_ff_exp),
            (&mut self.us, cfg.n_ff_exp),
            (&mut self.sh, cfg.n_embd),
            (&mut self.head_e, cfg.n_embd),
            (&mut self.grp_in, cfg.group_heads() * cfg.head_dim),
            (&mut self.grp_out, cfg.o_lora_rank),
        ] {
            grow(v, w * n_tok);
        }
        self.sel.resize(cfg.n_expert_used * n_tok, 0);
        self.mixes.resize(n_tok, HcMix::default());
        self.by_expert.resize_with(cfg.n_expert, Vec::new);
        grow(&mut self.comp_row, cfg.head_dim.max(cfg.idx_head_dim));
    }
}

// ---- Per-layer-records (golden record_layout) --------------------------------------------------

/// Records being built for probed tokens of this chunk: `(chunk index t, record)`.
pub type ProbeRecords = Vec<(usize, Vec<f32>)>;

fn record(recs: &mut ProbeRecords, buf: &[f32], width: usize) {
    for (t, r) in recs.iter_mut() {
        r.extend_from_slice(&buf[*t * width..(*t + 1) * width]);
    }
}

// ---- The model, as the forward pass sees it ---------------------------------------------------

/// Borrowed model parts the pass reads.
pub struct ModelRef<'a> {
    pub cfg: &'a Config,
    pub w: &'a Weights,
    pub layers: &'a [LayerParams],
    pub head: &'a HeadParams,
    /// ds4's CPU arithmetic (int8 activations, left-to-right sums, f32 RoPE angles; spec §3.12)
    /// instead of the float model semantics.
    pub exact: bool,
}

/// `y[t] = W·x[t]` in the pass's arithmetic mode (see [`ModelRef::exact`]).
fn mm(m: &ModelRef, w: Mat, x: &[f32], n_tok: usize, y: &mut [f32]) {
    if m.exact {
        for (xt, yt) in x
            .chunks_exact(w.n_in)
            .zip(y.chunks_exact_mut(w.n_out))
            .take(n_tok)
        {
            matvec_exact(w, xt, yt);
        }
    } else {
        matmul(w, x, n_tok, y);
    }
}

/// RoPE angles at `pos` in the pass's arithmetic mode.
fn angles(m: &ModelRef, pos: usize, rope: &ds4_model::RopeParams) -> RopeAngles {
    if m.exact {
        RopeAngles::new_exact(pos, m.cfg.n_rot, rope)
    } else {
        RopeAngles::new(pos as f64, m.cfg.n_rot, rope)
    }
}

/// Runs `tokens` at positions `pos0..` through every layer, updating `kv`. Leaves the final HC
/// state in `s.x`. `probe` holds records for chunk tokens to dump.
pub fn forward_chunk(
    m: &ModelRef,
    kv: &mut KvState,
    s: &mut Scratch,
    tokens: &[u32],
    pos0: usize,
    probe: &mut ProbeRecords,
) {
    let n_tok = tokens.len();
    s.ensure(m.cfg, n_tok);
    embed_and_hc_init(m, s, tokens);
    record(probe, &s.x, m.cfg.hc_dim());
    for (il, (lw, lp)) in m.w.layers.iter().zip(m.layers).enumerate() {
        attention_sublayer(m, il, lw, lp, &mut kv.layers[il], s, n_tok, pos0);
        record(probe, &s.attn_out, m.cfg.n_embd);
        record(probe, &s.x, m.cfg.hc_dim());
        ffn_sublayer(m, il, lw, lp, s, tokens);
        record(probe, &s.ffn_out, m.cfg.n_embd);
        record(probe, &s.x, m.cfg.hc_dim());
    }
}

// ---- spec/model.md §3.3 Embedding and HC init ---------------------------------------------------

/// §3.3: `X[h] = embed(token)` for every stream h.
fn embed_and_hc_init(m: &ModelRef, s: &mut Scratch, tokens: &[u32]) {
    let (n, hc) = (m.cfg.n_embd, m.cfg.hc_dim());
    let emb = &m.w.token_embd;
    for (t, &tok) in tokens.iter().enumerate() {
        let xt = &mut s.x[t * hc..(t + 1) * hc];
        ds4_quant::dequantize_row(emb.ty(), emb.row(tok as usize), &mut xt[..n]);
        let (first, rest) = xt.split_at_mut(n);
        for stream in rest.chunks_exact_mut(n) {
            stream.copy_from_slice(first);
        }
    }
}

// ---- spec/model.md §3.4 Hyper-connection pre and post -------------------------------------------

/// §3.4 steps 1-6 for every token: the mixes from `X`, and `out[t] = RMSNorm(Σ pre_h X[h]) ⊙ norm`.
fn hc_pre_norm(
    m: &ModelRef,
    hc: &ds4_model::HcWeights,
    scale: &[f32],
    base: &[f32],
    norm: &[f32],
    s: &mut Scratch,
    n_tok: usize,
) {
    let cfg = m.cfg;
    let (n, hcd, mixw) = (cfg.n_embd, cfg.hc_dim(), cfg.hc_mix());
    s.flat[..n_tok * hcd].copy_from_slice(&s.x[..n_tok * hcd]);
    for f in s.flat[..n_tok * hcd].chunks_exact_mut(hcd) {
        ops::rms_norm_unweighted_inplace(f, cfg.rms_eps);
    }
    mm(
        m,
        Mat::of(&hc.fn_),
        &s.flat[..n_tok * hcd],
        n_tok,
        &mut s.mix_m[..n_tok * mixw],
    );
    for t in 0..n_tok {
        let mix = ops::hc_split(
            &s.mix_m[t * mixw..(t + 1) * mixw],
            scale,
            base,
            cfg.n_hc,
            cfg.sinkhorn_iters,
            cfg.hc_eps,
        );
        s.mixes[t] = mix;
        let u = &mut s.xa[t * n..(t + 1) * n];
        ops::hc_weighted_sum(u, &s.x[t * hcd..(t + 1) * hcd], &mix.pre[..cfg.n_hc]);
        ops::rms_norm_inplace(u, norm, cfg.rms_eps);
    }
}

/// §3.4 HC post for every token: `X ← post·y + combᵀ X`.
fn hc_post_all(m: &ModelRef, s: &mut Scratch, y_is_ffn: bool, n_tok: usize) {
    let (n, hcd) = (m.cfg.n_embd, m.cfg.hc_dim());
    let y = if y_is_ffn { &s.ffn_out } else { &s.attn_out };
    s.x[..n_tok * hcd]
        .par_chunks_mut(hcd)
        .zip(y[..n_tok * n].par_chunks(n))
        .zip(&s.mixes[..n_tok])
        .for_each(|((x, y), mix)| ops::hc_post(x, y, mix));
}

// ---- spec/model.md §3.5 Attention sublayer ------------------------------------------------------

/// §3.5 A1-A14 for the chunk. Reads and appends this layer's KV state; `s.x` is updated in place.
#[allow(clippy::too_many_arguments)]
fn attention_sublayer(
    m: &ModelRef,
    il: usize,
    lw: &LayerWeights,
    lp: &LayerParams,
    kv: &mut LayerKv,
    s: &mut Scratch,
    n_tok: usize,
    pos0: usize,
) {
    let cfg = m.cfg;
    hc_pre_norm(
        m,
        &lw.hc_attn,
        &lp.hc_attn_scale,
        &lp.hc_attn_base,
        &lp.attn_norm,
        s,
        n_tok,
    ); // A1, A2 → xa
    q_lora(m, lw, lp, s, n_tok); // A3, A4 → qa (= qn), q
    kv_projection(m, lw, lp, s, n_tok); // A5 → kv
    let rope = cfg.rope(il);
    // A6, A7 for every token (no cache involved): RoPE on q heads and kv, FP8 on kv, f16 round.
    let (hd, qd) = (cfg.head_dim, cfg.q_dim());
    s.q[..n_tok * qd]
        .par_chunks_mut(qd)
        .zip(s.kv[..n_tok * hd].par_chunks_mut(hd))
        .enumerate()
        .for_each(|(t, (q, k))| {
            let a = angles(m, pos0 + t, &rope);
            for head in q.chunks_exact_mut(hd) {
                a.apply(head, false);
            }
            a.apply(k, false);
            ops::fp8_kv_sim(k, cfg.n_nope());
            ops::f16_round(k); // A8: raw rows are stored f16-rounded
        });
    let kind = cfg.attn_kinds[il];
    let (compressor, indexer) = match &lw.attn_extra {
        LayerAttnExtra::Window => (None, None),
        LayerAttnExtra::Compressed4 {
            compressor,
            indexer,
        } => (Some(compressor), Some(indexer)),
        LayerAttnExtra::CompressedN { compressor } => (Some(compressor), None),
    };
    if let Some(c) = compressor {
        compressor_projections(m, s, n_tok, c, false); // A9 C1 (projection part)
    }
    if let Some(ix) = indexer {
        compressor_projections(m, s, n_tok, &ix.compressor, true); // A10.1 C1
                                                                   // A10.2: the indexer query is only needed once more than top_k rows exist.
        if (pos0 + n_tok) / kind.ratio() > cfg.idx_top_k {
            indexer_query(m, ix, s, n_tok, pos0, &rope);
        }
    }
    // A8-A12 in position order: the cache-touching steps.
    for t in 0..n_tok {
        attention_cache_step(m, lp, kv, s, t, pos0 + t, &rope);
    }
    grouped_output(m, lw, s, n_tok); // A13 → attn_out
    hc_post_all(m, s, false, n_tok); // A14
}

/// A3, A4: `qn = RMSNorm(q_a · xa) ⊙ q_a_norm`, `q = q_b · qn`, then RMSNorm per head (no weight).
fn q_lora(m: &ModelRef, lw: &LayerWeights, lp: &LayerParams, s: &mut Scratch, n_tok: usize) {
    let cfg = m.cfg;
    let (n, r, qd) = (cfg.n_embd, cfg.q_lora_rank, cfg.q_dim());
    mm(
        m,
        Mat::of(&lw.attn_q_a),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.qa[..n_tok * r],
    );
    for qa in s.qa[..n_tok * r].chunks_exact_mut(r) {
        ops::rms_norm_inplace(qa, &lp.attn_q_a_norm, cfg.rms_eps);
    }
    mm(
        m,
        Mat::of(&lw.attn_q_b),
        &s.qa[..n_tok * r],
        n_tok,
        &mut s.q[..n_tok * qd],
    );
    s.q[..n_tok * qd]
        .par_chunks_mut(cfg.head_dim)
        .for_each(|h| ops::rms_norm_unweighted_inplace(h, cfg.rms_eps));
}

/// A5: `kv = RMSNorm(attn_kv · xa) ⊙ kv_a_norm` (the single KV head, key and value at once).
fn kv_projection(m: &ModelRef, lw: &LayerWeights, lp: &LayerParams, s: &mut Scratch, n_tok: usize) {
    let cfg = m.cfg;
    let (n, hd) = (cfg.n_embd, cfg.head_dim);
    mm(
        m,
        Mat::of(&lw.attn_kv),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.kv[..n_tok * hd],
    );
    for k in s.kv[..n_tok * hd].chunks_exact_mut(hd) {
        ops::rms_norm_inplace(k, &lp.attn_kv_a_norm, cfg.rms_eps);
    }
}

/// C1 projection part: `kvp = compressor_kv · xa`, `scp = compressor_gate · xa` (APE added at the
/// store, where the phase is known). Into `comp_*` (attention) or `idx_*` (indexer).
fn compressor_projections(
    m: &ModelRef,
    s: &mut Scratch,
    n_tok: usize,
    c: &ds4_model::CompressorWeights,
    indexer: bool,
) {
    let (kvm, gm) = (Mat::of(&c.kv), Mat::of(&c.gate));
    let (n, w) = (kvm.n_in, kvm.n_out);
    let (dk, ds) = if indexer {
        (&mut s.idx_kv, &mut s.idx_sc)
    } else {
        (&mut s.comp_kv, &mut s.comp_sc)
    };
    mm(m, kvm, &s.xa[..n_tok * n], n_tok, &mut dk[..n_tok * w]);
    mm(m, gm, &s.xa[..n_tok * n], n_tok, &mut ds[..n_tok * w]);
}

/// A10.2 query side for every token: `qi = indexer.attn_q_b · qn` per 128-wide head, RoPE at pos,
/// Hadamard + FP4; head weights `w = (indexer.proj · xa) / √(idx_head_dim·n_idx_head)`.
fn indexer_query(
    m: &ModelRef,
    ix: &ds4_model::IndexerWeights,
    s: &mut Scratch,
    n_tok: usize,
    pos0: usize,
    rope: &ds4_model::RopeParams,
) {
    let cfg = m.cfg;
    let (r, n, iqd, ihd, nh) = (
        cfg.q_lora_rank,
        cfg.n_embd,
        cfg.idx_q_dim(),
        cfg.idx_head_dim,
        cfg.n_idx_head,
    );
    // spec pitfall 8: the query comes from the normalised Q latent qn, not from xa.
    mm(
        m,
        Mat::of(&ix.attn_q_b),
        &s.qa[..n_tok * r],
        n_tok,
        &mut s.idx_q[..n_tok * iqd],
    );
    s.idx_q[..n_tok * iqd]
        .par_chunks_mut(iqd)
        .enumerate()
        .for_each(|(t, q)| {
            let a = angles(m, pos0 + t, rope);
            for head in q.chunks_exact_mut(ihd) {
                a.apply(head, false);
                ops::indexer_qat(head);
            }
        });
    mm(
        m,
        Mat::of(&ix.proj),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.idx_w[..n_tok * nh],
    );
    let scale = cfg.indexer_score_scale();
    for v in s.idx_w[..n_tok * nh].iter_mut() {
        *v *= scale;
    }
}

/// §3.5 compressor step C2-C9 for one token. Stores this token's projection (plus the APE row of
/// its phase) in the frontier; at the end of a window pools, normalises, rotates at the window's
/// first position, applies FP8 (D = 512 wide rows) or Hadamard+FP4 (indexer), f16-rounds and
/// appends the row. Returns whether a row was emitted.
#[allow(clippy::too_many_arguments)]
fn compressor_step(
    f: &mut Compressor,
    rows: &mut CompressedRows,
    p: &CompressorParams,
    kvp: &[f32],
    scp: &[f32],
    pos: usize,
    out: &mut [f32],
    m: &ModelRef,
    rope: &ds4_model::RopeParams,
    indexer: bool,
) -> bool {
    let cfg = m.cfg;
    let (r, w) = (f.ratio, f.width());
    let phase = pos % r;
    let t = if f.overlap { r + phase } else { phase }; // C2
    f.kv[t * w..(t + 1) * w].copy_from_slice(&kvp[..w]);
    for ((s, &g), &a) in f.score[t * w..(t + 1) * w]
        .iter_mut()
        .zip(&scp[..w])
        .zip(&p.ape[phase * w..(phase + 1) * w])
    {
        *s = g + a; // C1: gate score plus the APE row of phase p
    }
    if !(pos + 1).is_multiple_of(r) {
        return false; // C3
    }
    let row = &mut out[..f.dim];
    ops::compressor_pool(row, &f.kv, &f.score, r, f.overlap); // C4
    ops::rms_norm_inplace(row, &p.norm, cfg.rms_eps); // C5
                                                      // C6: spec pitfall 3: rotate at the first position of the window, not the emitting token's.
    angles(m, pos + 1 - r, rope).apply(row, false);
    if indexer {
        ops::indexer_qat(row); // C7 (D = 128)
    } else {
        ops::fp8_kv_sim(row, f.dim - cfg.n_rot); // C7 (D = 512)
    }
    if f.overlap {
        // C8: the current window becomes the previous one.
        let half = r * w;
        f.kv.copy_within(half..2 * half, 0);
        f.score.copy_within(half..2 * half, 0);
    }
    ops::f16_round(row); // spec §3.9: compressed and indexer rows are stored f16-rounded
    rows.push(row);
    true
}

/// A8-A12 for chunk token `t` at absolute position `pos`: push the raw row, run the compressors and
/// the indexer, attend over raw + visible compressed rows with the sink, and rotate back.
#[allow(clippy::too_many_arguments)]
fn attention_cache_step(
    m: &ModelRef,
    lp: &LayerParams,
    kv: &mut LayerKv,
    s: &mut Scratch,
    t: usize,
    pos: usize,
    rope: &ds4_model::RopeParams,
) {
    let cfg = m.cfg;
    let hd = cfg.head_dim;
    // A8: the raw window holds the newest n_swa rows including this one (pushed before attention).
    kv.raw
        .row_mut(pos)
        .copy_from_slice(&s.kv[t * hd..(t + 1) * hd]);
    let mut allowed_all = true;
    if let Some(c) = &mut kv.comp {
        let cw = c.attn.width();
        let cp = lp
            .attn_compressor
            .as_ref()
            .expect("invariant: compressed layer has compressor params");
        // A9: a row emitted by this token is visible to this token (spec pitfall 5).
        compressor_step(
            &mut c.attn,
            &mut c.attn_rows,
            cp,
            &s.comp_kv[t * cw..(t + 1) * cw],
            &s.comp_sc[t * cw..(t + 1) * cw],
            pos,
            &mut s.comp_row,
            m,
            rope,
            false,
        );
        if let Some((fi, irows)) = &mut c.index {
            let iw = fi.width();
            let ip = lp
                .indexer_compressor
                .as_ref()
                .expect("invariant: ratio-4 layer has indexer params");
            compressor_step(
                fi,
                irows,
                ip,
                &s.idx_kv[t * iw..(t + 1) * iw],
                &s.idx_sc[t * iw..(t + 1) * iw],
                pos,
                &mut s.comp_row,
                m,
                rope,
                true,
            );
            // A10: with more than top_k rows, this token's own query picks top_k of them.
            if irows.len() > cfg.idx_top_k {
                indexer_select(cfg, irows, s, t, m.exact);
                allowed_all = false;
            }
        }
    }
    // A11: rows = raw window oldest → newest, then compressed rows ascending.
    s.visible.clear();
    let n_raw = (pos + 1).min(kv.raw.cap);
    s.visible.extend((pos + 1 - n_raw..=pos).map(Visible::Raw));
    if let Some(c) = &kv.comp {
        if allowed_all {
            s.visible.extend((0..c.attn_rows.len()).map(Visible::Comp));
        } else {
            s.visible.extend(s.top.iter().map(|&c| Visible::Comp(c)));
        }
    }
    let n_rows = s.visible.len();
    grow(&mut s.att, cfg.n_head * n_rows);
    let qd = cfg.q_dim();
    let (raw, comp) = (&kv.raw, kv.comp.as_ref().map(|c| &c.attn_rows));
    let visible = &s.visible;
    let q = &s.q[t * qd..(t + 1) * qd];
    let a = angles(m, pos, rope);
    let exact = m.exact;
    let scale = cfg.kq_scale();
    s.heads[t * qd..(t + 1) * qd]
        .par_chunks_mut(hd)
        .zip(s.att[..cfg.n_head * n_rows].par_chunks_mut(n_rows.max(1)))
        .enumerate()
        .for_each(|(h, (out, sc))| {
            attend_head(
                &q[h * hd..(h + 1) * hd],
                lp.attn_sinks[h],
                visible,
                raw,
                comp,
                scale,
                sc,
                out,
                exact,
            );
            a.apply(out, true); // A12: spec pitfall 1, K = V carries the rotated tail; rotate back.
        });
}

fn row_of<'k>(v: Visible, raw: &'k RawWindow, comp: Option<&'k CompressedRows>) -> &'k [f32] {
    match v {
        Visible::Raw(p) => raw.row(p),
        Visible::Comp(c) => comp
            .expect("invariant: compressed row on a compressed layer")
            .row(c),
    }
}

/// A11 for one head: softmax over `s_j = (q·k_j)/√head_dim` with the sink as an extra logit (no
/// value); the output is `Σ_j e^(s_j−mx) k_j / den` (K = V).
#[allow(clippy::too_many_arguments)]
fn attend_head(
    q: &[f32],
    sink: f32,
    visible: &[Visible],
    raw: &RawWindow,
    comp: Option<&CompressedRows>,
    scale: f32,
    sc: &mut [f32],
    out: &mut [f32],
    exact: bool,
) {
    let dotf = if exact { dot_seq } else { dot };
    let mut mx = sink;
    for (j, &v) in visible.iter().enumerate() {
        sc[j] = dotf(q, row_of(v, raw, comp)) * scale;
        mx = mx.max(sc[j]);
    }
    let mut den = (sink - mx).exp();
    out.fill(0.0);
    for (j, &v) in visible.iter().enumerate() {
        let w = (sc[j] - mx).exp();
        den += w;
        axpy(out, w, row_of(v, raw, comp));
    }
    let inv = 1.0 / den;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// A10.2 selection for chunk token `t`: `score_c = Σ_h ReLU(K_c·qi_h)·w_h` over the visible index
/// rows; `s.top` = the top_k rows, ascending (ties to the lower row).
fn indexer_select(cfg: &Config, irows: &CompressedRows, s: &mut Scratch, t: usize, exact: bool) {
    let dotf = if exact { dot_seq } else { dot };
    let (iqd, ihd, nh) = (cfg.idx_q_dim(), cfg.idx_head_dim, cfg.n_idx_head);
    let qi = &s.idx_q[t * iqd..(t + 1) * iqd];
    let wh = &s.idx_w[t * nh..(t + 1) * nh];
    let n = irows.len();
    grow(&mut s.idx_scores, n);
    s.idx_scores[..n]
        .par_iter_mut()
        .enumerate()
        .for_each(|(c, sc)| {
            let k = irows.row(c);
            let mut acc = 0.0f32;
            for (h, &w) in wh.iter().enumerate() {
                acc += dotf(k, &qi[h * ihd..(h + 1) * ihd]).max(0.0) * w;
            }
            *sc = acc;
        });
    ops::top_k_into(&mut s.top, &s.idx_scores[..n], cfg.idx_top_k);
    s.top.sort_unstable();
}

/// A13: 8 independent LoRA-A maps on consecutive groups of heads, concatenated, then LoRA-B.
fn grouped_output(m: &ModelRef, lw: &LayerWeights, s: &mut Scratch, n_tok: usize) {
    let cfg = m.cfg;
    let (qd, ol, lowd, n) = (cfg.q_dim(), cfg.o_lora_rank, cfg.out_low_dim(), cfg.n_embd);
    let gd = cfg.group_heads() * cfg.head_dim;
    let a = Mat::of(&lw.attn_output_a);
    // Gather each group's slice per token, project, and scatter into `low`.
    for g in 0..cfg.n_out_group {
        let xin = &mut s.grp_in[..n_tok * gd];
        for t in 0..n_tok {
            xin[t * gd..(t + 1) * gd]
                .copy_from_slice(&s.heads[t * qd + g * gd..t * qd + (g + 1) * gd]);
        }
        let yo = &mut s.grp_out[..n_tok * ol];
        mm(m, a.rows(g * ol, ol), xin, n_tok, yo);
        for t in 0..n_tok {
            s.low[t * lowd + g * ol..t * lowd + (g + 1) * ol]
                .copy_from_slice(&yo[t * ol..(t + 1) * ol]);
        }
    }
    mm(
        m,
        Mat::of(&lw.attn_output_b),
        &s.low[..n_tok * lowd],
        n_tok,
        &mut s.attn_out[..n_tok * n],
    );
}

// ---- spec/model.md §3.6 FFN sublayer ------------------------------------------------------------

/// §3.6 F1-F8 for the chunk; `tokens` drive hash routing.
fn ffn_sublayer(
    m: &ModelRef,
    il: usize,
    lw: &LayerWeights,
    lp: &LayerParams,
    s: &mut Scratch,
    tokens: &[u32],
) {
    let cfg = m.cfg;
    let n_tok = tokens.len();
    hc_pre_norm(
        m,
        &lw.hc_ffn,
        &lp.hc_ffn_scale,
        &lp.hc_ffn_base,
        &lp.ffn_norm,
        s,
        n_tok,
    ); // F1 → xf (in xa)
    route_experts(m, il, lw, lp, s, tokens); // F2-F4
    routed_experts(m, lw, s, n_tok); // F5 → dk
    shared_expert(m, lw, s, n_tok); // F6 → sh
                                    // F7: f = Σ_k d_k (selection order) + shared.
    let (n, used) = (cfg.n_embd, cfg.n_expert_used);
    for t in 0..n_tok {
        let f = &mut s.ffn_out[t * n..(t + 1) * n];
        f.copy_from_slice(&s.dk[t * used * n..t * used * n + n]);
        for k in 1..used {
            axpy(f, 1.0, &s.dk[(t * used + k) * n..(t * used + k + 1) * n]);
        }
        axpy(f, 1.0, &s.sh[t * n..(t + 1) * n]);
    }
    hc_post_all(m, s, true, n_tok); // F8
}

/// F2-F4: router probabilities `p = sqrt(softplus(logit))`; selection by `tid2eid[token]` on hash
/// layers, else top-k of `p + bias` (bias for selection only); weights `p_sel / max(Σ, 2^-14) · 1.5`.
fn route_experts(
    m: &ModelRef,
    il: usize,
    lw: &LayerWeights,
    lp: &LayerParams,
    s: &mut Scratch,
    tokens: &[u32],
) {
    let cfg = m.cfg;
    let (n, ne, used) = (cfg.n_embd, cfg.n_expert, cfg.n_expert_used);
    let n_tok = tokens.len();
    mm(
        m,
        Mat::of(&lw.ffn_gate_inp),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.router[..n_tok * ne],
    );
    for (t, &tok) in tokens.iter().enumerate() {
        let p = &mut s.router[t * ne..(t + 1) * ne];
        for v in p.iter_mut() {
            *v = ops::softplus(*v).sqrt();
        }
        let sel = &mut s.sel[t * used..(t + 1) * used];
        match cfg.routing(il) {
            Routing::Hash => {
                let ids = &lp.tid2eid[tok as usize * used..(tok as usize + 1) * used];
                for (o, &e) in sel.iter_mut().zip(ids) {
                    // Hostile files are caught by the loader; clamp keeps a bad id in range anyway.
                    *o = (e.max(0) as usize).min(ne - 1);
                }
            }
            Routing::TopK => {
                let biased = &mut s.probs[t * ne..(t + 1) * ne];
                for ((b, &pv), &bias) in biased.iter_mut().zip(p.iter()).zip(&lp.exp_probs_b) {
                    *b = pv + bias;
                }
                ops::top_k_into(&mut s.top, biased, used);
                sel.copy_from_slice(&s.top);
            }
        }
        let sum: f32 = sel.iter().map(|&e| p[e]).sum();
        let denom = sum.max(6.103_515_6e-5);
        for (k, &e) in sel.iter().enumerate() {
            s.sel_w[t * used + k] = (p[e] / denom) * cfg.expert_weight_scale;
        }
    }
}

/// SwiGLU with ds4's asymmetric clamp (spec pitfall 13): `silu(min(g, c)) · clamp(u, −c, c)`.
pub fn swiglu_clamped(g: f32, u: f32, clamp: f32) -> f32 {
    ops::silu(g.min(clamp)) * u.clamp(-clamp, clamp)
}

/// The expert mid `g ← swiglu_clamped(g, u) · w`, shared by routed experts (w = route weight)
/// and the shared expert (w = 1): the clamp applies to both (spec pitfall 13).
pub fn swiglu_mid(g: &mut [f32], u: &[f32], clamp: f32, w: f32) {
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = swiglu_clamped(*gv, uv, clamp) * w;
    }
}

/// F5: for each expert, all (token, slot) pairs routed to it as one batch:
/// `d = down_e · (swiglu(gate_e·xf, up_e·xf) · w)`, written to `dk[t][slot]`.
fn routed_experts(m: &ModelRef, lw: &LayerWeights, s: &mut Scratch, n_tok: usize) {
    let cfg = m.cfg;
    let (n, ff, used) = (cfg.n_embd, cfg.n_ff_exp, cfg.n_expert_used);
    for list in s.by_expert.iter_mut() {
        list.clear();
    }
    for t in 0..n_tok {
        for k in 0..used {
            s.by_expert[s.sel[t * used + k]].push((t, k));
        }
    }
    for e in 0..cfg.n_expert {
        let nb = s.by_expert[e].len();
        if nb == 0 {
            continue;
        }
        for (b, &(t, _)) in s.by_expert[e].iter().enumerate() {
            s.xe[b * n..(b + 1) * n].copy_from_slice(&s.xa[t * n..(t + 1) * n]);
        }
        mm(
            m,
            Mat::expert(&lw.ffn_gate_exps, e),
            &s.xe[..nb * n],
            nb,
            &mut s.ge[..nb * ff],
        );
        mm(
            m,
            Mat::expert(&lw.ffn_up_exps, e),
            &s.xe[..nb * n],
            nb,
            &mut s.ue[..nb * ff],
        );
        for (b, &(t, k)) in s.by_expert[e].iter().enumerate() {
            // The route weight is applied before the down projection.
            let w = s.sel_w[t * used + k];
            swiglu_mid(
                &mut s.ge[b * ff..(b + 1) * ff],
                &s.ue[b * ff..(b + 1) * ff],
                cfg.swiglu_clamp,
                w,
            );
        }
        mm(
            m,
            Mat::expert(&lw.ffn_down_exps, e),
            &s.ge[..nb * ff],
            nb,
            &mut s.de[..nb * n],
        );
        for (b, &(t, k)) in s.by_expert[e].iter().enumerate() {
            s.dk[(t * used + k) * n..(t * used + k + 1) * n]
                .copy_from_slice(&s.de[b * n..(b + 1) * n]);
        }
    }
}

/// F6: the shared expert, same clamp (spec pitfall 13), no route weight.
fn shared_expert(m: &ModelRef, lw: &LayerWeights, s: &mut Scratch, n_tok: usize) {
    let cfg = m.cfg;
    let (n, ff) = (cfg.n_embd, cfg.n_ff_exp);
    mm(
        m,
        Mat::of(&lw.ffn_gate_shexp),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.gs[..n_tok * ff],
    );
    mm(
        m,
        Mat::of(&lw.ffn_up_shexp),
        &s.xa[..n_tok * n],
        n_tok,
        &mut s.us[..n_tok * ff],
    );
    swiglu_mid(
        &mut s.gs[..n_tok * ff],
        &s.us[..n_tok * ff],
        cfg.swiglu_clamp,
        1.0,
    );
    mm(
        m,
        Mat::of(&lw.ffn_down_shexp),
        &s.gs[..n_tok * ff],
        n_tok,
        &mut s.sh[..n_tok * n],
    );
}

// ---- spec/model.md §3.7 Output head -------------------------------------------------------------

/// §3.7 for the chunk tokens `which` (indices into the chunk): HC collapse with its own sigmoid
/// weights, `output_norm`, then the LM head. `out` is `[which.len()][n_vocab]`.
pub fn output_head(m: &ModelRef, s: &mut Scratch, which: &[usize], out: &mut [f32]) {
    let cfg = m.cfg;
    let (n, hcd, nh) = (cfg.n_embd, cfg.hc_dim(), cfg.n_hc);
    let nw = which.len();
    if nw == 0 {
        return;
    }
    for (i, &t) in which.iter().enumerate() {
        let f = &mut s.flat[i * hcd..(i + 1) * hcd];
        f.copy_from_slice(&s.x[t * hcd..(t + 1) * hcd]);
        ops::rms_norm_unweighted_inplace(f, cfg.rms_eps);
    }
    let pw = &mut s.mix_m[..nw * nh];
    mm(
        m,
        Mat::of(&m.w.head.output_hc_fn),
        &s.flat[..nw * hcd],
        nw,
        pw,
    );
    for (i, &t) in which.iter().enumerate() {
        let mut wts = [0.0f32; ops::MAX_HC];
        for h in 0..nh {
            wts[h] = ops::sigmoid_stable(
                pw[i * nh + h] * m.head.output_hc_scale[0] + m.head.output_hc_base[h],
            ) + cfg.hc_eps;
        }
        let e = &mut s.head_e[i * n..(i + 1) * n];
        ops::hc_weighted_sum(e, &s.x[t * hcd..(t + 1) * hcd], &wts[..nh]);
        ops::rms_norm_inplace(e, &m.head.output_norm, cfg.rms_eps);
    }
    mm(
        m,
        Mat::of(&m.w.head.output),
        &s.head_e[..nw * n],
        nw,
        &mut out[..nw * cfg.n_vocab],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_clamps_gate_above_only_and_up_both_ways() {
        // The shared expert runs through `swiglu_mid` with w = 1; |gate|, |up| > 10 here.
        let mut g = [15.0f32, -15.0, 3.0, 12.0];
        let u = [12.0f32, 2.0, -30.0, 0.5];
        swiglu_mid(&mut g, &u, 10.0, 1.0);
        assert_eq!(g[0], ops::silu(10.0) * 10.0, "gate clamped to 10, up to 10");
        assert_eq!(g[1], ops::silu(-15.0) * 2.0, "no lower clamp on the gate");
        assert_eq!(g[2], ops::silu(3.0) * -10.0, "up clamped from below");
        assert_eq!(g[3], ops::silu(10.0) * 0.5);
        let mut h = [15.0f32];
        swiglu_mid(&mut h, &[12.0], 10.0, 0.25);
        assert_eq!(
            h[0],
            ops::silu(10.0) * 10.0 * 0.25,
            "route weight multiplies the clamped mid"
        );
    }
}
