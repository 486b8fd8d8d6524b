//! x86-64 SIMD kernels and the [`Kernels`] table they are picked into once at run time.

pub mod avx2;
pub mod avx512;

use crate::iq2_xxs::KSIGNS_IQ2XS;

/// `KSIGNS_IQ2XS` expanded to one byte per lane: 0x01 for +, 0xFF for −, the form `sign_epi8`
/// takes (ggml calls this `keven_signs_q2xs`).
pub(crate) static KEVEN_SIGNS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = KSIGNS_IQ2XS[i];
        let mut k = 0;
        let mut v = 0u64;
        while k < 8 {
            let byte: u64 = if s & (1 << k) != 0 { 0xFF } else { 0x01 };
            v |= byte << (8 * k);
            k += 1;
        }
        t[i] = v;
        i += 1;
    }
    t
};

/// Horizontal i32 sum of 8 lanes (shared by the AVX2 and AVX-512 kernels).
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_hsum_i32(v: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}
