//! The checkpoint store (spec/server.md §5.4-5.9): save/lookup/load round trips, corrupt files,
//! the byte budget, the tool map, and two writers sharing a directory.

mod common;

use std::path::Path;

use common::{state, tiny_config, CTX, PREFILL_CAP};
use ds4_kvcache::{
    CacheError, CacheOptions, Checkpoint, DiskCache, Entry, KeyKind, ModelIdentity, SaveOutcome,
    SaveReason, ToolMemory,
};
use ds4_model::KvSnapshot;

const MODEL: ModelIdentity = ModelIdentity {
    quant_bits: 2,
    fingerprint: 0xd54_d54,
};

fn open(dir: &Path, budget: u64) -> DiskCache {
    let mut opts = CacheOptions::new(dir);
    opts.budget_bytes = budget;
    opts.min_tokens = 1;
    DiskCache::open(opts, tiny_config(), CTX, PREFILL_CAP, MODEL).expect("open")
}

struct Session {
    tokens: Vec<u32>,
    logits: Vec<f32>,
    kv: KvSnapshot,
}

fn session(n: usize, seed: u64) -> Session {
    let (tokens, logits, kv) = state(&tiny_config(), n, seed);
    Session { tokens, logits, kv }
}

fn checkpoint<'a>(key: &'a [u8], s: &'a Session, tool_map: &'a [ToolMemory]) -> Checkpoint<'a> {
    Checkpoint {
        key_text: key,
        key_kind: KeyKind::TokenText,
        reason: SaveReason::Cold,
        tokens: &s.tokens,
        logits: &s.logits,
        kv: &s.kv,
        tool_map,
    }
}

fn save(cache: &DiskCache, key: &[u8], s: &Session) -> std::path::PathBuf {
    match cache.save(&checkpoint(key, s, &[])).expect("save") {
        SaveOutcome::Written { path, .. } => path,
        other => panic!("not written: {other:?}"),
    }
}

fn only_entry(cache: &DiskCache, prompt: &[u8]) -> Entry {
    cache.lookup(prompt).expect("a checkpoint for the prompt")
}

#[test]
fn save_lookup_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let s = session(40, 1);
    let key = b"<|begin|>system prompt".as_slice();
    let path = save(&cache, key, &s);
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some(ds4_kvcache::file_name(key).as_str())
    );
    assert!(
        cache.lookup(b"<|begin|>system").is_none(),
        "a key longer than the prompt never matches"
    );
    assert!(
        cache.lookup(b"<|begin|>system prompX and more").is_none(),
        "not a prefix"
    );
    let prompt = b"<|begin|>system prompt, then the user turn";
    let e = only_entry(&cache, prompt);
    assert_eq!(
        (e.header.n_tokens, e.header.ctx, e.header.hits, e.key_len),
        (40, CTX as u32, 0, key.len() as u64)
    );
    let loaded = cache.load(&e, prompt).expect("load");
    assert_eq!(
        (loaded.state.tokens, loaded.state.logits, loaded.state.kv),
        (s.tokens, s.logits, s.kv)
    );
    assert_eq!(loaded.key_len, key.len());
    assert!(!loaded.consumed);
    assert_eq!(
        only_entry(&cache, prompt).header.hits,
        1,
        "a hit is recorded in place"
    );
    // The file's bytes after the header are exactly: u32 key length, key, payload.
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(&bytes[..4], b"KVC\x02");
    assert_eq!(&bytes[56..60], &(key.len() as u32).to_le_bytes());
    assert_eq!(&bytes[60..60 + key.len()], key);
    assert_eq!(&bytes[60 + key.len()..64 + key.len()], b"DSV4");
}

#[test]
fn longest_key_wins_and_ties_prefer_more_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let (short, long) = (session(20, 2), session(60, 3));
    save(&cache, b"abc", &short);
    save(&cache, b"abcdef", &long);
    assert_eq!(only_entry(&cache, b"abcdefgh").header.n_tokens, 60);
    assert_eq!(only_entry(&cache, b"abcdeX").header.n_tokens, 20);
    let loaded = cache
        .load(&only_entry(&cache, b"abcdefgh"), b"abcdefgh")
        .expect("load");
    assert_eq!(loaded.state.tokens, long.tokens);
}

#[test]
fn checkpoints_below_min_tokens_or_over_budget_are_not_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = CacheOptions::new(dir.path());
    opts.min_tokens = 50;
    opts.budget_bytes = 1 << 30;
    let cache = DiskCache::open(opts, tiny_config(), CTX, PREFILL_CAP, MODEL).expect("open");
    let s = session(40, 4);
    assert_eq!(
        cache.save(&checkpoint(b"k", &s, &[])).expect("save"),
        SaveOutcome::TooShort { n_tokens: 40 }
    );
    let small = open(dir.path(), 10_000);
    assert!(matches!(
        small.save(&checkpoint(b"k", &s, &[])).expect("save"),
        SaveOutcome::TooLarge { .. }
    ));
    assert_eq!(small.entries().len(), 0);
}

