//! `ds4-server` binary: flags (spec/server.md §6.2), engine load, worker start, listen.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ds4_chat::Tokenizer;
use ds4_engine::{BackendKind, Engine, EngineOptions, ModelSource, Session};
use ds4_kvcache::{CacheOptions, DiskCache, ModelIdentity};
use ds4_server::disk::{DiskKv, DiskPolicy};
use ds4_server::trace::Trace;
use ds4_server::ServerConfig;

/// What the user typed (low args); [`Args::resolve`] checks it once.
#[derive(Parser, Debug)]
#[command(
    name = "ds4-server",
    about = "OpenAI/Anthropic-compatible server for DeepSeek V4 Flash"
)]
struct Args {
    /// Model file.
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    model: PathBuf,
    /// Use the tiny built-in demo model (generated once into the cache directory).
    #[arg(long)]
    demo: bool,
    /// Context size (tokens), allocated once at startup.
    #[arg(short = 'c', long = "ctx", default_value_t = 32768)]
    ctx: usize,
    /// Default max_tokens when a request omits it.
    #[arg(short = 'n', long = "tokens", default_value_t = 393216)]
    tokens: usize,
    /// Worker threads for the CPU backend (rayon); default: all cores.
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// `chdir` before loading.
    #[arg(long)]
    chdir: Option<PathBuf>,
    /// Backend: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Shorthand for `--backend cpu`.
    #[arg(long)]
    cpu: bool,
    /// Shorthand for `--backend cuda`.
    #[arg(long, conflicts_with = "cpu")]
    cuda: bool,
    /// Bind address (IPv4 literal or `localhost`).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Add CORS headers to every response.
    #[arg(long)]
    cors: bool,
    /// Trace requests, cache decisions and generations into FILE (truncated).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` or `x-api-key: KEY`.
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long = "max-body-bytes", default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Prefill chunk in tokens.
    #[arg(long = "prefill-chunk", default_value_t = 2048)]
    prefill_chunk: usize,
    /// Disable the exact DSML replay memory (tool calls are re-rendered canonically).
    #[arg(long = "disable-exact-dsml-tool-replay")]
    disable_exact_replay: bool,
    #[arg(long = "tool-memory-max-ids", default_value_t = 100_000)]
    tool_memory_max_ids: usize,
    /// Enable the disk KV cache in DIR (created, mode 0700): sessions survive restarts.
    #[arg(long = "kv-disk-dir")]
    kv_disk_dir: Option<PathBuf>,
    /// Byte budget (MiB) for the disk KV cache's files.
    #[arg(long = "kv-disk-space-mb", default_value_t = 4096)]
    kv_disk_space_mb: u64,
    /// Never save or load checkpoints shorter than N tokens.
    #[arg(long = "kv-cache-min-tokens", default_value_t = 512)]
    kv_cache_min_tokens: usize,
    /// Cold saves only for prompts of [min, N] tokens; 0 disables cold saves.
    #[arg(long = "kv-cache-cold-max-tokens", default_value_t = 30000)]
    kv_cache_cold_max_tokens: usize,
    /// Tokens trimmed from a cold prompt's tail before saving.
    #[arg(long = "kv-cache-boundary-trim-tokens", default_value_t = 32)]
    kv_cache_boundary_trim_tokens: usize,
    /// Cold save frontiers round down to a multiple of N tokens; 0 disables.
    #[arg(long = "kv-cache-boundary-align-tokens", default_value_t = 2048)]
    kv_cache_boundary_align_tokens: usize,
    /// Spacing (tokens) of continued saves during long prefills and decodes; 0 disables.
    #[arg(long = "kv-cache-continued-interval-tokens", default_value_t = 10000)]
    kv_cache_continued_interval_tokens: usize,
    /// Only load checkpoints written with the same routed-expert quant bits.
    #[arg(long = "kv-cache-reject-different-quant")]
    kv_cache_reject_different_quant: bool,
    /// TEST ONLY: honour the `x-ds4-test-output` request header, whose text replaces sampling for
    /// that request. Lets SDK tests steer the output through the real DSML path. Never enable in
    /// production: any client could then script the model's answer.
    #[arg(long = "test-forced-output", hide = true)]
    test_forced_output: bool,
}

struct Resolved {
    cfg: ServerConfig,
    host: Ipv4Addr,
    port: u16,
    source: ModelSource,
    backend: BackendKind,
    threads: Option<usize>,
    trace: Option<PathBuf>,
    disk: Option<DiskSettings>,
}

/// `--kv-disk-dir` and the `--kv-cache-*` knobs, checked.
struct DiskSettings {
    dir: PathBuf,
    budget_bytes: u64,
    reject_different_quant: bool,
    policy: DiskPolicy,
}

