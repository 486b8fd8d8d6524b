//! `ds4 inspect` end to end on a tiny model made by the shared generator
//! (`../shared/tools/synth_gguf.py --preset tiny`): the listing, exit codes, and `--dequant` of its
//! Q8_0, Q2_K and IQ2_XXS tensors against the `gguf` Python package's dequantization, bit for bit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The golden tiny model (seed 777), cached under `target/testdata/` with the same name and sha256
/// stamp `ds4-testdata` uses, so whichever test runs first builds it for both.
fn tiny_gguf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shared = workspace_root().join("../shared");
        let meta = std::fs::read_to_string(shared.join("golden/tiny-s777/meta.json")).expect("golden meta.json");
        let want = meta
            .split("\"sha256\": \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("meta.json names the GGUF sha256")
            .to_string();
        let dir = workspace_root().join("target/testdata");
        std::fs::create_dir_all(&dir).expect("cache dir");
        let path = dir.join("tiny-s777.gguf");
        let stamp = dir.join("tiny-s777.gguf.sha256");
        if path.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
            return path;
        }
        let tmp = dir.join(format!("tiny-s777.gguf.tmp-inspect{}", std::process::id()));
        let out = Command::new("python3")
            .arg(shared.join("tools/synth_gguf.py"))
            .args(["--preset", "tiny", "--seed", "777", "--out"])
            .arg(&tmp)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "synth_gguf.py: {}", String::from_utf8_lossy(&out.stderr));
        let got = python(&["-c", "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"], &[&tmp]);
        assert_eq!(got.trim(), want, "generated GGUF differs from the golden sha256");
        std::fs::rename(&tmp, &path).expect("rename");
        std::fs::write(&stamp, &want).expect("stamp");
        path
    })
}

fn python(args: &[&str], paths: &[&Path]) -> String {
    let out = Command::new("python3")
        .args(args)
        .args(paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ds4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(args)
        .output()
        .expect("ds4 runs")
}

/// Compares our f32 dump with `gguf.quants.dequantize` of the same tensor, bit for bit.
const COMPARE_PY: &str = r#"
import sys, numpy as np, gguf
gguf_path, name, ours_path = sys.argv[1:4]
t = next(t for t in gguf.GGUFReader(gguf_path).tensors if t.name == name)
want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
ours = np.fromfile(ours_path, dtype="<f4")
assert ours.shape == want.shape, (ours.shape, want.shape)
bad = np.flatnonzero(ours.view(np.uint32) != want.view(np.uint32))
assert bad.size == 0, f"{bad.size} of {want.size} values differ, first at {bad[0]}: ours {ours[bad[0]]} gguf {want[bad[0]]}"
print(f"{name} {t.tensor_type.name} {want.size} values identical")
"#;

#[test]
fn lists_metadata_and_tensors() {
    let out = ds4(&["inspect", tiny_gguf().to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GGUF v3"), "{text}");
    assert!(text.contains("deepseek4.block_count (u32) = 5"), "{text}");
    // The 3000-token vocabulary is abbreviated, not printed in full.
    let vocab = text
        .lines()
        .find(|l| l.contains("tokenizer.ggml.tokens"))
        .expect("vocab line");
    assert!(
        vocab.contains("array[string; 3000]")
            && vocab.contains("3000 string items")
            && vocab.len() < 400,
        "{vocab}"
    );
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("token_embd.weight "))
        .expect("token_embd row");
    assert!(row.contains("[512, 3000]"), "{row}");
    for ty in ["Q8_0", "Q2_K", "IQ2_XXS", "F16", "F32", "I32"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(ty)),
            "no {ty} tensor listed"
        );
    }
}

#[test]
fn ctx_prints_the_kv_memory_estimate() {
    let out = ds4(&[
        "inspect",
        tiny_gguf().to_str().expect("utf-8 path"),
        "--ctx",
        "65536",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("KV memory for ctx 65536 (prefill chunk 2048)"),
        "{text}"
    );
}

#[test]
fn dequant_matches_the_gguf_package_bit_for_bit() {
    let gguf = tiny_gguf();
    let listing =
        String::from_utf8_lossy(&ds4(&["inspect", gguf.to_str().expect("utf-8 path")]).stdout)
            .into_owned();
    let dir = tempfile_dir();
    for ty in ["Q8_0", "Q2_K", "IQ2_XXS", "F16"] {
        let name = listing
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?;
                (w.next() == Some(ty)).then(|| name.to_string())
            })
            .unwrap_or_else(|| panic!("no {ty} tensor"));
        let dst = dir.join(format!("{name}.f32"));
        let out = ds4(&[
            "inspect",
            gguf.to_str().expect("utf-8 path"),
            "--dequant",
            &name,
            "--out",
            dst.to_str().expect("utf-8 path"),
        ]);
        assert!(
            out.status.success(),
            "{ty}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = python(
            &["-c", COMPARE_PY, gguf.to_str().expect("utf-8 path"), &name],
            &[&dst],
        );
        assert!(report.contains("identical"), "{report}");
    }
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let dir = tempfile_dir();
    let missing = dir.join("missing.gguf");
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf file at all").expect("write");
    let gguf = tiny_gguf().to_str().expect("utf-8 path").to_string();
    let out_f32 = dir.join("x.f32");
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", missing.to_str().expect("utf-8")],
        vec!["inspect", garbage.to_str().expect("utf-8")],
        vec![
            "inspect",
            &gguf,
            "--dequant",
            "no.such.tensor",
            "--out",
            out_f32.to_str().expect("utf-8"),
        ],
        vec![
            "inspect",
            &gguf,
            "--dequant",
            "blk.0.ffn_gate_tid2eid.weight",
            "--out",
            out_f32.to_str().expect("utf-8"),
        ],
    ];
    for args in cases {
        let out = ds4(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ds4: "), "{err}");
    }
    // Usage errors (clap) exit 2.
    assert_eq!(
        ds4(&["inspect", &gguf, "--dequant", "x"]).status.code(),
        Some(2)
    );
}

fn tempfile_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("inspect-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
