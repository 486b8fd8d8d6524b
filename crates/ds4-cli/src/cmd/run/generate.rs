//! One answer: prefill the prompt (progress on stderr), sample until EOS or the limit, stream the
//! text to stdout with the reasoning shown dimmed (spec/server.md §6.1), and time both phases.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ds4_chat::{SpecialTokens, StreamDecoder, Tokenizer};
use ds4_engine::sampler::Sampler;
use ds4_engine::{Session, SyncProgress};

/// Prefill chunk of the CLI: large enough to keep the batched path busy, small enough that the
/// progress line moves a few times a second on the CPU backend.
pub const PREFILL_CHUNK: usize = 256;

/// What one answer did.
#[derive(Debug, Default, Clone)]
pub struct TurnOutcome {
    /// Sampled tokens, EOS excluded. All but possibly the last one are evaluated in the session.
    pub generated: Vec<u32>,
    pub hit_eos: bool,
    /// Stopped by Ctrl+C (interactive mode only).
    pub interrupted: bool,
    pub prefill_tokens: usize,
    pub prefill_time: Duration,
    pub gen_time: Duration,
}

impl TurnOutcome {
    /// `ds4: prefill: X t/s, generation: Y t/s` (spec/server.md §6.1).
    pub fn speed_line(&self) -> String {
        let rate = |n: usize, d: Duration| {
            if d.as_secs_f64() > 0.0 {
                n as f64 / d.as_secs_f64()
            } else {
                0.0
            }
        };
        format!(
            "ds4: prefill: {:.2} t/s, generation: {:.2} t/s",
            rate(self.prefill_tokens, self.prefill_time),
            rate(self.generated.len(), self.gen_time)
        )
    }
}

/// Writes sampled tokens as text. Hides `<think>`/`</think>`, colours the reasoning grey on a
/// terminal, and ends the reasoning with a newline when it did not end with one.
pub struct Printer<'t> {
    decoder: StreamDecoder<'t>,
    special: SpecialTokens,
    color: bool,
    in_reasoning: bool,
    at_line_start: bool,
    out: io::Stdout,
}

const GREY: &[u8] = b"\x1b[90m";
const RESET: &[u8] = b"\x1b[0m";

impl<'t> Printer<'t> {
    pub fn new(tok: &'t Tokenizer) -> Printer<'t> {
        Printer {
            decoder: tok.stream_decoder(),
            special: *tok.special(),
            color: io::stdout().is_terminal(),
            in_reasoning: false,
            at_line_start: true,
            out: io::stdout(),
        }
    }

    /// Start of an answer; `thinking` when the prompt ended with `<think>`.
    pub fn begin(&mut self, thinking: bool) -> io::Result<()> {
        self.in_reasoning = thinking;
        self.at_line_start = true;
        if thinking && self.color {
            self.out.write_all(GREY)?;
        }
        Ok(())
    }

    fn write_text(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(&last) = bytes.last() {
            self.out.write_all(bytes)?;
            self.at_line_start = last == b'\n';
        }
        Ok(())
    }

    fn end_reasoning(&mut self) -> io::Result<()> {
        let rest = self.decoder.finish();
        self.write_text(&rest)?;
        if self.color {
            self.out.write_all(RESET)?;
        }
        if !self.at_line_start {
            self.write_text(b"\n")?;
        }
        self.in_reasoning = false;
        Ok(())
    }

    pub fn token(&mut self, id: u32) -> io::Result<()> {
        if id == self.special.think_end {
            if self.in_reasoning {
                self.end_reasoning()?;
            }
        } else if id != self.special.think {
            let bytes = self.decoder.push(id).to_vec();
            self.write_text(&bytes)?;
        }
        self.out.flush()
    }

    /// End of an answer: flush held bytes, reset the colour, end the line.
    pub fn finish(&mut self) -> io::Result<()> {
        let rest = self.decoder.finish();
        self.write_text(&rest)?;
        if self.in_reasoning && self.color {
            self.out.write_all(RESET)?;
        }
        self.in_reasoning = false;
        if !self.at_line_start {
            self.write_text(b"\n")?;
        }
        self.out.flush()
    }
}

/// A prefill progress bar on stderr, `processing N input tokens: i/N (p%)`; invisible when stderr
/// is not a terminal (indicatif hides itself then).
fn prefill_bar(to_prefill: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(to_prefill as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "processing {len} input tokens: {pos}/{len} ({percent}%) [{bar:30}] {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A session, its sampler and the vocabulary: everything one answer needs.
pub struct Generator<'t> {
    pub session: Session,
    pub sampler: Sampler,
    pub tok: &'t Tokenizer,
}

impl Generator<'_> {
    /// Makes the session hold `prompt`, then samples at most `max_new` tokens (fewer if the
    /// context fills up), printing them. `stop` is polled between tokens (Ctrl+C in the REPL).
    pub fn run_turn(
        &mut self,
        printer: &mut Printer,
        prompt: &[u32],
        max_new: usize,
        thinking: bool,
        stop: &AtomicBool,
    ) -> Result<TurnOutcome> {
        let mut outcome = TurnOutcome::default();
        let t0 = Instant::now();
        let mut bar: Option<indicatif::ProgressBar> = None;
        let stats = self
            .session
            .sync(prompt, PREFILL_CHUNK, &mut |p: SyncProgress| {
                let b = bar.get_or_insert_with(|| prefill_bar(p.to_prefill));
                b.set_position((p.done + p.to_prefill).saturating_sub(p.total) as u64);
            })
            .context("prefill")?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        outcome.prefill_time = t0.elapsed();
        outcome.prefill_tokens = stats.prefilled;

        // spec/server.md §6.1: the limit is also clamped to ctx − pos − 1.
        let limit = max_new.min(self.session.ctx().saturating_sub(prompt.len() + 1));
        let eos = self.tok.special().eos;
        let t1 = Instant::now();
        printer.begin(thinking)?;
        for i in 0..limit {
            if stop.load(Ordering::Relaxed) {
                outcome.interrupted = true;
                break;
            }
            let id = self.sampler.sample(self.session.logits());
            if id == eos {
                outcome.hit_eos = true;
                break;
            }
            outcome.generated.push(id);
            printer.token(id)?;
            // The last token of the budget is not evaluated here: nothing would read its
            // logits. A later turn's sync evaluates it as part of the transcript.
            if i + 1 < limit {
                self.session.push(id).context("decode")?;
            }
        }
        printer.finish()?;
        outcome.gen_time = t1.elapsed();
        Ok(outcome)
    }
}
