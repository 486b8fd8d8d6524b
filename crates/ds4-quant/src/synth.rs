//! Random-but-valid weight blocks for synthetic models (80 GiB of them, so this must be fast:
//! no quantizer runs, the random bytes ARE the quants; only the scales are set). Every bit
//! pattern of the quant and sub-scale fields of Q8_0, Q2_K, Q4_K and IQ2_XXS is a valid block, so
//! only the f16 super-scales need care: they are set from closed-form RMS constants below.

use crate::{TensorType, IQ2XXS_GRID};
use half::{bf16, f16};

/// wyrand: one multiply per 64 random bits, good enough statistically for synthetic weights.
struct WyRand(u64);

impl WyRand {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        (t >> 64) as u64 ^ t as u64
    }
}

fn fill_random(rng: &mut WyRand, out: &mut [u8]) {
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let r = rng.next().to_le_bytes();
    rest.copy_from_slice(&r[..rest.len()]);
}

/// RMS of a dequantized block per unit `d`, for uniformly random quant and scale fields.
/// Q2_K / Q4_K: `dmin = c·d` with `c = E[sc]·E[q]/E[m]`, so each element has mean zero; then
/// `E[v²]/d² = E[sc²]E[q²] − 2c·E[sc]E[q]E[m] + c²E[m²]`.
const Q2K_DMIN_RATIO: f32 = 1.5; // E[sc]=E[m]=7.5, E[q]=1.5
const Q2K_RMS_PER_D: f32 = 13.874_437; // √(77.5·3.5 − 2·1.5·7.5·1.5·7.5 + 2.25·77.5) = √192.5
const Q4K_DMIN_RATIO: f32 = 7.5; // E[sc]=E[m]=31.5, E[q]=7.5
const Q4K_RMS_PER_D: f32 = 258.316_9; // √(1333.5·77.5 − 2·7.5·31.5·7.5·31.5 + 56.25·1333.5)
/// Uniform i8: `E[q²] = (2·Σ_{1..127} k² + 128²)/256`.
const Q8_0_RMS_PER_D: f32 = 73.900_27;

/// IQ2_XXS: `E[v²]/d² = E[((2t+1)/8)²]·E[g²] = (341/64)·E[g²]` over the grid's bytes.
fn iq2xxs_rms_per_d() -> f32 {
    let mut sum = 0.0f64;
    for e in IQ2XXS_GRID {
        for b in e.to_le_bytes() {
            sum += (b as f64) * (b as f64);
        }
    }
    let eg2 = sum / (256.0 * 8.0);
    ((341.0 / 64.0) * eg2).sqrt() as f32
}

/// Fills `out` (exactly `ty.row_bytes(n_elems)` bytes) with random valid blocks of type `ty`
/// whose dequantized values have roughly RMS `rms` and mean about 0. Deterministic in
/// `(ty, seed, n_elems, rms)`. Runs at several GB/s (no grid search, no quantizer).
///
/// # Panics
/// If `out` has the wrong length, `n_elems` is not whole blocks, or `ty` is Q8_K / I32.
pub fn synth_blocks(ty: TensorType, seed: u64, n_elems: usize, rms: f32, out: &mut [u8]) {
    crate::check_row(ty, out.len(), n_elems);
    let mut rng = WyRand(seed ^ 0x5851_f42d_4c95_7f2d);
    match ty {
        TensorType::F32 | TensorType::F16 | TensorType::Bf16 => {
            synth_plain(ty, &mut rng, rms, out);
        }
        TensorType::Q8_0 => {
            fill_random(&mut rng, out);
            let d = f16::from_f32(rms / Q8_0_RMS_PER_D).to_le_bytes();
            for b in out.chunks_exact_mut(34) {
                b[..2].copy_from_slice(&d);
            }
        }
        TensorType::Q2K => {
            fill_random(&mut rng, out);
            let d = rms / Q2K_RMS_PER_D;
            let dd = f16::from_f32(d).to_le_bytes();
            let dm = f16::from_f32(d * Q2K_DMIN_RATIO).to_le_bytes();
            for b in out.chunks_exact_mut(84) {
                b[80..82].copy_from_slice(&dd);
                b[82..84].copy_from_slice(&dm);
            }
        }
        TensorType::Q4K => {
            fill_random(&mut rng, out);
            let d = rms / Q4K_RMS_PER_D;
            let dd = f16::from_f32(d).to_le_bytes();
            let dm = f16::from_f32(d * Q4K_DMIN_RATIO).to_le_bytes();
            for b in out.chunks_exact_mut(144) {
                b[0..2].copy_from_slice(&dd);
                b[2..4].copy_from_slice(&dm);
            }
        }
        TensorType::Iq2Xxs => {
            fill_random(&mut rng, out);
            let d = f16::from_f32(rms / iq2xxs_rms_per_d()).to_le_bytes();
            for b in out.chunks_exact_mut(66) {
                b[..2].copy_from_slice(&d);
            }
        }
        TensorType::Q8K | TensorType::I32 => panic!("{ty} is not a weight format to synthesize"),
    }
}

/// Uniform values in `[−a, a)` with `a = rms·√3`, drawn from a 4096-entry table of evenly spaced
/// values so that F16/BF16 conversion is not paid per element.
fn synth_plain(ty: TensorType, rng: &mut WyRand, rms: f32, out: &mut [u8]) {
    let a = rms * 3.0f32.sqrt();
    let value = |i: usize| a * ((i as f32 + 0.5) / 2048.0 - 1.0);
    match ty {
        TensorType::F32 => {
            for c in out.chunks_exact_mut(4) {
                let r = rng.next();
                c.copy_from_slice(&value((r >> 52) as usize).to_le_bytes());
            }
        }
        TensorType::F16 | TensorType::Bf16 => {
            let table: Vec<[u8; 2]> = (0..4096)
                .map(|i| match ty {
                    TensorType::F16 => f16::from_f32(value(i)).to_le_bytes(),
                    _ => bf16::from_f32(value(i)).to_le_bytes(),
                })
                .collect();
            let mut chunks = out.chunks_exact_mut(8);
            for c in &mut chunks {
                let r = rng.next();
                for (k, e) in c.chunks_exact_mut(2).enumerate() {
                    e.copy_from_slice(&table[(r >> (16 * k)) as usize & 4095]);
                }
            }
            for e in chunks.into_remainder().chunks_exact_mut(2) {
                e.copy_from_slice(&table[rng.next() as usize & 4095]);
            }
        }
        _ => unreachable!("synth_plain is only called for plain types"),
    }
}
