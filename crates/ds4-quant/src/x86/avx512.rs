//! AVX-512 (F, BW, VL) kernels: 16-wide f32 dequantization in registers for the f32-activation
//! dots and for row dequantization, and 64-byte integer dots for the K-quants and IQ2_XXS. Entries
//! without an AVX-512 version keep the AVX2 kernel (see [`kernels`]).
//!
//! Safety contract of every `unsafe fn` here: the CPU supports the features in `FEATURES` (the
//! table only holds these after [`supported`] said so), `row` holds whole blocks, and `x` / `y` /
//! `out` hold at least as many elements / blocks as `row`; `Kernels`' methods assert the lengths.

use crate::iq2_xxs::{GRID, IQ2XXS_GRID};
use crate::kernels::Kernels;
use crate::x86::avx2::{f16_to_f32, q4k_scales_mins};
use crate::{BlockQ8K, QuantizedActs};
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels below.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("bmi2")
}

/// `base` (the AVX2 table) with the AVX-512 kernels swapped in where they measured faster on the
/// dev machine (BENCHMARKS.md, ds4-quant section), including those that need VBMI and BITALG
/// when the CPU has them (Ice Lake and later).
pub fn kernels(base: Kernels) -> Kernels {
    let mut k = kernels_without_vbmi(base);
    if supported_vbmi() {
        k.iq2_xxs_q = dot_q_iq2_xxs_vbmi;
        k.q2_k_q = dot_q_q2_k_vbmi;
    }
    k
}

/// [`kernels`] without the VBMI / BITALG ones (what Skylake-X and Cascade Lake get). Its Q2_K
/// dot stays 256-bit (two planes per 512-bit register measured slower there) and gains only
/// VNNI's `vpdpwssd`.
pub fn kernels_without_vbmi(base: Kernels) -> Kernels {
    Kernels {
        name: "avx512",
        q8_0_q: dot_q_q8_0,
        q8_0_matvec_q: matvec_q_q8_0,
        f16_f32: dot_f32_f16,
        q8_0_f32: dot_f32_q8_0,
        q2_k_f32: dot_f32_q2_k,
        q4_k_f32: dot_f32_q4_k,
        iq2_xxs_f32: dot_f32_iq2_xxs,
        // SAFETY (both): this table exists only where `supported` said yes.
        iq2_xxs_q: |r, a| unsafe { dot_q_iq2_xxs(r, a.q8k_blocks()) },
        q2_k_q: |r, a| unsafe { dot_q_q2_k(r, a.q8k_blocks()) },
        q4_k_q: dot_q_q4_k,
        f16_dequant: dequant_f16,
        q8_0_dequant: dequant_q8_0,
        q2_k_dequant: dequant_q2_k,
        q4_k_dequant: dequant_q4_k,
        iq2_xxs_dequant: dequant_iq2_xxs,
        ..base
    }
}

macro_rules! avx512_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,bmi2")]
        $vis unsafe fn $name($($arg: $t),*) $(-> $r)? $body
    };
}

// ---- helpers ------------------------------------------------------------------------------------

