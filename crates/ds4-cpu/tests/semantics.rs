//! Semantics the golden gates cannot see, on the in-memory synthetic tiny model (n_swa 16, ratios
//! [0, 0, 4, 8, 4], indexer top-k 4): window length, the moment a compressed row becomes visible,
//! snapshot/restore, and batched prefill against one-by-one decode.

use std::sync::{Arc, OnceLock};

use ds4_cpu::CpuBackend;
use ds4_model::synth::{build_model, SynthSpec};
use ds4_model::{Backend, Logits, Model};

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        Arc::new(build_model(&SynthSpec::tiny(4242)).expect("synthetic tiny model builds"))
    })
    .clone()
}

fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 2654435761usize) % n_vocab) as u32)
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn decode_all(be: &mut CpuBackend, toks: &[u32]) -> Vec<f32> {
    let v = be.config().n_vocab;
    let mut out = vec![0.0; toks.len() * v];
    for (i, &t) in toks.iter().enumerate() {
        be.eval(&[t], Logits::Last(&mut out[i * v..(i + 1) * v]))
            .unwrap();
    }
    out
}

fn next_logits(be: &mut CpuBackend, tok: u32) -> Vec<f32> {
    let mut out = vec![0.0; be.config().n_vocab];
    be.eval(&[tok], Logits::Last(&mut out)).unwrap();
    out
}

#[test]
fn raw_window_is_n_swa_rows_including_the_current_token() {
    let m = model();
    let n_swa = m.config.n_swa;
    let toks = tokens(3 * n_swa, m.config.n_vocab);
    let p = 2 * n_swa; // the next token's position; its window is p-n_swa+1 ..= p
    let mut be = CpuBackend::new(m.clone(), 4 * n_swa).unwrap();
    be.eval(&toks[..p], Logits::None).unwrap();
    let snap = be.snapshot().unwrap();
    let base = next_logits(&mut be, toks[p]);
    // The snapshot holds positions p-n_swa .. p-1, oldest first, in every layer.
    let hd = m.config.head_dim;
    let perturbed = |row: usize| {
        let mut s = snap.clone();
        for l in &mut s.layers {
            for v in &mut l.raw[row * hd..(row + 1) * hd] {
                *v += 0.5;
            }
        }
        s
    };
    // Position p-n_swa has left the window: changing it changes nothing.
    be.restore(&perturbed(0)).unwrap();
    assert_eq!(
        next_logits(&mut be, toks[p]),
        base,
        "row p-n_swa must be outside the window"
    );
    // Position p-n_swa+1 is the oldest row the window still holds.
    be.restore(&perturbed(1)).unwrap();
    assert!(
        rel_l2(&base, &next_logits(&mut be, toks[p])) > 1e-6,
        "row p-n_swa+1 must be visible"
    );
}

#[test]
fn compressed_row_is_visible_to_the_token_that_emits_it() {
    let m = model();
    let cfg = &m.config;
    let (il, r) = cfg
        .attn_kinds
        .iter()
        .enumerate()
        .find(|(_, k)| k.ratio() > 4)
        .map(|(i, k)| (i, k.ratio()))
        .unwrap();
    let toks = tokens(2 * r, cfg.n_vocab);
    let mut be = CpuBackend::new(m.clone(), 4 * r).unwrap();
    // Before position r-1 (the first emission of the ratio-r layer).
    be.eval(&toks[..r - 1], Logits::None).unwrap();
    let snap = be.snapshot().unwrap();
    assert!(snap.layers[il].attn_comp.is_empty());
    let base = next_logits(&mut be, toks[r - 1]);
    assert_eq!(
        be.snapshot().unwrap().layers[il].attn_comp.len(),
        cfg.head_dim,
        "one row emitted at pos r-1"
    );
    // Perturb only that layer's frontier: it feeds only the row emitted at r-1, so a change in
    // this token's logits means the token sees the row it emitted.
    let mut s = snap.clone();
    for v in &mut s.layers[il].attn_frontier.as_mut().unwrap().kv {
        *v += 1.0;
    }
    be.restore(&s).unwrap();
    assert!(
        rel_l2(&base, &next_logits(&mut be, toks[r - 1])) > 1e-6,
        "the emitted row must be visible at once"
    );
    // One token earlier no row is emitted, so the same perturbation is invisible.
    let mut be2 = CpuBackend::new(m.clone(), 4 * r).unwrap();
    be2.eval(&toks[..r - 2], Logits::None).unwrap();
    let mut s2 = be2.snapshot().unwrap();
    let base2 = next_logits(&mut be2, toks[r - 2]);
    for v in &mut s2.layers[il].attn_frontier.as_mut().unwrap().kv {
        *v += 1.0;
    }
    be2.restore(&s2).unwrap();
    assert_eq!(next_logits(&mut be2, toks[r - 2]), base2);
}

