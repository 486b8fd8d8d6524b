//! The session payload (spec/model.md §4.3): layout, round trips, and every load-time check.

mod common;

use common::{runtime, state, tiny_config, CTX, PREFILL_CAP};
use ds4_kvcache::{
    decode_payload, encode_payload, payload_len, read_payload, PayloadError, Runtime,
};
use proptest::prelude::*;

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn set_word(b: &mut [u8], i: usize, v: u32) {
    b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn round_trips_at_every_interesting_length() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    // 1 token, inside the window, the window exactly, crossing R = 4 and R = 8, near ctx.
    for n in [1, 3, 15, 16, 17, 31, 64, 100, CTX - 1] {
        let (tokens, logits, kv) = state(&cfg, n, n as u64);
        let bytes = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
        assert_eq!(
            bytes.len() as u64,
            payload_len(&rt, &tokens, &logits, &kv).expect("len")
        );
        let back = decode_payload(&rt, &bytes).expect("decode");
        assert_eq!(
            (back.tokens, back.logits, back.kv),
            (tokens, logits, kv),
            "n = {n}"
        );
        let (streamed, crc) = read_payload(&mut &bytes[..], bytes.len() as u64, &rt).expect("read");
        assert_eq!(streamed.tokens.len(), n);
        assert_eq!(crc, crc32c::crc32c(&bytes));
    }
}

#[test]
fn layout_is_the_spec_one() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    let n = 37;
    let (tokens, logits, kv) = state(&cfg, n, 1);
    let b = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
    let w = words(&b);
    let raw_window = cfg.n_swa as u32;
    assert_eq!(
        &w[..13],
        &[
            0x3456_5344,
            1,
            CTX as u32,
            PREFILL_CAP as u32,
            raw_window,
            raw_window,
            CTX as u32 / 4 + 2,
            n as u32,
            4,
            64,
            32,
            100,
            16
        ]
    );
    assert_eq!(&b[..4], b"DSV4");
    assert_eq!(&w[13..13 + n], &tokens[..]);
    let at = 13 + n + cfg.n_vocab;
    assert_eq!(
        &w[at..at + 4],
        &[0, 0, 9, 4],
        "n_comp: 37/4 = 9 rows at R=4, 37/8 = 4 at R=8"
    );
    assert_eq!(&w[at + 4..at + 8], &[0, 0, 9, 0], "n_index_comp");
    // Per layer: raw 16 rows; R=4: 9 rows + 2 frontiers of 8x128 + 9 indexer rows + 2 of 8x64;
    // R=8: 4 rows + 2 frontiers of 8x64.
    let floats = 4 * 16 * 64 + (9 * 64 + 2 * 8 * 128 + 9 * 32 + 2 * 8 * 64) + (4 * 64 + 2 * 8 * 64);
    assert_eq!(b.len(), 4 * (13 + n + 100 + 8 + floats));
    // Raw rows come first in layer 0, oldest first, exactly as the snapshot holds them.
    let raw0: Vec<f32> = w[at + 8..at + 8 + 16 * 64]
        .iter()
        .map(|&x| f32::from_bits(x))
        .collect();
    assert_eq!(raw0, kv.layers[0].raw);
}

fn check(rt: &Runtime, bytes: &[u8], want: impl Fn(&PayloadError) -> bool) {
    match decode_payload(rt, bytes) {
        Ok(_) => panic!("payload accepted"),
        Err(e) => assert!(want(&e), "unexpected error: {e}"),
    }
}

#[test]
fn every_load_check_refuses_with_its_reason() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    let (tokens, logits, kv) = state(&cfg, 40, 2);
    let good = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
    let edit = |i: usize, v: u32| {
        let mut b = good.clone();
        set_word(&mut b, i, v);
        b
    };
    check(&rt, &edit(0, 0x1234), |e| {
        matches!(e, PayloadError::BadMagic(0x1234))
    });
    check(&rt, &edit(1, 2), |e| {
        matches!(e, PayloadError::UnsupportedVersion(2))
            && e.to_string()
                .contains("unsupported session payload version")
    });
    check(&rt, &edit(2, CTX as u32 + 1), |e| {
        matches!(e, PayloadError::DoesNotFitContext { .. })
            && e.to_string().contains("does not fit current context")
    });
    check(&rt, &edit(7, CTX as u32), |e| {
        matches!(e, PayloadError::DoesNotFitContext { .. })
    });
    check(&rt, &edit(8, 5), |e| {
        matches!(
            e,
            PayloadError::DifferentLayout {
                field: "layer count",
                ..
            }
        ) && e.to_string().contains("different DS4 layout")
    });
    check(&rt, &edit(9, 512), |e| {
        matches!(
            e,
            PayloadError::DifferentLayout {
                field: "head dim",
                ..
            }
        )
    });
    check(&rt, &edit(10, 128), |e| {
        matches!(
            e,
            PayloadError::DifferentLayout {
                field: "indexer head dim",
                ..
            }
        )
    });
    check(&rt, &edit(11, 129280), |e| {
        matches!(
            e,
            PayloadError::DifferentLayout {
                field: "vocabulary size",
                ..
            }
        )
    });
    check(&rt, &edit(3, 2048), |e| {
        matches!(
            e,
            PayloadError::ChunkLayout {
                field: "prefill chunk",
                ..
            }
        ) && e.to_string().contains("graph chunk layout")
    });
    check(&rt, &edit(5, 128), |e| {
        matches!(
            e,
            PayloadError::ChunkLayout {
                field: "raw window",
                ..
            }
        )
    });
    check(&rt, &edit(4, 8), |e| {
        matches!(e, PayloadError::RawRing(_)) && e.to_string().contains("raw ring layout")
    });
    check(&rt, &edit(12, 15), |e| {
        matches!(e, PayloadError::RawRing(_))
    });
    check(&rt, &edit(6, CTX as u32 / 4 + 3), |e| {
        matches!(e, PayloadError::CompressedTooLarge { .. })
    });
    // n_comp of layer 3 (R = 8): capacity 256/8 + 2 = 34.
    let n_comp_at = 13 + 40 + 100;
    check(&rt, &edit(n_comp_at + 3, 35), |e| {
        matches!(e, PayloadError::BadRowCount { il: 3, cap: 34, .. })
    });
    // A window layer has no compressed rows; a ratio-8 layer has no indexer rows.
    check(&rt, &edit(n_comp_at, 1), |e| {
        matches!(e, PayloadError::BadRowCount { il: 0, cap: 0, .. })
    });
    check(&rt, &edit(n_comp_at + 4 + 3, 1), |e| {
        matches!(
            e,
            PayloadError::BadRowCount {
                il: 3,
                what: "indexer row",
                ..
            }
        )
    });
    // One more compressed row than stored: the bytes run out.
    check(&rt, &edit(n_comp_at + 2, 11), |e| {
        matches!(e, PayloadError::Truncated { .. })
    });
    let mut long = good.clone();
    long.extend_from_slice(&[0; 8]);
    check(&rt, &long, |e| matches!(e, PayloadError::TrailingBytes(8)));
    // The same payload restored into a smaller context or another prefill cap.
    let small = Runtime { ctx: 128, ..rt };
    check(&small, &good, |e| {
        matches!(e, PayloadError::DoesNotFitContext { .. })
    });
    let other_cap = Runtime {
        prefill_cap: 64,
        ..rt
    };
    check(&other_cap, &good, |e| {
        matches!(e, PayloadError::ChunkLayout { .. })
    });
}

