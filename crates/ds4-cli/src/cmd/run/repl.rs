//! The interactive `ds4>` prompt (spec/server.md §6.1): a token transcript that grows by one turn
//! at a time, so each answer only prefills the new user text (the session reuses the live KV
//! prefix). Ctrl+C during an answer stops it and returns here; at the prompt it just redraws.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use ds4_chat::{ThinkMode, Tokenizer, THINK_MAX_MIN_CTX, THINK_MAX_PREFIX};
use ds4_engine::Engine;
use rustyline::error::ReadlineError;

use super::args::{think_max_warning, RunOptions};
use super::generate::{Generator, Printer};

/// Set by the SIGINT handler while an answer is being generated.
static STOP: AtomicBool = AtomicBool::new(false);

const HELP: &str = "Commands:
  /help        this list
  /think       thinking mode (default)
  /think-max   thinking with the Think Max prefix (needs ctx >= 393216)
  /nothink     answer without thinking
  /ctx N       new context size (the conversation is kept, its KV state is rebuilt)
  /read FILE   send the contents of FILE as the next message
  /quit        leave (also /exit or Ctrl+D); Ctrl+C stops an answer";

const HISTORY_LEN: usize = 512;

/// The conversation as tokens: `head` (BOS, Think Max prefix, system text) is rebuilt from the
/// mode, the turns are kept verbatim (old reasoning included, spec/server.md §2.9).
struct Transcript {
    system: Vec<u32>,
    turns: Vec<u32>,
}

impl Transcript {
    fn tokens(&self, tok: &Tokenizer, mode: ThinkMode) -> Vec<u32> {
        let mut t = vec![tok.special().bos];
        if mode == ThinkMode::Max {
            t.extend(tok.encode_rendered(THINK_MAX_PREFIX.as_bytes()));
        }
        t.extend_from_slice(&self.system);
        t.extend_from_slice(&self.turns);
        t
    }
}

enum Command {
    Message(String),
    Help,
    Think(ThinkMode),
    Ctx(Option<String>),
    Read(String),
    Quit,
    Unknown(String),
    Empty,
}

fn parse_command(line: &str) -> Command {
    let line = line.trim();
    if line.is_empty() {
        return Command::Empty;
    }
    if !line.starts_with('/') {
        return Command::Message(line.to_string());
    }
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    match cmd {
        "/help" => Command::Help,
        "/think" => Command::Think(ThinkMode::High),
        "/think-max" => Command::Think(ThinkMode::Max),
        "/nothink" => Command::Think(ThinkMode::None),
        "/ctx" => Command::Ctx((!rest.is_empty()).then(|| rest.to_string())),
        "/read" => Command::Read(rest.to_string()),
        "/quit" | "/exit" => Command::Quit,
        _ => Command::Unknown(cmd.to_string()),
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ds4_history"))
}

pub fn run(
    engine: &Engine,
    tok: &Tokenizer,
    opts: &RunOptions,
    mut gen: Generator,
) -> Result<ExitCode> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .context("installing the Ctrl+C handler")?;
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LEN)
        .context("history size")?
        .auto_add_history(false)
        .build();
    let mut editor =
        rustyline::DefaultEditor::with_config(config).context("starting the line editor")?;
    let history = history_path();
    if let Some(h) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(h);
    }
    let mut transcript = Transcript {
        system: opts
            .system
            .as_deref()
            .map(|s| tok.encode_text(s.as_bytes()))
            .unwrap_or_default(),
        turns: Vec::new(),
    };
    let mut mode = opts.think;
    let mut ctx = opts.ctx;
    let mut printer = Printer::new(tok);
    let special = *tok.special();
    println!("{HELP}");

    loop {
        let line = match editor.readline("ds4> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading input"),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        let text = match parse_command(&line) {
            Command::Empty => continue,
            Command::Quit => break,
            Command::Help => {
                println!("{HELP}");
                continue;
            }
            Command::Think(m) => {
                mode = m;
                match m.effective(ctx) {
                    ThinkMode::Max => println!("Thinking mode: max."),
                    _ if m == ThinkMode::Max => {
                        println!("Thinking mode: high (ctx below {THINK_MAX_MIN_CTX}).");
                        if let Some(w) = think_max_warning(m, ctx) {
                            eprintln!("{w}");
                        }
                    }
                    other => println!("Thinking mode: {}.", other.name()),
                }
                continue;
            }
            Command::Ctx(None) => {
                eprintln!("ds4: /ctx needs a positive integer");
                continue;
            }
            Command::Ctx(Some(n)) => {
                // spec/server.md §6.1: a bad /ctx value ends the program, like a bad --ctx.
                let Some(n) = n.parse::<usize>().ok().filter(|&n| n >= 2) else {
                    eprintln!("ds4: invalid value for /ctx: {n}");
                    return Ok(ExitCode::from(2));
                };
                gen.session = engine
                    .new_session(n)
                    .with_context(|| format!("creating a session of ctx {n}"))?;
                ctx = n;
                println!("Context: {n} tokens (the conversation is kept; it is prefilled again next turn).");
                continue;
            }
            Command::Read(path) => match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    eprintln!("ds4: cannot read {path}: {e}");
                    continue;
                }
            },
            Command::Unknown(cmd) => {
                eprintln!("ds4: unknown command: {cmd} (type /help for the list)");
                continue;
            }
            Command::Message(m) => m,
        };

        let effective = mode.effective(ctx);
        let turn_start = transcript.turns.len();
        transcript.turns.push(special.user);
        transcript.turns.extend(tok.encode_text(text.as_bytes()));
        transcript.turns.push(special.assistant);
        transcript.turns.push(if effective.is_enabled() {
            special.think
        } else {
            special.think_end
        });
        let prompt = transcript.tokens(tok, effective);
        if prompt.len() + 1 >= ctx {
            eprintln!(
                "ds4: the conversation ({} tokens) no longer fits ctx={ctx}; use /ctx N",
                prompt.len()
            );
            transcript.turns.truncate(turn_start);
            continue;
        }
        STOP.store(false, Ordering::Relaxed);
        match gen.run_turn(
            &mut printer,
            &prompt,
            opts.max_tokens,
            effective.is_enabled(),
            &STOP,
        ) {
            Err(e) => {
                // Prefill or decode failed: the turn never happened, and the KV state is suspect.
                eprintln!("ds4: {e:#}");
                transcript.turns.truncate(turn_start);
                gen.session.reset();
            }
            Ok(outcome) if outcome.interrupted && outcome.generated.is_empty() => {
                eprintln!("ds4: interrupted");
                transcript.turns.truncate(turn_start);
                gen.session.reset();
            }
            Ok(outcome) => {
                if outcome.interrupted {
                    eprintln!("ds4: interrupted");
                }
                transcript.turns.extend_from_slice(&outcome.generated);
                transcript.turns.push(special.eos);
                eprintln!("{}", outcome.speed_line());
            }
        }
        STOP.store(false, Ordering::Relaxed);
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}