avx512_fn! {
    #[inline]
    unsafe fn rd16(p: *const u8) -> u16 {
        // SAFETY: the caller passes a pointer to 2 readable bytes.
        unsafe { (p as *const u16).read_unaligned() }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn rd32(p: *const u8) -> u32 {
        // SAFETY: the caller passes a pointer to 4 readable bytes.
        unsafe { (p as *const u32).read_unaligned() }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn ldx(p: *const f32) -> __m512 {
        // SAFETY: the caller passes a pointer to 16 readable f32.
        unsafe { _mm512_loadu_ps(p) }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn stx(p: *mut f32, v: __m512) {
        // SAFETY: the caller passes a pointer to 16 writable f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn ld128(p: *const u8) -> __m128i {
        // SAFETY: the caller passes a pointer to 16 readable bytes.
        unsafe { _mm_loadu_si128(p as *const __m128i) }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn ld256(p: *const u8) -> __m256i {
        // SAFETY: the caller passes a pointer to 32 readable bytes.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }
}

avx512_fn! {
    #[inline]
    unsafe fn ld512(p: *const u8) -> __m512i {
        // SAFETY: the caller passes a pointer to 64 readable bytes.
        unsafe { _mm512_loadu_si512(p as *const __m512i) }
    }
}

avx512_fn! {
    /// Sixteen i8 → sixteen f32.
    #[inline]
    unsafe fn i8x16_ps(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
    }
}

avx512_fn! {
    /// The 32 IQ2_XXS grid magnitudes (u8) of one sub-block from its grid word `a0`.
    #[inline]
    unsafe fn iq2_grid(a0: u32) -> __m256i {
        let g = |l: u32| GRID[((a0 >> (8 * l)) & 255) as usize] as i64;
        _mm256_set_epi64x(g(3), g(2), g(1), g(0))
    }
}

avx512_fn! {
    /// The 32 sign bits (bit k of byte l set = lane 8l+k negative) of one IQ2_XXS sub-block from
    /// its word `a1`: four 7-bit codes spread into bytes, each completed with its parity bit,
    /// which is `KSIGNS_IQ2XS` computed in registers.
    #[inline]
    unsafe fn iq2_sign_bits(a1: u32) -> u32 {
        let s = _pdep_u32(a1, 0x7f7f_7f7f);
        let mut p = s ^ (s >> 4);
        p ^= p >> 2;
        p ^= p >> 1;
        s | ((p & 0x0101_0101) << 7)
    }
}

// ---- plain types --------------------------------------------------------------------------------

avx512_fn! {
    pub unsafe fn dot_f32_f16(row: &[u8], x: &[f32]) -> f32 {
        let n = row.len() / 2;
        let (w, xp) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (loop bodies): i + 64 (or 16) <= n elements of row and x are readable.
        while i + 64 <= n {
            crate::x86::prefetch_ahead::<128>(w.wrapping_add(2 * i));
            for (k, a) in acc.iter_mut().enumerate() {
                let h = unsafe { ld256(w.add(2 * (i + 16 * k))) };
                *a = _mm512_fmadd_ps(_mm512_cvtph_ps(h), unsafe { ldx(xp.add(i + 16 * k)) }, *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            let h = unsafe { ld256(w.add(2 * i)) };
            acc[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(h), unsafe { ldx(xp.add(i)) }, acc[0]);
            i += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut s = _mm512_reduce_add_ps(s);
        while i < n {
            s += unsafe { f16_to_f32(rd16(w.add(2 * i))) } * x[i];
            i += 1;
        }
        s
    }
}

avx512_fn! {
    pub unsafe fn dequant_f16(src: &[u8], out: &mut [f32]) {
        let n = src.len() / 2;
        let mut i = 0;
        // SAFETY: i + 16 <= n elements of src and out.
        while i + 16 <= n {
            unsafe { stx(out.as_mut_ptr().add(i), _mm512_cvtph_ps(ld256(src.as_ptr().add(2 * i)))) };
            i += 16;
        }
        while i < n {
            out[i] = unsafe { f16_to_f32(rd16(src.as_ptr().add(2 * i))) };
            i += 1;
        }
    }
}

// ---- Q8_0 ---------------------------------------------------------------------------------------

avx512_fn! {
    /// Q8_0 · f32. The f16 block scales of 16 blocks are converted with one `vcvtph2ps` into a
    /// stack array, so each block's scale is a broadcast load instead of a scalar convert: that
    /// takes two shuffle-port uops per block off this conversion-bound kernel.
    pub unsafe fn dot_f32_q8_0(row: &[u8], x: &[f32]) -> f32 {
        let nb = row.len() / 34;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut dh = [0u16; 16];
        let mut ds = [0.0f32; 16];
        let mut b0 = 0;
        while b0 < nb {
            let n = (nb - b0).min(16);
            // SAFETY (whole body): blocks b0..b0+n lie in row (34 bytes each); x holds 32 values
            // per block.
            unsafe {
                let p0 = row.as_ptr().add(34 * b0);
                crate::x86::prefetch_ahead::<544>(p0);
                for (i, h) in dh.iter_mut().enumerate().take(n) {
                    *h = rd16(p0.add(34 * i));
                }
                _mm512_storeu_ps(ds.as_mut_ptr(), _mm512_cvtph_ps(ld256(dh.as_ptr() as *const u8)));
                // Block i goes to acc[i % 4]; the index is a constant in each unrolled step, so
                // the accumulators stay in registers (a run-time index kept them on the stack,
                // every update a store and a reload).
                for i0 in (0..n).step_by(4) {
                    for (k, a) in acc.iter_mut().enumerate() {
                        let i = i0 + k;
                        if i < n {
                            let p = p0.add(34 * i);
                            let xb = x.as_ptr().add(32 * (b0 + i));
                            let s = _mm512_mul_ps(i8x16_ps(ld128(p.add(2))), ldx(xb));
                            let s = _mm512_fmadd_ps(i8x16_ps(ld128(p.add(18))), ldx(xb.add(16)), s);
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(ds[i]), s, *a);
                        }
                    }
                }
            }
            b0 += n;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    pub unsafe fn dequant_q8_0(src: &[u8], out: &mut [f32]) {
        for b in 0..src.len() / 34 {
            // SAFETY: block b is bytes 34b..34b+34 of src; out holds 32 values per block.
            unsafe {
                let p = src.as_ptr().add(34 * b);
                let o = out.as_mut_ptr().add(32 * b);
                let d = _mm512_set1_ps(f16_to_f32(rd16(p)));
                stx(o, _mm512_mul_ps(i8x16_ps(ld128(p.add(2))), d));
                stx(o.add(16), _mm512_mul_ps(i8x16_ps(ld128(p.add(18))), d));
            }
        }
    }
}

avx512_fn! {
    /// The integer sums `Σ w·y` of the 16 Q8_0 blocks at `p`, lane `j` = block `j`. VNNI's
    /// `vpdpbusd` multiplies unsigned by signed bytes, so it dots `w + 128` (w XOR 0x80) with `y`
    /// and the caller's `128·Σy` per block comes back off: exact in i32 (|sum| < 2^22).
    #[inline]
    unsafe fn q8_0_isums16(p: *const u8, yq: *const u8, ysum: *const i32) -> __m512i {
        // SAFETY: the caller passes 16 whole blocks at p, 512 activation quants at yq and 16 sums
        // at ysum.
        unsafe {
            let bias = _mm512_set1_epi8(-128);
            // Vector k holds block 2k in lanes 0-7 and block 2k+1 in lanes 8-15.
            let v: [__m512i; 8] = std::array::from_fn(|k| {
                let lo = ld256(p.add(68 * k + 2));
                let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), ld256(p.add(68 * k + 36)));
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(wv, bias), ld512(yq.add(64 * k)))
            });
            // Transpose-and-add: after two in-lane levels each 128-bit lane holds one lane-sum of
            // four vectors; the last level adds 128-bit lanes 0+1 (even blocks) and 2+3 (odd).
            let l1 = |a: __m512i, b: __m512i| _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
            let l2 = |a: __m512i, b: __m512i| _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
            let u0 = l2(l1(v[0], v[1]), l1(v[2], v[3]));
            let u1 = l2(l1(v[4], v[5]), l1(v[6], v[7]));
            let s = _mm512_add_epi32(
                _mm512_shuffle_i64x2::<0b10_00_10_00>(u0, u1),
                _mm512_shuffle_i64x2::<0b11_01_11_01>(u0, u1),
            );
            // Lanes now hold blocks [0,2,4,6, 1,3,5,7, 8,10,12,14, 9,11,13,15].
            let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
            let s = _mm512_permutexvar_epi32(order, s);
            _mm512_sub_epi32(s, _mm512_slli_epi32::<7>(_mm512_loadu_si512(ysum as *const __m512i)))
        }
    }
}

avx512_fn! {
    /// One Q8_0 block's term `(d_w·d_y)·isum` (the tail of [`matvec_q_q8_0`]).
    #[inline]
    unsafe fn q8_0_term1(p: *const u8, yq: *const u8, ysum: i32, yd: f32) -> f32 {
        // SAFETY: the caller passes one whole block at p and its 32 activation quants at yq.
        unsafe {
            let w = _mm256_xor_si256(ld256(p.add(2)), _mm256_set1_epi8(-128));
            let v = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, ld256(yq));
            let isum = _mm512_reduce_add_epi32(_mm512_castsi256_si512(v)) - 128 * ysum;
            (f16_to_f32(rd16(p)) * yd) * isum as f32
        }
    }
}

avx512_fn! {
    /// `out[o] = W[o,:]·acts` for Q8_0 rows: four rows at a time (their serial f32 sums overlap),
    /// sixteen blocks per step with VNNI; each row's result is exactly the scalar `dot_q` (same
    /// exact integer sums, same `(d_w·d_y)·isum` terms, added blocks ascending).
    pub unsafe fn matvec_q_q8_0(w: &[u8], row_bytes: usize, n_rows: usize, a: &QuantizedActs, out: &mut [f32]) {
        let nb = row_bytes / 34;
        let yq = a.q8_0_qs().as_ptr() as *const u8;
        let ys = a.q8_0_sums().as_ptr();
        let yd = a.q8_0_scales();
        let soff = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(34));
        let mut o = 0;
        while o < n_rows {
            let nr = (n_rows - o).min(4);
            let mut acc = [0.0f32; 4];
            let mut terms = [[0.0f32; 16]; 4];
            let mut b = 0;
            while b + 16 <= nb {
                for (r, t) in terms.iter_mut().enumerate().take(nr) {
                    let p = w.as_ptr().wrapping_add((o + r) * row_bytes + 34 * b);
                    crate::x86::prefetch_ahead::<544>(p);
                    // SAFETY: row o + r exists and blocks b..b+16 lie in it; the activations hold
                    // nb blocks.
                    unsafe {
                        let isum = q8_0_isums16(p, yq.add(32 * b), ys.add(b));
                        // Each gathered dword's low half is a block's f16 scale.
                        let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32::<1>(soff, p as *const i32)));
                        let dd = _mm512_mul_ps(dw, _mm512_loadu_ps(yd.as_ptr().add(b)));
                        _mm512_storeu_ps(t.as_mut_ptr(), _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
                    }
                }
                for i in 0..16 {
                    for r in 0..4 {
                        acc[r] += terms[r][i];
                    }
                }
                b += 16;
            }
            for r in 0..nr {
                let mut s = acc[r];
                for bb in b..nb {
                    // SAFETY: block bb of row o + r lies in w; the activations hold nb blocks.
                    s += unsafe { q8_0_term1(w.as_ptr().add((o + r) * row_bytes + 34 * bb), yq.add(32 * bb), *ys.add(bb), yd[bb]) };
                }
                out[o + r] = s;
            }
            o += nr;
        }
    }
}

avx512_fn! {
    pub unsafe fn dot_q_q8_0(row: &[u8], a: &QuantizedActs) -> f32 {
        let mut out = [0.0f32];
        // SAFETY: forwarded contract; one row of row.len() bytes.
        unsafe { matvec_q_q8_0(row, row.len(), 1, a, &mut out) };
        out[0]
    }
}

// ---- Q2_K ---------------------------------------------------------------------------------------

avx512_fn! {
    /// Per-sub-block `dl = d·(s&15)` and `ml = dmin·(s>>4)` of a Q2_K block (ggml's rounding).
    #[inline]
    unsafe fn q2k_dl_ml(p: *const u8) -> ([f32; 16], [f32; 16]) {
        // SAFETY: p points at a whole 84-byte Q2_K block.
        unsafe {
            let sc = _mm512_cvtepu8_epi32(ld128(p));
            let d = _mm512_set1_ps(f16_to_f32(rd16(p.add(80))));
            let dmin = _mm512_set1_ps(f16_to_f32(rd16(p.add(82))));
            let m15 = _mm512_set1_epi32(15);
            let dl = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(sc, m15)));
            let ml = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(sc)));
            let mut a = [0.0f32; 16];
            let mut b = [0.0f32; 16];
            _mm512_storeu_ps(a.as_mut_ptr(), dl);
            _mm512_storeu_ps(b.as_mut_ptr(), ml);
            (a, b)
        }
    }
}

