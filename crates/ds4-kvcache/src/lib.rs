//! The disk KV cache: the session payload of spec/model.md §4.3 as bytes ([`encode_payload`],
//! [`write_payload`], [`decode_payload`], [`read_payload`]), and [`DiskCache`], the directory of
//! checkpoint files of spec/server.md §5.4-5.9 the server keeps across requests and restarts.
//!
//! Owns: byte layouts, load-time validation, file naming, atomic writes, eviction. Refuses: sessions
//! and policy (when to save, which key text, which tool calls: the engine decides; it hands us a
//! [`Checkpoint`] and gets back a [`Loaded`]). Design decision: every length read from a file is
//! checked against the bytes that exist before anything is allocated, and every file carries a
//! checksum, so a hostile, torn or bit-flipped file is refused (and removed), never loaded.
//!
//! # Where our format deliberately differs from the original (spec/server.md §5.4)
//!
//! * **Header version 2, 56 bytes** (original: version 1, 48 bytes). The reserved u32 at offset 20
//!   holds a CRC-32C of key text + payload, and a u64 model fingerprint follows at offset 48. The
//!   original has no checksum, so a torn or flipped file loads garbage KV state silently; and its
//!   only model check is the quant-bits byte plus the payload's shape words, so a checkpoint of
//!   another model of the same shape (two tiny test models, two quantizations of the real one
//!   written with the same bits) would load. Version-1 files are not listed and never deleted.
//! * **fsync**: the temp file is fsynced before the rename and the directory after it (the original
//!   does neither; spec §5.9 notes that a power loss can then leave an empty final file).
//! * **Corrupt files are removed** when found (listing: impossible header or too short; load:
//!   checksum mismatch, truncation, token count), instead of being ignored on every scan.
//! * **Locking**: renames, in-place header updates and eviction hold an advisory lock on
//!   `<dir>/.lock`, and temp names carry pid and a sequence number (created with `O_EXCL`), so two
//!   processes sharing the directory neither corrupt files nor overrun the budget.
//! * The payload itself is the original's version 1 byte for byte, written with the CPU raw-window
//!   convention (ring capacity = window = `min(n_swa, ctx)`); GPU-convention payloads (word 4 =
//!   a larger ring) are read too.

mod file;
mod payload;
mod store;

pub use file::{
    file_name, is_cache_file_name, KeyKind, KvcHeader, SaveReason, ToolMemory, HEADER_BYTES,
    KVC_VERSION,
};
pub use payload::{
    decode_payload, encode_payload, payload_len, read_payload, write_payload, PayloadError,
    Runtime, SessionState, PAYLOAD_MAGIC, PAYLOAD_VERSION,
};
pub use store::{
    CacheError, CacheOptions, Checkpoint, DiskCache, Entry, Loaded, ModelIdentity, SaveOutcome,
};

use ds4_gguf::{GgufFile, TensorType};

/// A fingerprint of a model file: FNV-1a (64-bit) of everything before the data section, i.e. the
/// metadata and the tensor directory (names, types, shapes, offsets). Cheap (the weights are not
/// read) and different for any two differently-built files.
pub fn model_fingerprint(file: &GgufFile) -> u64 {
    let head = &file.bytes()[..(file.data_offset() as usize).min(file.bytes().len())];
    head.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The identity of a DS4 model file: routed-expert quant bits (2 for IQ2_XXS/Q2_K experts, 4 for
/// Q4_K; from `blk.0.ffn_down_exps.weight`) and [`model_fingerprint`]. `None` if the file has no
/// routed experts of a known type.
pub fn model_identity(file: &GgufFile) -> Option<ModelIdentity> {
    let quant_bits = match file.tensor("blk.0.ffn_down_exps.weight")?.ty {
        TensorType::Q2K | TensorType::Iq2Xxs => 2,
        TensorType::Q4K => 4,
        _ => return None,
    };
    Some(ModelIdentity {
        quant_bits,
        fingerprint: model_fingerprint(file),
    })
}
