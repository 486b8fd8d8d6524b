//! [`DiskCache`]: a directory of checkpoint files (spec/server.md §5.6-5.9): longest-prefix lookup
//! by key text, load with every check, save through a temp file, eviction under a byte budget.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ds4_model::{Config, KvSnapshot};

use crate::file::{
    check_tool_map, file_name, is_cache_file_name, read_tool_map, write_body, HeaderProblem,
    KeyKind, KvcHeader, SaveReason, ToolMemory, FLAG_TOOL_MAP, HEADER_BYTES, MIN_FILE_BYTES,
};
use crate::payload::{
    payload_len, read_payload_from, write_payload, Bounded, PayloadError, Runtime, SessionState,
};

/// Hit counts halve every 6 hours in the eviction score (spec/server.md §5.5).
const HIT_HALF_LIFE_S: f64 = 21600.0;
/// Reads and writes go through buffers of this size: large sequential I/O, never mmap.
const IO_BUF: usize = 8 << 20;
/// Temp files older than this are left over from a crashed writer and removed at open.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Store settings (spec/server.md §5.5 knobs that concern the store itself).
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// Byte budget for all `*.kv` files (`--kv-disk-space-mb`, default 4096 MiB).
    pub budget_bytes: u64,
    /// Never save or load checkpoints shorter than this (`--kv-cache-min-tokens`, 512).
    pub min_tokens: usize,
    /// Only load files written with the same routed-expert quant bits.
    pub reject_different_quant: bool,
    /// A loaded checkpoint longer than this is deleted ("consumed": the live session now owns that
    /// state and re-saves it); shorter ones get a hit instead (`--kv-cache-cold-max-tokens`, 30000).
    pub consume_above_tokens: usize,
}

impl CacheOptions {
    /// The defaults of spec/server.md §5.5 for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> CacheOptions {
        CacheOptions {
            dir: dir.into(),
            budget_bytes: 4096 << 20,
            min_tokens: 512,
            reject_different_quant: false,
            consume_above_tokens: 30000,
        }
    }
}

/// Which model wrote a checkpoint: routed-expert quant bits and a fingerprint of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Routed-expert quant bits (2 or 4); see [`crate::model_identity`].
    pub quant_bits: u8,
    /// [`crate::model_fingerprint`] of the model file.
    pub fingerprint: u64,
}

/// Everything that can go wrong in the store. Which files are removed is part of each variant's
/// contract (spec/server.md §5.9, plus the checksum).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("kv cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was torn or corrupted (checksum, truncation, wrong token count); it was removed.
    #[error("kv cache discarded corrupt file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A sound file that does not fit this model or runtime; kept.
    #[error("kv cache file {path} does not fit this runtime: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    /// The key text does not match the name or is not a prefix of the prompt; kept.
    #[error("kv cache load failed for {path}: {reason}")]
    KeyMismatch { path: PathBuf, reason: String },
    /// The checkpoint handed to `save` does not match the model (a caller bug).
    #[error("kv cache cannot save this checkpoint: {0}")]
    BadCheckpoint(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A listed checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `<dir>/<sha1 of key text>.kv`.
    pub path: PathBuf,
    pub header: KvcHeader,
    /// Bytes of key text (the prompt prefix this checkpoint covers).
    pub key_len: u64,
    /// Size of the file on disk (what counts against the budget).
    pub file_bytes: u64,
}

/// A checkpoint to save: the live session at its current position.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    /// The rendered text the checkpoint stands for; its SHA-1 names the file, and a later prompt
    /// that starts with it can reuse the state.
    pub key_text: &'a [u8],
    pub key_kind: KeyKind,
    pub reason: SaveReason,
    /// The live checkpoint tokens (`kv.n_past` of them).
    pub tokens: &'a [u32],
    /// Next-token logits after `tokens` (`n_vocab`).
    pub logits: &'a [f32],
    /// The backend's snapshot at `tokens.len()`.
    pub kv: &'a KvSnapshot,
    /// Tool calls whose DSML blocks occur in the key text (the caller selects them).
    pub tool_map: &'a [ToolMemory],
}