avx512_fn! {
    /// Q2_K · f32. Per sub-block a 16-entry table `dl·q − ml` indexed straight from the packed
    /// byte (`vpermps` reads only the index's low 4 bits, so planes 0/1 need no shift and planes
    /// 2/3 one shift per 16 bytes): one permute replaces extract + convert + scale.
    pub unsafe fn dot_f32_q2_k(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let pat = q2k_patterns();
        for b in 0..row.len() / 84 {
            // SAFETY: block b is bytes 84b..84b+84 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(84 * b);
                crate::x86::prefetch_ahead::<84>(p);
                let xb = x.as_ptr().add(256 * b);
                let (dl, ml) = q2k_dl_ml(p);
                for h in 0..2 {
                    for half in 0..2 {
                        let v = _mm512_cvtepu8_epi32(ld128(p.add(16 + 32 * h + 16 * half)));
                        let v4 = _mm512_srli_epi32::<4>(v);
                        for j in 0..4 {
                            let sub = 8 * h + 2 * j + half;
                            let table = _mm512_fmsub_ps(_mm512_set1_ps(dl[sub]), pat[j & 1], _mm512_set1_ps(ml[sub]));
                            let w = _mm512_permutexvar_ps(if j < 2 { v } else { v4 }, table);
                            let e = 128 * h + 32 * j + 16 * half;
                            acc[j] = _mm512_fmadd_ps(w, ldx(xb.add(e)), acc[j]);
                        }
                    }
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    /// Q2_K → f32 with the same tables as [`dot_f32_q2_k`], built with mul then sub so each value
    /// is exactly the scalar's `dl·q − ml`.
    pub unsafe fn dequant_q2_k(src: &[u8], out: &mut [f32]) {
        let pat = q2k_patterns();
        for b in 0..src.len() / 84 {
            // SAFETY: block b is bytes 84b..84b+84 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(84 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let (dl, ml) = q2k_dl_ml(p);
                for h in 0..2 {
                    for half in 0..2 {
                        let v = _mm512_cvtepu8_epi32(ld128(p.add(16 + 32 * h + 16 * half)));
                        let v4 = _mm512_srli_epi32::<4>(v);
                        for j in 0..4 {
                            let sub = 8 * h + 2 * j + half;
                            let table = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dl[sub]), pat[j & 1]), _mm512_set1_ps(ml[sub]));
                            let w = _mm512_permutexvar_ps(if j < 2 { v } else { v4 }, table);
                            stx(o.add(128 * h + 32 * j + 16 * half), w);
                        }
                    }
                }
            }
        }
    }
}

