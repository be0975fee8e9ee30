//! GGUF, llama.cpp's model file format: versions 2 and 3, read by mmap and
//! written by streaming, single files and split sets.
//!
//! Layout (ggml docs/gguf.md): magic `GGUF`, u32 version, u64 tensor count,
//! u64 metadata count, the metadata pairs, the tensor infos, zero padding to
//! `general.alignment`, then each tensor's data padded to the alignment.

mod output;
mod reader;
mod split;
mod value;
mod writer;

pub use output::{GgufOutput, GgufWritten, SOURCE_SHA256};
pub use reader::{GgufFile, GgufHeader};
pub use split::{
    merge_split, split_file, split_file_with_metadata, split_path, GgufModel, SplitBy, SplitName,
};
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::{header_bytes, GgufWriter, TensorSpec};

pub(crate) use reader::align_up;

use quant_kernels::GgmlType;

use super::error::{FormatError, FormatErrorKind, Result};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version qforge writes.
pub const VERSION: u32 = 3;
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted: real files use 32, a few a page
/// (4 KiB to 64 KiB). A rewrite pads to the alignment, so a hostile value
/// (2^31) would make qforge write gigabytes of padding for a tiny file.
pub const MAX_ALIGNMENT: u64 = 1 << 16;
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes: ggml keeps 64 bytes including the NUL.
pub const MAX_TENSOR_NAME_LEN: usize = 63;
/// Longest string value (llama.cpp's GGUF_MAX_STRING_LENGTH).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one array (llama.cpp's GGUF_MAX_ARRAY_ELEMENTS).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Deepest nesting of arrays in arrays that the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most tensors in one file. Real models have at most a few thousand; each
/// tensor info costs about 100 bytes of memory for its 24-byte minimum on
/// disk, so a file of nothing but tensor infos would otherwise cost four
/// times its size.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata pairs in one file. Real files have about fifty.
pub const MAX_METADATA_PAIRS: u64 = 1 << 20;

/// Well-known metadata keys.
pub mod keys {
    /// Alignment of tensor data (u32, power of two).
    pub const ALIGNMENT: &str = "general.alignment";
    /// Model architecture (`llama`, `qwen2`...).
    pub const ARCHITECTURE: &str = "general.architecture";
    /// Model name.
    pub const NAME: &str = "general.name";
    /// The llama_ftype of the file's mix.
    pub const FILE_TYPE: &str = "general.file_type";
    /// Version of the quantization formats (2).
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
    /// Index of this split, from 0 (u16).
    pub const SPLIT_NO: &str = "split.no";
    /// Number of splits (u16).
    pub const SPLIT_COUNT: &str = "split.count";
    /// Tensors in the whole split set (i32).
    pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";
}

pub(crate) const KEY_ALIGNMENT: &str = keys::ALIGNMENT;

/// One tensor as a GGUF file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first (the reverse of numpy's shape).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes, computed from type and dims.
    pub size: u64,
}

impl TensorInfo {
    /// Checks the geometry and computes the byte size.
    pub fn new(name: String, dims: Vec<u64>, ggml_type: GgmlType, offset: u64) -> Result<Self> {
        let size = tensor_size(&dims, ggml_type)?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        })
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in numpy order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Elements in one row (the innermost dimension; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// Bytes taken by a tensor of these dims and type, with ggml's checks: the
/// innermost dimension is a multiple of the block size, the element count
/// fits an i64 and the byte size a u64.
pub fn tensor_size(dims: &[u64], ggml_type: GgmlType) -> Result<u64> {
    if dims.len() > MAX_DIMS {
        return Err(FormatErrorKind::BadShape(format!(
            "{} dimensions, at most {MAX_DIMS} allowed",
            dims.len()
        ))
        .into());
    }
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                FormatError::new(FormatErrorKind::BadShape(format!(
                    "shape {dims:?} has more elements than an int64 can count"
                )))
            })?;
    }
    let row = dims.first().copied().unwrap_or(1);
    let block = ggml_type.block_size();
    if row % block != 0 {
        return Err(FormatErrorKind::BadShape(format!(
            "row length {row} is not a multiple of the {} block size {block}",
            ggml_type.name()
        ))
        .into());
    }
    (n / block)
        .checked_mul(ggml_type.type_size())
        .ok_or_else(|| {
            FormatErrorKind::BadShape(format!("shape {dims:?} overflows a byte size")).into()
        })
}
