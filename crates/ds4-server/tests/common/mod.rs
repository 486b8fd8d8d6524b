//! Test harness: an in-process server over the deterministic fake backend (real tokenizer), and a
//! tiny blocking HTTP/1.1 client (so the tests see exact bytes, headers and SSE framing).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ds4_chat::Tokenizer;
use ds4_engine::testing::FakeBackend;
use ds4_engine::Session;
use ds4_server::trace::Trace;
use ds4_server::{AppState, ServerConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        ctx: 4096,
        default_max_tokens: 512,
        test_forced_output: true,
        prefill_chunk: 64,
        ..Default::default()
    }
}

pub fn start(cfg: ServerConfig) -> TestServer {
    start_with_delay(cfg, Duration::ZERO)
}

/// `delay`: sleep per evaluated token in the fake backend (a slow model).
pub fn start_with_delay(cfg: ServerConfig, delay: Duration) -> TestServer {
    start_full(cfg, delay, Trace::off())
}

/// A server that traces into `path` (`--trace`).
pub fn start_traced(cfg: ServerConfig, delay: Duration, path: &std::path::Path) -> TestServer {
    start_full(cfg, delay, Trace::open(path).unwrap())
}

pub fn start_full(cfg: ServerConfig, delay: Duration, trace: Trace) -> TestServer {
    let tok = Tokenizer::builtin();
    let mut backend = FakeBackend::new(tok.n_vocab(), cfg.ctx);
    backend.delay_per_token = delay;
    let session = Session::new(Box::new(backend));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = ds4_server::start(cfg, session, tok, trace).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    rt.spawn(async move {
        let _ = ds4_server::serve(listener, st, async {
            let _ = rx.await;
        })
        .await;
    });
    TestServer {
        addr,
        state,
        rt,
        stop: Some(tx),
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
    /// `(event name, data)` pairs of an SSE body with `event:` lines.
    pub fn sse_named(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        let mut name = String::new();
        for l in self.body.lines() {
            if let Some(n) = l.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = l.strip_prefix("data: ") {
                out.push((std::mem::take(&mut name), serde_json::from_str(d).unwrap()));
            }
        }
        out
    }
}

/// Percent-encodes a forced output for the `x-ds4-test-output` header.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b" .,:;!?-_'()[]{}".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
    out
}

pub fn raw_request(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw_request(addr, req.as_bytes())
}

pub fn post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

/// POST with a forced model output.
pub fn post_forced(addr: SocketAddr, path: &str, body: &serde_json::Value, output: &str) -> Resp {
    let h = enc(output);
    request(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("x-ds4-test-output", &h),
        ],
        &body.to_string(),
    )
}
