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
            for (i, o) in (r0..r1).enumerate() {
                ds4_quant::dequantize_row(w.ty, w.row(o), &mut wrow);
                for (t, xt) in x.chunks_exact(w.n_in).enumerate() {
                    out[i * n_tok + t] = dot(&wrow, xt);
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
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
    }
}
