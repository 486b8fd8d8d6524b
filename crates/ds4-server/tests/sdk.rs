//! Real clients against the real binary: spawns `ds4-server --demo --test-forced-output` and runs
//! `tests/sdk/clients.py` with the official `openai` and `anthropic` Python SDKs
//! (scripts/requirements-test.txt). Skipped, saying why, when python3 or the SDKs are missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_and_anthropic_sdks_drive_the_demo_server() {
    let probe = Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: python3 with the openai and anthropic packages is not available (pip install -r scripts/requirements-test.txt)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ds4-server"))
        .args([
            "--demo",
            "--test-forced-output",
            "--port",
            "0",
            "--ctx",
            "4096",
            "-n",
            "512",
        ])
        .env("DS4_CACHE_DIR", cache.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if let Some(url) = line.strip_prefix("ds4-server: listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("server did not start");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clients.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&url)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    drop(server);
    assert!(out.status.success(), "SDK checks failed");
}
