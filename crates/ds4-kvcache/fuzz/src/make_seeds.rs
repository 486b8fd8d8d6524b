//! Writes valid `.kv` files (with and without a tool map) as the seed corpus for `kv_load`.
//! usage: make_seeds OUT_DIR

use ds4_kvcache::{CacheOptions, Checkpoint, DiskCache, KeyKind, SaveReason, ToolMemory};
use ds4_kvcache_fuzz::{config, state, CTX, MODEL, PREFILL_CAP};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: make_seeds OUT_DIR")?;
    let mut opts = CacheOptions::new(&out);
    opts.min_tokens = 1;
    let cache = DiskCache::open(opts, config(), CTX, PREFILL_CAP, MODEL)?;
    let map = [ToolMemory {
        id: "call_1".into(),
        dsml: "<dsml>".into(),
    }];
    for (key, n, tools) in [
        ("a", 1usize, &map[..0]),
        ("system prompt", 9, &map[..]),
        ("k", 20, &map[..0]),
    ] {
        let (tokens, logits, kv) = state(&config(), n);
        let cp = Checkpoint {
            key_text: key.as_bytes(),
            key_kind: KeyKind::TokenText,
            reason: SaveReason::Cold,
            tokens: &tokens,
            logits: &logits,
            kv: &kv,
            tool_map: tools,
        };
        println!("{key}: {:?}", cache.save(&cp)?);
    }
    Ok(())
}
