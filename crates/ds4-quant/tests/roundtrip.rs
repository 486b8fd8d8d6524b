//! Scalar semantics: quantize → dequantize round trips, `dot_f32` against an explicit dequantized
//! dot, `dot_q` against `dot_f32`, activation quantizer rules, and synthetic block statistics.

use ds4_quant::{
    dequantize_row, dot_f32, dot_q, matvec_f32, matvec_q, quantize_row, synth_blocks, BlockQ8K,
    QuantizedActs, TensorType,
};

/// Deterministic pseudo-random f32 in [-1, 1) (a tiny LCG: tests need no rand dependency here).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bytes_for(ty: TensorType, n: usize) -> Vec<u8> {
    vec![0u8; ty.row_bytes(n as u64).unwrap() as usize]
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt() as f32
}

const WEIGHT_TYPES: [TensorType; 7] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::Bf16,
    TensorType::Q8_0,
    TensorType::Q2K,
    TensorType::Q4K,
    TensorType::Iq2Xxs,
];

/// Relative RMS round-trip error bound per format for uniform [-1, 1) inputs.
fn max_rel_err(ty: TensorType) -> f32 {
    match ty {
        TensorType::F32 => 0.0,
        TensorType::F16 => 1e-3,
        TensorType::Bf16 => 5e-3,
        TensorType::Q8_0 => 0.01,
        TensorType::Q4K => 0.08,
        TensorType::Q2K => 0.35,
        TensorType::Iq2Xxs => 0.45,
        _ => unreachable!(),
    }
}

#[test]
fn quantize_dequantize_round_trip_error_is_bounded() {
    let n = 1024;
    let x = values(1, n);
    for ty in WEIGHT_TYPES {
        let mut q = bytes_for(ty, n);
        quantize_row(ty, &x, &mut q);
        let mut y = vec![0.0; n];
        dequantize_row(ty, &q, &mut y);
        let err: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        let rel = rms(&err) / rms(&x);
        assert!(
            rel <= max_rel_err(ty),
            "{ty}: relative round-trip error {rel}"
        );
    }
}

#[test]
fn dot_f32_equals_dot_of_dequantized_row() {
    let n = 2048;
    let x = values(2, n);
    let w = values(3, n);
    for ty in WEIGHT_TYPES {
        let mut q = bytes_for(ty, n);
        quantize_row(ty, &w, &mut q);
        let mut wd = vec![0.0; n];
        dequantize_row(ty, &q, &mut wd);
        let want: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let got = dot_f32(ty, &q, &x) as f64;
        let scale: f64 = wd
            .iter()
            .zip(&x)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        assert!((got - want).abs() <= 1e-5 * scale, "{ty}: {got} vs {want}");
    }
}

#[test]
fn dot_q_is_close_to_dot_f32() {
    let n = 4096;
    let x = values(4, n);
    let w = values(5, n);
    for ty in [
        TensorType::Q8_0,
        TensorType::Q2K,
        TensorType::Q4K,
        TensorType::Iq2Xxs,
    ] {
        let mut q = bytes_for(ty, n);
        quantize_row(ty, &w, &mut q);
        let acts = QuantizedActs::quantize(ty, &x);
        let exact = dot_f32(ty, &q, &x);
        let approx = dot_q(ty, &q, &acts);
        // int8 activations carry ~0.4 % relative error per element; the sum of n products with
        // random signs has magnitude ~√n·E|w·x|, so allow a few % of the L1 mass / √n.
        let mut wd = vec![0.0; n];
        dequantize_row(ty, &q, &mut wd);
        let l1: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (exact - approx).abs() <= 0.01 * l1,
            "{ty}: {approx} vs {exact} (l1 {l1})"
        );
    }
}

#[test]
fn matvec_matches_per_row_dots() {
    let (n, rows) = (512, 5);
    let x = values(6, n);
    for ty in WEIGHT_TYPES {
        let row_bytes = ty.row_bytes(n as u64).unwrap() as usize;
        let mut w = vec![0u8; row_bytes * rows];
        for (r, chunk) in w.chunks_exact_mut(row_bytes).enumerate() {
            quantize_row(ty, &values(100 + r as u64, n), chunk);
        }
        let mut y = vec![0.0; rows];
        matvec_f32(ty, &w, row_bytes, rows, &x, &mut y);
        for r in 0..rows {
            assert_eq!(
                y[r],
                dot_f32(ty, &w[r * row_bytes..(r + 1) * row_bytes], &x)
            );
        }
        if ty.is_quantized() {
            let acts = QuantizedActs::quantize(ty, &x);
            matvec_q(ty, &w, row_bytes, rows, &acts, &mut y);
            for r in 0..rows {
                assert_eq!(
                    y[r],
                    dot_q(ty, &w[r * row_bytes..(r + 1) * row_bytes], &acts)
                );
            }
        }
    }
}

#[test]
fn q8k_activation_max_is_first_largest_and_keeps_sign() {
    let mut x = vec![0.25f32; 256];
    x[3] = -2.0;
    x[7] = 2.0; // same magnitude later: the first (negative) one wins
    let b = BlockQ8K::quantize(&x);
    // max = −2 → iscale = −127/−2 = 63.5 and d = 1/63.5 > 0. Had the later +2 won, d would be < 0.
    assert_eq!(b.d, 1.0 / 63.5);
    assert_eq!(b.qs[3], -127);
    assert_eq!(b.qs[7], 127);
    // 0.25 · 63.5 = 15.875 → rint → 16
    assert_eq!(b.qs[0], 16);
    assert_eq!(b.bsums[0], 14 * 16); // the −127 and +127 cancel
    let mut y = x.clone();
    y[3] = 2.0;
    y[7] = -2.0;
    assert!(
        BlockQ8K::quantize(&y).d < 0.0,
        "a positive first max gives a negative scale"
    );
    let z = BlockQ8K::quantize(&[0.0; 256]);
    assert_eq!((z.d, z.qs, z.bsums), (0.0, [0; 256], [0; 16]));
}

#[test]
fn q8_0_activation_rounds_ties_to_even() {
    // amax = 127 → d = 1, id = 1: x·id lands exactly on .5 ties.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -3.5;
    x[3] = 0.5;
    let acts = QuantizedActs::quantize(TensorType::Q8_0, &x);
    let b = acts.q8_0_blocks()[0];
    assert_eq!(b.d, 1.0);
    assert_eq!(&b.qs[..4], &[127, 2, -4, 0]);
}

#[test]
fn synth_blocks_have_requested_rms_and_are_deterministic() {
    let n = 256 * 64;
    for ty in WEIGHT_TYPES {
        for target in [0.02f32, 1.0] {
            let mut a = bytes_for(ty, n);
            let mut b = bytes_for(ty, n);
            synth_blocks(ty, 42, n, target, &mut a);
            synth_blocks(ty, 42, n, target, &mut b);
            assert_eq!(a, b, "{ty}: same seed must give the same bytes");
            let mut v = vec![0.0; n];
            dequantize_row(ty, &a, &mut v);
            assert!(v.iter().all(|x| x.is_finite()), "{ty}: non-finite values");
            let r = rms(&v);
            assert!(
                (r / target - 1.0).abs() < 0.15,
                "{ty}: rms {r} for target {target}"
            );
            let mean = v.iter().sum::<f32>() / n as f32;
            assert!(mean.abs() < 0.2 * target, "{ty}: mean {mean}");
            synth_blocks(ty, 43, n, target, &mut b);
            assert_ne!(a, b, "{ty}: another seed must give other bytes");
        }
    }
}
