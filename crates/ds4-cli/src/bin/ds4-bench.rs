//! `ds4-bench` (spec/server.md §6.3): prefill and greedy-generation throughput at context
//! frontiers, one CSV row per frontier, plus `--synthetic q2|q4 [--layers N]`: full-shape random
//! weights generated in GPU memory (no file), reporting achieved GB/s of weight bytes.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ds4_cuda::{CudaBackend, SyntheticQuant};
use ds4_model::{AttnKind, Backend, Config, KvSnapshot, Logits, Model};

/// What the user typed (spec/server.md §6.3 flags).
#[derive(Parser, Debug)]
#[command(
    name = "ds4-bench",
    about = "Prefill and generation throughput at context frontiers"
)]
struct Args {
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    model: String,
    #[arg(long = "prompt-file")]
    prompt_file: Option<String>,
    #[arg(long = "chat-prompt-file")]
    chat_prompt_file: Option<String>,
    #[arg(long = "system", default_value = "You are a helpful assistant.")]
    system: String,
    #[arg(long = "backend", default_value = "cuda")]
    backend: String,
    #[arg(long = "cuda")]
    cuda: bool,
    #[arg(long = "cpu")]
    cpu: bool,
    #[arg(long = "ctx-start", default_value_t = 2048)]
    ctx_start: usize,
    #[arg(long = "ctx-max", default_value_t = 32768)]
    ctx_max: usize,
    #[arg(long = "ctx-alloc")]
    ctx_alloc: Option<usize>,
    #[arg(long = "step-incr", default_value_t = 2048)]
    step_incr: usize,
    #[arg(long = "step-mul", default_value_t = 1.0)]
    step_mul: f64,
    #[arg(short = 'n', long = "gen-tokens", visible_aliases = ["tokens"], default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long = "csv")]
    csv: Option<String>,
    /// Full-shape random weights generated on the GPU: q2 (IQ2_XXS/Q2_K experts) or q4 (Q4_K).
    #[arg(long = "synthetic")]
    synthetic: Option<String>,
    /// Layers of the synthetic model (43 in the real one).
    #[arg(long = "layers", default_value_t = 43)]
    layers: usize,
    /// Synthetic only: the session jumps to `frontier − P` with random cache rows and prefills
    /// the last P tokens for real (a full prefill of long contexts would take minutes).
    #[arg(long = "synthetic-prefill", default_value_t = 512)]
    synthetic_prefill: usize,
    /// Synthetic only: after each frontier, time every kernel of one eager decode step.
    #[arg(long = "profile")]
    profile: bool,
}

/// Resolved settings (STYLE §2.7: typed once).
struct Plan {
    frontiers: Vec<usize>,
    ctx_alloc: usize,
    gen_tokens: usize,
}

fn frontiers(a: &Args) -> Result<Plan> {
    if a.step_mul < 1.0 {
        bail!("--step-mul must be >= 1");
    }
    if a.ctx_start == 0 || a.ctx_start > a.ctx_max {
        bail!("--ctx-start must be in 1..=--ctx-max");
    }
    let ctx_alloc = a.ctx_alloc.unwrap_or(a.ctx_max + a.gen_tokens + 1);
    if ctx_alloc <= a.ctx_max + a.gen_tokens {
        bail!("--ctx-alloc must be > ctx-max + gen-tokens");
    }
    let mut v = vec![a.ctx_start];
    let mut cur = a.ctx_start;
    while cur < a.ctx_max {
        cur = if a.step_mul > 1.0 {
            (cur as f64 * a.step_mul).ceil() as usize
        } else {
            cur + a.step_incr.max(1)
        };
        v.push(cur.min(a.ctx_max));
    }
    v.dedup();
    Ok(Plan {
        frontiers: v,
        ctx_alloc,
        gen_tokens: a.gen_tokens,
    })
}

fn snapshot_bytes(s: &KvSnapshot) -> u64 {
    let f = |v: &Vec<f32>| v.len() as u64 * 4;
    s.layers
        .iter()
        .map(|l| {
            f(&l.raw)
                + f(&l.attn_comp)
                + f(&l.index_comp)
                + [&l.attn_frontier, &l.index_frontier]
                    .into_iter()
                    .flatten()
                    .map(|c| f(&c.kv) + f(&c.score))
                    .sum::<u64>()
        })
        .sum()
}

