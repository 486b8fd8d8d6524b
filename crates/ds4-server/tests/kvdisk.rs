//! The disk KV cache across a restart (spec/server.md §5.6-5.7), on the real CPU backend and the
//! built-in demo model: server A prefills a chat and saves it (cold, then shutdown); server B,
//! started on the same `--kv-disk-dir`, restores it and prefills only the new turn.

mod common;

use std::net::SocketAddr;

use ds4_chat::Tokenizer;
use ds4_engine::{BackendKind, Engine, EngineOptions, ModelSource};
use ds4_kvcache::{CacheOptions, DiskCache, ModelIdentity, SaveReason};
use ds4_server::disk::{DiskKv, DiskPolicy};
use ds4_server::trace::Trace;
use ds4_server::{AppState, ServerConfig};
use serde_json::json;

use common::{post_forced, request};

const CTX: usize = 1024;

struct Running {
    addr: SocketAddr,
    state: AppState,
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// Graceful stop: the worker writes its shutdown checkpoint before this returns.
    fn stop(self) {
        let _ = self.stop.send(());
        self.state.join_worker();
        drop(self.rt);
    }

    fn metric(&self, name: &str) -> u64 {
        let text = request(self.addr, "GET", "/metrics", &[], "").body;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    }
}

fn policy() -> DiskPolicy {
    DiskPolicy {
        min_tokens: 64,
        cold_max_tokens: 1000,
        boundary_trim_tokens: 8,
        boundary_align_tokens: 16,
        // Continued saves are covered by the policy's unit tests; here they would add files.
        continued_interval_tokens: 0,
    }
}

