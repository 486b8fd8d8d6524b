//! The reader against hostile input: truncations, bit flips and hand-made headers with absurd counts
//! must give the right typed [`Error`] quickly, without panicking or allocating in proportion to a
//! count read from the file.

mod common;

use std::time::{Duration, Instant};

use common::{ds4_like_file, peak_alloc, write_file, PeakAlloc, Raw};
use ds4_gguf::{Error, GgufFile, TensorSpec, TensorType, Value, ValueType};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Largest single allocation a hostile header of a few hundred bytes may cause.
const SMALL_ALLOC: usize = 1 << 20;

/// Parses `bytes`, asserting it fails fast and without a large allocation, and returns the error.
fn parse_err(bytes: &[u8]) -> Error {
    let bytes = bytes.to_vec();
    let start = Instant::now();
    let (r, peak) = peak_alloc(move || GgufFile::from_bytes(bytes));
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "hostile file took {took:?}"
    );
    assert!(
        peak < SMALL_ALLOC,
        "hostile file caused a {peak}-byte allocation"
    );
    match r {
        Ok(f) => panic!("hostile file parsed: {f:?}"),
        Err(e) => e,
    }
}

#[test]
fn every_truncation_of_a_small_valid_file_is_an_error() {
    let meta = vec![
        ("a".to_string(), Value::String("xyz".into())),
        (
            "b".to_string(),
            Value::Array(ValueType::U16, vec![Value::U16(1), Value::U16(2)]),
        ),
    ];
    let tensors = vec![
        TensorSpec::new("t", &[32, 2], TensorType::Q8_0),
        TensorSpec::new("u", &[3], TensorType::F32),
    ];
    let bytes = write_file(&meta, &tensors, 1);
    GgufFile::from_bytes(bytes.clone()).expect("the full file parses");
    // The writer pads the file to the alignment after the last tensor; only the bytes up to the
    // end of the last tensor's data are required.
    let f = GgufFile::from_bytes(bytes.clone()).expect("parses");
    let needed = f
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap_or(0) as usize;
    for len in 0..needed {
        let e = GgufFile::from_bytes(bytes[..len].to_vec())
            .expect_err(&format!("prefix of {len} bytes parsed"));
        assert!(
            matches!(
                e,
                Error::Truncated { .. }
                    | Error::ImplausibleCount { .. }
                    | Error::BadMetadata { .. }
            ),
            "prefix of {len} bytes: unexpected error {e}"
        );
    }
}

