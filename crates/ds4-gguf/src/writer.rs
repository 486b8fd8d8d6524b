//! Streaming GGUF v3 writer: metadata and the tensor directory are written up front (offsets follow
//! from the declared shapes), then each tensor's bytes are streamed in directory order, so an 80 GiB
//! file never has to be held in memory.

use std::io::Write;

use crate::{Error, TensorType, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// A tensor to be written: its name, GGUF-order dims and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: &[u64], ty: TensorType) -> Self {
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
        }
    }

    /// Size of the tensor data in bytes, or an error if the shape is one the reader would refuse
    /// (no dims, more than 4, a zero dim, a row that is not whole blocks, a size that overflows).
    pub fn n_bytes(&self) -> Result<u64, Error> {
        let ne0 = *self
            .dims
            .first()
            .ok_or_else(|| Error::Writer(format!("tensor {:?} has no dims", self.name)))?;
        if self.dims.len() > 4 || self.dims.contains(&0) {
            return Err(Error::Writer(format!(
                "tensor {:?}: dims {:?} must be 1 to 4 non-zero values",
                self.name, self.dims
            )));
        }
        let row = self.ty.row_bytes(ne0).ok_or_else(|| Error::PartialBlock {
            name: self.name.clone(),
            ty: self.ty,
            n_elems: ne0,
            block: self.ty.block_elems(),
        })?;
        self.dims[1..]
            .iter()
            .try_fold(row, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Writer(format!("tensor {:?} size overflows", self.name)))
    }
}

/// Writes a GGUF file to any `Write`. Create it with the full metadata and tensor list, then call
/// [`GgufWriter::write_data`] with each tensor's bytes (in one call or many chunks), in the order
/// the specs were given, then [`GgufWriter::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    sizes: Vec<(String, u64)>,
    alignment: u64,
    /// Index of the tensor being written and bytes of it written so far.
    current: usize,
    written: u64,
    pos: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, metadata and tensor directory. `general.alignment` is taken from
    /// `metadata` if present (must be a power-of-two u32), else 32.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, Error> {
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => *a as u64,
            Some(_) => {
                return Err(Error::Writer(
                    "general.alignment must be a power-of-two u32".into(),
                ))
            }
        };
        check_unique("metadata key", metadata.iter().map(|(k, _)| k.as_str()))?;
        check_unique("tensor", tensors.iter().map(|t| t.name.as_str()))?;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v, 0)
                .map_err(|e| Error::Writer(format!("metadata key {k:?}: {e}")))?;
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut rel = 0u64;
        for t in tensors {
            let n = t.n_bytes()?;
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.code().to_le_bytes());
            head.extend_from_slice(&rel.to_le_bytes());
            rel = rel
                .checked_add(n)
                .and_then(|end| align(end, alignment))
                .ok_or_else(|| {
                    Error::Writer(format!("tensor {:?}: data section size overflows", t.name))
                })?;
            sizes.push((t.name.clone(), n));
        }
        out.write_all(&head)
            .map_err(|e| Error::Writer(e.to_string()))?;
        let mut w = GgufWriter {
            out,
            sizes,
            alignment,
            current: 0,
            written: 0,
            pos: head.len() as u64,
        };
        // The data section starts aligned in the file; `pos` then counts from its start.
        w.pad()?;
        w.pos = 0;
        // A tensor list whose last tensors are empty is impossible (dims are non-zero), but a list
        // with no tensors at all is complete already.
        Ok(w)
    }

    /// Appends bytes of the current tensor; moves to the next tensor once one is complete.
    pub fn write_data(&mut self, mut chunk: &[u8]) -> Result<(), Error> {
        while !chunk.is_empty() {
            let Some(&(_, size)) = self.sizes.get(self.current) else {
                return Err(Error::Writer(format!(
                    "{} bytes beyond the last tensor",
                    chunk.len()
                )));
            };
            let take = usize::try_from(size - self.written)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            self.out
                .write_all(&chunk[..take])
                .map_err(|e| Error::Writer(e.to_string()))?;
            self.written += take as u64;
            self.pos += take as u64;
            chunk = &chunk[take..];
            if self.written == size {
                self.pad()?;
                self.current += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Name and size of the tensor the next bytes belong to, if any.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        self.sizes
            .get(self.current)
            .map(|(n, s)| (n.as_str(), s - self.written))
    }

    fn pad(&mut self) -> Result<(), Error> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let end = align(self.pos, self.alignment)
            .ok_or_else(|| Error::Writer("file size overflows".into()))?;
        // Alignment may be up to 2^31: write zeros in pieces rather than allocating the padding.
        while self.pos < end {
            let n = (end - self.pos).min(ZEROS.len() as u64) as usize;
            self.out
                .write_all(&ZEROS[..n])
                .map_err(|e| Error::Writer(e.to_string()))?;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Checks every tensor was written in full, flushes and returns the sink.
    pub fn finish(mut self) -> Result<W, Error> {
        if let Some((name, size)) = self.sizes.get(self.current) {
            return Err(Error::Writer(format!(
                "tensor {name:?} incomplete: {} of {size} bytes written ({} tensors left)",
                self.written,
                self.sizes.len() - self.current
            )));
        }
        self.out.flush().map_err(|e| Error::Writer(e.to_string()))?;
        Ok(self.out)
    }
}

fn align(x: u64, a: u64) -> Option<u64> {
    x.div_ceil(a).checked_mul(a)
}

/// The reader refuses duplicate keys and tensor names, so the writer does not produce them.
fn check_unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if n.len() as u64 > crate::reader::MAX_NAME_LEN {
            return Err(Error::Writer(format!(
                "{kind} name of {} bytes is longer than the reader accepts",
                n.len()
            )));
        }
        if !seen.insert(n) {
            return Err(Error::Writer(format!("duplicate {kind} {n:?}")));
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes `v`; `depth` is the array nesting so far (the reader accepts at most
/// [`crate::reader::MAX_ARRAY_DEPTH`] levels).
fn put_value(out: &mut Vec<u8>, v: &Value, depth: usize) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(t, items) => {
            if depth >= crate::reader::MAX_ARRAY_DEPTH {
                return Err(format!(
                    "arrays nested deeper than {}",
                    crate::reader::MAX_ARRAY_DEPTH
                ));
            }
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                if it.value_type() != *t {
                    return Err(format!("array of {} holds a {}", t.name(), it.type_desc()));
                }
                put_value(out, it, depth + 1)?;
            }
        }
    }
    Ok(())
}
