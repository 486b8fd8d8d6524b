//! Bounds-checked GGUF v3 parsing. All reads go through [`Cursor`], which refuses to step past the
//! end of the bytes; counts are checked against the bytes left before anything is allocated.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, TensorType, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// Deepest array nesting accepted; real files nest at most one level.
pub(crate) const MAX_ARRAY_DEPTH: usize = 4;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Longest key or tensor name accepted (ggml caps tensor names at 64; keys are short).
pub(crate) const MAX_NAME_LEN: u64 = 65_536;
/// Most items reserved up front for any count read from the file. Counts are already checked
/// against the bytes left, but one file byte can become a 32-byte [`Value`]; reserving at most this
/// many and growing as items actually parse keeps memory proportional to what was really read.
const MAX_PREALLOC: u64 = 1 << 16;

fn prealloc(count: u64) -> usize {
    count.min(MAX_PREALLOC) as usize
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One entry of the tensor directory, with its data range already checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous axis.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset relative to the data section, as stored.
    pub rel_offset: u64,
    /// Absolute byte offset of the first element in the file.
    pub offset: u64,
    /// Size in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Total number of elements (cannot overflow for a parsed tensor: checked at parse time).
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes in one row (`dims[0]` elements); whole blocks, checked at parse time.
    pub fn row_bytes(&self) -> u64 {
        self.dims
            .first()
            .and_then(|&ne0| self.ty.row_bytes(ne0))
            .unwrap_or(0)
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// A parsed GGUF file: metadata, tensor directory and the bytes (mapped or owned).
pub struct GgufFile {
    backing: Backing,
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.bytes().len())
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`. The file is never copied.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, Error> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. A file truncated by another process while mapped would
        // fault (SIGBUS); that is the documented contract of mapping model files, the same as
        // ggml's and ds4's loaders, and every offset is checked against the length seen here.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory (in-memory synthetic models, tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, Error> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<GgufFile, Error> {
        let bytes = backing.bytes();
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = c.u32("version")?;
        if version != GGUF_VERSION {
            return Err(Error::BadVersion { found: version });
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A key/value entry takes at least 8 (key len) + 4 (type) + 1 bytes.
        c.check_count("metadata entries", n_kv, 13)?;

        let mut metadata = Vec::with_capacity(prealloc(n_kv));
        let mut meta_index = HashMap::with_capacity(prealloc(n_kv));
        let mut alignment_at = 0;
        for _ in 0..n_kv {
            let at = c.pos as u64;
            let key = c.name("metadata key").map_err(|e| {
                e.into_error(|reason| Error::BadMetadata {
                    key: String::new(),
                    at,
                    reason,
                })
            })?;
            let code = c.u32("metadata value type")?;
            let ty = ValueType::from_code(code).ok_or_else(|| Error::BadMetadata {
                key: key.clone(),
                at,
                reason: format!("unknown value type code {code}"),
            })?;
            let value = c.value(&key, ty, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::Duplicate {
                    kind: "metadata key",
                    name: key,
                });
            }
            if key == "general.alignment" {
                alignment_at = at;
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(Error::BadMetadata {
                    key: "general.alignment".into(),
                    at: alignment_at,
                    reason: format!(
                        "must be a non-zero power-of-two u32, found {} {v}",
                        v.type_desc()
                    ),
                })
            }
        };

        // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        c.check_count("tensor infos", n_tensors, 24)?;
        let mut raw = Vec::with_capacity(prealloc(n_tensors));
        for _ in 0..n_tensors {
            let at = c.pos as u64;
            let name = c.name("tensor name").map_err(|e| {
                e.into_error(|reason| Error::BadTensor {
                    name: format!("<name at offset {at}>"),
                    reason,
                })
            })?;
            let n_dims = c.u32("tensor n_dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::BadTensor {
                    name,
                    reason: format!("n_dims {n_dims} not in 1..={MAX_DIMS}"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let code = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, code, offset));
        }
        let data_offset = align_up(c.pos as u64, alignment).ok_or(Error::Truncated {
            what: "data section".into(),
            at: c.pos as u64,
            need: alignment,
            len: bytes.len() as u64,
        })?;
        let file_len = bytes.len() as u64;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, code, rel_offset) in raw {
            let ty = TensorType::from_code(code).ok_or_else(|| Error::UnknownType {
                name: name.clone(),
                code,
            })?;
            let bad = |reason: String| Error::BadTensor {
                name: name.clone(),
                reason,
            };
            if dims.contains(&0) {
                return Err(bad(format!("zero dimension in {dims:?}")));
            }
            let n_elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("element count of {dims:?} overflows")))?;
            let row_bytes = ty.row_bytes(dims[0]).ok_or_else(|| Error::PartialBlock {
                name: name.clone(),
                ty,
                n_elems: dims[0],
                block: ty.block_elems(),
            })?;
            let n_bytes = row_bytes
                .checked_mul(n_elems / dims[0])
                .ok_or_else(|| bad(format!("byte size of {dims:?} overflows")))?;
            if rel_offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {rel_offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let offset = data_offset
                .checked_add(rel_offset)
                .ok_or_else(|| bad(format!("offset {rel_offset} overflows")))?;
            let end = offset
                .checked_add(n_bytes)
                .ok_or_else(|| bad("end offset overflows".into()))?;
            if end > file_len {
                return Err(Error::Truncated {
                    what: format!("tensor {name:?} data"),
                    at: offset,
                    need: n_bytes,
                    len: file_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::Duplicate {
                    kind: "tensor",
                    name,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                rel_offset,
                offset,
                n_bytes,
            });
        }

        Ok(GgufFile {
            backing,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key`, or [`Error::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&Value, Error> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
        })
    }

    /// Tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (range checked at parse time).
    ///
    /// # Panics
    /// If `t` is not one of this file's [`GgufFile::tensors`] and its range lies past the end.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

/// Why a key or tensor name could not be read: the file ended (already a complete [`Error`]), or
/// the declared length is implausible (the caller names the key or tensor).
enum NameError {
    Io(Error),
    TooLong(String),
}

impl NameError {
    fn into_error(self, too_long: impl FnOnce(String) -> Error) -> Error {
        match self {
            NameError::Io(e) => e,
            NameError::TooLong(reason) => too_long(reason),
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], Error> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(Error::Truncated {
                what: what.to_string(),
                at: self.pos as u64,
                need: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses `count` items of at least `min_item` bytes each if they cannot fit in what is left.
    fn check_count(&self, what: &'static str, count: u64, min_item: u64) -> Result<(), Error> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.checked_mul(min_item).is_none_or(|need| need > left) {
            return Err(Error::ImplausibleCount {
                what,
                count,
                at: self.pos as u64,
                len: self.bytes.len() as u64,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, Error> {
        let len = self.u64(what)?;
        let s = self.take(len, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    /// A key or tensor name: a string of at most [`MAX_NAME_LEN`] bytes.
    fn name(&mut self, what: &str) -> Result<String, NameError> {
        let len_at = self.pos;
        let len = self.u64(what).map_err(NameError::Io)?;
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong(format!(
                "{what} length {len} exceeds {MAX_NAME_LEN}"
            )));
        }
        self.pos = len_at;
        self.string(what).map_err(NameError::Io)
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value, Error> {
        let w = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(w)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(w)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(w)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(w)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(w)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(w)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(w)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(w)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(w)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(w)?)),
            ValueType::Bool => {
                let at = self.pos as u64;
                match self.array::<1>(w)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(Error::BadMetadata {
                            key: key.into(),
                            at,
                            reason: format!("bool byte {b} is neither 0 nor 1"),
                        })
                    }
                }
            }
            ValueType::String => Value::String(self.string(w)?),
            ValueType::Array => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::BadMetadata {
                        key: key.into(),
                        at,
                        reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let code = self.u32("array item type")?;
                let item = ValueType::from_code(code).ok_or_else(|| Error::BadMetadata {
                    key: key.into(),
                    at,
                    reason: format!("unknown array item type code {code}"),
                })?;
                let count = self.u64("array length")?;
                // Strings take >= 8 bytes (their length), nested arrays >= 12.
                let min = match item {
                    ValueType::String => 8,
                    ValueType::Array => 12,
                    t => t.scalar_size().unwrap_or(1) as u64,
                };
                self.check_count("array items", count, min)
                    .map_err(|_| Error::BadMetadata {
                        key: key.into(),
                        at,
                        reason: format!(
                            "array of {count} {} items cannot fit in the file",
                            item.name()
                        ),
                    })?;
                let mut items = Vec::with_capacity(prealloc(count));
                for _ in 0..count {
                    items.push(self.value(key, item, depth + 1)?);
                }
                Value::Array(item, items)
            }
        })
    }
}
