//! Scalar row kernels, generic over [`Block`]: the test oracle for the SIMD kernels and the
//! fallback on CPUs without AVX2.

use crate::{plain, Block, BlockIq2Xxs, BlockQ2K, BlockQ4K, BlockQ8_0, QuantizedActs, TensorType};

pub fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    for (c, o) in src
        .chunks_exact(B::BYTES)
        .zip(dst.chunks_exact_mut(B::ELEMS))
    {
        bytemuck::pod_read_unaligned::<B>(c).dequantize(o);
    }
}

pub fn quantize_blocks<B: Block>(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src
        .chunks_exact(B::ELEMS)
        .zip(dst.chunks_exact_mut(B::BYTES))
    {
        o.copy_from_slice(bytemuck::bytes_of(&B::quantize_ref(x)));
    }
}

/// Dequantize each block, then multiply-add left to right in f32.
pub fn dot_f32_blocks<B: Block>(row: &[u8], x: &[f32]) -> f32 {
    let mut buf = [0.0f32; 256];
    let w = &mut buf[..B::ELEMS];
    let mut acc = 0.0f32;
    for (c, xb) in row.chunks_exact(B::BYTES).zip(x.chunks_exact(B::ELEMS)) {
        bytemuck::pod_read_unaligned::<B>(c).dequantize(w);
        for (&wi, &xi) in w.iter().zip(xb) {
            acc += wi * xi;
        }
    }
    acc
}

/// Block dots accumulated in f32, blocks ascending (spec/model.md §3.12).
pub fn dot_q_blocks<B: Block>(row: &[u8], acts: &[B::Act]) -> f32 {
    let mut acc = 0.0f32;
    for (c, a) in row.chunks_exact(B::BYTES).zip(acts) {
        acc += bytemuck::pod_read_unaligned::<B>(c).dot(a);
    }
    acc
}

pub fn dot_f32(ty: TensorType, row: &[u8], x: &[f32]) -> f32 {
    match ty {
        TensorType::F32 => plain::dot_f32_f32(row, x),
        TensorType::F16 => plain::dot_f16_f32(row, x),
        TensorType::Bf16 => plain::dot_bf16_f32(row, x),
        TensorType::Q8_0 => dot_f32_blocks::<BlockQ8_0>(row, x),
        TensorType::Q2K => dot_f32_blocks::<BlockQ2K>(row, x),
        TensorType::Q4K => dot_f32_blocks::<BlockQ4K>(row, x),
        TensorType::Iq2Xxs => dot_f32_blocks::<BlockIq2Xxs>(row, x),
        TensorType::Q8K | TensorType::I32 => panic!("{ty} is not a weight format"),
    }
}

pub fn dot_q(ty: TensorType, row: &[u8], acts: &QuantizedActs) -> f32 {
    match ty {
        TensorType::Q8_0 => dot_q_blocks::<BlockQ8_0>(row, acts.q8_0_blocks()),
        TensorType::Q2K => dot_q_blocks::<BlockQ2K>(row, acts.q8k_blocks()),
        TensorType::Q4K => dot_q_blocks::<BlockQ4K>(row, acts.q8k_blocks()),
        TensorType::Iq2Xxs => dot_q_blocks::<BlockIq2Xxs>(row, acts.q8k_blocks()),
        _ => panic!("{ty} has no quantized-activation dot; use dot_f32"),
    }
}
