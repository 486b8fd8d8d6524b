//! AVX2 + FMA + F16C kernels (Haswell and later). Weights are dequantized in registers; nothing is
//! written back to memory. Integer dots (`dot_q_*`) give exactly the scalar result: every block's
//! integer sum is exact and the per-block f32 terms are added in the same order (blocks ascending).
//!
//! Safety contract of every `unsafe fn` here: the CPU supports avx2, fma and f16c (the kernel table
//! only holds these after `is_x86_feature_detected!`), `row` holds whole blocks, and `x` / `y` hold
//! at least as many elements / blocks as `row`; the row wrappers in `x86/mod.rs` assert the lengths.

use crate::iq2_xxs::GRID;
use crate::x86::KEVEN_SIGNS;
use crate::{ActQ8_0, BlockQ8K};
use std::arch::x86_64::*;

// ---- helpers ------------------------------------------------------------------------------------

/// f16 bits → f32, exactly (subnormals included).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn read_u16(p: *const u8) -> u16 {
    // SAFETY: the caller passes a pointer to 2 readable bytes; unaligned read.
    unsafe { (p as *const u16).read_unaligned() }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn read_u32(p: *const u8) -> u32 {
    // SAFETY: the caller passes a pointer to 4 readable bytes; unaligned read.
    unsafe { (p as *const u32).read_unaligned() }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn loadu(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Eight u8 → eight f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8x8_to_ps(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// Eight i8 → eight f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8x8_to_ps(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ldx(x: *const f32) -> __m256 {
    // SAFETY: the caller passes a pointer to 8 readable f32.
    unsafe { _mm256_loadu_ps(x) }
}

// ---- plain types --------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_f16(row: &[u8], x: &[f32]) -> f32 {
    let n = row.len() / 2;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (loop bodies): i + 32 <= n, so 64 bytes of row and 32 f32 of x are readable.
    while i + 32 <= n {
        crate::x86::prefetch_ahead::<64>(w.wrapping_add(2 * i));
        for (k, a) in acc.iter_mut().enumerate() {
            let h = unsafe { _mm_loadu_si128(w.add(2 * (i + 8 * k)) as *const __m128i) };
            *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), unsafe { ldx(xp.add(i + 8 * k)) }, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        let h = unsafe { _mm_loadu_si128(w.add(2 * i) as *const __m128i) };
        acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), unsafe { ldx(xp.add(i)) }, acc[0]);
        i += 8;
    }
    let mut s = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += unsafe { f16_to_f32(read_u16(w.add(2 * i))) } * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_bf16(row: &[u8], x: &[f32]) -> f32 {
    let n = row.len() / 2;
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (loop bodies): i + 16 <= n, so 32 bytes of row and 16 f32 of x are readable.
    while i + 16 <= n {
        let h = unsafe { loadu(w.add(2 * i)) };
        let lo = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)));
        let hi = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(h)));
        acc0 = _mm256_fmadd_ps(_mm256_castsi256_ps(lo), unsafe { ldx(xp.add(i)) }, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_castsi256_ps(hi), unsafe { ldx(xp.add(i + 8)) }, acc1);
        i += 16;
    }
    let mut s = hsum_ps(_mm256_add_ps(acc0, acc1));
    while i < n {
        let b = unsafe { read_u16(w.add(2 * i)) };
        s += f32::from_bits((b as u32) << 16) * x[i];
        i += 1;
    }
    s
}

// ---- Q8_0 ---------------------------------------------------------------------------------------

/// Q8_0 · f32. Eight blocks' f16 scales are converted with one `vcvtph2ps` into a stack array, so
/// each block's scale is a broadcast load rather than a scalar convert (this kernel is bound by
/// conversions; the AVX-512 twin measured +32 % from the same change).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let nb = row.len() / 34;
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut dh = [0u16; 8];
    let mut ds = [0.0f32; 8];
    let mut b0 = 0;
    while b0 < nb {
        let n = (nb - b0).min(8);
        // SAFETY (whole body): blocks b0..b0+n lie in row (34 bytes each); x holds 32 values per
        // block.
        unsafe {
            let p0 = row.as_ptr().add(34 * b0);
            for (i, h) in dh.iter_mut().enumerate().take(n) {
                *h = read_u16(p0.add(34 * i));
            }
            _mm256_storeu_ps(
                ds.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(dh.as_ptr() as *const __m128i)),
            );
            crate::x86::prefetch_ahead::<272>(p0);
            for i in 0..n {
                let p = p0.add(34 * i);
                let xb = x.as_ptr().add(32 * (b0 + i));
                let q = _mm_loadu_si128(p.add(2) as *const __m128i);
                let q2 = _mm_loadu_si128(p.add(18) as *const __m128i);
                let mut s = _mm256_mul_ps(i8x8_to_ps(q), ldx(xb));
                s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128::<8>(q)), ldx(xb.add(8)), s);
                s = _mm256_fmadd_ps(i8x8_to_ps(q2), ldx(xb.add(16)), s);
                s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128::<8>(q2)), ldx(xb.add(24)), s);
                acc[i & 1] = _mm256_fmadd_ps(_mm256_set1_ps(ds[i]), s, acc[i & 1]);
            }
        }
        b0 += n;
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1]))
}

