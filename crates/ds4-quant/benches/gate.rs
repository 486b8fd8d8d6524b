//! The speed gate: single-threaded matrix-vector throughput in GB/s of weight bytes, per
//! format, for 64 MiB matrices (and 1 GiB with `DS4_BENCH_1G=1`), best of `DS4_BENCH_REPS` (5).
//!
//!   cargo bench -p ds4-quant --bench gate
//!
//! Reports two clocks: wall time, and this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which
//! stays meaningful on a shared, overloaded machine where wall time mostly measures the other
//! tenants. `DS4_BENCH_THREADS=N` adds an N-thread wall-clock run (rayon over 64-row chunks).

use ds4_quant::{synth_blocks, Kernels, QuantizedActs, TensorType};
use rayon::prelude::*;
use std::time::Instant;

const N_IN: usize = 4096;

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

/// Best (wall, cpu) seconds of `reps` runs of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm caches and page tables
    let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let (t0, c0) = (Instant::now(), thread_cpu_seconds());
        f();
        cpu = cpu.min(thread_cpu_seconds() - c0);
        wall = wall.min(t0.elapsed().as_secs_f64());
    }
    (wall, cpu)
}

fn main() {
    let reps: usize = std::env::var("DS4_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let threads: usize = std::env::var("DS4_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // DS4_BENCH_MIB=2,64 picks matrix sizes in MiB (2 MiB stays in L2: kernel compute speed).
    let mut sizes: Vec<usize> = std::env::var("DS4_BENCH_MIB")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|m| m.trim().parse::<usize>().ok())
                .map(|m| m << 20)
                .collect()
        })
        .unwrap_or_else(|| vec![64 << 20]);
    // DS4_BENCH_ONLY_Q=1 runs only matvec_q (the gate's measure), not matvec_f32 / dequant.
    let only_q = std::env::var_os("DS4_BENCH_ONLY_Q").is_some();
    if std::env::var_os("DS4_BENCH_1G").is_some() {
        sizes.push(1 << 30);
    }
    let tables: Vec<Kernels> = Kernels::available()
        .into_iter()
        // The AVX-512 table without VBMI only matters on older CPUs: benches/ab.rs covers it.
        .filter(|k| k.name != "scalar" && k.name != "avx512-novbmi")
        .collect();
    let x: Vec<f32> = (0..N_IN)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    println!(
        "kernel tables: {:?}; best of {reps}; GB/s of weight bytes (wall | thread CPU)",
        tables.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    for &total in &sizes {
        for ty in [
            TensorType::Q8_0,
            TensorType::Q2K,
            TensorType::Q4K,
            TensorType::Iq2Xxs,
            TensorType::F16,
        ] {
            if only_q && !ty.is_quantized() {
                continue;
            }
            let row_bytes = ty.row_bytes(N_IN as u64).expect("whole blocks") as usize;
            let n_rows = total / row_bytes;
            let mut w = vec![0u8; n_rows * row_bytes];
            let gb = w.len() as f64 / 1e9;
            let (wall, cpu) = best_of(reps, || synth_blocks(ty, 7, n_rows * N_IN, 0.02, &mut w));
            println!(
                "{:<8} synth_blocks {:6.2} | {:6.2}",
                ty.name(),
                gb / wall,
                gb / cpu
            );
            let mut y = vec![0.0f32; n_rows];
            let size = if total >= 1 << 30 {
                "1GiB".to_string()
            } else {
                format!("{}MiB", total >> 20)
            };
            for k in &tables {
                let mut line = format!("{:<8} {:<6} {:<7}", ty.name(), size, k.name);
                if ty.is_quantized() {
                    let mut acts = QuantizedActs::empty(ty);
                    let (wall, cpu) = best_of(reps, || {
                        acts.requantize(ty, &x);
                        k.matvec_q(ty, &w, row_bytes, n_rows, &acts, &mut y);
                        std::hint::black_box(&y);
                    });
                    line += &format!("  matvec_q {:6.2} | {:6.2}", gb / wall, gb / cpu);
                }
                if only_q {
                    println!("{line}");
                    continue;
                }
                let (wall, cpu) = best_of(reps, || {
                    k.matvec_f32(ty, &w, row_bytes, n_rows, &x, &mut y);
                    std::hint::black_box(&y);
                });
                line += &format!("  matvec_f32 {:6.2} | {:6.2}", gb / wall, gb / cpu);
                let mut out = vec![0.0f32; N_IN];
                let (wall, cpu) = best_of(reps, || {
                    for row in w.chunks_exact(row_bytes) {
                        k.dequantize(ty, row, &mut out);
                        std::hint::black_box(&out);
                    }
                });
                line += &format!("  dequant {:6.2} | {:6.2}", gb / wall, gb / cpu);
                println!("{line}");
            }
            if threads > 1 && ty.is_quantized() {
                let k = Kernels::best();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let acts = QuantizedActs::quantize(ty, &x);
                let pool1 = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("pool");
                let mut run = |pool: &rayon::ThreadPool| {
                    best_of(reps, || {
                        pool.install(|| {
                            y.par_chunks_mut(64).enumerate().for_each(|(c, ys)| {
                                let rows = &w[64 * c * row_bytes..(64 * c + ys.len()) * row_bytes];
                                k.matvec_q(ty, rows, row_bytes, ys.len(), &acts, ys);
                            })
                        })
                    })
                    .0
                };
                let (t1, tn) = (run(&pool1), run(&pool));
                println!(
                    "{:<8} {:<6} {:<7}  matvec_q wall 1 thread {:6.2}, {threads} threads {:6.2} GB/s (x{:.2})",
                    ty.name(), size, k.name, gb / t1, gb / tn, t1 / tn
                );
            }
        }
    }
}
