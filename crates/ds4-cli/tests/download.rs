//! `ds4 download` against a local HTTP server that drops connections and honours `Range`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use ds4_gguf::{GgufWriter, TensorSpec, TensorType, Value};

const Q2_FILE: &str = "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf";

/// How the server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The first response announces the whole file but stops halfway; later ones honour Range.
    DropFirstHalfway,
    /// Every response stops halfway through what it announced.
    AlwaysShort,
}

#[derive(Default)]
struct Log {
    /// (Range header, Authorization header) per request.
    requests: Vec<(Option<String>, Option<String>)>,
}

/// A small valid GGUF: a few metadata keys and one 64 KiB tensor of seeded bytes.
fn sample_gguf(seed: u32) -> Vec<u8> {
    let n = 16384u64;
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("deepseek4".into()),
        ),
        (
            "general.name".to_string(),
            Value::String("download test".into()),
        ),
    ];
    let tensors = [TensorSpec::new("blob", &[n], TensorType::F32)];
    let mut w = GgufWriter::new(Vec::new(), &meta, &tensors).expect("writer");
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let data: Vec<u8> = (0..n * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    w.write_data(&data).expect("data");
    w.finish().expect("finish")
}

fn header(lines: &[String], name: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn serve_one(stream: TcpStream, body: &[u8], mode: Mode, n_prev: usize, log: &Mutex<Log>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    let range = header(&lines, "Range");
    log.lock()
        .expect("log")
        .requests
        .push((range.clone(), header(&lines, "Authorization")));
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut out = stream;
    let total = body.len();
    let head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            total - start,
            total - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
    };
    let _ = out.write_all(head.as_bytes());
    let send = match mode {
        Mode::DropFirstHalfway if n_prev == 0 => &body[start..total / 2],
        Mode::DropFirstHalfway => &body[start..],
        // Half the file, then nothing more: a resume never gets a byte.
        Mode::AlwaysShort if start == 0 => &body[..total / 2],
        Mode::AlwaysShort => &body[..0],
    };
    let _ = out.write_all(send);
    let _ = out.flush();
    // Dropping the stream closes the connection: the client sees a short body.
}

/// Serves `body` at any path on 127.0.0.1; returns the base URL and the request log.
fn start_server(body: Vec<u8>, mode: Mode) -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Log::default()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            serve_one(stream, &body, mode, i, &log2);
        }
    });
    (format!("http://{addr}/repo/resolve/main"), log)
}

