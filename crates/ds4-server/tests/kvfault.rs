//! Crash safety of the disk KV cache (issue 7, spec/server.md §5.4-5.9) against the real
//! `ds4-server` binary on the built-in demo model (its GGUF passed with `-m`).
//!
//! * `kill_dash_nine_during_saves_never_leaves_a_file_that_loads_wrong`: 50 times, a server on a
//!   shared `--kv-disk-dir` is SIGKILLed while it saves checkpoints (every 16 tokens, during
//!   prefill and decode; half of the kills land a random time into the request, half the moment a
//!   temp file appears, i.e. inside a save). After each kill every `.kv` file either loads and is
//!   bit-identical to an independent in-process computation of the same tokens, or is refused as
//!   corrupt and removed; temp files are never listed; the restarted server answers a greedy
//!   request exactly like a server without a disk cache, also when it restored from disk.
//! * `a_diverging_request_rewinds_to_a_checkpoint_and_answers_like_a_fresh_server`: spec/model.md
//!   §4.4 at the server level: a prompt that diverges inside the live state is served from the
//!   checkpoint of the shared prefix and answers exactly like a fresh server.
//! * `zero_length_truncated_and_flipped_files_are_detected_removed_and_skipped`: damaged files
//!   put where the server's lookup will find them are removed, the request is served correctly
//!   (from the next-best checkpoint or cold), and a checksum failure is logged in the trace.
//!
//! Knobs that make saves small, frequent and aligned: `--kv-cache-min-tokens 16`,
//! `--kv-cache-continued-interval-tokens 16`, `--kv-cache-boundary-align-tokens 16`,
//! `--prefill-chunk 16`, cold saves off. With every prefill split at multiples of 16, a server
//! that restores a checkpoint performs exactly the arithmetic of one that never stopped, so the
//! comparisons below are bit for bit. Prompts are made of words that are one token each, so every
//! checkpoint boundary is a word boundary and the text after a restored key tokenizes to the same
//! ids as the whole prompt (spec §5.7 disk-text restore).
//!
//! `KVFAULT_SEED=N` replays a run; `KVFAULT_ITERATIONS=N` changes the loop count.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ds4_chat::{render_completion, ThinkMode, Tokenizer};
use ds4_engine::{BackendKind, Engine, EngineOptions, ModelSource, SessionSnapshot};
use ds4_kvcache::{is_cache_file_name, CacheError, CacheOptions, DiskCache, ModelIdentity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const CTX: usize = 1024;
/// Save step, prefill chunk and alignment (tokens).
const STEP: usize = 16;
const MAX_TOKENS: usize = 8;
/// `--kv-disk-space-mb`: about 24 demo checkpoints (0.6-0.7 MB each), so eviction runs too.
const BUDGET_MB: u64 = 16;

// ---- the model, shared by every test of this binary -----------------------------------------

struct Demo {
    /// The demo GGUF (`ds4-server --demo`'s model), generated once into a temp dir. Servers get
    /// it with `-m`, which skips `--demo`'s decoding of the built-in vocabulary (0.2 s a start).
    path: PathBuf,
    _dir: tempfile::TempDir,
    engine: Engine,
    identity: ModelIdentity,
}

fn demo() -> &'static Demo {
    static D: OnceLock<Demo> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tokens, merges) = ds4_chat::builtin_vocab();
        let path =
            ds4_model::synth::ensure_demo_model(dir.path(), tokens, merges).expect("demo model");
        let engine = Engine::open(&EngineOptions {
            model: ModelSource::File(path.clone()),
            backend: BackendKind::Cpu,
        })
        .expect("demo model loads");
        // The same identity the server computes in `open_disk`.
        let file = &engine.model().expect("file-backed engine").file;
        let identity = ds4_kvcache::model_identity(file).unwrap_or(ModelIdentity {
            quant_bits: 2,
            fingerprint: ds4_kvcache::model_fingerprint(file),
        });
        Demo {
            path,
            _dir: dir,
            engine,
            identity,
        }
    })
}

// ---- prompts ------------------------------------------------------------------------------

/// Common words; only those that are one token with a leading space are used.
const WORDS: &str = "the of and to in is was for on that with as by at from his her they this \
    have are not but had which one were all we when there can an been has more if will would \
    who so no out up into than them about time only new some could these two may first then do \
    any like my now over such our man me even most made after also did many before must through \
    back years where much your way well down should because each just those people how too little \
    state good very make world still own see men work long get here between both life being under \
    never day same another know while last might us great old year off come since against go came \
    right used take three";

