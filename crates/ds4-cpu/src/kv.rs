//! One session's KV state (spec/model.md §4.1): per layer a raw sliding window, and on compressed
//! layers the compressed rows, the compressor frontier, and (ratio 4) the indexer rows and frontier.
//! Converted to and from the backend-neutral `ds4_model::KvSnapshot` in logical order.

use ds4_model::{AttnKind, BackendError, CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot};

use crate::ops::NEG;

/// The raw window as a ring of `cap = min(n_swa, ctx)` rows: position `p` lives in slot `p % cap`.
pub struct RawWindow {
    pub cap: usize,
    pub dim: usize,
    pub rows: Vec<f32>,
}

impl RawWindow {
    fn new(cap: usize, dim: usize) -> RawWindow {
        RawWindow {
            cap,
            dim,
            rows: vec![0.0; cap * dim],
        }
    }
    /// The slot of position `pos`.
    pub fn row(&self, pos: usize) -> &[f32] {
        let s = pos % self.cap;
        &self.rows[s * self.dim..(s + 1) * self.dim]
    }
    pub fn row_mut(&mut self, pos: usize) -> &mut [f32] {
        let s = pos % self.cap;
        &mut self.rows[s * self.dim..(s + 1) * self.dim]
    }
}

/// A compressor's frontier: `coff·R` rows of `coff·D` values and scores (spec §3.5 C1-C8).
pub struct Compressor {
    pub ratio: usize,
    /// Ratio-4 overlapping windows (coff = 2).
    pub overlap: bool,
    /// Output row width D.
    pub dim: usize,
    pub kv: Vec<f32>,
    pub score: Vec<f32>,
}

impl Compressor {
    fn new(ratio: usize, overlap: bool, dim: usize) -> Compressor {
        let coff = if overlap { 2 } else { 1 };
        let n = coff * ratio * coff * dim;
        Compressor {
            ratio,
            overlap,
            dim,
            kv: vec![0.0; n],
            score: vec![NEG; n],
        }
    }
    /// Row width `coff·D`.
    pub fn width(&self) -> usize {
        if self.overlap {
            2 * self.dim
        } else {
            self.dim
        }
    }
    fn reset(&mut self) {
        self.kv.fill(0.0);
        self.score.fill(NEG);
    }
    fn snapshot(&self) -> CompressorFrontier {
        CompressorFrontier {
            kv: self.kv.clone(),
            score: self.score.clone(),
        }
    }
    fn restore(&mut self, f: &CompressorFrontier, what: &str) -> Result<(), BackendError> {
        if f.kv.len() != self.kv.len() || f.score.len() != self.score.len() {
            return Err(BackendError::BadSnapshot(format!(
                "{what} frontier has {}/{} values, this session needs {}",
                f.kv.len(),
                f.score.len(),
                self.kv.len()
            )));
        }
        self.kv.copy_from_slice(&f.kv);
        self.score.copy_from_slice(&f.score);
        Ok(())
    }
}

/// Append-only compressed rows of width `dim`, at most `cap` of them (spec §4.1: `ctx/R + 2`).
pub struct CompressedRows {
    pub dim: usize,
    pub cap: usize,
    pub rows: Vec<f32>,
}

impl CompressedRows {
    fn new(cap: usize, dim: usize) -> CompressedRows {
        // Reserved up front (virtual memory, touched lazily) so decode never reallocates.
        CompressedRows {
            dim,
            cap,
            rows: Vec::with_capacity(cap * dim),
        }
    }
    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn row(&self, c: usize) -> &[f32] {
        &self.rows[c * self.dim..(c + 1) * self.dim]
    }
    pub fn push(&mut self, row: &[f32]) {
        assert!(
            self.len() < self.cap,
            "invariant: compressed rows exceed ctx/R + 2"
        );
        self.rows.extend_from_slice(row);
    }
}

/// The compressed part of a layer (R ≠ 0).
pub struct CompressedKv {
    pub attn: Compressor,
    pub attn_rows: CompressedRows,
    /// Ratio 4 only: the indexer's compressor and rows.
    pub index: Option<(Compressor, CompressedRows)>,
}

/// One layer's state.
pub struct LayerKv {
    pub raw: RawWindow,
    pub comp: Option<CompressedKv>,
}

/// The whole session state.
pub struct KvState {
    pub layers: Vec<LayerKv>,
}

