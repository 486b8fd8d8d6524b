//! Rewind (spec/model.md §4.4): a session that went past position P and is put back on a snapshot
//! taken at P must be indistinguishable from a fresh session that only ever prefilled the first P
//! tokens: the next-token logits bit for bit, and every token evaluated after that too. Checked
//! for an in-memory snapshot, for the §4.3 payload bytes (encode -> decode -> restore), for a
//! `.kv` file of the disk store (save -> lookup -> load -> restore), and for `Session::sync`'s own
//! checkpoint rebase.
//!
//! Model: the synthetic tiny preset (n_swa 16, n_embd 256) with the golden tiny model's layer
//! schedule, compress ratios [0, 0, 4, 128, 4]: both compressor kinds and the indexer. P = 11
//! lies inside the raw window (16 rows) with two ratio-4 rows emitted and the ratio-128 frontier
//! filling; P = 133 has wrapped the raw window eight times, emitted 33 ratio-4 rows and the first
//! ratio-128 row (at position 127), and holds 5 tokens of the next 128-token frontier.

use std::sync::{Arc, OnceLock};

use ds4_engine::{BackendKind, Engine, Session, SessionSnapshot};
use ds4_gguf::TensorSpec;
use ds4_kvcache::{
    decode_payload, encode_payload, CacheOptions, Checkpoint, DiskCache, KeyKind, Runtime,
    SaveOutcome, SaveReason,
};
use ds4_model::layout::tensor_layout;
use ds4_model::synth::{SynthPlan, SynthSpec};
use ds4_model::{AttnKind, Model};

const CTX: usize = 512;
/// Prefill chunk: odd, so chunk ends fall at different places relative to every P and ratio.
const CHUNK: usize = 24;
/// Tokens evaluated past P before rewinding (prefill then decode).
const N_MORE: usize = 40;

/// The tiny preset with layer 3 turned from ratio 8 into ratio 128 (the golden tiny schedule).
/// Every tensor keeps its preset type and generation recipe; only layer 3's compressor
/// position embedding changes shape, `[head_dim, 8]` -> `[head_dim, 128]`.
fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let plan = SynthSpec::tiny(4711).plan().expect("tiny plan");
        let mut cfg = plan.config.clone();
        assert_eq!(
            cfg.attn_kinds[3],
            AttnKind::CompressedN(8),
            "tiny preset schedule changed"
        );
        cfg.attn_kinds[3] = AttnKind::CompressedN(128);
        let new_meta = cfg.to_metadata();
        let metadata = plan
            .metadata
            .iter()
            .map(|(k, v)| {
                let v = new_meta
                    .iter()
                    .find(|(nk, _)| nk == k)
                    .map_or(v, |(_, nv)| nv);
                (k.clone(), v.clone())
            })
            .collect();
        let tensors = tensor_layout(&cfg)
            .into_iter()
            .filter_map(|slot| {
                let old = plan.tensors.iter().find(|t| t.spec.name == slot.name)?;
                let mut t = old.clone();
                t.spec = TensorSpec::new(slot.name, &slot.dims, old.spec.ty);
                Some(t)
            })
            .collect();
        let plan = SynthPlan {
            config: cfg,
            metadata,
            tensors,
            seed: plan.seed,
        };
        let m = Model::from_bytes(plan.to_bytes().expect("write")).expect("ratio-128 tiny loads");
        assert_eq!(
            m.config
                .attn_kinds
                .iter()
                .map(|k| k.ratio())
                .collect::<Vec<_>>(),
            [0, 0, 4, 128, 4]
        );
        Arc::new(m)
    })
    .clone()
}

fn engine() -> Engine {
    Engine::from_model(model(), BackendKind::Cpu)
}

fn tokens(n: usize, salt: usize) -> Vec<u32> {
    let v = model().config.n_vocab;
    (0..n)
        .map(|i| ((i * 2_654_435_761 + salt * 40_503 + 7) % v) as u32)
        .collect()
}

fn bits(l: &[f32]) -> Vec<u32> {
    l.iter().map(|x| x.to_bits()).collect()
}

fn runtime(cfg: &ds4_model::Config) -> Runtime<'_> {
    Runtime {
        cfg,
        ctx: CTX,
        prefill_cap: CTX.min(2048),
    }
}

/// A fresh session that prefilled exactly `prefix` (same chunking as the live one).
fn fresh(prefix: &[u32]) -> Session {
    let mut s = engine().new_session(CTX).unwrap();
    s.sync(prefix, CHUNK, &mut |_| {}).unwrap();
    s
}