fn one_token_words() -> &'static [String] {
    static W: OnceLock<Vec<String>> = OnceLock::new();
    W.get_or_init(|| {
        let tok = Tokenizer::builtin();
        let w: Vec<String> = WORDS
            .split_whitespace()
            .filter(|w| tok.encode_text(format!(" {w}").as_bytes()).len() == 1)
            .map(str::to_string)
            .collect();
        assert!(w.len() >= 100, "only {} one-token words", w.len());
        w
    })
}

/// A `/v1/completions` prompt: "Story" plus about `n` one-token words drawn from `rng`, and its
/// token ids as the server computes them (spec §2.9 rendering with thinking off).
///
/// The length is nudged so that it is not 1-3 tokens past a multiple of [`STEP`]: the session
/// evaluates suffixes shorter than 4 tokens one by one instead of as a batch (spec §5.1), and a
/// server that stopped at the last save point would then round differently from one that did not.
struct Prompt {
    text: String,
    tokens: Vec<u32>,
}

fn prompt(rng: &mut ChaCha8Rng, n: usize) -> Prompt {
    extend_prompt(rng, "Story", n)
}

/// `start` (a prompt text) plus at least `n` random one-token words.
fn extend_prompt(rng: &mut ChaCha8Rng, start: &str, n: usize) -> Prompt {
    let words = one_token_words();
    let tok = Tokenizer::builtin();
    let mut text = start.to_string();
    let mut added = 0;
    loop {
        let tokens = tok.encode_segments(&render_completion(&text, ThinkMode::None));
        if added >= n && !(1..4).contains(&(tokens.len() % STEP)) {
            // Word-by-word tokenization equals whole-text tokenization: every token boundary
            // is a word boundary (what makes a disk-text restore re-tokenize the rest the same).
            let per_word: Vec<u32> = std::iter::once("Story".to_string())
                .chain(text.split(' ').skip(1).map(|w| format!(" {w}")))
                .flat_map(|w| tok.encode_text(w.as_bytes()))
                .collect();
            assert_eq!(tok.encode_text(text.as_bytes()), per_word, "{text}");
            return Prompt { text, tokens };
        }
        text.push(' ');
        text.push_str(&words[rng.gen_range(0..words.len())]);
        added += 1;
    }
}

fn body(p: &Prompt) -> String {
    json!({"model": "deepseek-v4-flash", "prompt": p.text, "think": false,
           "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7})
    .to_string()
}

// ---- a ds4-server child process -----------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    trace: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(kv_dir: Option<&Path>, trace: &Path) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ds4-server"));
        let n = |v: usize| v.to_string();
        cmd.arg("-m")
            .arg(&demo().path)
            .args(["--port", "0", "--ctx", &n(CTX), "-n", &n(MAX_TOKENS)])
            .args(["--prefill-chunk", &n(STEP), "--trace"])
            .arg(trace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = kv_dir {
            cmd.arg("--kv-disk-dir")
                .arg(dir)
                .args(["--kv-disk-space-mb", &BUDGET_MB.to_string()])
                .args(["--kv-cache-min-tokens", &n(STEP)])
                .args(["--kv-cache-cold-max-tokens", "0"])
                .args(["--kv-cache-boundary-align-tokens", &n(STEP)])
                .args(["--kv-cache-continued-interval-tokens", &n(STEP)]);
        }
        let mut child = cmd.spawn().expect("spawn ds4-server");
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut log = String::new();
        let addr = loop {
            let mut line = String::new();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = child.kill();
                    panic!("ds4-server exited before listening:\n{log}");
                }
                Ok(_) => {}
            }
            log.push_str(&line);
            if let Some(a) = line.trim().strip_prefix("ds4-server: listening on http://") {
                break a.parse().expect("listen address");
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(log));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            if let Ok(mut s) = sink.lock() {
                s.push_str(&rest);
            }
        });
        Server {
            child,
            addr,
            trace: trace.to_path_buf(),
            stderr,
        }
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the worker writes its shutdown checkpoint, then the process exits.
    fn terminate(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
        let _ = self.child.wait();
    }

    /// What the server wrote to stderr so far.
    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn trace_text(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST `/v1/completions` with `Connection: close`; the whole response or an I/O error (a
/// killed server resets the connection).
fn post(addr: SocketAddr, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, rest.to_string()))
}

