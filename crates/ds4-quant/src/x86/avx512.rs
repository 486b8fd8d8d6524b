//! AVX-512 (F, BW, VL) kernels: 16-wide f32 dequantization in registers for the f32-activation
//! dots and for row dequantization, and 64-byte integer dots for the K-quants and IQ2_XXS. Entries
//! without an AVX-512 version keep the AVX2 kernel (see [`kernels`]).
//!
//! Safety contract of every `unsafe fn` here: the CPU supports the features in `FEATURES` (the
//! table only holds these after [`supported`] said so), `row` holds whole blocks, and `x` / `y` /
//! `out` hold at least as many elements / blocks as `row`; `Kernels`' methods assert the lengths.

use crate::iq2_xxs::IQ2XXS_GRID;
use crate::kernels::Kernels;
use crate::x86::avx2::{f16_to_f32, q4k_scales_mins};
use crate::BlockQ8K;
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels below.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("bmi2")
}

/// `base` (the AVX2 table) with the AVX-512 kernels swapped in.
pub fn kernels(base: Kernels) -> Kernels {
    Kernels {
        name: "avx512",
        f16_f32: dot_f32_f16,
        q8_0_f32: dot_f32_q8_0,
        q2_k_f32: dot_f32_q2_k,
        q4_k_f32: dot_f32_q4_k,
        iq2_xxs_f32: dot_f32_iq2_xxs,
        q2_k_q: dot_q_q2_k,
        q4_k_q: dot_q_q4_k,
        iq2_xxs_q: dot_q_iq2_xxs,
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
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c,bmi2")]
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
    /// Sixteen u8 → sixteen f32.
    #[inline]
    unsafe fn u8x16_ps(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
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
        let g = |l: u32| IQ2XXS_GRID[((a0 >> (8 * l)) & 255) as usize] as i64;
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
    pub unsafe fn dot_f32_q8_0(row: &[u8], x: &[f32]) -> f32 {
        let nb = row.len() / 34;
        let mut acc = [_mm512_setzero_ps(); 2];
        for b in 0..nb {
            // SAFETY: block b is bytes 34b..34b+34 of row; x holds 32 values per block.
            unsafe {
                let p = row.as_ptr().add(34 * b);
                let xb = x.as_ptr().add(32 * b);
                let d = _mm512_set1_ps(f16_to_f32(rd16(p)));
                let s = _mm512_mul_ps(i8x16_ps(ld128(p.add(2))), ldx(xb));
                let s = _mm512_fmadd_ps(i8x16_ps(ld128(p.add(18))), ldx(xb.add(16)), s);
                acc[b & 1] = _mm512_fmadd_ps(d, s, acc[b & 1]);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
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
    /// The 16 quants of Q2_K sub-block `sub` as f32.
    #[inline]
    unsafe fn q2k_sub_q(p: *const u8, sub: usize) -> __m512 {
        let (h, j, half) = (sub / 8, (sub % 8) / 2, sub % 2);
        // SAFETY: p points at a whole 84-byte Q2_K block; the 16 bytes lie in qs.
        let v = _mm512_cvtepu8_epi32(unsafe { ld128(p.add(16 + 32 * h + 16 * half)) });
        let v = _mm512_srlv_epi32(v, _mm512_set1_epi32(2 * j as i32));
        _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(3)))
    }
}

avx512_fn! {
    pub unsafe fn dot_f32_q2_k(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..row.len() / 84 {
            // SAFETY: block b is bytes 84b..84b+84 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(84 * b);
                let xb = x.as_ptr().add(256 * b);
                let (dl, ml) = q2k_dl_ml(p);
                for sub in 0..16 {
                    let w = _mm512_fmsub_ps(_mm512_set1_ps(dl[sub]), q2k_sub_q(p, sub), _mm512_set1_ps(ml[sub]));
                    acc[sub & 3] = _mm512_fmadd_ps(w, ldx(xb.add(16 * sub)), acc[sub & 3]);
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    pub unsafe fn dequant_q2_k(src: &[u8], out: &mut [f32]) {
        for b in 0..src.len() / 84 {
            // SAFETY: block b is bytes 84b..84b+84 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(84 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let (dl, ml) = q2k_dl_ml(p);
                for sub in 0..16 {
                    // mul then sub (no FMA): the same rounding as the scalar and ggml.
                    let w = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dl[sub]), q2k_sub_q(p, sub)), _mm512_set1_ps(ml[sub]));
                    stx(o.add(16 * sub), w);
                }
            }
        }
    }
}

avx512_fn! {
    pub unsafe fn dot_q_q2_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let m3 = _mm512_set1_epi8(3);
        let m15 = _mm_set1_epi8(15);
        // For 64-element chunk k (elements 64k..64k+64 = planes j0, j0+1 of half h = k/2), the
        // shift of each 16-bit lane: 2·j0 in the low 256 bits, 2·j0+2 in the high ones.
        let shift = [
            _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2)),
            _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(6)),
        ];
        // Scale of each 8-lane i16 group: chunk k covers sub-blocks 4k..4k+4, one per 128 bits.
        let shuf: [__m512i; 4] = std::array::from_fn(|k| {
            let mut b = [0x80u8; 64];
            for (i, v) in b.iter_mut().enumerate() {
                if i % 2 == 0 {
                    *v = (4 * k + i / 16) as u8;
                }
            }
            // SAFETY: b is 64 readable bytes.
            unsafe { _mm512_loadu_si512(b.as_ptr() as *const __m512i) }
        });
        let mut acc = 0.0f32;
        for (b, yb) in y.iter().enumerate().take(row.len() / 84) {
            // SAFETY: block b is bytes 84b..84b+84 of row.
            unsafe {
                let p = row.as_ptr().add(84 * b);
                let yq = yb.qs.as_ptr() as *const u8;
                let sc = ld128(p);
                let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m15));
                let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
                let summs = crate::x86::avx2_hsum_i32(_mm256_madd_epi16(mins, bs));
                let scl = _mm512_broadcast_i32x4(_mm_and_si128(sc, m15));
                let mut isum = _mm512_setzero_si512();
                for k in 0..4 {
                    let q = _mm512_broadcast_i64x4(ld256(p.add(16 + 32 * (k / 2))));
                    let q = _mm512_and_si512(_mm512_srlv_epi16(q, shift[k % 2]), m3);
                    let p16 = _mm512_maddubs_epi16(q, ld512(yq.add(64 * k)));
                    let s16 = _mm512_shuffle_epi8(scl, shuf[k]);
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(p16, s16));
                }
                let isum = _mm512_reduce_add_epi32(isum);
                let d = f16_to_f32(rd16(p.add(80)));
                let dmin = f16_to_f32(rd16(p.add(82)));
                acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
            }
        }
        acc
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
    /// The 16 quants `16·i .. 16·i+16` of Q4_K sub-block `j` as f32 (i = 0, 1).
    #[inline]
    unsafe fn q4k_q(p: *const u8, j: usize, i: usize) -> __m512 {
        // SAFETY: p points at a whole 144-byte Q4_K block; the 16 bytes lie in qs.
        let v = _mm512_cvtepu8_epi32(unsafe { ld128(p.add(16 + 32 * (j / 2) + 16 * i)) });
        let v = _mm512_srlv_epi32(v, _mm512_set1_epi32(4 * (j % 2) as i32));
        _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)))
    }
}