/// A live session at P with its snapshot, then moved N_MORE tokens further (half by prefill,
/// half by decode), so every layer's frontier and row counters have advanced past the snapshot.
fn advanced(p: usize) -> (Session, SessionSnapshot, Vec<u32>) {
    let prompt = tokens(p + N_MORE, p);
    let mut live = engine().new_session(CTX).unwrap();
    live.sync(&prompt[..p], CHUNK, &mut |_| {}).unwrap();
    let snap = live.snapshot().unwrap();
    live.sync(&prompt[..p + N_MORE / 2], CHUNK, &mut |_| {})
        .unwrap();
    for &t in &prompt[p + N_MORE / 2..] {
        live.push(t).unwrap();
    }
    assert_eq!(live.tokens().len(), p + N_MORE);
    assert_ne!(
        bits(live.logits()),
        bits(&snap.logits),
        "the live state must have moved"
    );
    (live, snap, prompt)
}

/// `a` and `b` hold the same timeline: equal tokens and logits, and they stay equal through a
/// decoded token, a short suffix (token by token) and a batched suffix that crosses chunk,
/// window and ratio-4 boundaries.
fn assert_same_future(a: &mut Session, b: &mut Session, what: &str) {
    assert_eq!(a.tokens(), b.tokens(), "{what}: tokens");
    assert_eq!(
        bits(a.logits()),
        bits(b.logits()),
        "{what}: next-token logits"
    );
    let base = a.tokens().to_vec();
    let extra = tokens(40, 999 + base.len());
    a.push(extra[0]).unwrap();
    b.push(extra[0]).unwrap();
    assert_eq!(
        bits(a.logits()),
        bits(b.logits()),
        "{what}: after one decode"
    );
    let mut longer = base.clone();
    longer.extend(&extra[..3]);
    a.sync(&longer, CHUNK, &mut |_| {}).unwrap();
    b.sync(&longer, CHUNK, &mut |_| {}).unwrap();
    assert_eq!(bits(a.logits()), bits(b.logits()), "{what}: after 2 more");
    longer.extend(&extra[3..]);
    a.sync(&longer, CHUNK, &mut |_| {}).unwrap();
    b.sync(&longer, CHUNK, &mut |_| {}).unwrap();
    assert_eq!(
        bits(a.logits()),
        bits(b.logits()),
        "{what}: after a 37-token prefill"
    );
    // The whole KV state, not only what the logits happen to read.
    assert_eq!(
        a.snapshot().unwrap().kv,
        b.snapshot().unwrap().kv,
        "{what}: KV state"
    );
}

fn rewind_in_memory(p: usize) {
    let (mut live, snap, prompt) = advanced(p);
    live.restore(&snap).unwrap();
    let mut cold = fresh(&prompt[..p]);
    assert_eq!(live.snapshot().unwrap().kv, cold.snapshot().unwrap().kv);
    assert_same_future(&mut live, &mut cold, &format!("P={p}, in memory"));
}

fn rewind_through_payload_bytes(p: usize) {
    let (mut live, snap, prompt) = advanced(p);
    let cfg = model().config.clone();
    let rt = runtime(&cfg);
    let bytes = encode_payload(&rt, &snap.tokens, &snap.logits, &snap.kv).unwrap();
    let state = decode_payload(&rt, &bytes).unwrap();
    live.restore(&SessionSnapshot {
        tokens: state.tokens,
        kv: state.kv,
        logits: state.logits,
    })
    .unwrap();
    let mut cold = fresh(&prompt[..p]);
    assert_same_future(&mut live, &mut cold, &format!("P={p}, payload bytes"));
}

fn rewind_through_a_kv_file(p: usize) {
    let (mut live, snap, prompt) = advanced(p);
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let identity = ds4_kvcache::model_identity(&m.file).expect("tiny has q2 experts");
    let opts = CacheOptions {
        min_tokens: 1,
        ..CacheOptions::new(dir.path())
    };
    let cache = DiskCache::open(opts, m.config.clone(), CTX, CTX.min(2048), identity).unwrap();
    // Key text: any bytes stand for the tokens here; the server uses their detokenized text.
    let key: Vec<u8> = snap.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let saved = cache
        .save(&Checkpoint {
            key_text: &key,
            key_kind: KeyKind::TokenText,
            reason: SaveReason::Continued,
            tokens: &snap.tokens,
            logits: &snap.logits,
            kv: &snap.kv,
            tool_map: &[],
        })
        .unwrap();
    assert!(matches!(saved, SaveOutcome::Written { .. }), "{saved:?}");
    let mut prompt_text = key.clone();
    prompt_text.extend_from_slice(b"and whatever follows");
    let entry = cache.lookup(&prompt_text).expect("lookup finds the file");
    let loaded = cache.load(&entry, &prompt_text).unwrap();
    live.restore(&SessionSnapshot {
        tokens: loaded.state.tokens,
        kv: loaded.state.kv,
        logits: loaded.state.logits,
    })
    .unwrap();
    let mut cold = fresh(&prompt[..p]);
    assert_same_future(&mut live, &mut cold, &format!("P={p}, .kv file"));
}