#[test]
fn another_model_or_quant_or_larger_ctx_is_not_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let s = session(30, 5);
    save(&cache, b"key", &s);
    let e = only_entry(&cache, b"key+");

    let other = DiskCache::open(
        {
            let mut o = CacheOptions::new(dir.path());
            o.min_tokens = 1;
            o
        },
        tiny_config(),
        CTX,
        PREFILL_CAP,
        ModelIdentity {
            fingerprint: 1,
            ..MODEL
        },
    )
    .expect("open");
    assert!(other.lookup(b"key+").is_none());
    assert!(
        matches!(other.load(&e, b"key+"), Err(CacheError::Incompatible { reason, .. }) if reason.contains("another model"))
    );

    let mut o = CacheOptions::new(dir.path());
    o.min_tokens = 1;
    o.reject_different_quant = true;
    let q4 = DiskCache::open(
        o,
        tiny_config(),
        CTX,
        PREFILL_CAP,
        ModelIdentity {
            quant_bits: 4,
            ..MODEL
        },
    )
    .expect("open");
    assert!(q4.lookup(b"key+").is_none());

    let small_ctx = DiskCache::open(
        {
            let mut o = CacheOptions::new(dir.path());
            o.min_tokens = 1;
            o
        },
        tiny_config(),
        128,
        PREFILL_CAP,
        MODEL,
    )
    .expect("open");
    assert!(small_ctx.lookup(b"key+").is_none());

    // A runtime with another prefill cap: the file is sound, so it is refused but kept.
    let other_cap = DiskCache::open(
        {
            let mut o = CacheOptions::new(dir.path());
            o.min_tokens = 1;
            o
        },
        tiny_config(),
        CTX,
        64,
        MODEL,
    )
    .expect("open");
    let e = only_entry(&other_cap, b"key+");
    assert!(
        matches!(other_cap.load(&e, b"key+"), Err(CacheError::Incompatible { reason, .. }) if reason.contains("chunk layout"))
    );
    assert!(e.path.exists());
    assert!(
        cache.load(&e, b"key+").is_ok(),
        "still loads in the runtime that wrote it"
    );
}

/// Damages the saved file with `damage` and checks that the store neither lists nor loads it, and
/// removes it.
fn damaged_file_is_refused_and_removed(damage: impl Fn(&mut Vec<u8>)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let s = session(33, 6);
    let path = save(&cache, b"prompt", &s);
    let e = only_entry(&cache, b"prompt!");
    let mut bytes = std::fs::read(&path).expect("read");
    damage(&mut bytes);
    std::fs::write(&path, &bytes).expect("write");
    match cache.lookup(b"prompt!") {
        None => {}
        Some(e) => assert!(matches!(
            cache.load(&e, b"prompt!"),
            Err(CacheError::Corrupt { .. })
        )),
    }
    // Loading the entry found before the damage fails too (it re-reads the file).
    if path.exists() {
        assert!(cache.load(&e, b"prompt!").is_err());
    }
    assert!(!path.exists(), "the damaged file was removed");
    assert!(cache.lookup(b"prompt!").is_none());
}

#[test]
fn zero_length_file_is_removed() {
    damaged_file_is_refused_and_removed(|b| b.clear());
}

#[test]
fn truncated_files_are_removed() {
    for cut in [1usize, 4, 100, 5000] {
        damaged_file_is_refused_and_removed(|b| b.truncate(b.len() - cut));
    }
    damaged_file_is_refused_and_removed(|b| b.truncate(59));
}

#[test]
fn bit_flips_in_payload_or_key_are_detected() {
    // Logits, a raw row, a frontier, the last byte; a payload header word; the key text.
    for at in [60 + 6 + 52 + 4 * 40 + 3, 1500, 20_000, usize::MAX] {
        damaged_file_is_refused_and_removed(|b| {
            let i = at.min(b.len() - 1);
            b[i] ^= 0x10;
        });
    }
    damaged_file_is_refused_and_removed(|b| b[60 + 6 + 4 * 9] ^= 1); // payload head_dim word
    damaged_file_is_refused_and_removed(|b| b[8] ^= 1); // header token count
}

