//! The unquantized element types: F32, F16 and BF16 (one element per "block").

use half::{bf16, f16};

pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (c, o) in src.chunks_exact(4).zip(dst) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (c, o) in src.chunks_exact(2).zip(dst) {
        *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (c, o) in src.chunks_exact(2).zip(dst) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

pub fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (v, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// f32 → f16 with IEEE round-to-nearest-even (spec/model.md §3.2 P4).
pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// f32 → bf16, round to nearest even (ggml's `ggml_compute_fp32_to_bf16`).
pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
    }
}

/// spec/model.md §3.2 P2: F32 weights accumulate in f64 and narrow once.
pub fn dot_f32_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0.0f64;
    for (c, &xi) in row.chunks_exact(4).zip(x) {
        acc += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 * xi as f64;
    }
    acc as f32
}

/// spec/model.md §3.2 P2 / §3.12: F16 weights, f32 products and accumulator, index ascending.
pub fn dot_f16_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (c, &xi) in row.chunks_exact(2).zip(x) {
        acc += f16::from_le_bytes([c[0], c[1]]).to_f32() * xi;
    }
    acc
}

pub fn dot_bf16_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (c, &xi) in row.chunks_exact(2).zip(x) {
        acc += f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * xi;
    }
    acc
}