fn argmax_except(x: &[f32], skip: Option<u32>) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if Some(i as u32) != skip && v > bv {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// Weight bytes one decoded token reads (spec/model.md §6): every dense tensor, one embedding row,
/// and the indexer query path only past `idx_top_k` rows. The caller subtracts unselected experts.
fn weight_bytes_per_token(cfg: &Config, total: usize, ctx: usize) -> f64 {
    let (e, v) = (cfg.n_embd as f64, cfg.n_vocab as f64);
    // Bytes held but not read per token: the embedding table but one row, the unselected experts,
    // the hash tables but one row, and the gated indexer projections.
    let embd = 2.0 * e * v;
    let mut unread = embd - 2.0 * e;
    for il in 0..cfg.n_layer {
        if il < cfg.n_hash_layer {
            unread += 4.0 * cfg.n_expert_used as f64 * v - 4.0 * cfg.n_expert_used as f64;
        }
        if cfg.attn_kinds[il] == AttnKind::Compressed4 && (ctx / 4) <= cfg.idx_top_k {
            unread +=
                2.0 * (cfg.q_lora_rank * cfg.idx_q_dim() + cfg.n_embd * cfg.n_idx_head) as f64;
        }
    }
    total as f64 - unread
}

/// Per-kernel totals of one profiled step, largest first, then the 12 slowest launches.
fn print_profile(p: &[(String, f32)]) {
    let total: f32 = p.iter().map(|x| x.1).sum();
    let mut by: Vec<(String, f32, usize)> = Vec::new();
    for (name, ms) in p {
        let key = name.split(' ').next().unwrap_or("").to_string();
        match by.iter_mut().find(|b| b.0 == key) {
            Some(b) => {
                b.1 += ms;
                b.2 += 1;
            }
            None => by.push((key, *ms, 1)),
        }
    }
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!(
        "profile: {} launches, {:.3} ms of kernel time (eager, events around each launch)",
        p.len(),
        total
    );
    for (k, ms, n) in &by {
        eprintln!(
            "  {k:18} {n:5} launches {ms:8.3} ms  {:5.1}%",
            100.0 * ms / total
        );
    }
    // The same kernel at the same grid is the same matrix shape: totals per shape.
    let mut shapes: Vec<(String, f32, usize)> = Vec::new();
    for (name, ms) in p {
        match shapes.iter_mut().find(|b| &b.0 == name) {
            Some(b) => {
                b.1 += ms;
                b.2 += 1;
            }
            None => shapes.push((name.clone(), *ms, 1)),
        }
    }
    shapes.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, ms, n) in shapes.iter().take(16) {
        eprintln!(
            "  shape {name:40} {n:4}x {:8.4} ms each {ms:8.3} ms total",
            ms / *n as f32
        );
    }
}

/// The session, the token stream, the id never to generate, and (synthetic runs) the bytes of
/// unselected experts and of all weights.
type Setup = (Bench, Vec<u32>, Option<u32>, Option<(f64, usize)>);

/// The session under test: a synthetic CUDA one (which can skip its prefill) or any backend.
enum Bench {
    Synthetic(Box<CudaBackend>),
    Model(Box<dyn Backend>),
}

impl Bench {
    fn backend(&mut self) -> &mut dyn Backend {
        match self {
            Bench::Synthetic(b) => b.as_mut(),
            Bench::Model(b) => b.as_mut(),
        }
    }
}