/// Integer Q8_0 block dot, 8 i32 partial sums. `|y| <= 127` (P3a guarantees it), so the sign trick
/// and `maddubs` cannot saturate: `|w| <= 128`, `2·128·127 < 32768`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_block_isum(w: __m256i, y: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(y, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Eight blocks' integer sums, `[Σ p0, Σ p1, …, Σ p7]`, from their 8-lane partial sums: a
/// transpose-and-add tree whose first two levels are in-lane shuffles (which Ice Lake and later
/// also run on port 1), leaving only two cross-lane shuffles on port 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn reduce8_i32(p: [__m256i; 8]) -> __m256i {
    let l1 = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
    };
    let l2 = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
    };
    let s0123 = l2(l1(p[0], p[1]), l1(p[2], p[3]));
    let s4567 = l2(l1(p[4], p[5]), l1(p[6], p[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(s0123, s4567),
        _mm256_permute2x128_si256::<0x31>(s0123, s4567),
    )
}

/// Eight Q8_0 weight scales (f16 at byte 34·i of `p`) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_scales8(p: *const u8) -> __m256 {
    let off = _mm256_setr_epi32(0, 34, 68, 102, 136, 170, 204, 238);
    // SAFETY: the caller passes 8 whole blocks (272 bytes); each gathered dword lies in them.
    let g = unsafe { _mm256_i32gather_epi32::<1>(p as *const i32, off) };
    // Keep the low 16 bits of each dword, packed into the low 8 bytes of each lane.
    let pick = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1, -1,
        -1, -1, -1, -1, -1, -1,
    );
    let h = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_shuffle_epi8(g, pick));
    _mm256_cvtph_ps(_mm256_castsi256_si128(h))
}

/// Q8_0 row · Q8_0 activations, ds4's exact order: per block `(d_w·s_x)·isum` (isum exact), added
/// to one f32 accumulator blocks ascending. A single row is bound by the latency of that serial
/// add (one per 34-byte block), so [`matvec_q_q8_0`] interleaves four rows' chains.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_q8_0(row: &[u8], y: &[ActQ8_0], yd: &[f32]) -> f32 {
    let mut out = [0.0f32];
    // SAFETY: forwarded contract; one row of row.len() bytes.
    unsafe { matvec_q_q8_0(row, row.len(), 1, y, yd, &mut out) };
    out[0]
}

/// The terms `(d_w·s_x)·isum` of eight consecutive blocks starting at `p` / activation block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_terms8(p: *const u8, y: &[ActQ8_0], yd: &[f32], b: usize, out: &mut [f32; 8]) {
    // SAFETY: the caller guarantees 8 whole blocks at p and b + 8 <= y.len(), yd.len().
    unsafe {
        let parts: [__m256i; 8] = std::array::from_fn(|i| {
            q8_0_block_isum(
                loadu(p.add(34 * i + 2)),
                loadu(y[b + i].qs.as_ptr() as *const u8),
            )
        });
        let isum = _mm256_cvtepi32_ps(reduce8_i32(parts));
        let dd = _mm256_mul_ps(q8_0_scales8(p), _mm256_loadu_ps(yd.as_ptr().add(b)));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(dd, isum));
    }
}