avx512_fn! {
    /// The quant each 4-bit table index stands for: `[i & 3]` (even planes, bits 0-1 of the
    /// index) and `[i >> 2]` (odd planes, bits 2-3).
    #[inline]
    unsafe fn q2k_patterns() -> [__m512; 2] {
        [
            _mm512_setr_ps(0., 1., 2., 3., 0., 1., 2., 3., 0., 1., 2., 3., 0., 1., 2., 3.),
            _mm512_setr_ps(0., 0., 0., 0., 1., 1., 1., 1., 2., 2., 2., 2., 3., 3., 3., 3.),
        ]
    }
}

// ---- Q4_K ---------------------------------------------------------------------------------------

avx512_fn! {
    /// Per-sub-block `dl = d·sc` and `ml = dmin·m` of a Q4_K block (ggml's rounding).
    #[inline]
    unsafe fn q4k_dl_ml(p: *const u8) -> ([f32; 8], [f32; 8]) {
        // SAFETY: p points at a whole 144-byte Q4_K block.
        unsafe {
            let d = f16_to_f32(rd16(p));
            let dmin = f16_to_f32(rd16(p.add(2)));
            let (sc, m) = q4k_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
            (std::array::from_fn(|j| d * sc[j] as f32), std::array::from_fn(|j| dmin * m[j] as f32))
        }
    }
}

avx512_fn! {
    /// Q4_K · f32 with a 16-entry table `dl·q − ml` per sub-block, indexed by the nibble.
    pub unsafe fn dot_f32_q4_k(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
        for b in 0..row.len() / 144 {
            // SAFETY: block b is bytes 144b..144b+144 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(144 * b);
                crate::x86::prefetch_ahead::<144>(p);
                let xb = x.as_ptr().add(256 * b);
                let (dl, ml) = q4k_dl_ml(p);
                for c in 0..4 {
                    let t0 = _mm512_fmsub_ps(_mm512_set1_ps(dl[2 * c]), iota, _mm512_set1_ps(ml[2 * c]));
                    let t1 = _mm512_fmsub_ps(_mm512_set1_ps(dl[2 * c + 1]), iota, _mm512_set1_ps(ml[2 * c + 1]));
                    for i in 0..2 {
                        let v = _mm512_cvtepu8_epi32(ld128(p.add(16 + 32 * c + 16 * i)));
                        let w0 = _mm512_permutexvar_ps(v, t0);
                        let w1 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), t1);
                        acc[i] = _mm512_fmadd_ps(w0, ldx(xb.add(64 * c + 16 * i)), acc[i]);
                        acc[2 + i] = _mm512_fmadd_ps(w1, ldx(xb.add(64 * c + 32 + 16 * i)), acc[2 + i]);
                    }
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    /// Q4_K → f32 with the tables of [`dot_f32_q4_k`], built with mul then sub (exact).
    pub unsafe fn dequant_q4_k(src: &[u8], out: &mut [f32]) {
        let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
        for b in 0..src.len() / 144 {
            // SAFETY: block b is bytes 144b..144b+144 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(144 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let (dl, ml) = q4k_dl_ml(p);
                for c in 0..4 {
                    let t0 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dl[2 * c]), iota), _mm512_set1_ps(ml[2 * c]));
                    let t1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dl[2 * c + 1]), iota), _mm512_set1_ps(ml[2 * c + 1]));
                    for i in 0..2 {
                        let v = _mm512_cvtepu8_epi32(ld128(p.add(16 + 32 * c + 16 * i)));
                        stx(o.add(64 * c + 16 * i), _mm512_permutexvar_ps(v, t0));
                        stx(o.add(64 * c + 32 + 16 * i), _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), t1));
                    }
                }
            }
        }
    }
}

// ---- IQ2_XXS ------------------------------------------------------------------------------------

avx512_fn! {
    /// IQ2_XXS · f32: grid points come as f32 from [`IQ2XXS_GRID_F32`] (8 KiB, stays in L1),
    /// two 8-lane entries per 16-lane register; signs are a masked negate.
    pub unsafe fn dot_f32_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let z = _mm512_setzero_ps();
        for b in 0..row.len() / 66 {
            // SAFETY: block b is bytes 66b..66b+66 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(66 * b);
                crate::x86::prefetch_ahead::<66>(p);
                let xb = x.as_ptr().add(256 * b);
                let db = iq2_sub_scales(p);
                // Sub-block sb goes to acc[sb % 4], a constant index in each unrolled step.
                for sb0 in [0, 4] {
                    for (k, a) in acc.iter_mut().enumerate() {
                        let sb = sb0 + k;
                        let a0 = rd32(p.add(2 + 8 * sb));
                        let a1 = rd32(p.add(6 + 8 * sb));
                        let db = _mm512_set1_ps(db[sb]);
                        let (lo, hi) = iq2_grid_f32(a0);
                        let neg = iq2_sign_bits(a1);
                        let lo = _mm512_mask_sub_ps(lo, neg as u16, z, lo);
                        let hi = _mm512_mask_sub_ps(hi, (neg >> 16) as u16, z, hi);
                        let e = xb.add(32 * sb);
                        let s = _mm512_fmadd_ps(hi, ldx(e.add(16)), _mm512_mul_ps(lo, ldx(e)));
                        *a = _mm512_fmadd_ps(db, s, *a);
                    }
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    /// The eight sub-block scales `(d·(0.5+t))·0.25` of the IQ2_XXS block at `p`, computed
    /// together (same operations and rounding as the scalar, lane by lane).
    #[inline]
    unsafe fn iq2_sub_scales(p: *const u8) -> [f32; 8] {
        // SAFETY: p points at a whole 66-byte block: the u64 words (a0 | a1 << 32) of its eight
        // sub-blocks are bytes 2..66.
        unsafe {
            let w = _mm512_loadu_si512(p.add(2) as *const __m512i);
            let t = _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(_mm512_srli_epi64::<60>(w)));
            let d = _mm256_set1_ps(f16_to_f32(rd16(p)));
            let db = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_add_ps(_mm256_set1_ps(0.5), t)), _mm256_set1_ps(0.25));
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), db);
            out
        }
    }
}