avx512_fn! {
    pub unsafe fn dot_f32_q4_k(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..row.len() / 144 {
            // SAFETY: block b is bytes 144b..144b+144 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(144 * b);
                let xb = x.as_ptr().add(256 * b);
                let (dl, ml) = q4k_dl_ml(p);
                for j in 0..8 {
                    let (dl, ml) = (_mm512_set1_ps(dl[j]), _mm512_set1_ps(ml[j]));
                    for i in 0..2 {
                        let w = _mm512_fmsub_ps(dl, q4k_q(p, j, i), ml);
                        let a = 2 * (j & 1) + i;
                        acc[a] = _mm512_fmadd_ps(w, ldx(xb.add(32 * j + 16 * i)), acc[a]);
                    }
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    pub unsafe fn dequant_q4_k(src: &[u8], out: &mut [f32]) {
        for b in 0..src.len() / 144 {
            // SAFETY: block b is bytes 144b..144b+144 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(144 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let (dl, ml) = q4k_dl_ml(p);
                for j in 0..8 {
                    let (dl, ml) = (_mm512_set1_ps(dl[j]), _mm512_set1_ps(ml[j]));
                    for i in 0..2 {
                        stx(o.add(32 * j + 16 * i), _mm512_sub_ps(_mm512_mul_ps(dl, q4k_q(p, j, i)), ml));
                    }
                }
            }
        }
    }
}

avx512_fn! {
    pub unsafe fn dot_q_q4_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
        let m4 = _mm512_set1_epi8(15);
        // Low 256 bits: the low nibbles (sub-block 2c), high 256 bits: the high ones (2c+1).
        let shift = _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(4));
        let mut acc = 0.0f32;
        for (b, yb) in y.iter().enumerate().take(row.len() / 144) {
            // SAFETY: block b is bytes 144b..144b+144 of row.
            unsafe {
                let p = row.as_ptr().add(144 * b);
                let yq = yb.qs.as_ptr() as *const u8;
                let (sc, m) = q4k_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
                let mm = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(
                    _mm_loadl_epi64(m.as_ptr() as *const __m128i),
                    _mm_loadl_epi64(m.as_ptr() as *const __m128i),
                ));
                let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
                let summs = crate::x86::avx2_hsum_i32(_mm256_madd_epi16(mm, bs));
                let mut isum = _mm512_setzero_si512();
                for c in 0..4 {
                    let q = _mm512_broadcast_i64x4(ld256(p.add(16 + 32 * c)));
                    let q = _mm512_and_si512(_mm512_srlv_epi16(q, shift), m4);
                    let p16 = _mm512_maddubs_epi16(q, ld512(yq.add(64 * c)));
                    let s16 = _mm512_inserti64x4::<1>(
                        _mm512_set1_epi16(sc[2 * c] as i16),
                        _mm256_set1_epi16(sc[2 * c + 1] as i16),
                    );
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(p16, s16));
                }
                let isum = _mm512_reduce_add_epi32(isum);
                let d = f16_to_f32(rd16(p));
                let dmin = f16_to_f32(rd16(p.add(2)));
                acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
            }
        }
        acc
    }
}