/// A completed greedy completion: text, prompt tokens, cached tokens.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    text: String,
    prompt_tokens: u64,
    cached: u64,
}

fn complete(addr: SocketAddr, p: &Prompt) -> Answer {
    let (status, body) = post(addr, &body(p)).expect("request");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    Answer {
        text: v["choices"][0]["text"].as_str().expect("text").to_string(),
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().expect("usage"),
        cached: v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached_tokens"),
    }
}

// ---- the independent reference: the same tokens evaluated in this process ------------------

/// Reference states by token list: what a checkpoint of these tokens must hold. Checkpoints of a
/// prompt's first `n <= len` tokens (n a multiple of 16) come from one prefill in 16-token
/// chunks; longer ones (decode or evict saves) prefill the prompt, then decode one token at a
/// time, as the worker does.
#[derive(Default)]
struct Reference {
    prompts: Vec<Vec<u32>>,
    states: HashMap<Vec<u32>, SessionSnapshot>,
}

impl Reference {
    fn add_prompt(&mut self, tokens: &[u32]) {
        self.prompts.push(tokens.to_vec());
    }

    fn state(&mut self, t: &[u32]) -> Option<&SessionSnapshot> {
        if !self.states.contains_key(t) {
            let p = self
                .prompts
                .iter()
                .find(|p| {
                    let m = p.len().min(t.len());
                    p[..m] == t[..m]
                })?
                .clone();
            let engine = &demo().engine;
            let mut s = engine.new_session(CTX).expect("session");
            if t.len() <= p.len() {
                // One ladder per prompt: every multiple of STEP up to t (and the end of t).
                let mut n = STEP;
                while n < t.len() {
                    s.sync(&t[..n], STEP, &mut |_| {}).expect("prefill");
                    self.states
                        .entry(t[..n].to_vec())
                        .or_insert_with(|| s.snapshot().expect("snapshot"));
                    n += STEP;
                }
                s.sync(t, STEP, &mut |_| {}).expect("prefill");
            } else {
                s.sync(&p, STEP, &mut |_| {}).expect("prefill");
                for &tok in &t[p.len()..] {
                    s.push(tok).expect("decode");
                }
            }
            self.states
                .insert(t.to_vec(), s.snapshot().expect("snapshot"));
        }
        self.states.get(t)
    }
}

// ---- checking a cache directory ------------------------------------------------------------

#[derive(Debug, Default)]
struct DirReport {
    /// `.kv` files that loaded and matched the reference bit for bit.
    verified: usize,
    /// `.kv` files verified by an earlier check and not touched since (same inode, size, mtime).
    unchanged: usize,
    /// `.kv` files refused as corrupt (and removed) at listing or load.
    corrupt: usize,
    /// `<name>.kv.tmp.<pid>.<n>` files present (a writer died between create and rename).
    temps: usize,
}