/// `IQ2XXS_GRID` with every lane as f32: `IQ2XXS_GRID_F32[g][k] = byte k of IQ2XXS_GRID[g]`.
static IQ2XXS_GRID_F32: [[f32; 8]; 256] = {
    let mut t = [[0.0f32; 8]; 256];
    let mut g = 0;
    while g < 256 {
        let mut k = 0;
        while k < 8 {
            t[g][k] = ((IQ2XXS_GRID[g] >> (8 * k)) & 255) as u8 as f32;
            k += 1;
        }
        g += 1;
    }
    t
};

avx512_fn! {
    /// The 32 grid magnitudes of one IQ2_XXS sub-block as f32: lanes 0-15 and 16-31.
    #[inline]
    unsafe fn iq2_grid_f32(a0: u32) -> (__m512, __m512) {
        let g = |l: u32| {
            // SAFETY: the index is a byte, < 256 entries of 8 f32.
            unsafe { _mm256_loadu_ps(IQ2XXS_GRID_F32[((a0 >> (8 * l)) & 255) as usize].as_ptr()) }
        };
        (
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(g(0))), _mm256_castps_pd(g(1)))),
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(g(2))), _mm256_castps_pd(g(3)))),
        )
    }
}

avx512_fn! {
    pub unsafe fn dequant_iq2_xxs(src: &[u8], out: &mut [f32]) {
        // Flip the sign bit (not 0 − v, which would turn −0 into +0).
        let sign = _mm512_set1_epi32(i32::MIN);
        let flip = |v: __m512, k: u16| {
            _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(v), k, _mm512_castps_si512(v), sign))
        };
        for b in 0..src.len() / 66 {
            // SAFETY: block b is bytes 66b..66b+66 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(66 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let db = iq2_sub_scales(p);
                for sb in 0..8 {
                    let a0 = rd32(p.add(2 + 8 * sb));
                    let a1 = rd32(p.add(6 + 8 * sb));
                    // (d·(0.5+t))·0.25, then ·grid, then the sign (exact): the scalar's rounding.
                    let db = _mm512_set1_ps(db[sb]);
                    let (lo, hi) = iq2_grid_f32(a0);
                    let neg = iq2_sign_bits(a1);
                    stx(o.add(32 * sb), flip(_mm512_mul_ps(db, lo), neg as u16));
                    stx(o.add(32 * sb + 16), flip(_mm512_mul_ps(db, hi), (neg >> 16) as u16));
                }
            }
        }
    }
}

avx512_fn! {
    pub unsafe fn dot_q_iq2_xxs(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for (b, yb) in y.iter().enumerate().take(row.len() / 66) {
            // SAFETY: block b is bytes 66b..66b+66 of row.
            unsafe {
                let p = row.as_ptr().add(66 * b);
                crate::x86::prefetch_ahead::<66>(p);
                let yq = yb.qs.as_ptr() as *const u8;
                let mut bsum = _mm512_setzero_si512();
                // Two sub-blocks (64 lanes) per step.
                for sb in (0..8).step_by(2) {
                    let a0 = rd32(p.add(2 + 8 * sb));
                    let a1 = rd32(p.add(6 + 8 * sb));
                    let c0 = rd32(p.add(10 + 8 * sb));
                    let c1 = rd32(p.add(14 + 8 * sb));
                    let g = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(iq2_grid(a0)), iq2_grid(c0));
                    let neg = iq2_sign_bits(a1) as u64 | (iq2_sign_bits(c1) as u64) << 32;
                    let yv = ld512(yq.add(32 * sb));
                    let sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
                    let p16 = _mm512_maddubs_epi16(g, sy);
                    let ls = _mm512_inserti64x4::<1>(
                        _mm512_set1_epi16((2 * (a1 >> 28) + 1) as i16),
                        _mm256_set1_epi16((2 * (c1 >> 28) + 1) as i16),
                    );
                    bsum = _mm512_add_epi32(bsum, _mm512_madd_epi16(p16, ls));
                }
                let bsum = _mm512_reduce_add_epi32(bsum);
                acc += 0.125 * ((f16_to_f32(rd16(p)) * yb.d) * bsum as f32);
            }
        }
        acc
    }
}

// ---- IQ2_XXS with VBMI + BITALG: whole blocks in vector registers ----------------------------------

/// Whether this CPU also has the byte permutes and byte popcount of [`dot_q_iq2_xxs_vbmi`].
pub fn supported_vbmi() -> bool {
    supported()
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512bitalg")
}

macro_rules! vbmi_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c,bmi2")]
        $vis unsafe fn $name($($arg: $t),*) $(-> $r)? $body
    };
}

vbmi_fn! {
    /// IQ2_XXS · Q8_K, exact. Per block, with no scalar work per sub-block: the 32 grid indices
    /// are compacted with one `vpermb` and the grid points fetched by four 8-entry gathers; the
    /// 32 seven-bit sign codes are cut out by `vpmultishiftqb` and completed with their parity
    /// bit by `vpopcntb`; each 64-lane chunk's sign mask is one `vpermb` + `vptestmb`, applied
    /// to the activations by a masked negate (exact: Q8_K quants lie in −127..=127, the
    /// quantizer's scale maps the largest magnitude to 127). `vpdpbusd` (grid u8 × signed act) gives i32 lanes
    /// that fit in i16 (|Σ4| ≤ 4·43·127), so `vpdpwssd` against `(2t+1, 0)` i16 pairs applies
    /// the sub-block scale and accumulates in one instruction. Eight blocks' sums are reduced
    /// together and their f32 terms computed in one vector, then added blocks ascending.
    pub unsafe fn dot_q_iq2_xxs_vbmi(row: &[u8], a: &QuantizedActs) -> f32 {
        let y = a.q8k_blocks();
        let yqa = a.q8k_qs().as_ptr() as *const u8;
        let nb = (row.len() / 66).min(y.len());
        let off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(66));
        let yoff = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(size_of::<BlockQ8K>() as i32));
        let mut acc = 0.0f32;
        let mut b = 0;
        while b + 8 <= nb {
            // SAFETY: blocks b..b+8 lie in row and y; the aligned quants hold 256 per block.
            unsafe {
                let p = row.as_ptr().add(66 * b);
                let mut sums = [_mm256_setzero_si256(); 8];
                for (i, s) in sums.iter_mut().enumerate() {
                    *s = iq2_block_sums(p.add(66 * i), yqa.add(256 * (b + i)));
                }
                let bsum = _mm256_cvtepi32_ps(crate::x86::avx2::reduce8_i32(sums));
                let d = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_i32gather_epi32::<1>(p as *const i32, off)));
                let yd = _mm256_i32gather_ps::<1>(y.as_ptr().add(b) as *const f32, yoff);
                // 0.125·((d·d_y)·bsum), the scalar's order.
                let t = _mm256_mul_ps(_mm256_set1_ps(0.125), _mm256_mul_ps(_mm256_mul_ps(d, yd), bsum));
                let mut tt = [0.0f32; 8];
                _mm256_storeu_ps(tt.as_mut_ptr(), t);
                for v in tt {
                    acc += v;
                }
            }
            b += 8;
        }
        for (bb, yb) in y.iter().enumerate().take(nb).skip(b) {
            // SAFETY: block bb lies in row; the aligned quants hold 256 per block.
            unsafe {
                let p = row.as_ptr().add(66 * bb);
                let s = iq2_block_sums(p, yqa.add(256 * bb));
                let bsum = _mm512_reduce_add_epi32(_mm512_castsi256_si512(s));
                acc += 0.125 * ((f16_to_f32(rd16(p)) * yb.d) * bsum as f32);
            }
        }
        acc
    }
}

