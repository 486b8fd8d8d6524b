//! Engine over the real CPU backend and the built-in demo model: a session prefills, decodes, and
//! a resumed prompt gives the same logits as a cold one.

use ds4_engine::{BackendKind, Engine, EngineOptions, ModelSource};

#[test]
fn demo_model_session_reuses_prefix_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, merges) = ds4_chat::builtin_vocab();
    let opts = EngineOptions {
        model: ModelSource::Demo {
            cache_dir: dir.path().to_path_buf(),
            tokens,
            merges,
        },
        backend: BackendKind::Cpu,
    };
    let engine = Engine::open(&opts).unwrap();
    assert_eq!(engine.backend_name(), "cpu");
    let prompt: Vec<u32> = vec![0, 128803, 33, 34, 35, 36, 37, 128804];
    let mut warm = engine.new_session(64).unwrap();
    warm.sync(&prompt[..5], 4, &mut |_| {}).unwrap();
    let st = warm.sync(&prompt, 4, &mut |_| {}).unwrap();
    assert_eq!((st.reused, st.prefilled), (5, 3));
    let mut cold = engine.new_session(64).unwrap();
    cold.sync(&prompt, 4, &mut |_| {}).unwrap();
    assert_eq!(warm.logits().len(), engine.config().n_vocab);
    assert!(warm.logits().iter().all(|x| x.is_finite()));
    let max_diff = warm
        .logits()
        .iter()
        .zip(cold.logits())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-3,
        "resumed vs cold logits differ by {max_diff}"
    );
    warm.push(40).unwrap();
    assert_eq!(warm.tokens().len(), 9);
}
