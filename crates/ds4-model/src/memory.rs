//! KV memory versus context (spec/model.md §4.2): the same accounting as ds4's
//! `ds4_context_memory_estimate`, so the numbers we print can be checked against the spec's table.

use crate::{AttnKind, Config};

/// Bytes of KV state for one session of `ctx` positions, as ds4's graph backend allocates it
/// (f32 rows; see [`kv_memory_estimate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvMemoryEstimate {
    pub ctx: usize,
    pub prefill_cap: usize,
    /// Raw sliding-window rings, all layers.
    pub raw_bytes: u64,
    /// Compressed attention rows of the ratio-4 layers.
    pub comp4_bytes: u64,
    /// Indexer rows (ratio-4 layers).
    pub indexer_bytes: u64,
    /// Compressed attention rows of the other compressed layers (ratio 128 in the real model).
    pub comp_n_bytes: u64,
    /// Indexer score and mask buffers of one prefill chunk.
    pub prefill_scratch_bytes: u64,
    pub total_bytes: u64,
}

/// Rows of the GPU raw ring (spec §4.1): the window plus one prefill chunk, rounded up to 256,
/// at most 8192, and within `[min(n_swa, ctx), ctx]`.
pub fn raw_cap(cfg: &Config, ctx: usize, prefill_cap: usize) -> usize {
    let want = (cfg.n_swa + prefill_cap).min(ctx).div_ceil(256) * 256;
    want.min(8192).max(cfg.n_swa.min(ctx)).min(ctx)
}

/// spec §4.2: `comp_cap = ctx/R + 2` rows per compressed layer; the prefill scratch holds
/// `2 · (ctx/4 + 2) · prefill_cap` f32 (indexer scores and mask).
pub fn kv_memory_estimate(cfg: &Config, ctx: usize, prefill_cap: usize) -> KvMemoryEstimate {
    let f = 4u64; // ds4 stores every cache value as f32 (spec §4.1)
    let hd = cfg.head_dim as u64;
    let raw_bytes = (cfg.n_layer * raw_cap(cfg, ctx, prefill_cap)) as u64 * hd * f;
    let (mut comp4_bytes, mut indexer_bytes, mut comp_n_bytes) = (0u64, 0u64, 0u64);
    for kind in &cfg.attn_kinds {
        let r = kind.ratio();
        if r == 0 {
            continue;
        }
        let rows = (ctx / r + 2) as u64;
        match kind {
            AttnKind::Compressed4 => {
                comp4_bytes += rows * hd * f;
                indexer_bytes += rows * cfg.idx_head_dim as u64 * f;
            }
            _ => comp_n_bytes += rows * hd * f,
        }
    }
    let has_indexer = cfg.attn_kinds.iter().any(|k| k.has_indexer());
    let prefill_scratch_bytes = if has_indexer {
        2 * (ctx / 4 + 2) as u64 * prefill_cap as u64 * f
    } else {
        0
    };
    KvMemoryEstimate {
        ctx,
        prefill_cap,
        raw_bytes,
        comp4_bytes,
        indexer_bytes,
        comp_n_bytes,
        prefill_scratch_bytes,
        total_bytes: raw_bytes + comp4_bytes + indexer_bytes + comp_n_bytes + prefill_scratch_bytes,
    }
}

impl std::fmt::Display for KvMemoryEstimate {
    /// One line in decimal GB (10^9), the unit of spec §4.2's table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gb = |b: u64| b as f64 / 1e9;
        write!(
            f,
            "KV memory for ctx {} (prefill chunk {}): {:.2} GB = raw {:.3} + comp R=4 {:.3} + indexer {:.3} \
             + comp R=N {:.3} + prefill scratch {:.3}",
            self.ctx,
            self.prefill_cap,
            gb(self.total_bytes),
            gb(self.raw_bytes),
            gb(self.comp4_bytes),
            gb(self.indexer_bytes),
            gb(self.comp_n_bytes),
            gb(self.prefill_scratch_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// spec §4.2's table, every row, to its printed precision (3 decimals, total 2).
    #[test]
    fn real_shape_matches_spec_table() {
        let cfg = Config::real(43);
        let rows: [(usize, [f64; 6]); 6] = [
            (8_192, [0.203, 0.088, 0.022, 0.003, 0.034, 0.35]),
            (65_536, [0.203, 0.705, 0.176, 0.021, 0.268, 1.37]),
            (100_000, [0.203, 1.075, 0.269, 0.032, 0.410, 1.99]),
            (250_000, [0.203, 2.688, 0.672, 0.080, 1.024, 4.67]),
            (1_000_000, [0.203, 10.752, 2.688, 0.320, 4.096, 18.06]),
            (1_048_576, [0.203, 11.274, 2.819, 0.336, 4.295, 18.93]),
        ];
        for (ctx, want) in rows {
            let e = kv_memory_estimate(&cfg, ctx, 2048);
            let got = [
                e.raw_bytes,
                e.comp4_bytes,
                e.indexer_bytes,
                e.comp_n_bytes,
                e.prefill_scratch_bytes,
            ];
            for (i, (&g, &w)) in got.iter().zip(&want[..5]).enumerate() {
                let g = (g as f64 / 1e9 * 1000.0).round() / 1000.0;
                assert_eq!(g, w, "ctx {ctx} column {i}");
            }
            let total = (e.total_bytes as f64 / 1e9 * 100.0).round() / 100.0;
            assert_eq!(total, want[5], "ctx {ctx} total");
        }
    }

    #[test]
    fn display_names_every_part() {
        let e = kv_memory_estimate(&Config::real(43), 1_000_000, 2048);
        let s = e.to_string();
        assert!(s.contains("18.06 GB"), "{s}");
        assert!(s.contains("indexer 2.688"), "{s}");
    }

    #[test]
    fn raw_ring_is_clamped_to_small_contexts() {
        let cfg = Config::real(43);
        assert_eq!(raw_cap(&cfg, 100, 2048), 100);
        assert_eq!(raw_cap(&cfg, 4096, 2048), 2304);
        assert_eq!(raw_cap(&cfg, 1 << 20, 1 << 16), 8192);
    }
}
