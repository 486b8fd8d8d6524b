//! spec/server.md §1: GPT-2 style byte-level BPE with the JoyAI-like pre-tokenizer of ds4.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Read;
use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::pretok::pieces;
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
        match self {
            SpecialKind::Bos => "<｜begin▁of▁sentence｜>",
            SpecialKind::Eos => "<｜end▁of▁sentence｜>",
            SpecialKind::User => "<｜User｜>",
            SpecialKind::Assistant => "<｜Assistant｜>",
            SpecialKind::Think => "<think>",
            SpecialKind::ThinkEnd => "</think>",
            SpecialKind::Dsml => "｜DSML｜",
        }
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
        match kind {
            SpecialKind::Bos => self.bos,
            SpecialKind::Eos => self.eos,
            SpecialKind::User => self.user,
            SpecialKind::Assistant => self.assistant,
            SpecialKind::Think => self.think,
            SpecialKind::ThinkEnd => self.think_end,
            SpecialKind::Dsml => self.dsml,
        }
    }

    /// Which special `id` is, if any.
    pub fn kind_of(&self, id: u32) -> Option<SpecialKind> {
        SpecialKind::ALL.into_iter().find(|&k| self.id(k) == id)
    }
}

// ---- Vocabulary -------------------------------------------------------------------------------

/// BPE symbol id. Symbols that are vocabulary strings use their token id; strings that occur only
/// in merges (never with the real vocabulary) get ids from `n_vocab` up and take the byte fallback.
type Sym = u32;

/// Rank and result of merging one adjacent symbol pair.
#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    merged: Sym,
}

/// Pair key `(left << 32) | right`.
#[inline]
fn pair_key(left: Sym, right: Sym) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A loaded vocabulary: token strings, merge ranks, and the resolved specials.
///
/// Immutable after construction and `Sync`; share one per process (see [`Tokenizer::builtin`]).
pub struct Tokenizer {
    tokens: Vec<String>,
    token_ids: FxHashMap<String, u32>,
    /// Detokenized bytes of every token (spec §1.7), `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Strings of symbols `>= n_vocab` (merge-only strings).
    extra_syms: Vec<String>,
    merges: FxHashMap<u64, Merge>,
    /// Initial symbol of every input byte (its §1.2 code point as a one-character string).
    byte_sym: [Sym; 256],
    special: SpecialTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab())
            .field("n_merges", &self.merges.len())
            .field("special", &self.special)
            .finish()
    }
}

/// spec §1.2: bytes 33..126, 161..172, 174..255 map to themselves, the other 68 to 256, 257, ...
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let keep = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let cp = if keep {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        // Every value is either a byte or 256..=323, all valid scalar values.
        table[b as usize] = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

fn byte_to_char(b: u8) -> char {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(byte_to_char_table)[b as usize]
}

/// Inverse of §1.2 for one code point; `None` for code points with no byte.
fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        33..=126 | 161..=172 | 174..=255 => Some(cp as u8),
        256..=323 => {
            let k = (cp - 256) as usize;
            (0..=255u8)
                .filter(|b| !matches!(b, 33..=126 | 161..=172 | 174..=255))
                .nth(k)
        }
        _ => None,
    }
}

/// spec §1.7: verbatim if the string contains `｜`, else the inverse byte map.
fn detokenize(token: &str, out: &mut Vec<u8>) {
    if token.contains('｜') {
        out.extend_from_slice(token.as_bytes());
    } else {
        out.extend(token.chars().filter_map(char_to_byte));
    }
}

static BUILTIN_VOCAB_GZ: &[u8] = include_bytes!("../data/vocab.json.gz");
static BUILTIN_MERGES_GZ: &[u8] = include_bytes!("../data/merges.txt.gz");

fn gunzip(data: &[u8], key: &'static str) -> Result<String, Error> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut text)
        .map_err(|e| Error::BadVocab {
            key,
            reason: e.to_string(),
        })?;
    Ok(text)
}

