//! Writer -> reader round trips, and agreement with the `gguf` Python package (an independent
//! implementation of the format) in both directions.

mod common;

use std::path::Path;
use std::process::Command;

use common::write_file;
use ds4_gguf::{Error, GgufFile, GgufWriter, TensorSpec, TensorType, Value, ValueType};

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn every_value_type() -> Vec<(String, Value)> {
    let arr = |t, items: Vec<Value>| Value::Array(t, items);
    vec![
        ("u8".into(), Value::U8(250)),
        ("i8".into(), Value::I8(-128)),
        ("u16".into(), Value::U16(65535)),
        ("i16".into(), Value::I16(-32768)),
        ("u32".into(), Value::U32(u32::MAX)),
        ("i32".into(), Value::I32(i32::MIN)),
        ("f32".into(), Value::F32(-1.5e-7)),
        ("bool.t".into(), Value::Bool(true)),
        ("bool.f".into(), Value::Bool(false)),
        ("string".into(), s("ünïcode ｜DSML｜ \n\t")),
        ("string.empty".into(), s("")),
        ("u64".into(), Value::U64(u64::MAX)),
        ("i64".into(), Value::I64(i64::MIN)),
        ("f64".into(), Value::F64(std::f64::consts::PI)),
        (
            "arr.u8".into(),
            arr(ValueType::U8, vec![Value::U8(0), Value::U8(255)]),
        ),
        (
            "arr.i32".into(),
            arr(
                ValueType::I32,
                vec![Value::I32(0), Value::I32(-4), Value::I32(128)],
            ),
        ),
        (
            "arr.f32".into(),
            arr(ValueType::F32, vec![Value::F32(10.0); 43]),
        ),
        (
            "arr.f64".into(),
            arr(ValueType::F64, vec![Value::F64(1e300)]),
        ),
        (
            "arr.bool".into(),
            arr(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "arr.string".into(),
            arr(ValueType::String, vec![s("a"), s(""), s("Ġthe")]),
        ),
        (
            "arr.u64".into(),
            arr(ValueType::U64, vec![Value::U64(1 << 63)]),
        ),
        ("arr.i64".into(), arr(ValueType::I64, vec![Value::I64(-1)])),
        ("arr.u16".into(), arr(ValueType::U16, vec![Value::U16(7)])),
        ("arr.i16".into(), arr(ValueType::I16, vec![Value::I16(-7)])),
        ("arr.i8".into(), arr(ValueType::I8, vec![Value::I8(-1)])),
        ("arr.u32.empty".into(), arr(ValueType::U32, vec![])),
        ("arr.string.empty".into(), arr(ValueType::String, vec![])),
        ("arr.array.empty".into(), arr(ValueType::Array, vec![])),
        (
            "arr.nested".into(),
            arr(
                ValueType::Array,
                vec![
                    arr(ValueType::U32, vec![Value::U32(1), Value::U32(2)]),
                    arr(ValueType::String, vec![s("x")]),
                    arr(ValueType::F32, vec![]),
                    arr(
                        ValueType::Array,
                        vec![arr(
                            ValueType::Array,
                            vec![arr(ValueType::U8, vec![Value::U8(9)])],
                        )],
                    ),
                ],
            ),
        ),
    ]
}

#[test]
fn every_metadata_value_type_round_trips() {
    let meta = every_value_type();
    let tensors = vec![TensorSpec::new("t", &[64, 3], TensorType::Q8_0)];
    let bytes = write_file(&meta, &tensors, 11);
    let f = GgufFile::from_bytes(bytes.clone()).expect("parses");
    assert_eq!(f.metadata(), &meta[..]);
    for (k, v) in &meta {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert!(matches!(f.require("absent"), Err(Error::MissingKey { .. })));
    // write(read(x)) == x: the writer reproduces its own files exactly.
    let mut w = GgufWriter::new(Vec::new(), f.metadata(), &tensors).expect("writer");
    w.write_data(f.tensor_data(&f.tensors()[0])).expect("data");
    assert_eq!(w.finish().expect("finish"), bytes);
}

#[test]
fn writer_streams_chunks_and_checks_completeness() {
    let tensors = vec![
        TensorSpec::new("a", &[7], TensorType::F32),
        TensorSpec::new("b", &[256, 2], TensorType::Q2K),
    ];
    let total: usize = tensors
        .iter()
        .map(|t| t.n_bytes().expect("size") as usize)
        .sum();
    let data = common::bytes_from_seed(5, total);
    let mut w = GgufWriter::new(Vec::new(), &[], &tensors).expect("writer");
    assert_eq!(w.next_tensor(), Some(("a", 28)));
    for chunk in data.chunks(13) {
        w.write_data(chunk).expect("chunk");
    }
    assert_eq!(w.next_tensor(), None);
    assert!(
        w.write_data(&[0]).is_err(),
        "bytes past the last tensor are refused"
    );
    let f = GgufFile::from_bytes(w.finish().expect("finish")).expect("parses");
    let got: Vec<u8> = f
        .tensors()
        .iter()
        .flat_map(|t| f.tensor_data(t).to_vec())
        .collect();
    assert_eq!(got, data);

    let mut w = GgufWriter::new(Vec::new(), &[], &tensors).expect("writer");
    w.write_data(&data[..10]).expect("partial");
    assert!(matches!(w.finish(), Err(Error::Writer(m)) if m.contains("incomplete")));
}

#[test]
fn writer_refuses_what_the_reader_would_refuse() {
    let t = |dims: &[u64], ty| vec![TensorSpec::new("t", dims, ty)];
    for tensors in [
        t(&[], TensorType::F32),
        t(&[4, 0], TensorType::F32),
        t(&[1, 1, 1, 1, 1], TensorType::F32),
        t(&[33], TensorType::Q8_0),
    ] {
        assert!(
            GgufWriter::new(Vec::new(), &[], &tensors).is_err(),
            "{tensors:?}"
        );
    }
    let dup = vec![
        TensorSpec::new("t", &[1], TensorType::F32),
        TensorSpec::new("t", &[1], TensorType::F32),
    ];
    assert!(GgufWriter::new(Vec::new(), &[], &dup).is_err());
    let dup_key = vec![
        ("k".to_string(), Value::U8(1)),
        ("k".to_string(), Value::U8(2)),
    ];
    assert!(GgufWriter::new(Vec::new(), &dup_key, &[]).is_err());
    let mixed = vec![(
        "k".to_string(),
        Value::Array(ValueType::U8, vec![Value::U16(1)]),
    )];
    assert!(GgufWriter::new(Vec::new(), &mixed, &[]).is_err());
    let mut deep = Value::Array(ValueType::U8, vec![]);
    for _ in 0..4 {
        deep = Value::Array(ValueType::Array, vec![deep]);
    }
    assert!(GgufWriter::new(Vec::new(), &[("d".to_string(), deep)], &[]).is_err());
    for bad in [Value::U32(0), Value::U32(3), Value::U64(32)] {
        assert!(
            GgufWriter::new(Vec::new(), &[("general.alignment".to_string(), bad)], &[]).is_err()
        );
    }
}

/// Files written by the `gguf` Python package parse, carry the values it was given, and our
/// writer reproduces them byte for byte from what we read.
#[test]
fn files_from_the_python_gguf_package_parse_and_rewrite_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/make_seeds.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "make_seeds.py failed (pip install -r scripts/requirements-test.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let meta = GgufFile::open(dir.path().join("meta_only")).expect("meta_only parses");
    assert_eq!(meta.get("t.i16"), Some(&Value::I16(-300)));
    assert_eq!(meta.get("t.u64"), Some(&Value::U64(1 << 40)));
    assert_eq!(meta.get("t.f32"), Some(&Value::F32(1e-6)));
    assert_eq!(meta.get("t.str"), Some(&s("héllo")));
    assert_eq!(
        meta.get("t.arr_str"),
        Some(&Value::Array(
            ValueType::String,
            vec![s("a"), s("bb"), s("")]
        ))
    );
    let nested = meta
        .get("t.arr_nested")
        .and_then(Value::as_array)
        .expect("nested array");
    assert_eq!((nested.0, nested.1.len()), (ValueType::Array, 2));

    for name in ["meta_only", "tensors", "tensors_align64", "empty"] {
        let bytes = std::fs::read(dir.path().join(name)).expect("read seed");
        let f = GgufFile::from_bytes(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let specs: Vec<TensorSpec> = f
            .tensors()
            .iter()
            .map(|t| TensorSpec::new(t.name.clone(), &t.dims, t.ty))
            .collect();
        let mut w = GgufWriter::new(Vec::new(), f.metadata(), &specs).expect("writer");
        for t in f.tensors() {
            w.write_data(f.tensor_data(t)).expect("data");
        }
        assert_eq!(
            w.finish().expect("finish"),
            bytes,
            "{name}: our rewrite differs from the gguf package's file"
        );
    }
    let t = GgufFile::open(dir.path().join("tensors_align64")).expect("parses");
    assert_eq!(t.alignment(), 64);
    let q2k = t.tensor("q2_k").expect("q2_k");
    assert_eq!(
        (q2k.ty, q2k.dims.as_slice(), q2k.n_bytes),
        (TensorType::Q2K, &[256u64, 2][..], 168)
    );
    let i32t = t.tensor("i32").expect("i32");
    assert_eq!(i32t.dims, vec![3, 2]);
    assert_eq!(
        t.tensor_data(i32t),
        (0i32..6).flat_map(i32::to_le_bytes).collect::<Vec<u8>>()
    );
}
