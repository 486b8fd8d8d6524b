//! Shared helpers for the reader tests: a DS4-like file built with our writer, a hand encoder for
//! headers the writer refuses to produce, and an allocator that records the largest request.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ds4_gguf::{GgufWriter, TensorSpec, TensorType, Value, ValueType};

// ---- allocation probe ---------------------------------------------------------------------------

/// Wraps the system allocator and remembers, per thread, the largest single request, so a test can
/// assert that a hostile count never turned into a huge allocation (tests run on many threads).
pub struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to `System`; the thread-local bookkeeping is a `Cell<usize>`
// with const initialisation, which never allocates, so it cannot recurse into the allocator.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(new_size)));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
pub fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let r = f();
    (r, PEAK.with(|p| p.get()))
}

// ---- files --------------------------------------------------------------------------------------

/// A deterministic byte stream (splitmix64) for tensor contents.
pub fn bytes_from_seed(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

pub fn write_file(metadata: &[(String, Value)], tensors: &[TensorSpec], seed: u64) -> Vec<u8> {
    let mut w = GgufWriter::new(Vec::new(), metadata, tensors).expect("valid test file");
    for (i, t) in tensors.iter().enumerate() {
        let n = t.n_bytes().expect("valid shape") as usize;
        w.write_data(&bytes_from_seed(seed + i as u64, n))
            .expect("tensor bytes");
    }
    w.finish().expect("finish")
}

/// A small file with the DS4 layout's flavour: `deepseek4.*` metadata of the real key types, a
/// vocabulary array, and one layer's worth of tensors in every type the engine reads.
pub fn ds4_like_file() -> Vec<u8> {
    let u32v = |k: &str, v: u32| (k.to_string(), Value::U32(v));
    let f32v = |k: &str, v: f32| (k.to_string(), Value::F32(v));
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("deepseek4".into()),
        ),
        (
            "general.name".to_string(),
            Value::String("ds4-like test".into()),
        ),
        u32v("general.alignment", 32),
        ("deepseek4.context_length".to_string(), Value::U64(1 << 20)),
        u32v("deepseek4.block_count", 1),
        u32v("deepseek4.embedding_length", 256),
        u32v("deepseek4.vocab_size", 8),
        u32v("deepseek4.attention.head_count", 4),
        u32v("deepseek4.attention.sliding_window", 16),
        f32v("deepseek4.attention.layer_norm_rms_epsilon", 1e-6),
        f32v("deepseek4.rope.freq_base", 10000.0),
        (
            "deepseek4.expert_weights_norm".to_string(),
            Value::Bool(true),
        ),
        (
            "deepseek4.attention.compress_ratios".to_string(),
            Value::Array(ValueType::U32, vec![Value::U32(4)]),
        ),
        (
            "deepseek4.swiglu_clamp_exp".to_string(),
            Value::Array(ValueType::F32, vec![Value::F32(10.0)]),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                ValueType::String,
                ["<s>", "</s>", "a", "b", "ab", "Ġ", "<think>", "</think>"]
                    .map(|s| Value::String(s.into()))
                    .to_vec(),
            ),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(ValueType::String, vec![Value::String("a b".into())]),
        ),
    ];
    let tensors = vec![
        TensorSpec::new("token_embd.weight", &[256, 8], TensorType::F16),
        TensorSpec::new("blk.0.attn_norm.weight", &[256], TensorType::F32),
        TensorSpec::new("blk.0.attn_q_a.weight", &[256, 4], TensorType::Q8_0),
        TensorSpec::new(
            "blk.0.ffn_gate_exps.weight",
            &[256, 2, 2],
            TensorType::Iq2Xxs,
        ),
        TensorSpec::new("blk.0.ffn_down_exps.weight", &[256, 2, 2], TensorType::Q2K),
        TensorSpec::new("blk.0.ffn_up_shexp.weight", &[256, 2], TensorType::Q4K),
        TensorSpec::new("blk.0.ffn_gate_tid2eid.weight", &[2, 8], TensorType::I32),
        TensorSpec::new("output.weight", &[256, 8], TensorType::Q8_0),
    ];
    write_file(&metadata, &tensors, 7)
}

/// Hand encoder for headers the writer will not produce (hostile counts, bad codes).
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn header(n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.u32(ds4_gguf::GGUF_MAGIC).u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor info entry.
    pub fn tensor(&mut self, name: &str, dims: &[u64], code: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(code).u64(offset)
    }
    /// Pads to `align` and appends `n` data bytes.
    pub fn data(&mut self, align: usize, n: usize) -> &mut Self {
        let pad = self.0.len().div_ceil(align) * align - self.0.len();
        self.0.extend(std::iter::repeat_n(0u8, pad + n));
        self
    }
}