#[test]
fn snapshot_restore_resumes_bit_for_bit() {
    let m = model();
    let toks = tokens(60, m.config.n_vocab);
    let mut a = CpuBackend::new(m.clone(), 128).unwrap();
    a.eval(&toks[..37], Logits::None).unwrap();
    let snap = a.snapshot().unwrap();
    let la = decode_all(&mut a, &toks[37..]);
    let mut b = CpuBackend::new(m.clone(), 128).unwrap();
    b.eval(&toks[..5], Logits::None).unwrap(); // state to be overwritten
    b.restore(&snap).unwrap();
    assert_eq!(b.n_past(), 37);
    assert_eq!(decode_all(&mut b, &toks[37..]), la);
    // A snapshot from a layer-mismatched model is refused.
    let mut bad = snap.clone();
    bad.layers.pop();
    assert!(b.restore(&bad).is_err());
}

#[test]
fn prefill_matches_decode_across_window_and_compression_boundaries() {
    let m = model();
    let v = m.config.n_vocab;
    let toks = tokens(70, v); // crosses n_swa 16 several times, ratio 8 and the indexer (> 4 rows)
    let mut be = CpuBackend::new(m.clone(), 128).unwrap();
    let dec = decode_all(&mut be, &toks);
    // Chunk 1 takes the decode path: identical.
    be.reset();
    be.set_prefill_chunk(1);
    let mut one = vec![0.0; toks.len() * v];
    be.eval(&toks, Logits::All(&mut one)).unwrap();
    assert_eq!(one, dec);
    // Real batches (odd chunk sizes put boundaries mid-chunk): equal within float noise.
    for chunk in [7, 70] {
        be.reset();
        be.set_prefill_chunk(chunk);
        let mut all = vec![0.0; toks.len() * v];
        be.eval(&toks, Logits::All(&mut all)).unwrap();
        let rels: Vec<f64> = (0..toks.len())
            .map(|i| rel_l2(&dec[i * v..(i + 1) * v], &all[i * v..(i + 1) * v]))
            .collect();
        let mut sorted = rels.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let (median, worst) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
        println!("chunk {chunk}: relL2 median {median:.2e} max {worst:.2e}");
        assert!(
            median < 1e-3 && worst < 0.3,
            "chunk {chunk}: median {median:.2e} max {worst:.2e}"
        );
        // Last-logits mode agrees with the last row of All.
        be.reset();
        let mut last = vec![0.0; v];
        be.eval(&toks, Logits::Last(&mut last)).unwrap();
        // (One-row head vs batched head: same math, different summation order.)
        assert!(rel_l2(&all[(toks.len() - 1) * v..], &last) < 1e-5);
    }
}

#[test]
fn context_and_token_errors_are_typed() {
    let m = model();
    let mut be = CpuBackend::new(m.clone(), 4).unwrap();
    assert!(matches!(
        be.eval(&[1, 2, 3, 4, 5], Logits::None),
        Err(ds4_model::BackendError::ContextFull { .. })
    ));
    assert!(matches!(
        be.eval(&[u32::MAX], Logits::None),
        Err(ds4_model::BackendError::BadToken { .. })
    ));
    assert_eq!(be.n_past(), 0);
}

/// A full-width 2-layer synthetic model (the model engineer's `ds4 synth --preset full --layers 2`,
/// built in memory, about 5 GB) runs decode and prefill with finite logits. Ignored by default:
/// it takes minutes and gigabytes; run with `cargo test -p ds4-cpu --release -- --ignored`.
#[test]
#[ignore]
fn full_width_two_layer_model_runs() {
    use ds4_model::synth::Preset;
    let mut spec = SynthSpec::new(Preset::Full, 7);
    spec.layers = Some(2);
    let t0 = std::time::Instant::now();
    let m = Arc::new(build_model(&spec).expect("full-width 2-layer model builds"));
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());
    let v = m.config.n_vocab;
    let toks = tokens(6, v);
    let mut be = CpuBackend::new(m.clone(), 64).unwrap();
    let t0 = std::time::Instant::now();
    let dec = decode_all(&mut be, &toks[..3]);
    println!("3 decode steps in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(dec.iter().all(|x| x.is_finite()));
    be.reset();
    let mut all = vec![0.0; 3 * v];
    be.eval(&toks[..3], Logits::All(&mut all)).unwrap();
    for i in 0..3 {
        let r = rel_l2(&dec[i * v..(i + 1) * v], &all[i * v..(i + 1) * v]);
        assert!(r < 0.05, "step {i}: prefill vs decode relL2 {r:.2e}");
    }
}
