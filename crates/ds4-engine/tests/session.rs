//! Session behaviour against the deterministic fake backend: whatever path `sync` takes (extend,
//! checkpoint restore, rebuild), the logits must equal those of a cold evaluation of the prompt.

use std::sync::atomic::Ordering;

use ds4_engine::testing::FakeBackend;
use ds4_engine::{Error, Session, SyncProgress};

const N_VOCAB: usize = 97;

fn session(ctx: usize) -> (Session, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let b = FakeBackend::new(N_VOCAB, ctx);
    let counter = b.evaluated.clone();
    (Session::new(Box::new(b)), counter)
}

fn expected(prompt: &[u32]) -> Vec<f32> {
    let mut out = vec![0.0; N_VOCAB];
    FakeBackend::logits_for(prompt, N_VOCAB, &mut out);
    out
}

fn noop(_: SyncProgress) {}

#[test]
fn sync_extends_live_prefix_and_prefills_only_the_suffix() {
    let (mut s, evaluated) = session(256);
    let a: Vec<u32> = (0..40).collect();
    let st = s.sync(&a, 16, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (0, 40));
    let mut b = a.clone();
    b.extend([50, 51, 52, 53, 54, 55]);
    let st = s.sync(&b, 16, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (40, 6));
    assert_eq!(evaluated.load(Ordering::Relaxed), 46);
    assert_eq!(s.tokens(), &b[..]);
    assert_eq!(s.logits(), &expected(&b)[..]);
}

#[test]
fn sync_of_identical_prompt_evaluates_nothing() {
    let (mut s, evaluated) = session(64);
    let a: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
    s.sync(&a, 0, &mut noop).unwrap();
    let st = s.sync(&a, 0, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (8, 0));
    assert_eq!(evaluated.load(Ordering::Relaxed), 8);
    assert_eq!(s.logits(), &expected(&a)[..]);
}

#[test]
fn divergence_rebuilds_instead_of_truncating() {
    let (mut s, _) = session(64);
    s.sync(&[1, 2, 3, 4, 5, 6], 0, &mut noop).unwrap();
    let st = s.sync(&[1, 2, 3, 9, 9], 0, &mut noop).unwrap();
    // No checkpoint: the common prefix [1,2,3] cannot be kept by cutting the live state.
    assert_eq!((st.reused, st.prefilled), (0, 5));
    assert_eq!(s.logits(), &expected(&[1, 2, 3, 9, 9])[..]);
    // A shorter prompt that is a prefix of the live tokens also needs a rebuild.
    let st = s.sync(&[1, 2], 0, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (0, 2));
    assert_eq!(s.logits(), &expected(&[1, 2])[..]);
}

#[test]
fn divergence_restores_the_longest_matching_checkpoint() {
    let (mut s, evaluated) = session(64);
    s.sync(&[1, 2, 3], 0, &mut noop).unwrap();
    s.keep_checkpoint(4).unwrap();
    s.sync(&[1, 2, 3, 4, 5, 6, 7], 0, &mut noop).unwrap();
    s.keep_checkpoint(4).unwrap();
    s.push(8).unwrap();
    let before = evaluated.load(Ordering::Relaxed);
    let st = s
        .sync(&[1, 2, 3, 4, 5, 6, 7, 20, 21], 0, &mut noop)
        .unwrap();
    assert_eq!((st.reused, st.prefilled), (7, 2));
    assert_eq!(evaluated.load(Ordering::Relaxed) - before, 2);
    assert_eq!(s.logits(), &expected(&[1, 2, 3, 4, 5, 6, 7, 20, 21])[..]);
    let st = s.sync(&[1, 2, 3, 30], 0, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (3, 1));
    assert_eq!(s.logits(), &expected(&[1, 2, 3, 30])[..]);
    // A prompt equal to a checkpoint needs no evaluation: its logits are in the snapshot.
    let st = s.sync(&[1, 2, 3], 0, &mut noop).unwrap();
    assert_eq!((st.reused, st.prefilled), (3, 0));
    assert_eq!(s.logits(), &expected(&[1, 2, 3])[..]);
}

#[test]
fn prefill_chunks_end_on_absolute_boundaries() {
    let (mut s, _) = session(256);
    let a: Vec<u32> = (0..10).collect();
    s.sync(&a, 8, &mut noop).unwrap();
    let b: Vec<u32> = (0..30).collect();
    let mut seen = Vec::new();
    s.sync(&b, 8, &mut |p: SyncProgress| {
        seen.push((p.done, p.total, p.to_prefill))
    })
    .unwrap();
    assert_eq!(seen, vec![(16, 30, 20), (24, 30, 20), (30, 30, 20)]);
    assert_eq!(s.logits(), &expected(&b)[..]);
}

#[test]
fn push_decodes_one_token_and_matches_cold_eval() {
    let (mut s, _) = session(64);
    s.sync(&[5, 6, 7], 0, &mut noop).unwrap();
    s.push(11).unwrap();
    s.push(12).unwrap();
    assert_eq!(s.tokens(), &[5, 6, 7, 11, 12]);
    assert_eq!(s.logits(), &expected(&[5, 6, 7, 11, 12])[..]);
}

#[test]
fn context_limits_are_typed_errors() {
    let (mut s, _) = session(8);
    let err = s.sync(&[1; 8], 0, &mut noop).unwrap_err();
    assert!(
        matches!(err, Error::ContextFull { needed: 8, ctx: 8 }),
        "{err}"
    );
    s.sync(&[1; 7], 0, &mut noop).unwrap();
    s.push(2).unwrap();
    assert!(matches!(
        s.push(3).unwrap_err(),
        Error::ContextFull { needed: 9, ctx: 8 }
    ));
    assert!(matches!(
        s.sync(&[], 0, &mut noop).unwrap_err(),
        Error::Empty
    ));
}

#[test]
fn backend_failure_empties_the_session() {
    let (mut s, _) = session(64);
    s.sync(&[1, 2, 3], 0, &mut noop).unwrap();
    let err = s.push(N_VOCAB as u32 + 5).unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err}");
    assert!(s.tokens().is_empty());
    assert!(s.logits().is_empty());
    let st = s.sync(&[1, 2, 3], 0, &mut noop).unwrap();
    assert_eq!(st.prefilled, 3);
}

#[test]
fn snapshot_round_trips_through_restore() {
    let (mut s, _) = session(64);
    s.sync(&[9, 8, 7, 6, 5], 0, &mut noop).unwrap();
    let snap = s.snapshot().unwrap();
    s.sync(&[1, 1, 1], 0, &mut noop).unwrap();
    s.restore(&snap).unwrap();
    assert_eq!(s.tokens(), &[9, 8, 7, 6, 5]);
    assert_eq!(s.logits(), &expected(&[9, 8, 7, 6, 5])[..]);
    let mut bad = snap.clone();
    bad.logits.pop();
    assert!(matches!(
        s.restore(&bad).unwrap_err(),
        Error::BadSnapshot(_)
    ));
}
