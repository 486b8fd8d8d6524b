//! Weight matrices times f32 activations, threaded with rayon over output rows.
//!
//! Decode (one token) dots each quantized row directly with `ds4_quant::dot_f32`. A batch of tokens
//! dequantizes each row once into a small buffer and dots it with every token, so a weight row is
//! read from memory once per chunk, not once per token (spec/model.md §3.8).

use ds4_gguf::TensorType;
use ds4_model::Tensor;
use rayon::prelude::*;

/// A row-major matrix view: `n_out` rows of `n_in` values, each `row_bytes` bytes of type `ty`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub ty: TensorType,
    pub n_in: usize,
    pub n_out: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> Mat<'a> {
    /// The whole (2-D) tensor.
    pub fn of(t: &'a Tensor) -> Mat<'a> {
        Mat {
            ty: t.ty(),
            n_in: t.n_in(),
            n_out: t.n_out(),
            row_bytes: t.row_bytes(),
            data: t.bytes(),
        }
    }
    /// Expert `e` of a 3-D `[n_in, n_out, n_expert]` tensor.
    pub fn expert(t: &'a Tensor, e: usize) -> Mat<'a> {
        Mat {
            ty: t.ty(),
            n_in: t.n_in(),
            n_out: t.n_out(),
            row_bytes: t.row_bytes(),
            data: t.expert(e),
        }
    }
    /// Rows `r0 .. r0 + n` of this matrix.
    pub fn rows(self, r0: usize, n: usize) -> Mat<'a> {
        assert!(r0 + n <= self.n_out, "Mat::rows: {r0}+{n} > {}", self.n_out);
        Mat {
            n_out: n,
            data: &self.data[r0 * self.row_bytes..(r0 + n) * self.row_bytes],
            ..self
        }
    }
    fn row(&self, o: usize) -> &'a [u8] {
        &self.data[o * self.row_bytes..(o + 1) * self.row_bytes]
    }
    /// Bytes of the whole view (for bandwidth accounting).
    pub fn n_bytes(&self) -> usize {
        self.row_bytes * self.n_out
    }
}

/// Tokens per activation tile in a batched matmul (64 tokens × 4096 f32 = 1 MiB, about L2).
const TOKEN_TILE: usize = 64;

/// Rows per rayon task: big enough to amortize scheduling, small enough to balance.
fn rows_per_task(n_out: usize) -> usize {
    (n_out / (rayon::current_num_threads() * 8)).clamp(4, 256)
}

/// `y = W·x` for one token: `x` has `n_in` values, `y` has `n_out`.
pub fn matvec(w: Mat, x: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == w.n_in && y.len() == w.n_out,
        "matvec: x {} / y {} vs {}x{}",
        x.len(),
        y.len(),
        w.n_out,
        w.n_in
    );
    let per = rows_per_task(w.n_out);
    y.par_chunks_mut(per).enumerate().for_each(|(c, ys)| {
        for (i, yo) in ys.iter_mut().enumerate() {
            *yo = ds4_quant::dot_f32(w.ty, w.row(c * per + i), x);
        }
    });
}

/// `y = W·x` with ds4's CPU arithmetic (spec/model.md §3.12, the `--exact` mode): Q8_0 and the
/// routed formats dot against int8 activations quantized once per call (P3a / P3b) with integer
/// block dots; F16 rows sum left to right in f32; F32 rows accumulate in f64.
pub fn matvec_exact(w: Mat, x: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == w.n_in && y.len() == w.n_out,
        "matvec_exact: shapes"
    );
    let per = rows_per_task(w.n_out);
    if ds4_quant::ActFormat::for_weights(w.ty).is_some() {
        let acts = ds4_quant::QuantizedActs::quantize(w.ty, x);
        y.par_chunks_mut(per).enumerate().for_each(|(c, ys)| {
            for (i, yo) in ys.iter_mut().enumerate() {
                *yo = ds4_quant::dot_q(w.ty, w.row(c * per + i), &acts);
            }
        });
        return;
    }
    y.par_chunks_mut(per).enumerate().for_each(|(c, ys)| {
        let mut wrow = vec![0.0f32; w.n_in];
        for (i, yo) in ys.iter_mut().enumerate() {
            ds4_quant::dequantize_row(w.ty, w.row(c * per + i), &mut wrow);
            *yo = if w.ty == TensorType::F32 {
                wrow.iter()
                    .zip(x)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32
            } else {
                dot_seq(&wrow, x)
            };
        }
    });
}

