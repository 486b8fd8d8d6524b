//! Next-token sampler (spec/server.md §4.4), shared by the CLI and the server.
//!
//! The reference algorithm is reproduced exactly, including its RNG (xorshift64*) and its float
//! draw, so that a seeded run can be compared token for token with another implementation that
//! follows the spec. Two paths, as the spec describes them:
//!
//! * no top_k and top_p = 1 (the default): keep every token whose probability relative to the
//!   best one is at least `min_p` and sample in vocabulary order, with no sort at all;
//! * otherwise: the candidates (the top_k best, or every finite logit) sorted by logit, truncated
//!   by `min_p` and by the cumulative mass `top_p`, then sampled in that order.
//!
//! `force_greedy` is the per-call switch for DSML syntax positions (spec/server.md §3.3): the
//! caller's tracker decides, the sampler only obeys, so this crate needs no DSML knowledge.
//! Every buffer is kept in the [`Sampler`] and reused, so sampling allocates nothing per token.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// spec/server.md §4.4: top_k is capped at 1024.
pub const MAX_TOP_K: i32 = 1024;

/// The four sampling knobs. `Default` is spec/server.md §4.4 (also the CLI defaults of §6.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` means greedy (argmax, first maximum).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; values outside that range mean 1 (off).
    pub top_p: f32,
    /// Minimum probability relative to the most likely token; `< 0` means 0 (off).
    pub min_p: f32,
    /// Keep only the `top_k` best logits; `<= 0` means off, capped at [`MAX_TOP_K`].
    pub top_k: i32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            min_p: 0.05,
            top_k: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0 (the other knobs are then irrelevant).
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        min_p: 0.0,
        top_k: 0,
    };

    /// True when these parameters always pick the argmax.
    pub fn is_greedy(&self) -> bool {
        // A NaN temperature is treated as greedy rather than sampling garbage.
        self.temperature <= 0.0 || self.temperature.is_nan()
    }

    /// The parameters with spec/server.md §4.4's clamps applied: top_p outside (0, 1] -> 1,
    /// min_p < 0 -> 0, top_k > 1024 -> 1024, top_k < 0 -> 0.
    pub fn sanitized(&self) -> SamplingParams {
        let top_p = if self.top_p > 0.0 && self.top_p <= 1.0 {
            self.top_p
        } else {
            1.0
        };
        let min_p = if self.min_p > 0.0 { self.min_p } else { 0.0 };
        SamplingParams {
            temperature: self.temperature,
            top_p,
            min_p,
            top_k: self.top_k.clamp(0, MAX_TOP_K),
        }
    }
}

// ---- RNG -------------------------------------------------------------------------------------

/// xorshift64*, exactly as spec/server.md §4.4 gives it, so seeded runs match the reference.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A zero state would stay zero forever; the spec replaces it with this constant.
    const ZERO_SEED_REPLACEMENT: u64 = 0x9E37_79B9_7F4A_7C15;

    /// An RNG seeded with `seed` (0 is replaced, as in the reference).
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: if seed == 0 {
                Self::ZERO_SEED_REPLACEMENT
            } else {
                seed
            },
        }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in [0, 1) with 24 bits of resolution (bits 40..63 of the output).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) & 0xFF_FFFF) as f32 / 16_777_216.0
    }
}

/// A seed for runs where the user gave none: time, a process-wide counter and an address, as the
/// reference does, so that two requests in the same nanosecond still differ. Never 0.
pub fn seed_from_entropy() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let local = 0u8;
    let addr = std::ptr::addr_of!(local) as usize as u64;
    // Mix so nearby inputs give unrelated seeds (splitmix64 finalizer).
    let mut z = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ addr.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.max(1)
}

// ---- Sampling --------------------------------------------------------------------------------

/// Index of the first maximum of `logits` (NaN never wins); 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best_logit = l;
            best = i;
        }
    }
    best as u32
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
    prob: f32,
}

/// Logit descending, then id ascending: a total order, so ties are broken the same way on every
/// run and every platform.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// How many of the sorted `cands` the top_p walk keeps (always at least one), and their mass.
/// Returns `cands.len()` when the mass never reached `top_p` inside the slice.
fn top_p_prefix(cands: &[Candidate], top_p: f32) -> (usize, f32) {
    let mut cum = 0.0f32;
    let mut n_kept = 0usize;
    for c in cands {
        if n_kept > 0 && cum >= top_p {
            break;
        }
        cum += c.prob;
        n_kept += 1;
    }
    (n_kept, cum)
}

