//! Streaming GGUF v3 writer: metadata and the tensor directory are written up front (offsets follow
//! from the declared shapes), then each tensor's bytes are streamed in directory order, so an 80 GiB
//! file never has to be held in memory.

use std::io::Write;

use crate::{Error, TensorType, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// A tensor to be written: its name, GGUF-order dims and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: &[u64], ty: TensorType) -> Self {
        TensorSpec { name: name.into(), dims: dims.to_vec(), ty }
    }

    /// Size of the tensor data in bytes, or an error if the row is not whole blocks.
    pub fn n_bytes(&self) -> Result<u64, Error> {
        let ne0 = *self.dims.first().ok_or_else(|| Error::Writer(format!("tensor {:?} has no dims", self.name)))?;
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
    pub fn new(mut out: W, metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Result<Self, Error> {
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => *a as u64,
            Some(_) => return Err(Error::Writer("general.alignment must be a power-of-two u32".into())),
        };
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v)?;
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
            rel = align(rel + n, alignment);
            sizes.push((t.name.clone(), n));
        }
        let pad = align(head.len() as u64, alignment) - head.len() as u64;
        head.resize(head.len() + pad as usize, 0);
        out.write_all(&head).map_err(|e| Error::Writer(e.to_string()))?;
        Ok(GgufWriter { out, sizes, alignment, current: 0, written: 0, pos: 0 })
    }

    /// Appends bytes of the current tensor; moves to the next tensor once one is complete.
    pub fn write_data(&mut self, mut chunk: &[u8]) -> Result<(), Error> {
        while !chunk.is_empty() {
            let Some((name, size)) = self.sizes.get(self.current) else {
                return Err(Error::Writer(format!("{} bytes beyond the last tensor", chunk.len())));
            };
            let take = ((size - self.written) as usize).min(chunk.len());
            let _ = name;
            self.out.write_all(&chunk[..take]).map_err(|e| Error::Writer(e.to_string()))?;
            self.written += take as u64;
            self.pos += take as u64;
            chunk = &chunk[take..];
            if self.written == *size {
                self.pad()?;
                self.current += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Name and size of the tensor the next bytes belong to, if any.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        self.sizes.get(self.current).map(|(n, s)| (n.as_str(), s - self.written))
    }

    fn pad(&mut self) -> Result<(), Error> {
        let pad = align(self.pos, self.alignment) - self.pos;
        self.out.write_all(&vec![0u8; pad as usize]).map_err(|e| Error::Writer(e.to_string()))?;
        self.pos += pad;
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

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<(), Error> {
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
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                if it.value_type() != *t {
                    return Err(Error::Writer(format!("array of {} holds a {}", t.name(), it.type_desc())));
                }
                put_value(out, it)?;
            }
        }
    }
    let _ = ValueType::U8;
    Ok(())
}