fn start(engine: &Engine, disk_dir: Option<&std::path::Path>) -> Running {
    let session = engine.new_session(CTX).unwrap();
    let disk = disk_dir.map(|dir| {
        let p = policy();
        let file = &engine.model().unwrap().file;
        let model = ds4_kvcache::model_identity(file).unwrap_or(ModelIdentity {
            quant_bits: 2,
            fingerprint: ds4_kvcache::model_fingerprint(file),
        });
        let opts = CacheOptions {
            min_tokens: p.min_tokens,
            consume_above_tokens: p.cold_max_tokens,
            ..CacheOptions::new(dir)
        };
        let cache =
            DiskCache::open(opts, engine.config().clone(), CTX, CTX.min(2048), model).unwrap();
        DiskKv { cache, policy: p }
    });
    let cfg = ServerConfig {
        ctx: CTX,
        default_max_tokens: 64,
        test_forced_output: true,
        prefill_chunk: 64,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state =
        ds4_server::start_with_disk(cfg, session, Tokenizer::builtin(), trace(), disk).unwrap();
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
    Running {
        addr,
        state,
        rt,
        stop: tx,
    }
}

fn trace() -> Trace {
    match std::env::var_os("KVDISK_TRACE") {
        Some(p) => {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut p = std::path::PathBuf::from(p);
            p.set_extension(n.to_string());
            Trace::open(&p).unwrap()
        }
        None => Trace::off(),
    }
}

fn usage(v: &serde_json::Value) -> (u64, u64) {
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

#[test]
fn a_restarted_server_restores_the_saved_chat_from_disk() {
    let model_dir = tempfile::tempdir().unwrap();
    let kv_dir = tempfile::tempdir().unwrap();
    let (tokens, merges) = ds4_chat::builtin_vocab();
    let engine = Engine::open(&EngineOptions {
        model: ModelSource::Demo {
            cache_dir: model_dir.path().to_path_buf(),
            tokens,
            merges,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let system: String = (0..60)
        .map(|i| format!("Rule {i}: answer briefly and politely. "))
        .collect();
    let first = json!({"model": "deepseek-v4-flash", "think": false, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Tell me a story about a cat."}]});
    let reply = "The cat sat on the mat.";
    let second = json!({"model": "deepseek-v4-flash", "think": false, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Tell me a story about a cat."},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"}]});

    // Reference: one live server serving both turns (live prefix reuse, no disk).
    let live = start(&engine, None);
    let v1 = post_forced(live.addr, "/v1/chat/completions", &first, reply).json();
    let (p1, c1) = usage(&v1);
    assert_eq!(c1, 0);
    assert!(
        p1 >= policy().min_tokens as u64 * 2,
        "prompt too short: {p1}"
    );
    let live2 = post_forced(live.addr, "/v1/chat/completions", &second, "It slept.").json();
    let (p2_live, c2_live) = usage(&live2);
    live.stop();

    // Server A: first turn, then a graceful stop.
    let a = start(&engine, Some(kv_dir.path()));
    let va = post_forced(a.addr, "/v1/chat/completions", &first, reply).json();
    assert_eq!(usage(&va), (p1, 0));
    assert_eq!(a.metric("ds4_kv_disk_saves_total"), 1, "cold save");
    a.stop();
    let files = std::fs::read_dir(kv_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".kv"))
        .count();
    assert_eq!(files, 2, "cold + shutdown checkpoints");

    // Server B, same directory: the follow-up reuses what A held when it stopped.
    let b = start(&engine, Some(kv_dir.path()));
    let vb = post_forced(b.addr, "/v1/chat/completions", &second, "It slept.").json();
    let (p2, c2) = usage(&vb);
    assert_eq!(p2, p2_live);
    assert_eq!(
        c2, c2_live,
        "disk restore reuses as much as the live session: {vb}"
    );
    assert!(c2 > p1, "cached {c2} should cover the first prompt ({p1})");
    assert_eq!(b.metric("ds4_kv_disk_hits_total"), 1);
    b.stop();
}

#[test]
fn a_thinking_follow_up_restores_the_hidden_reasoning_after_a_restart() {
    let model_dir = tempfile::tempdir().unwrap();
    let kv_dir = tempfile::tempdir().unwrap();
    let (tokens, merges) = ds4_chat::builtin_vocab();
    let engine = Engine::open(&EngineOptions {
        model: ModelSource::Demo {
            cache_dir: model_dir.path().to_path_buf(),
            tokens,
            merges,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let system: String = (0..60)
        .map(|i| format!("Rule {i}: think, then answer. "))
        .collect();
    // Thinking mode: the follow-up drops the hidden reasoning, so the live tokens are no prefix
    // of the new prompt. The shutdown checkpoint is keyed by the thinking binding's visible
    // transcript (spec §5.6), which is, and its payload holds the sampled reasoning.
    let first = json!({"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is 2+2?"}]});
    let second = json!({"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"}]});
    let a = start(&engine, Some(kv_dir.path()));
    let v1 = post_forced(a.addr, "/v1/chat/completions", &first, "Add.</think>4").json();
    let (p1, _) = usage(&v1);
    let g1 = v1["usage"]["completion_tokens"].as_u64().unwrap();
    a.stop();
    let b = start(&engine, Some(kv_dir.path()));
    let vb = post_forced(b.addr, "/v1/chat/completions", &second, "Add.</think>6").json();
    let (_, c2) = usage(&vb);
    assert_eq!(b.metric("ds4_kv_disk_hits_total"), 1, "{vb}");
    assert_eq!(
        c2,
        p1 + g1,
        "the whole first turn, reasoning included: {vb}"
    );
    b.stop();

    // Without the shutdown checkpoint the cold save at the chat anchor (the shared scaffolding,
    // just before the last USER ahead of the first ASSISTANT) still serves part of the prompt.
    for e in std::fs::read_dir(kv_dir.path()).unwrap().flatten() {
        let f = std::fs::File::open(e.path()).unwrap();
        let mut head = [0u8; 8];
        use std::io::Read;
        if (&f).read_exact(&mut head).is_ok() && head[5] == SaveReason::Shutdown as u8 {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let c = start(&engine, Some(kv_dir.path()));
    let vc = post_forced(c.addr, "/v1/chat/completions", &second, "Add.</think>6").json();
    let (_, c3) = usage(&vc);
    assert!(
        c3 >= policy().min_tokens as u64 && c3 < p1,
        "cached {c3}, first prompt {p1}"
    );
    c.stop();
}

/// A `ds4-server --demo` process on a disk cache directory.
struct Proc {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Proc {
    fn spawn(
        demo_cache: &std::path::Path,
        kv_dir: &std::path::Path,
        trace: &std::path::Path,
    ) -> Proc {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ds4-server"))
            .args([
                "--demo",
                "--test-forced-output",
                "--port",
                "0",
                "--ctx",
                "1024",
                "-n",
                "256",
            ])
            .arg("--kv-disk-dir")
            .arg(kv_dir)
            .args([
                "--kv-cache-min-tokens",
                "64",
                "--kv-cache-cold-max-tokens",
                "1000",
                "--kv-cache-continued-interval-tokens",
                "0",
            ])
            .arg("--trace")
            .arg(trace)
            .env("DS4_CACHE_DIR", demo_cache)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(url) = line.strip_prefix("ds4-server: listening on http://") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("server did not start")
            .parse()
            .unwrap();
        Proc { child, addr }
    }

    /// SIGTERM, then wait for the exit (the worker's shutdown save happens on the way out).
    fn terminate(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let t = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "server exited with {st}");
                return;
            }
            assert!(t.elapsed().as_secs() < 60, "server did not exit on SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// spec §5.4 KTM / issue 7 item 4: server A samples a tool call and is stopped with SIGTERM (its
/// shutdown checkpoint carries the call's exact DSML in the tool-id map); server B, a new process
/// on the same directory, receives the follow-up with the call re-serialized by the client and
/// still renders the sampled bytes, so the restored checkpoint covers the whole first turn.
#[test]
fn exact_tool_replay_survives_a_restart_through_the_kv_tool_map() {
    let demo = tempfile::tempdir().unwrap();
    let kv_dir = tempfile::tempdir().unwrap();
    let traces = tempfile::tempdir().unwrap();
    let system: String = (0..40).map(|i| format!("Tool rule {i}. ")).collect();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]);
    // Bytes the canonical renderer would not produce: spaces around a JSON value.
    let sampled = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\"> 2 </｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let first = json!({"tools": tools, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Weather in Rome?"}]});

    let a = Proc::spawn(demo.path(), kv_dir.path(), &traces.path().join("a.txt"));
    let v1 = post_forced(
        a.addr,
        "/v1/chat/completions",
        &first,
        &format!("Look it up.</think>{sampled}"),
    )
    .json();
    assert_eq!(v1["choices"][0]["finish_reason"], "tool_calls", "{v1}");
    let (p1, _) = usage(&v1);
    let g1 = v1["usage"]["completion_tokens"].as_u64().unwrap();
    let call = v1["choices"][0]["message"]["tool_calls"][0].clone();
    a.terminate();
    // The shutdown checkpoint holds a tool map (header flag bit 0) naming the call.
    let id = call["id"].as_str().unwrap();
    let with_map: Vec<Vec<u8>> = std::fs::read_dir(kv_dir.path())
        .unwrap()
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap())
        .filter(|b| b.len() > 8 && b[6] & 1 == 1)
        .collect();
    assert_eq!(with_map.len(), 1, "one checkpoint with a KTM section");
    let bytes = &with_map[0];
    assert!(
        bytes.windows(3).any(|w| w == b"KTM")
            && bytes.windows(id.len()).any(|w| w == id.as_bytes())
    );

    let trace_b = traces.path().join("b.txt");
    let b = Proc::spawn(demo.path(), kv_dir.path(), &trace_b);
    let second = json!({"tools": tools, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "Look it up.", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"days\": 2, \"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": id, "content": "Sunny"}]});
    let v2 = post_forced(
        b.addr,
        "/v1/chat/completions",
        &second,
        "Sunny.</think>It is sunny.",
    )
    .json();
    let (_, cached) = usage(&v2);
    assert_eq!(
        cached,
        p1 + g1,
        "the restored checkpoint covers the sampled call: {v2}"
    );
    b.terminate();
    let text = std::fs::read_to_string(&trace_b).unwrap();
    assert!(
        text.contains("tool_replay: mem=1 disk=1 canonical=0 missing_ids=0"),
        "{text}"
    );
    assert!(text.contains("cache_source: disk-text"), "{text}");
    let prompt = text
        .split("--- rendered prompt ---\n")
        .nth(1)
        .and_then(|r| r.split("\n--- generated ---").next())
        .unwrap();
    assert!(
        prompt.contains(sampled),
        "exact sampled DSML in the prompt:\n{prompt}"
    );
}
