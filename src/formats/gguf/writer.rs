//! Writing GGUF by streaming: the header goes out first (the tensor list is
//! known up front, so every offset is), then each tensor's bytes in order.
//! Peak memory is one tensor, whatever the model's size.
//!
//! The layout is the one llama.cpp's and gguf-py's writers produce: tensors
//! in header order, each starting at the next multiple of the alignment,
//! zero padding after the tensor infos and after every tensor.

use std::io::Write;

use quant_kernels::GgmlType;

use super::value::{Array, Metadata, Value};
use super::{align_up, tensor_size, TensorInfo, DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC};
use crate::formats::error::{FormatError, FormatErrorKind, Result};

/// A tensor to be written: its name, dims (innermost first) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

impl From<&TensorInfo> for TensorSpec {
    fn from(t: &TensorInfo) -> Self {
        TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
        }
    }
}

/// Streams one GGUF file into `W`.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    tensors: Vec<TensorInfo>,
    next: usize,
    /// Bytes written so far; padding is computed from it.
    position: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header (`version` is 2 or 3) and returns a writer that
    /// expects the tensors' data in the order given.
    pub fn new(out: W, version: u32, metadata: &Metadata, tensors: &[TensorSpec]) -> Result<Self> {
        if !(2..=3).contains(&version) {
            return Err(FormatErrorKind::UnsupportedVersion(version).into());
        }
        let alignment = match metadata.get(KEY_ALIGNMENT) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(FormatErrorKind::BadMetadata(format!(
                    "{KEY_ALIGNMENT} must be a power-of-two u32, got {v}"
                ))
                .into())
            }
        };
        let mut infos = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        let mut names = std::collections::HashSet::new();
        for t in tensors {
            if !names.insert(t.name.as_str()) {
                return Err(FormatErrorKind::Duplicate {
                    what: "tensor name",
                    name: t.name.clone(),
                }
                .into());
            }
            if t.name.len() > super::MAX_TENSOR_NAME_LEN {
                return Err(FormatError::other(format!(
                    "tensor name is {} bytes, ggml allows at most {}",
                    t.name.len(),
                    super::MAX_TENSOR_NAME_LEN
                ))
                .for_tensor(&t.name));
            }
            let size = tensor_size(&t.dims, t.ggml_type).map_err(|e| e.for_tensor(&t.name))?;
            infos.push(TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                offset,
                size,
            });
            offset = align_up(offset + size, alignment)
                .ok_or_else(|| FormatError::other("total tensor size overflows"))?;
        }

        let mut w = GgufWriter {
            out,
            alignment,
            tensors: infos,
            next: 0,
            position: 0,
        };
        let mut header = Vec::with_capacity(1 << 16);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&(w.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata.iter() {
            put_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }
        for t in &w.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&t.offset.to_le_bytes());
        }
        w.write_all(&header)?;
        w.pad()?;
        Ok(w)
    }

    /// The sink, to reach it between tensors.
    pub fn sink_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The tensor infos with their offsets, in write order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor whose data is expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Writes the data of the next tensor, which must be `name` and exactly
    /// its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(expect) = self.tensors.get(self.next) else {
            return Err(FormatError::other("more tensors written than declared").for_tensor(name));
        };
        if expect.name != name {
            return Err(FormatError::other(format!(
                "tensor written out of order: expected '{}' next",
                expect.name
            ))
            .for_tensor(name));
        }
        if data.len() as u64 != expect.size {
            return Err(FormatError::other(format!(
                "got {} bytes of data for a {} tensor of {} bytes",
                data.len(),
                expect.ggml_type,
                expect.size
            ))
            .for_tensor(name));
        }
        self.write_all(data)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every declared tensor was written and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(
                FormatError::other("file finished before this tensor was written")
                    .for_tensor(&t.name),
            );
        }
        self.out.flush().map_err(|e| FormatError::new(e.into()))?;
        Ok(self.out)
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| FormatError::new(e.into()).at(self.position))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let target = align_up(self.position, self.alignment).expect("position is small");
        let mut left = (target - self.position) as usize;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.write_all(&ZEROS[..n])?;
            left -= n;
        }
        Ok(())
    }
}

/// The bytes [`GgufWriter::new`] writes first: the header and its padding.
pub fn header_bytes(version: u32, metadata: &Metadata, tensors: &[TensorSpec]) -> Result<Vec<u8>> {
    Ok(GgufWriter::new(Vec::new(), version, metadata, tensors)?.out)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each_le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => each_le!(v),
        Array::I16(v) => each_le!(v),
        Array::U32(v) => each_le!(v),
        Array::I32(v) => each_le!(v),
        Array::F32(v) => each_le!(v),
        Array::U64(v) => each_le!(v),
        Array::I64(v) => each_le!(v),
        Array::F64(v) => each_le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                put_string(out, s);
            }
        }
        Array::Array(v) => {
            for inner in v {
                put_array(out, inner);
            }
        }
    }
}
