//! A small model shape and seeded KV states that satisfy it.

#![allow(dead_code)]

use ds4_kvcache::Runtime;
use ds4_model::{AttnKind, CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot};

/// Four layers, one of each kind ([0, 0, 4, 8]), narrow rows so states stay a few hundred KB.
pub fn tiny_config() -> Config {
    let mut cfg = Config::real(4);
    cfg.attn_kinds = vec![
        AttnKind::Window,
        AttnKind::Window,
        AttnKind::Compressed4,
        AttnKind::CompressedN(8),
    ];
    cfg.head_dim = 64;
    cfg.n_rot = 64;
    cfg.idx_head_dim = 32;
    cfg.n_vocab = 100;
    cfg.n_swa = 16;
    cfg
}

pub const CTX: usize = 256;
pub const PREFILL_CAP: usize = 256;

pub fn runtime(cfg: &Config) -> Runtime<'_> {
    Runtime {
        cfg,
        ctx: CTX,
        prefill_cap: PREFILL_CAP,
    }
}

/// splitmix64 floats in [-1, 1).
pub fn floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A session of `n` tokens: tokens, logits and a KV state with the row counts a backend would
/// have after `n` tokens (one compressed row every R tokens), filled from `seed`.
pub fn state(cfg: &Config, n: usize, seed: u64) -> (Vec<u32>, Vec<f32>, KvSnapshot) {
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) ^ seed as u32) % cfg.n_vocab as u32)
        .collect();
    let logits = floats(seed, cfg.n_vocab);
    let raw_live = n.min(cfg.n_swa.min(CTX));
    let layers = cfg
        .attn_kinds
        .iter()
        .enumerate()
        .map(|(il, &kind)| {
            let s = seed * 1000 + il as u64 * 10;
            let frontier = |k: u64, width: usize| {
                let m = kind.coff() * kind.ratio() * kind.coff() * width;
                Some(CompressorFrontier {
                    kv: floats(s + k, m),
                    score: floats(s + k + 1, m),
                })
            };
            let mut l = LayerKvSnapshot {
                raw: floats(s, raw_live * cfg.head_dim),
                attn_comp: Vec::new(),
                attn_frontier: None,
                index_comp: Vec::new(),
                index_frontier: None,
            };
            if kind.ratio() != 0 {
                l.attn_comp = floats(s + 1, n / kind.ratio() * cfg.head_dim);
                l.attn_frontier = frontier(2, cfg.head_dim);
            }
            if kind.has_indexer() {
                l.index_comp = floats(s + 4, n / kind.ratio() * cfg.idx_head_dim);
                l.index_frontier = frontier(5, cfg.idx_head_dim);
            }
            l
        })
        .collect();
    (tokens, logits, KvSnapshot { n_past: n, layers })
}