/// `vpermb` indices of [`iq2_block_sums`]: for chunk `g` (sub-blocks 2g, 2g+1), lane `j` takes
/// sign byte `8·(2g + j/32) + (j%32)/8`.
static IQ2_SIGN_IDX: [[u8; 64]; 4] = {
    let mut t = [[0u8; 64]; 4];
    let mut g = 0;
    while g < 4 {
        let mut j = 0;
        while j < 64 {
            t[g][j] = (8 * (2 * g + j / 32) + (j % 32) / 8) as u8;
            j += 1;
        }
        g += 1;
    }
    t
};

vbmi_fn! {
    /// One IQ2_XXS block's `Σ_b (2t_b+1)·Σ sign·grid·q_y` as eight i32 partial sums (the method
    /// is [`dot_q_iq2_xxs_vbmi`]'s); `yq` is the block's 256 activation quants.
    #[inline]
    unsafe fn iq2_block_sums(p: *const u8, yq: *const u8) -> __m256i {
        // SAFETY: p points at a whole 66-byte block, yq at 256 readable quants; the statics are
        // 64 bytes each.
        unsafe {
            crate::x86::prefetch_ahead::<66>(p);
            // Grid-index bytes 0-3 of each sub-block's u64, packed into bytes 0..32.
            let pick_idx = _mm512_set_epi64(0, 0, 0, 0,
                0x3b3a_3938_3332_3130, 0x2b2a_2928_2322_2120, 0x1b1a_1918_1312_1110, 0x0b0a_0908_0302_0100);
            // Sign code l of each u64 starts at bit 32 + 7l.
            let cut = _mm512_set1_epi64(0x352e_2720);
            let bits = _mm512_set1_epi64(0x8040_2010_0804_0201u64 as i64);
            let q = ld512(p.add(2));
            let idx = _mm512_permutexvar_epi8(pick_idx, q);
            let i_lo = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(idx));
            let i_hi = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<1>(idx));
            let gp = GRID.as_ptr() as *const i64;
            let grid = [
                _mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(i_lo), gp),
                _mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(i_lo), gp),
                _mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(i_hi), gp),
                _mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(i_hi), gp),
            ];
            let codes = _mm512_and_si512(_mm512_multishift_epi64_epi8(cut, q), _mm512_set1_epi8(0x7f));
            let par = _mm512_slli_epi16::<7>(_mm512_and_si512(_mm512_popcnt_epi8(codes), _mm512_set1_epi8(1)));
            let signs = _mm512_or_si512(codes, par);
            // 2t+1 in the low dword of each sub-block's u64.
            let ls = _mm512_add_epi64(_mm512_srli_epi64::<59>(_mm512_andnot_si512(_mm512_set1_epi64(0x0fff_ffff_ffff_ffff), q)), _mm512_set1_epi64(1));
            let mut isum = _mm512_setzero_si512();
            for g in 0..4 {
                let neg = _mm512_test_epi8_mask(_mm512_permutexvar_epi8(ld512(IQ2_SIGN_IDX[g].as_ptr()), signs), bits);
                let yv = ld512(yq.add(64 * g));
                let sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
                let v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), grid[g], sy);
                // Dword lanes 0-7 take sub-block 2g's scale (dword 4g), 8-15 sub-block 2g+1's.
                let (l0, l1) = (4 * g as i32, 4 * g as i32 + 2);
                let sel = _mm512_setr_epi32(l0, l0, l0, l0, l0, l0, l0, l0, l1, l1, l1, l1, l1, l1, l1, l1);
                isum = _mm512_dpwssd_epi32(isum, v, _mm512_permutexvar_epi32(sel, ls));
            }
            _mm256_add_epi32(_mm512_castsi512_si256(isum), _mm512_extracti64x4_epi64::<1>(isum))
        }
    }
}

// ---- K-quant integer dots with VNNI -------------------------------------------------------------

avx512_fn! {
    /// The packed Q4_K scales as four u32 words of four 6-bit values each:
    /// `[sc0..3, sc4..7, m0..3, m4..7]` (spec/model.md §5.3, done on whole words).
    #[inline]
    unsafe fn q4k_scale_words(p: *const u8) -> [u32; 4] {
        // SAFETY: p points at the 12 scale bytes of a Q4_K block.
        let (w0, w1, w2) = unsafe { (rd32(p), rd32(p.add(4)), rd32(p.add(8))) };
        [
            w0 & 0x3f3f_3f3f,
            (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030),
            w1 & 0x3f3f_3f3f,
            ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030),
        ]
    }
}

