//! Files from the independent Python generator (`shared/tools/synth_gguf.py`) load and bind: the
//! golden tiny model (built and sha256-checked once by `ds4-testdata`, shared with the backends'
//! golden tests) and, ignored by default, a real-layout header-only file.

use std::path::PathBuf;
use std::process::Command;

use ds4_model::{AttnKind, CheckMode, LayerAttnExtra, Model};

/// Runs the Python generator once with `args`, caching the output under the target dir.
fn py_synth(file: &str, args: &[&str]) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(file);
    if out.exists() {
        return Some(out);
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/synth_gguf.py");
    if !script.exists() {
        eprintln!("skipped: {} not found", script.display());
        return None;
    }
    let tmp = dir.join(format!("{file}.{}.tmp", std::process::id()));
    let status = Command::new("python3")
        .arg(&script)
        .args(args)
        .arg("--out")
        .arg(&tmp)
        .status();
    match status {
        Ok(s) if s.success() => {
            std::fs::rename(&tmp, &out).ok()?;
            Some(out)
        }
        other => {
            eprintln!("skipped: python3 synth_gguf.py failed: {other:?}");
            None
        }
    }
}

#[test]
fn python_tiny_file_loads_and_binds_every_layer_kind() {
    let path = ds4_testdata::tiny_s777_gguf()
        .unwrap_or_else(|e| panic!("building the golden tiny GGUF: {e:#}"));
    let model = match Model::open(&path) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let cfg = &model.config;
    assert_eq!(model.check_mode(), CheckMode::Tiny);
    assert_eq!(
        (cfg.n_layer, cfg.n_embd, cfg.n_vocab, cfg.n_head),
        (5, 512, 3000, 16)
    );
    assert_eq!(
        cfg.attn_kinds,
        vec![
            AttnKind::Window,
            AttnKind::Window,
            AttnKind::Compressed4,
            AttnKind::CompressedN(128),
            AttnKind::Compressed4
        ]
    );
    assert_eq!(model.weights.layers.len(), 5);
    assert!(matches!(
        model.weights.layers[2].attn_extra,
        LayerAttnExtra::Compressed4 { .. }
    ));
    assert!(matches!(
        model.weights.layers[3].attn_extra,
        LayerAttnExtra::CompressedN { .. }
    ));
    // Hash layers carry tid2eid and (in this file) no router bias; the others the reverse.
    assert!(model.weights.layers[0].ffn_gate_tid2eid.is_some());
    assert!(model.weights.layers[3].ffn_gate_tid2eid.is_none());
    assert!(model.weights.layers[3].exp_probs_b.is_some());
    assert_eq!(model.weights.token_embd.dims(), &[512, 3000]);
}

/// The Python generator's real-layout file (2 layers, header only, sparse) passes strict
/// validation: an independent writer agrees with our layout table. Ignored by default (about 25 s
/// of Python): `cargo test -p ds4-model --release --test py_tiny -- --ignored`
#[test]
#[ignore]
fn python_full_width_header_only_file_validates_strictly() {
    let Some(path) = py_synth(
        "py_full2_header.gguf",
        &["--preset", "full", "--n-layer", "2", "--header-only"],
    ) else {
        return;
    };
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.check_mode(), CheckMode::Strict);
    assert_eq!(model.config.n_layer, 2);
}
