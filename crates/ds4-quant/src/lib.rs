//! GGML block formats as the DS4 GGUFs store them (spec/model.md §5): `#[repr(C)]` block structs
//! pinned to `ds4_gguf::TensorType`'s sizes, dequantization, reference quantizers, and dot products
//! of a quantized row with f32 activations (the model's own semantics) or with int8-quantized
//! activations (Q8_0 / Q8_K, ds4's CPU semantics and the fastest CPU path).
//!
//! Owns: in-block math and row kernels. Refuses: matrices, threading policy and model knowledge,
//! except the row-level helpers below that every backend needs. Design decision: every SIMD kernel
//! (AVX2, AVX-512, picked once at run time) has a scalar twin that is the test oracle.
//!
//! Public API (stable; other crates code against exactly these):
//! - [`dequantize_row`]`(ty, src_bytes, dst_f32)`
//! - [`quantize_row`]`(ty, src_f32, dst_bytes)` (reference quantizers)
//! - [`dot_f32`]`(ty, row_bytes, x_f32) -> f32` (f32 activations)
//! - [`QuantizedActs`]: activations quantized once to Q8_0 or Q8_K, and [`dot_q`]`(ty, row, acts)`
//! - [`matvec_f32`] / [`matvec_q`]: `y[o] = W[o,:]·x` over rows `o` of a row-major quantized matrix
//!   (single-threaded; callers split rows across threads).
//! - [`synth_blocks`]: fast random-but-valid blocks for synthetic models.
//!
//! Rows are byte slices straight out of the GGUF mmap, so nothing here assumes alignment: blocks
//! are read with unaligned loads. Byte order is little-endian, as in GGUF (x86-64 only target).
//!
//! Preconditions (lengths) are `assert!`s at the public entry points; once shapes are validated
//! these functions cannot fail (STYLE §2.6).

// Block math indexes several arrays by the element index, as spec/model.md §5 writes it.
#![allow(clippy::needless_range_loop)]

