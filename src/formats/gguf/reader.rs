//! Reading GGUF: a header parse over a byte slice that touches no tensor
//! bytes, and a memory-mapped file that hands out zero-copy tensor views.
//!
//! Every length and count is checked against the bytes that remain before
//! anything is allocated from it, so a hostile header cannot make the reader
//! allocate more than the file's own size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use quant_kernels::GgmlType;

use super::value::{Array, Metadata, Value, ValueType};
use super::{
    TensorInfo, DEFAULT_ALIGNMENT, KEY_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_ARRAY_LEN, MAX_DIMS, MAX_METADATA_PAIRS, MAX_STRING_LEN, MAX_TENSORS, MAX_TENSOR_NAME_LEN,
};
use crate::formats::error::{FormatError, FormatErrorKind, Result};
use crate::formats::mmap::MappedFile;

/// Everything in a GGUF file before its tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// File format version (2 or 3).
    pub version: u32,
    /// Key-value metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor's offset.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parses the header at the start of `bytes`, the whole file. Checks every
    /// tensor's data range against `bytes.len()`, but reads no tensor data.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
        let mut c = Cursor { bytes, pos: 0 };

        let magic_at = c.pos as u64;
        let magic: [u8; 4] = c.array("the magic bytes")?;
        if &magic != MAGIC {
            return Err(FormatError::new(FormatErrorKind::BadMagic { found: magic }).at(magic_at));
        }
        let version_at = c.pos as u64;
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(FormatError::new(FormatErrorKind::BigEndian(v)).at(version_at))
            }
            v => {
                return Err(FormatError::new(FormatErrorKind::UnsupportedVersion(v)).at(version_at))
            }
        }

        let count_at = c.pos as u64;
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        for (what, count, limit, at) in [
            ("tensor count", n_tensors, MAX_TENSORS, count_at),
            ("metadata count", n_kv, MAX_METADATA_PAIRS, count_at + 8),
        ] {
            if count > limit {
                return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                    what,
                    count,
                    limit,
                })
                .at(at));
            }
        }
        // Smallest tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
        c.check_count("tensor count", n_tensors, 24)
            .map_err(|e| e.at(count_at))?;
        // Smallest key-value pair: key length (8) + type (4) + one byte.
        c.check_count("metadata count", n_kv, 13)
            .map_err(|e| e.at(count_at + 8))?;

        let mut metadata = Metadata::new();
        let mut seen_keys = HashSet::new();
        for _ in 0..n_kv {
            let key_at = c.pos as u64;
            let key = c.string("a metadata key")?;
            if key.is_empty() {
                return Err(FormatError::other("a metadata key is empty").at(key_at));
            }
            if !seen_keys.insert(key.clone()) {
                return Err(FormatError::new(FormatErrorKind::Duplicate {
                    what: "metadata key",
                    name: key,
                })
                .at(key_at));
            }
            let type_at = c.pos as u64;
            let type_id = c.u32("a metadata value type")?;
            let value_type = ValueType::from_id(type_id).ok_or_else(|| {
                FormatError::new(FormatErrorKind::UnknownValueType {
                    key: key.clone(),
                    type_id,
                })
                .at(type_at)
            })?;
            let value = c.value(&key, value_type, 0)?;
            metadata.push_unchecked(key, value);
        }

        let alignment = match metadata.get(KEY_ALIGNMENT) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if u64::from(*a) > MAX_ALIGNMENT => {
                return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                    what: KEY_ALIGNMENT,
                    count: u64::from(*a),
                    limit: MAX_ALIGNMENT,
                }))
            }
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(Value::U32(a)) => {
                return Err(FormatError::new(FormatErrorKind::BadMetadata(format!(
                    "{KEY_ALIGNMENT} is {a}, which is not a power of two"
                ))))
            }
            Some(other) => {
                return Err(FormatError::new(FormatErrorKind::BadMetadata(format!(
                    "{KEY_ALIGNMENT} must be a u32, found a {}",
                    other.value_type().name()
                ))))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut seen_names = HashSet::new();
        for _ in 0..n_tensors {
            let info_at = c.pos as u64;
            let name = c.string("a tensor name")?;
            let err_here = |e: FormatError| e.for_tensor(&name).at(info_at);
            if name.len() > MAX_TENSOR_NAME_LEN {
                return Err(err_here(FormatError::new(FormatErrorKind::LimitExceeded {
                    what: "tensor name length",
                    count: name.len() as u64,
                    limit: MAX_TENSOR_NAME_LEN as u64,
                })));
            }
            if !seen_names.insert(name.clone()) {
                return Err(err_here(FormatError::new(FormatErrorKind::Duplicate {
                    what: "tensor name",
                    name: name.clone(),
                })));
            }
            let n_dims = c.u32("a tensor's dimension count").map_err(err_here)?;
            if n_dims as usize > MAX_DIMS {
                return Err(err_here(FormatError::new(FormatErrorKind::BadShape(
                    format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"),
                ))));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64("a tensor dimension").map_err(err_here)?;
                if d > i64::MAX as u64 {
                    return Err(err_here(FormatError::new(FormatErrorKind::BadShape(
                        format!("dimension {d} is negative as ggml reads it (int64)"),
                    ))));
                }
                dims.push(d);
            }
            let type_at = c.pos as u64;
            let type_id = c.u32("a tensor type").map_err(err_here)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                FormatError::new(FormatErrorKind::UnknownTensorType(type_id))
                    .for_tensor(&name)
                    .at(type_at)
            })?;
            let offset = c.u64("a tensor offset").map_err(err_here)?;
            let info = TensorInfo::new(name.clone(), dims, ggml_type, offset).map_err(err_here)?;
            if offset % alignment != 0 {
                return Err(err_here(FormatError::new(FormatErrorKind::BadLayout(
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ))));
            }
            tensors.push(info);
        }

        let infos_end = c.pos as u64;
        let data_offset = if n_tensors > 0 {
            align_up(infos_end, alignment)
                .ok_or_else(|| FormatError::other("data offset overflows"))?
        } else {
            infos_end
        };
        let file_len = bytes.len() as u64;
        if data_offset > file_len {
            return Err(FormatError::new(FormatErrorKind::Truncated {
                what: "the padding before the tensor data",
                need: data_offset - infos_end,
                have: file_len - infos_end,
            })
            .at(infos_end));
        }

        check_layout(&tensors, data_offset, file_len)?;

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Sum of all tensors' data bytes (no padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

