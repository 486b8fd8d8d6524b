//! Primitives of the forward pass (spec/model.md §3.2, §3.4, §3.5 C4, §3.6 F3), each a small named
//! function over slices. No allocation here: callers own every buffer.

use ds4_model::RopeParams;

/// spec/model.md §0: the finite "minus infinity" ds4 uses for masks and empty compressor slots.
/// Never `-inf`: `exp(-inf - (-inf))` is NaN, `exp(NEG - NEG)` is 1 and is masked out by the caller.
pub const NEG: f32 = -1.0e30;

// ---- P1 RMSNorm ------------------------------------------------------------------------------

/// The RMSNorm scale of `x`: `1/sqrt(mean(x²) + eps)` with the sum of squares in f64 (spec P1).
pub fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (ss / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// P1 weighted form: `out_i = (x_i · scale) · w_i`. `out`, `x` and `w` have the same length.
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    assert!(
        out.len() == x.len() && x.len() == w.len(),
        "rms_norm: lengths differ"
    );
    let s = rms_scale(x, eps);
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = (v * s) * wi;
    }
}

/// P1 weighted form in place.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    assert_eq!(x.len(), w.len(), "rms_norm_inplace: lengths differ");
    let s = rms_scale(x, eps);
    for (v, &wi) in x.iter_mut().zip(w) {
        *v = (*v * s) * wi;
    }
}

/// P1 unweighted form in place (HC flat norm, per-head Q norm).
pub fn rms_norm_unweighted_inplace(x: &mut [f32], eps: f32) {
    let s = rms_scale(x, eps);
    for v in x.iter_mut() {
        *v *= s;
    }
}

// ---- P4 f16 round-trip -----------------------------------------------------------------------

/// P4: f32 → f16 (IEEE round to nearest even) → f32, on every element.
pub fn f16_round(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

// ---- P6 FP8 E4M3 simulation ------------------------------------------------------------------

/// `2^e` for an exponent in the normal f32 range, exactly (no libm).
fn pow2(e: i32) -> f32 {
    assert!(
        (-126..=127).contains(&e),
        "pow2: exponent {e} outside the normal range"
    );
    f32::from_bits(((e + 127) as u32) << 23)
}

/// The power-of-two block scale `2^ceil(log2f(amax/max))` (spec P6/P7, pitfall 21: the platform
/// `log2f`, no exponent trick, so a ratio that is an exact power of two gives that power).
fn pow2_scale(amax: f32, max: f32) -> f32 {
    pow2((amax / max).log2().ceil() as i32)
}

/// Value of positive E4M3FN code `i` (0..=126): subnormals `m·2^-9`, else `(1+m/8)·2^(e-7)`.
fn e4m3_value(i: usize) -> f32 {
    let (e, m) = ((i >> 3) as i32, (i & 7) as f32);
    if e == 0 {
        m * pow2(-9)
    } else {
        (1.0 + m / 8.0) * pow2(e - 7)
    }
}

/// Rounds `v` (|v| ≤ 448) to the nearest E4M3FN value, ties to the even code (spec P6).
pub fn e4m3_round(v: f32) -> f32 {
    let a = v.abs();
    // Largest code whose value is ≤ a, by binary search over the monotone code table.
    let (mut lo, mut hi) = (0usize, 126usize);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if e4m3_value(mid) <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut code = lo;
    if code < 126 {
        let (below, above) = (a - e4m3_value(code), e4m3_value(code + 1) - a);
        if above < below || (above == below && (code + 1) % 2 == 0) {
            code += 1;
        }
    }
    e4m3_value(code).copysign(v)
}

/// P6: FP8 E4M3 simulation of dims `[0, n_nope)` in blocks of 64 (the RoPE tail is untouched).
pub fn fp8_kv_sim(row: &mut [f32], n_nope: usize) {
    assert!(
        n_nope.is_multiple_of(64) && n_nope <= row.len(),
        "fp8_kv_sim: n_nope must be a multiple of 64"
    );
    for block in row[..n_nope].chunks_exact_mut(64) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-4);
        let scale = pow2_scale(amax, 448.0);
        for v in block.iter_mut() {
            *v = e4m3_round((*v / scale).clamp(-448.0, 448.0)) * scale;
        }
    }
}