#[test]
fn flipped_key_text_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let path = save(&cache, b"prompt", &session(33, 7));
    let e = only_entry(&cache, b"prompt!");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[61] ^= 0x20; // "pRompt": no longer hashes to the file name
    std::fs::write(&path, &bytes).expect("write");
    // Lookup matches names against the prompt without reading key texts (spec/server.md §5.7);
    // the load re-reads the key, finds it does not hash to the name, and removes the file.
    let e2 = only_entry(&cache, b"prompt!");
    assert_eq!(e2.path, e.path);
    assert!(matches!(
        cache.load(&e2, b"prompt!"),
        Err(CacheError::Corrupt { .. })
    ));
    assert!(!path.exists());

    // A sound file whose key is simply not a prefix of this prompt is kept.
    let path = save(&cache, b"prompt", &session(33, 7));
    let e = only_entry(&cache, b"prompt!");
    assert!(matches!(
        cache.load(&e, b"other prompt"),
        Err(CacheError::KeyMismatch { .. })
    ));
    assert!(path.exists());
}

#[test]
fn other_versions_and_foreign_names_are_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join(format!("{}.kv", "a".repeat(40)));
    let mut original = vec![0u8; 200];
    original[..4].copy_from_slice(b"KVC\x01");
    std::fs::write(&v1, &original).expect("write");
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"hello").expect("write");
    let cache = open(dir.path(), 100);
    assert!(cache.entries().is_empty());
    assert!(v1.exists() && other.exists());
    assert_eq!(
        cache.total_bytes(),
        0,
        "files that are not ours do not count against the budget"
    );
}

#[test]
fn space_limit_holds_after_200_saves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = session(24, 8);
    let one = {
        let probe = tempfile::tempdir().expect("tempdir");
        let c = open(probe.path(), 1 << 30);
        let p = save(&c, b"probe-key-000", &s);
        std::fs::metadata(p).expect("meta").len()
    };
    let budget = one * 10 + one / 2;
    let cache = open(dir.path(), budget);
    for i in 0..200 {
        let key = format!("probe-key-{i:03}");
        let path = save(&cache, key.as_bytes(), &s);
        assert!(path.exists(), "the file just written survives eviction");
        let total = cache.total_bytes();
        assert!(total <= budget, "after save {i}: {total} > {budget}");
    }
    assert_eq!(cache.entries().len(), 10);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left behind");
}

#[test]
fn eviction_prefers_denser_and_more_used_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let (sparse, dense) = (session(10, 9), session(200, 10));
    let sparse_path = save(&cache, b"sparse", &sparse);
    let dense_path = save(&cache, b"dense", &dense);
    let used_path = save(&cache, b"used", &sparse);
    for _ in 0..3 {
        cache
            .load(&only_entry(&cache, b"used..."), b"used...")
            .expect("load");
    }
    let sizes: Vec<u64> = [&sparse_path, &dense_path, &used_path]
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .collect();
    // Budget for everything but one file: the unused sparse checkpoint goes first (score
    // tokens/size is lowest; the used one has (3 + 1)x its score).
    let tight = open(dir.path(), sizes.iter().sum::<u64>() - 1);
    assert!(!sparse_path.exists());
    assert!(dense_path.exists() && used_path.exists());
    drop(tight);
}

#[test]
fn tool_map_round_trips_and_is_rewritten_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path(), 1 << 30);
    let s = session(50, 11);
    let map = vec![
        ToolMemory {
            id: "call_1".into(),
            dsml: "<｜DSML｜invoke name=\"f\">...</｜DSML｜invoke>".into(),
        },
        ToolMemory {
            id: "call_2".into(),
            dsml: "block two".into(),
        },
    ];
    let path = match cache
        .save(&checkpoint(b"with tools", &s, &map))
        .expect("save")
    {
        SaveOutcome::Written { path, .. } => path,
        other => panic!("{other:?}"),
    };
    let loaded = cache
        .load(&only_entry(&cache, b"with tools!"), b"with tools!")
        .expect("load");
    assert_eq!(loaded.tool_map, map);
    let found = cache.find_tool_memories(&["call_2", "call_9"]);
    assert_eq!(found, vec![map[1].clone()]);

    let new_map = vec![ToolMemory {
        id: "call_3".into(),
        dsml: "three".into(),
    }];
    let outcome = cache
        .save(&checkpoint(b"with tools", &s, &new_map))
        .expect("save again");
    assert_eq!(outcome, SaveOutcome::ToolMapUpdated { path: path.clone() });
    let loaded = cache
        .load(&only_entry(&cache, b"with tools!"), b"with tools!")
        .expect("load");
    assert_eq!(loaded.tool_map, new_map);
    assert_eq!(loaded.state.tokens, s.tokens, "the payload is untouched");
    assert!(
        cache.find_tool_memories(&["call_2"]).is_empty(),
        "the old map is gone"
    );
    assert_eq!(cache.find_tool_memories(&["call_3"]), new_map);

    assert!(matches!(
        cache
            .save(&checkpoint(b"with tools", &s, &[]))
            .expect("save"),
        SaveOutcome::ToolMapUpdated { .. }
    ));
    let e = only_entry(&cache, b"with tools!");
    assert!(!e.header.has_tool_map);
    assert_eq!(e.file_bytes, std::fs::metadata(&path).expect("meta").len());
    assert!(cache
        .load(&e, b"with tools!")
        .expect("load")
        .tool_map
        .is_empty());

    let bad = vec![ToolMemory {
        id: String::new(),
        dsml: "x".into(),
    }];
    assert!(matches!(
        cache.save(&checkpoint(b"other", &s, &bad)),
        Err(CacheError::BadCheckpoint(_))
    ));
}

