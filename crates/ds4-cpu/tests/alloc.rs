//! Decode allocates nothing per token once warm (issue: "no allocation per token in decode"):
//! a counting global allocator around 40 single-token evals of the synthetic tiny model.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ds4_cpu::CpuBackend;
use ds4_model::synth::{build_model, SynthSpec};
use ds4_model::{Backend, Logits};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_does_not_allocate_per_token() {
    let model = Arc::new(build_model(&SynthSpec::tiny(99)).expect("synthetic tiny model builds"));
    let v = model.config.n_vocab;
    let mut be = CpuBackend::new(model, 256).unwrap();
    let mut logits = vec![0.0f32; v];
    let toks: Vec<u32> = (0..80).map(|i| (i * 37 % v) as u32).collect();
    // Warm-up: rayon's pool and first-use buffers.
    for &t in &toks[..8] {
        be.eval(&[t], Logits::Last(&mut logits)).unwrap();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for &t in &toks[8..48] {
        be.eval(&[t], Logits::Last(&mut logits)).unwrap();
    }
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    // One rayon injection per eval; rayon's injector allocates one block per 63 injections, so
    // 40 steps may see that block boundary once. A per-token allocation would show up 40 times.
    assert!(n <= 1, "{n} allocations in 40 decode steps");
}