/// `out[o] = W[o,:]·acts` for `n_rows` Q8_0 rows of `row_bytes` bytes, four rows at a time so
/// their serial f32 sums overlap. Each row's result is exactly [`dot_q_q8_0`]'s.
///
/// # Safety
/// The CPU has avx2, fma, f16c; `w` holds `n_rows` rows; `out` holds `n_rows` values; `y`/`yd`
/// hold `row_bytes / 34` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matvec_q_q8_0(
    w: &[u8],
    row_bytes: usize,
    n_rows: usize,
    y: &[ActQ8_0],
    yd: &[f32],
    out: &mut [f32],
) {
    let nb = row_bytes / 34;
    let mut o = 0;
    while o < n_rows {
        let nr = (n_rows - o).min(4);
        let mut acc = [0.0f32; 4];
        let mut terms = [[0.0f32; 8]; 4];
        let mut b = 0;
        while b + 8 <= nb {
            for r in 0..nr {
                crate::x86::prefetch_ahead::<272>(
                    w.as_ptr().wrapping_add((o + r) * row_bytes + 34 * b),
                );
                // SAFETY: row o + r exists; blocks b..b+8 lie in it (b + 8 <= nb).
                unsafe {
                    q8_0_terms8(
                        w.as_ptr().add((o + r) * row_bytes + 34 * b),
                        y,
                        yd,
                        b,
                        &mut terms[r],
                    )
                };
            }
            for i in 0..8 {
                for r in 0..4 {
                    acc[r] += terms[r][i];
                }
            }
            b += 8;
        }
        for r in 0..nr {
            let mut a = acc[r];
            for bb in b..nb {
                // SAFETY: block bb of row o + r lies in w; y[bb] exists.
                unsafe {
                    let p = w.as_ptr().add((o + r) * row_bytes + 34 * bb);
                    let isum = hsum_i32(q8_0_block_isum(
                        loadu(p.add(2)),
                        loadu(y[bb].qs.as_ptr() as *const u8),
                    ));
                    a += (f16_to_f32(read_u16(p)) * y[bb].d) * isum as f32;
                }
            }
            out[o + r] = a;
        }
        o += nr;
    }
}

// ---- Q2_K ---------------------------------------------------------------------------------------

/// For plane pair `m` (elements 32m..32m+32, sub-blocks 2m and 2m+1) a `shuffle_epi8` mask that
/// turns the 16 broadcast scale bytes into i16 lanes: 0-7 = scale[2m], 8-15 = scale[2m+1].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2k_scale_shuffle(m: usize) -> __m256i {
    let lo = (2 * m) as i8;
    let hi = (2 * m + 1) as i8;
    let z = -128i8; // 0x80: zero the byte
    _mm256_setr_epi8(
        lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, hi, z, hi, z, hi, z, hi, z, hi, z,
        hi, z, hi, z, hi, z,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_q2_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
    let nb = row.len() / 84;
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(15);
    let shuf: [__m256i; 8] = std::array::from_fn(|m| q2k_scale_shuffle(m));
    let mut acc = 0.0f32;
    for b in 0..nb {
        // SAFETY: block b is bytes 84b..84b+84 of row; y[b] exists.
        unsafe {
            let p = row.as_ptr().add(84 * b);
            crate::x86::prefetch_ahead::<84>(p);
            let yb = &y[b];
            let yq = yb.qs.as_ptr() as *const u8;
            let sc = _mm_loadu_si128(p as *const __m128i);
            // summs = Σ_j (sc_j >> 4)·bsums_j
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
            let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
            let summs = hsum_i32(_mm256_madd_epi16(mins, bs));
            let scl = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m4));
            let mut isum = _mm256_setzero_si256();
            for h in 0..2 {
                let q = loadu(p.add(16 + 32 * h));
                for j in 0..4 {
                    let qj = match j {
                        0 => _mm256_and_si256(q, m3),
                        1 => _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                        2 => _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                        _ => _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                    };
                    let m = 4 * h + j;
                    let p16 = _mm256_maddubs_epi16(qj, loadu(yq.add(32 * m)));
                    let s16 = _mm256_shuffle_epi8(scl, shuf[m]);
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p16, s16));
                }
            }
            let isum = hsum_i32(isum);
            let d = f16_to_f32(read_u16(p.add(80)));
            let dmin = f16_to_f32(read_u16(p.add(82)));
            acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_q2_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = row.len() / 84;
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        // SAFETY: block b is bytes 84b..84b+84 of row; x holds 256 values per block.
        unsafe {
            let p = row.as_ptr().add(84 * b);
            crate::x86::prefetch_ahead::<84>(p);
            let xb = x.as_ptr().add(256 * b);
            let d = f16_to_f32(read_u16(p.add(80)));
            let dmin = f16_to_f32(read_u16(p.add(82)));
            for h in 0..2 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * h) as *const __m256i);
                for j in 0..4 {
                    let qj = match j {
                        0 => q,
                        1 => _mm256_srli_epi16::<2>(q),
                        2 => _mm256_srli_epi16::<4>(q),
                        _ => _mm256_srli_epi16::<6>(q),
                    };
                    let qj = _mm256_and_si256(qj, _mm256_set1_epi8(3));
                    for half in 0..2 {
                        // Sub-block sub = 8h + 2j + half: 16 elements, bytes 16·half.. of qj.
                        let sub = 8 * h + 2 * j + half;
                        let s = *p.add(sub);
                        let dl = _mm256_set1_ps(d * (s & 15) as f32);
                        let ml = _mm256_set1_ps(dmin * (s >> 4) as f32);
                        let e = 128 * h + 32 * j + 16 * half;
                        let qv = if half == 0 {
                            _mm256_castsi256_si128(qj)
                        } else {
                            _mm256_extracti128_si256::<1>(qj)
                        };
                        let w0 = _mm256_fmsub_ps(dl, u8x8_to_ps(qv), ml);
                        let w1 = _mm256_fmsub_ps(dl, u8x8_to_ps(_mm_srli_si128::<8>(qv)), ml);
                        acc = _mm256_fmadd_ps(w0, ldx(xb.add(e)), acc);
                        acc = _mm256_fmadd_ps(w1, ldx(xb.add(e + 8)), acc);
                    }
                }
            }
        }
    }
    hsum_ps(acc)
}

