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
