//! Layout validation: strict for real-width files (here full-width, one-layer, header-only sparse
//! files), §1.5 rules for small ones, and every mismatch reported in one error.

use std::path::PathBuf;

use ds4_gguf::{TensorType, Value};
use ds4_model::synth::{write_model, Preset, SynthPlan, SynthSpec};
use ds4_model::{CheckMode, LoadError, Model, Problem};

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.{}.gguf", std::process::id()))
}

fn full_plan(layers: usize) -> SynthPlan {
    let spec = SynthSpec {
        layers: Some(layers),
        ..SynthSpec::new(Preset::Full, 1)
    };
    spec.plan().expect("full plan")
}

fn load_header_only(plan: &SynthPlan, name: &str) -> Result<Model, LoadError> {
    let path = tmp(name);
    plan.write_file(&path, true, &mut |_, _| {})
        .expect("write header-only");
    let r = Model::open(&path);
    let _ = std::fs::remove_file(&path);
    r
}

fn set_meta(plan: &mut SynthPlan, key: &str, v: Value) {
    let slot = plan
        .metadata
        .iter_mut()
        .find(|(k, _)| k == key)
        .expect("key in plan");
    slot.1 = v;
}

#[test]
fn full_width_header_only_files_validate_strictly() {
    for layers in [1, 3] {
        let plan = full_plan(layers);
        let m = match load_header_only(&plan, &format!("full{layers}")) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(m.check_mode(), CheckMode::Strict);
        assert_eq!(
            m.config,
            ds4_model::Config {
                context_length: 1 << 20,
                ..ds4_model::Config::real(layers)
            }
        );
        assert_eq!(m.weights.token_embd.dims(), &[4096, 129280]);
    }
}

#[test]
fn strict_validation_lists_every_planted_mismatch() {
    let mut plan = full_plan(3);
    set_meta(&mut plan, "deepseek4.attention.head_count", Value::U32(32));
    set_meta(&mut plan, "deepseek4.rope.freq_base", Value::F32(10001.0));
    // u32 keys must be UINT32 (spec §1.4).
    set_meta(&mut plan, "deepseek4.expert_count", Value::U64(256));
    let ratios = plan
        .metadata
        .iter_mut()
        .find(|(k, _)| k == "deepseek4.attention.compress_ratios")
        .expect("ratios");
    ratios.1 = Value::Array(
        ds4_gguf::ValueType::U32,
        vec![Value::U32(0), Value::U32(0), Value::U32(128)],
    );
    let clamps = plan
        .metadata
        .iter_mut()
        .find(|(k, _)| k == "deepseek4.swiglu_clamp_exp")
        .expect("clamps");
    clamps.1 = Value::Array(
        ds4_gguf::ValueType::F32,
        vec![Value::F32(10.0), Value::F32(7.0), Value::F32(10.0)],
    );
    let t = |plan: &mut SynthPlan, name: &str| {
        plan.tensors
            .iter()
            .position(|t| t.spec.name == name)
            .unwrap_or_else(|| panic!("{name} planned"))
    };
    let i = t(&mut plan, "blk.0.attn_q_a.weight");
    plan.tensors[i].spec.ty = TensorType::F16;
    let i = t(&mut plan, "blk.1.attn_kv.weight");
    plan.tensors[i].spec.dims = vec![4096, 256];
    let i = t(&mut plan, "blk.2.indexer.proj.weight");
    plan.tensors.remove(i);
    let i = t(&mut plan, "blk.1.ffn_up_exps.weight");
    plan.tensors[i].spec.ty = TensorType::Q4K;

    let err = load_header_only(&plan, "planted").expect_err("must fail");
    let msg = err.to_string();
    println!("{msg}");
    let LoadError::Invalid { mode, problems } = &err else {
        panic!("{msg}")
    };
    assert_eq!(*mode, CheckMode::Strict);
    for needle in [
        "deepseek4.attention.head_count",
        "deepseek4.rope.freq_base",
        "deepseek4.expert_count",
        "compress_ratios[2]",
        "swiglu_clamp_exp[1]",
        "blk.0.attn_q_a.weight",
        "blk.1.attn_kv.weight",
        "missing tensor \"blk.2.indexer.proj.weight\"",
        "blk.1.ffn_up_exps.weight",
    ] {
        assert!(msg.contains(needle), "{needle:?} not reported in:\n{msg}");
    }
    assert!(problems.len() >= 9, "{msg}");
    assert!(problems.contains(&Problem::TensorDims {
        name: "blk.1.attn_kv.weight".into(),
        expected: vec![4096, 512],
        found: vec![4096, 256],
    }));
}

