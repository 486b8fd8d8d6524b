//! Flags of the default `ds4` mode (spec/server.md §6.1): [`Args`] is what the user typed,
//! [`RunOptions`] the resolved, validated settings (STYLE §2.7). Nothing after `resolve()` is a
//! raw string or an unchecked number.

use std::path::PathBuf;

use clap::Parser;
use ds4_chat::{ThinkMode, COMPLETION_SYSTEM_TEXT, THINK_MAX_MIN_CTX};
use ds4_engine::sampler::{seed_from_entropy, SamplingParams};
use ds4_engine::BackendKind;

/// Default model path, relative to the working directory (spec/server.md §6).
pub const DEFAULT_MODEL: &str = "ds4flash.gguf";

#[derive(Parser, Debug)]
#[command(
    name = "ds4",
    about = "Run DeepSeek V4 Flash: one-shot with -p/--prompt-file, else an interactive chat",
    after_help = "Subcommands: ds4 download TARGET | inspect FILE | synth | logits\n\
                  No model yet? `ds4 download q2-imatrix`, or try `ds4 --demo -p \"hello\"`."
)]
pub struct Args {
    /// One-shot prompt
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    pub prompt: Option<String>,
    /// One-shot prompt read from a file (the whole file)
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// System text (also `-sys`); "" disables it
    #[arg(long = "system", value_name = "TEXT", default_value = COMPLETION_SYSTEM_TEXT)]
    pub system: String,
    /// Model GGUF file [default: ds4flash.gguf]
    #[arg(short = 'm', long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Use the tiny built-in demo model (real vocabulary, random weights)
    #[arg(long, conflicts_with = "model")]
    pub demo: bool,
    /// Optional MTP draft GGUF (speculative decoding)
    #[arg(long, value_name = "FILE")]
    pub mtp: Option<PathBuf>,
    /// Max draft tokens (clamped to 16)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub mtp_draft: u32,
    /// Confidence gate of the fast N=2 verifier (0..1000)
    #[arg(long, value_name = "F", default_value_t = 3.0)]
    pub mtp_margin: f32,
    /// Context size in tokens
    #[arg(short = 'c', long, value_name = "N", default_value_t = 32768)]
    pub ctx: usize,
    /// Max generated tokens per answer (also clamped to the free context)
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50000)]
    pub tokens: usize,
    /// Temperature, 0..100; 0 = greedy
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub temp: f32,
    /// Nucleus mass, 0..1
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub top_p: f32,
    /// Minimum probability relative to the best token, 0..1
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub min_p: f32,
    /// RNG seed (> 0) [default: time-based]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Thinking mode (default)
    #[arg(long, overrides_with_all = ["think", "think_max", "nothink"])]
    pub think: bool,
    /// Thinking with the Think Max prefix (needs --ctx >= 393216)
    #[arg(long, overrides_with_all = ["think", "think_max", "nothink"])]
    pub think_max: bool,
    /// No thinking
    #[arg(long, overrides_with_all = ["think", "think_max", "nothink"])]
    pub nothink: bool,
    /// Use the Metal backend
    #[arg(long)]
    pub metal: bool,
    /// Use the CUDA backend
    #[arg(long)]
    pub cuda: bool,
    /// Use the CPU backend
    #[arg(long)]
    pub cpu: bool,
    /// Backend: metal, cuda or cpu
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// CPU worker threads [default: all cores]
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Exact kernels, strict MTP verification
    #[arg(long)]
    pub quality: bool,
    /// Touch the mapped weights before generating
    #[arg(long)]
    pub warm_weights: bool,
    /// Per-layer f32 direction vectors
    #[arg(long, value_name = "FILE")]
    pub dir_steering_file: Option<PathBuf>,
    /// FFN steering strength, -100..100
    #[arg(long, value_name = "F")]
    pub dir_steering_ffn: Option<f32>,
    /// Attention steering strength, -100..100
    #[arg(long, value_name = "F")]
    pub dir_steering_attn: Option<f32>,
    /// Load the model, print a summary and exit
    #[arg(long)]
    pub inspect: bool,
    /// Print the token ids of the prompt (specials recognised) and exit; loads no weights
    #[arg(long)]
    pub dump_tokens: bool,
    /// Greedy continuation with the top-k logprobs of every step, as JSON, into FILE
    #[arg(long, value_name = "FILE")]
    pub dump_logprobs: Option<PathBuf>,
    /// How many logprobs per step for --dump-logprobs (capped at 128)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub logprobs_top_k: usize,
    /// Teacher-forced perplexity of a raw text file
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "prompt_file"])]
    pub perplexity_file: Option<PathBuf>,
    /// Rejected: the HTTP server is `ds4-server`
    #[arg(long, hide = true)]
    pub server: bool,
}

/// A usage error: printed as `ds4: MESSAGE`, exit status 2 (spec/server.md §6).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Where the prompt of a one-shot run comes from, already read.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// No prompt: interactive mode.
    Interactive,
    /// `-p` text or the contents of `--prompt-file`.
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// The built-in demo model.
    Demo,
    /// A GGUF path; `explicit` is false for the `ds4flash.gguf` default.
    File { path: PathBuf, explicit: bool },
}

