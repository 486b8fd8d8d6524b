//! The session payload (spec/model.md §4.3, "DSV4" version 1): a session's tokens, next-token
//! logits and KV state as little-endian bytes, in logical (backend-neutral) order.
//!
//! Written with the CPU raw-window convention, raw ring capacity = raw window = `min(n_swa, ctx)`
//! (header words 4 and 5), so a snapshot taken on either backend restores on either: rows are stored
//! oldest first, and a backend re-spreads them into its own ring at load.

use std::io::{Read, Write};

use ds4_model::{AttnKind, CompressorFrontier, Config, KvSnapshot, LayerKvSnapshot};

/// "DSV4" as a little-endian u32.
pub const PAYLOAD_MAGIC: u32 = 0x3456_5344;
/// The payload version written and read (the original's version 1 layout).
pub const PAYLOAD_VERSION: u32 = 1;
/// 13 header words.
pub const PAYLOAD_HEADER_BYTES: u64 = 13 * 4;

/// Why a payload could not be written or restored. Messages follow spec/server.md §5.4's load errors.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a session payload (magic {0:#010x})")]
    BadMagic(u32),
    #[error("unsupported session payload version {0}")]
    UnsupportedVersion(u32),
    #[error("KV checkpoint does not fit current context: saved ctx {saved_ctx}, {n_tokens} tokens, current ctx {ctx}")]
    DoesNotFitContext {
        saved_ctx: u64,
        n_tokens: u64,
        ctx: u64,
    },
    #[error(
        "KV checkpoint has a different DS4 layout: {field} is {saved}, this model has {current}"
    )]
    DifferentLayout {
        field: &'static str,
        saved: u64,
        current: u64,
    },
    #[error("KV checkpoint graph chunk layout does not match current runtime: {field} is {saved}, runtime has {current}")]
    ChunkLayout {
        field: &'static str,
        saved: u64,
        current: u64,
    },
    #[error("KV checkpoint raw ring layout does not match current context: {0}")]
    RawRing(String),
    #[error(
        "KV checkpoint compressed cache is larger than current context: cap {saved} > {current}"
    )]
    CompressedTooLarge { saved: u64, current: u64 },
    #[error("KV checkpoint layer {il}: {what} count {count} exceeds its capacity {cap}")]
    BadRowCount {
        il: usize,
        what: &'static str,
        count: u64,
        cap: u64,
    },
    #[error("truncated session payload: {what} needs {need} bytes, {left} left")]
    Truncated {
        what: &'static str,
        need: u64,
        left: u64,
    },
    #[error("session payload has {0} trailing bytes")]
    TrailingBytes(u64),
    /// The state handed to the encoder does not match the config (a backend bug, not bad input).
    #[error("session state does not match the model: {0}")]
    BadState(String),
    #[error("I/O error in session payload: {0}")]
    Io(#[from] std::io::Error),
}

/// What a payload holds once decoded: the checkpoint tokens, the logits after them, the KV state.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    /// The checkpoint token list (`kv.n_past` tokens).
    pub tokens: Vec<u32>,
    /// Next-token logits after the last token (`n_vocab`).
    pub logits: Vec<f32>,
    /// Per-layer KV state in logical order.
    pub kv: KvSnapshot,
}

/// The runtime a payload is written for or restored into: the model shape, the context size and
/// the prefill chunk cap (spec §4.3 word 3: 2048 when ctx > 2048, else ctx).
#[derive(Debug, Clone, Copy)]
pub struct Runtime<'a> {
    /// The model shape.
    pub cfg: &'a Config,
    /// Context size of the session.
    pub ctx: usize,
    /// Prefill chunk cap of the backend's graph (must match between save and load).
    pub prefill_cap: usize,
}

