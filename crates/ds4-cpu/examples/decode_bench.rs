//! Decode and prefill speed of the CPU backend on a GGUF file.
//!
//! `cargo run --release -p ds4-cpu --example decode_bench -- MODEL.gguf [N_DECODE] [N_PREFILL]`
//! `cargo run --release -p ds4-cpu --example decode_bench -- --synth-full 2 [N_DECODE] [N_PREFILL]`
//! (full-width synthetic model with that many layers, built in memory). `--exact` first measures
//! the ds4-CPU-arithmetic mode.
//!
//! Prints tokens/s and the GB/s of weights read per decoded token: every tensor once, except that
//! only `n_expert_used` of the routed experts, one embedding row, and the indexer query path only
//! once more than `idx_top_k` compressed rows exist (not reached in short runs) are counted.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ds4_cpu::CpuBackend;
use ds4_model::synth::{build_model, Preset, SynthSpec};
use ds4_model::{Backend, LayerAttnExtra, Logits, Model};

fn weight_bytes_per_token(m: &Model) -> usize {
    let cfg = &m.config;
    let w = &m.weights;
    let mut total = w.token_embd.row_bytes();
    let h = &w.head;
    for t in [
        &h.output_hc_base,
        &h.output_hc_fn,
        &h.output_hc_scale,
        &h.output_norm,
        &h.output,
    ] {
        total += t.bytes().len();
    }
    let frac = |t: &ds4_model::Tensor| t.bytes().len() / cfg.n_expert * cfg.n_expert_used;
    for l in &w.layers {
        for t in [
            &l.hc_attn.fn_,
            &l.hc_attn.scale,
            &l.hc_attn.base,
            &l.attn_norm,
            &l.attn_q_a,
            &l.attn_q_a_norm,
            &l.attn_q_b,
            &l.attn_kv,
            &l.attn_kv_a_norm,
            &l.attn_sinks,
            &l.attn_output_a,
            &l.attn_output_b,
            &l.hc_ffn.fn_,
            &l.hc_ffn.scale,
            &l.hc_ffn.base,
            &l.ffn_norm,
            &l.ffn_gate_inp,
            &l.ffn_gate_shexp,
            &l.ffn_up_shexp,
            &l.ffn_down_shexp,
        ] {
            total += t.bytes().len();
        }
        total += frac(&l.ffn_gate_exps) + frac(&l.ffn_up_exps) + frac(&l.ffn_down_exps);
        let comp = match &l.attn_extra {
            LayerAttnExtra::Window => vec![],
            LayerAttnExtra::Compressed4 {
                compressor,
                indexer,
            } => vec![compressor, &indexer.compressor],
            LayerAttnExtra::CompressedN { compressor } => vec![compressor],
        };
        for c in comp {
            total += c.kv.bytes().len() + c.gate.bytes().len();
        }
    }
    total
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: decode_bench [--exact] (MODEL.gguf | --synth-full LAYERS) [N_DECODE] [N_PREFILL]";
    let mut rest = &args[1..];
    let exact = rest.first().map(String::as_str) == Some("--exact");
    if exact {
        rest = &rest[1..];
    }
    let model = match rest.first().map(String::as_str) {
        Some("--synth-full") => {
            let layers: usize = rest.get(1).context(usage)?.parse()?;
            rest = &rest[2..];
            let mut spec = SynthSpec::new(Preset::Full, 7);
            spec.layers = Some(layers);
            let t0 = Instant::now();
            let m = build_model(&spec)?;
            println!(
                "built full-width {layers}-layer synthetic model in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            m
        }
        Some(path) => {
            rest = &rest[1..];
            Model::open(path).with_context(|| format!("opening {path}"))?
        }
        None => anyhow::bail!(usage),
    };
    let model = Arc::new(model);
    let n_decode: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let n_prefill: usize = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let cfg = model.config.clone();
    let bytes = weight_bytes_per_token(&model);
    let tokens: Vec<u32> = (0..n_decode.max(n_prefill))
        .map(|i| ((i * 7919 + 13) % cfg.n_vocab) as u32)
        .collect();
    let mut logits = vec![0.0f32; cfg.n_vocab];
    let mut be = CpuBackend::new(model.clone(), n_decode.max(n_prefill) + 8)?;
    be.set_exact(exact);
    be.eval(&tokens[..1], Logits::Last(&mut logits))?; // warm-up: page in the weights
    be.reset();
    let t0 = Instant::now();
    for &t in &tokens[..n_decode] {
        be.eval(&[t], Logits::Last(&mut logits))?;
    }
    let dt = t0.elapsed().as_secs_f64();
    let tps = n_decode as f64 / dt;
    println!(
        "decode: {n_decode} tokens in {dt:.2} s = {tps:.2} tok/s; weights read {:.1} MB/token = {:.2} GB/s ({} threads)",
        bytes as f64 / 1e6,
        tps * bytes as f64 / 1e9,
        rayon::current_num_threads()
    );
    if n_prefill > 0 {
        be.reset();
        let t0 = Instant::now();
        be.eval(&tokens[..n_prefill], Logits::Last(&mut logits))?;
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "prefill: {n_prefill} tokens in {dt:.2} s = {:.2} tok/s",
            n_prefill as f64 / dt
        );
    }
    Ok(())
}
