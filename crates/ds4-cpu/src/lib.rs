//! Reference CPU backend: the whole DS4 forward pass (spec/model.md §3), readable top to bottom,
//! multithreaded with rayon over rows, experts and heads.
//!
//! Owns: the f32 forward pass (`forward.rs`, spec order), its primitives (`ops.rs`, spec §3.2),
//! weight-times-activation loops (`matmul.rs`) and one session's KV state (`kv.rs`, spec §4.1).
//! Refuses: sampling, tokens and policy (engine), in-block math (`ds4-quant`).
//!
//! Design decision: by default activations stay f32 against quantized weights (the model's own
//! semantics, spec §3.10/§3.13), validated statistically against the float64 golden logits. An
//! `exact` mode ([`CpuBackend::set_exact`]) reproduces ds4's CPU arithmetic instead (int8
//! activations, left-to-right f32 sums, f32 RoPE angles, glibc libm; spec §3.12) and matches the
//! golden `*_ds4cpu_strict` logits bit for bit. Weights are never copied (views into the mapped
//! file); only the few-KiB norm/bias vectors are read into f32 once.

pub mod forward;
pub mod kv;
pub mod matmul;
pub mod ops;

use std::sync::Arc;

use ds4_model::{Backend, BackendError, Config, KvSnapshot, LayerProbe, Logits, Model};

use forward::{
    forward_chunk, output_head, HeadParams, LayerParams, ModelRef, ProbeRecords, Scratch,
};
use kv::KvState;

/// spec/model.md §1.2: the default prefill chunk.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

/// A CPU session: one timeline's KV state over a shared, mapped model.
pub struct CpuBackend {
    model: Arc<Model>,
    layers: Vec<LayerParams>,
    head: HeadParams,
    ctx: usize,
    n_past: usize,
    chunk: usize,
    kv: KvState,
    scratch: Scratch,
    logits_buf: Vec<f32>,
    /// ds4 CPU arithmetic (spec §3.12) instead of the float model semantics.
    exact: bool,
    /// Chunk tokens whose logits are computed (scratch).
    which: Vec<usize>,
    probe: Option<LayerProbe>,
}

impl CpuBackend {
    /// A session of `ctx` positions over `model`. The KV state is sized here (spec §4.1); the
    /// activation scratch is sized for one token and grows to the largest chunk evaluated.
    pub fn new(model: Arc<Model>, ctx: usize) -> Result<CpuBackend, BackendError> {
        if ctx == 0 {
            return Err(BackendError::Unsupported(
                "context size must be at least 1".into(),
            ));
        }
        let cfg = &model.config;
        let layers = model
            .weights
            .layers
            .iter()
            .map(|l| LayerParams::new(cfg, l))
            .collect();
        let head = HeadParams::new(&model.weights);
        let kv = KvState::new(cfg, ctx);
        let mut scratch = Scratch::default();
        scratch.ensure(cfg, 1);
        scratch.reserve_for_ctx(cfg, ctx);
        Ok(CpuBackend {
            layers,
            head,
            ctx,
            n_past: 0,
            chunk: DEFAULT_PREFILL_CHUNK.min(ctx),
            kv,
            scratch,
            logits_buf: vec![0.0; cfg.n_vocab],
            which: Vec::with_capacity(16),
            exact: false,
            probe: None,
            model,
        })
    }

    /// Switches to ds4's CPU arithmetic (`ds4 logits --exact`, spec §3.12): int8 activations for
    /// Q8_0 and routed-expert weights, left-to-right f32 sums, f32 incremental RoPE angles. It
    /// targets the golden `*_ds4cpu_strict` data; the default is the float model semantics.
    pub fn set_exact(&mut self, on: bool) {
        self.exact = on;
    }