/// The key text stored in a `.kv` file (u32 length at offset 56, text from 60), if readable.
fn stored_key(path: &Path) -> Option<Vec<u8>> {
    let b = std::fs::read(path).ok()?;
    let n = u32::from_le_bytes(b.get(56..60)?.try_into().ok()?) as usize;
    b.get(60..60 + n).map(<[u8]>::to_vec)
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Identity of a file's contents for skipping re-verification: inode, size, mtime (ns).
type Stamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The reference plus the files already verified, so a check reloads only what changed.
#[derive(Default)]
struct Checker {
    reference: Reference,
    seen: HashMap<PathBuf, Stamp>,
}

impl Checker {
    fn check_dir(&mut self, dir: &Path) -> DirReport {
        check_dir(dir, &mut self.reference, Some(&mut self.seen))
    }
}

/// Every `.kv` file in `dir` loads (through the store, with this model's fingerprint) to exactly
/// the reference state of its tokens, or is refused as corrupt and is gone afterwards. Files in
/// `seen` with an unchanged stamp were verified before and are only counted.
fn check_dir(
    dir: &Path,
    reference: &mut Reference,
    mut seen: Option<&mut HashMap<PathBuf, Stamp>>,
) -> DirReport {
    let d = demo();
    let mut report = DirReport::default();
    let before = names(dir);
    report.temps = before.iter().filter(|n| n.contains(".kv.tmp.")).count();
    for n in &before {
        assert!(
            is_cache_file_name(n) || n.contains(".kv.tmp.") || n == ".lock",
            "unexpected file {n} in the cache directory"
        );
    }
    let opts = CacheOptions {
        min_tokens: 1,
        budget_bytes: u64::MAX / 4,
        consume_above_tokens: usize::MAX,
        ..CacheOptions::new(dir)
    };
    let cache = DiskCache::open(
        opts,
        d.engine.config().clone(),
        CTX,
        CTX.min(2048),
        d.identity,
    )
    .expect("open the store");
    let entries = cache.entries();
    for e in &entries {
        let name = e.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(is_cache_file_name(name), "listed a non-cache file {name}");
    }
    // Files that vanished from the listing were refused there (impossible header, short file).
    for n in before.iter().filter(|n| is_cache_file_name(n)) {
        let listed = entries.iter().any(|e| e.path.ends_with(n));
        if !listed {
            assert!(
                !dir.join(n).exists(),
                "{n}: refused at listing but not removed"
            );
            report.corrupt += 1;
        }
    }
    for e in entries {
        let unchanged = seen
            .as_deref()
            .and_then(|s| s.get(&e.path))
            .is_some_and(|&st| stamp(&e.path) == Some(st));
        if unchanged {
            report.unchanged += 1;
            continue;
        }
        let key = stored_key(&e.path).unwrap_or_default();
        match cache.load(&e, &key) {
            Ok(loaded) => {
                let got = &loaded.state;
                let want = reference.state(&got.tokens).unwrap_or_else(|| {
                    panic!(
                        "{}: {} tokens that are no prefix of any prompt sent",
                        e.path.display(),
                        got.tokens.len()
                    )
                });
                assert_eq!(
                    Tokenizer::builtin().decode(&got.tokens),
                    key,
                    "{}: key text is not the detokenized checkpoint",
                    e.path.display()
                );
                let same_logits = got
                    .logits
                    .iter()
                    .zip(&want.logits)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same_logits && got.logits.len() == want.logits.len(),
                    "{}: logits differ from a fresh evaluation of its {} tokens",
                    e.path.display(),
                    got.tokens.len()
                );
                assert!(
                    got.kv == want.kv,
                    "{}: KV state differs from a fresh evaluation of its {} tokens",
                    e.path.display(),
                    got.tokens.len()
                );
                report.verified += 1;
                // After the load: recording the hit rewrote the header in place.
                if let (Some(s), Some(st)) = (seen.as_deref_mut(), stamp(&e.path)) {
                    s.insert(e.path.clone(), st);
                }
            }
            Err(CacheError::Corrupt { path, .. }) => {
                assert!(
                    !path.exists(),
                    "{}: corrupt but not removed",
                    path.display()
                );
                report.corrupt += 1;
            }
            Err(other) => panic!("a crash must leave sound or corrupt files, not: {other}"),
        }
    }
    report
}