#[test]
fn strict_mode_rejects_more_layers_than_the_real_model() {
    let mut plan = full_plan(1);
    set_meta(&mut plan, "deepseek4.block_count", Value::U32(44));
    let err = load_header_only(&plan, "toomany").expect_err("must fail");
    assert!(err.to_string().contains("block_count"), "{err}");
}

#[test]
fn tiny_rules_and_tensor_dims_are_checked() {
    let mut plan = SynthSpec::tiny(1).plan().expect("tiny plan");
    set_meta(&mut plan, "deepseek4.rope.dimension_count", Value::U32(63));
    let err = match Model::from_bytes(plan.to_bytes().expect("bytes")) {
        Ok(_) => panic!("odd n_rot must be rejected"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("n_rot = 63"), "{msg}");
    assert!(msg.contains("multiple of 64"), "{msg}");

    let mut plan = SynthSpec::tiny(1).plan().expect("tiny plan");
    let i = plan
        .tensors
        .iter()
        .position(|t| t.spec.name == "output.weight")
        .expect("output");
    plan.tensors[i].spec.dims = vec![256, 500];
    let j = plan
        .tensors
        .iter()
        .position(|t| t.spec.name == "blk.3.attn_compressor_ape.weight")
        .expect("ape");
    plan.tensors[j].spec.dims = vec![128, 4];
    let err = Model::from_bytes(plan.to_bytes().expect("bytes")).expect_err("must fail");
    assert_eq!(err.problems().len(), 2, "{err}");
    assert!(err.to_string().contains("[256, 512]"), "{err}");
    assert!(err.to_string().contains("[128, 8]"), "{err}");
}

#[test]
fn missing_metadata_keys_are_all_named() {
    let mut plan = SynthSpec::tiny(1).plan().expect("tiny plan");
    plan.metadata.retain(|(k, _)| {
        k != "deepseek4.attention.sliding_window" && k != "deepseek4.hyper_connection.count"
    });
    let err = Model::from_bytes(plan.to_bytes().expect("bytes")).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("deepseek4.attention.sliding_window")
            && msg.contains("deepseek4.hyper_connection.count"),
        "{msg}"
    );
}

#[test]
fn written_tiny_file_equals_in_memory_bytes() {
    let spec = SynthSpec::tiny(11);
    let path = tmp("tiny11");
    write_model(&spec, &path, false, &mut |_, _| {}).expect("write");
    let on_disk = std::fs::read(&path).expect("read back");
    let _ = std::fs::remove_file(&path);
    assert!(on_disk == spec.plan().expect("plan").to_bytes().expect("bytes"));
}