fn ds4_download(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ds4"))
        .arg("download")
        .args(args)
        .current_dir(cwd)
        .env_remove("HF_TOKEN")
        .env_remove("DS4_GGUF_DIR")
        .env_remove("DS4_DOWNLOAD_BASE_URL")
        .env("HF_HOME", cwd.join("no-hf-home"))
        .output()
        .expect("run ds4")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn dropped_connection_resumes_with_range_and_is_byte_identical() {
    let body = sample_gguf(1);
    let (url, log) = start_server(body.clone(), Mode::DropFirstHalfway);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = ds4_download(
        tmp.path(),
        &["q2-imatrix", "--base-url", &url, "--token", "sekrit"],
    );
    assert!(o.status.success(), "download failed:\n{}", text(&o));
    let got = std::fs::read(tmp.path().join("gguf").join(Q2_FILE)).expect("downloaded file");
    assert!(
        got == body,
        "downloaded bytes differ ({} vs {} bytes)",
        got.len(),
        body.len()
    );
    assert!(
        !tmp.path()
            .join("gguf")
            .join(format!("{Q2_FILE}.part"))
            .exists(),
        ".part left behind"
    );

    let requests = log.lock().expect("log").requests.clone();
    assert_eq!(
        requests.len(),
        2,
        "expected one drop and one resume: {:?}",
        requests
    );
    assert_eq!(requests[0].0, None);
    assert_eq!(
        requests[1].0.as_deref(),
        Some(format!("bytes={}-", body.len() / 2).as_str())
    );
    assert!(
        requests
            .iter()
            .all(|r| r.1.as_deref() == Some("Bearer sekrit")),
        "token not sent: {requests:?}"
    );

    let link = tmp.path().join("ds4flash.gguf");
    let target = std::fs::read_link(&link).expect("ds4flash.gguf is a symlink");
    assert_eq!(target, Path::new("gguf").join(Q2_FILE));
    assert_eq!(std::fs::read(&link).expect("read via link"), body);
    let out = text(&o);
    assert!(out.contains("Linked ") && out.contains("Done."), "{out}");

    // A second run finds the file and does not touch the network.
    let o = ds4_download(tmp.path(), &["q2-imatrix", "--base-url", &url]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Already downloaded:"), "{}", text(&o));
    assert_eq!(log.lock().expect("log").requests.len(), 2);
}

#[test]
fn an_interrupted_run_is_resumed_by_the_next_run() {
    let body = sample_gguf(2);
    let (url, log) = start_server(body.clone(), Mode::DropFirstHalfway);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = ds4_download(
        tmp.path(),
        &[
            "mtp",
            "--base-url",
            &url,
            "--retries",
            "0",
            "--dir",
            "models",
        ],
    );
    assert!(
        !o.status.success(),
        "a dropped connection with --retries 0 must fail"
    );
    assert!(text(&o).contains("download incomplete"), "{}", text(&o));
    let part = tmp
        .path()
        .join("models/DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf.part");
    assert_eq!(
        std::fs::metadata(&part).expect(".part kept").len(),
        body.len() as u64 / 2
    );

    let o = ds4_download(
        tmp.path(),
        &[
            "mtp",
            "--base-url",
            &url,
            "--retries",
            "0",
            "--dir",
            "models",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read(
        tmp.path()
            .join("models/DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf"),
    )
    .expect("file");
    assert!(got == body, "resumed file differs");
    assert_eq!(
        log.lock().expect("log").requests[1].0.as_deref(),
        Some(format!("bytes={}-", body.len() / 2).as_str())
    );
    // The MTP draft is not a model: no ds4flash.gguf link.
    assert!(std::fs::symlink_metadata(tmp.path().join("ds4flash.gguf")).is_err());
    assert!(text(&o).contains("--mtp"), "{}", text(&o));
}

#[test]
fn a_corrupt_file_fails_the_integrity_check_and_is_not_installed() {
    let mut body = sample_gguf(3);
    body[0..4].copy_from_slice(b"GGXF");
    let (url, _log) = start_server(body, Mode::DropFirstHalfway);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = ds4_download(tmp.path(), &["q4", "--base-url", &url]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("integrity check failed") && out.contains("not a valid GGUF"),
        "{out}"
    );
    assert!(
        std::fs::symlink_metadata(tmp.path().join("ds4flash.gguf")).is_err(),
        "corrupt file linked"
    );
    let names: Vec<_> = std::fs::read_dir(tmp.path().join("gguf"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        names.iter().all(|n| n.to_string_lossy().ends_with(".part")),
        "corrupt file got its final name: {names:?}"
    );
}

#[test]
fn a_server_that_never_finishes_gives_a_clear_error() {
    let (url, log) = start_server(sample_gguf(4), Mode::AlwaysShort);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = ds4_download(tmp.path(), &["q2", "--base-url", &url, "--retries", "1"]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("download incomplete") && out.contains("run the command again"),
        "{out}"
    );
    // --retries 1: the short first response, one resume that brings nothing, then give up.
    assert_eq!(log.lock().expect("log").requests.len(), 2);
}

#[test]
fn unknown_targets_and_missing_targets_are_usage_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let o = ds4_download(tmp.path(), &["q8"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("Unknown model: q8"), "{}", text(&o));
    let o = ds4_download(tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = ds4_download(tmp.path(), &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("q2-imatrix"));
}
