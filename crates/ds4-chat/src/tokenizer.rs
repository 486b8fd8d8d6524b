//! spec/server.md §1: GPT-2 style byte-level BPE with the JoyAI-like pre-tokenizer of ds4.

use crate::render::{Rendered, Segment};
use crate::Error;

/// The seven protocol specials of spec/server.md §1.5, in the order the rendered-chat scan tests them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialKind {
    /// `<｜begin▁of▁sentence｜>`
    Bos,
    /// `<｜end▁of▁sentence｜>`
    Eos,
    /// `<｜User｜>`
    User,
    /// `<｜Assistant｜>`
    Assistant,
    /// `<think>`
    Think,
    /// `</think>`
    ThinkEnd,
    /// `｜DSML｜` (only the bare marker is a token; the tags around it are BPE text)
    Dsml,
}

impl SpecialKind {
    /// All seven, in the scan order of spec §1.6.
    pub const ALL: [SpecialKind; 7] = [
        SpecialKind::Bos,
        SpecialKind::Eos,
        SpecialKind::User,
        SpecialKind::Assistant,
        SpecialKind::Think,
        SpecialKind::ThinkEnd,
        SpecialKind::Dsml,
    ];

    /// The exact spelling (spec §1.5).
    pub const fn text(self) -> &'static str {
        unimplemented!()
    }
}

/// Token ids of the seven specials, resolved by spelling when the vocabulary is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<｜begin▁of▁sentence｜>` (0 in the real vocabulary)
    pub bos: u32,
    /// `<｜end▁of▁sentence｜>` (1)
    pub eos: u32,
    /// `<｜User｜>` (128803)
    pub user: u32,
    /// `<｜Assistant｜>` (128804)
    pub assistant: u32,
    /// `<think>` (128821)
    pub think: u32,
    /// `</think>` (128822)
    pub think_end: u32,
    /// `｜DSML｜` (128825)
    pub dsml: u32,
}

impl SpecialTokens {
    /// The id of one special.
    pub fn id(&self, kind: SpecialKind) -> u32 {
        unimplemented!()
    }
    /// Which special `id` is, if any.
    pub fn kind_of(&self, id: u32) -> Option<SpecialKind> {
        unimplemented!()
    }
}

/// A loaded vocabulary: token strings, merge ranks, and the resolved specials.
///
/// Immutable after construction and `Sync`; share one per process (see [`Tokenizer::builtin`]).
pub struct Tokenizer {
    _private: (),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab())
            .finish()
    }
}

impl Tokenizer {
    /// Reads `tokenizer.ggml.tokens` and `tokenizer.ggml.merges` (spec §1.1); other tokenizer keys
    /// are ignored, as in the original. Fails if a key is missing or any of the 7 specials is absent.
    pub fn from_gguf(gguf: &ds4_gguf::GgufFile) -> Result<Tokenizer, Error> {
        unimplemented!()
    }

    /// Builds from token strings (index = id, GGUF byte-level spelling) and merges (`"LEFT RIGHT"`,
    /// index = rank). Duplicates: the later token id / later merge rank wins (spec §1.1).
    pub fn from_vocab(tokens: Vec<String>, merges: Vec<String>) -> Result<Tokenizer, Error> {
        unimplemented!()
    }

    /// The real DeepSeek V4 vocabulary (129280 tokens, 127741 merges), embedded in the binary and
    /// built once per process on first use.
    pub fn builtin() -> &'static Tokenizer {
        unimplemented!()
    }

    /// Vocabulary size (number of token strings).
    pub fn n_vocab(&self) -> usize {
        unimplemented!()
    }

    /// The resolved special ids.
    pub fn special(&self) -> &SpecialTokens {
        unimplemented!()
    }

    /// Raw vocabulary string of `id` (GGUF spelling, e.g. `Ġworld`), as `--dump-tokens` prints it.
    /// `None` when out of range.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        unimplemented!()
    }

    /// Id of an exact vocabulary string (later duplicate wins).
    pub fn token_id(&self, s: &str) -> Option<u32> {
        unimplemented!()
    }

    /// Detokenized bytes of one token (spec §1.7): empty when out of range; the verbatim string when
    /// it contains `｜`; otherwise the inverse byte map. May be a partial UTF-8 sequence.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        unimplemented!()
    }

    /// Concatenated [`Tokenizer::token_bytes`] of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        unimplemented!()
    }

    /// Plain tokenization (spec §1.6 `tokenize_text`): pre-tokenize + BPE, no special recognition.
    /// Unlike the original, a `0x00` byte is an ordinary byte, not the end of input (§1.3).
    pub fn encode_text(&self, text: &[u8]) -> Vec<u32> {
        unimplemented!()
    }

    /// Appends the plain tokenization of `text` to `out`.
    pub fn encode_text_into(&self, text: &[u8], out: &mut Vec<u32>) {
        unimplemented!()
    }

    /// Rendered-chat tokenization (spec §1.6 `tokenize_rendered_chat`): the 7 specials are recognised
    /// anywhere in `text`. This is the original's behaviour on whole rendered prompts and what
    /// `--dump-tokens` shows; prefer [`Tokenizer::encode_segments`] for anything holding client text.
    pub fn encode_rendered(&self, text: &[u8]) -> Vec<u32> {
        unimplemented!()
    }

    /// Structural tokenization of a rendered prompt: each [`Segment::Special`] becomes its id and
    /// each maximal run of [`Segment::Text`] is plain-tokenized, so client text can never produce a
    /// control token. Equal to `encode_rendered(r.text())` whenever no text segment contains a
    /// special spelling.
    pub fn encode_segments(&self, r: &Rendered) -> Vec<u32> {
        unimplemented!()
    }

    /// A fresh incremental detokenizer over this vocabulary.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
        }
    }
}

/// Both halves of the builtin vocabulary in GGUF form: `(tokenizer.ggml.tokens, tokenizer.ggml.merges)`.
/// For writers of demo/synthetic GGUF files that must carry the real tokenizer.
pub fn builtin_vocab() -> (Vec<String>, Vec<String>) {
    unimplemented!()
}

/// Length of the longest prefix of `bytes` that does not end inside an incomplete UTF-8 sequence
/// (spec §4.12 UTF-8 hold-back). Bytes that can never become valid are not held.
pub fn utf8_stream_safe_len(bytes: &[u8]) -> usize {
    unimplemented!()
}

/// Turns token ids into text as they are sampled, never emitting a split multi-byte character
/// (spec §1.7, §4.12): bytes of an incomplete trailing UTF-8 sequence are held until completed.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the bytes that are now safe to emit (complete UTF-8 characters, plus
    /// any bytes that can never become valid UTF-8). The slice is valid until the next call.
    pub fn push(&mut self, id: u32) -> &[u8] {
        unimplemented!()
    }

    /// Like [`StreamDecoder::push`] but appends the emitted text to `out`, replacing invalid bytes
    /// with U+FFFD.
    pub fn push_str(&mut self, id: u32, out: &mut String) {
        unimplemented!()
    }

    /// Bytes currently held back.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// End of stream: returns whatever is held, as-is (may be invalid UTF-8, §4.12 final flush).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}