pub mod acts;
pub mod iq2_xxs;
pub mod kernels;
pub mod plain;
pub mod q2_k;
pub mod q4_k;
pub mod q8_0;
pub mod q8_k;
pub mod quantize;
pub mod scalar;
pub mod synth;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use acts::{ActFormat, QuantizedActs};
pub use ds4_gguf::TensorType;
pub use iq2_xxs::{BlockIq2Xxs, IQ2XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
pub use kernels::Kernels;
pub use q2_k::BlockQ2K;
pub use q4_k::BlockQ4K;
pub use q8_0::{ActQ8_0, BlockQ8_0};
pub use q8_k::BlockQ8K;
pub use synth::synth_blocks;

/// One quantized weight block format (STYLE §2.4). The row loops, matvecs and tests are written
/// once over this trait; only the in-block math differs per format. The methods here are the
/// scalar reference: SIMD kernels are tested against them.
pub trait Block: bytemuck::Pod {
    /// The GGUF type this block is.
    const TYPE: TensorType;
    /// Elements per block.
    const ELEMS: usize = Self::TYPE.block_elems();
    /// Bytes per block (pinned to `size_of::<Self>()` by a compile-time assert in each module).
    const BYTES: usize = Self::TYPE.block_bytes();
    /// The quantized-activation block this format dots with: [`BlockQ8K`] or [`ActQ8_0`].
    type Act: bytemuck::Pod;

    /// Writes the `ELEMS` dequantized values to `out[..ELEMS]`, in ggml's operation order (so the
    /// result matches ggml and gguf-py bit for bit).
    fn dequantize(&self, out: &mut [f32]);
    /// Integer block dot with quantized activations, converted to f32 as spec/model.md §3.12 says.
    fn dot(&self, act: &Self::Act) -> f32;
    /// Reference quantizer for `ELEMS` values.
    fn quantize_ref(x: &[f32]) -> Self;
}

/// Asserts that `bytes` holds exactly `n_elems` elements of `ty`.
pub(crate) fn check_row(ty: TensorType, bytes: usize, n_elems: usize) {
    assert!(
        n_elems.is_multiple_of(ty.block_elems()),
        "{ty} row length {n_elems} is not a multiple of {}",
        ty.block_elems()
    );
    let want = n_elems / ty.block_elems() * ty.block_bytes();
    assert_eq!(
        bytes, want,
        "{ty} row of {n_elems} elements must be {want} bytes, got {bytes}"
    );
}

/// Dequantizes one row: `dst.len()` elements from `src` (exactly `ty.row_bytes(dst.len())` bytes).
/// Supports F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS and Q8_K.
///
/// # Panics
/// If the lengths disagree or `ty` is I32.
pub fn dequantize_row(ty: TensorType, src: &[u8], dst: &mut [f32]) {
    Kernels::best().dequantize(ty, src, dst)
}

/// Quantizes one row of `src.len()` values into `dst` (exactly `ty.row_bytes(src.len())` bytes)
/// with the reference quantizer of `ty`. For Q8_K this is the activation quantizer (P3b).
///
/// # Panics
/// If the lengths disagree or `ty` is I32.
pub fn quantize_row(ty: TensorType, src: &[f32], dst: &mut [u8]) {
    check_row(ty, dst.len(), src.len());
    match ty {
        TensorType::F32 => plain::quantize_f32(src, dst),
        TensorType::F16 => plain::quantize_f16(src, dst),
        TensorType::Bf16 => plain::quantize_bf16(src, dst),
        TensorType::Q8_0 => scalar::quantize_blocks::<BlockQ8_0>(src, dst),
        TensorType::Q2K => scalar::quantize_blocks::<BlockQ2K>(src, dst),
        TensorType::Q4K => scalar::quantize_blocks::<BlockQ4K>(src, dst),
        TensorType::Iq2Xxs => scalar::quantize_blocks::<BlockIq2Xxs>(src, dst),
        TensorType::Q8K => {
            for (x, o) in src
                .chunks_exact(256)
                .zip(dst.chunks_exact_mut(ty.block_bytes()))
            {
                o.copy_from_slice(bytemuck::bytes_of(&BlockQ8K::quantize(x)));
            }
        }
        TensorType::I32 => panic!("I32 tensors are ids, not weights: nothing to quantize"),
    }
}

/// `Σ_i w_i · x_i` of one weight row (`ty.row_bytes(x.len())` bytes) against f32 activations:
/// the model's own semantics (spec/model.md §3.10, "f32 activations"). F16 and the block formats
/// accumulate in f32 (in a SIMD order, not left to right); F32 accumulates in f64 (spec §3.2 P2).
///
/// # Panics
/// If the lengths disagree or `ty` is I32 or Q8_K.
pub fn dot_f32(ty: TensorType, row: &[u8], x: &[f32]) -> f32 {
    Kernels::best().dot_f32(ty, row, x)
}

/// `Σ_i w_i · a_i` of one weight row against activations quantized once with
/// [`QuantizedActs::quantize`]: integer block dots, ds4's CPU semantics (spec/model.md §3.2 P2,
/// §3.12: per-block terms accumulated in f32, blocks ascending, which the SIMD kernels keep).
///
/// # Panics
/// If `acts` is not in the activation format of `ty` ([`ActFormat::for_weights`]) or lengths
/// disagree.
pub fn dot_q(ty: TensorType, row: &[u8], acts: &QuantizedActs) -> f32 {
    Kernels::best().dot_q(ty, row, acts)
}

pub(crate) fn check_matvec(
    ty: TensorType,
    w: usize,
    row_bytes: usize,
    n_rows: usize,
    n_x: usize,
    n_y: usize,
) {
    check_row(ty, row_bytes, n_x);
    assert_eq!(n_y, n_rows, "y must hold one value per row");
    let need = row_bytes
        .checked_mul(n_rows)
        .expect("invariant: matrix size fits in usize");
    assert!(
        w >= need,
        "matrix of {n_rows} rows × {row_bytes} bytes needs {need} bytes, got {w}"
    );
}

/// `y[o] = W[o,:]·x` for the `n_rows` rows of the row-major matrix `w` (each `row_bytes` bytes),
/// f32 activations (see [`dot_f32`]). Single-threaded; split rows across threads outside.
///
/// # Panics
/// If `row_bytes` does not hold `x.len()` elements, `y.len() != n_rows`, or `w` is too short.
pub fn matvec_f32(
    ty: TensorType,
    w: &[u8],
    row_bytes: usize,
    n_rows: usize,
    x: &[f32],
    y: &mut [f32],
) {
    Kernels::best().matvec_f32(ty, w, row_bytes, n_rows, x, y)
}

/// `y[o] = W[o,:]·acts` for the `n_rows` rows of `w` with quantized activations (see [`dot_q`]).
///
/// # Panics
/// As [`matvec_f32`], and if `acts` does not match `ty`.
pub fn matvec_q(
    ty: TensorType,
    w: &[u8],
    row_bytes: usize,
    n_rows: usize,
    acts: &QuantizedActs,
    y: &mut [f32],
) {
    Kernels::best().matvec_q(ty, w, row_bytes, n_rows, acts, y)
}
