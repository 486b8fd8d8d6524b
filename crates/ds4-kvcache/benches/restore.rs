//! Restore benchmark (issue 7): how long a session of N tokens takes to come back from a `.kv`
//! file (lookup + read + CRC-32C + decode, then the CPU backend's `restore`), against how long
//! re-prefilling those N tokens would take on the CPU.
//!
//! ```text
//! cargo bench -p ds4-kvcache --bench restore                      # tiny and full2, 10k and 100k
//! DS4_RESTORE_BENCH_SHAPES=tiny,full2,real43 cargo bench -p ds4-kvcache --bench restore
//! ```
//!
//! Knobs: `DS4_RESTORE_BENCH_SHAPES` (`tiny`, `full2`, `real43`; default `tiny,full2`),
//! `DS4_RESTORE_BENCH_TOKENS` (default `10000,100000`), `DS4_RESTORE_BENCH_REPS` (default 3),
//! `DS4_RESTORE_BENCH_DIR` (where the `.kv` files go; default the system temp dir).
//!
//! What is real and what is synthetic:
//! * The KV snapshot of N tokens is **built synthetically** with the exact sizes a session of N
//!   tokens has (spec/model.md §4.1: `min(N, n_swa)` raw rows per layer, `N/R` compressed rows,
//!   `N/4` indexer rows, full frontiers; random values), not prefilled: 100k tokens of CPU
//!   prefill would take hours on the full-width shape. The file, the load path and the backend
//!   restore are the production ones (`DiskCache::save`, `lookup`, `load`, `CpuBackend::restore`).
//! * `tiny` = `ds4 synth --preset tiny` (5 layers, ratios [0, 0, 4, 8, 4], head_dim 128,
//!   n_swa 16), built in memory with real weights. `full2` = `ds4 synth --preset full --layers 2`
//!   (real widths; layers 0 and 1 are both window-only in the real schedule, so its snapshot does
//!   not grow with N except for the token list), in memory with real weights (about 5 GB).
//!   `real43` = the real 43-layer shape from a header-only (sparse) GGUF: the backend and the
//!   restore are real, but it has no weights, so no prefill is measured for it.
//! * "cold" drops the file from the page cache first (`dd iflag=nocache count=0`, i.e.
//!   `posix_fadvise(DONTNEED)`; the store fsynced it, so its pages are clean); "warm" reads it
//!   again from the page cache.
//! * Re-prefill time is extrapolated linearly from a measured CPU prefill of a shorter prompt on
//!   the same model (one `eval` of P tokens). Attention work per token grows with the context, so
//!   the real re-prefill is slower than this: the speedups below are lower bounds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ds4_cpu::CpuBackend;
use ds4_kvcache::{
    CacheOptions, Checkpoint, DiskCache, KeyKind, ModelIdentity, SaveOutcome, SaveReason,
};
use ds4_model::synth::{build_model, Preset, SynthSpec};
use ds4_model::{Backend, CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot, Logits, Model};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// xorshift64*: cheap deterministic fill for snapshot values and tokens.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            .collect()
    }
}

/// A KV snapshot with the sizes a CPU session holds after `n` tokens (spec/model.md §4.1).
fn synthetic_snapshot(cfg: &Config, n: usize, rng: &mut Rng) -> KvSnapshot {
    let layers = cfg
        .attn_kinds
        .iter()
        .map(|&kind| {
            let frontier = |width: usize, rng: &mut Rng| {
                let m = kind.coff() * kind.ratio() * kind.coff() * width;
                Some(CompressorFrontier {
                    kv: rng.floats(m),
                    score: rng.floats(m),
                })
            };
            let mut l = LayerKvSnapshot {
                raw: rng.floats(n.min(cfg.n_swa) * cfg.head_dim),
                attn_comp: Vec::new(),
                attn_frontier: None,
                index_comp: Vec::new(),
                index_frontier: None,
            };
            if kind.ratio() != 0 {
                l.attn_comp = rng.floats(n / kind.ratio() * cfg.head_dim);
                l.attn_frontier = frontier(cfg.head_dim, rng);
            }
            if kind.has_indexer() {
                l.index_comp = rng.floats(n / kind.ratio() * cfg.idx_head_dim);
                l.index_frontier = frontier(cfg.idx_head_dim, rng);
            }
            l
        })
        .collect();
    KvSnapshot { n_past: n, layers }
}

