//! Throughput of the row kernels in GB/s of WEIGHT bytes (the speed gate compares with
//! ggml's CPU vec_dot the same way). Matrices are 4096 columns wide and 64 MiB in total per format;
//! set `DS4_BENCH_1G=1` to also run 1 GiB matrices (DRAM-bound; not for CI).
//!
//!   cargo bench -p ds4-quant --bench kernels
//!
//! Variants: `matvec_q` (activations quantized once per matvec to Q8_0/Q8_K, integer block dots,
//! the quantization time included), `matvec_f32` (f32 activations), `dequant` (row → f32), per
//! kernel table (`avx512`, `avx2`, `scalar` for dequant only), and `matvec_q_2threads` /
//! `matvec_f32_2threads` (rayon over row chunks) to show scaling.

use ds4_quant::{synth_blocks, Kernels, QuantizedActs, TensorType};
use rayon::prelude::*;
use std::sync::OnceLock;

const N_IN: usize = 4096;
const TYPES: [TensorType; 5] = [
    TensorType::Q8_0,
    TensorType::Q2K,
    TensorType::Q4K,
    TensorType::Iq2Xxs,
    TensorType::F16,
];
const QTYPES: [TensorType; 4] = [
    TensorType::Q8_0,
    TensorType::Q2K,
    TensorType::Q4K,
    TensorType::Iq2Xxs,
];

fn main() {
    divan::main();
}

struct Matrix {
    w: Vec<u8>,
    row_bytes: usize,
    n_rows: usize,
}

fn matrix(ty: TensorType, total_bytes: usize) -> Matrix {
    let row_bytes = ty.row_bytes(N_IN as u64).expect("4096 is whole blocks") as usize;
    let n_rows = total_bytes / row_bytes;
    let mut w = vec![0u8; n_rows * row_bytes];
    synth_blocks(ty, 7, n_rows * N_IN, 0.02, &mut w);
    Matrix {
        w,
        row_bytes,
        n_rows,
    }
}

fn cached(ty: TensorType, big: bool) -> &'static Matrix {
    static SMALL: [OnceLock<Matrix>; 5] = [const { OnceLock::new() }; 5];
    static BIG: [OnceLock<Matrix>; 5] = [const { OnceLock::new() }; 5];
    let i = TYPES.iter().position(|&t| t == ty).expect("benched type");
    if big {
        BIG[i].get_or_init(|| matrix(ty, 1 << 30))
    } else {
        SMALL[i].get_or_init(|| matrix(ty, 64 << 20))
    }
}

fn sizes() -> Vec<bool> {
    if std::env::var_os("DS4_BENCH_1G").is_some() {
        vec![false, true]
    } else {
        vec![false]
    }
}

