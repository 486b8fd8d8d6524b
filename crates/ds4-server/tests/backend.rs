//! `--cuda` / `--backend cuda` reach the CUDA backend: on a machine without a GPU (CI) the server
//! exits at start with a one-line reason naming CUDA (never a panic); with a GPU it serves.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn cuda_backend_starts_or_says_why_not() {
    let demo = tempfile::tempdir().expect("temp dir");
    for flags in [&["--cuda"][..], &["--backend", "cuda"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ds4-server"))
            .args(["--demo", "--port", "0"])
            .args(flags)
            .env("DS4_CACHE_DIR", demo.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ds4-server");
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                break None; // still serving: a GPU is present
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match status {
            Some(st) => {
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                assert!(!st.success(), "{err}");
                assert!(!err.contains("panicked"), "{err}");
                assert!(err.contains("CUDA"), "{err}");
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ds4-server"))
        .args(["--demo", "--backend", "tpu"])
        .env("DS4_CACHE_DIR", demo.path())
        .output()
        .expect("run ds4-server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend tpu"));
}
