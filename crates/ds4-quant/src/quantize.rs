//! Reference quantizers for the weight formats. They aim at a valid, reasonably accurate block
//! (round-trip error well under one quantization step), not at ggml's bit-for-bit output: the
//! engine only ever quantizes weights for tests and synthetic models.

use crate::iq2_xxs::{BlockIq2Xxs, IQ2XXS_GRID};
use crate::q2_k::BlockQ2K;
use crate::q4_k::BlockQ4K;
use half::f16;

/// `round(v / step)` clamped to `0..=max`, with `step == 0` giving 0.
fn level(v: f32, step: f32, max: u8) -> u8 {
    if step > 0.0 {
        (v / step).round().clamp(0.0, max as f32) as u8
    } else {
        0
    }
}

/// Asymmetric min/scale quantization shared by Q2_K and Q4_K: each sub-block gets
/// `value ≈ dl·q − ml` with `dl = d·sc`, `ml = dmin·m`; returns (d, dmin, sc[], m[]) with the
/// super-scales already rounded to f16 so the quants below are chosen against the stored scales.
fn affine_scales<const N: usize>(
    x: &[f32],
    sub: usize,
    q_max: u8,
    s_max: u8,
) -> (f16, f16, [u8; N], [u8; N]) {
    let mut scale = [0.0f32; N];
    let mut neg_min = [0.0f32; N];
    for j in 0..N {
        let v = &x[sub * j..sub * j + sub];
        let lo = v.iter().fold(0.0f32, |m, &a| m.min(a)); // the min is never above 0 (ggml too)
        let hi = v.iter().fold(f32::MIN, |m, &a| m.max(a));
        scale[j] = (hi - lo) / q_max as f32;
        neg_min[j] = -lo;
    }
    let d = f16::from_f32(scale.iter().fold(0.0f32, |m, &a| m.max(a)) / s_max as f32);
    let dmin = f16::from_f32(neg_min.iter().fold(0.0f32, |m, &a| m.max(a)) / s_max as f32);
    let mut sc = [0u8; N];
    let mut m = [0u8; N];
    for j in 0..N {
        // Round the scale up so that hi still fits under q_max levels after rounding.
        sc[j] = if d.to_f32() > 0.0 {
            (scale[j] / d.to_f32()).ceil().clamp(0.0, s_max as f32) as u8
        } else {
            0
        };
        m[j] = level(neg_min[j], dmin.to_f32(), s_max);
    }
    (d, dmin, sc, m)
}

/// Q2_K reference quantizer (spec/model.md §5.2 layout).
pub fn q2_k(x: &[f32]) -> BlockQ2K {
    assert_eq!(x.len(), 256, "a Q2_K block holds 256 values");
    let (d, dmin, sc, m) = affine_scales::<16>(x, 16, 3, 15);
    let mut blk = BlockQ2K {
        scales: [0; 16],
        qs: [0; 64],
        d,
        dmin,
    };
    for j in 0..16 {
        blk.scales[j] = sc[j] | (m[j] << 4);
        let dl = d.to_f32() * sc[j] as f32;
        let ml = dmin.to_f32() * m[j] as f32;
        for e in 16 * j..16 * j + 16 {
            let q = level(x[e] + ml, dl, 3);
            blk.qs[32 * (e / 128) + e % 32] |= q << (2 * ((e % 128) / 32));
        }
    }
    blk
}