/// `Σ a_i b_i` left to right in f32, each product rounded before the add (spec §3.12).
pub fn dot_seq(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// `y[t] = W·x[t]` for `n_tok` tokens: `x` is `[n_tok][n_in]`, `y` is `[n_tok][n_out]`.
pub fn matmul(w: Mat, x: &[f32], n_tok: usize, y: &mut [f32]) {
    assert!(
        x.len() == n_tok * w.n_in && y.len() == n_tok * w.n_out,
        "matmul: x {} / y {} vs {} tokens of {}x{}",
        x.len(),
        y.len(),
        n_tok,
        w.n_out,
        w.n_in
    );
    if n_tok == 1 {
        return matvec(w, x, y);
    }
    let per = rows_per_task(w.n_out);
    let n_tasks = w.n_out.div_ceil(per);
    // Each task returns its rows for every token ([rows][n_tok]); the scatter below is cheap next
    // to the dots (n_in times fewer values).
    let blocks: Vec<Vec<f32>> = (0..n_tasks)
        .into_par_iter()
        .map(|c| {
            let (r0, r1) = (c * per, ((c + 1) * per).min(w.n_out));
            let mut wrow = vec![0.0f32; w.n_in];
            let mut out = vec![0.0f32; (r1 - r0) * n_tok];
            // Token tiles keep the activations in cache while this task's rows stream past; the
            // task's quantized rows (≤ 256) stay cached across tiles, so memory reads each once.
            for t0 in (0..n_tok).step_by(TOKEN_TILE) {
                let t1 = (t0 + TOKEN_TILE).min(n_tok);
                let xt = &x[t0 * w.n_in..t1 * w.n_in];
                for (i, o) in (r0..r1).enumerate() {
                    ds4_quant::dequantize_row(w.ty, w.row(o), &mut wrow);
                    dot_many(&wrow, xt, &mut out[i * n_tok + t0..i * n_tok + t1]);
                }
            }
            out
        })
        .collect();
    for (c, block) in blocks.iter().enumerate() {
        let r0 = c * per;
        for (i, col) in block.chunks_exact(n_tok).enumerate() {
            for (t, &v) in col.iter().enumerate() {
                y[t * w.n_out + r0 + i] = v;
            }
        }
    }
}

/// `out[t] = w · x[t]` for every token row `x[t]` (`x` is `[out.len()][w.len()]`): the dequantized
/// weight row is loaded once per group of four tokens.
pub fn dot_many(w: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), w.len() * out.len(), "dot_many: shapes");
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: AVX-512F was detected at run time; the shapes are asserted above.
        unsafe { x86::dot_many_avx512(w, x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA were detected at run time; the shapes are asserted above.
        unsafe { x86::dot_many_avx2(w, x, out) };
        return;
    }
    for (o, xt) in out.iter_mut().zip(x.chunks_exact(w.len())) {
        *o = dot(w, xt);
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
fn has_avx512f() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// See [`super::dot_many`]. Four tokens per pass over `w`, sixteen lanes, FMA.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `x.len() == w.len() * out.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_many_avx512(w: &[f32], x: &[f32], out: &mut [f32]) {
        let n = w.len();
        let n16 = n / 16 * 16;
        let wp = w.as_ptr();
        let tail = |xp: *const f32, mut s: f32| {
            for j in n16..n {
                s += *wp.add(j) * *xp.add(j);
            }
            s
        };
        let mut t = 0;
        while t + 4 <= out.len() {
            let xs = [
                x.as_ptr().add(t * n),
                x.as_ptr().add((t + 1) * n),
                x.as_ptr().add((t + 2) * n),
                x.as_ptr().add((t + 3) * n),
            ];
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i < n16 {
                let wv = _mm512_loadu_ps(wp.add(i));
                for k in 0..4 {
                    acc[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs[k].add(i)), acc[k]);
                }
                i += 16;
            }
            for k in 0..4 {
                out[t + k] = tail(xs[k], _mm512_reduce_add_ps(acc[k]));
            }
            t += 4;
        }
        while t < out.len() {
            let xp = x.as_ptr().add(t * n);
            let mut a = _mm512_setzero_ps();
            let mut i = 0;
            while i < n16 {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(xp.add(i)), a);
                i += 16;
            }
            out[t] = tail(xp, _mm512_reduce_add_ps(a));
            t += 1;
        }
    }

    /// Horizontal sum of eight lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// See [`super::dot_many`]. Four tokens per pass over `w`, eight lanes, FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x.len() == w.len() * out.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_many_avx2(w: &[f32], x: &[f32], out: &mut [f32]) {
        let n = w.len();
        let n8 = n / 8 * 8;
        let wp = w.as_ptr();
        let mut t = 0;
        while t + 4 <= out.len() {
            let xs = [
                x.as_ptr().add(t * n),
                x.as_ptr().add((t + 1) * n),
                x.as_ptr().add((t + 2) * n),
                x.as_ptr().add((t + 3) * n),
            ];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < n8 {
                let wv = _mm256_loadu_ps(wp.add(i));
                for k in 0..4 {
                    acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[k].add(i)), acc[k]);
                }
                i += 8;
            }
            for k in 0..4 {
                let mut s = hsum(acc[k]);
                for j in n8..n {
                    s += *wp.add(j) * *xs[k].add(j);
                }
                out[t + k] = s;
            }
            t += 4;
        }
        while t < out.len() {
            let xp = x.as_ptr().add(t * n);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n8 {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(wp.add(i + 8)),
                    _mm256_loadu_ps(xp.add(i + 8)),
                    a1,
                );
                i += 16;
            }
            while i < n8 {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(a0, a1));
            for j in n8..n {
                s += *wp.add(j) * *xp.add(j);
            }
            out[t] = s;
            t += 1;
        }
    }
}

/// f32 dot product with eight partial sums (vectorizes; the order is fixed, so results repeat).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a · x` over equal-length slices.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (v, &xv) in y.iter_mut().zip(x) {
        *v += a * xv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_many_matches_naive_sums_for_odd_shapes() {
        for (n, nt) in [(37usize, 7usize), (64, 4), (5, 3), (256, 9)] {
            let w: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.25 - 1.5).collect();
            let x: Vec<f32> = (0..n * nt)
                .map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8)
                .collect();
            let mut out = vec![0.0f32; nt];
            dot_many(&w, &x, &mut out);
            for t in 0..nt {
                let want: f64 = (0..n).map(|i| w[i] as f64 * x[t * n + i] as f64).sum();
                assert!(
                    (out[t] as f64 - want).abs() < 1e-3,
                    "n {n} t {t}: {} vs {want}",
                    out[t]
                );
            }
        }
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
    }
}