// ---- P7 Hadamard-128 + FP4 E2M1 simulation ---------------------------------------------------

/// P7: in-place fast Walsh–Hadamard transform of 128 values in Sylvester order, scaled by 1/√128.
pub fn hadamard_128(x: &mut [f32]) {
    assert_eq!(
        x.len(),
        128,
        "hadamard_128: the indexer Hadamard is fixed at 128 points"
    );
    let mut s = 1;
    while s < 128 {
        for base in (0..128).step_by(2 * s) {
            for i in base..base + s {
                let (a, b) = (x[i], x[i + s]);
                x[i] = a + b;
                x[i + s] = a - b;
            }
        }
        s *= 2;
    }
    for v in x.iter_mut() {
        *v *= 0.088_388_35_f32;
    }
}

const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Rounds `v` (|v| ≤ 6) to the nearest E2M1 value, ties to the even code (spec P7).
pub fn e2m1_round(v: f32) -> f32 {
    let a = v.abs();
    let mut code = 0;
    while code < 7 && E2M1[code + 1] <= a {
        code += 1;
    }
    if code < 7 {
        let (below, above) = (a - E2M1[code], E2M1[code + 1] - a);
        if above < below || (above == below && (code + 1) % 2 == 0) {
            code += 1;
        }
    }
    E2M1[code].copysign(v)
}

/// P7 FP4 part: E2M1 simulation in blocks of 32 with power-of-two scales.
pub fn fp4_sim(x: &mut [f32]) {
    assert!(
        x.len().is_multiple_of(32),
        "fp4_sim: length must be a multiple of 32"
    );
    for block in x.chunks_exact_mut(32) {
        let amax = block
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(7.052_966e-38);
        let scale = pow2_scale(amax, 6.0);
        for v in block.iter_mut() {
            *v = e2m1_round((*v / scale).clamp(-6.0, 6.0)) * scale;
        }
    }
}

/// P7: the indexer's quantization-aware step on one 128-wide head: Hadamard, then FP4.
pub fn indexer_qat(x: &mut [f32]) {
    hadamard_128(x);
    fp4_sim(x);
}

// ---- P5 RoPE on the head tail ----------------------------------------------------------------

/// Most rotated pairs a head can have (n_rot ≤ 128).
pub const MAX_ROT_PAIRS: usize = 64;

/// cos/sin of every rotated pair at one position, for one layer's RoPE parameters (spec P5).
#[derive(Clone, Copy)]
pub struct RopeAngles {
    n_pairs: usize,
    cos: [f32; MAX_ROT_PAIRS],
    sin: [f32; MAX_ROT_PAIRS],
}

impl RopeAngles {
    /// Angles at absolute position `pos` for `n_rot` rotated dims.
    ///
    /// spec pitfall 22: the angle is computed as `pos · base^(-2k/n_rot)` directly (the GPU form),
    /// in f64, so it stays accurate at large positions; this tracks the float64 model reference.
    pub fn new(pos: f64, n_rot: usize, p: &RopeParams) -> RopeAngles {
        assert!(
            n_rot.is_multiple_of(2) && n_rot / 2 <= MAX_ROT_PAIRS,
            "RopeAngles: n_rot must be even and ≤ 128"
        );
        let n_pairs = n_rot / 2;
        let base = p.base as f64;
        let (low, high) = if p.yarn {
            yarn_corr_dims(n_rot, p)
        } else {
            (0.0, 0.0)
        };
        let mut a = RopeAngles {
            n_pairs,
            cos: [0.0; MAX_ROT_PAIRS],
            sin: [0.0; MAX_ROT_PAIRS],
        };
        for k in 0..n_pairs {
            let theta_ext = pos * base.powf(-2.0 * k as f64 / n_rot as f64);
            let theta = if p.yarn {
                let theta_int = theta_ext * p.freq_scale as f64;
                let ramp = yarn_ramp(k, low, high);
                theta_int * (1.0 - ramp) + theta_ext * ramp
            } else {
                theta_ext * p.freq_scale as f64
            };
            a.cos[k] = theta.cos() as f32;
            a.sin[k] = theta.sin() as f32;
        }
        a
    }

