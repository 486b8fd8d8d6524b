//! Shared by the fuzz target and the seed writer: the model shape and runtime the fuzzed store uses.

use ds4_kvcache::ModelIdentity;
use ds4_model::{AttnKind, CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot};

pub const CTX: usize = 256;
pub const PREFILL_CAP: usize = 256;
pub const MODEL: ModelIdentity = ModelIdentity {
    quant_bits: 2,
    fingerprint: 0xf022,
};

/// Four layers, one of each kind ([0, 0, 4, 8]), narrow rows (as in the crate's tests).
pub fn config() -> Config {
    let mut cfg = Config::real(4);
    cfg.attn_kinds = vec![
        AttnKind::Window,
        AttnKind::Window,
        AttnKind::Compressed4,
        AttnKind::CompressedN(8),
    ];
    cfg.head_dim = 64;
    cfg.idx_head_dim = 32;
    cfg.n_vocab = 100;
    cfg.n_swa = 16;
    cfg
}

/// A consistent session of `n` tokens with constant fill.
pub fn state(cfg: &Config, n: usize) -> (Vec<u32>, Vec<f32>, KvSnapshot) {
    let raw_live = n.min(cfg.n_swa);
    let layers = cfg
        .attn_kinds
        .iter()
        .map(|&k| {
            let fr = |w: usize| {
                let m = k.coff() * k.ratio() * k.coff() * w;
                Some(CompressorFrontier {
                    kv: vec![0.5; m],
                    score: vec![-1.0; m],
                })
            };
            let mut l = LayerKvSnapshot {
                raw: vec![1.0; raw_live * cfg.head_dim],
                attn_comp: Vec::new(),
                attn_frontier: None,
                index_comp: Vec::new(),
                index_frontier: None,
            };
            if k.ratio() != 0 {
                l.attn_comp = vec![2.0; n / k.ratio() * cfg.head_dim];
                l.attn_frontier = fr(cfg.head_dim);
            }
            if k.has_indexer() {
                l.index_comp = vec![3.0; n / k.ratio() * cfg.idx_head_dim];
                l.index_frontier = fr(cfg.idx_head_dim);
            }
            l
        })
        .collect();
    (
        (0..n as u32).collect(),
        vec![0.25; cfg.n_vocab],
        KvSnapshot { n_past: n, layers },
    )
}