fn kv_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(is_cache_file_name))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn seed() -> u64 {
    std::env::var("KVFAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

// ---- the tests -----------------------------------------------------------------------------

#[test]
fn kill_dash_nine_during_saves_never_leaves_a_file_that_loads_wrong() {
    let iterations: usize = std::env::var("KVFAULT_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed = seed();
    println!("kvfault seed {seed} (KVFAULT_SEED={seed} replays it)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let kv = work.path().join("kv");
    let mut checker = Checker::default();

    // The check request and its answer from a server without a disk cache.
    let check = prompt(&mut rng, 110);
    checker.reference.add_prompt(&check.tokens);
    let plain = Server::start(None, &work.path().join("plain.trace"));
    let want = complete(plain.addr, &check);
    assert_eq!(want.prompt_tokens as usize, check.tokens.len());
    plain.kill9();

    let (mut restored, mut mid_write, mut finished, mut verified, mut corrupt) = (0, 0, 0, 0, 0);
    let mut request_s = 0.3f64;
    let (mut check_s, mut start_s) = (0.0, 0.0);
    let started = Instant::now();
    for i in 0..iterations {
        // The directory as the previous kill left it.
        let t = Instant::now();
        let r = checker.check_dir(&kv);
        check_s += t.elapsed().as_secs_f64();
        verified += r.verified;
        corrupt += r.corrupt;
        let t = Instant::now();
        let server = Server::start(Some(&kv), &work.path().join(format!("{i}.trace")));
        start_s += t.elapsed().as_secs_f64();
        assert!(
            kv_bytes(&kv) <= BUDGET_MB << 20,
            "iteration {i}: {} bytes of checkpoints over the {BUDGET_MB} MiB budget",
            kv_bytes(&kv)
        );
        // A restarted server serves the check request exactly like one without a disk cache.
        let got = complete(server.addr, &check);
        assert_eq!(got.text, want.text, "iteration {i}: {got:?}");
        assert_eq!(got.prompt_tokens, want.prompt_tokens);
        assert!((got.cached as usize).is_multiple_of(STEP), "{got:?}");
        if got.cached > 0 {
            restored += 1;
        }
        // A new prompt each time, so every kill request prefills and saves from scratch.
        let n_words = rng.gen_range(60..180);
        let victim = prompt(&mut rng, n_words);
        checker.reference.add_prompt(&victim.tokens);
        let addr = server.addr;
        let req_body = body(&victim);
        let t0 = Instant::now();
        let req = std::thread::spawn(move || post(addr, &req_body));
        if i % 2 == 0 {
            // A random moment of the request.
            let d = rng.gen_range(0.0..request_s * 1.2);
            std::thread::sleep(Duration::from_secs_f64(d));
        } else {
            // The moment a new save's temp file exists, plus up to 0.4 ms (a save of a demo
            // checkpoint, create to rename, takes about a millisecond here).
            let deadline = t0 + Duration::from_secs(10);
            let temps = |n: &Vec<String>| n.iter().filter(|n| n.contains(".kv.tmp.")).count();
            while temps(&names(&kv)) <= r.temps && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(50));
            }
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..400)));
        }
        server.kill9();
        if let Ok(Ok((200, _))) = req.join() {
            // The request finished before the kill: its time calibrates the next delays.
            request_s = t0.elapsed().as_secs_f64();
            finished += 1;
        }
        let temps_after = names(&kv).iter().filter(|n| n.contains(".kv.tmp.")).count();
        // One writer thread, one save at a time: a kill leaves at most one temp file.
        assert!(
            temps_after <= r.temps + 1,
            "iteration {i}: {temps_after} temp files"
        );
        if temps_after > r.temps {
            mid_write += 1;
        }
    }
    let r = checker.check_dir(&kv);
    verified += r.verified;
    corrupt += r.corrupt;
    println!(
        "kvfault: {iterations} kills in {:.1} s ({check_s:.1} s checking files, {start_s:.1} s \
         starting servers): {mid_write} inside a save (temp file left), {finished} after the \
         request had finished; {verified} new or changed files loaded and matched the reference \
         bit for bit, {corrupt} refused as corrupt; {restored} restarts restored the check \
         request from disk; {} temp files left",
        started.elapsed().as_secs_f64(),
        r.temps
    );
    assert!(verified > 0, "no checkpoint was ever verified");
    assert!(restored > 0, "no restart ever restored from disk");
    assert!(
        mid_write > 0,
        "no kill landed inside a save: the loop did not exercise the save window"
    );
}

/// spec/model.md §4.4 at the server: a request that shares only a prefix with the live session
/// cannot be served by cutting the live state back; the server goes back to a checkpoint of the
/// shared prefix (here from disk) and must then answer exactly like a fresh server.
#[test]
fn a_diverging_request_rewinds_to_a_checkpoint_and_answers_like_a_fresh_server() {
    let work = tempfile::tempdir().unwrap();
    let kv = work.path().join("kv");
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let shared = prompt(&mut rng, 60);
    let a = extend_prompt(&mut rng, &shared.text, 30);
    let b = extend_prompt(&mut rng, &shared.text, 30);
    let common = a
        .tokens
        .iter()
        .zip(&b.tokens)
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common > 4 * STEP && common < a.tokens.len().min(b.tokens.len()));

    let plain = Server::start(None, &work.path().join("plain.trace"));
    let want_b = complete(plain.addr, &b);
    plain.kill9();

    let s = Server::start(Some(&kv), &work.path().join("s.trace"));
    let got_a = complete(s.addr, &a);
    assert_eq!(got_a.cached, 0);
    // The live state now holds A's prompt and reply; B diverges inside it.
    let got_b = complete(s.addr, &b);
    assert_eq!(
        got_b.text, want_b.text,
        "rewound answer differs from a fresh server's"
    );
    assert_eq!(got_b.prompt_tokens, want_b.prompt_tokens);
    assert!(
        got_b.cached as usize >= STEP && got_b.cached as usize <= common,
        "B reused {} tokens; the shared prefix is {common}",
        got_b.cached
    );
    // With checkpoints every 16 tokens the best one is the last multiple of 16 in the prefix.
    assert_eq!(got_b.cached as usize, common / STEP * STEP);
    s.terminate();
}