impl Runtime<'_> {
    /// Raw rows kept per layer: the CPU convention, ring capacity = window = `min(n_swa, ctx)`.
    pub fn raw_window(&self) -> u64 {
        self.cfg.n_swa.min(self.ctx) as u64
    }
    /// Header word 6: `ctx/4 + 2`, the largest compressed capacity of any layer (R >= 4).
    pub fn comp_cap(&self) -> u64 {
        self.ctx as u64 / 4 + 2
    }
    /// Row capacity of a compressed layer of ratio `r`: `ctx/r + 2` (spec §4.1).
    fn layer_cap(&self, kind: AttnKind) -> u64 {
        match kind.ratio() {
            0 => 0,
            r => self.ctx as u64 / r as u64 + 2,
        }
    }
    /// `(rows, width)` of a layer's attention compressor frontier: `coff·R × coff·head_dim`.
    fn attn_frontier(&self, kind: AttnKind) -> usize {
        kind.coff() * kind.ratio() * kind.coff() * self.cfg.head_dim
    }
    /// Indexer frontier elements: `coff·R × coff·idx_head_dim` (8 × 256 for R = 4).
    fn index_frontier(&self, kind: AttnKind) -> usize {
        kind.coff() * kind.ratio() * kind.coff() * self.cfg.idx_head_dim
    }
}

// ---- encoding -----------------------------------------------------------------------------------

/// Checks `kv` against the runtime and returns `(n_comp, n_index_comp)` per layer.
fn check_state(
    rt: &Runtime,
    tokens: &[u32],
    logits: &[f32],
    kv: &KvSnapshot,
) -> Result<(Vec<u32>, Vec<u32>), PayloadError> {
    let cfg = rt.cfg;
    let bad = |m: String| Err(PayloadError::BadState(m));
    let n = tokens.len() as u64;
    if n == 0 || n >= rt.ctx as u64 {
        return Err(PayloadError::DoesNotFitContext {
            saved_ctx: rt.ctx as u64,
            n_tokens: n,
            ctx: rt.ctx as u64,
        });
    }
    if kv.n_past != tokens.len() {
        return bad(format!(
            "snapshot holds {} positions, {} tokens given",
            kv.n_past,
            tokens.len()
        ));
    }
    if logits.len() != cfg.n_vocab {
        return bad(format!(
            "{} logits for a {}-token vocabulary",
            logits.len(),
            cfg.n_vocab
        ));
    }
    if kv.layers.len() != cfg.n_layer || cfg.attn_kinds.len() != cfg.n_layer {
        return bad(format!(
            "{} layers in the snapshot, {} in the model",
            kv.layers.len(),
            cfg.n_layer
        ));
    }
    let raw_live = n.min(rt.raw_window()) as usize;
    let (mut n_comp, mut n_index) = (
        Vec::with_capacity(cfg.n_layer),
        Vec::with_capacity(cfg.n_layer),
    );
    for (il, (l, &kind)) in kv.layers.iter().zip(&cfg.attn_kinds).enumerate() {
        if l.raw.len() != raw_live * cfg.head_dim {
            return bad(format!(
                "layer {il}: {} raw values, want {raw_live} rows of {}",
                l.raw.len(),
                cfg.head_dim
            ));
        }
        let rows = |v: &[f32], width: usize, what: &str| -> Result<u32, PayloadError> {
            if !v.len().is_multiple_of(width) {
                return Err(PayloadError::BadState(format!(
                    "layer {il}: {what} has {} values, not rows of {width}",
                    v.len()
                )));
            }
            let r = (v.len() / width) as u64;
            let cap = rt.layer_cap(kind);
            if r > cap {
                return Err(PayloadError::BadState(format!(
                    "layer {il}: {r} {what} rows exceed the capacity {cap}"
                )));
            }
            Ok(r as u32)
        };
        let frontier =
            |f: &Option<CompressorFrontier>, want: usize, what: &str| -> Result<(), PayloadError> {
                match f {
                    Some(f) if f.kv.len() == want && f.score.len() == want => Ok(()),
                    Some(f) => Err(PayloadError::BadState(format!(
                        "layer {il}: {what} frontier has {}/{} values, want {want}",
                        f.kv.len(),
                        f.score.len()
                    ))),
                    None if want == 0 => Ok(()),
                    None => Err(PayloadError::BadState(format!(
                        "layer {il}: {what} frontier missing"
                    ))),
                }
            };
        let extra = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(PayloadError::BadState(format!(
                    "layer {il}: unexpected {what} for {kind:?}"
                )))
            }
        };
        if kind.ratio() == 0 {
            extra(
                l.attn_comp.is_empty() && l.attn_frontier.is_none(),
                "compressed rows",
            )?;
            n_comp.push(0);
        } else {
            n_comp.push(rows(&l.attn_comp, cfg.head_dim, "compressed")?);
            frontier(
                &l.attn_frontier,
                rt.attn_frontier(kind),
                "attention compressor",
            )?;
        }
        if kind.has_indexer() {
            n_index.push(rows(&l.index_comp, cfg.idx_head_dim, "indexer")?);
            frontier(
                &l.index_frontier,
                rt.index_frontier(kind),
                "indexer compressor",
            )?;
        } else {
            extra(
                l.index_comp.is_empty() && l.index_frontier.is_none(),
                "indexer rows",
            )?;
            n_index.push(0);
        }
    }
    Ok((n_comp, n_index))
}

