//! Every SIMD kernel table this CPU supports against the scalar reference, on random blocks
//! (random quant bytes, random finite scales, odd block counts so tails are exercised).
//! Integer dots and dequantization must match bit for bit; f32-activation dots may differ only
//! by float reassociation.

use ds4_quant::{Kernels, QuantizedActs, TensorType};
use proptest::prelude::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A finite f16 with a random exponent in roughly 2^-14 … 2^1 (subnormals included) and sign.
fn scale_bits(r: &mut Rng) -> [u8; 2] {
    let v = r.next() as u16;
    if v.is_multiple_of(8) {
        // Zero scales (±0): the sign of zero results must match too.
        return (v & 0x8000).to_le_bytes();
    }
    let exp = (v >> 10) & 0x1f;
    let exp = exp % 16; // 0..15: subnormal … 2^0
    ((v & 0x83ff) | (exp << 10)).to_le_bytes()
}

/// Random valid bytes for `n_blocks` blocks of `ty` (plain types: `n_blocks` elements).
fn random_row(ty: TensorType, n_blocks: usize, r: &mut Rng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut v: Vec<u8> = (0..n_blocks * bb).map(|_| r.next() as u8).collect();
    let scale_at: &[usize] = match ty {
        TensorType::Q8_0 | TensorType::Iq2Xxs => &[0],
        TensorType::Q2K => &[80, 82],
        TensorType::Q4K => &[0, 2],
        TensorType::F16 => &[0],
        _ => &[],
    };
    for blk in v.chunks_exact_mut(bb) {
        for &o in scale_at {
            blk[o..o + 2].copy_from_slice(&scale_bits(r));
        }
        if ty == TensorType::Bf16 {
            // Keep the exponent below all-ones: finite values only.
            blk[1] &= 0xbf;
        }
    }
    v
}

fn acts(r: &mut Rng, n: usize) -> Vec<f32> {
    let scale = 2f32.powi((r.next() % 16) as i32 - 8);
    (0..n).map(|_| r.f32() * scale).collect()
}

const QUANT: [TensorType; 4] = [
    TensorType::Q8_0,
    TensorType::Q2K,
    TensorType::Q4K,
    TensorType::Iq2Xxs,
];
const F32_DOT: [TensorType; 6] = [
    TensorType::F16,
    TensorType::Bf16,
    TensorType::Q8_0,
    TensorType::Q2K,
    TensorType::Q4K,
    TensorType::Iq2Xxs,
];

fn simd_tables() -> Vec<Kernels> {
    Kernels::available()
        .into_iter()
        .filter(|k| k.name != "scalar")
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn integer_dots_match_scalar_exactly(seed: u64, n_blocks in 1usize..12) {
        let mut r = Rng(seed);
        let scalar = Kernels::scalar();
        for ty in QUANT {
            let nb = if ty == TensorType::Q8_0 { n_blocks * 3 } else { n_blocks };
            let row = random_row(ty, nb, &mut r);
            let x = acts(&mut r, nb * ty.block_elems());
            let a = QuantizedActs::quantize(ty, &x);
            let want = scalar.dot_q(ty, &row, &a);
            for k in simd_tables() {
                let got = k.dot_q(ty, &row, &a);
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{} {}: {} vs scalar {}", k.name, ty, got, want);
            }
        }
    }

    #[test]
    fn dequantize_matches_scalar_exactly(seed: u64, n_blocks in 1usize..12) {
        let mut r = Rng(seed);
        let scalar = Kernels::scalar();
        for ty in [TensorType::F16, TensorType::Q8_0, TensorType::Q2K, TensorType::Q4K, TensorType::Iq2Xxs] {
            let nb = if ty.is_quantized() { n_blocks } else { n_blocks * 37 };
            let row = random_row(ty, nb, &mut r);
            let n = nb * ty.block_elems();
            let mut want = vec![0.0f32; n];
            scalar.dequantize(ty, &row, &mut want);
            for k in simd_tables() {
                let mut got = vec![0.0f32; n];
                k.dequantize(ty, &row, &mut got);
                for i in 0..n {
                    prop_assert_eq!(got[i].to_bits(), want[i].to_bits(), "{} {} element {}", k.name, ty, i);
                }
            }
        }
    }

    #[test]
    fn f32_dots_match_scalar_up_to_reassociation(seed: u64, n_blocks in 1usize..12) {
        let mut r = Rng(seed);
        let scalar = Kernels::scalar();
        for ty in F32_DOT {
            let nb = if ty.is_quantized() { n_blocks } else { n_blocks * 37 };
            let row = random_row(ty, nb, &mut r);
            let n = nb * ty.block_elems();
            let x = acts(&mut r, n);
            let mut w = vec![0.0f32; n];
            scalar.dequantize(ty, &row, &mut w);
            // Reassociation error bound: a few ulps of the sum of |w·x|.
            let l1: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            let want = scalar.dot_f32(ty, &row, &x);
            for k in simd_tables() {
                let got = k.dot_f32(ty, &row, &x);
                prop_assert!((got - want).abs() <= 2e-6 * l1 + f32::MIN_POSITIVE,
                    "{} {}: {} vs scalar {} (l1 {})", k.name, ty, got, want, l1);
            }
        }
    }
}

#[test]
fn this_machine_has_the_expected_tables() {
    let names: Vec<_> = Kernels::available().iter().map(|k| k.name).collect();
    assert_eq!(names[0], "scalar");
    // The best table is the last available one.
    assert_eq!(Kernels::best().name, *names.last().unwrap());
    eprintln!("kernel tables on this CPU: {names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn matvec_q_rows_equal_single_row_dots(seed: u64, n_rows in 1usize..11, n_blocks in 1usize..5) {
        let mut r = Rng(seed);
        for ty in QUANT {
            let nb = if ty == TensorType::Q8_0 { n_blocks * 5 } else { n_blocks };
            let row_bytes = nb * ty.block_bytes();
            let w: Vec<u8> = (0..n_rows).flat_map(|_| random_row(ty, nb, &mut r)).collect();
            let a = QuantizedActs::quantize(ty, &acts(&mut r, nb * ty.block_elems()));
            let scalar = Kernels::scalar();
            for k in Kernels::available() {
                let mut y = vec![0.0f32; n_rows];
                k.matvec_q(ty, &w, row_bytes, n_rows, &a, &mut y);
                for (o, yo) in y.iter().enumerate() {
                    let want = scalar.dot_q(ty, &w[o * row_bytes..(o + 1) * row_bytes], &a);
                    prop_assert_eq!(yo.to_bits(), want.to_bits(), "{} {} row {}", k.name, ty, o);
                }
            }
        }
    }
}