impl Args {
    fn resolve(self) -> Result<Resolved> {
        if let Some(dir) = &self.chdir {
            std::env::set_current_dir(dir).with_context(|| format!("chdir {}", dir.display()))?;
        }
        let host: Ipv4Addr = if self.host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            self.host
                .parse()
                .with_context(|| format!("--host {}: not an IPv4 address", self.host))?
        };
        let backend = if self.cuda {
            BackendKind::Cuda
        } else if self.cpu {
            BackendKind::Cpu
        } else {
            match BackendKind::from_name(&self.backend) {
                Some(b) => b,
                None => bail!("--backend {}: expected `cpu` or `cuda`", self.backend),
            }
        };
        if self.ctx < 2 {
            bail!("--ctx {}: must be at least 2", self.ctx);
        }
        if self.prefill_chunk == 0 {
            bail!("--prefill-chunk must be at least 1");
        }
        let policy = DiskPolicy {
            min_tokens: self.kv_cache_min_tokens,
            cold_max_tokens: self.kv_cache_cold_max_tokens,
            boundary_trim_tokens: self.kv_cache_boundary_trim_tokens,
            boundary_align_tokens: self.kv_cache_boundary_align_tokens,
            continued_interval_tokens: self.kv_cache_continued_interval_tokens,
        };
        if policy.cold_max_tokens != 0 && policy.cold_max_tokens < policy.min_tokens {
            // spec §5.5: exit 2, like clap's own usage errors.
            eprintln!(
                "ds4-server: --kv-cache-cold-max-tokens {} must be 0 or at least --kv-cache-min-tokens {}",
                policy.cold_max_tokens, policy.min_tokens
            );
            std::process::exit(2);
        }
        let disk = self.kv_disk_dir.map(|dir| DiskSettings {
            dir,
            budget_bytes: self.kv_disk_space_mb.saturating_mul(1 << 20),
            reject_different_quant: self.kv_cache_reject_different_quant,
            policy,
        });
        let source = if self.demo {
            let (tokens, merges) = ds4_chat::builtin_vocab();
            ModelSource::Demo {
                cache_dir: demo_cache_dir(),
                tokens,
                merges,
            }
        } else {
            ModelSource::File(self.model)
        };
        Ok(Resolved {
            cfg: ServerConfig {
                ctx: self.ctx,
                default_max_tokens: self.tokens,
                cors: self.cors,
                api_key: self.api_key.filter(|k| !k.is_empty()),
                max_body_bytes: self.max_body_bytes,
                prefill_chunk: self.prefill_chunk,
                exact_replay: !self.disable_exact_replay,
                tool_memory_max_ids: self.tool_memory_max_ids,
                test_forced_output: self.test_forced_output,
            },
            backend,
            host,
            port: self.port,
            source,
            threads: self.threads,
            trace: self.trace,
            disk,
        })
    }
}

/// `$DS4_CACHE_DIR`, else `$XDG_CACHE_HOME/ds4`, else `~/.cache/ds4`, else the temp dir.
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("ds4-server: shutdown requested");
}

fn main() -> Result<()> {
    let r = Args::parse().resolve()?;
    if let Some(n) = r.threads {
        rayon_threads(n);
    }
    let engine = Engine::open(&EngineOptions {
        model: r.source.clone(),
        backend: r.backend,
    })
    .context("loading the model")?;
    let tokenizer = match engine.model() {
        Some(m) => Tokenizer::from_gguf(&m.file).context("reading the tokenizer from the model")?,
        None => bail!("engine has no model file to read the tokenizer from"),
    };
    // One tokenizer for the life of the process, shared by every handler and the worker.
    let tokenizer: &'static Tokenizer = Box::leak(Box::new(tokenizer));
    let session = engine
        .new_session(r.cfg.ctx)
        .context("creating the session")?;
    let disk = match (&r.disk, engine.model()) {
        (Some(d), Some(m)) => Some(open_disk(d, &m.file, &session)?),
        (Some(_), None) => bail!("--kv-disk-dir needs a model file"),
        (None, _) => None,
    };
    let trace = match &r.trace {
        Some(p) => Trace::open(p).with_context(|| format!("opening trace file {}", p.display()))?,
        None => Trace::off(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async move {
        let state = ds4_server::start_with_disk(r.cfg, session, tokenizer, trace, disk)
            .context("starting the worker")?;
        let listener = tokio::net::TcpListener::bind((r.host, r.port))
            .await
            .with_context(|| format!("failed to listen on {}:{}", r.host, r.port))?;
        let addr = listener.local_addr().context("local address")?;
        eprintln!("ds4-server: listening on http://{addr}");
        let served = ds4_server::serve(listener, state.clone(), shutdown_signal())
            .await
            .context("serving");
        // The worker saves the live session to disk on its way out (spec §5.6 "shutdown").
        tokio::task::spawn_blocking(move || state.join_worker())
            .await
            .context("joining the worker")?;
        served
    })
}

/// Opens the disk KV cache for this model and session (spec §6.2 startup order: after the session,
/// before the worker). The store runs its eviction pass here.
fn open_disk(d: &DiskSettings, file: &ds4_gguf::GgufFile, session: &Session) -> Result<DiskKv> {
    let model = ds4_kvcache::model_identity(file).unwrap_or(ModelIdentity {
        // Small test/demo models have no DS4 routed experts; the fingerprint still keeps their
        // checkpoints apart from every other model's.
        quant_bits: 2,
        fingerprint: ds4_kvcache::model_fingerprint(file),
    });
    let ctx = session.ctx();
    let opts = CacheOptions {
        dir: d.dir.clone(),
        budget_bytes: d.budget_bytes,
        min_tokens: d.policy.min_tokens,
        reject_different_quant: d.reject_different_quant,
        consume_above_tokens: d.policy.cold_max_tokens.max(d.policy.min_tokens),
    };
    // spec/model.md §4.3 word 3: the prefill chunk cap is 2048 when ctx > 2048, else ctx.
    let prefill_cap = ctx.min(2048);
    let cache = DiskCache::open(
        opts,
        session.backend().config().clone(),
        ctx,
        prefill_cap,
        model,
    )
    .with_context(|| format!("opening --kv-disk-dir {}", d.dir.display()))?;
    eprintln!(
        "ds4-server: kv disk cache {} ({} MiB, min {} tokens, cold max {}, {} files)",
        d.dir.display(),
        d.budget_bytes >> 20,
        d.policy.min_tokens,
        d.policy.cold_max_tokens,
        cache.entries().len()
    );
    Ok(DiskKv {
        cache,
        policy: d.policy,
    })
}

/// Sets the global rayon pool size (the CPU backend's parallelism).
fn rayon_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}
