//! A session saved as a disk-cache payload (spec/model.md §4.3) and restored into a fresh session
//! continues exactly like the live one: next-token logits bit for bit, before and after a decode.

use ds4_engine::{BackendKind, Engine, EngineOptions, ModelSource, SessionSnapshot};
use ds4_kvcache::{decode_payload, encode_payload, Runtime};

#[test]
fn payload_round_trip_restores_bit_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, merges) = ds4_chat::builtin_vocab();
    let engine = Engine::open(&EngineOptions {
        model: ModelSource::Demo {
            cache_dir: dir.path().to_path_buf(),
            tokens,
            merges,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let ctx = 256;
    let prompt: Vec<u32> = (0..150u32).map(|i| 33 + (i * 7919) % 900).collect();
    let mut live = engine.new_session(ctx).unwrap();
    live.sync(&prompt, 64, &mut |_| {}).unwrap();
    let snap = live.snapshot().unwrap();

    let cfg = engine.config().clone();
    let rt = Runtime {
        cfg: &cfg,
        ctx,
        prefill_cap: ctx.min(2048),
    };
    let bytes = encode_payload(&rt, &snap.tokens, &snap.logits, &snap.kv).unwrap();
    let state = decode_payload(&rt, &bytes).unwrap();
    assert_eq!(state.tokens, prompt);

    let mut restored = engine.new_session(ctx).unwrap();
    restored
        .restore(&SessionSnapshot {
            tokens: state.tokens,
            kv: state.kv,
            logits: state.logits,
        })
        .unwrap();
    let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(restored.logits()), bits(live.logits()));
    // The KV state itself must be right, not only the stored logits: decode on both.
    for t in [40u32, 41, 42] {
        live.push(t).unwrap();
        restored.push(t).unwrap();
        assert_eq!(bits(restored.logits()), bits(live.logits()), "after {t}");
    }
    // And a suffix prefill past the raw window's first wrap, on both.
    let more: Vec<u32> = (0..40u32).map(|i| 50 + i).collect();
    let mut full = live.tokens().to_vec();
    full.extend(&more);
    live.sync(&full, 64, &mut |_| {}).unwrap();
    let st = restored.sync(&full, 64, &mut |_| {}).unwrap();
    assert_eq!(st.reused, prompt.len() + 3);
    assert_eq!(bits(restored.logits()), bits(live.logits()));
}