fn x() -> Vec<f32> {
    (0..N_IN)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn table(name: &str) -> Option<Kernels> {
    Kernels::available().into_iter().find(|k| k.name == name)
}

fn label(ty: TensorType, big: bool) -> String {
    format!("{ty}/{}", if big { "1GiB" } else { "64MiB" })
}

fn args_q() -> Vec<String> {
    sizes()
        .into_iter()
        .flat_map(|b| QTYPES.map(|t| label(t, b)))
        .collect()
}

fn args_all() -> Vec<String> {
    sizes()
        .into_iter()
        .flat_map(|b| TYPES.map(|t| label(t, b)))
        .collect()
}

fn parse(arg: &str) -> (TensorType, bool) {
    let (t, s) = arg.split_once('/').expect("label is type/size");
    let ty = TYPES
        .into_iter()
        .find(|x| x.name() == t)
        .expect("known type");
    (ty, s == "1GiB")
}

fn run_matvec_q(bencher: divan::Bencher, arg: &str, k: &Kernels, threads: usize) {
    let (ty, big) = parse(arg);
    let m = cached(ty, big);
    let x = x();
    let mut y = vec![0.0f32; m.n_rows];
    let mut acts = QuantizedActs::empty(ty);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    bencher
        .counter(divan::counter::BytesCount::new(m.w.len()))
        .bench_local(|| {
            acts.requantize(ty, &x);
            let acts = &acts;
            if threads == 1 {
                for (o, yo) in y.iter_mut().enumerate() {
                    *yo = k.dot_q(ty, &m.w[o * m.row_bytes..(o + 1) * m.row_bytes], acts);
                }
            } else {
                pool.install(|| {
                    y.par_chunks_mut(64).enumerate().for_each(|(c, ys)| {
                        for (i, yo) in ys.iter_mut().enumerate() {
                            let o = 64 * c + i;
                            *yo = k.dot_q(ty, &m.w[o * m.row_bytes..(o + 1) * m.row_bytes], acts);
                        }
                    })
                });
            }
            divan::black_box(&y);
        });
}

fn run_matvec_f32(bencher: divan::Bencher, arg: &str, k: &Kernels, threads: usize) {
    let (ty, big) = parse(arg);
    let m = cached(ty, big);
    let x = x();
    let mut y = vec![0.0f32; m.n_rows];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    bencher
        .counter(divan::counter::BytesCount::new(m.w.len()))
        .bench_local(|| {
            if threads == 1 {
                for (o, yo) in y.iter_mut().enumerate() {
                    *yo = k.dot_f32(ty, &m.w[o * m.row_bytes..(o + 1) * m.row_bytes], &x);
                }
            } else {
                pool.install(|| {
                    y.par_chunks_mut(64).enumerate().for_each(|(c, ys)| {
                        for (i, yo) in ys.iter_mut().enumerate() {
                            let o = 64 * c + i;
                            *yo = k.dot_f32(ty, &m.w[o * m.row_bytes..(o + 1) * m.row_bytes], &x);
                        }
                    })
                });
            }
            divan::black_box(&y);
        });
}

#[divan::bench(args = args_q(), sample_count = 5, sample_size = 1)]
fn matvec_q_avx512(bencher: divan::Bencher, arg: &str) {
    if let Some(k) = table("avx512") {
        run_matvec_q(bencher, arg, &k, 1);
    }
}

#[divan::bench(args = args_q(), sample_count = 5, sample_size = 1)]
fn matvec_q_avx2(bencher: divan::Bencher, arg: &str) {
    if let Some(k) = table("avx2") {
        run_matvec_q(bencher, arg, &k, 1);
    }
}

#[divan::bench(args = args_q(), sample_count = 5, sample_size = 1)]
fn matvec_q_2threads(bencher: divan::Bencher, arg: &str) {
    run_matvec_q(bencher, arg, Kernels::best(), 2);
}

#[divan::bench(args = args_all(), sample_count = 5, sample_size = 1)]
fn matvec_f32_avx512(bencher: divan::Bencher, arg: &str) {
    if let Some(k) = table("avx512") {
        run_matvec_f32(bencher, arg, &k, 1);
    }
}

#[divan::bench(args = args_all(), sample_count = 5, sample_size = 1)]
fn matvec_f32_avx2(bencher: divan::Bencher, arg: &str) {
    if let Some(k) = table("avx2") {
        run_matvec_f32(bencher, arg, &k, 1);
    }
}

#[divan::bench(args = args_all(), sample_count = 5, sample_size = 1)]
fn matvec_f32_2threads(bencher: divan::Bencher, arg: &str) {
    run_matvec_f32(bencher, arg, Kernels::best(), 2);
}

/// Row dequantization into a reused 4096-f32 buffer (what a batched prefill does per row).
#[divan::bench(args = args_all(), sample_count = 5, sample_size = 1)]
fn dequant_best(bencher: divan::Bencher, arg: &str) {
    let (ty, big) = parse(arg);
    let m = cached(ty, big);
    let k = Kernels::best();
    let mut out = vec![0.0f32; N_IN];
    bencher
        .counter(divan::counter::BytesCount::new(m.w.len()))
        .bench_local(|| {
            for row in m.w.chunks_exact(m.row_bytes) {
                k.dequantize(ty, row, &mut out);
                divan::black_box(&out);
            }
        });
}
