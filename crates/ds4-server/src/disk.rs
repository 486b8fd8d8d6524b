//! The server's side of the disk KV cache (spec/server.md §5.5-5.7): the save/load *policy*
//! (`--kv-cache-*` knobs, cold-save targets, which moments save). The store itself — file format,
//! lookup, atomic writes, eviction — is `ds4_kvcache::DiskCache`.

use ds4_chat::SpecialTokens;
use ds4_engine::SessionSnapshot;
use ds4_kvcache::{
    CacheError, Checkpoint, DiskCache, KeyKind, Loaded, SaveOutcome, SaveReason, ToolMemory,
};

/// The `--kv-cache-*` knobs this server honours (spec §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPolicy {
    /// `--kv-cache-min-tokens`: never save or load shorter checkpoints.
    pub min_tokens: usize,
    /// `--kv-cache-cold-max-tokens`: cold saves only for prompts in `[min, this]`; 0 disables.
    pub cold_max_tokens: usize,
    /// `--kv-cache-boundary-trim-tokens`: tail trimmed before a cold save.
    pub boundary_trim_tokens: usize,
    /// `--kv-cache-boundary-align-tokens`: cold frontiers round down to a multiple; 0 disables.
    pub boundary_align_tokens: usize,
    /// `--kv-cache-continued-interval-tokens`: spacing of continued saves; 0 disables.
    pub continued_interval_tokens: usize,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            min_tokens: 512,
            cold_max_tokens: 30000,
            boundary_trim_tokens: 32,
            boundary_align_tokens: 2048,
            continued_interval_tokens: 10000,
        }
    }
}

impl DiskPolicy {
    /// spec §5.6 "cold": how many tokens of a cold `prompt` to save, or `None` when the prompt is
    /// outside `[min, cold_max]`. The chat anchor (the last `USER` before the first `ASSISTANT`,
    /// i.e. the shared system/tools scaffolding) wins when it is long enough; else the trimmed,
    /// aligned length; else the whole prompt.
    pub fn cold_target(&self, prompt: &[u32], special: &SpecialTokens) -> Option<usize> {
        let len = prompt.len();
        if self.cold_max_tokens == 0 || len < self.min_tokens || len > self.cold_max_tokens {
            return None;
        }
        let first_assistant = prompt
            .iter()
            .position(|&t| t == special.assistant)
            .unwrap_or(len);
        let anchor = prompt[..first_assistant]
            .iter()
            .rposition(|&t| t == special.user);
        if let Some(a) = anchor.filter(|&a| a >= self.min_tokens) {
            return Some(a);
        }
        if len > self.min_tokens + self.boundary_trim_tokens {
            let trimmed = len - self.boundary_trim_tokens;
            let aligned = match self.boundary_align_tokens {
                0 => trimmed,
                a => trimmed / a * a,
            };
            if aligned >= self.min_tokens {
                return Some(aligned);
            }
        }
        Some(len)
    }

    /// spec §5.6 "continued": the save step, `--kv-cache-continued-interval-tokens` rounded up
    /// to a multiple of the alignment (10000 -> 10240); 0 when continued saves are off.
    pub fn continued_step(&self) -> usize {
        match (self.continued_interval_tokens, self.boundary_align_tokens) {
            (0, _) => 0,
            (i, 0) => i,
            (i, a) => i.div_ceil(a) * a,
        }
    }

    /// Whether a live length `len` is a continued save point past `frontier`.
    pub fn continued_due(&self, len: usize, frontier: usize) -> bool {
        let step = self.continued_step();
        len >= self.min_tokens && len.checked_rem(step) == Some(0) && len > frontier
    }

    /// Where to stop a prefill of `effective` (of which `resident` tokens are already live) to
    /// save, in order: the cold target when `cold` (spec §5.6), and every continued frontier past
    /// `frontier`. A cold target on a continued frontier is saved once (as cold).
    pub fn save_stops(
        &self,
        effective: &[u32],
        resident: usize,
        frontier: usize,
        cold: bool,
        special: &SpecialTokens,
    ) -> Vec<(usize, Option<SaveReason>)> {
        let mut stops: Vec<(usize, Option<SaveReason>)> = Vec::new();
        if cold {
            if let Some(t) = self.cold_target(effective, special) {
                stops.push((t, Some(SaveReason::Cold)));
            }
        }
        let step = self.continued_step();
        if let Some(q) = resident.checked_div(step) {
            let mut l = (q + 1) * step;
            while l <= effective.len() {
                if self.continued_due(l, frontier) && !stops.iter().any(|&(s, _)| s == l) {
                    stops.push((l, Some(SaveReason::Continued)));
                }
                l += step;
            }
        }
        stops.retain(|&(s, _)| s > resident);
        stops.sort_by_key(|&(s, _)| s);
        stops
    }
}

/// The opened store and the policy the worker applies to it.
#[derive(Debug)]
pub struct DiskKv {
    pub cache: DiskCache,
    pub policy: DiskPolicy,
}