/// What [`DiskCache::save`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// A new file of `bytes` bytes is in place (other files may have been evicted for it).
    Written { path: PathBuf, bytes: u64 },
    /// The same key was already stored for this model: only its tool map was rewritten.
    ToolMapUpdated { path: PathBuf },
    /// The file would exceed the budget (with 1% slack).
    TooLarge { bytes: u64, budget: u64 },
    /// Fewer tokens than `min_tokens`.
    TooShort { n_tokens: usize },
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Tokens, logits and KV state to restore into the live session.
    pub state: SessionState,
    /// Bytes of the prompt the checkpoint covers; tokenize the rest of the prompt on its own.
    pub key_len: usize,
    /// Whether the key text was a visible transcript (spec/server.md §5.3) rather than token text.
    pub key_kind: KeyKind,
    /// Remembered tool calls stored with the checkpoint.
    pub tool_map: Vec<ToolMemory>,
    /// The file was deleted after loading (longer than `consume_above_tokens`).
    pub consumed: bool,
}

/// The on-disk checkpoint store for one model and runtime. Cheap to share: every call rescans the
/// directory, so several processes may use one directory (writes are atomic renames; in-place
/// header updates and eviction hold an advisory lock on `<dir>/.lock`).
#[derive(Debug)]
pub struct DiskCache {
    opts: CacheOptions,
    cfg: Config,
    ctx: usize,
    prefill_cap: usize,
    model: ModelIdentity,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writers in this process number their temp files so concurrent saves never share one.
/// Whether the process that wrote temp file `name` (`<sha1>.kv.tmp.<pid>.<n>`) has exited. Only
/// answers yes where `/proc` shows live processes (Linux); elsewhere, or for a name it cannot parse,
/// the age rule alone applies.
fn writer_is_gone(name: &str) -> bool {
    let Some((_, rest)) = name.split_once(".kv.tmp.") else {
        return false;
    };
    let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    let proc = Path::new("/proc");
    proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Opens (creating, mode 0700) the directory, removes stale temp files, and evicts down to the
    /// budget. `ctx` and `prefill_cap` are the runtime's; payloads are checked against them.
    pub fn open(
        opts: CacheOptions,
        cfg: Config,
        ctx: usize,
        prefill_cap: usize,
        model: ModelIdentity,
    ) -> Result<DiskCache, CacheError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.dir)
            .map_err(io_err(&opts.dir))?;
        let cache = DiskCache {
            opts,
            cfg,
            ctx,
            prefill_cap,
            model,
        };
        cache.remove_stale_temps();
        cache.evict(None)?;
        Ok(cache)
    }

    /// The settings the store was opened with.
    pub fn options(&self) -> &CacheOptions {
        &self.opts
    }

    fn runtime(&self) -> Runtime<'_> {
        Runtime {
            cfg: &self.cfg,
            ctx: self.ctx,
            prefill_cap: self.prefill_cap,
        }
    }

    /// Advisory lock on the directory, held while files are renamed in, updated in place, or
    /// evicted, so two processes sharing the directory agree on its contents and its budget.
    fn lock(&self) -> Result<File, CacheError> {
        let path = self.opts.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    /// Removes temp files older than [`STALE_TEMP`] and those whose writer process is gone (a
    /// killed save): a live writer's temp file, in this or another process, is left alone.
    fn remove_stale_temps(&self) {
        let Ok(dir) = std::fs::read_dir(&self.opts.dir) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.contains(".kv.tmp.") {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if old || writer_is_gone(name) {
                tracing::info!(file = name, "kv cache removed stale temp file");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Removes a file found torn or corrupt; logs why.
    fn discard(&self, path: &Path, reason: &str) {
        tracing::warn!(path = %path.display(), reason, "kv cache discarded corrupt file");
        let _ = std::fs::remove_file(path);
    }

    /// Reads and checks the fixed header and key length of `path`.
    fn read_entry(&self, path: &Path) -> Result<Entry, HeaderProblem> {
        let mut f = File::open(path).map_err(|_| HeaderProblem::NotKvc)?;
        let file_bytes = f.metadata().map_err(|_| HeaderProblem::NotKvc)?.len();
        let mut head = [0u8; HEADER_BYTES + 4];
        if file_bytes < MIN_FILE_BYTES || f.read_exact(&mut head).is_err() {
            return Err(HeaderProblem::Invalid("shorter than a header"));
        }
        let header = KvcHeader::decode(&head)?;
        let key_len = u32::from_le_bytes([head[56], head[57], head[58], head[59]]) as u64;
        let need = MIN_FILE_BYTES
            .saturating_add(key_len)
            .saturating_add(header.payload_bytes);
        if file_bytes < need {
            return Err(HeaderProblem::Invalid("shorter than its header says"));
        }
        Ok(Entry {
            path: path.to_path_buf(),
            header,
            key_len,
            file_bytes,
        })
    }

    /// Every valid checkpoint file in the directory (spec/server.md §5.7 listing rules). Files of
    /// ours that are torn or corrupt are removed; files of other versions are left alone.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.opts.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name();
            if !name.to_str().is_some_and(is_cache_file_name) {
                continue;
            }
            let path = e.path();
            match self.read_entry(&path) {
                Ok(entry) => out.push(entry),
                Err(HeaderProblem::OtherVersion(_)) => {}
                Err(HeaderProblem::NotKvc) if !path.exists() => {} // removed by another process
                Err(HeaderProblem::NotKvc) => self.discard(&path, "not a KVC file"),
                Err(HeaderProblem::Invalid(why)) => self.discard(&path, why),
            }
        }
        out
    }

    /// Total bytes of the listed files.
    pub fn total_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.file_bytes).sum()
    }

    /// Why `e` cannot be loaded by this runtime, if it cannot.
    fn incompatibility(&self, e: &Entry) -> Option<String> {
        let h = &e.header;
        if h.model != self.model.fingerprint {
            return Some(format!(
                "written by another model file (fingerprint {:016x}, ours {:016x})",
                h.model, self.model.fingerprint
            ));
        }
        if self.opts.reject_different_quant && h.quant_bits != self.model.quant_bits {
            return Some(format!(
                "{}-bit experts, this model has {}-bit",
                h.quant_bits, self.model.quant_bits
            ));
        }
        if h.ctx as usize > self.ctx {
            return Some(format!(
                "written for ctx {}, runtime has {}",
                h.ctx, self.ctx
            ));
        }
        None
    }

    /// The best checkpoint for `prompt` (the rendered prompt text): the longest key text that is a
    /// byte prefix of it (ties: more tokens), among compatible files with at least `min_tokens`.
    pub fn lookup(&self, prompt: &[u8]) -> Option<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| {
                e.header.n_tokens as usize >= self.opts.min_tokens
                    && e.key_len <= prompt.len() as u64
                    && self.incompatibility(e).is_none()
                    && e.path.file_name().and_then(|n| n.to_str())
                        == Some(file_name(&prompt[..e.key_len as usize]).as_str())
            })
            .max_by_key(|e| (e.key_len, e.header.n_tokens))
    }

    /// Remembered tool calls whose id is in `ids`, from the tool maps of every listed file
    /// (spec/server.md §5.7, last point: consulted before rendering a request that mentions tool
    /// ids). Reads only headers and tool maps, seeking past key text and payload; the first file
    /// that has an id wins.
    pub fn find_tool_memories(&self, ids: &[&str]) -> Vec<ToolMemory> {
        let mut out: Vec<ToolMemory> = Vec::new();
        for e in self.entries().into_iter().filter(|e| e.header.has_tool_map) {
            let start = MIN_FILE_BYTES + e.key_len + e.header.payload_bytes;
            let Ok(mut f) = File::open(&e.path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(start)).is_err() {
                continue;
            }
            let map = read_tool_map(&mut BufReader::new(f), e.file_bytes.saturating_sub(start));
            for t in map {
                if ids.contains(&t.id.as_str()) && !out.iter().any(|o| o.id == t.id) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Loads `entry` for `prompt`: re-reads the header and key text (which must hash to the file
    /// name and be a prefix of `prompt`), reads the payload with every check, verifies the checksum
    /// and token count, reads the tool map, then records the hit (or consumes the file).
    pub fn load(&self, entry: &Entry, prompt: &[u8]) -> Result<Loaded, CacheError> {
        let path = &entry.path;
        let e = match self.read_entry(path) {
            Ok(e) => e,
            Err(HeaderProblem::Invalid(why)) => {
                self.discard(path, why);
                return Err(CacheError::Corrupt {
                    path: path.clone(),
                    reason: why.into(),
                });
            }
            Err(p) => {
                return Err(CacheError::KeyMismatch {
                    path: path.clone(),
                    reason: format!("header unreadable: {p:?}"),
                })
            }
        };
        if let Some(reason) = self.incompatibility(&e) {
            return Err(CacheError::Incompatible {
                path: path.clone(),
                reason,
            });
        }
        let f = File::open(path).map_err(io_err(path))?;
        let mut r = BufReader::with_capacity(IO_BUF, f);
        r.seek(SeekFrom::Start(MIN_FILE_BYTES))
            .map_err(io_err(path))?;
        let body_len = e.key_len + e.header.payload_bytes;
        let mut src = Bounded::new(&mut r, body_len);
        let key = src
            .bytes("key text", e.key_len)
            .map_err(|err| self.corrupt(path, err.to_string()))?;
        let key_mismatch = |reason: &str| CacheError::KeyMismatch {
            path: path.clone(),
            reason: reason.into(),
        };
        if path.file_name().and_then(|n| n.to_str()) != Some(file_name(&key).as_str()) {
            // Only a damaged (or renamed) file gets here: lookup matched the name to the prompt.
            return Err(self.corrupt(path, "key text does not hash to the file name".into()));
        }
        if !prompt.starts_with(&key) {
            return Err(key_mismatch("key text is not a prefix of the prompt"));
        }
        let state = match read_payload_from(&mut src, &self.runtime()) {
            Ok(_) if src.left() != 0 => {
                return Err(self.corrupt(path, format!("{} bytes after the payload", src.left())));
            }
            Ok(state) => state,
            Err(err @ PayloadError::Truncated { .. }) => {
                return Err(self.corrupt(path, err.to_string()))
            }
            Err(err) => {
                // A flipped bit in a count looks like a layout error: the checksum decides
                // whether the file is corrupt (removed) or sound but incompatible (kept).
                return Err(match self.body_crc(path, body_len) {
                    Ok(crc) if crc == e.header.crc => CacheError::Incompatible {
                        path: path.clone(),
                        reason: err.to_string(),
                    },
                    _ => self.corrupt(path, format!("checksum mismatch ({err})")),
                });
            }
        };
        if src.crc() != e.header.crc {
            return Err(self.corrupt(
                path,
                format!(
                    "checksum {:08x}, header says {:08x}",
                    src.crc(),
                    e.header.crc
                ),
            ));
        }
        if state.tokens.len() != e.header.n_tokens as usize {
            return Err(self.corrupt(
                path,
                format!(
                    "payload has {} tokens, header {}",
                    state.tokens.len(),
                    e.header.n_tokens
                ),
            ));
        }
        let tool_map = if e.header.has_tool_map {
            let tail = e.file_bytes.saturating_sub(MIN_FILE_BYTES + body_len);
            read_tool_map(&mut r, tail)
        } else {
            Vec::new()
        };
        let consumed = state.tokens.len() > self.opts.consume_above_tokens;
        if consumed {
            let _lock = self.lock()?;
            let _ = std::fs::remove_file(path);
        } else if let Err(err) = self.record_hit(path) {
            tracing::warn!(path = %path.display(), %err, "kv cache could not record a hit");
        }
        Ok(Loaded {
            state,
            key_len: key.len(),
            key_kind: e.header.key_kind,
            tool_map,
            consumed,
        })
    }

    fn corrupt(&self, path: &Path, reason: String) -> CacheError {
        self.discard(path, &reason);
        CacheError::Corrupt {
            path: path.to_path_buf(),
            reason,
        }
    }

    /// CRC-32C of key text and payload, read again from the file.
    fn body_crc(&self, path: &Path, len: u64) -> std::io::Result<u32> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(MIN_FILE_BYTES))?;
        let mut r = f.take(len);
        let mut buf = vec![0u8; IO_BUF];
        let (mut crc, mut n) = (0u32, 0u64);
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..k]);
            n += k as u64;
        }
        if n != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(crc)
    }

    /// hits + 1 and last_used = now, in place (header bytes 12..16 and 32..40).
    fn record_hit(&self, path: &Path) -> Result<(), CacheError> {
        let _lock = self.lock()?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        // Re-read under the lock: another process may have counted a hit since we listed it.
        let mut hits = [0u8; 4];
        f.read_exact_at(&mut hits, 12).map_err(io_err(path))?;
        let hits = u32::from_le_bytes(hits).saturating_add(1);
        f.write_all_at(&hits.to_le_bytes(), 12)
            .map_err(io_err(path))?;
        f.write_all_at(&now_unix().to_le_bytes(), 32)
            .map_err(io_err(path))?;
        Ok(())
    }

    /// Saves `cp` (spec/server.md §5.6 write procedure, plus fsync): refuses files over the budget,
    /// rewrites only the tool map when this model already stored the same key text, else writes
    /// `<name>.tmp.<pid>.<n>`, fsyncs it, renames it over `<sha1>.kv`, fsyncs the directory, and
    /// evicts other files down to the budget.
    pub fn save(&self, cp: &Checkpoint) -> Result<SaveOutcome, CacheError> {
        if cp.tokens.len() < self.opts.min_tokens {
            return Ok(SaveOutcome::TooShort {
                n_tokens: cp.tokens.len(),
            });
        }
        let rt = self.runtime();
        let payload = payload_len(&rt, cp.tokens, cp.logits, cp.kv)
            .map_err(|e| CacheError::BadCheckpoint(e.to_string()))?;
        check_tool_map(cp.tool_map).map_err(CacheError::BadCheckpoint)?;
        let key_len = u32::try_from(cp.key_text.len())
            .map_err(|_| CacheError::BadCheckpoint("key text over 4 GiB".into()))?;
        let map_bytes: u64 = if cp.tool_map.is_empty() {
            0
        } else {
            8 + cp
                .tool_map
                .iter()
                .map(|t| 8 + (t.id.len() + t.dsml.len()) as u64)
                .sum::<u64>()
        };
        let bytes = MIN_FILE_BYTES + key_len as u64 + payload + map_bytes;
        if bytes + bytes / 100 > self.opts.budget_bytes {
            return Ok(SaveOutcome::TooLarge {
                bytes,
                budget: self.opts.budget_bytes,
            });
        }
        let name = file_name(cp.key_text);
        let path = self.opts.dir.join(&name);
        if self.rewrite_tool_map(&path, cp.key_text, cp.tool_map)? {
            return Ok(SaveOutcome::ToolMapUpdated { path });
        }

        let now = now_unix();
        let header = KvcHeader {
            quant_bits: self.model.quant_bits,
            reason: cp.reason,
            key_kind: cp.key_kind,
            has_tool_map: !cp.tool_map.is_empty(),
            n_tokens: cp.tokens.len() as u32,
            hits: 0,
            ctx: self.ctx as u32,
            crc: 0,
            created: now,
            last_used: now,
            payload_bytes: payload,
            model: self.model.fingerprint,
        };
        let tmp = self.opts.dir.join(format!(
            "{name}.tmp.{}.{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write_temp(&tmp, &header, cp).and_then(|h| {
            let _lock = self.lock()?;
            // Re-checked under the lock: the budget is the directory's, shared with other writers.
            let size = std::fs::metadata(&tmp).map_err(io_err(&tmp))?.len();
            if size != bytes {
                return Err(CacheError::BadCheckpoint(format!(
                    "wrote {size} bytes, expected {bytes}"
                )));
            }
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            File::open(&self.opts.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.opts.dir))?;
            self.evict_locked(Some(&path));
            Ok(h)
        });
        match written {
            Ok(_) => Ok(SaveOutcome::Written { path, bytes }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn write_temp(
        &self,
        tmp: &Path,
        header: &KvcHeader,
        cp: &Checkpoint,
    ) -> Result<KvcHeader, CacheError> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err(tmp))?;
        let mut w = BufWriter::with_capacity(IO_BUF, f);
        let rt = self.runtime();
        let h = write_body(&mut w, header, cp.key_text, cp.tool_map, |w| {
            write_payload(w, &rt, cp.tokens, cp.logits, cp.kv)
        })
        .map_err(|e| match e {
            PayloadError::Io(source) => CacheError::Io {
                path: tmp.to_path_buf(),
                source,
            },
            e => CacheError::BadCheckpoint(e.to_string()),
        })?;
        let mut f = w.into_inner().map_err(|e| CacheError::Io {
            path: tmp.to_path_buf(),
            source: e.into_error(),
        })?;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&h.encode()))
            .map_err(io_err(tmp))?;
        f.sync_all().map_err(io_err(tmp))?;
        Ok(h)
    }

    /// Whether the file's stored key text equals `key`.
    fn same_key(&self, e: &Entry, key: &[u8]) -> bool {
        if e.key_len != key.len() as u64 {
            return false;
        }
        let Ok(f) = File::open(&e.path) else {
            return false;
        };
        let mut stored = vec![0u8; key.len()];
        f.read_exact_at(&mut stored, MIN_FILE_BYTES).is_ok() && stored == key
    }

    /// If `path` holds `key` for this model, truncates it after the payload, appends the new map
    /// and updates flags and last-used, in place; returns whether it did. Checked under the lock,
    /// where no other process can rename a file in or evict one.
    fn rewrite_tool_map(
        &self,
        path: &Path,
        key: &[u8],
        map: &[ToolMemory],
    ) -> Result<bool, CacheError> {
        let _lock = self.lock()?;
        let Ok(e) = self.read_entry(path) else {
            return Ok(false);
        };
        if self.incompatibility(&e).is_some() || !self.same_key(&e, key) {
            return Ok(false);
        }
        let f = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_err(path)(err)),
        };
        let end = MIN_FILE_BYTES + e.key_len + e.header.payload_bytes;
        f.set_len(end).map_err(io_err(path))?;
        if !map.is_empty() {
            f.write_all_at(&crate::file::encode_tool_map(map), end)
                .map_err(io_err(path))?;
        }
        let mut flags = [0u8; 1];
        f.read_exact_at(&mut flags, 6).map_err(io_err(path))?;
        let flags = if map.is_empty() {
            flags[0] & !FLAG_TOOL_MAP
        } else {
            flags[0] | FLAG_TOOL_MAP
        };
        f.write_all_at(&[flags], 6).map_err(io_err(path))?;
        f.write_all_at(&now_unix().to_le_bytes(), 32)
            .map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        Ok(true)
    }

    /// Deletes the lowest-scoring files until the listed total fits the budget (spec/server.md
    /// §5.8). `protect` (the file just written) goes last unless it alone exceeds the budget.
    pub fn evict(&self, protect: Option<&Path>) -> Result<(), CacheError> {
        let _lock = self.lock()?;
        self.evict_locked(protect);
        Ok(())
    }

    fn evict_locked(&self, protect: Option<&Path>) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.file_bytes).sum();
        let now = now_unix();
        while total > self.opts.budget_bytes && !entries.is_empty() {
            let key = |e: &Entry| {
                let protected =
                    protect == Some(e.path.as_path()) && e.file_bytes <= self.opts.budget_bytes;
                (
                    if protected {
                        f64::INFINITY
                    } else {
                        score(&e.header, e.file_bytes, now)
                    },
                    last_used(&e.header),
                )
            };
            let (i, _) = entries
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| {
                    let (sa, ta) = key(a);
                    let (sb, tb) = key(b);
                    sa.total_cmp(&sb).then(ta.cmp(&tb))
                })
                .expect("invariant: entries is non-empty");
            let victim = entries.swap_remove(i);
            tracing::info!(path = %victim.path.display(), bytes = victim.file_bytes, "kv cache evicted");
            let _ = std::fs::remove_file(&victim.path);
            total -= victim.file_bytes;
        }
    }
}

fn last_used(h: &KvcHeader) -> u64 {
    if h.last_used != 0 {
        h.last_used
    } else {
        h.created
    }
}

/// spec/server.md §5.8: `(effective_hits + 1) · tokens / file_size`, hits decaying with a 6 h
/// half-life since last use.
fn score(h: &KvcHeader, file_bytes: u64, now: u64) -> f64 {
    let t = last_used(h);
    let eff = if t == 0 {
        0.0
    } else {
        let age = now as f64 - t as f64;
        let e = h.hits as f64 * (-age / HIT_HALF_LIFE_S).exp2();
        if e < 0.01 {
            0.0
        } else {
            e
        }
    };
    (eff + 1.0) * h.n_tokens as f64 / file_bytes.max(1) as f64
}