/// A seeded sampler with its own scratch buffers (sized on first use, then reused).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Candidates of the sorted path.
    cands: Vec<Candidate>,
}

impl Sampler {
    /// A sampler with `params` (sanitized per §4.4) and an RNG seeded with `seed`.
    pub fn new(params: SamplingParams, seed: u64) -> Sampler {
        Sampler {
            params: params.sanitized(),
            rng: Rng::new(seed),
            cands: Vec::new(),
        }
    }

    /// The effective (sanitized) parameters.
    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// Change the parameters for the next calls; the RNG stream continues.
    pub fn set_params(&mut self, params: SamplingParams) {
        self.params = params.sanitized();
    }

    /// Restart the RNG stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Sample one token id from `logits` with the current parameters.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_with(logits, false)
    }

    /// Sample one token id; `force_greedy` makes this one call an argmax regardless of the
    /// parameters (DSML syntax positions, spec/server.md §3.3). A greedy call draws nothing from
    /// the RNG, so forcing some positions greedy does not change the draws of the others.
    pub fn sample_with(&mut self, logits: &[f32], force_greedy: bool) -> u32 {
        let p = self.params;
        if force_greedy || p.is_greedy() {
            return argmax(logits);
        }
        let Some(max) = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .reduce(f32::max)
        else {
            // Nothing finite to sample from: the argmax rule still gives a defined answer.
            return argmax(logits);
        };
        if p.top_k == 0 && p.top_p >= 1.0 {
            self.sample_min_p(logits, max)
        } else {
            self.sample_sorted(logits)
        }
    }

    /// §4.4 fast path: keep tokens with `exp((logit - max)/T) >= min_p` and draw in vocab order.
    fn sample_min_p(&mut self, logits: &[f32], max: f32) -> u32 {
        let SamplingParams {
            temperature: t,
            min_p,
            ..
        } = self.params;
        // Most of the vocabulary is far below the floor: compare logits against the floor in log
        // space first and compute exp only near or above it. The 1e-3 margin (0.1% in
        // probability) is far wider than exp's rounding, so the exact `p >= min_p` test below
        // still decides every token, and the kept set is the reference's.
        let cutoff = if min_p > 0.0 {
            max + t * (min_p.ln() - 1e-3)
        } else {
            f32::NEG_INFINITY
        };
        self.cands.clear();
        let mut sum = 0.0f32;
        for (i, &l) in logits.iter().enumerate() {
            if !(l.is_finite() && l >= cutoff) {
                continue;
            }
            let p = ((l - max) / t).exp();
            if p >= min_p {
                self.cands.push(Candidate {
                    id: i as u32,
                    logit: l,
                    prob: p,
                });
                sum += p;
            }
        }
        // Candidates were pushed in vocabulary order: the draw walks them in that order.
        let r = self.rng.next_f32() * sum;
        let mut acc = 0.0f32;
        for c in &self.cands {
            acc += c.prob;
            if r < acc {
                return c.id;
            }
        }
        // Rounding can leave r == sum; the last kept token is then the proportional answer.
        self.cands.last().map_or_else(|| argmax(logits), |c| c.id)
    }

    /// §4.4 general path: top_k candidates (or all finite), sorted by logit, cut by min_p and
    /// top_p, drawn in sorted order.
    fn sample_sorted(&mut self, logits: &[f32]) -> u32 {
        let SamplingParams {
            temperature: t,
            top_p,
            min_p,
            top_k,
        } = self.params;
        self.cands.clear();
        self.cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &logit)| Candidate {
                    id: i as u32,
                    logit,
                    prob: 0.0,
                }),
        );
        let k = top_k as usize;
        if k > 0 && k < self.cands.len() {
            self.cands.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cands.truncate(k);
        }
        let max = self
            .cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for c in &mut self.cands {
            c.prob = ((c.logit - max) / t).exp();
            sum += c.prob;
        }
        // Probabilities are normalized over the whole candidate set *before* the cuts, so top_p
        // is a fraction of the candidates' mass. The top candidate has prob 1/sum; every one
        // below top*min_p would stop the walk anyway, so dropping them before the sort changes
        // nothing but the sort's cost (usually from 129280 entries to a handful).
        let top = 1.0 / sum;
        let floor = top * min_p;
        self.cands.retain_mut(|c| {
            c.prob /= sum;
            c.prob >= floor
        });
        // The walk stops once the mass reaches top_p, usually within the first few hundred
        // candidates: sort a growing prefix (selected in O(n)) instead of the whole vocabulary.
        let mut m = 256usize;
        let (n_kept, cum) = loop {
            if m >= self.cands.len() {
                self.cands.sort_unstable_by(by_logit_desc);
                break top_p_prefix(&self.cands, top_p);
            }
            self.cands.select_nth_unstable_by(m - 1, by_logit_desc);
            self.cands[..m].sort_unstable_by(by_logit_desc);
            let (n, cum) = top_p_prefix(&self.cands[..m], top_p);
            if n < m {
                break (n, cum);
            }
            m *= 4;
        };
        let kept = &self.cands[..n_kept.max(1)];
        let r = self.rng.next_f32() * cum;
        let mut acc = 0.0f32;
        for c in kept {
            acc += c.prob;
            if r < acc {
                return c.id;
            }
        }
        kept[kept.len() - 1].id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draw `n` samples and count how often each id came out.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut h = vec![0usize; logits.len()];
        for _ in 0..n {
            h[s.sample(logits) as usize] += 1;
        }
        h
    }

    /// Logits whose softmax (T = 1) is exactly `probs`.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn assert_freq(h: &[usize], n: usize, expected: &[f64]) {
        for (i, (&c, &e)) in h.iter().zip(expected).enumerate() {
            let f = c as f64 / n as f64;
            // 20000 draws: the standard error of a frequency is at most 0.0036; 0.015 is ~4 sigma.
            assert!(
                (f - e).abs() < 0.015,
                "token {i}: frequency {f:.4}, expected {e:.4} (hist {h:?})"
            );
        }
    }

    /// spec/server.md §4.4 written out literally (every exp, a full sort), as the oracle for the
    /// shortcuts the sampler takes.
    fn reference_sample(logits: &[f32], p: SamplingParams, rng: &mut Rng) -> u32 {
        let p = p.sanitized();
        if p.is_greedy() {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if p.top_k == 0 && p.top_p >= 1.0 {
            let probs: Vec<f32> = logits
                .iter()
                .map(|&l| {
                    if l.is_finite() {
                        ((l - max) / p.temperature).exp()
                    } else {
                        0.0
                    }
                })
                .map(|x| if x >= p.min_p && x > 0.0 { x } else { 0.0 })
                .collect();
            let sum: f32 = probs.iter().filter(|&&x| x > 0.0).fold(0.0, |a, &x| a + x);
            let r = rng.next_f32() * sum;
            let mut acc = 0.0f32;
            let mut last = 0;
            for (i, &x) in probs.iter().enumerate() {
                if x > 0.0 {
                    acc += x;
                    last = i;
                    if r < acc {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        c.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        if p.top_k > 0 {
            c.truncate(p.top_k as usize);
        }
        let top = c[0].1;
        let e: Vec<f32> = c
            .iter()
            .map(|x| ((x.1 - top) / p.temperature).exp())
            .collect();
        let sum: f32 = e.iter().sum();
        let q: Vec<f32> = e.iter().map(|x| x / sum).collect();
        let mut cum = 0.0f32;
        let mut n = 0;
        for &qi in &q {
            if n > 0 && (cum >= p.top_p || qi < q[0] * p.min_p) {
                break;
            }
            cum += qi;
            n += 1;
        }
        let r = rng.next_f32() * cum;
        let mut acc = 0.0f32;
        for i in 0..n {
            acc += q[i];
            if r < acc {
                return c[i].0;
            }
        }
        c[n - 1].0
    }

    #[test]
    fn shortcuts_pick_the_same_tokens_as_the_literal_spec() {
        let mut g = Rng::new(77);
        // 5000 tokens: big enough that the top_p walk outgrows the first 256-candidate prefix.
        let logits: Vec<f32> = (0..5000).map(|_| g.next_f32() * 6.0).collect();
        let cases = [
            SamplingParams::default(),
            SamplingParams {
                min_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: 0.3,
                min_p: 0.2,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.9,
                min_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 0.5,
                min_p: 0.05,
                temperature: 2.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_k: 50,
                top_p: 0.95,
                ..SamplingParams::default()
            },
        ];
        for params in cases {
            let mut s = Sampler::new(params, 1234);
            let mut r = Rng::new(1234);
            for i in 0..300 {
                assert_eq!(
                    s.sample(&logits),
                    reference_sample(&logits, params, &mut r),
                    "draw {i} with {params:?}"
                );
            }
        }
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let d = SamplingParams::default();
        assert_eq!(
            (d.temperature, d.top_p, d.min_p, d.top_k),
            (1.0, 1.0, 0.05, 0)
        );
    }

    #[test]
    fn out_of_range_knobs_are_clamped_as_the_spec_says() {
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 0.0,
            min_p: -0.5,
            top_k: 5000,
        }
        .sanitized();
        assert_eq!(
            (p.temperature, p.top_p, p.min_p, p.top_k),
            (0.7, 1.0, 0.0, MAX_TOP_K)
        );
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 1.5,
            min_p: 0.1,
            top_k: -3,
        }
        .sanitized();
        assert_eq!((p.top_p, p.min_p, p.top_k), (1.0, 0.1, 0));
    }

    #[test]
    fn rng_matches_the_reference_xorshift64_star() {
        // Independent values (Python: x ^= x >> 12; x ^= x << 25 & M; x ^= x >> 27; x * C & M).
        let mut r = Rng::new(1);
        assert_eq!(r.next_u64(), 0x47E4_CE4B_896C_DD1D);
        assert_eq!(r.next_u64(), 0xABCF_A6A8_E079_651D);
        let mut z = Rng::new(0);
        let mut c = Rng::new(0x9E37_79B9_7F4A_7C15);
        assert_eq!(
            z.next_u64(),
            c.next_u64(),
            "seed 0 must be replaced by the spec constant"
        );
        let mut f = Rng::new(1);
        assert_eq!(
            f.next_f32(),
            (0x47E4_CE4B_896C_DD1Du64 >> 40) as f32 / 16_777_216.0
        );
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_ignores_the_seed() {
        let logits = [0.5, 3.0, -1.0, 3.0, f32::NAN];
        for seed in [1, 2, 99] {
            let mut s = Sampler::new(SamplingParams::GREEDY, seed);
            assert_eq!(s.sample(&logits), 1);
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, -2.0]), 2);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32) * 0.05).collect();
        let params = SamplingParams {
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(params, seed);
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let sorted = SamplingParams {
            top_p: 0.9,
            top_k: 20,
            ..params
        };
        let run_sorted = |seed| {
            let mut s = Sampler::new(sorted, seed);
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run_sorted(7), run_sorted(7));
    }

    #[test]
    fn temperature_one_reproduces_the_softmax() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let params = SamplingParams {
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, 11);
        let n = 20000;
        assert_freq(
            &histogram(&mut s, &logits_of(&probs), n),
            n,
            &[0.5, 0.3, 0.15, 0.05],
        );
    }

    #[test]
    fn higher_temperature_flattens_lower_sharpens() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let logits = logits_of(&probs);
        let n = 20000;
        for t in [0.5f32, 2.0] {
            let params = SamplingParams {
                temperature: t,
                min_p: 0.0,
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(params, 5);
            let w: Vec<f64> = probs
                .iter()
                .map(|&p| (p as f64).powf(1.0 / t as f64))
                .collect();
            let z: f64 = w.iter().sum();
            let expected: Vec<f64> = w.iter().map(|x| x / z).collect();
            assert_freq(&histogram(&mut s, &logits, n), n, &expected);
        }
    }

    #[test]
    fn min_p_drops_tokens_below_the_relative_floor() {
        // Relative to the top (0.5): 0.6, 0.3, 0.1. min_p 0.25 keeps the first three.
        let probs = [0.5, 0.3, 0.15, 0.05];
        let params = SamplingParams {
            min_p: 0.25,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, 3);
        let n = 20000;
        let h = histogram(&mut s, &logits_of(&probs), n);
        assert_eq!(h[3], 0, "token below min_p was sampled: {h:?}");
        assert_freq(&h, n, &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]);
        // The same cut on the sorted path (top_k on, but larger than the vocab).
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 100,
                ..params
            },
            3,
        );
        let h = histogram(&mut s, &logits_of(&probs), n);
        assert_eq!(h[3], 0, "sorted path: token below min_p was sampled: {h:?}");
        assert_freq(&h, n, &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]);
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        // Vocab order is shuffled so the test does not pass by keeping the first k ids.
        let logits = logits_of(&[0.05, 0.3, 0.15, 0.5]);
        let params = SamplingParams {
            min_p: 0.0,
            top_k: 2,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, 9);
        let n = 20000;
        assert_freq(&histogram(&mut s, &logits, n), n, &[0.0, 0.375, 0.0, 0.625]);
    }

    #[test]
    fn top_p_stops_once_the_mass_is_reached() {
        // Sorted: 0.5, 0.3, 0.15, 0.05. After 0.5 (< 0.6) the 0.3 is added; 0.8 >= 0.6 stops.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let params = SamplingParams {
            min_p: 0.0,
            top_p: 0.6,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, 21);
        let n = 20000;
        assert_freq(&histogram(&mut s, &logits, n), n, &[0.0, 0.625, 0.0, 0.375]);
        // A tiny top_p keeps only the best token.
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.01,
                ..params
            },
            21,
        );
        assert!(histogram(&mut s, &logits, 500)[1] == 500);
    }

    #[test]
    fn force_greedy_overrides_a_hot_temperature() {
        let logits = logits_of(&[0.2, 0.2, 0.35, 0.25]);
        let params = SamplingParams {
            temperature: 5.0,
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, 1);
        assert!((0..200).all(|_| s.sample_with(&logits, true) == 2));
        // and the same sampler really samples when not forced
        let h = histogram(&mut s, &logits, 2000);
        assert!(h.iter().all(|&c| c > 100), "not sampling: {h:?}");
    }

    #[test]
    fn non_finite_logits_are_never_sampled() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NAN, 0.1, f32::INFINITY];
        for params in [
            SamplingParams {
                min_p: 0.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 0.0,
                top_p: 0.99,
                ..SamplingParams::default()
            },
        ] {
            let mut s = Sampler::new(params, 4);
            let h = histogram(&mut s, &logits, 2000);
            assert_eq!((h[0], h[2], h[4]), (0, 0, 0), "{h:?}");
            assert!(h[1] > 0 && h[3] > 0);
        }
    }

    /// Timing of one sample over the real vocabulary size, for BENCHMARKS.md. Run with
    /// `cargo test -p ds4-engine --release sampler_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sampler_speed_on_a_129280_token_vocabulary() {
        let n_vocab = 129_280;
        let mut rng = Rng::new(12345);
        // Roughly model-like logits: a broad base with a few strong candidates.
        let logits: Vec<f32> = (0..n_vocab)
            .map(|i| {
                let base = rng.next_f32() * 8.0 - 4.0;
                if i % 9973 == 0 {
                    base + 12.0
                } else {
                    base
                }
            })
            .collect();
        let cases = [
            ("greedy", SamplingParams::GREEDY),
            ("default (min_p 0.05)", SamplingParams::default()),
            (
                "top_p 0.95 + min_p 0.05",
                SamplingParams {
                    top_p: 0.95,
                    ..SamplingParams::default()
                },
            ),
            (
                "top_p 0.95, min_p 0",
                SamplingParams {
                    top_p: 0.95,
                    min_p: 0.0,
                    ..SamplingParams::default()
                },
            ),
            (
                "top_k 40",
                SamplingParams {
                    top_k: 40,
                    ..SamplingParams::default()
                },
            ),
        ];
        for (name, params) in cases {
            let mut s = Sampler::new(params, 1);
            let iters = 200;
            let mut sink = 0u64;
            let t = std::time::Instant::now();
            for _ in 0..iters {
                sink = sink.wrapping_add(s.sample(&logits) as u64);
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            println!("sampler {name:<26} {us:8.1} us/token (checksum {sink})");
        }
    }
}
