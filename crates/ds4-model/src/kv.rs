//! Backend-neutral KV state (spec/model.md §4.1, §4.3): what a snapshot holds, in logical order,
//! so a snapshot taken on one backend restores on another. Backends keep their own layouts
//! (a shifting window or a ring; f32 or f16) and convert at the boundary.

/// One layer's compressor frontier (`*_state_kv`, `*_state_score`), `coff·R` rows × `coff·D`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressorFrontier {
    pub kv: Vec<f32>,
    pub score: Vec<f32>,
}

/// One layer's state at a token boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerKvSnapshot {
    /// The newest `min(n_past, n_swa)` raw rows, oldest first, `head_dim` each.
    pub raw: Vec<f32>,
    /// All compressed attention rows (`n_comp` × `head_dim`); empty for window layers.
    pub attn_comp: Vec<f32>,
    pub attn_frontier: Option<CompressorFrontier>,
    /// Indexer rows (`n_index_comp` × `idx_head_dim`); ratio-4 layers only.
    pub index_comp: Vec<f32>,
    pub index_frontier: Option<CompressorFrontier>,
}

/// The whole KV state after `n_past` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSnapshot {
    pub n_past: usize,
    pub layers: Vec<LayerKvSnapshot>,
}