/// What the run does after loading.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Chat,
    DumpTokens,
    DumpLogprobs { file: PathBuf, top_k: usize },
    Inspect,
    Perplexity(PathBuf),
}

/// Resolved settings of one `ds4` run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub prompt: PromptSource,
    pub system: Option<String>,
    pub model: ModelChoice,
    pub ctx: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// What the user asked for; [`RunOptions::effective_think`] applies the 393216 rule.
    pub think: ThinkMode,
    pub threads: Option<usize>,
    /// Which backend generates (`--cpu`, `--cuda`, `--backend NAME`).
    pub backend: BackendKind,
    /// Touch every page of the mapped model before the first prompt.
    pub warm_weights: bool,
    pub action: Action,
    /// Flags accepted for compatibility that change nothing in this build (warned about once).
    pub ignored: Vec<&'static str>,
}

impl RunOptions {
    /// spec/server.md §2.1: Think Max only at ctx >= 393216, else normal thinking.
    pub fn effective_think(&self) -> ThinkMode {
        self.think.effective(self.ctx)
    }
}

/// `-sys` is a single-dash long flag in the original; clap only knows `--system`.
pub fn normalize(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| match a.as_str() {
            "-sys" => "--system".to_string(),
            _ => match a.strip_prefix("-sys=") {
                Some(v) => format!("--system={v}"),
                None => a.clone(),
            },
        })
        .collect()
}

fn check_range(name: &str, v: f32, lo: f32, hi: f32) -> Result<(), UsageError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid value for {name}: {v} (expected {lo}..{hi})"
        )))
    }
}

impl Args {
    /// Checks every value once and turns the flags into [`RunOptions`]. Reads `--prompt-file`.
    pub fn resolve(self) -> Result<RunOptions, UsageError> {
        if self.server {
            return Err(usage("use ds4-server for the HTTP server"));
        }
        let prompt = match (self.prompt, &self.prompt_file) {
            (Some(_), Some(_)) => return Err(usage("specify only one prompt source")),
            (Some(p), None) => PromptSource::Text(p),
            (None, Some(f)) => {
                let bytes = std::fs::read(f).map_err(|e| {
                    usage(format!("failed to open prompt file: {}: {e}", f.display()))
                })?;
                PromptSource::Text(String::from_utf8_lossy(&bytes).into_owned())
            }
            (None, None) => PromptSource::Interactive,
        };
        if self.ctx < 2 {
            return Err(usage(format!("invalid value for --ctx: {}", self.ctx)));
        }
        if self.tokens == 0 {
            return Err(usage("invalid value for --tokens: 0"));
        }
        check_range("--temp", self.temp, 0.0, 100.0)?;
        check_range("--top-p", self.top_p, 0.0, 1.0)?;
        check_range("--min-p", self.min_p, 0.0, 1.0)?;
        check_range("--mtp-margin", self.mtp_margin, 0.0, 1000.0)?;
        for (name, v) in [
            ("--dir-steering-ffn", self.dir_steering_ffn),
            ("--dir-steering-attn", self.dir_steering_attn),
        ] {
            if let Some(v) = v {
                check_range(name, v, -100.0, 100.0)?;
            }
        }
        if self.seed == Some(0) {
            return Err(usage("invalid value for --seed: 0"));
        }
        if self.threads == Some(0) {
            return Err(usage("invalid value for --threads: 0"));
        }
        let mut backend = self.backend.as_deref().map(str::to_ascii_lowercase);
        for (flag, name) in [
            (self.metal, "metal"),
            (self.cuda, "cuda"),
            (self.cpu, "cpu"),
        ] {
            if flag {
                backend = Some(name.to_string());
            }
        }
        let backend =
            match backend.as_deref() {
                None | Some("cpu") => BackendKind::Cpu,
                Some("cuda") => BackendKind::Cuda,
                Some("metal") => return Err(usage(
                    "the metal backend is not available in this build of ds4 (use --cuda or --cpu)",
                )),
                Some(other) => {
                    return Err(usage(format!(
                        "invalid value for --backend: {other} (metal, cuda or cpu)"
                    )))
                }
            };
        if self.dir_steering_file.is_some()
            || self.dir_steering_ffn.is_some()
            || self.dir_steering_attn.is_some()
        {
            return Err(usage("directional steering is not supported by this build"));
        }
        let mut ignored = Vec::new();
        if self.mtp.is_some() {
            ignored.push(
                "--mtp (speculative decoding is not implemented; decoding one token at a time)",
            );
        }
        if self.quality {
            ignored.push("--quality (the CPU backend has only exact kernels)");
        }
        let think = if self.nothink {
            ThinkMode::None
        } else if self.think_max {
            ThinkMode::Max
        } else {
            ThinkMode::High
        };
        let model = if self.demo {
            ModelChoice::Demo
        } else {
            match self.model {
                Some(path) => ModelChoice::File {
                    path,
                    explicit: true,
                },
                None => ModelChoice::File {
                    path: PathBuf::from(DEFAULT_MODEL),
                    explicit: false,
                },
            }
        };
        let action = if self.dump_tokens {
            if prompt == PromptSource::Interactive {
                return Err(usage("--dump-tokens requires -p or --prompt-file"));
            }
            Action::DumpTokens
        } else if self.inspect {
            Action::Inspect
        } else if let Some(f) = self.perplexity_file {
            Action::Perplexity(f)
        } else if let Some(file) = self.dump_logprobs {
            if prompt == PromptSource::Interactive {
                return Err(usage("--dump-logprobs requires -p or --prompt-file"));
            }
            Action::DumpLogprobs {
                file,
                top_k: self.logprobs_top_k.clamp(1, 128),
            }
        } else {
            Action::Chat
        };
        Ok(RunOptions {
            prompt,
            system: Some(self.system).filter(|s| !s.is_empty()),
            model,
            ctx: self.ctx,
            max_tokens: self.tokens,
            // spec/server.md §6.1: the CLI never uses top_k.
            sampling: SamplingParams {
                temperature: self.temp,
                top_p: self.top_p,
                min_p: self.min_p,
                top_k: 0,
            },
            seed: self.seed.unwrap_or_else(seed_from_entropy),
            think,
            threads: self.threads,
            backend,
            warm_weights: self.warm_weights,
            action,
            ignored,
        })
    }
}

