//! One checkpoint file, `<dir>/<sha1 of key text>.kv` (spec/server.md §5.4, with the differences the
//! crate doc lists): a fixed header, the key text, the session payload, an optional tool-id map.

use std::io::{Read, Write};

/// "KVC".
pub const KVC_MAGIC: [u8; 3] = *b"KVC";
/// Version 2: ours. Version 1 is the original's layout (no checksum, no model fingerprint); such
/// files are not listed, never deleted.
pub const KVC_VERSION: u8 = 2;
/// Fixed header bytes; the `u32` key-text length follows.
pub const HEADER_BYTES: usize = 56;
/// Header plus the key-text length: the smallest possible file.
pub const MIN_FILE_BYTES: u64 = HEADER_BYTES as u64 + 4;

/// Why the checkpoint was written (header byte 5; unknown values read as `Unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SaveReason {
    Unknown = 0,
    Cold = 1,
    Continued = 2,
    Evict = 3,
    Shutdown = 4,
    AgentSystem = 5,
    AgentSession = 6,
}

impl SaveReason {
    pub fn from_byte(b: u8) -> SaveReason {
        match b {
            1 => SaveReason::Cold,
            2 => SaveReason::Continued,
            3 => SaveReason::Evict,
            4 => SaveReason::Shutdown,
            5 => SaveReason::AgentSystem,
            6 => SaveReason::AgentSession,
            _ => SaveReason::Unknown,
        }
    }
}

/// What the key text is (header byte 6, bits 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The detokenized checkpoint tokens.
    TokenText,
    /// A Responses visible transcript (spec/server.md §5.3).
    ResponsesVisible,
    /// A thinking visible transcript.
    ThinkingVisible,
}

pub(crate) const FLAG_TOOL_MAP: u8 = 1;
const FLAG_RESPONSES: u8 = 2;
const FLAG_THINKING: u8 = 4;

impl KeyKind {
    fn flags(self) -> u8 {
        match self {
            KeyKind::TokenText => 0,
            KeyKind::ResponsesVisible => FLAG_RESPONSES,
            KeyKind::ThinkingVisible => FLAG_THINKING,
        }
    }
    fn from_flags(f: u8) -> KeyKind {
        if f & FLAG_RESPONSES != 0 {
            KeyKind::ResponsesVisible
        } else if f & FLAG_THINKING != 0 {
            KeyKind::ThinkingVisible
        } else {
            KeyKind::TokenText
        }
    }
}

/// The fixed header. Offsets: 0 magic, 3 version, 4 quant bits, 5 reason, 6 flags, 7 reserved,
/// 8 tokens, 12 hits, 16 ctx, 20 CRC-32C of key text + payload, 24 created, 32 last used,
/// 40 payload bytes, 48 model fingerprint; all little-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvcHeader {
    /// Routed-expert quant bits of the model that wrote it (2 or 4).
    pub quant_bits: u8,
    pub reason: SaveReason,
    pub key_kind: KeyKind,
    pub has_tool_map: bool,
    pub n_tokens: u32,
    pub hits: u32,
    /// Context size the snapshot was written for.
    pub ctx: u32,
    /// CRC-32C (Castagnoli) of the key text followed by the payload.
    pub crc: u32,
    /// Unix seconds.
    pub created: u64,
    pub last_used: u64,
    pub payload_bytes: u64,
    /// Identity of the model file (see [`crate::model_fingerprint`]).
    pub model: u64,
}

/// Why a header is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Not a KVC file at all, or too short to be one.
    NotKvc,
    /// A KVC file of another version: left alone.
    OtherVersion(u8),
    /// Ours, but a field is impossible (torn or corrupt).
    Invalid(&'static str),
}

impl KvcHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..3].copy_from_slice(&KVC_MAGIC);
        b[3] = KVC_VERSION;
        b[4] = self.quant_bits;
        b[5] = self.reason as u8;
        b[6] = self.key_kind.flags() | if self.has_tool_map { FLAG_TOOL_MAP } else { 0 };
        b[8..12].copy_from_slice(&self.n_tokens.to_le_bytes());
        b[12..16].copy_from_slice(&self.hits.to_le_bytes());
        b[16..20].copy_from_slice(&self.ctx.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b[24..32].copy_from_slice(&self.created.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_used.to_le_bytes());
        b[40..48].copy_from_slice(&self.payload_bytes.to_le_bytes());
        b[48..56].copy_from_slice(&self.model.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<KvcHeader, HeaderProblem> {
        if b.len() < HEADER_BYTES || b[0..3] != KVC_MAGIC {
            return Err(HeaderProblem::NotKvc);
        }
        if b[3] != KVC_VERSION {
            return Err(HeaderProblem::OtherVersion(b[3]));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let h = KvcHeader {
            quant_bits: b[4],
            reason: SaveReason::from_byte(b[5]),
            key_kind: KeyKind::from_flags(b[6]),
            has_tool_map: b[6] & FLAG_TOOL_MAP != 0,
            n_tokens: u32_at(8),
            hits: u32_at(12),
            ctx: u32_at(16),
            crc: u32_at(20),
            created: u64_at(24),
            last_used: u64_at(32),
            payload_bytes: u64_at(40),
            model: u64_at(48),
        };
        if h.quant_bits != 2 && h.quant_bits != 4 {
            return Err(HeaderProblem::Invalid("quant bits not 2 or 4"));
        }
        if h.n_tokens == 0 {
            return Err(HeaderProblem::Invalid("zero tokens"));
        }
        if h.n_tokens >= h.ctx {
            return Err(HeaderProblem::Invalid("token count not below the context"));
        }
        if b[6] & FLAG_RESPONSES != 0 && b[6] & FLAG_THINKING != 0 {
            return Err(HeaderProblem::Invalid("both visible-transcript flags set"));
        }
        Ok(h)
    }
}

/// One remembered tool call: a call id and the exact DSML block the model sampled for it
/// (spec/server.md §5.4, "KTM").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolMemory {
    pub id: String,
    pub dsml: String,
}

const KTM_MAGIC: [u8; 3] = *b"KTM";
const KTM_VERSION: u8 = 1;
/// spec/server.md §5.4 load limits.
const MAX_ID_BYTES: u32 = 256;
const MAX_DSML_BYTES: u32 = 512 << 20;
/// Most entries in one map: spec/server.md §5.4's "4 x max ids" for the default
/// `--tool-memory-max-ids` (100000). Reading allocates only for bytes that exist, so the bound is
/// about refusing nonsense counts, not memory.
pub const MAX_TOOL_ENTRIES: u32 = 4 * 100_000;

pub(crate) fn encode_tool_map(entries: &[ToolMemory]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&KTM_MAGIC);
    out.push(KTM_VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.id.len() as u32).to_le_bytes());
        out.extend_from_slice(&(e.dsml.len() as u32).to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(e.dsml.as_bytes());
    }
    out
}