// ---- Q4_K ---------------------------------------------------------------------------------------

/// The eight 6-bit (scale, min) pairs of a Q4_K block (spec/model.md §5.3), as two u8 arrays.
#[inline]
pub(crate) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_q4_k(row: &[u8], y: &[BlockQ8K]) -> f32 {
    let nb = row.len() / 144;
    let m4 = _mm256_set1_epi8(15);
    let mut acc = 0.0f32;
    for b in 0..nb {
        // SAFETY: block b is bytes 144b..144b+144 of row; y[b] exists.
        unsafe {
            let p = row.as_ptr().add(144 * b);
            crate::x86::prefetch_ahead::<144>(p);
            let yb = &y[b];
            let yq = yb.qs.as_ptr() as *const u8;
            let (sc, m) = q4k_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
            // summs = Σ_j m_j·(bsums[2j] + bsums[2j+1]): each m_j sits in two i16 lanes.
            let mm = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(
                _mm_loadl_epi64(m.as_ptr() as *const __m128i),
                _mm_loadl_epi64(m.as_ptr() as *const __m128i),
            ));
            let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
            let summs = hsum_i32(_mm256_madd_epi16(mm, bs));
            let mut isum = _mm256_setzero_si256();
            for c in 0..4 {
                let q = loadu(p.add(16 + 32 * c));
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let plo = _mm256_maddubs_epi16(lo, loadu(yq.add(64 * c)));
                let phi = _mm256_maddubs_epi16(hi, loadu(yq.add(64 * c + 32)));
                let slo = _mm256_set1_epi16(sc[2 * c] as i16);
                let shi = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, slo));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, shi));
            }
            let isum = hsum_i32(isum);
            let d = f16_to_f32(read_u16(p));
            let dmin = f16_to_f32(read_u16(p.add(2)));
            acc += (yb.d * d) * isum as f32 - (yb.d * dmin) * summs as f32;
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let nb = row.len() / 144;
    let mut acc = _mm256_setzero_ps();
    let m4 = _mm256_set1_epi8(15);
    for b in 0..nb {
        // SAFETY: block b is bytes 144b..144b+144 of row; x holds 256 values per block.
        unsafe {
            let p = row.as_ptr().add(144 * b);
            crate::x86::prefetch_ahead::<144>(p);
            let xb = x.as_ptr().add(256 * b);
            let d = f16_to_f32(read_u16(p));
            let dmin = f16_to_f32(read_u16(p.add(2)));
            let (sc, m) = q4k_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
            for c in 0..4 {
                let q = loadu(p.add(16 + 32 * c));
                for (half, qn) in [
                    _mm256_and_si256(q, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                ]
                .into_iter()
                .enumerate()
                {
                    let j = 2 * c + half;
                    let dl = _mm256_set1_ps(d * sc[j] as f32);
                    let ml = _mm256_set1_ps(dmin * m[j] as f32);
                    let lo = _mm256_castsi256_si128(qn);
                    let hi = _mm256_extracti128_si256::<1>(qn);
                    let e = xb.add(32 * j);
                    let mut s = _mm256_mul_ps(_mm256_fmsub_ps(dl, u8x8_to_ps(lo), ml), ldx(e));
                    s = _mm256_fmadd_ps(
                        _mm256_fmsub_ps(dl, u8x8_to_ps(_mm_srli_si128::<8>(lo)), ml),
                        ldx(e.add(8)),
                        s,
                    );
                    s = _mm256_fmadd_ps(_mm256_fmsub_ps(dl, u8x8_to_ps(hi), ml), ldx(e.add(16)), s);
                    s = _mm256_fmadd_ps(
                        _mm256_fmsub_ps(dl, u8x8_to_ps(_mm_srli_si128::<8>(hi)), ml),
                        ldx(e.add(24)),
                        s,
                    );
                    acc = _mm256_add_ps(acc, s);
                }
            }
        }
    }
    hsum_ps(acc)
}

