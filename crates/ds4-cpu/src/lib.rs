//! Reference CPU backend: the whole DS4 forward pass (spec/model.md §3), readable top to bottom,
//! multithreaded with rayon over rows, experts and heads.
//!
//! Owns: the f32 forward pass (`forward.rs`, spec order), its primitives (`ops.rs`, spec §3.2) and
//! one session's KV state (`kv.rs`, spec §4.1). Refuses: sampling, tokens and policy (engine),
//! block math (`ds4-quant`). Design decision: activations stay f32 against quantized weights (the
//! model's own semantics, spec §3.13), not ds4's int8 activation step; weights are never copied.

pub mod ops;

use std::sync::Arc;

use ds4_model::{Backend, BackendError, Config, KvSnapshot, LayerProbe, Logits, Weights};

/// A CPU session: one timeline's KV state over shared, mapped weights.
pub struct CpuBackend {
    config: Config,
    weights: Arc<Weights>,
    ctx: usize,
    n_past: usize,
    probe: Option<LayerProbe>,
}

impl CpuBackend {
    /// A backend for `ctx` positions over `weights` (skeleton constructor until `ds4_model::Model`
    /// lands; `new(model, ctx)` will wrap it).
    pub fn from_parts(
        config: Config,
        weights: Arc<Weights>,
        ctx: usize,
    ) -> Result<CpuBackend, BackendError> {
        if ctx == 0 {
            return Err(BackendError::Unsupported(
                "context size must be at least 1".into(),
            ));
        }
        Ok(CpuBackend {
            config,
            weights,
            ctx,
            n_past: 0,
            probe: None,
        })
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn ctx(&self) -> usize {
        self.ctx
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn eval(&mut self, tokens: &[u32], _logits: Logits<'_>) -> Result<(), BackendError> {
        let _ = (&self.weights, tokens);
        Err(BackendError::Unsupported(
            "cpu forward pass not wired yet".into(),
        ))
    }
    fn reset(&mut self) {
        self.n_past = 0;
    }
    fn snapshot(&self) -> Result<KvSnapshot, BackendError> {
        Err(BackendError::Unsupported(
            "cpu snapshot not wired yet".into(),
        ))
    }
    fn restore(&mut self, _snap: &KvSnapshot) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(
            "cpu restore not wired yet".into(),
        ))
    }
    fn set_probe(&mut self, probe: Option<LayerProbe>) -> Result<(), BackendError> {
        self.probe = probe;
        Ok(())
    }
    fn take_probe(&mut self) -> Option<LayerProbe> {
        self.probe.take()
    }
}