// ---- IQ2_XXS ------------------------------------------------------------------------------------

avx512_fn! {
    pub unsafe fn dot_f32_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..row.len() / 66 {
            // SAFETY: block b is bytes 66b..66b+66 of row; x holds 256 values per block.
            unsafe {
                let p = row.as_ptr().add(66 * b);
                let xb = x.as_ptr().add(256 * b);
                let d = f16_to_f32(rd16(p));
                for sb in 0..8 {
                    let a0 = rd32(p.add(2 + 8 * sb));
                    let a1 = rd32(p.add(6 + 8 * sb));
                    let db = _mm512_set1_ps(d * (0.5 + (a1 >> 28) as f32) * 0.25);
                    let g = iq2_grid(a0);
                    // Signed magnitudes fit in i8 (|g| <= 43): negate in the integer domain.
                    let w = _mm256_mask_sub_epi8(g, iq2_sign_bits(a1), _mm256_setzero_si256(), g);
                    let e = xb.add(32 * sb);
                    let s = _mm512_mul_ps(i8x16_ps(_mm256_castsi256_si128(w)), ldx(e));
                    let s = _mm512_fmadd_ps(i8x16_ps(_mm256_extracti128_si256::<1>(w)), ldx(e.add(16)), s);
                    acc[sb & 3] = _mm512_fmadd_ps(db, s, acc[sb & 3]);
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }
}

avx512_fn! {
    pub unsafe fn dequant_iq2_xxs(src: &[u8], out: &mut [f32]) {
        for b in 0..src.len() / 66 {
            // SAFETY: block b is bytes 66b..66b+66 of src; out holds 256 values per block.
            unsafe {
                let p = src.as_ptr().add(66 * b);
                let o = out.as_mut_ptr().add(256 * b);
                let d = f16_to_f32(rd16(p));
                for sb in 0..8 {
                    let a0 = rd32(p.add(2 + 8 * sb));
                    let a1 = rd32(p.add(6 + 8 * sb));
                    // (d·(0.5+t))·0.25, then ·grid, then the sign (exact): the scalar's rounding.
                    let db = _mm512_set1_ps(d * (0.5 + (a1 >> 28) as f32) * 0.25);
                    let g = iq2_grid(a0);
                    let neg = iq2_sign_bits(a1);
                    let lo = _mm512_mul_ps(db, u8x16_ps(_mm256_castsi256_si128(g)));
                    let hi = _mm512_mul_ps(db, u8x16_ps(_mm256_extracti128_si256::<1>(g)));
                    // Flip the sign bit (not 0 − v, which would turn −0 into +0).
                    let sign = _mm512_set1_epi32(i32::MIN);
                    let flip = |v: __m512, k: u16| {
                        _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(v), k, _mm512_castps_si512(v), sign))
                    };
                    stx(o.add(32 * sb), flip(lo, neg as u16));
                    stx(o.add(32 * sb + 16), flip(hi, (neg >> 16) as u16));
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