/// Bytes [`write_payload`] will write for this state (after the same checks).
pub fn payload_len(
    rt: &Runtime,
    tokens: &[u32],
    logits: &[f32],
    kv: &KvSnapshot,
) -> Result<u64, PayloadError> {
    check_state(rt, tokens, logits, kv)?;
    Ok(payload_len_unchecked(tokens, logits, kv))
}

fn payload_len_unchecked(tokens: &[u32], logits: &[f32], kv: &KvSnapshot) -> u64 {
    let floats: usize = kv
        .layers
        .iter()
        .map(|l| {
            let f = |f: &Option<CompressorFrontier>| {
                f.as_ref().map_or(0, |f| f.kv.len() + f.score.len())
            };
            l.raw.len()
                + l.attn_comp.len()
                + f(&l.attn_frontier)
                + l.index_comp.len()
                + f(&l.index_frontier)
        })
        .sum();
    PAYLOAD_HEADER_BYTES + 4 * (tokens.len() + logits.len() + 2 * kv.layers.len() + floats) as u64
}

/// Streams the payload of spec/model.md §4.3 to `w`; returns the bytes written.
pub fn write_payload(
    w: &mut impl Write,
    rt: &Runtime,
    tokens: &[u32],
    logits: &[f32],
    kv: &KvSnapshot,
) -> Result<u64, PayloadError> {
    let (n_comp, n_index) = check_state(rt, tokens, logits, kv)?;
    let cfg = rt.cfg;
    let n = tokens.len() as u64;
    let raw_window = rt.raw_window();
    let header: [u64; 13] = [
        PAYLOAD_MAGIC as u64,
        PAYLOAD_VERSION as u64,
        rt.ctx as u64,
        rt.prefill_cap as u64,
        raw_window, // ring capacity: the CPU convention, equal to the window
        raw_window,
        rt.comp_cap(),
        n,
        cfg.n_layer as u64,
        cfg.head_dim as u64,
        cfg.idx_head_dim as u64,
        cfg.n_vocab as u64,
        n.min(raw_window),
    ];
    let words: Vec<u32> = header.iter().map(|&x| x as u32).collect();
    put_u32s(w, &words)?;
    put_u32s(w, tokens)?;
    put_f32s(w, logits)?;
    put_u32s(w, &n_comp)?;
    put_u32s(w, &n_index)?;
    for l in &kv.layers {
        put_f32s(w, &l.raw)?;
        if let Some(f) = &l.attn_frontier {
            put_f32s(w, &l.attn_comp)?;
            put_f32s(w, &f.kv)?;
            put_f32s(w, &f.score)?;
        }
        if let Some(f) = &l.index_frontier {
            put_f32s(w, &l.index_comp)?;
            put_f32s(w, &f.kv)?;
            put_f32s(w, &f.score)?;
        }
    }
    Ok(payload_len_unchecked(tokens, logits, kv))
}

/// The payload as one buffer (tests and small states; files stream with [`write_payload`]).
pub fn encode_payload(
    rt: &Runtime,
    tokens: &[u32],
    logits: &[f32],
    kv: &KvSnapshot,
) -> Result<Vec<u8>, PayloadError> {
    let mut out = Vec::with_capacity(payload_len(rt, tokens, logits, kv)? as usize);
    write_payload(&mut out, rt, tokens, logits, kv)?;
    Ok(out)
}