#[test]
fn every_truncation_of_a_ds4_like_file_is_an_error() {
    let bytes = ds4_like_file();
    let f = GgufFile::from_bytes(bytes.clone()).expect("parses");
    let needed = f
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap_or(0) as usize;
    for len in 0..needed {
        assert!(
            GgufFile::from_bytes(bytes[..len].to_vec()).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn ds4_like_file_round_trips_through_the_mmap_path() {
    let bytes = ds4_like_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ds4-like.gguf");
    std::fs::write(&path, &bytes).expect("write");
    let f = GgufFile::open(&path).expect("open");
    assert_eq!(f.tensors().len(), 8);
    let t = f
        .tensor("blk.0.ffn_gate_exps.weight")
        .expect("tensor present");
    assert_eq!(
        (t.ty, t.dims.as_slice(), t.n_bytes),
        (TensorType::Iq2Xxs, &[256u64, 2, 2][..], 4 * 66)
    );
    assert_eq!(
        f.tensor_data(t),
        &common::bytes_from_seed(7 + 3, 4 * 66)[..]
    );
    assert_eq!(
        f.get("deepseek4.context_length"),
        Some(&Value::U64(1 << 20))
    );
    assert!(matches!(
        GgufFile::open(dir.path().join("missing.gguf")),
        Err(Error::Io { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Flipping bytes anywhere in a DS4-like file never panics; what parses still has every
    /// tensor inside the file.
    #[test]
    fn byte_flips_in_a_ds4_like_file_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
        let mut bytes = ds4_like_file();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let len = bytes.len() as u64;
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            for t in f.tensors() {
                prop_assert!(t.offset + t.n_bytes <= len);
                prop_assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }

    /// Same, concentrated on the header and metadata (the first 1 KiB), where the counts live.
    #[test]
    fn header_byte_flips_never_panic(flips in proptest::collection::vec((0usize..1024, any::<u8>()), 1..6), cut in 0usize..4096) {
        let mut bytes = ds4_like_file();
        for (i, x) in flips {
            let i = i % bytes.len();
            bytes[i] = x;
        }
        bytes.truncate(bytes.len().saturating_sub(cut));
        let _ = GgufFile::from_bytes(bytes);
    }
}

#[test]
fn hostile_metadata_count_is_refused() {
    let e = parse_err(&Raw::header(0, u64::MAX).0);
    assert!(
        matches!(
            e,
            Error::ImplausibleCount {
                what: "metadata entries",
                count: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn hostile_tensor_count_is_refused() {
    let e = parse_err(&Raw::header(u64::MAX / 2, 0).0);
    assert!(
        matches!(
            e,
            Error::ImplausibleCount {
                what: "tensor infos",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn hostile_array_length_is_refused() {
    for item in [
        ValueType::U8,
        ValueType::U64,
        ValueType::String,
        ValueType::Array,
    ] {
        let mut r = Raw::header(0, 1);
        r.str("arr")
            .u32(ValueType::Array as u32)
            .u32(item as u32)
            .u64(1 << 60);
        r.0.extend_from_slice(&[0u8; 64]);
        let e = parse_err(&r.0);
        assert!(
            matches!(&e, Error::BadMetadata { key, reason, .. } if key == "arr" && reason.contains("cannot fit")),
            "{e}"
        );
    }
}

#[test]
fn hostile_string_length_is_refused() {
    let mut r = Raw::header(0, 1);
    r.str("s").u32(ValueType::String as u32).u64(1 << 62);
    r.0.extend_from_slice(b"short");
    let e = parse_err(&r.0);
    assert!(
        matches!(e, Error::Truncated { need, .. } if need == 1 << 62),
        "{e}"
    );

    // A key of absurd length names itself as implausible, not as a truncation at some offset.
    let mut r = Raw::header(0, 1);
    r.u64(1 << 62).u64(0).u64(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadMetadata { reason, .. } if reason.contains("metadata key length")),
        "{e}"
    );

    let mut r = Raw::header(1, 0);
    r.u64(1 << 40).u64(0).u64(0).u64(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadTensor { reason, .. } if reason.contains("tensor name length")),
        "{e}"
    );
}

#[test]
fn hostile_nesting_is_refused() {
    // Five nested one-element arrays: deeper than the reader accepts.
    let mut r = Raw::header(0, 1);
    r.str("deep").u32(ValueType::Array as u32);
    for _ in 0..5 {
        r.u32(ValueType::Array as u32).u64(1);
    }
    r.u32(ValueType::U8 as u32).u64(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadMetadata { key, reason, .. } if key == "deep" && reason.contains("nested")),
        "{e}"
    );
}

#[test]
fn dims_whose_product_overflows_are_refused() {
    let mut r = Raw::header(1, 0);
    r.tensor(
        "big",
        &[1 << 32, 1 << 32, 1 << 32],
        TensorType::F32.code(),
        0,
    )
    .data(32, 64);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadTensor { name, reason } if name == "big" && reason.contains("overflows")),
        "{e}"
    );

    // The element count fits but the byte count does not.
    let mut r = Raw::header(1, 0);
    r.tensor("bytes", &[1 << 31, 1 << 31], TensorType::F32.code(), 0)
        .data(32, 64);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadTensor { name, reason } if name == "bytes" && reason.contains("overflows")),
        "{e}"
    );
}

#[test]
fn tensor_data_past_eof_is_refused() {
    let mut r = Raw::header(1, 0);
    r.tensor("t", &[8, 8], TensorType::F32.code(), 0)
        .data(32, 255);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::Truncated { what, need: 256, .. } if what.contains("\"t\"")),
        "{e}"
    );

    // Offset itself near u64::MAX: an overflow, not a wrap-around.
    let mut r = Raw::header(1, 0);
    r.tensor("t", &[8], TensorType::F32.code(), u64::MAX - 31)
        .data(32, 32);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadTensor { reason, .. } if reason.contains("overflows")),
        "{e}"
    );
}

#[test]
fn misaligned_offsets_are_refused() {
    let mut r = Raw::header(1, 0);
    r.tensor("t", &[4], TensorType::F32.code(), 4).data(32, 64);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadTensor { reason, .. } if reason.contains("alignment 32")),
        "{e}"
    );
}

#[test]
fn duplicate_names_are_refused() {
    let mut r = Raw::header(0, 2);
    r.str("k").u32(ValueType::U8 as u32).0.push(1);
    r.str("k").u32(ValueType::U8 as u32).0.push(2);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::Duplicate { kind: "metadata key", name } if name == "k"),
        "{e}"
    );

    let mut r = Raw::header(2, 0);
    r.tensor("t", &[8], TensorType::F32.code(), 0)
        .tensor("t", &[8], TensorType::F32.code(), 32)
        .data(32, 64);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::Duplicate { kind: "tensor", name } if name == "t"),
        "{e}"
    );
}