/// `Session::sync` with a kept checkpoint: a prompt that diverges after P rebases on the
/// checkpoint (reuses exactly P tokens) and ends where a fresh prefill of that prompt ends.
fn rewind_by_sync_rebase(p: usize) {
    let prompt = tokens(p + N_MORE, p);
    let mut live = engine().new_session(CTX).unwrap();
    live.sync(&prompt[..p], CHUNK, &mut |_| {}).unwrap();
    live.keep_checkpoint(4).unwrap();
    live.sync(&prompt, CHUNK, &mut |_| {}).unwrap();
    let mut diverged = prompt[..p].to_vec();
    diverged.extend(tokens(30, 7 * p));
    assert_ne!(diverged[p], prompt[p], "the prompts must diverge at P");
    let st = live.sync(&diverged, CHUNK, &mut |_| {}).unwrap();
    assert_eq!(
        (st.reused, st.prefilled),
        (p, 30),
        "P={p}: rebase on the checkpoint"
    );
    let mut cold = fresh(&prompt[..p]);
    cold.sync(&diverged, CHUNK, &mut |_| {}).unwrap();
    assert_same_future(&mut live, &mut cold, &format!("P={p}, sync rebase"));
}

/// P inside the raw window (11 < n_swa = 16).
const P_IN_WINDOW: usize = 11;
/// P past the first ratio-128 row (position 127) and 33 ratio-4 rows.
const P_PAST_RATIO_128: usize = 133;

#[test]
fn p_inside_raw_window_snapshot_covers_the_expected_state() {
    let cfg = &model().config;
    let s = fresh(&tokens(P_IN_WINDOW, 1));
    let kv = s.snapshot().unwrap().kv;
    assert_eq!(kv.layers[0].raw.len(), P_IN_WINDOW * cfg.head_dim);
    assert_eq!(
        kv.layers[2].attn_comp.len(),
        (P_IN_WINDOW / 4) * cfg.head_dim
    );
    assert!(kv.layers[3].attn_comp.is_empty(), "no ratio-128 row yet");
    let s = fresh(&tokens(P_PAST_RATIO_128, 1));
    let kv = s.snapshot().unwrap().kv;
    assert_eq!(kv.layers[0].raw.len(), cfg.n_swa * cfg.head_dim);
    assert_eq!(
        kv.layers[2].attn_comp.len(),
        (P_PAST_RATIO_128 / 4) * cfg.head_dim
    );
    assert_eq!(
        kv.layers[3].attn_comp.len(),
        cfg.head_dim,
        "one ratio-128 row"
    );
    assert_eq!(
        kv.layers[4].index_comp.len(),
        (P_PAST_RATIO_128 / 4) * cfg.idx_head_dim
    );
}

#[test]
fn rewind_in_memory_equals_fresh_prefill_inside_raw_window() {
    rewind_in_memory(P_IN_WINDOW);
}

#[test]
fn rewind_in_memory_equals_fresh_prefill_past_ratio_128_boundary() {
    rewind_in_memory(P_PAST_RATIO_128);
}

#[test]
fn rewind_through_payload_bytes_equals_fresh_prefill() {
    rewind_through_payload_bytes(P_IN_WINDOW);
    rewind_through_payload_bytes(P_PAST_RATIO_128);
}

#[test]
fn rewind_through_a_kv_file_equals_fresh_prefill() {
    rewind_through_a_kv_file(P_IN_WINDOW);
    rewind_through_a_kv_file(P_PAST_RATIO_128);
}

#[test]
fn sync_rebase_on_a_kept_checkpoint_equals_fresh_prefill() {
    rewind_by_sync_rebase(P_IN_WINDOW);
    rewind_by_sync_rebase(P_PAST_RATIO_128);
}

/// The control: what §4.4 says a rewind must not be. Rebuilding "P tokens" from the live state
/// by only forgetting tokens is impossible through the API (sync rebuilds instead), so compare
/// against the state an un-rewound session reaches: it must differ, or the tests above could
/// not tell a correct rewind from no rewind at all.
#[test]
fn without_the_rewind_the_future_differs() {
    let (mut live, _snap, prompt) = advanced(P_PAST_RATIO_128);
    let mut cold = fresh(&prompt[..P_PAST_RATIO_128]);
    let t = tokens(1, 5)[0];
    live.push(t).unwrap();
    cold.push(t).unwrap();
    assert_ne!(bits(live.logits()), bits(cold.logits()));
}
