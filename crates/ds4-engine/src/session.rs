//! [`Session`]: one timeline. It owns a backend's KV state, the exact token ids that state holds,
//! and the logits for the next token (spec/server.md §5.1).

use ds4_model::{Backend, KvSnapshot, LayerProbe, Logits};

use crate::{Error, Result};

/// Prompt suffixes shorter than this are decoded token by token instead of batch-prefilled
/// (spec/server.md §5.1: "suffixes ≥ 4 tokens use batched chunked prefill").
const MIN_BATCH_SUFFIX: usize = 4;

/// What [`Session::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncStats {
    /// Prompt tokens whose KV state was already resident (live prefix or restored snapshot).
    pub reused: usize,
    /// Prompt tokens evaluated by this call.
    pub prefilled: usize,
}

/// Progress of a [`Session::sync`], reported after every prefill chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncProgress {
    /// Prompt positions resident so far (reused + prefilled).
    pub done: usize,
    /// Prompt length.
    pub total: usize,
    /// Positions that had to be evaluated in this sync (total − reused).
    pub to_prefill: usize,
}

/// A restorable copy of a whole session: tokens, KV state and next-token logits.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    pub tokens: Vec<u32>,
    pub kv: KvSnapshot,
    /// Logits after the last token (empty when `tokens` is empty).
    pub logits: Vec<f32>,
}