#[test]
fn unknown_type_codes_are_refused() {
    let mut r = Raw::header(1, 0);
    r.tensor("t", &[8], 2, 0).data(32, 64); // 2 = Q4_0, which no DS4 file uses
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::UnknownType { name, code: 2 } if name == "t"),
        "{e}"
    );

    let mut r = Raw::header(0, 1);
    r.str("k").u32(13).u32(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadMetadata { key, reason, .. } if key == "k" && reason.contains("13")),
        "{e}"
    );

    let mut r = Raw::header(0, 1);
    r.str("k").u32(ValueType::Array as u32).u32(99).u64(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::BadMetadata { key, reason, .. } if key == "k" && reason.contains("99")),
        "{e}"
    );
}

#[test]
fn bad_shapes_are_refused() {
    for (dims, what) in [
        (&[][..], "n_dims"),
        (&[1, 1, 1, 1, 1][..], "n_dims"),
        (&[8, 0][..], "zero dimension"),
    ] {
        let mut r = Raw::header(1, 0);
        r.tensor("t", dims, TensorType::F32.code(), 0).data(32, 64);
        let e = parse_err(&r.0);
        assert!(
            matches!(&e, Error::BadTensor { reason, .. } if reason.contains(what)),
            "{dims:?}: {e}"
        );
    }
    let mut r = Raw::header(1, 0);
    r.tensor("q", &[100], TensorType::Q8_0.code(), 0)
        .data(32, 256);
    let e = parse_err(&r.0);
    assert!(
        matches!(&e, Error::PartialBlock { name, block: 32, .. } if name == "q"),
        "{e}"
    );
}

#[test]
fn bad_magic_version_and_bool_are_refused() {
    assert!(matches!(
        parse_err(b"GGML\x03\0\0\0"),
        Error::BadMagic { found: 0x4c4d_4747 }
    ));
    let mut r = Raw::default();
    r.u32(ds4_gguf::GGUF_MAGIC).u32(2).u64(0).u64(0);
    assert!(matches!(parse_err(&r.0), Error::BadVersion { found: 2 }));
    let mut r = Raw::header(0, 1);
    r.str("b").u32(ValueType::Bool as u32).0.push(2);
    assert!(matches!(parse_err(&r.0), Error::BadMetadata { .. }));
}

#[test]
fn general_alignment_is_honoured() {
    for align in [1u32, 8, 64, 256, 4096] {
        let meta = vec![("general.alignment".to_string(), Value::U32(align))];
        let tensors = vec![
            TensorSpec::new("a", &[3], TensorType::F32),
            TensorSpec::new("b", &[32], TensorType::Q8_0),
            TensorSpec::new("c", &[5], TensorType::F16),
        ];
        let bytes = write_file(&meta, &tensors, 3);
        let f = GgufFile::from_bytes(bytes).expect("parses");
        assert_eq!(f.alignment(), align as u64);
        assert_eq!(f.data_offset() % align as u64, 0);
        for (i, t) in f.tensors().iter().enumerate() {
            assert_eq!(
                t.offset % align as u64,
                0,
                "align {align} tensor {}",
                t.name
            );
            let n = tensors[i].n_bytes().expect("size") as usize;
            assert_eq!(
                f.tensor_data(t),
                &common::bytes_from_seed(3 + i as u64, n)[..]
            );
        }
    }

    // A data section at offset 64 with alignment 64 but tensor offset 32: misaligned for this file.
    let mut r = Raw::header(1, 1);
    r.str("general.alignment")
        .u32(ValueType::U32 as u32)
        .u32(64);
    r.tensor("t", &[8], TensorType::F32.code(), 32)
        .data(64, 128);
    assert!(matches!(parse_err(&r.0), Error::BadTensor { .. }));

    for bad in [
        Value::U32(0),
        Value::U32(48),
        Value::U64(32),
        Value::String("32".into()),
    ] {
        let mut r = Raw::header(0, 1);
        r.str("general.alignment").u32(bad.value_type() as u32);
        match &bad {
            Value::U32(v) => {
                r.u32(*v);
            }
            Value::U64(v) => {
                r.u64(*v);
            }
            Value::String(s) => {
                r.str(s);
            }
            _ => unreachable!(),
        }
        let e = parse_err(&r.0);
        assert!(
            matches!(&e, Error::BadMetadata { key, .. } if key == "general.alignment"),
            "{bad:?}: {e}"
        );
    }
}
