//! Feeds arbitrary bytes to the GGUF reader. Beyond "never panics": every file the reader accepts
//! must survive a write -> read -> write cycle byte for byte, so the reader and the writer agree on
//! the format for every input the fuzzer reaches.
#![no_main]

use ds4_gguf::{GgufFile, GgufWriter, TensorSpec};
use libfuzzer_sys::fuzz_target;

/// Writes `f` back out with our writer (same metadata, tensors and bytes, offsets recomputed).
fn rewrite(f: &GgufFile) -> Option<Vec<u8>> {
    let specs: Vec<TensorSpec> = f.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), &t.dims, t.ty)).collect();
    // Only rewrite small outputs: a hostile header may describe large (but present) tensors.
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    if total > 1 << 22 {
        return None;
    }
    let mut w = GgufWriter::new(Vec::new(), f.metadata(), &specs).ok()?;
    for t in f.tensors() {
        w.write_data(f.tensor_data(t)).ok()?;
    }
    w.finish().ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else { return };
    for (k, v) in f.metadata() {
        let _ = format!("{k} {v} {}", v.type_desc());
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert!(t.offset >= f.data_offset());
    }
    if let Some(once) = rewrite(&f) {
        let again = GgufFile::from_bytes(once.clone()).expect("a file our writer wrote must parse");
        let twice = rewrite(&again).expect("rewrite of a rewritten file");
        assert_eq!(once, twice, "write(read(write(read(x)))) != write(read(x))");
    }
});