fn load_builtin() -> Result<(Vec<String>, Vec<String>), Error> {
    let key = "data/vocab.json.gz";
    let tokens: Vec<String> =
        serde_json::from_str(&gunzip(BUILTIN_VOCAB_GZ, key)?).map_err(|e| Error::BadVocab {
            key,
            reason: e.to_string(),
        })?;
    let merges = gunzip(BUILTIN_MERGES_GZ, "data/merges.txt.gz")?
        .split('\n')
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((tokens, merges))
}

/// Both halves of the builtin vocabulary in GGUF form: `(tokenizer.ggml.tokens, tokenizer.ggml.merges)`.
/// For writers of demo/synthetic GGUF files that must carry the real tokenizer.
pub fn builtin_vocab() -> (Vec<String>, Vec<String>) {
    let tok = Tokenizer::builtin();
    let merges = builtin_merges().to_vec();
    (tok.tokens.clone(), merges)
}

fn builtin_merges() -> &'static [String] {
    static MERGES: OnceLock<Vec<String>> = OnceLock::new();
    MERGES.get_or_init(|| {
        load_builtin()
            .map(|(_, m)| m)
            .expect("invariant: the embedded merges file is valid (tested)")
    })
}

fn string_array(gguf: &ds4_gguf::GgufFile, key: &'static str) -> Result<Vec<String>, Error> {
    let value = gguf.get(key).ok_or(Error::BadVocab {
        key,
        reason: "missing".into(),
    })?;
    let (_, items) = value.as_array().ok_or(Error::BadVocab {
        key,
        reason: format!("expected an array of strings, got {}", value.type_desc()),
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_owned).ok_or(Error::BadVocab {
                key,
                reason: format!("element {i} is {}, not a string", v.type_desc()),
            })
        })
        .collect()
}

impl Tokenizer {
    /// Reads `tokenizer.ggml.tokens` and `tokenizer.ggml.merges` (spec §1.1); other tokenizer keys
    /// are ignored, as in the original. Fails if a key is missing or any of the 7 specials is absent.
    pub fn from_gguf(gguf: &ds4_gguf::GgufFile) -> Result<Tokenizer, Error> {
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let merges = string_array(gguf, "tokenizer.ggml.merges")?;
        Tokenizer::from_vocab(tokens, merges)
    }

    /// Builds from token strings (index = id, GGUF byte-level spelling) and merges (`"LEFT RIGHT"`,
    /// index = rank). Duplicates: the later token id / later merge rank wins (spec §1.1).
    pub fn from_vocab(tokens: Vec<String>, merges: Vec<String>) -> Result<Tokenizer, Error> {
        let n_vocab = u32::try_from(tokens.len()).map_err(|_| Error::BadVocab {
            key: "tokenizer.ggml.tokens",
            reason: format!("{} tokens do not fit u32 ids", tokens.len()),
        })?;
        let mut token_ids = FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        for (id, t) in tokens.iter().enumerate() {
            token_ids.insert(t.clone(), id as u32);
        }
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for t in &tokens {
            detokenize(t, &mut bytes);
            offsets.push(bytes.len());
        }

        let mut extra: FxHashMap<String, Sym> = FxHashMap::default();
        let mut extra_syms = Vec::new();
        let mut intern = |s: &str| -> Sym {
            if let Some(&id) = token_ids.get(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra_syms.len() as u32;
            extra.insert(s.to_owned(), id);
            extra_syms.push(s.to_owned());
            id
        };

        let mut byte_sym = [0; 256];
        let mut buf = [0u8; 4];
        for b in 0..=255u8 {
            byte_sym[b as usize] = intern(byte_to_char(b).encode_utf8(&mut buf));
        }

        let mut merge_table = FxHashMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // Byte-level symbols never contain an ASCII space (0x20 maps to `Ġ`), so a merge
            // line with another space can never match a pair; skip it.
            let Some((left, right)) = m.split_once(' ') else {
                continue;
            };
            if left.is_empty() || right.is_empty() || right.contains(' ') {
                continue;
            }
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let key = pair_key(intern(left), intern(right));
            let merged = intern(&joined);
            merge_table.insert(
                key,
                Merge {
                    rank: rank as u32,
                    merged,
                },
            );
        }

        let find = |kind: SpecialKind| -> Result<u32, Error> {
            token_ids
                .get(kind.text())
                .copied()
                .ok_or(Error::MissingSpecial(kind.text()))
        };
        let special = SpecialTokens {
            bos: find(SpecialKind::Bos)?,
            eos: find(SpecialKind::Eos)?,
            user: find(SpecialKind::User)?,
            assistant: find(SpecialKind::Assistant)?,
            think: find(SpecialKind::Think)?,
            think_end: find(SpecialKind::ThinkEnd)?,
            dsml: find(SpecialKind::Dsml)?,
        };
        Ok(Tokenizer {
            tokens,
            token_ids,
            bytes,
            offsets,
            extra_syms,
            merges: merge_table,
            byte_sym,
            special,
        })
    }