avx512_fn! {
    /// One Q4_K block's integer sums as two 8-lane partial vectors: `Σ_j sc_j·Σ q·q_y` and
    /// `Σ_j m_j·(bsums[2j]+bsums[2j+1])`. The 32 bytes of nibble pair `c` broadcast to both
    /// halves and shifted by 0 / 4 give the 64 contiguous quants `64c..64c+64`, so the
    /// activations are one load; `vpdpbusd` sums four products per i32 lane (|Σ| ≤ 4·15·128 fits
    /// i16) and `vpdpwssd` against `(scale, 0)` i16 pairs applies the sub-block scale and
    /// accumulates.
    #[inline]
    unsafe fn q4k_block_sums(p: *const u8, yb: &BlockQ8K, yq: *const u8, sel: &[__m512i; 4]) -> (__m256i, __m256i) {
        // SAFETY: p points at a whole 144-byte Q4_K block.
        unsafe {
            crate::x86::prefetch_ahead::<144>(p);
            let m4 = _mm512_set1_epi8(15);
            let shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
            let w = q4k_scale_words(p.add(4));
            let sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, w[1] as i32, w[0] as i32)));
            let mins = _mm_set_epi32(0, 0, w[3] as i32, w[2] as i32);
            let mm = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
            let summs = _mm256_madd_epi16(mm, _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i));
            let mut isum = _mm512_setzero_si512();
            for (c, sel) in sel.iter().enumerate() {
                let q = _mm512_broadcast_i64x4(ld256(p.add(16 + 32 * c)));
                let wq = _mm512_and_si512(_mm512_srlv_epi64(q, shift), m4);
                let v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, ld512(yq.add(64 * c)));
                isum = _mm512_dpwssd_epi32(isum, v, _mm512_permutexvar_epi32(*sel, sc));
            }
            (_mm256_add_epi32(_mm512_castsi512_si256(isum), _mm512_extracti64x4_epi64::<1>(isum)), summs)
        }
    }
}

avx512_fn! {
    /// Eight K-quant blocks' f32 terms `(d_y·d)·isum − (d_y·dmin)·summs`, lane `i` = block `i`,
    /// from their 8-lane partial sums; `dd` holds each block's f16 `d` (low half) and `dmin` (high
    /// half) and `y` the blocks' activations. Same operations per lane as the scalar.
    #[inline]
    unsafe fn kq_terms8(isum: [__m256i; 8], summs: [__m256i; 8], dd: __m256i, y: *const BlockQ8K) -> __m256 {
        use crate::x86::avx2::reduce8_i32;
        let yoff = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(size_of::<BlockQ8K>() as i32));
        // SAFETY: the caller passes 8 activation blocks at y; `d` is each block's first field.
        let yd = unsafe { _mm256_i32gather_ps::<1>(y as *const f32, yoff) };
        let d = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(dd));
        let dmin = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32::<16>(dd)));
        let is = _mm256_cvtepi32_ps(reduce8_i32(isum));
        let ms = _mm256_cvtepi32_ps(reduce8_i32(summs));
        _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(yd, d), is), _mm256_mul_ps(_mm256_mul_ps(yd, dmin), ms))
    }
}

avx512_fn! {
    /// Q4_K · Q8_K, exact, eight blocks per step: their integer sums reduced together and their
    /// f32 terms computed in one vector, then added blocks ascending as the scalar does. The
    /// activation quants come from the aligned copy ([`QuantizedActs::q8k_qs`]).
    pub unsafe fn dot_q_q4_k(row: &[u8], a: &QuantizedActs) -> f32 {
        let y = a.q8k_blocks();
        let yqa = a.q8k_qs().as_ptr() as *const u8;
        let sel: [__m512i; 4] = std::array::from_fn(|c| {
            let (a, b) = (2 * c as i32, 2 * c as i32 + 1);
            _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
        });
        let nb = (row.len() / 144).min(y.len());
        let off = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(144));
        let mut acc = 0.0f32;
        let mut b = 0;
        while b + 8 <= nb {
            // SAFETY: blocks b..b+8 lie in row and y.
            unsafe {
                let p = row.as_ptr().add(144 * b);
                let mut is = [_mm256_setzero_si256(); 8];
                let mut ms = [_mm256_setzero_si256(); 8];
                for i in 0..8 {
                    (is[i], ms[i]) = q4k_block_sums(p.add(144 * i), &y[b + i], yqa.add(256 * (b + i)), &sel);
                }
                // Each block's first dword is its f16 d (low half) and dmin (high half).
                let dd = _mm256_i32gather_epi32::<1>(p as *const i32, off);
                let mut t = [0.0f32; 8];
                _mm256_storeu_ps(t.as_mut_ptr(), kq_terms8(is, ms, dd, y.as_ptr().add(b)));
                for v in t {
                    acc += v;
                }
            }
            b += 8;
        }
        for (bb, yb) in y.iter().enumerate().take(nb).skip(b) {
            // SAFETY: block bb lies in row.
            unsafe {
                let p = row.as_ptr().add(144 * bb);
                let (is, ms) = q4k_block_sums(p, yb, yqa.add(256 * bb), &sel);
                let h = _mm256_hadd_epi32(is, ms);
                let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                let h = _mm_hadd_epi32(h, h);
                let isum = _mm_cvtsi128_si32(h);
                let summs = _mm_extract_epi32::<1>(h);
                let d = f16_to_f32(rd16(p));
                let dmin = f16_to_f32(rd16(p.add(2)));
                acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
            }
        }
        acc
    }
}

vbmi_fn! {
    /// One Q2_K block's integer sums as two 8-lane partial vectors: `Σ sc·q·q_y` and
    /// `Σ m·bsums`. Each 64-quant chunk is its 32 packed bytes broadcast to both halves and
    /// shifted to the two planes it holds; `(q & 3) | sc << 2` indexes a 64-byte product table
    /// (`vpermb`), so the bytes fed to `vpdpbusd` are already `sc·q` (≤ 45) and one accumulator
    /// takes all four chunks (|lane| ≤ 16·45·128, exact).
    #[inline]
    unsafe fn q2k_block_sums(p: *const u8, yb: &BlockQ8K, yq: *const u8, c: &Q2kConsts) -> (__m256i, __m256i) {
        // SAFETY: p points at a whole 84-byte Q2_K block.
        unsafe {
            crate::x86::prefetch_ahead::<84>(p);
            let scl = ld128(p);
            let m15 = _mm_set1_epi8(15);
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(scl), m15));
            let summs = _mm256_madd_epi16(mins, _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i));
            let sc4 = _mm512_zextsi128_si512(_mm_slli_epi16::<2>(_mm_and_si128(scl, m15)));
            let m3 = _mm512_set1_epi8(3);
            let mut acc = _mm512_setzero_si512();
            for k in 0..4 {
                let q = _mm512_broadcast_i64x4(ld256(p.add(16 + 32 * (k / 2))));
                let qs = _mm512_srlv_epi64(q, c.shift[k & 1]);
                let s4 = _mm512_permutexvar_epi8(c.sc_idx[k], sc4);
                let ix = _mm512_ternarylogic_epi32::<0xEA>(qs, m3, s4);
                let w = _mm512_permutexvar_epi8(ix, c.prod);
                acc = _mm512_dpbusd_epi32(acc, w, ld512(yq.add(64 * k)));
            }
            (_mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64::<1>(acc)), summs)
        }
    }
}