/// Entries that cannot be written because the loader would refuse them.
pub(crate) fn check_tool_map(entries: &[ToolMemory]) -> Result<(), String> {
    if entries.len() as u64 > MAX_TOOL_ENTRIES as u64 {
        return Err(format!(
            "{} tool-map entries, at most {MAX_TOOL_ENTRIES}",
            entries.len()
        ));
    }
    for e in entries {
        if e.id.is_empty() || e.id.len() > MAX_ID_BYTES as usize {
            return Err(format!(
                "tool id of {} bytes (1..={MAX_ID_BYTES})",
                e.id.len()
            ));
        }
        if e.dsml.is_empty() || e.dsml.len() > MAX_DSML_BYTES as usize {
            return Err(format!(
                "DSML block of {} bytes for id {:?}",
                e.dsml.len(),
                e.id
            ));
        }
    }
    Ok(())
}

/// Reads a tool map of at most `len` bytes. As in the original, parsing stops at the first bad
/// entry and keeps what was read; nothing is allocated beyond the bytes that exist.
pub(crate) fn read_tool_map(r: &mut impl Read, len: u64) -> Vec<ToolMemory> {
    let mut left = len;
    let mut take = |n: u64| -> Option<Vec<u8>> {
        if n > left {
            return None;
        }
        let mut v = vec![0u8; n as usize];
        r.read_exact(&mut v).ok()?;
        left -= n;
        Some(v)
    };
    let mut out = Vec::new();
    let Some(head) = take(8) else { return out };
    if head[0..3] != KTM_MAGIC || head[3] != KTM_VERSION {
        return out;
    }
    let count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if count > MAX_TOOL_ENTRIES {
        return out;
    }
    for _ in 0..count {
        let Some(lens) = take(8) else { break };
        let id_len = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]);
        let dsml_len = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]);
        if !(1..=MAX_ID_BYTES).contains(&id_len) || !(1..=MAX_DSML_BYTES).contains(&dsml_len) {
            break;
        }
        let (Some(id), Some(dsml)) = (take(id_len as u64), take(dsml_len as u64)) else {
            break;
        };
        let (Ok(id), Ok(dsml)) = (String::from_utf8(id), String::from_utf8(dsml)) else {
            break;
        };
        out.push(ToolMemory { id, dsml });
    }
    out
}

/// `lowercase_hex(SHA1(key)) + ".kv"`.
pub fn file_name(key_text: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(key_text);
    let mut s = String::with_capacity(43);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(".kv");
    s
}

/// Whether `name` is `<40 lowercase hex>.kv`, the only names the store considers.
pub fn is_cache_file_name(name: &str) -> bool {
    name.len() == 43
        && name.ends_with(".kv")
        && name[..40]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes header, key text, payload (via `write_payload`), and tool map to `w`; returns the
/// header with its CRC and payload size filled in. The header is written first with a zero CRC; the
/// caller seeks back and rewrites it (`w` is usually a file).
pub(crate) fn write_body<W: Write>(
    w: &mut W,
    header: &KvcHeader,
    key_text: &[u8],
    tool_map: &[ToolMemory],
    write_payload: impl FnOnce(&mut CrcWriter<&mut W>) -> Result<u64, crate::PayloadError>,
) -> Result<KvcHeader, crate::PayloadError> {
    w.write_all(&header.encode())?;
    w.write_all(&(key_text.len() as u32).to_le_bytes())?;
    let mut cw = CrcWriter {
        inner: &mut *w,
        crc: 0,
    };
    cw.write_all(key_text)?;
    let payload_bytes = write_payload(&mut cw)?;
    let crc = cw.crc;
    if !tool_map.is_empty() {
        w.write_all(&encode_tool_map(tool_map))?;
    }
    Ok(KvcHeader {
        crc,
        payload_bytes,
        has_tool_map: !tool_map.is_empty(),
        ..header.clone()
    })
}

/// Passes writes through and keeps the CRC-32C of everything written.
pub(crate) struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