impl KvState {
    pub fn new(cfg: &Config, ctx: usize) -> KvState {
        let layers = cfg
            .attn_kinds
            .iter()
            .map(|&kind| {
                let raw = RawWindow::new(cfg.n_swa.min(ctx), cfg.head_dim);
                let comp = match kind {
                    AttnKind::Window => None,
                    kind => {
                        let r = kind.ratio();
                        let overlap = kind == AttnKind::Compressed4;
                        let index = kind.has_indexer().then(|| {
                            (
                                Compressor::new(r, overlap, cfg.idx_head_dim),
                                CompressedRows::new(ctx / r + 2, cfg.idx_head_dim),
                            )
                        });
                        Some(CompressedKv {
                            attn: Compressor::new(r, overlap, cfg.head_dim),
                            attn_rows: CompressedRows::new(ctx / r + 2, cfg.head_dim),
                            index,
                        })
                    }
                };
                LayerKv { raw, comp }
            })
            .collect();
        KvState { layers }
    }

    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.raw.rows.fill(0.0);
            if let Some(c) = &mut l.comp {
                c.attn.reset();
                c.attn_rows.rows.clear();
                if let Some((f, rows)) = &mut c.index {
                    f.reset();
                    rows.rows.clear();
                }
            }
        }
    }

    /// The state after `n_past` tokens in logical order (raw rows oldest first).
    pub fn snapshot(&self, n_past: usize) -> KvSnapshot {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let live = n_past.min(l.raw.cap);
                let mut raw = Vec::with_capacity(live * l.raw.dim);
                for p in n_past - live..n_past {
                    raw.extend_from_slice(l.raw.row(p));
                }
                let (mut attn_comp, mut attn_frontier, mut index_comp, mut index_frontier) =
                    (Vec::new(), None, Vec::new(), None);
                if let Some(c) = &l.comp {
                    attn_comp = c.attn_rows.rows.clone();
                    attn_frontier = Some(c.attn.snapshot());
                    if let Some((f, rows)) = &c.index {
                        index_comp = rows.rows.clone();
                        index_frontier = Some(f.snapshot());
                    }
                }
                LayerKvSnapshot {
                    raw,
                    attn_comp,
                    attn_frontier,
                    index_comp,
                    index_frontier,
                }
            })
            .collect();
        KvSnapshot { n_past, layers }
    }

    /// Loads `snap` (taken by any backend of the same model), checking every shape.
    pub fn restore(&mut self, snap: &KvSnapshot, ctx: usize) -> Result<(), BackendError> {
        let bad = |m: String| Err(BackendError::BadSnapshot(m));
        if snap.layers.len() != self.layers.len() {
            return bad(format!(
                "{} layers, model has {}",
                snap.layers.len(),
                self.layers.len()
            ));
        }
        if snap.n_past > ctx {
            return bad(format!(
                "{} positions do not fit a context of {ctx}",
                snap.n_past
            ));
        }
        for (il, (l, s)) in self.layers.iter().zip(&snap.layers).enumerate() {
            let live = snap.n_past.min(l.raw.cap);
            if s.raw.len() != live * l.raw.dim {
                return bad(format!(
                    "layer {il}: {} raw values, expected {}",
                    s.raw.len(),
                    live * l.raw.dim
                ));
            }
            match &l.comp {
                None if !s.attn_comp.is_empty()
                    || s.attn_frontier.is_some()
                    || s.index_frontier.is_some() =>
                {
                    return bad(format!(
                        "layer {il} has no compressor but the snapshot has one"
                    ));
                }
                Some(c) => {
                    let n = snap.n_past / c.attn.ratio;
                    if s.attn_comp.len() != n * c.attn_rows.dim || s.attn_frontier.is_none() {
                        return bad(format!(
                            "layer {il}: compressed rows or frontier do not match {} positions",
                            snap.n_past
                        ));
                    }
                    if let Some((_, rows)) = &c.index {
                        if s.index_comp.len() != n * rows.dim || s.index_frontier.is_none() {
                            return bad(format!(
                                "layer {il}: indexer rows or frontier do not match"
                            ));
                        }
                    }
                }
                None => {}
            }
        }
        self.reset();
        for (il, (l, s)) in self.layers.iter_mut().zip(&snap.layers).enumerate() {
            let live = snap.n_past.min(l.raw.cap);
            for (i, row) in s.raw.chunks_exact(l.raw.dim).enumerate() {
                l.raw.row_mut(snap.n_past - live + i).copy_from_slice(row);
            }
            if let Some(c) = &mut l.comp {
                c.attn_rows.rows.extend_from_slice(&s.attn_comp);
                if let Some(f) = &s.attn_frontier {
                    c.attn.restore(f, &format!("layer {il} attention"))?;
                }
                if let Some((f, rows)) = &mut c.index {
                    rows.rows.extend_from_slice(&s.index_comp);
                    if let Some(sf) = &s.index_frontier {
                        f.restore(sf, &format!("layer {il} indexer"))?;
                    }
                }
            }
        }
        Ok(())
    }
}