#[test]
fn every_truncation_is_an_error() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    let (tokens, logits, kv) = state(&cfg, 20, 3);
    let good = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
    for len in 0..good.len() {
        let e = decode_payload(&rt, &good[..len]).expect_err("truncated payload accepted");
        assert!(matches!(e, PayloadError::Truncated { .. }), "{len}: {e}");
    }
}

#[test]
fn gpu_ring_capacity_and_larger_saved_context_are_accepted() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    let (tokens, logits, kv) = state(&cfg, 50, 4);
    let mut b = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
    set_word(&mut b, 4, 256); // a CUDA writer's ring capacity
    assert_eq!(decode_payload(&rt, &b).expect("GPU convention").kv, kv);
    // Written with ctx 256, restored with ctx 512 (same window and prefill cap).
    let bigger = Runtime { ctx: 512, ..rt };
    assert_eq!(
        decode_payload(&bigger, &b).expect("larger ctx").tokens,
        tokens
    );
}

#[test]
fn encoder_refuses_states_that_do_not_match_the_model() {
    let cfg = tiny_config();
    let rt = runtime(&cfg);
    let (tokens, logits, kv) = state(&cfg, 30, 5);
    assert!(matches!(
        encode_payload(&rt, &tokens[..29], &logits, &kv),
        Err(PayloadError::BadState(_))
    ));
    assert!(matches!(
        encode_payload(&rt, &tokens, &logits[..99], &kv),
        Err(PayloadError::BadState(_))
    ));
    let mut bad = kv.clone();
    bad.layers[2].index_frontier = None;
    assert!(matches!(
        encode_payload(&rt, &tokens, &logits, &bad),
        Err(PayloadError::BadState(_))
    ));
    let mut bad = kv.clone();
    bad.layers[0].raw.pop();
    assert!(matches!(
        encode_payload(&rt, &tokens, &logits, &bad),
        Err(PayloadError::BadState(_))
    ));
    let mut bad = kv.clone();
    bad.layers[1].attn_comp = vec![0.0; 64];
    assert!(matches!(
        encode_payload(&rt, &tokens, &logits, &bad),
        Err(PayloadError::BadState(_))
    ));
    assert!(matches!(
        encode_payload(&rt, &[], &logits, &state(&cfg, 0, 0).2),
        Err(PayloadError::DoesNotFitContext { .. })
    ));
}

#[test]
fn hostile_counts_fail_before_allocating() {
    let cfg = tiny_config();
    // A runtime with a huge context: a header claiming 2^30 tokens is within the context, so only
    // the length check stands between it and a 4 GiB token vector.
    let rt = Runtime {
        cfg: &cfg,
        ctx: 1 << 31,
        prefill_cap: 2048,
    };
    let mut b = Vec::new();
    for w in [
        0x3456_5344u32,
        1,
        1 << 31,
        2048,
        16,
        16,
        (1u32 << 29) + 2,
        1 << 30,
        4,
        64,
        32,
        100,
        16,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    let t = std::time::Instant::now();
    let e = decode_payload(&rt, &b).expect_err("hostile payload accepted");
    assert!(
        matches!(e, PayloadError::Truncated { what: "tokens", need, .. } if need == 4 << 30),
        "{e}"
    );
    assert!(t.elapsed() < std::time::Duration::from_millis(50));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn byte_flips_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6)) {
        let cfg = tiny_config();
        let rt = runtime(&cfg);
        let (tokens, logits, kv) = state(&cfg, 24, 6);
        let mut b = encode_payload(&rt, &tokens, &logits, &kv).expect("encode");
        for (at, x) in flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        if let Ok(s) = decode_payload(&rt, &b) {
            // A flip that decodes can only have changed values, never the shape.
            prop_assert_eq!(s.tokens.len(), 24);
            prop_assert_eq!(s.kv.layers.len(), 4);
        }
    }
}
