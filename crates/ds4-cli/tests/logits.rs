//! `ds4 logits` end to end on the golden tiny model (seed 777): file formats, decode vs
//! `--prefill`, `--dump-layers` records, and the errors a user can hit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> PathBuf {
    root().join("../shared/golden/tiny-s777")
}

/// The golden tiny GGUF, cached under `target/testdata` (the same file `ds4-testdata` builds and
/// checks against meta.json; built here with the same generator command if it is missing).
fn tiny_gguf() -> PathBuf {
    let dir = root().join("target/testdata");
    let path = dir.join("tiny-s777.gguf");
    if !path.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!("tiny-s777.gguf.tmp{}", std::process::id()));
        let st = Command::new("python3")
            .arg(root().join("../shared/tools/synth_gguf.py"))
            .args(["--preset", "tiny", "--seed", "777", "--out"])
            .arg(&tmp)
            .status()
            .expect("python3 runs");
        assert!(st.success(), "synth_gguf.py failed");
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn ds4(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(args)
        .output()
        .expect("ds4 runs")
}

const N_VOCAB: usize = 3000;
const RECORD: usize = 30648;

#[test]
fn logits_decode_prefill_and_layer_dump() {
    let model = tiny_gguf();
    let dir = tempfile_dir("logits");
    let n = 24;
    let toks = std::fs::read(golden().join("tokens.i32")).unwrap();
    let tok_path = dir.join("t.i32");
    std::fs::write(&tok_path, &toks[..n * 4]).unwrap();
    let (dec, pre, layers) = (
        dir.join("dec.f32"),
        dir.join("pre.f32"),
        dir.join("layers.f32"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = ds4(&[
        "logits",
        "-m",
        &s(&model),
        "--tokens",
        &s(&tok_path),
        "--out",
        &s(&dec),
        "--dump-layers",
        "0-2,5",
        "--layers-out",
        &s(&layers),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ds4(&[
        "logits",
        "-m",
        &s(&model),
        "--tokens",
        &s(&tok_path),
        "--out",
        &s(&pre),
        "--prefill",
        "--chunk",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --last 5: the first 19 tokens as one prefill, the last 5 one at a time.
    let last = dir.join("last.f32");
    let out = ds4(&[
        "logits",
        "-m",
        &s(&model),
        "--tokens",
        &s(&tok_path),
        "--out",
        &s(&last),
        "--last",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dec, pre, layers) = (f32s(&dec), f32s(&pre), f32s(&layers));
    let last = f32s(&last);
    assert_eq!(last.len(), 5 * N_VOCAB, "--last 5 writes five rows");
    assert!(
        rel_l2(&dec[(n - 5) * N_VOCAB..], &last) < 0.05,
        "--last rows differ from the same positions of the full run"
    );
    assert_eq!(dec.len(), n * N_VOCAB);
    assert_eq!(pre.len(), n * N_VOCAB);
    assert_eq!(layers.len(), 4 * RECORD, "one record per listed position");
    let reference = f32s(&golden().join("logits_model_f64.f32"));
    for i in 0..n {
        let row = |v: &[f32]| v[i * N_VOCAB..(i + 1) * N_VOCAB].to_vec();
        // Early steps track the float64 reference closely (spec §3.13: flips start later).
        assert!(
            rel_l2(&row(&reference), &row(&dec)) < 0.05,
            "decode step {i}"
        );
        assert!(rel_l2(&row(&dec), &row(&pre)) < 0.05, "prefill step {i}");
    }
    // Each record ends with that position's logits; records come in ascending position order.
    for (k, pos) in [0usize, 1, 2, 5].iter().enumerate() {
        let rec_logits = &layers[(k + 1) * RECORD - N_VOCAB..(k + 1) * RECORD];
        assert!(
            rel_l2(&dec[pos * N_VOCAB..(pos + 1) * N_VOCAB], rec_logits) < 1e-5,
            "record for pos {pos}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logits_reports_user_errors() {
    let dir = tempfile_dir("errors");
    let bad = dir.join("bad.i32");
    std::fs::write(&bad, [1u8, 2, 3, 4, 5]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = ds4(&[
        "logits",
        "-m",
        "nope.gguf",
        "--tokens",
        &s(&bad),
        "--out",
        &s(&dir.join("o")),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("whole number"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = dir.join("good.i32");
    std::fs::write(&good, 7i32.to_le_bytes()).unwrap();
    for (last, msg) in [("0", "at least 1"), ("2", "more than the 1 tokens")] {
        let out = ds4(&[
            "logits",
            "-m",
            "nope.gguf",
            "--tokens",
            &s(&good),
            "--out",
            &s(&dir.join("o")),
            "--last",
            last,
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "--last {last}: {err}");
    }
    let out = ds4(&[
        "logits",
        "-m",
        "nope.gguf",
        "--tokens",
        &s(&good),
        "--out",
        &s(&dir.join("o")),
        "--backend",
        "cuda",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.gguf"));
    // A real model on the CUDA backend: on a machine without a GPU (CI) the error must say so in
    // one line; where a GPU is present the run succeeds (the GPU tests check its logits).
    let out = ds4(&[
        "logits",
        "-m",
        &s(&tiny_gguf()),
        "--tokens",
        &s(&good),
        "--out",
        &s(&dir.join("o_cuda")),
        "--backend",
        "cuda",
    ]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CUDA"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let out = ds4(&[
        "logits",
        "-m",
        "nope.gguf",
        "--tokens",
        &s(&good),
        "--out",
        &s(&dir.join("o")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.gguf"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ds4-logits-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn logits_exact_is_bit_exact_with_the_strict_reference() {
    let model = tiny_gguf();
    let dir = tempfile_dir("exact");
    let n = 12;
    let toks = std::fs::read(golden().join("tokens.i32")).unwrap();
    let tok_path = dir.join("t.i32");
    std::fs::write(&tok_path, &toks[..n * 4]).unwrap();
    let out_path = dir.join("exact.f32");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = ds4(&[
        "logits",
        "-m",
        &s(&model),
        "--tokens",
        &s(&tok_path),
        "--out",
        &s(&out_path),
        "--exact",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let strict = f32s(&golden().join("logits_ds4cpu_strict.f32"));
    assert_eq!(f32s(&out_path), strict[..n * N_VOCAB].to_vec());
    let _ = std::fs::remove_dir_all(&dir);
}
