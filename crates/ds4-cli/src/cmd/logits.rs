//! `ds4 logits`: the test interface of the forward pass. Reads little-endian i32 token ids and
//! writes, for every position i, the n_vocab f32 logits after feeding tokens[0..=i] (row-major,
//! little-endian), either one token at a time or as batched prefill chunks (`--prefill`);
//! `--last N` writes only the last N positions (the tokens before them go in as one prefill).
//! `--dump-layers` also writes per-layer records in the golden `record_layout`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use ds4_cpu::CpuBackend;
use ds4_model::{Backend, LayerProbe, Logits, Model};

/// What the user typed.
#[derive(Debug, Parser)]
#[command(
    name = "ds4 logits",
    about = "Write the logits of every position of a token sequence (forward-pass test interface)"
)]
struct Args {
    /// Model GGUF.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Token ids, little-endian i32.
    #[arg(long)]
    tokens: PathBuf,
    /// Output: [n_tokens][n_vocab] little-endian f32.
    #[arg(long)]
    out: PathBuf,
    /// Feed the whole sequence as batched prefill chunks instead of one token at a time.
    #[arg(long)]
    prefill: bool,
    /// ds4's CPU arithmetic (int8 activations, its f32 operation order; spec/model.md §3.12),
    /// bit-exact with the golden `*_ds4cpu_strict` files. Default: the float model semantics.
    #[arg(long)]
    exact: bool,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Context size (default: the number of tokens).
    #[arg(long)]
    ctx: Option<usize>,
    /// Prefill chunk size (default 2048).
    #[arg(long)]
    chunk: Option<usize>,
    /// Write only the logits of the last N positions ([N][n_vocab]): the tokens before them go in
    /// as one batched prefill, the last N one at a time (or batched with --prefill). For checks
    /// at long positions without a logits file of every position.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Positions to record, e.g. `0-7,67,127-129`.
    #[arg(long, value_name = "POSITIONS", requires = "layers_out")]
    dump_layers: Option<String>,
    /// Where the per-layer records go (one record per listed position, ascending).
    #[arg(long, value_name = "F", requires = "dump_layers")]
    layers_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BackendKind {
    Cpu,
    Cuda,
}

/// Resolved, typed options.
struct Options {
    model: PathBuf,
    tokens: Vec<u32>,
    out: PathBuf,
    prefill: bool,
    exact: bool,
    backend: BackendKind,
    ctx: usize,
    chunk: Option<usize>,
    /// Positions whose logits are written: the last `keep` (all by default).
    keep: usize,
    dump: Option<(Vec<usize>, PathBuf)>,
}

/// Parses `0-7,67,127-129` into sorted, unique positions.
fn parse_positions(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .with_context(|| format!("bad position {t:?} in {s:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("empty range {part:?}");
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        bail!("no positions in {s:?}");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<u32>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() % 4 != 0 {
        bail!(
            "{}: {} bytes is not a whole number of i32 ids",
            path.display(),
            b.len()
        );
    }
    b.chunks_exact(4)
        .enumerate()
        .map(|(i, c)| {
            let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            u32::try_from(v)
                .map_err(|_| anyhow::anyhow!("{}: token {i} is negative ({v})", path.display()))
        })
        .collect()
}

impl Args {
    fn resolve(self) -> anyhow::Result<Options> {
        let backend = match self.backend.as_str() {
            "cpu" => BackendKind::Cpu,
            "cuda" => BackendKind::Cuda,
            other => bail!("unknown backend {other:?} (expected cpu or cuda)"),
        };
        let tokens = read_tokens(&self.tokens)?;
        if tokens.is_empty() {
            bail!("{}: no tokens", self.tokens.display());
        }
        let ctx = self.ctx.unwrap_or(tokens.len());
        if ctx < tokens.len() {
            bail!("--ctx {ctx} is smaller than the {} tokens", tokens.len());
        }
        if self.chunk == Some(0) {
            bail!("--chunk must be at least 1");
        }
        let keep = match self.last {
            None => tokens.len(),
            Some(0) => bail!("--last must be at least 1"),
            Some(n) if n > tokens.len() => {
                bail!("--last {n} is more than the {} tokens", tokens.len())
            }
            Some(n) => n,
        };
        let dump = match (self.dump_layers, self.layers_out) {
            (Some(p), Some(f)) => {
                let pos = parse_positions(&p)?;
                if let Some(&last) = pos.last() {
                    if last >= tokens.len() {
                        bail!(
                            "--dump-layers position {last} is past the last token ({})",
                            tokens.len() - 1
                        );
                    }
                }
                Some((pos, f))
            }
            _ => None,
        };
        Ok(Options {
            model: self.model,
            tokens,
            out: self.out,
            prefill: self.prefill,
            exact: self.exact,
            backend,
            ctx,
            chunk: self.chunk,
            keep,
            dump,
        })
    }
}

fn write_f32s(path: &Path, v: &[f32]) -> anyhow::Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn run(o: Options) -> anyhow::Result<()> {
    let model = Arc::new(
        Model::open(&o.model).with_context(|| format!("loading model {}", o.model.display()))?,
    );
    let n_vocab = model.config.n_vocab;
    let mut be: Box<dyn Backend> = match o.backend {
        BackendKind::Cpu => {
            let mut cpu = CpuBackend::new(model, o.ctx).context("creating the CPU backend")?;
            cpu.set_exact(o.exact);
            if let Some(c) = o.chunk {
                cpu.set_prefill_chunk(c);
            }
            Box::new(cpu)
        }
        BackendKind::Cuda => {
            if o.exact {
                bail!("--exact is the CPU reference's int8 mode; the CUDA backend has f32 semantics only");
            }
            Box::new(ds4_cuda::CudaBackend::new(model, o.ctx).context("creating the CUDA backend")?)
        }
    };
    if let Some((pos, _)) = &o.dump {
        be.set_probe(Some(LayerProbe {
            positions: pos.clone(),
            records: Vec::new(),
        }))?;
    }
    let head = o.tokens.len() - o.keep;
    if head > 0 {
        be.eval(&o.tokens[..head], Logits::None)?;
    }
    let tail = &o.tokens[head..];
    let mut logits = vec![0.0f32; tail.len() * n_vocab];
    if o.prefill {
        be.eval(tail, Logits::All(&mut logits))?;
    } else {
        for (i, &t) in tail.iter().enumerate() {
            be.eval(
                &[t],
                Logits::Last(&mut logits[i * n_vocab..(i + 1) * n_vocab]),
            )?;
        }
    }
    write_f32s(&o.out, &logits)?;
    if let Some((_, path)) = &o.dump {
        let mut probe = be
            .take_probe()
            .context("the backend returned no layer records")?;
        probe.records.sort_by_key(|(p, _)| *p);
        let flat: Vec<f32> = probe.records.into_iter().flat_map(|(_, r)| r).collect();
        write_f32s(path, &flat)?;
    }
    Ok(())
}

pub fn main(args: &[String]) -> anyhow::Result<ExitCode> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    run(args.resolve()?)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_positions;

    #[test]
    fn positions_parse_lists_and_ranges() {
        assert_eq!(parse_positions("0-3,7, 5,2").unwrap(), [0, 1, 2, 3, 5, 7]);
        assert!(parse_positions("3-1").is_err());
        assert!(parse_positions("x").is_err());
        assert!(parse_positions("").is_err());
    }
}