// ---- IQ2_XXS ------------------------------------------------------------------------------------

/// The 32 grid magnitudes (u8) of sub-block words `a0` and the ±1 sign bytes of `a1`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq2_sub(a0: u32, a1: u32) -> (__m256i, __m256i) {
    let g = |l: u32| GRID[((a0 >> (8 * l)) & 255) as usize] as i64;
    let s = |l: u32| KEVEN_SIGNS[((a1 >> (7 * l)) & 127) as usize] as i64;
    (
        _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
        _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_iq2_xxs(row: &[u8], y: &[BlockQ8K]) -> f32 {
    let nb = row.len() / 66;
    let mut acc = 0.0f32;
    for b in 0..nb {
        // SAFETY: block b is bytes 66b..66b+66 of row; y[b] exists.
        unsafe {
            let p = row.as_ptr().add(66 * b);
            crate::x86::prefetch_ahead::<66>(p);
            let yq = y[b].qs.as_ptr() as *const u8;
            let mut bsum = _mm256_setzero_si256();
            for sb in 0..8 {
                let a0 = read_u32(p.add(2 + 8 * sb));
                let a1 = read_u32(p.add(6 + 8 * sb));
                let (grid, signs) = iq2_sub(a0, a1);
                let sy = _mm256_sign_epi8(loadu(yq.add(32 * sb)), signs);
                let p16 = _mm256_maddubs_epi16(grid, sy);
                let ls = _mm256_set1_epi16((2 * (a1 >> 28) + 1) as i16);
                bsum = _mm256_add_epi32(bsum, _mm256_madd_epi16(p16, ls));
            }
            let bsum = hsum_i32(bsum);
            acc += 0.125 * ((f16_to_f32(read_u16(p)) * y[b].d) * bsum as f32);
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_iq2_xxs(row: &[u8], x: &[f32]) -> f32 {
    let nb = row.len() / 66;
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        // SAFETY: block b is bytes 66b..66b+66 of row; x holds 256 values per block.
        unsafe {
            let p = row.as_ptr().add(66 * b);
            crate::x86::prefetch_ahead::<66>(p);
            let xb = x.as_ptr().add(256 * b);
            let d = f16_to_f32(read_u16(p));
            for sb in 0..8 {
                let a0 = read_u32(p.add(2 + 8 * sb));
                let a1 = read_u32(p.add(6 + 8 * sb));
                let db = _mm256_set1_ps(d * (0.5 + (a1 >> 28) as f32) * 0.25);
                let (grid, signs) = iq2_sub(a0, a1);
                // Signed magnitudes fit in i8 (|g| <= 43): apply the signs in the integer domain.
                let w = _mm256_sign_epi8(grid, signs);
                let e = xb.add(32 * sb);
                let lo = _mm256_castsi256_si128(w);
                let hi = _mm256_extracti128_si256::<1>(w);
                let mut s = _mm256_mul_ps(i8x8_to_ps(lo), ldx(e));
                s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128::<8>(lo)), ldx(e.add(8)), s);
                s = _mm256_fmadd_ps(i8x8_to_ps(hi), ldx(e.add(16)), s);
                s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128::<8>(hi)), ldx(e.add(24)), s);
                acc = _mm256_fmadd_ps(db, s, acc);
            }
        }
    }
    hsum_ps(acc)
}