fn run(a: Args) -> Result<()> {
    let plan = frontiers(&a)?;
    let backend = if a.cpu {
        "cpu"
    } else if a.cuda {
        "cuda"
    } else {
        a.backend.as_str()
    };
    let mut out: Box<dyn Write> = match &a.csv {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {p}"))?),
        None => Box::new(std::io::stdout()),
    };
    let (mut bench, tokens, eos, routed_bytes_per_token): Setup = if let Some(q) = &a.synthetic {
        if backend != "cuda" {
            bail!("--synthetic generates weights in GPU memory: it needs the cuda backend");
        }
        let quant = match q.as_str() {
            "q2" => SyntheticQuant::Q2,
            "q4" => SyntheticQuant::Q4,
            _ => bail!("--synthetic takes q2 or q4"),
        };
        let cfg = Config::real(a.layers);
        let t0 = Instant::now();
        let be = CudaBackend::synthetic(cfg.clone(), quant, plan.ctx_alloc, 0x5eed)?;
        eprintln!(
                "ds4-bench: synthetic {q}, {} layers, {:.2} GiB of weights generated on {} in {:.1} s, KV {:.2} GiB",
                a.layers,
                be.weight_bytes() as f64 / (1u64 << 30) as f64,
                be.device_description(),
                t0.elapsed().as_secs_f64(),
                be.kv_bytes() as f64 / (1u64 << 30) as f64,
            );
        eprintln!("ds4-bench: paths {}", ds4_cuda::knobs::describe());
        // Routed experts: all but n_used of n_expert are not read per token.
        let bpw = match quant {
            SyntheticQuant::Q2 => 2.0 * 2.0625 + 2.625,
            SyntheticQuant::Q4 => 3.0 * 4.5,
        };
        let routed_total =
            bpw / 8.0 * (cfg.n_embd * cfg.n_ff_exp * cfg.n_expert * cfg.n_layer) as f64;
        let unselected = routed_total * (1.0 - cfg.n_expert_used as f64 / cfg.n_expert as f64);
        let weights = be.weight_bytes();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let tokens = (0..a.ctx_max)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % cfg.n_vocab as u64) as u32
            })
            .collect();
        (
            Bench::Synthetic(Box::new(be)),
            tokens,
            None,
            Some((unselected, weights)),
        )
    } else {
        let model =
            Arc::new(Model::open(&a.model).with_context(|| format!("opening {}", a.model))?);
        let tok = ds4_chat::Tokenizer::from_gguf(&model.file).context("reading the tokenizer")?;
        let text = match (&a.prompt_file, &a.chat_prompt_file) {
            (Some(p), None) => std::fs::read(p).with_context(|| format!("reading {p}"))?,
            (None, Some(_)) => bail!("--chat-prompt-file is not supported yet; use --prompt-file"),
            _ => bail!("exactly one of --prompt-file or --chat-prompt-file is required"),
        };
        let tokens = tok.encode_text(&text);
        if tokens.len() < a.ctx_max {
            bail!(
                "the prompt has {} tokens; --ctx-max {} needs at least that many",
                tokens.len(),
                a.ctx_max
            );
        }
        let eos = Some(tok.special().id(ds4_chat::SpecialKind::Eos));
        let be: Box<dyn Backend> = match backend {
            "cuda" => Box::new(CudaBackend::new(model, plan.ctx_alloc)?),
            "cpu" => Box::new(ds4_cpu::CpuBackend::new(model, plan.ctx_alloc)?),
            other => bail!("unknown backend {other} (cuda, cpu)"),
        };
        (Bench::Model(be), tokens, eos, None)
    };
    let n_vocab = bench.backend().config().n_vocab;
    let cfg = bench.backend().config().clone();
    let mut logits = vec![0f32; n_vocab];
    writeln!(
        out,
        "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes"
    )?;
    let mut cur = 0usize;
    for &frontier in &plan.frontiers {
        if let Bench::Synthetic(cb) = &mut bench {
            if frontier - cur > a.synthetic_prefill {
                let to = frontier - a.synthetic_prefill;
                cb.fill_synthetic_context(to, to as u64)?;
                cur = to;
            }
        }
        let be = bench.backend();
        let t0 = Instant::now();
        be.eval(&tokens[cur..frontier], Logits::Last(&mut logits))?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let prefill_n = frontier - cur;
        cur = frontier;
        let snap = be.snapshot()?;
        let kv_bytes = snapshot_bytes(&snap);
        let t1 = Instant::now();
        let mut next = argmax_except(&logits, eos);
        for _ in 0..plan.gen_tokens {
            be.eval(&[next], Logits::Last(&mut logits))?;
            next = argmax_except(&logits, eos);
        }
        let gen_s = t1.elapsed().as_secs_f64();
        if let (true, Bench::Synthetic(cb)) = (a.profile, &mut bench) {
            print_profile(&cb.profile_step(next)?);
        }
        let be = bench.backend();
        be.restore(&snap)?;
        let gen_tps = plan.gen_tokens as f64 / gen_s;
        writeln!(
            out,
            "{},{},{:.2},{},{:.2},{}",
            frontier,
            prefill_n,
            prefill_n as f64 / prefill_s,
            plan.gen_tokens,
            gen_tps,
            kv_bytes
        )?;
        out.flush()?;
        if let Some((unselected, weights)) = routed_bytes_per_token {
            let per_token = weight_bytes_per_token(&cfg, weights, frontier) - unselected;
            eprintln!(
                "ds4-bench: ctx {frontier}: {:.3} GB of weights per token, {:.2} tok/s = {:.0} GB/s of weight bytes",
                per_token / 1e9,
                gen_tps,
                per_token * gen_tps / 1e9
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ds4-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