/// Q4_K reference quantizer (spec/model.md §5.3 layout).
pub fn q4_k(x: &[f32]) -> BlockQ4K {
    assert_eq!(x.len(), 256, "a Q4_K block holds 256 values");
    let (d, dmin, sc, m) = affine_scales::<8>(x, 32, 15, 63);
    let mut blk = BlockQ4K {
        d,
        dmin,
        scales: [0; 12],
        qs: [0; 128],
    };
    for j in 0..8 {
        // Inverse of `scale_min_k4`: the low 6 bits of sub-blocks 0-3 sit in bytes 0-7, sub-blocks
        // 4-7 keep their low nibbles in bytes 8-11 and their top 2 bits in bits 6-7 of bytes 0-7.
        if j < 4 {
            blk.scales[j] |= sc[j];
            blk.scales[j + 4] |= m[j];
        } else {
            blk.scales[j + 4] = (sc[j] & 15) | ((m[j] & 15) << 4);
            blk.scales[j - 4] |= (sc[j] >> 4) << 6;
            blk.scales[j] |= (m[j] >> 4) << 6;
        }
        let dl = d.to_f32() * sc[j] as f32;
        let ml = dmin.to_f32() * m[j] as f32;
        for e in 32 * j..32 * j + 32 {
            let q = level(x[e] + ml, dl, 15);
            blk.qs[32 * (j / 2) + e % 32] |= q << (4 * (j % 2));
        }
    }
    blk
}

/// Best grid point and sign code for 8 values at lane step `db`: minimises the squared error over
/// all 256 grid entries, with the parity rule (an even number of minus signs) enforced by flipping
/// the lane where a wrong sign costs least. Returns (grid index, 7-bit sign code, error).
fn iq2_group(x: &[f32], db: f32) -> (u8, u8, f32) {
    let mut neg = 0u8;
    for (k, &v) in x.iter().enumerate() {
        if v < 0.0 {
            neg |= 1 << k;
        }
    }
    let odd = neg.count_ones() % 2 == 1;
    let mut best = (0u8, 0u8, f32::INFINITY);
    for (g, &entry) in IQ2XXS_GRID.iter().enumerate() {
        let mags = entry.to_le_bytes();
        let mut err = 0.0f32;
        let mut flip_cost = f32::INFINITY;
        let mut flip_lane = 0;
        for k in 0..8 {
            let a = x[k].abs();
            let w = db * mags[k] as f32;
            err += (a - w) * (a - w);
            // Giving lane k the wrong sign turns (a−w)² into (a+w)²: a cost of 4aw.
            let cost = 4.0 * a * w;
            if cost < flip_cost {
                flip_cost = cost;
                flip_lane = k;
            }
        }
        let signs = if odd {
            err += flip_cost;
            neg ^ (1 << flip_lane)
        } else {
            neg
        };
        if err < best.2 {
            best = (g as u8, signs & 127, err);
        }
    }
    best
}

/// IQ2_XXS reference quantizer: for each 32-value sub-block, an exhaustive search over the 16
/// sub-block scales and the 256 grid points of each 8-lane group (spec/model.md §5.4 layout).
pub fn iq2_xxs(x: &[f32]) -> BlockIq2Xxs {
    assert_eq!(x.len(), 256, "an IQ2_XXS block holds 256 values");
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // The largest representable magnitude is d·(31/8)·43.
    let d = f16::from_f32(amax * 8.0 / (31.0 * 43.0));
    let mut blk = BlockIq2Xxs { d, qs: [0; 32] };
    if d.to_f32() == 0.0 {
        return blk;
    }
    for b in 0..8 {
        let sub = &x[32 * b..32 * b + 32];
        let mut best = (0u32, 0u32, f32::INFINITY);
        for t in 0..16u32 {
            let db = d.to_f32() * (0.5 + t as f32) * 0.25;
            let (mut a0, mut a1, mut err) = (0u32, t << 28, 0.0f32);
            for l in 0..4 {
                let (g, s, e) = iq2_group(&sub[8 * l..8 * l + 8], db);
                a0 |= (g as u32) << (8 * l);
                a1 |= (s as u32) << (7 * l);
                err += e;
            }
            if err < best.2 {
                best = (a0, a1, err);
            }
        }
        blk.qs[4 * b] = best.0 as u16;
        blk.qs[4 * b + 1] = (best.0 >> 16) as u16;
        blk.qs[4 * b + 2] = best.1 as u16;
        blk.qs[4 * b + 3] = (best.1 >> 16) as u16;
    }
    blk
}
