//! The one backend trait. A backend owns one session's KV state on its device; the engine owns
//! tokens, logits and policy. Kept small on purpose (STYLE §2.3): eval, reset, snapshot, restore.

use crate::kv::KvSnapshot;
use crate::Config;

/// Which logits an [`Backend::eval`] call must produce.
pub enum Logits<'a> {
    /// None (prefill of a chunk whose last logits are not needed).
    None,
    /// The last token's logits, `n_vocab` values.
    Last(&'a mut [f32]),
    /// Every token's logits, row-major `[n_tokens][n_vocab]` (`ds4 logits --prefill`).
    All(&'a mut [f32]),
}

/// Per-layer activation records for debugging (golden `record_layout`), filled when requested.
#[derive(Debug, Default, Clone)]
pub struct LayerProbe {
    /// Absolute positions to record.
    pub positions: Vec<usize>,
    /// One record per recorded position, in the golden layout:
    /// embd_hc, then per layer attn_out, hc_after_attn, ffn_out, hc_after_ffn, then logits.
    pub records: Vec<(usize, Vec<f32>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("context full: {needed} positions needed, context is {ctx}")]
    ContextFull { needed: usize, ctx: usize },
    #[error("token id {token} out of range (vocabulary has {n_vocab})")]
    BadToken { token: u32, n_vocab: usize },
    #[error("snapshot does not fit this session: {0}")]
    BadSnapshot(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("device error: {0}")]
    Device(String),
}

pub trait Backend: Send {
    /// Short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    fn config(&self) -> &Config;
    /// Context size the KV state was created for.
    fn ctx(&self) -> usize;
    /// Positions already in the KV state; the next token goes at this position.
    fn n_past(&self) -> usize;
    /// Feeds `tokens` at positions `n_past()..`, in order (batched prefill when more than one),
    /// and writes the logits asked for. On error the state is unspecified: call `reset`/`restore`.
    fn eval(&mut self, tokens: &[u32], logits: Logits<'_>) -> Result<(), BackendError>;
    /// Empties the KV state (n_past = 0).
    fn reset(&mut self);
    fn snapshot(&self) -> Result<KvSnapshot, BackendError>;
    fn restore(&mut self, snap: &KvSnapshot) -> Result<(), BackendError>;
    /// Turns per-layer recording on (`Some`) or off; backends that cannot record return Unsupported.
    fn set_probe(&mut self, probe: Option<LayerProbe>) -> Result<(), BackendError> {
        let _ = probe;
        Err(BackendError::Unsupported(format!(
            "{} backend cannot record layers",
            self.name()
        )))
    }
    /// Takes the records made since `set_probe`.
    fn take_probe(&mut self) -> Option<LayerProbe> {
        None
    }
}
