//! Times a save and a load of one real-shape checkpoint (43 layers, spec/model.md §4.3 sizes).
//!
//! usage: cargo run --release -p ds4-kvcache --example kv_bench -- [N_TOKENS] [DIR]
//! (default 8192 tokens, a temp dir under the system temp dir; ctx 65536, prefill cap 2048).

use std::time::Instant;

use ds4_kvcache::{
    encode_payload, CacheOptions, Checkpoint, DiskCache, KeyKind, ModelIdentity, Runtime,
    SaveOutcome, SaveReason,
};
use ds4_model::{CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(8192);
    let dir = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kv_bench-{}", std::process::id())));
    let (ctx, prefill_cap) = (65536, 2048);
    let cfg = Config::real(43);
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
                raw: vec![1.0; n.min(cfg.n_swa) * cfg.head_dim],
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
    let kv = KvSnapshot { n_past: n, layers };
    let tokens: Vec<u32> = (0..n as u32).collect();
    let logits = vec![0.0f32; cfg.n_vocab];

    let rt = Runtime {
        cfg: &cfg,
        ctx,
        prefill_cap,
    };
    let t = Instant::now();
    let bytes = encode_payload(&rt, &tokens, &logits, &kv)?;
    let enc = t.elapsed().as_secs_f64();
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "payload: {n} tokens, {mb:.1} MB; encode to memory {:.3} s ({:.2} GB/s)",
        enc,
        mb / 1e3 / enc
    );
    drop(bytes);

    let mut opts = CacheOptions::new(&dir);
    opts.min_tokens = 1;
    opts.budget_bytes = 64 << 30;
    let model = ModelIdentity {
        quant_bits: 2,
        fingerprint: 1,
    };
    let cache = DiskCache::open(opts, cfg.clone(), ctx, prefill_cap, model)?;
    let key = vec![b'x'; 4 * n];
    let cp = Checkpoint {
        key_text: &key,
        key_kind: KeyKind::TokenText,
        reason: SaveReason::Cold,
        tokens: &tokens,
        logits: &logits,
        kv: &kv,
        tool_map: &[],
    };
    let t = Instant::now();
    let outcome = cache.save(&cp)?;
    let save = t.elapsed().as_secs_f64();
    let SaveOutcome::Written { bytes, .. } = outcome else {
        return Err(format!("not written: {outcome:?}").into());
    };
    let fmb = bytes as f64 / 1e6;
    println!(
        "save (write + CRC-32C + fsync + rename): {fmb:.1} MB in {save:.3} s ({:.2} GB/s)",
        fmb / 1e3 / save
    );
    let t = Instant::now();
    let entry = cache.lookup(&key).ok_or("lookup missed")?;
    let loaded = cache.load(&entry, &key)?;
    let load = t.elapsed().as_secs_f64();
    assert_eq!(loaded.state.kv, kv);
    println!(
        "lookup + load (read + checks + CRC-32C), page cache warm: {load:.3} s ({:.2} GB/s)",
        fmb / 1e3 / load
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
