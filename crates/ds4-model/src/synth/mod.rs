//! Synthetic DS4 models: the real file's tensor names, types and metadata keys (spec §1.4, §2),
//! random weights deterministic in the seed, scaled so a forward pass stays well-conditioned
//! through many layers (projections ~1/sqrt(n_in) RMS, norms near 1, small HC mixers).
//!
//! Three presets: `tiny` (5 layers, n_embd 256: every layer kind, a hash layer that is also
//! ratio 4, indexer top-k 4 so selection starts after 20 tokens), `small` (8 layers, n_embd 1024),
//! `full` (the real shape, q2 or q4 experts, any layer count). The same plan is written to a
//! `Vec<u8>` (tests, benchmarks) or streamed to disk in parallel chunks (the 80.8 GiB full file is
//! never held in memory); `header_only` writes the real layout as a sparse file.
//!
//! Determinism: every tensor is cut into fixed-size row chunks whose seeds depend only on
//! (seed, tensor name, chunk index), so the bytes do not depend on thread count or write order.

mod vocab;

use std::io::Write;
use std::path::{Path, PathBuf};

use ds4_gguf::{GgufWriter, TensorSpec, TensorType, Value, ValueType};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::layout::{tensor_layout, TensorSlot, TypeClass};
use crate::{AttnKind, Config, LoadError, Model};

pub use vocab::{
    byte_to_char, synthetic_vocab, token_types, Vocab, MIN_SYNTH_VOCAB, SPECIAL_TOKENS,
};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synthetic model request: {0}")]
    Spec(String),
    #[error(transparent)]
    Gguf(#[from] ds4_gguf::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generated model does not load: {0}")]
    Load(#[from] LoadError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Size class of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    Small,
    Full,
}

impl std::str::FromStr for Preset {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Preset, SynthError> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            "full" => Ok(Preset::Full),
            other => Err(SynthError::Spec(format!(
                "unknown preset {other:?} (tiny, small or full)"
            ))),
        }
    }
}

/// Routed-expert quantization, as in the two published files (spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertQuant {
    /// IQ2_XXS gate/up, Q2_K down.
    Q2,
    /// Q4_K gate/up/down.
    Q4,
}

impl std::str::FromStr for ExpertQuant {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<ExpertQuant, SynthError> {
        match s {
            "q2" => Ok(ExpertQuant::Q2),
            "q4" => Ok(ExpertQuant::Q4),
            other => Err(SynthError::Spec(format!(
                "unknown expert quantization {other:?} (q2 or q4)"
            ))),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub preset: Preset,
    /// Layer count override (full: real widths with fewer layers).
    pub layers: Option<usize>,
    pub seed: u64,
    pub experts: ExpertQuant,
    /// Vocabulary to embed; `None` builds [`synthetic_vocab`]. With one, `n_vocab` is its size.
    pub vocab: Option<Vocab>,
}

impl SynthSpec {
    pub fn new(preset: Preset, seed: u64) -> SynthSpec {
        SynthSpec {
            preset,
            layers: None,
            seed,
            experts: ExpertQuant::Q2,
            vocab: None,
        }
    }

    /// The tiny preset with `seed` (the model most tests want).
    pub fn tiny(seed: u64) -> SynthSpec {
        SynthSpec::new(Preset::Tiny, seed)
    }

