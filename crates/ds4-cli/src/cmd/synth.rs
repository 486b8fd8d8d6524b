//! `ds4 synth`: writes a synthetic DS4 model (same tensor names, types and metadata keys as the
//! real file, random weights from a seed). `--preset full` streams the real shape to disk (80.8 GiB
//! for q2 with 43 layers); `--header-only` writes that layout as a sparse file instead.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ds4_model::synth::{write_model, ExpertQuant, Preset, SynthSpec, Vocab};
use ds4_model::Model;

/// What the user typed.
#[derive(Debug, Parser)]
#[command(
    name = "ds4 synth",
    bin_name = "ds4 synth",
    about = "Write a synthetic DeepSeek V4 Flash GGUF (random weights from a seed)"
)]
struct Args {
    /// tiny (seconds, every layer kind), small (bigger), or full (the real shape).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Number of layers (full: real widths with fewer layers, 1..=43).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Routed experts: q2 (IQ2_XXS gate/up + Q2_K down) or q4 (Q4_K).
    #[arg(long, default_value = "q2")]
    experts: String,
    /// Write the header and a sparse file of the full size (weights read as zeros).
    #[arg(long)]
    header_only: bool,
    /// Copy `tokenizer.ggml.tokens` / `.merges` from this GGUF (n_vocab becomes its size).
    #[arg(long, value_name = "GGUF")]
    vocab_from: Option<PathBuf>,
    /// Output file (written to a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
}

/// Resolved, typed options.
struct Options {
    spec: SynthSpec,
    header_only: bool,
    out: PathBuf,
}

impl Args {
    fn resolve(self) -> anyhow::Result<Options> {
        let preset: Preset = self.preset.parse()?;
        let experts: ExpertQuant = self.experts.parse()?;
        let vocab = match &self.vocab_from {
            Some(path) => Some(
                read_vocab(path)
                    .with_context(|| format!("reading the vocabulary of {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Options {
            spec: SynthSpec {
                preset,
                layers: self.layers,
                seed: self.seed,
                experts,
                vocab,
            },
            header_only: self.header_only,
            out: self.out,
        })
    }
}

fn read_vocab(path: &std::path::Path) -> anyhow::Result<Vocab> {
    let file = ds4_gguf::GgufFile::open(path)?;
    let strings = |key: &str| -> anyhow::Result<Vec<String>> {
        let v = file.require(key)?;
        let (_, items) = v
            .as_array()
            .with_context(|| format!("{key} is not an array"))?;
        items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{key} holds a non-string"))
            })
            .collect()
    };
    Ok(Vocab {
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
    })
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
    let opts = args.resolve()?;
    let plan = opts.spec.plan()?;
    let total = plan.data_bytes()?;
    let t0 = Instant::now();
    let big = total > (1 << 30) && !opts.header_only;
    let mut last = Instant::now();
    let mut progress = |done: u64, total: u64| {
        // One rewritten line for big files, at most a few times a second.
        if big && (last.elapsed().as_millis() >= 500 || done == total) {
            last = Instant::now();
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\rds4 synth: {:.2} / {:.2} GiB ({:.0}%), {:.2} GiB/s   ",
                done as f64 / GIB,
                total as f64 / GIB,
                100.0 * done as f64 / total.max(1) as f64,
                done as f64 / GIB / secs
            );
            let _ = std::io::stderr().flush();
        }
    };
    write_model(&opts.spec, &opts.out, opts.header_only, &mut progress)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    if big {
        eprintln!();
    }
    // Check what was written with the same loader every other command uses.
    let model =
        Model::open(&opts.out).with_context(|| format!("validating {}", opts.out.display()))?;
    let c = &model.config;
    eprintln!(
        "ds4 synth: wrote {} ({} layers, n_embd {}, n_vocab {}, {:.3} GiB{}) in {:.1}s; validated ({:?})",
        opts.out.display(),
        c.n_layer,
        c.n_embd,
        c.n_vocab,
        model.file.bytes().len() as f64 / GIB,
        if opts.header_only { ", header only, sparse" } else { "" },
        t0.elapsed().as_secs_f64(),
        model.check_mode(),
    );
    Ok(ExitCode::SUCCESS)
}

const GIB: f64 = (1u64 << 30) as f64;
