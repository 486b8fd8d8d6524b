//! Feeds arbitrary bytes to the store as a `.kv` file: listing, header, key text, payload (every
//! load check), checksum, tool map and hit recording must never panic, and whatever loads must be a
//! state of the runtime's shape. For half the inputs the harness repairs the checksum first, so
//! the fuzzer also reaches the paths behind it (tool map, hit update).
#![no_main]

use std::sync::OnceLock;

use ds4_kvcache::{file_name, CacheOptions, DiskCache};
use ds4_kvcache_fuzz::{config, CTX, MODEL, PREFILL_CAP};
use libfuzzer_sys::fuzz_target;

fn store() -> &'static (tempdir::Dir, DiskCache) {
    static STORE: OnceLock<(tempdir::Dir, DiskCache)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempdir::Dir::new();
        let mut opts = CacheOptions::new(&dir.0);
        opts.min_tokens = 1;
        let cache = DiskCache::open(opts, config(), CTX, PREFILL_CAP, MODEL).expect("open store");
        (dir, cache)
    })
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("kv_load-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (dir, cache) = store();
    let mut bytes = data.to_vec();
    // The key text the header points at names the file, as a writer would have named it.
    let key_len = bytes
        .get(56..60)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let key = bytes.get(60..60 + key_len).unwrap_or(&[]).to_vec();
    if bytes.len() >= 56 && bytes[7] & 1 == 1 {
        let payload = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
        let end = 60u64.saturating_add(key_len as u64).saturating_add(payload);
        if let Some(body) = bytes.get(60..end.min(bytes.len() as u64) as usize) {
            let crc = crc32c::crc32c(body);
            bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let path = dir.0.join(file_name(&key));
    std::fs::write(&path, &bytes).expect("write input");
    let mut prompt = key.clone();
    prompt.extend_from_slice(b" and the rest of the prompt");
    if let Some(entry) = cache.lookup(&prompt) {
        if let Ok(loaded) = cache.load(&entry, &prompt) {
            let cfg = config();
            assert_eq!(loaded.state.tokens.len(), entry.header.n_tokens as usize);
            assert_eq!(loaded.state.logits.len(), cfg.n_vocab);
            assert_eq!(loaded.state.kv.layers.len(), cfg.n_layer);
            assert!(loaded.state.tokens.len() < CTX);
        }
    }
    let _ = std::fs::remove_file(&path);
});