    /// The model's config.
    pub fn config(&self) -> Result<Config, SynthError> {
        let n_vocab_override = self.vocab.as_ref().map(|v| v.tokens.len());
        let cfg = match self.preset {
            Preset::Full => {
                let n_layer = self.layers.unwrap_or(crate::config::REAL_N_LAYER);
                if !(1..=crate::config::REAL_N_LAYER).contains(&n_layer) {
                    return Err(SynthError::Spec(format!(
                        "full preset: --layers {n_layer} is not in 1..=43"
                    )));
                }
                if let Some(n) = n_vocab_override.filter(|&n| n != crate::config::REAL_N_VOCAB) {
                    return Err(SynthError::Spec(format!(
                        "full preset needs a {}-token vocabulary, got {n}",
                        crate::config::REAL_N_VOCAB
                    )));
                }
                Config::real(n_layer)
            }
            Preset::Tiny => small_config(self.layers.unwrap_or(5), 256, 512, 8, n_vocab_override),
            Preset::Small => {
                small_config(self.layers.unwrap_or(8), 1024, 4096, 16, n_vocab_override)
            }
        };
        if cfg.n_layer == 0 {
            return Err(SynthError::Spec("--layers must be at least 1".into()));
        }
        if cfg.n_vocab < MIN_SYNTH_VOCAB {
            return Err(SynthError::Spec(format!(
                "vocabulary of {} tokens is below {MIN_SYNTH_VOCAB}",
                cfg.n_vocab
            )));
        }
        Ok(cfg)
    }