/// spec §1.4 type rules: floats accept F32/F64/U32/I32, u64 accepts U64/U32, ratio arrays u32 or
/// i32, clamp arrays f32 or f64; the group keys may be absent; u32 keys must be UINT32.
#[test]
fn metadata_type_rules_follow_the_loader() {
    use ds4_gguf::ValueType;
    let mut plan = full_plan(4);
    set_meta(&mut plan, "deepseek4.rope.freq_base", Value::U32(10000));
    set_meta(&mut plan, "deepseek4.rope.scaling.factor", Value::I32(16));
    set_meta(&mut plan, "deepseek4.expert_weights_scale", Value::F64(1.5));
    set_meta(
        &mut plan,
        "deepseek4.rope.scaling.original_context_length",
        Value::U32(65536),
    );
    set_meta(
        &mut plan,
        "deepseek4.attention.compress_ratios",
        Value::Array(
            ValueType::I32,
            [0, 0, 4, 128].iter().map(|&r| Value::I32(r)).collect(),
        ),
    );
    set_meta(
        &mut plan,
        "deepseek4.swiglu_clamp_exp",
        Value::Array(ValueType::F64, vec![Value::F64(10.0); 43]),
    );
    plan.metadata
        .retain(|(k, _)| !k.starts_with("deepseek4.expert_group"));
    // The router bias is optional in the main model (spec §8 pitfall 28).
    plan.tensors
        .retain(|t| t.spec.name != "blk.3.exp_probs_b.bias");
    let m = load_header_only(&plan, "typerules").unwrap_or_else(|e| panic!("{e}"));
    assert!(m.weights.layers[3].exp_probs_b.is_none());
    assert_eq!(m.config.rope_scale_factor, 16.0);

    let mut plan = full_plan(1);
    set_meta(&mut plan, "deepseek4.attention.head_count", Value::I32(64));
    set_meta(&mut plan, "deepseek4.expert_group_count", Value::U32(8));
    set_meta(
        &mut plan,
        "deepseek4.expert_weights_norm",
        Value::Bool(false),
    );
    let err = load_header_only(&plan, "typerules2").expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("\"deepseek4.attention.head_count\": expected type u32, found i32"),
        "{msg}"
    );
    assert!(msg.contains("expert_group_count"), "{msg}");
    assert!(msg.contains("expert_weights_norm"), "{msg}");
    assert_eq!(err.problems().len(), 3, "{msg}");
}

#[test]
fn hash_table_with_out_of_range_expert_is_rejected() {
    let plan = SynthSpec::tiny(2).plan().expect("plan");
    let mut bytes = plan.to_bytes().expect("bytes");
    let file = ds4_gguf::GgufFile::from_bytes(bytes.clone()).expect("parse");
    let info = file
        .tensor("blk.1.ffn_gate_tid2eid.weight")
        .expect("hash table")
        .clone();
    let at = info.offset as usize + 4 * 5;
    bytes[at..at + 4].copy_from_slice(&99i32.to_le_bytes());
    let err = Model::from_bytes(bytes).expect_err("must fail");
    assert!(
        err.to_string().contains("element 5 is expert id 99"),
        "{err}"
    );
}

#[test]
fn implausible_layer_count_is_rejected_before_building_the_layout() {
    let mut plan = SynthSpec::tiny(1).plan().expect("tiny plan");
    set_meta(&mut plan, "deepseek4.block_count", Value::U32(4_000_000));
    let ratios = vec![Value::U32(0); 4_000_000];
    set_meta(
        &mut plan,
        "deepseek4.attention.compress_ratios",
        Value::Array(ds4_gguf::ValueType::U32, ratios),
    );
    let err = Model::from_bytes(plan.to_bytes().expect("bytes")).expect_err("must fail");
    assert!(err.to_string().contains("block_count"), "{err}");
}

/// Corrupted headers (random byte flips in metadata and the tensor directory) give errors or
/// loadable models, never panics.
#[test]
fn corrupted_headers_never_panic() {
    use rand::{Rng, SeedableRng};
    let spec = SynthSpec {
        layers: Some(3),
        ..SynthSpec::tiny(4)
    };
    let bytes = spec.plan().and_then(|p| p.to_bytes()).expect("bytes");
    let header_len = ds4_gguf::GgufFile::from_bytes(bytes.clone())
        .expect("parse")
        .data_offset() as usize;
    // Skip the vocabulary strings: flips there only change token spellings.
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("key in header")
    };
    let (vocab_start, vocab_end) = (
        find(b"tokenizer.ggml.tokens"),
        find(b"tokenizer.ggml.bos_token_id"),
    );
    let targets: Vec<usize> = (0..vocab_start).chain(vocab_end..header_len).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let (mut loaded, mut rejected) = (0, 0);
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = targets[rng.gen_range(0..targets.len())];
            b[at] ^= 1 << rng.gen_range(0..8);
        }
        match Model::from_bytes(b) {
            Ok(_) => loaded += 1,
            Err(_) => rejected += 1,
        }
    }
    println!("corrupted headers: {loaded} loaded, {rejected} rejected");
    assert!(rejected > 100, "{loaded} loaded, {rejected} rejected");
}
