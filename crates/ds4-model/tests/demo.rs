//! `ensure_demo_model`: created once with the given vocabulary, reused, and keyed by content.

use std::path::PathBuf;

use ds4_model::synth::{ensure_demo_model, synthetic_vocab, DEMO_MODEL_VERSION};
use ds4_model::Model;

#[test]
fn demo_model_is_created_once_reused_and_keyed_by_vocabulary() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-cache-{}", std::process::id()));
    let v = synthetic_vocab(700);
    let p1 = ensure_demo_model(&dir, v.tokens.clone(), v.merges.clone()).expect("create");
    let name = p1
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        name.starts_with(&format!("ds4-demo-v{DEMO_MODEL_VERSION}-")) && name.ends_with(".gguf"),
        "{name}"
    );
    let m = Model::open(&p1).expect("demo loads");
    assert_eq!(m.config.n_vocab, 700);
    let tokens = m
        .file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|(_, t)| t.len());
    assert_eq!(tokens, Some(700));
    let modified = std::fs::metadata(&p1)
        .and_then(|m| m.modified())
        .expect("mtime");

    let p2 = ensure_demo_model(&dir, v.tokens.clone(), v.merges.clone()).expect("reuse");
    assert_eq!(p1, p2);
    assert_eq!(
        std::fs::metadata(&p2)
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified,
        "not rewritten"
    );

    let other = synthetic_vocab(701);
    let p3 = ensure_demo_model(&dir, other.tokens, other.merges).expect("other vocab");
    assert_ne!(p1, p3);
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