impl DiskKv {
    /// Saves `snap` keyed by `key_text` (the detokenized checkpoint tokens, spec §5.6), with no
    /// tool map. Shorter than `min_tokens` is not an error: the store answers
    /// [`SaveOutcome::TooShort`].
    pub fn save(
        &self,
        key_text: &[u8],
        reason: SaveReason,
        snap: &SessionSnapshot,
    ) -> Result<SaveOutcome, CacheError> {
        self.save_keyed(key_text, KeyKind::TokenText, reason, snap, &[])
    }

    /// [`DiskKv::save`] with the key's kind (token text or a visible transcript, spec §5.6) and
    /// the remembered tool calls whose blocks occur in the key text (the KTM section, §5.4).
    pub fn save_keyed(
        &self,
        key_text: &[u8],
        key_kind: KeyKind,
        reason: SaveReason,
        snap: &SessionSnapshot,
        tool_map: &[ToolMemory],
    ) -> Result<SaveOutcome, CacheError> {
        self.cache.save(&Checkpoint {
            key_text,
            key_kind,
            reason,
            tokens: &snap.tokens,
            logits: &snap.logits,
            kv: &snap.kv,
            tool_map,
        })
    }

    /// spec §5.7: the best checkpoint whose key text is a byte prefix of `prompt_text`, loaded
    /// with every check. `usable(key_len)` lets the caller refuse a key that ends where the prompt
    /// cannot be split (inside a special token's spelling) before anything is read.
    pub fn load_prefix(
        &self,
        prompt_text: &[u8],
        usable: impl Fn(usize) -> bool,
    ) -> Option<Result<Loaded, CacheError>> {
        let entry = self.cache.lookup(prompt_text)?;
        if !usable(entry.key_len as usize) {
            return None;
        }
        Some(self.cache.load(&entry, prompt_text))
    }
}

/// The session state a [`Loaded`] checkpoint restores.
pub fn snapshot_of(loaded: Loaded) -> SessionSnapshot {
    SessionSnapshot {
        tokens: loaded.state.tokens,
        kv: loaded.state.kv,
        logits: loaded.state.logits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        *ds4_chat::Tokenizer::builtin().special()
    }

    #[test]
    fn cold_target_trims_and_aligns_like_the_spec_examples() {
        let p = DiskPolicy::default();
        let sp = special();
        let plain = |n: usize| vec![sp.bos.wrapping_add(1); n];
        assert_eq!(p.cold_target(&plain(11011), &sp), Some(10240));
        assert_eq!(p.cold_target(&plain(1695), &sp), Some(1695));
        assert_eq!(p.cold_target(&plain(511), &sp), None, "below min");
        assert_eq!(p.cold_target(&plain(30001), &sp), None, "above cold max");
        let off = DiskPolicy {
            cold_max_tokens: 0,
            ..p
        };
        assert_eq!(off.cold_target(&plain(1000), &sp), None);
    }

    #[test]
    fn continued_saves_fall_on_aligned_steps_past_the_frontier() {
        let p = DiskPolicy::default();
        let sp = special();
        assert_eq!(p.continued_step(), 10240);
        assert!(p.continued_due(20480, 10240));
        assert!(!p.continued_due(10240, 10240), "already stored");
        assert!(!p.continued_due(10241, 0));
        let prompt = vec![sp.bos.wrapping_add(1); 25000];
        // Resident 5000 tokens, nothing stored yet: both frontiers inside the suffix.
        let stops = p.save_stops(&prompt, 5000, 0, false, &sp);
        assert_eq!(
            stops,
            vec![
                (10240, Some(SaveReason::Continued)),
                (20480, Some(SaveReason::Continued))
            ]
        );
        // A cold prompt whose target (24960 rounded to 24576) is saved before nothing else;
        // frontiers below it still get continued saves.
        let cold = p.save_stops(&prompt, 0, 0, true, &sp);
        assert_eq!(cold.first(), Some(&(10240, Some(SaveReason::Continued))));
        assert_eq!(cold.last(), Some(&(24576, Some(SaveReason::Cold))));
        let none = DiskPolicy {
            continued_interval_tokens: 0,
            ..p
        };
        assert!(none.save_stops(&prompt, 5000, 0, false, &sp).is_empty());
    }

    #[test]
    fn cold_target_prefers_the_chat_anchor() {
        let p = DiskPolicy::default();
        let sp = special();
        let mut prompt = vec![sp.bos.wrapping_add(1); 3000];
        prompt[700] = sp.user;
        prompt[2000] = sp.user;
        prompt[2100] = sp.assistant;
        prompt[2500] = sp.user; // after the first ASSISTANT: not an anchor
        assert_eq!(p.cold_target(&prompt, &sp), Some(2000));
        prompt[2000] = 5;
        prompt[700] = sp.user;
        assert_eq!(p.cold_target(&prompt, &sp), Some(700));
    }
}
