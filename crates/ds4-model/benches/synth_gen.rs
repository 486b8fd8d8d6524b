//! Synthetic-model generation throughput without the disk: the full-shape plan streamed into
//! `io::sink()` (generation + GGUF framing only), plus the in-memory tiny build tests use.
//! `cargo bench -p ds4-model --bench synth_gen [-- LAYERS]`

use std::time::Instant;

use ds4_model::synth::{build_bytes, ExpertQuant, Preset, SynthSpec};

fn main() {
    let layers: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let t = Instant::now();
    let n = 5;
    for seed in 0..n {
        let _ = std::hint::black_box(build_bytes(&SynthSpec::tiny(seed)));
    }
    println!(
        "tiny in memory: {:.1} ms per model",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );

    for experts in [ExpertQuant::Q2, ExpertQuant::Q4] {
        let spec = SynthSpec {
            layers: Some(layers),
            experts,
            ..SynthSpec::new(Preset::Full, 1)
        };
        let plan = match spec.plan() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let bytes = plan.data_bytes().unwrap_or(0);
        let t = Instant::now();
        if let Err(e) = plan.write_to(std::io::sink(), &mut |_, _| {}) {
            panic!("{e}");
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "full {experts:?} --layers {layers}: {:.2} GiB generated in {s:.2} s = {:.2} GiB/s ({} rayon threads)",
            bytes as f64 / (1u64 << 30) as f64,
            bytes as f64 / (1u64 << 30) as f64 / s,
            rayon::current_num_threads()
        );
    }
}