#[test]
fn long_checkpoints_are_consumed_on_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = CacheOptions::new(dir.path());
    opts.min_tokens = 1;
    opts.consume_above_tokens = 100;
    let cache = DiskCache::open(opts, tiny_config(), CTX, PREFILL_CAP, MODEL).expect("open");
    let path = save(&cache, b"long", &session(150, 12));
    let loaded = cache
        .load(&only_entry(&cache, b"long."), b"long.")
        .expect("load");
    assert!(loaded.consumed && !path.exists());
}

/// Size of one file saved by [`writer`] (key lengths differ by a few bytes; this is the largest).
fn writer_file_bytes(s: &Session) -> u64 {
    let probe = tempfile::tempdir().expect("tempdir");
    let p = save(&open(probe.path(), 1 << 30), b"shared-00", s);
    std::fs::metadata(p).expect("meta").len()
}

/// One writer: its own store on `dir` (as a separate process would have); half the keys are
/// shared with the other writer.
fn writer(dir: &Path, budget: u64, w: usize, s: &Session) {
    let cache = open(dir, budget);
    for i in 0..30 {
        let key = if i % 2 == 0 {
            format!("shared-{i:02}")
        } else {
            format!("w{w}-{i:02}")
        };
        // A shared key the other writer stored first is only updated in place.
        match cache
            .save(&checkpoint(key.as_bytes(), s, &[]))
            .expect("save")
        {
            SaveOutcome::Written { .. } | SaveOutcome::ToolMapUpdated { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// After two writers: the budget holds, every surviving file loads, no temp file is left.
fn check_after_writers(dir: &Path, budget: u64, s: &Session, one: u64) {
    let cache = open(dir, budget);
    let entries = cache.entries();
    assert!(cache.total_bytes() <= budget);
    assert_eq!(entries.len() as u64, budget / one);
    for e in entries {
        let bytes = std::fs::read(&e.path).expect("read");
        let key = &bytes[60..60 + e.key_len as usize];
        let loaded = cache.load(&e, key).expect("every surviving file loads");
        assert_eq!(loaded.state.tokens, s.tokens);
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == ".lock" || ds4_kvcache::is_cache_file_name(n)),
        "{names:?}"
    );
}

#[test]
fn two_writer_threads_sharing_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = session(24, 13);
    let one = writer_file_bytes(&s);
    let budget = one * 12 + one / 2;
    std::thread::scope(|scope| {
        for w in 0..2 {
            let (dir, s) = (dir.path(), &s);
            scope.spawn(move || writer(dir, budget, w, s));
        }
    });
    check_after_writers(dir.path(), budget, &s, one);
}

/// Test-only: set in the child processes of `two_writer_processes_sharing_a_directory`.
const CHILD_ENV: &str = "KVCACHE_TEST_WRITER";

#[test]
fn two_writer_processes_sharing_a_directory() {
    let s = session(24, 13);
    let one = writer_file_bytes(&s);
    let budget = one * 12 + one / 2;
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        // Child: "<writer id>:<dir>".
        let (w, dir) = arg.split_once(':').expect("writer id and dir");
        writer(Path::new(dir), budget, w.parse().expect("writer id"), &s);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    // Both writers run at once, each a separate process with its own pid and temp names.
    let spawned: Vec<_> = (0..2)
        .map(|w| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "two_writer_processes_sharing_a_directory",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{w}:{}", dir.path().display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn writer")
        })
        .collect();
    for c in spawned {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a writer process failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check_after_writers(dir.path(), budget, &s, one);
}

#[test]
fn temp_files_of_exited_writers_are_removed_at_open_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    // A writer that has exited: a child process we waited for.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let dead_tmp = dir.path().join(format!("{sha}.kv.tmp.{dead}.0"));
    let live_tmp = dir
        .path()
        .join(format!("{sha}.kv.tmp.{}.0", std::process::id()));
    std::fs::write(&dead_tmp, b"half a checkpoint").unwrap();
    std::fs::write(&live_tmp, b"a save in progress").unwrap();
    let _cache = open(dir.path(), 1 << 30);
    if Path::new("/proc/self").exists() {
        assert!(
            !dead_tmp.exists(),
            "an exited writer's temp file is removed"
        );
    }
    assert!(live_tmp.exists(), "a live writer's temp file is kept");
}
