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