    /// Sets the prefill chunk (tokens per layer-major batch); at least 1.
    pub fn set_prefill_chunk(&mut self, chunk: usize) {
        self.chunk = chunk.max(1);
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    fn eval_chunk(
        &mut self,
        tokens: &[u32],
        logits: &mut Logits<'_>,
        t_base: usize,
        last_chunk: bool,
    ) {
        let n_vocab = self.model.config.n_vocab;
        let pos0 = self.n_past;
        let n_tok = tokens.len();
        let mut recs: ProbeRecords = Vec::new();
        if let Some(p) = &self.probe {
            for t in 0..n_tok {
                if p.positions.contains(&(pos0 + t)) {
                    recs.push((t, Vec::new()));
                }
            }
        }
        let m = ModelRef {
            cfg: &self.model.config,
            w: &self.model.weights,
            layers: &self.layers,
            head: &self.head,
            exact: self.exact,
        };
        forward_chunk(&m, &mut self.kv, &mut self.scratch, tokens, pos0, &mut recs);
        self.n_past += n_tok;

        // Which chunk tokens need logits: what the caller asked for, plus probed tokens.
        // Reused across calls: decode allocates nothing per token.
        let mut which = std::mem::take(&mut self.which);
        which.clear();
        match logits {
            Logits::None => {}
            Logits::Last(_) if last_chunk => which.push(n_tok - 1),
            Logits::Last(_) => {}
            Logits::All(_) => which.extend(0..n_tok),
        }
        for (t, _) in &recs {
            if !which.contains(t) {
                which.push(*t);
            }
        }
        which.sort_unstable();
        if which.is_empty() {
            self.which = which;
            return;
        }
        if self.logits_buf.len() < which.len() * n_vocab {
            self.logits_buf.resize(which.len() * n_vocab, 0.0);
        }
        output_head(&m, &mut self.scratch, &which, &mut self.logits_buf);
        for (i, &t) in which.iter().enumerate() {
            let row = &self.logits_buf[i * n_vocab..(i + 1) * n_vocab];
            match logits {
                Logits::Last(out) if last_chunk && t == n_tok - 1 => {
                    out[..n_vocab].copy_from_slice(row)
                }
                Logits::All(out) => {
                    out[(t_base + t) * n_vocab..(t_base + t + 1) * n_vocab].copy_from_slice(row)
                }
                _ => {}
            }
            if let Some((_, r)) = recs.iter_mut().find(|(rt, _)| *rt == t) {
                r.extend_from_slice(row);
            }
        }
        self.which = which;
        if let Some(p) = &mut self.probe {
            p.records
                .extend(recs.into_iter().map(|(t, r)| (pos0 + t, r)));
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn config(&self) -> &Config {
        &self.model.config
    }
    fn ctx(&self) -> usize {
        self.ctx
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn eval(&mut self, tokens: &[u32], mut logits: Logits<'_>) -> Result<(), BackendError> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(BackendError::BadToken {
                token: bad,
                n_vocab,
            });
        }
        let needed = self.n_past + tokens.len();
        if needed > self.ctx {
            return Err(BackendError::ContextFull {
                needed,
                ctx: self.ctx,
            });
        }
        match &logits {
            Logits::Last(out) => assert!(
                out.len() >= n_vocab,
                "Logits::Last needs n_vocab = {n_vocab} values"
            ),
            Logits::All(out) => assert!(
                out.len() >= tokens.len() * n_vocab,
                "Logits::All needs n_tokens · n_vocab values"
            ),
            Logits::None => {}
        }
        let n_chunks = tokens.len().div_ceil(self.chunk);
        // Run the whole pass on a rayon worker: the dozens of parallel loops per token then fork
        // inside the pool instead of each injecting a job from outside it (rayon's injector
        // allocates a block per 63 injections; one injection per eval leaves decode allocation-free).
        let chunk = self.chunk;
        rayon::join(
            || {
                for (i, c) in tokens.chunks(chunk).enumerate() {
                    self.eval_chunk(c, &mut logits, i * chunk, i + 1 == n_chunks);
                }
            },
            || {},
        );
        Ok(())
    }
    fn reset(&mut self) {
        self.kv.reset();
        self.n_past = 0;
    }
    fn snapshot(&self) -> Result<KvSnapshot, BackendError> {
        Ok(self.kv.snapshot(self.n_past))
    }
    fn restore(&mut self, snap: &KvSnapshot) -> Result<(), BackendError> {
        self.kv.restore(snap, self.ctx)?;
        self.n_past = snap.n_past;
        Ok(())
    }
    fn set_probe(&mut self, probe: Option<LayerProbe>) -> Result<(), BackendError> {
        self.probe = probe;
        Ok(())
    }
    fn take_probe(&mut self) -> Option<LayerProbe> {
        self.probe.take()
    }
}