/// Drops `path` from the page cache (GNU dd: `iflag=nocache count=0` advises DONTNEED for the
/// whole file). Returns whether dd ran.
fn drop_from_page_cache(path: &Path) -> bool {
    Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .is_ok_and(|s| s.success())
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Tokens/s of one CPU prefill of `p` tokens (one `eval`, logits of the last token only).
fn prefill_rate(model: &Arc<Model>, p: usize) -> Res<f64> {
    let v = model.config.n_vocab;
    let toks: Vec<u32> = (0..p).map(|i| ((i * 2_654_435_761) % v) as u32).collect();
    let mut be = CpuBackend::new(model.clone(), p + 16)?;
    let mut logits = vec![0.0; v];
    let t = Instant::now();
    be.eval(&toks, Logits::Last(&mut logits))?;
    Ok(p as f64 / t.elapsed().as_secs_f64())
}

struct ShapeModel {
    name: &'static str,
    model: Arc<Model>,
    /// Prompt length for the prefill measurement; 0: not measured (no weights).
    prefill_tokens: usize,
}

fn load_shape(name: &str, dir: &Path) -> Res<ShapeModel> {
    let t = Instant::now();
    let (name, model, prefill_tokens) = match name {
        "tiny" => ("tiny", build_model(&SynthSpec::tiny(1))?, 512),
        "full2" => {
            let mut spec = SynthSpec::new(Preset::Full, 7);
            spec.layers = Some(2);
            ("full2", build_model(&spec)?, 64)
        }
        "real43" => {
            let path = dir.join("real43-header-only.gguf");
            SynthSpec::new(Preset::Full, 7)
                .plan()?
                .write_file(&path, true, &mut |_, _| {})?;
            let m = Model::open(&path)?;
            // The sparse file is only needed while mapped; unlinking keeps the mapping alive.
            std::fs::remove_file(&path)?;
            ("real43", m, 0)
        }
        other => return Err(format!("unknown shape {other:?} (tiny, full2, real43)").into()),
    };
    eprintln!("{name}: model ready in {:.1} s", t.elapsed().as_secs_f64());
    Ok(ShapeModel {
        name,
        model: Arc::new(model),
        prefill_tokens,
    })
}

#[derive(Default)]
struct Row {
    file_bytes: u64,
    save_s: f64,
    cold_load_s: f64,
    warm_load_s: f64,
    restore_s: f64,
    dropped: bool,
}

fn bench_one(shape: &ShapeModel, n: usize, dir: &Path, reps: usize) -> Res<Row> {
    let cfg = shape.model.config.clone();
    // A context that holds the checkpoint with room for a reply; the payload does not depend on it.
    let ctx = n + 1024;
    let prefill_cap = ctx.min(2048);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let kv_dir = dir.join(format!("{}-{n}", shape.name));
    let opts = CacheOptions {
        min_tokens: 1,
        budget_bytes: u64::MAX / 4,
        consume_above_tokens: usize::MAX,
        ..CacheOptions::new(&kv_dir)
    };
    let identity = ModelIdentity {
        quant_bits: 2,
        fingerprint: ds4_kvcache::model_fingerprint(&shape.model.file),
    };
    let cache = DiskCache::open(opts, cfg.clone(), ctx, prefill_cap, identity)?;
    // Key text: about 4 bytes per token, like detokenized text.
    let key: Vec<u8> = (0..n)
        .flat_map(|i| b"tok ".map(|b| b + (i % 7) as u8))
        .collect();
    let mut row = Row::default();
    {
        let kv = synthetic_snapshot(&cfg, n, &mut rng);
        let tokens: Vec<u32> = (0..n)
            .map(|_| (rng.next() % cfg.n_vocab as u64) as u32)
            .collect();
        let logits = rng.floats(cfg.n_vocab);
        let t = Instant::now();
        let out = cache.save(&Checkpoint {
            key_text: &key,
            key_kind: KeyKind::TokenText,
            reason: SaveReason::Cold,
            tokens: &tokens,
            logits: &logits,
            kv: &kv,
            tool_map: &[],
        })?;
        row.save_s = t.elapsed().as_secs_f64();
        let SaveOutcome::Written { bytes, .. } = out else {
            return Err(format!("not written: {out:?}").into());
        };
        row.file_bytes = bytes;
    }
    let mut backend = CpuBackend::new(shape.model.clone(), ctx)?;
    let (mut cold, mut warm, mut restore) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..2 * reps {
        let is_cold = rep % 2 == 0;
        let entry = cache.lookup(&key).ok_or("lookup missed")?;
        if is_cold {
            row.dropped = drop_from_page_cache(&entry.path);
        }
        let t = Instant::now();
        let entry = cache.lookup(&key).ok_or("lookup missed")?;
        let loaded = cache.load(&entry, &key)?;
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        backend.restore(&loaded.state.kv)?;
        restore.push(t.elapsed().as_secs_f64());
        if backend.n_past() != n {
            return Err(format!("restored {} positions, want {n}", backend.n_past()).into());
        }
        if is_cold {
            cold.push(load_s);
        } else {
            warm.push(load_s);
        }
        drop(loaded);
        backend.reset();
    }
    row.cold_load_s = median(&mut cold);
    row.warm_load_s = median(&mut warm);
    row.restore_s = median(&mut restore);
    drop(backend);
    std::fs::remove_dir_all(&kv_dir)?;
    Ok(row)
}

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let shapes = env_list("DS4_RESTORE_BENCH_SHAPES", "tiny,full2");
    let tokens: Vec<usize> = env_list("DS4_RESTORE_BENCH_TOKENS", "10000,100000")
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let reps: usize = std::env::var("DS4_RESTORE_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let base: PathBuf = std::env::var_os("DS4_RESTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("ds4-restore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "| shape | tokens | .kv file | save (write + CRC + fsync) | load cold (read + CRC + decode) \
         | load warm | backend restore | restore total, cold | cold GB/s | CPU prefill (measured) \
         | re-prefill, extrapolated | saved |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in &shapes {
        let shape = load_shape(name, &dir)?;
        let rate = match shape.prefill_tokens {
            0 => None,
            p => Some((p, prefill_rate(&shape.model, p)?)),
        };
        for &n in &tokens {
            let r = bench_one(&shape, n, &dir, reps)?;
            let total = r.cold_load_s + r.restore_s;
            let gb = r.file_bytes as f64 / 1e9;
            let (prefill, reprefill, saved) = match rate {
                Some((p, tps)) => {
                    let t = n as f64 / tps;
                    (
                        format!("{tps:.1} tok/s ({p} tokens)"),
                        format!("{t:.1} s"),
                        format!("{:.0}x", t / total),
                    )
                }
                None => ("—".into(), "—".into(), "—".into()),
            };
            println!(
                "| {} | {n} | {:.1} MB | {:.3} s | {:.3} s{} | {:.3} s | {:.3} s | {:.3} s | {:.2} | {prefill} | {reprefill} | {saved} |",
                shape.name,
                r.file_bytes as f64 / 1e6,
                r.save_s,
                r.cold_load_s,
                if r.dropped { "" } else { " (cache not dropped)" },
                r.warm_load_s,
                r.restore_s,
                total,
                gb / r.cold_load_s,
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