/// Loop constants of [`q2k_block_sums`].
struct Q2kConsts {
    /// Per-qword right shifts of chunk `k & 1`: planes 0/1 or 2/3 of the broadcast bytes.
    shift: [__m512i; 2],
    /// `vpermb` indices giving byte `i` of chunk `k` the scale of sub-block `4k + i/16`.
    sc_idx: [__m512i; 4],
    /// `prod[i] = (i >> 2)·(i & 3)`: scale times quant.
    prod: __m512i,
}

/// `vpermb` indices of [`Q2kConsts::sc_idx`], and the product table of [`Q2kConsts::prod`].
static Q2K_SC_IDX: [[u8; 64]; 4] = {
    let mut t = [[0u8; 64]; 4];
    let mut k = 0;
    while k < 4 {
        let mut i = 0;
        while i < 64 {
            t[k][i] = (4 * k + i / 16) as u8;
            i += 1;
        }
        k += 1;
    }
    t
};
static Q2K_PROD: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i >> 2) * (i & 3)) as u8;
        i += 1;
    }
    t
};

vbmi_fn! {
    #[inline]
    unsafe fn q2k_consts() -> Q2kConsts {
        // SAFETY: the statics are 64 readable bytes each.
        unsafe {
            Q2kConsts {
                shift: [_mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)],
                sc_idx: std::array::from_fn(|k| ld512(Q2K_SC_IDX[k].as_ptr())),
                prod: ld512(Q2K_PROD.as_ptr()),
            }
        }
    }
}

vbmi_fn! {
    /// Q2_K · Q8_K, exact, eight blocks per step (see [`dot_q_q4_k`] for the batching).
    pub unsafe fn dot_q_q2_k_vbmi(row: &[u8], a: &QuantizedActs) -> f32 {
        let y = a.q8k_blocks();
        let yqa = a.q8k_qs().as_ptr() as *const u8;
        let c = q2k_consts();
        let nb = (row.len() / 84).min(y.len());
        let off = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(84)), _mm256_set1_epi32(80));
        let mut acc = 0.0f32;
        let mut b = 0;
        while b + 8 <= nb {
            // SAFETY: blocks b..b+8 lie in row and y.
            unsafe {
                let p = row.as_ptr().add(84 * b);
                let mut is = [_mm256_setzero_si256(); 8];
                let mut ms = [_mm256_setzero_si256(); 8];
                for i in 0..8 {
                    (is[i], ms[i]) = q2k_block_sums(p.add(84 * i), &y[b + i], yqa.add(256 * (b + i)), &c);
                }
                // The dword at byte 80 of each block is its f16 d (low half) and dmin (high half).
                let dd = _mm256_i32gather_epi32::<1>(p as *const i32, off);
                let mut t = [0.0f32; 8];
                _mm256_storeu_ps(t.as_mut_ptr(), kq_terms8(is, ms, dd, y.as_ptr().add(b)));
                for v in t {
                    acc += v;
                }
            }
            b += 8;
        }
        for (bb, yb) in y.iter().enumerate().take(nb).skip(b) {
            // SAFETY: block bb lies in row.
            unsafe {
                let p = row.as_ptr().add(84 * bb);
                let (is, ms) = q2k_block_sums(p, yb, yqa.add(256 * bb), &c);
                let h = _mm256_hadd_epi32(is, ms);
                let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                let h = _mm_hadd_epi32(h, h);
                let isum = _mm_cvtsi128_si32(h);
                let summs = _mm_extract_epi32::<1>(h);
                let d = f16_to_f32(rd16(p.add(80)));
                let dmin = f16_to_f32(rd16(p.add(82)));
                acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
            }
        }
        acc
    }
}

avx512_fn! {
    /// Q2_K · Q8_K, exact, as the AVX2 kernel but with `vpdpwssd` for scale·sum + accumulate.
    pub unsafe fn dot_q_q2_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let m15 = _mm_set1_epi8(15);
        // For plane pair m: i16 lanes 0-7 take scale[2m], lanes 8-15 scale[2m+1].
        let shuf: [__m256i; 8] = std::array::from_fn(|m| {
            let mut b = [0x80u8; 32];
            for (i, v) in b.iter_mut().enumerate() {
                if i % 2 == 0 {
                    *v = (2 * m + i / 16) as u8;
                }
            }
            // SAFETY: b is 32 readable bytes.
            unsafe { ld256(b.as_ptr()) }
        });
        let mut acc = 0.0f32;
        for (b, yb) in y.iter().enumerate().take(row.len() / 84) {
            // SAFETY: block b is bytes 84b..84b+84 of row.
            unsafe {
                let p = row.as_ptr().add(84 * b);
                crate::x86::prefetch_ahead::<84>(p);
                let yq = yb.qs.as_ptr() as *const u8;
                let sc = ld128(p);
                let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m15));
                let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
                let summs = _mm256_madd_epi16(mins, bs);
                let scl = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m15));
                let mut isum = _mm256_setzero_si256();
                for h in 0..2 {
                    let q = ld256(p.add(16 + 32 * h));
                    for j in 0..4 {
                        let qj = match j {
                            0 => q,
                            1 => _mm256_srli_epi16::<2>(q),
                            2 => _mm256_srli_epi16::<4>(q),
                            _ => _mm256_srli_epi16::<6>(q),
                        };
                        let m = 4 * h + j;
                        let p16 = _mm256_maddubs_epi16(_mm256_and_si256(qj, m3), ld256(yq.add(32 * m)));
                        isum = _mm256_dpwssd_epi32(isum, p16, _mm256_shuffle_epi8(scl, shuf[m]));
                    }
                }
                let h = _mm256_hadd_epi32(isum, summs);
                let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                let h = _mm_hadd_epi32(h, h);
                let isum = _mm_cvtsi128_si32(h);
                let summs = _mm_extract_epi32::<1>(h);
                let d = f16_to_f32(rd16(p.add(80)));
                let dmin = f16_to_f32(rd16(p.add(82)));
                acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
            }
        }
        acc
    }
}
