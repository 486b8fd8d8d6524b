//! Test double: [`FakeBackend`], a [`Backend`] with deterministic logits that depend on the whole
//! token history, so tests of sessions, prefix reuse and the server can tell a correct KV state
//! from a wrong one without loading a model. Not a model; never used outside tests and `--fake`
//! style test hooks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ds4_model::{AttnKind, Backend, BackendError, Config, KvSnapshot, LayerKvSnapshot, Logits};

/// A tiny [`Config`] with `n_vocab` tokens (shape values are placeholders for a fake backend).
pub fn tiny_config(n_vocab: usize) -> Config {
    Config {
        n_layer: 1,
        n_embd: 8,
        n_vocab,
        n_head: 1,
        n_head_kv: 1,
        head_dim: 8,
        n_rot: 4,
        n_out_group: 1,
        q_lora_rank: 8,
        o_lora_rank: 8,
        n_expert: 1,
        n_expert_used: 1,
        n_expert_shared: 1,
        n_ff_exp: 8,
        n_hash_layer: 0,
        n_swa: 8,
        n_idx_head: 1,
        idx_head_dim: 8,
        idx_top_k: 1,
        n_hc: 1,
        sinkhorn_iters: 1,
        context_length: 4096,
        attn_kinds: vec![AttnKind::Window],
        rms_eps: 1e-6,
        hc_eps: 1e-6,
        expert_weight_scale: 1.0,
        swiglu_clamp: 10.0,
        rope_freq_base: 10000.0,
        compress_rope_freq_base: 160000.0,
        rope_scale_factor: 16.0,
        yarn_beta_fast: 32.0,
        yarn_beta_slow: 1.0,
        rope_orig_ctx: 65536,
    }
}

/// Deterministic fake backend. Its "KV state" is the token history itself; the logits after a
/// history are a pseudo-random function of the whole history (FNV-1a), peaked at one token.
pub struct FakeBackend {
    config: Config,
    ctx: usize,
    history: Vec<u32>,
    /// Tokens evaluated so far by this backend (shared so tests can watch it from outside).
    pub evaluated: Arc<AtomicUsize>,
    /// Sleep per evaluated token, to simulate a slow model in scheduling tests.
    pub delay_per_token: Duration,
}

impl FakeBackend {
    pub fn new(n_vocab: usize, ctx: usize) -> FakeBackend {
        FakeBackend {
            config: tiny_config(n_vocab),
            ctx,
            history: Vec::new(),
            evaluated: Arc::new(AtomicUsize::new(0)),
            delay_per_token: Duration::ZERO,
        }
    }

    /// The logits a correct implementation must produce after `history`.
    pub fn logits_for(history: &[u32], n_vocab: usize, out: &mut [f32]) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in history {
            for b in t.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let peak = (h % n_vocab as u64) as usize;
        for (i, o) in out.iter_mut().enumerate().take(n_vocab) {
            let x = h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let noise = ((x >> 40) & 0xffff) as f32 / 65536.0;
            *o = if i == peak { 8.0 + noise } else { noise };
        }
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn ctx(&self) -> usize {
        self.ctx
    }
    fn n_past(&self) -> usize {
        self.history.len()
    }
    fn eval(&mut self, tokens: &[u32], logits: Logits<'_>) -> Result<(), BackendError> {
        let n_vocab = self.config.n_vocab;
        if self.history.len() + tokens.len() > self.ctx {
            return Err(BackendError::ContextFull {
                needed: self.history.len() + tokens.len(),
                ctx: self.ctx,
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(BackendError::BadToken { token, n_vocab });
        }
        if !self.delay_per_token.is_zero() {
            std::thread::sleep(self.delay_per_token * tokens.len() as u32);
        }
        let start = self.history.len();
        self.history.extend_from_slice(tokens);
        self.evaluated.fetch_add(tokens.len(), Ordering::Relaxed);
        match logits {
            Logits::None => {}
            Logits::Last(out) => Self::logits_for(&self.history, n_vocab, out),
            Logits::All(out) => {
                for (i, row) in out.chunks_mut(n_vocab).take(tokens.len()).enumerate() {
                    Self::logits_for(&self.history[..start + i + 1], n_vocab, row);
                }
            }
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.history.clear();
    }
    fn snapshot(&self) -> Result<KvSnapshot, BackendError> {
        // Token ids below 2^24 are exact in f32.
        let raw = self.history.iter().map(|&t| t as f32).collect();
        Ok(KvSnapshot {
            n_past: self.history.len(),
            layers: vec![LayerKvSnapshot {
                raw,
                attn_comp: Vec::new(),
                attn_frontier: None,
                index_comp: Vec::new(),
                index_frontier: None,
            }],
        })
    }
    fn restore(&mut self, snap: &KvSnapshot) -> Result<(), BackendError> {
        let layer = snap
            .layers
            .first()
            .ok_or_else(|| BackendError::BadSnapshot("no layers".to_string()))?;
        if layer.raw.len() != snap.n_past {
            return Err(BackendError::BadSnapshot(
                "raw rows do not match n_past".to_string(),
            ));
        }
        self.history = layer.raw.iter().map(|&t| t as u32).collect();
        Ok(())
    }
}