/// The §2.1 warning, or `None` when Think Max applies (or was not asked for).
pub fn think_max_warning(asked: ThinkMode, ctx: usize) -> Option<String> {
    (asked == ThinkMode::Max && ctx < THINK_MAX_MIN_CTX).then(|| {
        format!("ds4: warning: --think-max needs --ctx >= {THINK_MAX_MIN_CTX}; ctx={ctx} uses normal thinking instead")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunOptions, String> {
        let raw: Vec<String> = std::iter::once("ds4")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let a = Args::try_parse_from(normalize(&raw)).map_err(|e| e.to_string())?;
        a.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_spec_6_1() {
        let o = parse(&[]).expect("defaults");
        assert_eq!(o.prompt, PromptSource::Interactive);
        assert_eq!(o.system.as_deref(), Some("You are a helpful assistant"));
        assert_eq!(
            o.model,
            ModelChoice::File {
                path: PathBuf::from("ds4flash.gguf"),
                explicit: false
            }
        );
        assert_eq!((o.ctx, o.max_tokens), (32768, 50000));
        assert_eq!(
            o.sampling,
            SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                min_p: 0.05,
                top_k: 0
            }
        );
        assert_eq!(o.think, ThinkMode::High);
        assert!(o.seed > 0);
        assert_eq!(o.action, Action::Chat);
    }

    #[test]
    fn single_dash_sys_and_thinking_flags() {
        let o =
            parse(&["-sys", "", "--nothink", "-p", "hi", "-n", "3", "-c", "100"]).expect("parse");
        assert_eq!(o.system, None);
        assert_eq!(o.think, ThinkMode::None);
        assert_eq!(o.prompt, PromptSource::Text("hi".into()));
        assert_eq!((o.ctx, o.max_tokens), (100, 3));
        let o = parse(&["--nothink", "--think-max"]).expect("parse");
        assert_eq!(o.think, ThinkMode::Max, "the last thinking flag wins");
        assert_eq!(o.effective_think(), ThinkMode::High);
        assert!(think_max_warning(o.think, o.ctx).is_some_and(|w| w.contains("ctx=32768")));
        let o = parse(&["--think-max", "--ctx", "400000"]).expect("parse");
        assert_eq!(o.effective_think(), ThinkMode::Max);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for (args, needle) in [
            (
                &["-p", "a", "--prompt-file", "b"][..],
                "only one prompt source",
            ),
            (&["--temp", "101"][..], "--temp"),
            (&["--top-p", "1.5"][..], "--top-p"),
            (&["--seed", "0"][..], "--seed"),
            (&["--server"][..], "ds4-server"),
            (&["--metal"][..], "metal backend"),
            (&["--backend", "tpu"][..], "--backend"),
            (
                &["--dump-tokens"][..],
                "--dump-tokens requires -p or --prompt-file",
            ),
            (
                &["--prompt-file", "/nonexistent/x"][..],
                "failed to open prompt file",
            ),
        ] {
            let e = parse(args).expect_err("must fail");
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        assert!(parse(&["--top-k", "5"]).is_err(), "ds4 has no --top-k");
    }

    #[test]
    fn backend_flags_choose_the_backend() {
        for (args, want) in [
            (&[][..], BackendKind::Cpu),
            (&["--cuda"][..], BackendKind::Cuda),
            (&["--backend", "CUDA"][..], BackendKind::Cuda),
            (&["--backend", "cuda", "--cpu"][..], BackendKind::Cpu),
        ] {
            let o = parse(args).expect("parses");
            assert_eq!(o.backend, want, "{args:?}");
        }
    }
}
