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

/// How far ahead of the block being read the row kernels prefetch. One thread streaming a matrix
/// from DRAM (or a VM's L3) stalls on latency without it: the hardware prefetchers do not run far
/// enough ahead of kernels that spend several cycles per cache line. 16 KiB into L2 measured best
/// of 1-32 KiB and the T0/T1/T2 hints at 64 MiB and 1 GiB (BENCHMARKS.md, ds4-quant).
pub(crate) const PREFETCH_DIST: usize = 16384;

/// Prefetches into L2 the cache lines that the `BYTES` bytes [`PREFETCH_DIST`] past `p` can touch
/// at any alignment (one line per 64 bytes from there, plus one: for a stream of blocks that
/// overlaps the next block's first line, which measured +8 % for Q4_K over one line per started
/// 64 bytes and the same elsewhere). A prefetch never faults, so the address may lie past the end
/// of the row or the matrix.
#[inline(always)]
pub(crate) fn prefetch_ahead<const BYTES: usize>(p: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let q = p.wrapping_add(PREFETCH_DIST);
    let mut o = 0;
    while o < BYTES + 63 {
        // SAFETY: prefetching is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(o) as *const i8) };
        o += 64;
    }
}
