//! Independent oracle: blocks dequantized (and a few rows quantized) by gguf-py's numpy
//! implementation (`tests/fixtures/regen.py`, gguf==0.19.0). Dequantization must match EXACTLY,
//! bit for bit, for every format the engine reads.

use ds4_quant::{dequantize_row, quantize_row, TensorType};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/fixtures/regen.py)", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check_dequant(ty: TensorType) {
    let blocks = fixture(&format!("{}.blocks.bin", ty.name()));
    let want = f32s(&fixture(&format!("{}.f32.bin", ty.name())));
    assert!(!want.is_empty());
    let mut got = vec![0.0f32; want.len()];
    dequantize_row(ty, &blocks, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{ty} element {i}: {g} vs gguf-py {w}"
        );
    }
}

#[test]
fn q8_0_dequantize_matches_gguf_py_exactly() {
    check_dequant(TensorType::Q8_0);
}

#[test]
fn q2_k_dequantize_matches_gguf_py_exactly() {
    check_dequant(TensorType::Q2K);
}

#[test]
fn q4_k_dequantize_matches_gguf_py_exactly() {
    check_dequant(TensorType::Q4K);
}

#[test]
fn iq2_xxs_dequantize_matches_gguf_py_exactly() {
    check_dequant(TensorType::Iq2Xxs);
}

#[test]
fn f16_and_bf16_dequantize_match_gguf_py_exactly() {
    check_dequant(TensorType::F16);
    check_dequant(TensorType::Bf16);
}

#[test]
fn q8_0_f16_bf16_quantize_match_gguf_py_exactly() {
    for ty in [TensorType::Q8_0, TensorType::F16, TensorType::Bf16] {
        let src = f32s(&fixture(&format!("{}.quant_src.f32", ty.name())));
        let want = fixture(&format!("{}.quant.bin", ty.name()));
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &src, &mut got);
        assert_eq!(got, want, "{ty}: quantized bytes differ from gguf-py");
    }
}
