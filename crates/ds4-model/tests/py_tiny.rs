//! The independent Python generator's tiny file (`shared/tools/synth_gguf.py --preset tiny`) loads
//! and binds. Generated once (about 15 s) and cached under the target dir; skipped with a message
//! when python3 with numpy is not available.

use std::path::PathBuf;
use std::process::Command;

use ds4_model::{AttnKind, CheckMode, LayerAttnExtra, Model};

fn py_tiny() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join("py_tiny_seed1234.gguf");
    if out.exists() {
        return Some(out);
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/synth_gguf.py");
    if !script.exists() {
        eprintln!("skipped: {} not found", script.display());
        return None;
    }
    let tmp = dir.join(format!("py_tiny_seed1234.{}.tmp", std::process::id()));
    let status = Command::new("python3")
        .arg(&script)
        .args(["--preset", "tiny", "--seed", "1234", "--out"])
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
    let Some(path) = py_tiny() else { return };
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