/// Writes in pieces of at most this many values, converting to little endian on the way.
const CHUNK: usize = 1 << 16;

fn put_u32s(w: &mut impl Write, v: &[u32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        return w.write_all(bytemuck::cast_slice(v));
    }
    let mut buf = Vec::with_capacity(CHUNK.min(v.len()) * 4);
    for c in v.chunks(CHUNK) {
        buf.clear();
        buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

fn put_f32s(w: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        return w.write_all(bytemuck::cast_slice(v));
    }
    let mut buf = Vec::with_capacity(CHUNK.min(v.len()) * 4);
    for c in v.chunks(CHUNK) {
        buf.clear();
        buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

// ---- decoding -----------------------------------------------------------------------------------

/// A reader that never reads past a declared length and checksums what it reads (CRC-32C), so
/// every allocation is checked against bytes that really exist before it is made.
pub(crate) struct Bounded<R> {
    inner: R,
    left: u64,
    crc: u32,
}

impl<R: Read> Bounded<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Bounded {
            inner,
            left: len,
            crc: 0,
        }
    }

    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }

    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    fn need(&self, what: &'static str, n_values: u64) -> Result<usize, PayloadError> {
        let need = n_values.saturating_mul(4);
        if need > self.left {
            return Err(PayloadError::Truncated {
                what,
                need,
                left: self.left,
            });
        }
        Ok(n_values as usize)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), PayloadError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => PayloadError::Truncated {
                what: "file data",
                need: buf.len() as u64,
                left: 0,
            },
            _ => PayloadError::Io(e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// Reads raw bytes (key text, tool map) under the same length bound.
    pub(crate) fn bytes(&mut self, what: &'static str, n: u64) -> Result<Vec<u8>, PayloadError> {
        if n > self.left {
            return Err(PayloadError::Truncated {
                what,
                need: n,
                left: self.left,
            });
        }
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v)?;
        Ok(v)
    }

    pub(crate) fn u32s(&mut self, what: &'static str, n: u64) -> Result<Vec<u32>, PayloadError> {
        let n = self.need(what, n)?;
        let mut v = vec![0u32; n];
        self.fill(bytemuck::cast_slice_mut(&mut v))?;
        for x in &mut v {
            *x = u32::from_le(*x);
        }
        Ok(v)
    }

    pub(crate) fn f32s(&mut self, what: &'static str, n: u64) -> Result<Vec<f32>, PayloadError> {
        let n = self.need(what, n)?;
        let mut v = vec![0f32; n];
        self.fill(bytemuck::cast_slice_mut(&mut v))?;
        if cfg!(target_endian = "big") {
            for x in &mut v {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
        Ok(v)
    }
}

/// Decodes a payload held in memory, with every check of spec/model.md §4.3.
pub fn decode_payload(rt: &Runtime, bytes: &[u8]) -> Result<SessionState, PayloadError> {
    let mut src = Bounded::new(bytes, bytes.len() as u64);
    let state = read_payload_from(&mut src, rt)?;
    match src.left() {
        0 => Ok(state),
        n => Err(PayloadError::TrailingBytes(n)),
    }
}

/// Reads exactly `len` payload bytes from `r` (ordinary reads, straight into the result vectors)
/// and returns the state and the CRC-32C of those bytes.
pub fn read_payload(
    r: &mut impl Read,
    len: u64,
    rt: &Runtime,
) -> Result<(SessionState, u32), PayloadError> {
    let mut src = Bounded::new(r, len);
    let state = read_payload_from(&mut src, rt)?;
    match src.left() {
        0 => Ok((state, src.crc())),
        n => Err(PayloadError::TrailingBytes(n)),
    }
}

pub(crate) fn read_payload_from<R: Read>(
    src: &mut Bounded<R>,
    rt: &Runtime,
) -> Result<SessionState, PayloadError> {
    let cfg = rt.cfg;
    let h: Vec<u64> = src.u32s("header", 13)?.into_iter().map(u64::from).collect();
    if h[0] != PAYLOAD_MAGIC as u64 {
        return Err(PayloadError::BadMagic(h[0] as u32));
    }
    if h[1] != PAYLOAD_VERSION as u64 {
        return Err(PayloadError::UnsupportedVersion(h[1] as u32));
    }
    let (saved_ctx, n) = (h[2], h[7]);
    let ctx = rt.ctx as u64;
    if saved_ctx > ctx || n >= ctx || n == 0 {
        return Err(PayloadError::DoesNotFitContext {
            saved_ctx,
            n_tokens: n,
            ctx,
        });
    }
    for (field, saved, current) in [
        ("layer count", h[8], cfg.n_layer),
        ("head dim", h[9], cfg.head_dim),
        ("indexer head dim", h[10], cfg.idx_head_dim),
        ("vocabulary size", h[11], cfg.n_vocab),
    ] {
        if saved != current as u64 {
            return Err(PayloadError::DifferentLayout {
                field,
                saved,
                current: current as u64,
            });
        }
    }
    let raw_window = rt.raw_window();
    for (field, saved, current) in [
        ("prefill chunk", h[3], rt.prefill_cap as u64),
        ("raw window", h[5], raw_window),
    ] {
        if saved != current {
            return Err(PayloadError::ChunkLayout {
                field,
                saved,
                current,
            });
        }
    }
    // QUIRK(spec/model.md §4.3): GPU writers store their larger ring capacity in word 4; the rows
    // are in logical order either way, so any capacity in [window, saved ctx] is accepted.
    if h[4] < h[5] || h[4] > saved_ctx {
        return Err(PayloadError::RawRing(format!(
            "ring capacity {} outside [{}, {saved_ctx}]",
            h[4], h[5]
        )));
    }
    let raw_live = n.min(raw_window);
    if h[12] != raw_live {
        return Err(PayloadError::RawRing(format!(
            "{} raw rows stored, expected {raw_live}",
            h[12]
        )));
    }
    if h[6] > rt.comp_cap() {
        return Err(PayloadError::CompressedTooLarge {
            saved: h[6],
            current: rt.comp_cap(),
        });
    }

    let tokens = src.u32s("tokens", n)?;
    let logits = src.f32s("logits", cfg.n_vocab as u64)?;
    let n_comp = src.u32s("compressed row counts", cfg.n_layer as u64)?;
    let n_index = src.u32s("indexer row counts", cfg.n_layer as u64)?;
    // Every count is checked before any layer is read, so a bad count fails before large reads.
    for (il, &kind) in cfg.attn_kinds.iter().enumerate() {
        let cap = rt.layer_cap(kind).min(h[6]);
        let index_cap = if kind.has_indexer() { cap } else { 0 };
        for (what, count, cap) in [
            ("compressed row", n_comp[il], cap),
            ("indexer row", n_index[il], index_cap),
        ] {
            if count as u64 > cap {
                return Err(PayloadError::BadRowCount {
                    il,
                    what,
                    count: count as u64,
                    cap,
                });
            }
        }
    }
    let (hd, ihd) = (cfg.head_dim as u64, cfg.idx_head_dim as u64);
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for (il, &kind) in cfg.attn_kinds.iter().enumerate() {
        let raw = src.f32s("raw rows", raw_live * hd)?;
        let mut layer = LayerKvSnapshot {
            raw,
            attn_comp: Vec::new(),
            attn_frontier: None,
            index_comp: Vec::new(),
            index_frontier: None,
        };
        if kind.ratio() != 0 {
            layer.attn_comp = src.f32s("compressed rows", n_comp[il] as u64 * hd)?;
            let m = rt.attn_frontier(kind) as u64;
            layer.attn_frontier = Some(CompressorFrontier {
                kv: src.f32s("compressor state", m)?,
                score: src.f32s("compressor score", m)?,
            });
        }
        if kind.has_indexer() {
            layer.index_comp = src.f32s("indexer rows", n_index[il] as u64 * ihd)?;
            let m = rt.index_frontier(kind) as u64;
            layer.index_frontier = Some(CompressorFrontier {
                kv: src.f32s("indexer state", m)?,
                score: src.f32s("indexer score", m)?,
            });
        }
        layers.push(layer);
    }
    Ok(SessionState {
        tokens,
        logits,
        kv: KvSnapshot {
            n_past: n as usize,
            layers,
        },
    })
}
