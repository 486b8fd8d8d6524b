//! The gates against the golden tiny model (seed 777): float-tier logits over all 520
//! steps, token by token and as batched prefill, and per-layer records at positions 0-7.

use std::sync::Arc;

use ds4_cpu::CpuBackend;
use ds4_model::{Backend, LayerProbe, Logits, Model};
use ds4_testdata::{rel_l2, tiny_s777_gguf, Golden};

fn setup() -> (Arc<Model>, Golden) {
    let path = tiny_s777_gguf().expect("building the golden tiny GGUF (needs python3 + numpy)");
    let model = Arc::new(Model::open(&path).expect("golden tiny GGUF loads"));
    let golden = Golden::load("tiny-s777").expect("golden data present");
    (model, golden)
}

#[test]
fn decode_token_by_token_passes_float_tier() {
    let (model, g) = setup();
    let v = g.n_vocab;
    let mut be = CpuBackend::new(model, 1024).unwrap();
    let mut out = vec![0.0f32; g.tokens.len() * v];
    for (i, &tok) in g.tokens.iter().enumerate() {
        be.eval(&[tok], Logits::Last(&mut out[i * v..(i + 1) * v]))
            .unwrap();
    }
    let rep = g.model_gate(&out);
    println!("decode: {rep}");
    assert!(rep.passed(), "{rep}");
    assert_eq!(rep.steps, 520);
}

#[test]
fn batched_prefill_passes_float_tier_and_matches_decode_chunks() {
    let (model, g) = setup();
    let v = g.n_vocab;
    let mut be = CpuBackend::new(model, 1024).unwrap();
    // Chunks of 100 cross the window (128), compressed-row and indexer boundaries mid-chunk.
    be.set_prefill_chunk(100);
    let mut out = vec![0.0f32; g.tokens.len() * v];
    be.eval(&g.tokens, Logits::All(&mut out)).unwrap();
    let rep = g.model_gate(&out);
    println!("prefill: {rep}");
    assert!(rep.passed(), "{rep}");
}

#[test]
fn layer_records_at_positions_0_to_7_match_golden() {
    let (model, g) = setup();
    let mut be = CpuBackend::new(model, 1024).unwrap();
    be.set_probe(Some(LayerProbe {
        positions: (0..8).collect(),
        records: Vec::new(),
    }))
    .unwrap();
    be.eval(&g.tokens[..8], Logits::None).unwrap();
    let probe = be.take_probe().unwrap();
    assert_eq!(probe.records.len(), 8);
    let parts = g.record_parts();
    let mut worst = (0.0f64, String::new());
    for (pos, rec) in &probe.records {
        assert_eq!(rec.len(), g.record_floats, "record size at pos {pos}");
        let k = g.layer_positions.iter().position(|p| p == pos).unwrap();
        let reference = &g.layers_model_f64[k * g.record_floats..(k + 1) * g.record_floats];
        let mut off = 0;
        for (name, n) in &parts {
            let r = rel_l2(&reference[off..off + n], &rec[off..off + n]);
            if r > worst.0 {
                worst = (r, format!("pos {pos} {name}"));
            }
            off += n;
        }
    }
    println!(
        "worst per-layer relL2 at positions 0-7: {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 <= g.layers_rel_l2, "{:.3e} at {}", worst.0, worst.1);
}

fn read_f32s(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `--exact` (ds4 CPU arithmetic, spec §3.12) against the strict golden records at the first
/// positions: reports the first record part that differs at all, and the largest |diff|.
#[test]
fn exact_mode_matches_ds4cpu_strict_records() {
    let (model, g) = setup();
    let strict = read_f32s(&g.dir.join("layers_ds4cpu_strict.f32"));
    let mut be = CpuBackend::new(model, 1024).unwrap();
    be.set_exact(true);
    be.set_probe(Some(LayerProbe {
        positions: (0..8).collect(),
        records: Vec::new(),
    }))
    .unwrap();
    be.eval(&g.tokens[..8], Logits::None).unwrap();
    let probe = be.take_probe().unwrap();
    let parts = g.record_parts();
    let mut first_bad: Option<String> = None;
    let mut max_abs = 0.0f32;
    for (pos, rec) in &probe.records {
        let k = g.layer_positions.iter().position(|p| p == pos).unwrap();
        let reference = &strict[k * g.record_floats..(k + 1) * g.record_floats];
        let mut off = 0;
        for (name, n) in &parts {
            let d = reference[off..off + n]
                .iter()
                .zip(&rec[off..off + n])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            max_abs = max_abs.max(d);
            if d > 0.0 && first_bad.is_none() {
                first_bad = Some(format!("pos {pos} {name} max|d| {d:.3e}"));
            }
            off += n;
        }
    }
    println!("exact records 0-7: max|d| {max_abs:.3e}, first differing: {first_bad:?}");
    assert!(max_abs <= 1e-5, "first differing: {first_bad:?}");
}

/// `--exact` over all 520 steps against `logits_ds4cpu_strict.f32`, tier `exact` (max |diff|
/// ≤ 1e-5), token by token and as batched prefill (exact mode runs each token's projections on
/// its own, so a batch gives the same bits).
#[test]
fn exact_mode_is_bit_exact_over_all_steps() {
    let (model, g) = setup();
    let v = g.n_vocab;
    let strict = read_f32s(&g.dir.join("logits_ds4cpu_strict.f32"));
    let mut be = CpuBackend::new(model, 1024).unwrap();
    be.set_exact(true);
    let mut out = vec![0.0f32; g.tokens.len() * v];
    for (i, &tok) in g.tokens.iter().enumerate() {
        be.eval(&[tok], Logits::Last(&mut out[i * v..(i + 1) * v]))
            .unwrap();
    }
    let worst = |cand: &[f32]| {
        let mut w = (0.0f32, 0usize);
        for (i, (a, b)) in strict.iter().zip(cand).enumerate() {
            if (a - b).abs() > w.0 {
                w = ((a - b).abs(), i / v);
            }
        }
        w
    };
    let (d, step) = worst(&out);
    println!("exact decode: max|d| {d:.3e} (at step {step})");
    assert!(d <= 1e-5, "decode: max|d| {d:.3e} at step {step}");
    be.reset();
    be.set_prefill_chunk(100);
    let mut all = vec![0.0f32; g.tokens.len() * v];
    be.eval(&g.tokens, Logits::All(&mut all)).unwrap();
    let (d, step) = worst(&all);
    println!("exact prefill: max|d| {d:.3e} (at step {step})");
    assert!(d <= 1e-5, "prefill: max|d| {d:.3e} at step {step}");
}
