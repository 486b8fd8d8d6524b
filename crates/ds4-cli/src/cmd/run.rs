//! `ds4` without a subcommand word (spec/server.md §6.1): a one-shot answer to `-p` /
//! `--prompt-file`, the interactive chat otherwise, or one of the tool actions (`--dump-tokens`,
//! `--dump-logprobs`, `--perplexity-file`, `--inspect`).
//!
//! `args` resolves the flags once; `generate` runs one answer (prefill, sampling, printing,
//! timing); `repl` is the `ds4>` loop; `dump` holds the non-chat actions. Without a model file
//! and without `-m`, the run explains how to get one instead of failing on a missing file.

mod args;
mod dump;
mod generate;
mod repl;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Parser;
use ds4_chat::{ThinkMode, Tokenizer, THINK_MAX_PREFIX};
use ds4_engine::sampler::Sampler;
use ds4_engine::{Engine, EngineOptions, ModelSource};

pub use args::{Action, Args, ModelChoice, PromptSource, RunOptions};
pub use dump::{fmt_g9, json_token_text};
use generate::{Generator, Printer, PREFILL_CHUNK};

pub fn main(raw: &[String]) -> Result<ExitCode> {
    let parsed = match Args::try_parse_from(args::normalize(raw)) {
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
    let opts = match parsed.resolve() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ds4: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &opts.ignored {
        eprintln!("ds4: warning: ignoring {w}");
    }
    if let Some(n) = opts.threads {
        // The CPU backend runs on rayon's global pool, which reads this when it starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }

    if opts.action == Action::DumpTokens {
        return dump_tokens_only(&opts);
    }
    if let ModelChoice::File {
        path,
        explicit: false,
    } = &opts.model
    {
        if !path.exists() {
            eprintln!("{}", missing_model_help(path));
            return Ok(ExitCode::FAILURE);
        }
    }

    let owned_tok;
    let (engine, tok, source_name): (Engine, &Tokenizer, String) = match &opts.model {
        ModelChoice::Demo => {
            let (tokens, merges) = ds4_chat::builtin_vocab();
            let source = ModelSource::Demo {
                cache_dir: demo_cache_dir(),
                tokens,
                merges,
            };
            let engine = Engine::open(&EngineOptions {
                model: source,
                backend: opts.backend,
            })
            .context("opening the demo model")?;
            (
                engine,
                Tokenizer::builtin(),
                "built-in demo model".to_string(),
            )
        }
        ModelChoice::File { path, .. } => {
            let source = ModelSource::File(path.clone());
            let engine = Engine::open(&EngineOptions {
                model: source,
                backend: opts.backend,
            })
            .with_context(|| format!("loading model {}", path.display()))?;
            let model = engine.model().context("the engine has no model file")?;
            owned_tok = Tokenizer::from_gguf(&model.file)
                .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
            (engine, &owned_tok, path.display().to_string())
        }
    };
    if opts.action == Action::Inspect {
        println!("{}", dump::inspect(&engine, &source_name, opts.ctx));
        return Ok(ExitCode::SUCCESS);
    }
    print_context_line(&engine, opts.ctx);
    if opts.warm_weights {
        warm_weights(&engine);
    }
    let mut session = engine
        .new_session(opts.ctx)
        .context("creating the session")?;

    match &opts.action {
        Action::Perplexity(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            println!(
                "{}",
                dump::perplexity(&mut session, tok, &text, opts.max_tokens)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::DumpLogprobs { file, top_k } => {
            let PromptSource::Text(text) = &opts.prompt else {
                unreachable!("resolve() requires a prompt for --dump-logprobs")
            };
            let prompt = prompt_tokens(tok, opts.system.as_deref(), text, opts.effective_think());
            let n = dump::dump_logprobs(&mut session, tok, &prompt, opts.max_tokens, *top_k, file)?;
            eprintln!("ds4: wrote {n} steps to {}", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Action::Chat | Action::Inspect | Action::DumpTokens => {
            if let Some(w) = args::think_max_warning(opts.think, opts.ctx) {
                eprintln!("{w}");
            }
            let gen = Generator {
                session,
                sampler: Sampler::new(opts.sampling, opts.seed),
                tok,
            };
            match &opts.prompt {
                PromptSource::Interactive => repl::run(&engine, tok, &opts, gen),
                PromptSource::Text(text) => one_shot(gen, &opts, text),
            }
        }
    }
}

/// The §6.1 one-shot run: one answer on stdout, the speed line on stderr. Ctrl+C is not trapped.
fn one_shot(mut gen: Generator, opts: &RunOptions, text: &str) -> Result<ExitCode> {
    let tok = gen.tok;
    let prompt = prompt_tokens(tok, opts.system.as_deref(), text, opts.effective_think());
    // A pre-rendered prompt decides thinking itself: it is on when the text ends in `<think>`.
    let thinking = prompt.last() == Some(&tok.special().think);
    let mut printer = Printer::new(tok);
    let never = AtomicBool::new(false);
    let outcome = gen.run_turn(&mut printer, &prompt, opts.max_tokens, thinking, &never)?;
    eprintln!(
        "ds4: {} prompt tokens, {} generated tokens{}",
        prompt.len(),
        outcome.generated.len(),
        if outcome.hit_eos { " (EOS)" } else { "" }
    );
    eprintln!("{}", outcome.speed_line());
    Ok(ExitCode::SUCCESS)
}

/// spec/server.md §2.9, CLI rendering at token level: BOS, [Think Max prefix], system (plain BPE),
/// USER, prompt (plain BPE: specials typed in `-p` stay text), ASSISTANT, `<think>`|`</think>`.
/// A prompt that itself starts with the BOS spelling is a fully rendered prompt: it is tokenized
/// with special recognition and nothing is added.
pub fn prompt_tokens(
    tok: &Tokenizer,
    system: Option<&str>,
    text: &str,
    think: ThinkMode,
) -> Vec<u32> {
    if text.starts_with(ds4_chat::SpecialKind::Bos.text()) {
        return tok.encode_rendered(text.as_bytes());
    }
    let sp = tok.special();
    let mut ids = vec![sp.bos];
    if think == ThinkMode::Max {
        ids.extend(tok.encode_text(THINK_MAX_PREFIX.as_bytes()));
    }
    if let Some(s) = system {
        ids.extend(tok.encode_text(s.as_bytes()));
    }
    ids.push(sp.user);
    ids.extend(tok.encode_text(text.as_bytes()));
    ids.push(sp.assistant);
    ids.push(if think.is_enabled() {
        sp.think
    } else {
        sp.think_end
    });
    ids
}

/// `--dump-tokens` (spec/server.md §1.8): the GGUF metadata only, never the weights.
fn dump_tokens_only(opts: &RunOptions) -> Result<ExitCode> {
    let PromptSource::Text(text) = &opts.prompt else {
        unreachable!("resolve() requires a prompt for --dump-tokens")
    };
    let owned;
    let tok = match &opts.model {
        ModelChoice::Demo => Tokenizer::builtin(),
        ModelChoice::File { path, explicit } => {
            if !*explicit && !path.exists() {
                eprintln!("{}", missing_model_help(path));
                return Ok(ExitCode::FAILURE);
            }
            let gguf = ds4_gguf::GgufFile::open(path)
                .with_context(|| format!("reading {}", path.display()))?;
            owned = Tokenizer::from_gguf(&gguf)
                .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
            &owned
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    dump::dump_tokens(tok, text, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn missing_model_help(path: &std::path::Path) -> String {
    format!(
        "ds4: no model: {} not found (and no -m FILE given).\n\
         \n\
         Download the model (about 81 GB; links ./ds4flash.gguf to it):\n    \
         ds4 download q2-imatrix\n\
         or, with 256 GB of RAM or more, the 4-bit experts (153 GB):\n    \
         ds4 download q4-imatrix\n\
         \n\
         To try ds4 now, use the tiny built-in demo model (real tokenizer, random weights):\n    \
         ds4 --demo -p \"hello\" -n 16",
        path.display()
    )
}

/// spec/server.md §6: every model-loading program first prints its context memory estimate.
fn print_context_line(engine: &Engine, ctx: usize) {
    let cfg = engine.config();
    let est = ds4_model::kv_memory_estimate(cfg, ctx, PREFILL_CHUNK);
    let comp_rows = if cfg.attn_kinds.iter().any(|k| k.ratio() > 0) {
        ctx / 4 + 2
    } else {
        0
    };
    eprintln!(
        "ds4: context buffers {:.1} MiB (ctx={ctx}, backend={}, prefill_chunk={PREFILL_CHUNK}, raw_kv_rows={}, compressed_kv_rows={comp_rows})",
        est.total_bytes as f64 / (1024.0 * 1024.0),
        engine.backend_name(),
        ds4_model::memory::raw_cap(cfg, ctx, PREFILL_CHUNK),
    );
}

/// Where `--demo` keeps its generated model: `$DS4_CACHE_DIR`, else `$XDG_CACHE_HOME/ds4`, else
/// `~/.cache/ds4`, else the temp dir (the same rule as `ds4-server --demo`).
fn demo_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DS4_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ds4");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("ds4");
    }
    std::env::temp_dir().join("ds4")
}

/// `--warm-weights`: read one byte per page of the mapped model so the first prompt does not pay
/// for page faults (spec/server.md §6.1).
fn warm_weights(engine: &Engine) {
    let Some(model) = engine.model() else { return };
    let bytes = model.file.bytes();
    let t = std::time::Instant::now();
    let mut acc = 0u8;
    for page in bytes.chunks(4096) {
        acc ^= page[0];
    }
    // The xor keeps the loop from being optimized away.
    std::hint::black_box(acc);
    eprintln!(
        "ds4: warmed {:.1} MiB of weights in {:.2} s",
        bytes.len() as f64 / (1024.0 * 1024.0),
        t.elapsed().as_secs_f64()
    );
}
