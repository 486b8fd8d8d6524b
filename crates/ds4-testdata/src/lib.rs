//! Dev-only access to the golden data in `../shared/golden` (relative to the workspace root):
//! builds the golden tiny GGUF once with the shared generator, checks its sha256 against
//! `meta.json`, caches it under `target/testdata/`, loads the golden arrays, and implements the
//! float-tier gates of `check_logits.py` (same statistics, same thresholds from `meta.json`).
//!
//! Design decision: the gates are computed here in Rust (f64 statistics, numpy's percentile rule)
//! so model tests need Python only to build the GGUF, not numpy to compare.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` next to the workspace.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// `../shared/golden/<name>`.
pub fn golden_dir(name: &str) -> PathBuf {
    shared_dir().join("golden").join(name)
}

/// Where generated test models are cached.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target/testdata")
}

fn sha256_file(path: &Path) -> Result<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],'rb')\nfor b in iter(lambda:f.read(1<<20),b''):h.update(b)\nprint(h.hexdigest())")
        .arg(path)
        .output()
        .context("running python3 to hash a file")?;
    if !out.status.success() {
        bail!(
            "hashing {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Builds (once per machine, cached) the GGUF of golden set `name` with the shared generator and
/// the command in its `meta.json`, and checks its sha256. Returns the path.
pub fn golden_gguf(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return Ok(p.clone());
    }
    let meta = read_json(&golden_dir(name).join("meta.json"))?;
    let want = meta["gguf"]["sha256"]
        .as_str()
        .context("meta.json: gguf.sha256")?
        .to_string();
    let cmd = meta["gguf"]["cmd"]
        .as_str()
        .context("meta.json: gguf.cmd")?;
    // "python3 synth_gguf.py --preset tiny --seed 777 --out X.gguf": keep the generator arguments.
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out_at = args
        .iter()
        .position(|a| *a == "--out")
        .context("meta.json: gguf.cmd has no --out")?;
    let gen_args: Vec<&str> = args[2..out_at].to_vec();
    std::fs::create_dir_all(cache_dir())?;
    let path = cache_dir().join(format!("{name}.gguf"));
    let stamp = cache_dir().join(format!("{name}.gguf.sha256"));
    let cached_ok = path.exists()
        && std::fs::read_to_string(&stamp)
            .map(|s| s.trim() == want)
            .unwrap_or(false);
    if !cached_ok {
        let tmp = cache_dir().join(format!("{name}.gguf.tmp{}", std::process::id()));
        let status = Command::new("python3")
            .arg(shared_dir().join("tools/synth_gguf.py"))
            .args(&gen_args)
            .arg("--out")
            .arg(&tmp)
            .output()
            .context("running python3 synth_gguf.py")?;
        if !status.status.success() {
            bail!(
                "synth_gguf.py failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let got = sha256_file(&tmp)?;
        if got != want {
            let _ = std::fs::remove_file(&tmp);
            bail!("{name}: generated GGUF sha256 {got} differs from meta.json {want}");
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::write(&stamp, &want)?;
    }
    built.push((name.to_string(), path.clone()));
    Ok(path)
}

/// The golden tiny model (seed 777) used by the float gates.
pub fn tiny_s777_gguf() -> Result<PathBuf> {
    golden_gguf("tiny-s777")
}

fn read_f32s(path: &Path) -> Result<Vec<f32>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() % 4 != 0 {
        bail!(
            "{}: {} bytes is not a whole number of f32",
            path.display(),
            b.len()
        );
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// One golden set's arrays.
pub struct Golden {
    pub dir: PathBuf,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_hc: usize,
    pub n_layer: usize,
    pub tokens: Vec<u32>,
    /// Float64 model-mode logits, `[steps][n_vocab]`.
    pub logits_model_f64: Vec<f32>,
    /// Model-mode per-layer records at `layer_positions`, `[positions][record_floats]`.
    pub layers_model_f64: Vec<f32>,
    pub layer_positions: Vec<usize>,
    pub record_floats: usize,
    pub thresholds: FloatTier,
    /// `thresholds.layers_pos0_7_rel_l2`.
    pub layers_rel_l2: f64,
}

impl Golden {
    /// The float-tier gate of `cand` (logits of the golden tokens, row-major) against the
    /// float64 model reference.
    pub fn model_gate(&self, cand: &[f32]) -> FloatReport {
        float_gate(&self.logits_model_f64, cand, self.n_vocab, &self.thresholds)
    }

    pub fn load(name: &str) -> Result<Golden> {
        let dir = golden_dir(name);
        let meta = read_json(&dir.join("meta.json"))?;
        let shape = &meta["shape"];
        let get = |k: &str| {
            shape[k]
                .as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("meta.json: shape.{k}"))
        };
        let tok_bytes = std::fs::read(dir.join("tokens.i32"))?;
        let tokens = tok_bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
            .collect();
        let lj = read_json(&dir.join("layers_model_f64.json"))?;
        let layer_positions = lj["positions"]
            .as_array()
            .context("layers json: positions")?
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as usize))
            .collect();
        let th = &meta["thresholds"]["float_tier"];
        let f = |k: &str| {
            th[k]
                .as_f64()
                .with_context(|| format!("meta.json: thresholds.float_tier.{k}"))
        };
        Ok(Golden {
            n_vocab: get("n_vocab")?,
            n_embd: get("n_embd")?,
            n_hc: get("n_hc")?,
            n_layer: get("n_layer")?,
            tokens,
            logits_model_f64: read_f32s(&dir.join("logits_model_f64.f32"))?,
            layers_model_f64: read_f32s(&dir.join("layers_model_f64.f32"))?,
            layer_positions,
            record_floats: lj["record_floats"]
                .as_u64()
                .context("layers json: record_floats")? as usize,
            thresholds: FloatTier {
                median_rel_l2: f("median_rel_l2")?,
                p95_rel_l2: f("p95_rel_l2")?,
                max_rel_l2: f("max_rel_l2")?,
                min_top1: f("min_top1")?,
                p95_kl: f("p95_kl")?,
            },
            layers_rel_l2: meta["thresholds"]["layers_pos0_7_rel_l2"]
                .as_f64()
                .context("layers threshold")?,
            dir,
        })
    }

    /// Names of the record sublayers, golden `record_layout` order, with their float counts.
    pub fn record_parts(&self) -> Vec<(String, usize)> {
        let (e, h) = (self.n_embd, self.n_hc * self.n_embd);
        let mut parts = vec![("embd_hc".to_string(), h)];
        for il in 0..self.n_layer {
            parts.push((format!("L{il}.attn_out"), e));
            parts.push((format!("L{il}.hc_after_attn"), h));
            parts.push((format!("L{il}.ffn_out"), e));
            parts.push((format!("L{il}.hc_after_ffn"), h));
        }
        parts.push(("logits".to_string(), self.n_vocab));
        parts
    }
}

/// `||cand − ref|| / ||ref||` in f64.
pub fn rel_l2(reference: &[f32], cand: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&r, &c) in reference.iter().zip(cand) {
        num += (c as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

/// The float tier's thresholds (golden README).
#[derive(Debug, Clone, Copy)]
pub struct FloatTier {
    pub median_rel_l2: f64,
    pub p95_rel_l2: f64,
    pub max_rel_l2: f64,
    pub min_top1: f64,
    pub p95_kl: f64,
}

/// Statistics over a run, as `check_logits.py` computes them.
#[derive(Debug, Clone)]
pub struct FloatReport {
    pub steps: usize,
    pub median_rel_l2: f64,
    pub p95_rel_l2: f64,
    pub max_rel_l2: f64,
    pub top1: f64,
    pub p95_kl: f64,
    pub first_step_over_1e3: Option<usize>,
    pub failures: Vec<String>,
}

impl FloatReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for FloatReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tier=float steps={} relL2 median={:.3e} p95={:.3e} max={:.3e} top1={:.1}% KLp95={:.3e} first_step_over={:?}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.steps,
            self.median_rel_l2,
            self.p95_rel_l2,
            self.max_rel_l2,
            100.0 * self.top1,
            self.p95_kl,
            self.first_step_over_1e3
        )?;
        if !self.failures.is_empty() {
            write!(f, " | {}", self.failures.join("; "))?;
        }
        Ok(())
    }
}

/// numpy's default (linear) percentile.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - m - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Float-tier comparison of `cand` against `reference` (both `[steps][n_vocab]`), over the
/// candidate's steps (which must not exceed the reference's).
pub fn float_gate(reference: &[f32], cand: &[f32], n_vocab: usize, th: &FloatTier) -> FloatReport {
    let n = (cand.len() / n_vocab).min(reference.len() / n_vocab);
    let (mut rel, mut kl, mut top1) = (Vec::with_capacity(n), Vec::with_capacity(n), 0usize);
    let mut failures = Vec::new();
    for i in 0..n {
        let (r, c) = (
            &reference[i * n_vocab..(i + 1) * n_vocab],
            &cand[i * n_vocab..(i + 1) * n_vocab],
        );
        if c.iter().any(|v| !v.is_finite()) {
            failures.push(format!("non-finite logits at step {i}"));
        }
        rel.push(rel_l2(r, c));
        top1 += (argmax(r) == argmax(c)) as usize;
        let (lr, lc) = (log_softmax(r), log_softmax(c));
        kl.push(lr.iter().zip(&lc).map(|(a, b)| a.exp() * (a - b)).sum());
    }
    let median = percentile(&rel, 50.0);
    let p95 = percentile(&rel, 95.0);
    let max = rel.iter().cloned().fold(0.0, f64::max);
    let top1 = top1 as f64 / n.max(1) as f64;
    let p95_kl = percentile(&kl, 95.0);
    if n == 0 {
        failures.push("no steps".into());
    }
    if median > th.median_rel_l2 {
        failures.push(format!("median relL2 {median:.3e} > {}", th.median_rel_l2));
    }
    if p95 > th.p95_rel_l2 {
        failures.push(format!("p95 relL2 {p95:.3e} > {}", th.p95_rel_l2));
    }
    if max > th.max_rel_l2 {
        failures.push(format!("max relL2 {max:.3e} > {}", th.max_rel_l2));
    }
    if top1 < th.min_top1 {
        failures.push(format!(
            "top-1 {:.1}% < {:.1}%",
            100.0 * top1,
            100.0 * th.min_top1
        ));
    }
    if p95_kl > th.p95_kl {
        failures.push(format!("KL p95 {p95_kl:.3e} > {}", th.p95_kl));
    }
    FloatReport {
        steps: n,
        median_rel_l2: median,
        p95_rel_l2: p95,
        max_rel_l2: max,
        top1,
        p95_kl,
        first_step_over_1e3: rel.iter().position(|&v| v > 1e-3),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear_rule() {
        // numpy.percentile([1,2,3,4], 95) = 3.85
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[5.0, 1.0, 3.0], 50.0), 3.0);
    }

    #[test]
    fn float_gate_passes_identical_and_fails_shuffled() {
        let th = FloatTier {
            median_rel_l2: 0.012,
            p95_rel_l2: 0.07,
            max_rel_l2: 0.6,
            min_top1: 0.94,
            p95_kl: 0.02,
        };
        let r: Vec<f32> = (0..400).map(|i| ((i * 7919) % 97) as f32 * 0.1).collect();
        assert!(float_gate(&r, &r, 100, &th).passed());
        let c: Vec<f32> = r.iter().rev().cloned().collect();
        assert!(!float_gate(&r, &c, 100, &th).passed());
    }
}