/// Every tensor's data lies inside the file and no two overlap.
fn check_layout(tensors: &[TensorInfo], data_offset: u64, file_len: u64) -> Result<()> {
    let data_len = file_len - data_offset;
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len);
        match end {
            Some(end) => ranges.push((t.offset, end, &t.name)),
            None => {
                return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                    "data at offset {} (absolute {}) + {} bytes runs past the end of the file ({} bytes)",
                    t.offset,
                    data_offset.saturating_add(t.offset),
                    t.size,
                    file_len
                )))
                .for_tensor(&t.name))
            }
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.0 < a.1 {
            return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                "data [{}, {}) overlaps tensor '{}' at [{}, {})",
                b.0, b.1, a.2, a.0, a.1
            )))
            .for_tensor(b.2));
        }
    }
    Ok(())
}

/// `x` rounded up to a multiple of `align` (a power of two).
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// A bounds-checked little-endian reader over the header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(FormatError::new(FormatErrorKind::Truncated {
                what,
                need: n,
                have: self.remaining(),
            })
            .at(self.pos as u64));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Refuses `count` items of at least `min_size` bytes each when the rest
    /// of the input could not hold them.
    fn check_count(&self, what: &'static str, count: u64, min_size: u64) -> Result<()> {
        let max = self.remaining() / min_size;
        if count > max {
            return Err(FormatError::new(FormatErrorKind::CountTooLarge {
                what,
                count,
                max,
            }));
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                what: "string length",
                count: len,
                limit: MAX_STRING_LEN,
            })
            .at(at));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| FormatError::new(FormatErrorKind::InvalidUtf8 { what }).at(at))
    }

    fn value(&mut self, key: &str, t: ValueType, depth: usize) -> Result<Value> {
        let at = self.pos as u64;
        const WHAT: &str = "a metadata value";
        Ok(match t {
            ValueType::U8 => Value::U8(self.array::<1>(WHAT)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(WHAT)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(WHAT)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(WHAT)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(WHAT)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(WHAT)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(WHAT)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(WHAT)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(WHAT)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(WHAT)?)),
            ValueType::Bool => Value::Bool(self.bool(key)?),
            ValueType::String => Value::String(self.string("a metadata string")?),
            ValueType::Array => Value::Array(self.array_value(key, depth).map_err(|e| e.at(at))?),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        let at = self.pos as u64;
        match self.array::<1>("a bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FormatError::new(FormatErrorKind::BadBool {
                key: key.to_string(),
                value,
            })
            .at(at)),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                what: "array nesting depth",
                count: depth as u64 + 1,
                limit: MAX_ARRAY_DEPTH as u64,
            }));
        }
        let type_at = self.pos as u64;
        let type_id = self.u32("an array element type")?;
        let et = ValueType::from_id(type_id).ok_or_else(|| {
            FormatError::new(FormatErrorKind::UnknownValueType {
                key: key.to_string(),
                type_id,
            })
            .at(type_at)
        })?;
        let count_at = self.pos as u64;
        let n = self.u64("an array length")?;
        if n > MAX_ARRAY_LEN {
            return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                what: "array length",
                count: n,
                limit: MAX_ARRAY_LEN,
            })
            .at(count_at));
        }
        self.check_count("array length", n, et.min_encoded_size())
            .map_err(|e| e.at(count_at))?;
        let n = n as usize;

        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>();
                let raw = self.take((n * size) as u64, "array elements")?;
                Array::$variant(
                    raw.chunks_exact(size)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            ValueType::U8 => Array::U8(self.take(n as u64, "array elements")?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string("an array string")?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// An open GGUF file: its header and a memory map of its bytes.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: MappedFile,
    header: GgufHeader,
}

impl GgufFile {
    /// Opens and maps `path`, and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let map = MappedFile::open(path)?;
        let header = GgufHeader::parse(map.bytes()).map_err(|e| e.in_file(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Metadata shortcut.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor infos shortcut.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Total file size in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// The whole file's bytes (mapped).
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// A zero-copy view of a tensor's data. The range was checked against the
    /// file size when the header was parsed.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.map.bytes()[start..start + info.size as usize]
    }

    /// Lets the kernel drop the mapped pages under `data` (see
    /// [`MappedFile::release`]).
    pub fn release(&self, data: &[u8]) {
        self.map.release(data);
    }

    /// The data of the tensor named `name`.
    pub fn tensor_data_by_name(&self, name: &str) -> Option<&[u8]> {
        self.header.tensor(name).map(|t| self.tensor_data(t))
    }
}