    /// The real DeepSeek V4 vocabulary (129280 tokens, 127741 merges), embedded in the binary and
    /// built once per process on first use.
    pub fn builtin() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| {
            load_builtin()
                .and_then(|(tokens, merges)| Tokenizer::from_vocab(tokens, merges))
                .expect("invariant: the embedded vocabulary is valid (tested)")
        })
    }

    /// Vocabulary size (number of token strings).
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The resolved special ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Raw vocabulary string of `id` (GGUF spelling, e.g. `Ġworld`), as `--dump-tokens` prints it.
    /// `None` when out of range.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Id of an exact vocabulary string (later duplicate wins).
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.token_ids.get(s).copied()
    }

    /// Detokenized bytes of one token (spec §1.7): empty when out of range; the verbatim string when
    /// it contains `｜`; otherwise the inverse byte map. May be a partial UTF-8 sequence.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.tokens.len() {
            return &[];
        }
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Concatenated [`Tokenizer::token_bytes`] of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// Plain tokenization (spec §1.6 `tokenize_text`): pre-tokenize + BPE, no special recognition.
    /// Unlike the original, a `0x00` byte is an ordinary byte, not the end of input (§1.3).
    pub fn encode_text(&self, text: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_text_into(text, &mut out);
        out
    }

    /// Appends the plain tokenization of `text` to `out`.
    pub fn encode_text_into(&self, text: &[u8], out: &mut Vec<u32>) {
        let mut work = BpeWork::default();
        for piece in pieces(text) {
            self.bpe_piece(piece, &mut work, out);
        }
    }

    /// Rendered-chat tokenization (spec §1.6 `tokenize_rendered_chat`): the 7 specials are recognised
    /// anywhere in `text`. This is the original's behaviour on whole rendered prompts and what
    /// `--dump-tokens` shows; prefer [`Tokenizer::encode_segments`] for anything holding client text.
    pub fn encode_rendered(&self, text: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut span = 0;
        let mut pos = 0;
        while pos < text.len() {
            match special_at(text, pos) {
                Some(kind) => {
                    self.encode_text_into(&text[span..pos], &mut out);
                    out.push(self.special.id(kind));
                    pos += kind.text().len();
                    span = pos;
                }
                None => pos += 1,
            }
        }
        self.encode_text_into(&text[span..], &mut out);
        out
    }

    /// Structural tokenization of a rendered prompt: each [`Segment::Special`] becomes its id and
    /// each maximal run of [`Segment::Text`] is plain-tokenized, so client text can never produce a
    /// control token. Equal to `encode_rendered(r.text())` whenever no text segment contains a
    /// special spelling.
    pub fn encode_segments(&self, r: &Rendered) -> Vec<u32> {
        let mut out = Vec::new();
        let mut run = String::new();
        for seg in &r.segments {
            match seg {
                Segment::Text(t) => run.push_str(t),
                Segment::Special(kind) => {
                    self.encode_text_into(run.as_bytes(), &mut out);
                    run.clear();
                    out.push(self.special.id(*kind));
                }
            }
        }
        self.encode_text_into(run.as_bytes(), &mut out);
        out
    }

    /// A fresh incremental detokenizer over this vocabulary.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
            ready: Vec::new(),
        }
    }

    fn sym_str(&self, sym: Sym) -> &str {
        let i = sym as usize;
        match self.tokens.get(i) {
            Some(t) => t,
            None => &self.extra_syms[i - self.tokens.len()],
        }
    }

    /// spec §1.4: merge the lowest-ranked adjacent pair (leftmost on ties) until none has a rank.
    fn bpe_piece(&self, piece: &[u8], work: &mut BpeWork, out: &mut Vec<u32>) {
        let syms = &mut work.syms;
        syms.clear();
        syms.extend(piece.iter().map(|&b| self.byte_sym[b as usize]));
        if syms.len() <= HEAP_MIN_SYMS {
            self.merge_scan(syms);
        } else {
            self.merge_heap(work);
        }
        let n_vocab = self.tokens.len() as u32;
        for &sym in &work.syms {
            if sym < n_vocab {
                out.push(sym);
            } else {
                // spec §1.4 fallback: per character of the symbol, emit it if it is a token.
                let mut buf = [0u8; 4];
                for c in self.sym_str(sym).chars() {
                    if let Some(&id) = self.token_ids.get(&*c.encode_utf8(&mut buf)) {
                        out.push(id);
                    }
                }
            }
        }
    }

    /// Quadratic scan: fastest for the short pieces that make up ordinary text.
    fn merge_scan(&self, syms: &mut Vec<Sym>) {
        loop {
            let mut best: Option<(u32, usize, Sym)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(m) = self.merges.get(&pair_key(syms[i], syms[i + 1])) {
                    if best.is_none_or(|(r, _, _)| m.rank < r) {
                        best = Some((m.rank, i, m.merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { return };
            syms[i] = merged;
            syms.remove(i + 1);
        }
    }

    /// Heap + linked list: O(n log n) for long pieces (a page of text without spaces, long
    /// whitespace runs), which the scan would make quadratic. Same result as [`Self::merge_scan`]:
    /// ties on rank pop the smallest start index, which is the leftmost pair.
    fn merge_heap(&self, work: &mut BpeWork) {
        let syms = &mut work.syms;
        let n = syms.len();
        let next = &mut work.next;
        let prev = &mut work.prev;
        next.clear();
        prev.clear();
        next.extend((1..=n).map(|i| i as u32));
        prev.extend((0..n).map(|i| (i as u32).wrapping_sub(1)));
        let alive = &mut work.alive;
        alive.clear();
        alive.resize(n, true);
        let heap = &mut work.heap;
        heap.clear();
        for i in 0..n - 1 {
            if let Some(m) = self.merges.get(&pair_key(syms[i], syms[i + 1])) {
                heap.push(Reverse((m.rank, i as u32, syms[i], syms[i + 1])));
            }
        }
        while let Some(Reverse((rank, i, left, right))) = heap.pop() {
            let i = i as usize;
            let j = next[i] as usize;
            // Stale entries: a neighbour merged since this pair was queued.
            if !alive[i] || j >= n || syms[i] != left || syms[j] != right {
                continue;
            }
            let Some(m) = self.merges.get(&pair_key(left, right)) else {
                continue;
            };
            if m.rank != rank {
                continue;
            }
            syms[i] = m.merged;
            alive[j] = false;
            let k = next[j] as usize;
            next[i] = k as u32;
            if k < n {
                prev[k] = i as u32;
                if let Some(m2) = self.merges.get(&pair_key(syms[i], syms[k])) {
                    heap.push(Reverse((m2.rank, i as u32, syms[i], syms[k])));
                }
            }
            let p = prev[i];
            if p != u32::MAX {
                let p = p as usize;
                if let Some(m2) = self.merges.get(&pair_key(syms[p], syms[i])) {
                    heap.push(Reverse((m2.rank, p as u32, syms[p], syms[i])));
                }
            }
        }
        let mut w = 0;
        for r in 0..n {
            if alive[r] {
                syms[w] = syms[r];
                w += 1;
            }
        }
        syms.truncate(w);
    }
}

/// Pieces up to this many bytes use the quadratic scan.
const HEAP_MIN_SYMS: usize = 48;

/// Reused scratch of one encode call.
#[derive(Default)]
struct BpeWork {
    syms: Vec<Sym>,
    next: Vec<u32>,
    prev: Vec<u32>,
    alive: Vec<bool>,
    heap: BinaryHeap<Reverse<(u32, u32, Sym, Sym)>>,
}

/// The special whose spelling starts at `pos`, testing in spec §1.6 order.
#[inline]
fn special_at(text: &[u8], pos: usize) -> Option<SpecialKind> {
    // Every spelling starts with `<` or with `｜` (EF BD 9C): cheap rejection first.
    let c = text[pos];
    if c != b'<' && c != 0xef {
        return None;
    }
    SpecialKind::ALL
        .into_iter()
        .find(|k| text[pos..].starts_with(k.text().as_bytes()))
}

/// Splits `text` at special spellings (trusted template text only).
pub(crate) fn split_specials(text: &str) -> Vec<Segment> {
    let bytes = text.as_bytes();
    let mut segs = Vec::new();
    let mut span = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        match special_at(bytes, pos) {
            Some(kind) => {
                if span < pos {
                    segs.push(Segment::Text(text[span..pos].to_owned()));
                }
                segs.push(Segment::Special(kind));
                pos += kind.text().len();
                span = pos;
            }
            None => pos += 1,
        }
    }
    if span < bytes.len() {
        segs.push(Segment::Text(text[span..].to_owned()));
    }
    segs
}

// ---- Streaming detokenization -----------------------------------------------------------------

/// Length of the longest prefix of `bytes` that does not end inside an incomplete UTF-8 sequence
/// (spec §4.12 UTF-8 hold-back). Bytes that can never become valid are not held.
pub fn utf8_stream_safe_len(bytes: &[u8]) -> usize {
    let n = bytes.len();
    // An incomplete sequence has at most 3 bytes: look for its lead byte among the last three.
    for back in 1..=3.min(n) {
        let i = n - back;
        let c = bytes[i];
        if c & 0xc0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = match c {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return n, // ASCII or a byte that never starts a sequence
        };
        if back >= need {
            return n;
        }
        // Only hold if what follows could still complete a valid sequence.
        return if std::str::from_utf8(&bytes[i..]).is_err() && utf8_prefix_is_viable(&bytes[i..]) {
            i
        } else {
            n
        };
    }
    n
}

/// Whether `partial` (a lead byte in C2..F4 plus continuation bytes, shorter than its sequence)
/// can still be completed into a valid character. Only the second byte is constrained beyond
/// "is a continuation byte" (E0, ED, F0, F4), so padding with 0x80 decides it.
fn utf8_prefix_is_viable(partial: &[u8]) -> bool {
    if partial.len() < 2 {
        return true;
    }
    let need = if partial[0] >= 0xf0 { 4 } else { 3 };
    let mut buf = [0x80u8; 4];
    buf[..partial.len()].copy_from_slice(partial);
    std::str::from_utf8(&buf[..need]).is_ok()
}

/// Turns token ids into text as they are sampled, never emitting a split multi-byte character
/// (spec §1.7, §4.12): bytes of an incomplete trailing UTF-8 sequence are held until completed.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    pending: Vec<u8>,
    ready: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the bytes that are now safe to emit (complete UTF-8 characters, plus
    /// any bytes that can never become valid UTF-8). The slice is valid until the next call.
    pub fn push(&mut self, id: u32) -> &[u8] {
        self.pending.extend_from_slice(self.tok.token_bytes(id));
        let safe = utf8_stream_safe_len(&self.pending);
        self.ready.clear();
        self.ready.extend(self.pending.drain(..safe));
        &self.ready
    }

    /// Like [`StreamDecoder::push`] but appends the emitted text to `out`, replacing invalid bytes
    /// with U+FFFD.
    pub fn push_str(&mut self, id: u32, out: &mut String) {
        let ready = self.push(id);
        out.push_str(&String::from_utf8_lossy(ready));
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