    /// Metadata, tensor list and per-tensor generation recipe.
    pub fn plan(&self) -> Result<SynthPlan, SynthError> {
        let config = self.config()?;
        let vocab = match &self.vocab {
            Some(v) => v.clone(),
            None => synthetic_vocab(config.n_vocab),
        };
        let preset = match self.preset {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Full => "full",
        };
        let experts = match self.experts {
            ExpertQuant::Q2 => "q2",
            ExpertQuant::Q4 => "q4",
        };
        let mut metadata: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::String("deepseek4".into()),
            ),
            (
                "general.name".into(),
                Value::String(format!(
                    "ds4-synth-{preset}-{experts}-L{}-seed{}",
                    config.n_layer, self.seed
                )),
            ),
            ("general.alignment".into(), Value::U32(32)),
        ];
        metadata.extend(config.to_metadata());
        let strings = |v: &[String]| {
            Value::Array(
                ValueType::String,
                v.iter().map(|s| Value::String(s.clone())).collect(),
            )
        };
        metadata.extend([
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            (
                "tokenizer.ggml.pre".into(),
                Value::String("joyai-llm".into()),
            ),
            ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(
                    ValueType::I32,
                    token_types(&vocab.tokens)
                        .into_iter()
                        .map(Value::I32)
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.merges".into(), strings(&vocab.merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ]);
        // As in DeepSeek V4 (and the Python generator): hash-routed layers have no router bias.
        let tensors = tensor_layout(&config)
            .into_iter()
            .filter(|slot| {
                !(slot.name.ends_with("exp_probs_b.bias")
                    && slot.il.is_some_and(|il| il < config.n_hash_layer))
            })
            .map(|slot| {
                let ty = self.tensor_type(&slot);
                let init = init_for(&slot, &config);
                PlannedTensor {
                    spec: TensorSpec::new(slot.name.clone(), &slot.dims, ty),
                    init,
                }
            })
            .collect();
        Ok(SynthPlan {
            config,
            metadata,
            tensors,
            seed: self.seed,
        })
    }

    fn tensor_type(&self, slot: &TensorSlot) -> TensorType {
        match (slot.class, self.experts) {
            (TypeClass::Routed, ExpertQuant::Q4) => TensorType::Q4K,
            (TypeClass::Routed, ExpertQuant::Q2) if slot.name.ends_with("ffn_down_exps.weight") => {
                TensorType::Q2K
            }
            (class, _) => class.real_type(),
        }
    }
}

/// Tiny/small shape: real ratios of structure, small widths. Schedule: window layers 0-1, then
/// 4 (even) and `odd_ratio` (odd), so both compressor kinds appear and the odd ratio emits rows
/// early; 3 hash layers, layer 2 both hashed and ratio 4 as in the real model (spec §1.3).
fn small_config(
    n_layer: usize,
    n_embd: usize,
    n_vocab: usize,
    odd_ratio: u32,
    vocab: Option<usize>,
) -> Config {
    let big = n_embd >= 1024;
    let ratio = |il: usize| match il {
        0 | 1 => 0,
        il if il.is_multiple_of(2) => 4,
        _ => odd_ratio,
    };
    Config {
        n_layer,
        n_embd,
        n_vocab: vocab.unwrap_or(n_vocab),
        n_head: if big { 8 } else { 4 },
        n_head_kv: 1,
        head_dim: if big { 256 } else { 128 },
        n_rot: 64,
        n_out_group: 2,
        q_lora_rank: if big { 256 } else { 64 },
        o_lora_rank: if big { 256 } else { 64 },
        n_expert: if big { 32 } else { 8 },
        n_expert_used: if big { 4 } else { 2 },
        n_expert_shared: 1,
        n_ff_exp: if big { 512 } else { 256 },
        n_hash_layer: 3,
        n_swa: if big { 64 } else { 16 },
        n_idx_head: 4,
        idx_head_dim: 128,
        idx_top_k: if big { 16 } else { 4 },
        n_hc: 4,
        sinkhorn_iters: 20,
        context_length: 1 << 20,
        attn_kinds: (0..n_layer)
            .map(|il| AttnKind::from_ratio(ratio(il)))
            .collect(),
        ..Config::real(0)
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Mean and RMS deviation (uniform).
    Values { mean: f32, rms: f32 },
    /// `n_expert_used` distinct expert ids per token (`ffn_gate_tid2eid`).
    ExpertIds { n_expert: usize },
}

/// Scales that keep activations O(1) through many layers (projections ~1/sqrt(n_in); the wider
/// expert and head scales compensate for SwiGLU and RMSNorm shrinkage). Same spirit as
/// `shared/tools/synth_gguf.py`'s plan, so both generators make comparable models.
fn init_for(slot: &TensorSlot, cfg: &Config) -> Init {
    let isq = |n: usize| 1.0 / (n as f32).sqrt();
    let v = |mean: f32, rms: f32| Init::Values { mean, rms };
    let name = slot.name.as_str();
    let suffix = name
        .rsplit_once("blk.")
        .map_or(name, |(_, s)| s.split_once('.').map_or(s, |(_, r)| r));
    let n_in = slot.dims[0] as usize;
    match suffix {
        "token_embd.weight" => v(0.0, 1.0),
        "ffn_gate_tid2eid.weight" => Init::ExpertIds {
            n_expert: cfg.n_expert,
        },
        "hc_attn_scale.weight" | "hc_ffn_scale.weight" | "output_hc_scale.weight" => v(0.6, 0.1),
        "hc_attn_base.weight" | "hc_ffn_base.weight" | "output_hc_base.weight" => v(0.0, 0.5),
        "attn_sinks.weight" => v(0.5, 1.0),
        "exp_probs_b.bias" => v(0.0, 0.1),
        "attn_compressor_ape.weight" | "indexer_compressor_ape.weight" => v(0.0, 0.5),
        "attn_output_b.weight" => v(0.0, 4.0 * isq(n_in)),
        "ffn_gate_exps.weight" | "ffn_up_exps.weight" => v(0.0, 3.5 * isq(n_in)),
        "ffn_gate_shexp.weight" | "ffn_up_shexp.weight" => v(0.0, 2.0 * isq(n_in)),
        "ffn_down_exps.weight" | "ffn_down_shexp.weight" => v(0.0, 0.3 * isq(n_in)),
        "output.weight" => v(0.0, 3.0 * isq(n_in)),
        s if s.ends_with("norm.weight") => v(1.0, 0.1),
        _ => v(0.0, isq(n_in)),
    }
}

/// One tensor of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    pub spec: TensorSpec,
    pub init: Init,
}

/// Everything needed to write the file.
#[derive(Debug, Clone)]
pub struct SynthPlan {
    pub config: Config,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<PlannedTensor>,
    pub seed: u64,
}

/// Output bytes per generation chunk: large enough to amortize, small enough that a batch of
/// them per thread stays a few hundred MiB.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks generated in parallel before they are written in order.
const CHUNKS_PER_BATCH: usize = 32;

impl SynthPlan {
    fn specs(&self) -> Vec<TensorSpec> {
        self.tensors.iter().map(|t| t.spec.clone()).collect()
    }

    /// Total data bytes (each tensor padded to the alignment).
    pub fn data_bytes(&self) -> Result<u64, SynthError> {
        let mut total = 0u64;
        for t in &self.tensors {
            total += t.spec.n_bytes()?.div_ceil(32) * 32;
        }
        Ok(total)
    }

    /// Streams the GGUF into `out`, calling `progress(done, total)` (data bytes) per batch.
    pub fn write_to<W: Write>(
        &self,
        out: W,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<W, SynthError> {
        let total = self.data_bytes()?;
        let mut jobs = Vec::new();
        for t in &self.tensors {
            let n_rows = row_count(&t.spec);
            let row_bytes = t.spec.n_bytes()? as usize / n_rows;
            let rows_per_chunk = (CHUNK_BYTES / row_bytes).max(1);
            let n_chunks = n_rows.div_ceil(rows_per_chunk);
            let seed = mix(self.seed ^ fnv1a64(t.spec.name.as_bytes()));
            jobs.push((t, n_rows, row_bytes, rows_per_chunk, n_chunks, seed));
        }
        let mut w = GgufWriter::new(out, &self.metadata, &self.specs())?;
        // Generation (rayon, a batch of chunks at a time) runs one batch ahead of the writer, so
        // a disk-bound run costs max(generate, write), not their sum.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(1);
        std::thread::scope(|scope| -> Result<W, SynthError> {
            scope.spawn(move || {
                for &(t, n_rows, row_bytes, rows_per_chunk, n_chunks, seed) in &jobs {
                    for b0 in (0..n_chunks).step_by(CHUNKS_PER_BATCH) {
                        let bufs: Vec<Vec<u8>> = (b0..n_chunks.min(b0 + CHUNKS_PER_BATCH))
                            .into_par_iter()
                            .map(|ci| {
                                let rows = rows_per_chunk.min(n_rows - ci * rows_per_chunk);
                                gen_chunk(t, mix(seed.wrapping_add(ci as u64)), rows, row_bytes)
                            })
                            .collect();
                        if tx.send(bufs).is_err() {
                            return; // the writer failed and hung up
                        }
                    }
                }
            });
            let mut done = 0u64;
            for bufs in rx {
                for b in &bufs {
                    w.write_data(b)?;
                    done += b.len() as u64;
                }
                progress(done, total);
            }
            Ok(w.finish()?)
        })
    }

    /// The whole file in memory.
    /// The whole file in memory, allocated once at its exact size (a full-shape model is tens of
    /// GiB: growing a `Vec` by doubling would need twice that).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SynthError> {
        let cap = self.file_bytes()?;
        let cap = usize::try_from(cap)
            .map_err(|_| SynthError::Spec(format!("{cap} bytes do not fit in memory")))?;
        let bytes = self.write_to(Vec::with_capacity(cap), &mut |_, _| {})?;
        debug_assert_eq!(bytes.len(), cap);
        Ok(bytes)
    }

    /// Size of the whole file: the aligned header (metadata and tensor directory) plus the data.
    pub fn file_bytes(&self) -> Result<u64, SynthError> {
        let mut counter = CountingWriter {
            inner: std::io::sink(),
            n: 0,
        };
        drop(GgufWriter::new(
            &mut counter,
            &self.metadata,
            &self.specs(),
        )?);
        Ok(counter.n + self.data_bytes()?)
    }

    /// Writes `path` atomically (temporary file + rename). `header_only` writes the header and
    /// sets the length of a sparse file with the full layout: strict validation can check the real
    /// shape without writing 80 GiB (the weights read as zeros).
    pub fn write_file(
        &self,
        path: &Path,
        header_only: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), SynthError> {
        let tmp = tmp_path(path);
        let result = self.write_file_inner(&tmp, header_only, progress);
        match result {
            Ok(()) => std::fs::rename(&tmp, path).map_err(io_err(path)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn write_file_inner(
        &self,
        tmp: &Path,
        header_only: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), SynthError> {
        let file = std::fs::File::create(tmp).map_err(io_err(tmp))?;
        if header_only {
            // The writer has emitted the aligned header once `new` returns; the data is left as
            // a hole. Its tensors are deliberately not written, so `finish` is not called.
            drop(GgufWriter::new(&file, &self.metadata, &self.specs())?);
            file.set_len(self.file_bytes()?).map_err(io_err(tmp))?;
            progress(0, 0);
        } else {
            let buf = std::io::BufWriter::with_capacity(8 << 20, &file);
            let mut buf = self.write_to(buf, progress)?;
            buf.flush().map_err(io_err(tmp))?;
        }
        file.sync_all().map_err(io_err(tmp))?;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn row_count(spec: &TensorSpec) -> usize {
    spec.dims[1..].iter().product::<u64>() as usize
}

/// One chunk of `rows` rows of tensor `t`.
fn gen_chunk(t: &PlannedTensor, seed: u64, rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * row_bytes];
    let n_in = t.spec.dims[0] as usize;
    match (t.init, t.spec.ty) {
        (Init::ExpertIds { n_expert }, _) => {
            // Each "row" of [n_expert_used, n_vocab] is one token's ids: distinct experts.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut ids: Vec<i32> = (0..n_expert as i32).collect();
            for row in out.chunks_exact_mut(row_bytes) {
                for k in 0..n_in {
                    let j = rng.gen_range(k..n_expert);
                    ids.swap(k, j);
                }
                for (k, b) in row.chunks_exact_mut(4).enumerate() {
                    b.copy_from_slice(&ids[k].to_le_bytes());
                }
            }
        }
        (Init::Values { mean, rms }, TensorType::F32) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let a = rms * 3f32.sqrt();
            for b in out.chunks_exact_mut(4) {
                let x = mean + rng.gen_range(-a..a);
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
        (Init::Values { mean: _, rms }, ty) => {
            ds4_quant::synth_blocks(ty, seed, rows * n_in, rms, &mut out);
        }
    }
    out
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 finalizer: decorrelates neighbouring chunk seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---- convenience entry points ----------------------------------------------------------------

/// The GGUF bytes of `spec`.
pub fn build_bytes(spec: &SynthSpec) -> Result<Vec<u8>, SynthError> {
    spec.plan()?.to_bytes()
}

/// A validated [`Model`] held in memory (tests, benchmarks).
pub fn build_model(spec: &SynthSpec) -> Result<Model, SynthError> {
    Ok(Model::from_bytes(build_bytes(spec)?)?)
}

/// Writes `spec` to `path` (atomically). See [`SynthPlan::write_file`].
pub fn write_model(
    spec: &SynthSpec,
    path: &Path,
    header_only: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), SynthError> {
    spec.plan()?.write_file(path, header_only, progress)
}

/// Bumped whenever the demo model's bytes change for the same vocabulary.
pub const DEMO_MODEL_VERSION: u32 = 2;
/// Seed of the built-in demo model.
pub const DEMO_SEED: u64 = 0xd54;

/// The tiny built-in demo model with the given (real) vocabulary, created once under `cache_dir`
/// and reused. The file name carries [`DEMO_MODEL_VERSION`] and a hash of the vocabulary, so a
/// new generator or vocabulary never reuses a stale file; creation is atomic (temp + rename), so
/// concurrent first runs are safe.
pub fn ensure_demo_model(
    cache_dir: &Path,
    tokens: Vec<String>,
    merges: Vec<String>,
) -> Result<PathBuf, SynthError> {
    let mut h = fnv1a64(b"ds4-demo");
    for s in tokens
        .iter()
        .chain(std::iter::once(&String::from("\u{0}merges")))
        .chain(merges.iter())
    {
        h = mix(h ^ fnv1a64(s.as_bytes()));
    }
    let path = cache_dir.join(format!("ds4-demo-v{DEMO_MODEL_VERSION}-{h:016x}.gguf"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let spec = SynthSpec {
        vocab: Some(Vocab { tokens, merges }),
        ..SynthSpec::tiny(DEMO_SEED)
    };
    write_model(&spec, &path, false, &mut |_, _| {})?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_is_deterministic_and_loads() {
        let a = build_bytes(&SynthSpec::tiny(7)).expect("build");
        let b = build_bytes(&SynthSpec::tiny(7)).expect("build");
        let c = build_bytes(&SynthSpec::tiny(8)).expect("build");
        assert!(a == b, "same seed, same bytes");
        let planned = SynthSpec::tiny(7)
            .plan()
            .and_then(|p| p.file_bytes())
            .expect("plan");
        assert_eq!(a.len() as u64, planned, "file_bytes is the exact size");
        assert!(a != c, "another seed, other bytes");
        let m = Model::from_bytes(a).expect("tiny loads");
        assert_eq!(m.config.n_layer, 5);
        let kinds: Vec<usize> = m.config.attn_kinds.iter().map(|k| k.ratio()).collect();
        assert_eq!(kinds, vec![0, 0, 4, 8, 4]);
        assert!(m.weights.layers[2].ffn_gate_tid2eid.is_some());
        assert_eq!(m.weights.layers[0].ffn_gate_exps.ty(), TensorType::Iq2Xxs);
        assert_eq!(m.weights.layers[0].ffn_down_exps.ty(), TensorType::Q2K);
    }

    #[test]
    fn hash_table_rows_hold_distinct_valid_experts() {
        let m = build_model(&SynthSpec::tiny(3)).expect("tiny");
        let t = m.weights.layers[0]
            .ffn_gate_tid2eid
            .as_ref()
            .expect("hash layer");
        let ids = t.i32s();
        let used = m.config.n_expert_used;
        for row in ids.chunks_exact(used) {
            let mut r = row.to_vec();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), used, "distinct ids {row:?}");
            assert!(row
                .iter()
                .all(|&e| (0..m.config.n_expert as i32).contains(&e)));
        }
    }

    #[test]
    fn q4_experts_and_layer_override() {
        let spec = SynthSpec {
            experts: ExpertQuant::Q4,
            layers: Some(3),
            ..SynthSpec::tiny(1)
        };
        let m = build_model(&spec).expect("tiny q4");
        assert_eq!(m.config.n_layer, 3);
        for l in &m.weights.layers {
            assert_eq!(l.ffn_gate_exps.ty(), TensorType::Q4K);
            assert_eq!(l.ffn_down_exps.ty(), TensorType::Q4K);
        }
        assert_eq!(m.expert_quant_bits(), 4);
        assert_eq!(
            build_model(&SynthSpec::tiny(1))
                .expect("tiny")
                .expert_quant_bits(),
            2
        );
    }

    #[test]
    fn weight_scales_are_as_planned() {
        let m = build_model(&SynthSpec::tiny(5)).expect("tiny");
        let norm = m.weights.layers[1].attn_norm.f32s();
        let mean = norm.iter().sum::<f32>() / norm.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "norm mean {mean}");
        let kv = &m.weights.layers[1].attn_kv;
        let mut row = vec![0f32; kv.n_in()];
        ds4_quant::dequantize_row(kv.ty(), kv.row(0), &mut row);
        let rms = (row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32).sqrt();
        let want = 1.0 / (kv.n_in() as f32).sqrt();
        assert!(
            (rms / want - 1.0).abs() < 0.3,
            "attn_kv row rms {rms}, want ~{want}"
        );
    }
}