    /// Angles as ds4's CPU computes them (spec §3.12, `--exact` mode): f32 throughout, `θ_ext`
    /// from `(float)pos` times `powf(base, −2/n_rot)` once per pair, YaRN mixed as
    /// `θ_int·(1−ramp) + θ_ext·ramp`, then glibc `cosf`/`sinf`.
    pub fn new_exact(pos: usize, n_rot: usize, p: &RopeParams) -> RopeAngles {
        assert!(
            n_rot.is_multiple_of(2) && n_rot / 2 <= MAX_ROT_PAIRS,
            "RopeAngles: n_rot must be even and ≤ 128"
        );
        let n_pairs = n_rot / 2;
        let step = p.base.powf(-2.0 / n_rot as f32);
        let (low, high) = if p.yarn {
            yarn_corr_dims(n_rot, p)
        } else {
            (0.0, 0.0)
        };
        let (low, high) = (low as f32, high as f32);
        let mut a = RopeAngles {
            n_pairs,
            cos: [0.0; MAX_ROT_PAIRS],
            sin: [0.0; MAX_ROT_PAIRS],
        };
        let mut theta_ext = pos as f32;
        for k in 0..n_pairs {
            let theta_int = p.freq_scale * theta_ext;
            let theta = if p.yarn {
                let y = (k as f32 - low) / (high - low).max(0.001);
                let ramp = 1.0 - y.clamp(0.0, 1.0);
                theta_int * (1.0 - ramp) + theta_ext * ramp
            } else {
                theta_int
            };
            a.cos[k] = theta.cos();
            a.sin[k] = theta.sin();
            theta_ext *= step;
        }
        a
    }

