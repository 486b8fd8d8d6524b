//! Side-by-side A/B of kernel variants on one matrix, runs interleaved (A B A B …) and the best
//! of each kept, so a shared machine's noise hits every variant alike. Development tool.
//!
//!   DS4_AB_MIB=64 DS4_AB_ROUNDS=9 cargo bench -p ds4-quant --bench ab

use ds4_quant::{synth_blocks, Kernels, QuantizedActs, TensorType};
use std::time::Instant;

fn n_in() -> usize {
    env("DS4_AB_NIN", 4096)
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn variants() -> Vec<Kernels> {
    Kernels::available()
        .into_iter()
        .filter(|k| k.name != "scalar")
        .collect()
}

fn main() {
    let mib = env("DS4_AB_MIB", 64);
    let rounds = env("DS4_AB_ROUNDS", 9);
    let only = std::env::var("DS4_AB_TYPES").unwrap_or_default();
    let x: Vec<f32> = (0..n_in())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let tables = variants();
    for ty in [
        TensorType::Q8_0,
        TensorType::Q2K,
        TensorType::Q4K,
        TensorType::Iq2Xxs,
    ] {
        if !only.is_empty() && !only.split(',').any(|t| t == ty.name()) {
            continue;
        }
        let row_bytes = ty.row_bytes(n_in() as u64).expect("whole blocks") as usize;
        let n_rows = (mib << 20) / row_bytes;
        let mut w = vec![0u8; n_rows * row_bytes];
        synth_blocks(ty, 7, n_rows * n_in(), 0.02, &mut w);
        let gb = w.len() as f64 / 1e9;
        let acts = QuantizedActs::quantize(ty, &x);
        let mut y = vec![0.0f32; n_rows];
        let mut best = vec![(f64::MAX, f64::MAX); tables.len()];
        let mut first: Option<Vec<f32>> = None;
        for _ in 0..rounds {
            for (k, b) in tables.iter().zip(best.iter_mut()) {
                let (t0, c0) = (Instant::now(), thread_cpu_seconds());
                k.matvec_q(ty, &w, row_bytes, n_rows, &acts, &mut y);
                let c = thread_cpu_seconds() - c0;
                let t = t0.elapsed().as_secs_f64();
                *b = (b.0.min(t), b.1.min(c));
                match &first {
                    None => first = Some(y.clone()),
                    Some(f) => assert!(
                        f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {ty}: results differ from the first table",
                        k.name
                    ),
                }
            }
        }
        for (k, b) in tables.iter().zip(&best) {
            println!(
                "{:<8} {mib:>5}MiB {:<14} {:6.2} | {:6.2} GB/s (wall | cpu)",
                ty.name(),
                k.name,
                gb / b.0,
                gb / b.1
            );
        }
    }
}
