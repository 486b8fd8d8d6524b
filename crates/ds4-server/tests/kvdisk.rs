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