    /// Rotates the last `2·n_pairs` dims of `x` by +θ (or −θ when `inverse`), adjacent pairs.
    pub fn apply(&self, x: &mut [f32], inverse: bool) {
        let tail = x.len() - 2 * self.n_pairs;
        let sign = if inverse { -1.0 } else { 1.0 };
        for (k, pair) in x[tail..].chunks_exact_mut(2).enumerate() {
            let (c, s) = (self.cos[k], sign * self.sin[k]);
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

/// YaRN correction dims `(low, high)` as pair indices (spec P5: 15 and 25 for the real model).
pub fn yarn_corr_dims(n_rot: usize, p: &RopeParams) -> (f64, f64) {
    let corr = |beta: f64| {
        n_rot as f64 * (p.orig_ctx as f64 / (beta * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * (p.base as f64).ln())
    };
    let low = corr(p.beta_fast as f64).floor().max(0.0);
    let high = corr(p.beta_slow as f64).ceil().min(n_rot as f64 - 1.0);
    (low, high)
}

/// YaRN ramp for pair `k`: 1 (extrapolate) below `low`, 0 (interpolate) above `high`.
pub fn yarn_ramp(k: usize, low: f64, high: f64) -> f64 {
    let y = (k as f64 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

// ---- §3.4 Hyper-connections ------------------------------------------------------------------

/// Most HC streams supported (ds4 uses 4).
pub const MAX_HC: usize = 8;

/// σ as the HC split writes it, `1/(1+e^-z)` (spec P8).
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Numerically stable σ (output head and silu, spec P8).
pub fn sigmoid_stable(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// silu(z) = z·σ(z), with the stable σ.
pub fn silu(z: f32) -> f32 {
    z * sigmoid_stable(z)
}

/// softplus with ds4's ±20 thresholds (spec §0).
pub fn softplus(z: f32) -> f32 {
    if z > 20.0 {
        z
    } else if z < -20.0 {
        z.exp()
    } else {
        z.exp().ln_1p()
    }
}

/// A layer's HC mix for one token: pre weights, post weights, combine matrix `comb[r][c]`
/// (row = source stream, column = destination stream). Small and on the stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct HcMix {
    pub n_hc: usize,
    pub pre: [f32; MAX_HC],
    pub post: [f32; MAX_HC],
    pub comb: [[f32; MAX_HC]; MAX_HC],
}

// Index loops read like the spec's M[r][c] formulas.
#[allow(clippy::needless_range_loop)]
/// §3.4 steps 3-5: splits the mixer output `m` (hc_mix values) into pre, post and the
/// Sinkhorn-normalised combine matrix.
pub fn hc_split(
    m: &[f32],
    scale: &[f32],
    base: &[f32],
    n_hc: usize,
    sinkhorn_iters: usize,
    eps: f32,
) -> HcMix {
    assert!(n_hc <= MAX_HC, "hc_split: at most {MAX_HC} streams");
    assert!(
        m.len() == 2 * n_hc + n_hc * n_hc && base.len() == m.len() && scale.len() == 3,
        "hc_split: shapes"
    );
    let mut mix = HcMix {
        n_hc,
        pre: [0.0; MAX_HC],
        post: [0.0; MAX_HC],
        comb: [[0.0; MAX_HC]; MAX_HC],
    };
    for h in 0..n_hc {
        mix.pre[h] = sigmoid(m[h] * scale[0] + base[h]) + eps;
        mix.post[h] = 2.0 * sigmoid(m[n_hc + h] * scale[1] + base[n_hc + h]);
    }
    let c = &mut mix.comb;
    for r in 0..n_hc {
        let z = |j: usize| m[2 * n_hc + n_hc * r + j] * scale[2] + base[2 * n_hc + n_hc * r + j];
        let mx = (0..n_hc).map(z).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for j in 0..n_hc {
            c[r][j] = (z(j) - mx).exp();
            sum += c[r][j];
        }
        let inv = 1.0 / sum;
        for j in 0..n_hc {
            c[r][j] = c[r][j] * inv + eps;
        }
    }
    let col_norm = |c: &mut [[f32; MAX_HC]; MAX_HC]| {
        for j in 0..n_hc {
            // ds4's CPU multiplies by the reciprocal (spec §3.4 step 5).
            let inv = 1.0 / ((0..n_hc).map(|r| c[r][j]).sum::<f32>() + eps);
            for row in c.iter_mut().take(n_hc) {
                row[j] *= inv;
            }
        }
    };
    col_norm(c);
    for _ in 1..sinkhorn_iters {
        for row in c.iter_mut().take(n_hc) {
            let inv = 1.0 / (row[..n_hc].iter().sum::<f32>() + eps);
            for v in row[..n_hc].iter_mut() {
                *v *= inv;
            }
        }
        col_norm(c);
    }
    mix
}

/// §3.4 step 6: `u[d] = Σ_h w_h · X[h][d]`, h ascending. `x` is stream-major `[n_hc][n]`.
pub fn hc_weighted_sum(u: &mut [f32], x: &[f32], w: &[f32]) {
    let n = u.len();
    assert_eq!(x.len(), w.len() * n, "hc_weighted_sum: shapes");
    u.copy_from_slice(&x[..n]);
    for v in u.iter_mut() {
        *v *= w[0];
    }
    for (h, &wh) in w.iter().enumerate().skip(1) {
        for (v, &xv) in u.iter_mut().zip(&x[h * n..(h + 1) * n]) {
            *v += wh * xv;
        }
    }
}

/// §3.4 HC post: `X_new[c][d] = post_c·y[d] + Σ_r comb[r][c]·X[r][d]`, in place over `x`.
pub fn hc_post(x: &mut [f32], y: &[f32], mix: &HcMix) {
    let (n, n_hc) = (y.len(), mix.n_hc);
    assert_eq!(x.len(), n_hc * n, "hc_post: shapes");
    let mut col = [0.0f32; MAX_HC];
    for d in 0..n {
        for (c, out) in col.iter_mut().enumerate().take(n_hc) {
            let mut acc = mix.post[c] * y[d];
            for r in 0..n_hc {
                acc += mix.comb[r][c] * x[r * n + d];
            }
            *out = acc;
        }
        for (c, &v) in col.iter().enumerate().take(n_hc) {
            x[c * n + d] = v;
        }
    }
}

// ---- §3.5 C4 compressor pooling --------------------------------------------------------------

/// §3.5 C4: per-dimension softmax pooling of a compressor frontier into `out` (D values).
///
/// `kv` and `score` are `coff·R` rows of `coff·D`. For R = 4 (coff = 2) the candidates of dim j are
/// the previous window's first-half columns (rows 0..4, column j) and the current window's second
/// half (rows 4..8, column D+j); otherwise rows 0..R, column j. A dim whose best score is ≤ −5e29
/// (no candidate written yet) pools to 0 (spec pitfall 20).
pub fn compressor_pool(out: &mut [f32], kv: &[f32], score: &[f32], ratio: usize, overlap: bool) {
    let d_out = out.len();
    let (coff, width) = if overlap { (2, 2 * d_out) } else { (1, d_out) };
    assert!(
        kv.len() == coff * ratio * width && score.len() == kv.len(),
        "compressor_pool: shapes"
    );
    for (j, o) in out.iter_mut().enumerate() {
        // Candidate i of the current window, and (R = 4) of the previous window's first half.
        let cur = |i: usize| {
            if overlap {
                (ratio + i) * width + d_out + j
            } else {
                i * width + j
            }
        };
        let prev = |i: usize| i * width + j;
        let mut mx = f32::NEG_INFINITY;
        for i in 0..ratio {
            mx = mx.max(score[cur(i)]);
            if overlap {
                mx = mx.max(score[prev(i)]);
            }
        }
        if mx <= -5e29 {
            *o = 0.0;
            continue;
        }
        // ds4's order (spec §3.5 C4): per i, the previous-window term then the current one; for
        // R = 4 the denominator takes their sum as one term.
        let (mut num, mut den) = (0.0f32, 0.0f32);
        for i in 0..ratio {
            let wc = (score[cur(i)] - mx).exp();
            if overlap {
                let wp = (score[prev(i)] - mx).exp();
                den += wp + wc;
                num += wp * kv[prev(i)];
            } else {
                den += wc;
            }
            num += wc * kv[cur(i)];
        }
        *o = num / den;
    }
}

// ---- top-k ---------------------------------------------------------------------------------

/// Indices of the `k` largest `scores`, highest first; equal scores go to the lower index
/// (ds4's repeated strict-`>` maxima). `k` must not exceed `scores.len()`.
pub fn top_k_into(out: &mut Vec<usize>, scores: &[f32], k: usize) {
    assert!(
        k <= scores.len(),
        "top_k: k = {k} > {} candidates",
        scores.len()
    );
    out.clear();
    out.extend(0..scores.len());
    let order = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < out.len() && k > 0 {
        out.select_nth_unstable_by(k - 1, order);
    }
    out.truncate(k);
    out.sort_unstable_by(order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope_compressed() -> RopeParams {
        RopeParams {
            base: 160000.0,
            freq_scale: 1.0 / 16.0,
            yarn: true,
            orig_ctx: 65536,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }

    #[test]
    fn rms_norm_uses_mean_square_and_weight() {
        let x = [3.0f32, 4.0];
        let mut out = [0.0; 2];
        rms_norm(&mut out, &x, &[1.0, 2.0], 0.0);
        let s = 1.0 / 12.5f32.sqrt();
        assert!(
            (out[0] - 3.0 * s).abs() < 1e-6 && (out[1] - 8.0 * s).abs() < 1e-6,
            "{out:?}"
        );
    }

    #[test]
    fn f16_round_ties_to_even() {
        // 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): even mantissa is 1.0.
        let mut x = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)];
        f16_round(&mut x);
        assert_eq!(x, [1.0, 1.0 + 2.0 * 2f32.powi(-10)]);
    }

    #[test]
    fn e4m3_codes_and_ties() {
        assert_eq!(e4m3_value(126), 448.0);
        assert_eq!(e4m3_value(1), 2f32.powi(-9));
        assert_eq!(e4m3_value(8), 2f32.powi(-6));
        assert_eq!(e4m3_round(448.0), 448.0);
        assert_eq!(e4m3_round(-1.0), -1.0);
        // Between 1.0 (code 56) and 1.125 (code 57): the tie goes to even code 56.
        assert_eq!(e4m3_round(1.0625), 1.0);
        // Between 1.125 (57) and 1.25 (58): tie goes to 58.
        assert_eq!(e4m3_round(1.1875), 1.25);
        assert_eq!(e4m3_round(1.07), 1.125);
        assert_eq!(e4m3_round(416.0), 416.0);
        // 432 is the tie between 416 (code 125) and 448 (126): even wins.
        assert_eq!(e4m3_round(432.0), 448.0);
    }

    #[test]
    fn fp8_sim_uses_power_of_two_scale_and_leaves_tail() {
        let mut row = vec![0.0f32; 128];
        row[0] = 896.0; // amax/448 = 2 exactly: scale 2, 896 → 448·2.
        row[1] = 3.0; // 3/2 = 1.5 exact E4M3.
        row[2] = 1.03; // 0.515 → nearest E4M3 at scale 2 (0.5 → 1.0).
        row[100] = 1.234_567; // tail, untouched
        fp8_kv_sim(&mut row, 64);
        assert_eq!(row[0], 896.0);
        assert_eq!(row[1], 3.0);
        assert_eq!(row[2], 1.0);
        assert_eq!(row[100], 1.234_567);
    }

    #[test]
    fn hadamard_matches_definition() {
        let mut x: Vec<f32> = (0..128).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let orig = x.clone();
        hadamard_128(&mut x);
        for k in [0usize, 1, 5, 77, 127] {
            let want: f32 = (0..128)
                .map(|j| {
                    if (j & k).count_ones() % 2 == 0 {
                        orig[j]
                    } else {
                        -orig[j]
                    }
                })
                .sum::<f32>()
                / 128f32.sqrt();
            assert!((x[k] - want).abs() < 1e-4, "k={k}: {} vs {want}", x[k]);
        }
    }

    #[test]
    fn e2m1_rounding_ties_to_even() {
        assert_eq!(e2m1_round(0.25), 0.0); // tie 0 / 0.5 → code 0
        assert_eq!(e2m1_round(0.75), 1.0); // tie 0.5 / 1 → code 2
        assert_eq!(e2m1_round(2.5), 2.0); // tie 2 / 3 → code 4
        assert_eq!(e2m1_round(5.0), 4.0); // tie 4 / 6 → code 6 (4) is even
    }

    #[test]
    fn fp4_sim_scales_blocks() {
        let mut x = vec![0.0f32; 32];
        x[0] = 12.0; // amax/6 = 2 → scale 2 → 6·2
        x[1] = 5.0; // 2.5 → tie 2 / 3 → 2 (even code 4) → 4
        fp4_sim(&mut x);
        assert_eq!(x[0], 12.0);
        assert_eq!(x[1], 4.0);
    }

    #[test]
    fn yarn_corr_dims_match_appendix_b() {
        let (low, high) = yarn_corr_dims(64, &rope_compressed());
        assert_eq!((low, high), (15.0, 25.0));
        let ramps: Vec<f64> = (14..27)
            .map(|k| (yarn_ramp(k, low, high) * 10.0).round() / 10.0)
            .collect();
        assert_eq!(
            ramps,
            [1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
        );
    }

    #[test]
    fn rope_rotates_last_dims_in_adjacent_pairs_and_inverts() {
        let p = RopeParams {
            base: 10000.0,
            freq_scale: 1.0,
            yarn: false,
            orig_ctx: 65536,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        let a = RopeAngles::new(3.0, 64, &p);
        let mut x: Vec<f32> = (0..128).map(|i| i as f32 * 0.01).collect();
        let orig = x.clone();
        a.apply(&mut x, false);
        assert_eq!(&x[..64], &orig[..64], "head dims must be untouched");
        // pair 0 rotates by exactly pos radians
        let (c, s) = (3f32.cos(), 3f32.sin());
        assert!((x[64] - (orig[64] * c - orig[65] * s)).abs() < 1e-6);
        assert!((x[65] - (orig[64] * s + orig[65] * c)).abs() < 1e-6);
        a.apply(&mut x, true);
        for (u, v) in x.iter().zip(&orig) {
            assert!((u - v).abs() < 1e-5);
        }
    }

    #[test]
    fn yarn_angles_blend_interpolated_and_extrapolated() {
        let p = rope_compressed();
        let pos = 1000.0;
        let a = RopeAngles::new(pos, 64, &p);
        // pair 0 (ramp 1): pure θ_ext = pos; pair 31 (ramp 0): θ_ext/16.
        assert!((a.cos[0] - (pos as f32).cos()).abs() < 1e-5);
        let t31 = pos * 160000f64.powf(-62.0 / 64.0) / 16.0;
        assert!((a.sin[31] as f64 - t31.sin()).abs() < 1e-6);
    }

    #[test]
    fn sinkhorn_columns_and_rows_sum_to_one() {
        let m: Vec<f32> = (0..24).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
        let base: Vec<f32> = (0..24).map(|i| (i % 3) as f32 * 0.1).collect();
        let mix = hc_split(&m, &[1.0, 0.5, 2.0], &base, 4, 20, 1e-6);
        for c in 0..4 {
            let col: f32 = (0..4).map(|r| mix.comb[r][c]).sum();
            let row: f32 = (0..4).map(|j| mix.comb[c][j]).sum();
            assert!(
                (col - 1.0).abs() < 1e-4 && (row - 1.0).abs() < 1e-3,
                "col {col} row {row}"
            );
        }
        assert!((mix.pre[0] - (sigmoid(m[0] + base[0]) + 1e-6)).abs() < 1e-7);
        assert!((mix.post[1] - 2.0 * sigmoid(m[5] * 0.5 + base[5])).abs() < 1e-7);
    }

    #[test]
    fn hc_post_reads_rows_as_sources() {
        let mut mix = HcMix {
            n_hc: 2,
            pre: [0.0; MAX_HC],
            post: [0.0; MAX_HC],
            comb: [[0.0; MAX_HC]; MAX_HC],
        };
        mix.comb[0][1] = 1.0; // source 0 → destination 1
        mix.post[0] = 1.0;
        let mut x = vec![10.0, 20.0];
        hc_post(&mut x, &[5.0], &mix);
        assert_eq!(x, [5.0, 10.0]);
    }

    #[test]
    fn pool_overlap_reads_prev_first_half_and_current_second_half() {
        // R = 4, D = 1: width 2, 8 rows.
        let mut kv = vec![0.0f32; 16];
        let mut sc = vec![NEG; 16];
        for i in 0..4 {
            kv[i * 2] = 1.0; // previous window, first half: value 1
            sc[i * 2] = 0.0;
            kv[(4 + i) * 2 + 1] = 3.0; // current window, second half: value 3
            sc[(4 + i) * 2 + 1] = 0.0;
            kv[(4 + i) * 2] = 100.0; // current first half: not a candidate now
            sc[(4 + i) * 2] = 50.0;
        }
        let mut out = [0.0f32];
        compressor_pool(&mut out, &kv, &sc, 4, true);
        assert!((out[0] - 2.0).abs() < 1e-6, "{out:?}");
        // First window: previous half is NEG and contributes nothing.
        for i in 0..4 {
            sc[i * 2] = NEG;
        }
        compressor_pool(&mut out, &kv, &sc, 4, true);
        assert!((out[0] - 3.0).abs() < 1e-6);
        // Nothing written: pools to 0.
        compressor_pool(&mut out, &[0.0; 16], &[NEG; 16], 4, true);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn top_k_prefers_lower_index_on_ties() {
        let mut out = Vec::new();
        top_k_into(&mut out, &[1.0, 3.0, 3.0, 0.5, 3.0, 2.0], 3);
        assert_eq!(out, [1, 2, 4]);
        top_k_into(&mut out, &[1.0, 3.0, 3.0, 0.5, 3.0, 2.0], 2);
        assert_eq!(out, [1, 2]);
        top_k_into(&mut out, &[5.0, 1.0], 2);
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn softplus_thresholds() {
        assert_eq!(softplus(25.0), 25.0);
        assert_eq!(softplus(-25.0), (-25f32).exp());
        assert!((softplus(0.0) - 2f32.ln()).abs() < 1e-7);
    }
}