/// One timeline over one backend.
///
/// Invariant: `backend.n_past() == tokens.len()`, and `logits` are the logits after the last
/// token (empty while `tokens` is empty). Any backend failure empties the session, because the
/// backend's state is then unspecified.
pub struct Session {
    backend: Box<dyn Backend>,
    tokens: Vec<u32>,
    logits: Vec<f32>,
    /// Snapshots the owner asked to keep; [`Session::sync`] restores the longest one that is a
    /// prefix of a diverging prompt instead of rebuilding from token 0.
    checkpoints: Vec<SessionSnapshot>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Session {
    /// A fresh, empty timeline. The backend's KV state is reset.
    pub fn new(mut backend: Box<dyn Backend>) -> Session {
        backend.reset();
        Session {
            backend,
            tokens: Vec::new(),
            logits: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// Token ids whose KV state is resident, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Logits for the next token (`n_vocab` values), or an empty slice before the first sync.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Context size of the backend's KV state.
    pub fn ctx(&self) -> usize {
        self.backend.ctx()
    }

    pub fn n_vocab(&self) -> usize {
        self.backend.config().n_vocab
    }

    /// The backend, read-only (name, config).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Per-layer recording, passed through to the backend (golden `record_layout` debugging).
    pub fn set_probe(&mut self, probe: Option<LayerProbe>) -> Result<()> {
        Ok(self.backend.set_probe(probe)?)
    }

    pub fn take_probe(&mut self) -> Option<LayerProbe> {
        self.backend.take_probe()
    }

    /// Drops every token (the next sync prefills from 0). Used when the live state must not be
    /// reused, e.g. after a stop-sequence hit (spec/server.md §4.4).
    pub fn reset(&mut self) {
        self.backend.reset();
        self.tokens.clear();
        self.logits.clear();
    }

    /// Makes the session hold exactly `prompt`, reusing the longest resident prefix, and leaves the
    /// logits after its last token.
    ///
    /// * Live tokens are a prefix of `prompt`: only the suffix is evaluated.
    /// * Otherwise (divergence inside the live tokens, or `prompt` shorter than them): restore the
    ///   longest kept checkpoint that is a prefix of `prompt`, else rebuild from token 0. Never a
    ///   truncation (spec/model.md §4.4).
    ///
    /// Suffixes of at least 4 tokens are prefilled in chunks of `chunk` tokens whose ends are
    /// aligned to absolute multiples of `chunk` (0 = one chunk); `progress` runs after each chunk.
    /// Errors: `prompt.len() >= ctx` ([`Error::ContextFull`]), an empty prompt ([`Error::Empty`]),
    /// or a backend failure (the session is then empty).
    pub fn sync(
        &mut self,
        prompt: &[u32],
        chunk: usize,
        progress: &mut dyn FnMut(SyncProgress),
    ) -> Result<SyncStats> {
        if prompt.is_empty() {
            return Err(Error::Empty);
        }
        let ctx = self.ctx();
        if prompt.len() >= ctx {
            return Err(Error::ContextFull {
                needed: prompt.len(),
                ctx,
            });
        }
        let common = common_prefix(&self.tokens, prompt);
        if common < self.tokens.len() || self.logits.is_empty() {
            // The live state is not a prefix of the prompt: it cannot be cut back.
            self.rebase(prompt)?;
        }
        let reused = self.tokens.len();
        let result = self.extend(prompt, chunk, reused, progress);
        if result.is_err() {
            self.reset();
        }
        result.map(|()| SyncStats {
            reused,
            prefilled: prompt.len() - reused,
        })
    }

    /// Puts the session on the longest kept checkpoint that is a prefix of `prompt`, or empties it.
    fn rebase(&mut self, prompt: &[u32]) -> Result<()> {
        let best = self
            .checkpoints
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.tokens.is_empty() && prompt.starts_with(&c.tokens))
            .max_by_key(|(_, c)| c.tokens.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let snap = self.checkpoints[i].clone();
                if let Err(e) = self.restore(&snap) {
                    self.reset();
                    return Err(e);
                }
            }
            None => self.reset(),
        }
        Ok(())
    }

    fn extend(
        &mut self,
        prompt: &[u32],
        chunk: usize,
        reused: usize,
        progress: &mut dyn FnMut(SyncProgress),
    ) -> Result<()> {
        let total = prompt.len();
        let to_prefill = total - reused;
        if to_prefill == 0 {
            return Ok(());
        }
        let n_vocab = self.n_vocab();
        self.logits.resize(n_vocab, 0.0);
        if to_prefill < MIN_BATCH_SUFFIX {
            for &t in &prompt[reused..] {
                self.backend.eval(&[t], Logits::Last(&mut self.logits))?;
                self.tokens.push(t);
            }
            progress(SyncProgress {
                done: total,
                total,
                to_prefill,
            });
            return Ok(());
        }
        let mut pos = reused;
        while pos < total {
            let end = match pos.checked_div(chunk) {
                Some(q) => ((q + 1) * chunk).min(total),
                None => total,
            };
            let logits = if end == total {
                Logits::Last(&mut self.logits)
            } else {
                Logits::None
            };
            self.backend.eval(&prompt[pos..end], logits)?;
            self.tokens.extend_from_slice(&prompt[pos..end]);
            pos = end;
            progress(SyncProgress {
                done: pos,
                total,
                to_prefill,
            });
        }
        Ok(())
    }

    /// Evaluates one token at the end of the timeline (decode) and updates the logits.
    /// Errors: the context is full, or a backend failure (the session is then empty).
    pub fn push(&mut self, token: u32) -> Result<()> {
        let ctx = self.ctx();
        if self.tokens.len() + 1 > ctx {
            return Err(Error::ContextFull {
                needed: self.tokens.len() + 1,
                ctx,
            });
        }
        let n_vocab = self.n_vocab();
        self.logits.resize(n_vocab, 0.0);
        if let Err(e) = self.backend.eval(&[token], Logits::Last(&mut self.logits)) {
            self.reset();
            return Err(e.into());
        }
        self.tokens.push(token);
        Ok(())
    }

    /// A copy of the whole timeline (tokens, KV state, logits).
    pub fn snapshot(&self) -> Result<SessionSnapshot> {
        let kv = self.backend.snapshot()?;
        Ok(SessionSnapshot {
            tokens: self.tokens.clone(),
            kv,
            logits: self.logits.clone(),
        })
    }

    /// Replaces the timeline with `snap`. On error the session is empty.
    pub fn restore(&mut self, snap: &SessionSnapshot) -> Result<()> {
        if snap.kv.n_past != snap.tokens.len() {
            return Err(Error::BadSnapshot(format!(
                "{} tokens but KV state for {} positions",
                snap.tokens.len(),
                snap.kv.n_past
            )));
        }
        let want_logits = if snap.tokens.is_empty() {
            0
        } else {
            self.n_vocab()
        };
        if snap.logits.len() != want_logits {
            return Err(Error::BadSnapshot(format!(
                "{} logits, this model has {} tokens",
                snap.logits.len(),
                self.n_vocab()
            )));
        }
        if snap.tokens.len() >= self.ctx() {
            return Err(Error::ContextFull {
                needed: snap.tokens.len(),
                ctx: self.ctx(),
            });
        }
        if let Err(e) = self.backend.restore(&snap.kv) {
            self.reset();
            return Err(e.into());
        }
        self.tokens.clone_from(&snap.tokens);
        self.logits.clone_from(&snap.logits);
        Ok(())
    }

    /// Keeps a snapshot of the current timeline for later [`Session::sync`] calls that diverge
    /// after it. At most `max_kept` checkpoints are kept; the oldest are dropped first.
    pub fn keep_checkpoint(&mut self, max_kept: usize) -> Result<()> {
        if self.tokens.is_empty() || max_kept == 0 {
            return Ok(());
        }
        let snap = self.snapshot()?;
        self.checkpoints.retain(|c| c.tokens != snap.tokens);
        self.checkpoints.push(snap);
        while self.checkpoints.len() > max_kept {
            self.checkpoints.remove(0);
        }
        Ok(())
    }

    /// Number of kept checkpoints.
    pub fn n_checkpoints(&self) -> usize {
        self.checkpoints.len()
    }

    /// Drops every kept checkpoint.
    pub fn clear_checkpoints(&mut self) {
        self.checkpoints.clear();
    }
}