/// Damage done to a checkpoint file's bytes.
type Damage = fn(&mut Vec<u8>);

#[test]
fn zero_length_truncated_and_flipped_files_are_detected_removed_and_skipped() {
    let work = tempfile::tempdir().unwrap();
    let kv = work.path().join("kv");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let p = prompt(&mut rng, 100);
    let mut reference = Reference::default();
    reference.add_prompt(&p.tokens);
    let plain = Server::start(None, &work.path().join("plain.trace"));
    let want = complete(plain.addr, &p);
    plain.kill9();

    // Checkpoints of the prompt at every multiple of 16 (and the shutdown save after it).
    let a = Server::start(Some(&kv), &work.path().join("a.trace"));
    assert_eq!(
        complete(a.addr, &p),
        Answer {
            cached: 0,
            ..want.clone()
        }
    );
    a.terminate();
    let tok = Tokenizer::builtin();
    let file_at = |n: usize| kv.join(ds4_kvcache::file_name(&tok.decode(&p.tokens[..n])));
    // The longest checkpoint at or below `n` tokens that is a prefix of the prompt.
    let best_at_or_below = |n: usize| {
        (STEP..=n)
            .rev()
            .filter(|m| m.is_multiple_of(STEP))
            .find(|&m| file_at(m).exists())
    };
    for n in (STEP..=p.tokens.len()).step_by(STEP) {
        assert!(file_at(n).exists(), "no checkpoint at {n} tokens");
    }

    // Each case damages the checkpoint lookup would pick (the longest prefix of the prompt), then
    // a fresh server gets the same request.
    let cases: [(&str, Damage); 4] = [
        ("zero-length", |b| b.clear()),
        ("truncated", |b| b.truncate(b.len() * 2 / 3)),
        ("bit flip in the payload", |b| {
            let i = b.len() / 2;
            b[i] ^= 0x10;
        }),
        ("bit flip in the key text", |b| b[61] ^= 0x01),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let top = best_at_or_below(p.tokens.len()).expect("a checkpoint to damage");
        let next = best_at_or_below(top - 1).unwrap_or(0);
        let path = file_at(top);
        let mut bytes = std::fs::read(&path).unwrap();
        damage(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let s = Server::start(Some(&kv), &work.path().join(format!("{i}.trace")));
        let got = complete(s.addr, &p);
        let trace = s.trace_text();
        assert_eq!(got.text, want.text, "{what}: output; log:\n{}", s.log());
        let load_failed = trace.contains("kv disk load failed");
        if bytes.len() > 60 && i >= 2 {
            // Found by the load (checksum or key hash): the worker logs it in the trace and
            // prefills cold. The store logs refusals at listing time through `tracing` only.
            assert!(
                load_failed && trace.contains("corrupt"),
                "{what}: not logged:\n{trace}"
            );
            assert_eq!(got.cached, 0, "{what}: a refused load means a cold prefill");
        } else {
            // Refused while listing (header or length impossible): skipped, and the next-longest
            // checkpoint serves the request.
            assert!(!load_failed, "{what}: {trace}");
            assert_eq!(got.cached as usize, next, "{what}: next-best checkpoint");
        }
        s.terminate();
        // The damaged file is gone: whatever the directory holds now (the server re-saves the
        // same prefixes) loads and matches a fresh evaluation, and nothing is left to refuse.
        let r = check_dir(&kv, &mut reference, None);
        assert_eq!(r.corrupt, 0, "{what}: a damaged file was left behind");
        assert!(r.verified > 0);
    }
}
