//! Executing a [`QuantPlan`] into GGUF: metadata as llama-quantize writes
//! it, then tensor by tensor, each converted in row groups in parallel.
//!
//! Memory: the source stays mapped; per tensor one output buffer and, per
//! worker thread, an f32 scratch of one row group. Output bytes do not
//! depend on the thread count (every row is quantized on its own).

use std::path::{Path, PathBuf};

use quant_kernels::ggml::requant::{requantize, RequantStats};
use quant_kernels::{ggml, KernelError};
use rayon::prelude::*;

use super::ftype::FileType;
use super::imatrix::ImportanceMatrix;
use super::plan::{ImatrixRole, Method, PlannedTensor, QuantPlan};
use super::source::TensorSource;
use crate::device::{Device, Target, Work, GPU_GGML_TYPES};
use crate::formats::error::{FormatError, Result};
use crate::formats::gguf::{
    keys, split_path, Array, GgufOutput, GgufWritten, Metadata, TensorSpec, Value, SOURCE_SHA256,
    VERSION,
};
use crate::hashing::FileDigests;

/// `GGML_QNT_VERSION`: the version of the quantized block layouts.
pub const QUANTIZATION_VERSION: u32 = 2;

/// llama-quantize's metadata keys about the importance matrix.
pub mod imatrix_keys {
    /// The `--imatrix` argument as given.
    pub const FILE: &str = "quantize.imatrix.file";
    /// The first dataset the matrix was computed on.
    pub const DATASET: &str = "quantize.imatrix.dataset";
    /// Entries used (after --include/--exclude-weights).
    pub const ENTRIES: &str = "quantize.imatrix.entries_count";
    /// Chunks of text the matrix was computed on.
    pub const CHUNKS: &str = "quantize.imatrix.chunks_count";
}

/// llama-quantize copies override strings into 128-byte buffers.
const OVERRIDE_STR_MAX: usize = 127;

fn clip(s: &str) -> String {
    let mut end = s.len().min(OVERRIDE_STR_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Where a quantized file came from, as `qforge.*` keys.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// Source file names and their SHA-256.
    pub sources: Vec<(PathBuf, String)>,
    /// The importance matrix file's SHA-256, when one was used.
    pub imatrix_sha256: Option<String>,
    /// The settings that shape the output (type and type options), as
    /// command-line words.
    pub settings: Vec<String>,
}

/// The importance matrix as the metadata records it.
#[derive(Debug, Clone)]
pub struct ImatrixNote<'a> {
    /// The `--imatrix` argument, as given.
    pub file_arg: String,
    /// The matrix (after filtering).
    pub matrix: &'a ImportanceMatrix,
}

/// The first output file's metadata: the source's keys, then what
/// llama-quantize sets (quantization version and file type moved to the
/// end, split keys dropped, the imatrix keys), then qforge's provenance
/// (replacing any `qforge.*` keys of the source).
pub fn quantized_metadata(
    source: &Metadata,
    file_type: FileType,
    imatrix: Option<&ImatrixNote>,
    provenance: &Provenance,
) -> Metadata {
    let mut meta = source.clone();
    for (key, value) in [
        (keys::QUANTIZATION_VERSION, QUANTIZATION_VERSION),
        (keys::FILE_TYPE, file_type.id()),
    ] {
        meta.remove(key);
        meta.set(key, Value::U32(value));
    }
    for key in [keys::SPLIT_NO, keys::SPLIT_COUNT, keys::SPLIT_TENSORS_COUNT] {
        meta.remove(key);
    }
    if let Some(note) = imatrix.filter(|n| !n.matrix.is_empty()) {
        let mut set = |key: &str, v: Value| {
            meta.remove(key);
            meta.set(key, v);
        };
        set(imatrix_keys::FILE, Value::String(clip(&note.file_arg)));
        if let Some(d) = note.matrix.datasets.first() {
            set(imatrix_keys::DATASET, Value::String(clip(d)));
        }
        set(imatrix_keys::ENTRIES, Value::U32(note.matrix.len() as u32));
        if note.matrix.chunk_count > 0 {
            set(
                imatrix_keys::CHUNKS,
                Value::U32(note.matrix.chunk_count.unsigned_abs() as u32),
            );
        }
    }
    // A source written by qforge carries the provenance of its own making;
    // this file's provenance is the quantization, from that source (named
    // by its hash), and goes last.
    meta.retain(|k, _| !k.starts_with("qforge."));
    let strings = |v: Vec<String>| Value::Array(Array::String(v));
    meta.set("qforge.version", Value::String(crate::VERSION.into()));
    meta.set("qforge.command", Value::String("quantize".into()));
    meta.set(
        "qforge.source.files",
        strings(
            provenance
                .sources
                .iter()
                .map(|(p, _)| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
        ),
    );
    meta.set(
        SOURCE_SHA256,
        strings(provenance.sources.iter().map(|(_, h)| h.clone()).collect()),
    );
    meta.set(
        "qforge.quantize.settings",
        strings(provenance.settings.clone()),
    );
    if let Some(h) = &provenance.imatrix_sha256 {
        meta.set("qforge.quantize.imatrix.sha256", Value::String(h.clone()));
    }
    meta
}

/// The output paths: `out` itself, or with `--keep-split` one file per
/// split named as llama-quantize names them (`PREFIX-0000N-of-0000M.gguf`,
/// PREFIX being `out` without `.gguf`), even for a single split.
pub fn output_paths(out: &Path, plan: &QuantPlan, keep_split: bool) -> Vec<PathBuf> {
    if !keep_split {
        return vec![out.to_path_buf()];
    }
    let prefix = match out.extension() {
        Some(e) if e == "gguf" => out.with_extension(""),
        _ => out.to_path_buf(),
    };
    (0..plan.n_splits)
        .map(|i| split_path(&prefix, i, plan.n_splits))
        .collect()
}

/// One written file.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its bytes, hex (when `write_gguf` was asked for it).
    pub sha256: Option<String>,
}

/// The device work of a planned tensor: quantizing it without importance
/// weights to a type the GPU has a kernel for (`None` for copies and for
/// tensors an importance matrix steers, which stay on the CPU).
pub fn device_work(t: &PlannedTensor, imatrix: Option<&ImportanceMatrix>) -> Option<Work> {
    let steered = t.imatrix == ImatrixRole::Used && imatrix.and_then(|m| m.get(&t.name)).is_some();
    (t.method == Method::ViaF32 && !steered).then_some(Work::QuantizeGgml {
        ty: t.to,
        values: t.row_len() * t.n_rows(),
    })
}

/// Writes `plan` into `paths` (one per split of the plan), taking tensor
/// bytes from `source`; `metadata` is the first file's. `progress` hears of
/// each tensor written. Tensors quantized without importance weights to a
/// type with a GPU kernel run where `device` puts them; the bytes are the
/// same on either. `progress` also hears what requantizing measured
/// against the source values (for [`Method::Exact`] and
/// [`Method::GridSearch`]). With `search`, tensors quantized to Q4_0,
/// Q4_1, Q5_0 or Q5_1 get searched block scales ([`ggml::quantize_search`],
/// on the CPU) instead of llama-quantize's. `sources`, when given, are
/// the digests `metadata` names by placeholders (see [`GgufOutput::create`]):
/// the first file's header is completed once they are known. With
/// `digest`, each file's SHA-256 is computed as it is written.
#[allow(clippy::too_many_arguments)]
pub fn write_gguf(
    source: &dyn TensorSource,
    plan: &QuantPlan,
    metadata: &Metadata,
    sources: Option<FileDigests>,
    digest: bool,
    paths: &[PathBuf],
    imatrix: Option<&ImportanceMatrix>,
    device: &Device,
    search: Option<&SearchOptions<'_>>,
    progress: &(dyn Fn(&PlannedTensor, Option<&RequantStats>) + Sync),
) -> Result<Vec<WrittenFile>> {
    assert_eq!(paths.len(), plan.n_splits, "one path per split");
    let mut written = Vec::with_capacity(paths.len());
    let mut sources = sources;
    for (split, path) in paths.iter().enumerate() {
        let mut meta = if split == 0 {
            metadata.clone()
        } else {
            Metadata::new()
        };
        if plan.n_splits > 1 {
            // llama-quantize's order: no, count, tensors.count.
            meta.set(keys::SPLIT_NO, Value::U16(split as u16));
            meta.set(keys::SPLIT_COUNT, Value::U16(plan.n_splits as u16));
            meta.set(
                keys::SPLIT_TENSORS_COUNT,
                Value::I32(plan.tensors.len() as i32),
            );
        }
        let members: Vec<&PlannedTensor> =
            plan.tensors.iter().filter(|t| t.split == split).collect();
        let specs: Vec<TensorSpec> = members
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.to,
            })
            .collect();
        let digests = if split == 0 { sources.take() } else { None };
        let mut w = GgufOutput::create(path, VERSION, &meta, &specs, digests, digest)?;
        for t in members {
            let src = source.bytes(t.source).map_err(|e| e.for_tensor(&t.name))?;
            let weights = match t.imatrix {
                ImatrixRole::Used => imatrix.and_then(|m| m.get(&t.name)),
                _ => None,
            };
            let mut stats = None;
            let searched = search.filter(|_| ggml::SEARCHABLE.contains(&t.to));
            let weights = match searched {
                Some(s) => weights.or_else(|| s.estimate_for(t)),
                None => weights,
            };
            match t.method {
                Method::Copy => w.write_tensor(&t.name, &src),
                Method::ViaF32 => {
                    let target = device_work(t, imatrix)
                        .filter(|_| searched.is_none() && GPU_GGML_TYPES.contains(&t.to))
                        .map(|work| device.target(work))
                        .filter(|target| target.is_gpu());
                    let data = match target {
                        Some(target) => convert_tensor_on(target, t, &src),
                        None => convert_tensor(t, &src, weights, searched.is_some(), &|d| {
                            source.release(d)
                        })
                        .map_err(|e| e.to_string()),
                    }
                    .map_err(|e| FormatError::other(e).for_tensor(&t.name))?;
                    w.write_tensor(&t.name, &data)
                }
                Method::Exact | Method::GridSearch => {
                    let (data, s) = requantize_tensor(t, &src, weights, &|d| source.release(d))
                        .map_err(|e| FormatError::other(e.to_string()).for_tensor(&t.name))?;
                    stats = Some(s);
                    w.write_tensor(&t.name, &data)
                }
            }?;
            source.release(&src);
            progress(t, stats.as_ref());
        }
        let GgufWritten { bytes, sha256 } = w.finish()?;
        written.push(WrittenFile {
            path: path.clone(),
            bytes,
            sha256,
        });
    }
    Ok(written)
}

/// Values per GPU submission: the f32 slab decoded for it is 64 MiB.
const GPU_SLAB: usize = 1 << 24;

/// [`convert_tensor`] without importance weights, the quantizing on
/// `target` (the GPU) in slabs of whole rows, each decoded on the CPU in
/// parallel first.
fn convert_tensor_on(
    target: Target<'_>,
    t: &PlannedTensor,
    src: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let row_len = t.row_len() as usize;
    let n_rows = t.n_rows() as usize;
    let src_row = ggml::row_size(t.from, row_len).map_err(|e| e.to_string())?;
    let dst_row = ggml::row_size(t.to, row_len).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; dst_row * n_rows];
    if n_rows == 0 || row_len == 0 {
        return Ok(out);
    }
    let slab_rows = (GPU_SLAB / row_len).max(1);
    target.with_slab(slab_rows.min(n_rows) * row_len, |slab| {
        for (g, (s, d)) in src
            .chunks(src_row * slab_rows)
            .zip(out.chunks_mut(dst_row * slab_rows))
            .enumerate()
        {
            let vals = &mut slab[..s.len() / src_row * row_len];
            vals.par_chunks_mut(row_len * 64)
                .zip(s.par_chunks(src_row * 64))
                .try_for_each(|(v, s)| ggml::dequantize(t.from, s, v))
                .map_err(|e| e.to_string())?;
            target
                .quantize_ggml(t.to, vals, row_len, d)
                .map_err(|e| match e {
                    crate::device::DeviceError::Kernel(KernelError::NonFinite { index, value }) => {
                        KernelError::NonFinite {
                            index: g * slab_rows * row_len + index,
                            value,
                        }
                        .to_string()
                    }
                    e => e.to_string(),
                })?;
        }
        Ok::<(), String>(())
    })?;
    Ok(out)
}

/// Requantizes `src` (rows of `t.from`) into `t.to` keeping the source's
/// grid ([`ggml::requant::requantize`]), one expert matrix at a time with
/// its importance weights.
fn requantize_tensor(
    t: &PlannedTensor,
    src: &[u8],
    weights: Option<&[f32]>,
    release: &(dyn Fn(&[u8]) + Sync),
) -> std::result::Result<(Vec<u8>, RequantStats), KernelError> {
    let row_len = t.row_len() as usize;
    let n_rows = t.n_rows() as usize;
    let src_row = ggml::row_size(t.from, row_len)?;
    let dst_row = ggml::row_size(t.to, row_len)?;
    let mut out = vec![0u8; dst_row * n_rows];
    let mut stats = RequantStats::default();
    if n_rows == 0 || row_len == 0 {
        return Ok((out, stats));
    }
    let rows_per_matrix = if weights.is_some() {
        t.rows_per_matrix() as usize
    } else {
        n_rows
    };
    for (m, (s, d)) in src
        .chunks(src_row * rows_per_matrix)
        .zip(out.chunks_mut(dst_row * rows_per_matrix))
        .enumerate()
    {
        let w = weights.map(|w| &w[m * row_len..(m + 1) * row_len]);
        let st = requantize(t.from, t.to, s, row_len, w, d).map_err(|e| match e {
            KernelError::NonFinite { index, value } => KernelError::NonFinite {
                index: m * rows_per_matrix * row_len + index,
                value,
            },
            e => e,
        })?;
        release(s);
        stats = stats.merge(st);
    }
    Ok((out, stats))
}

/// `qforge quantize --method search`.
#[derive(Debug, Default)]
pub struct SearchOptions<'a> {
    /// Importance estimated by a calibration pass
    /// ([`crate::quant::calibrate`]), for tensors the plan gives no
    /// importance-matrix entry.
    pub estimate: Option<&'a ImportanceMatrix>,
}

impl SearchOptions<'_> {
    /// The estimate's weights for `t` (a 2-D matrix with an entry of its
    /// row length; the token embedding takes the output matrix's entry,
    /// which is the same matrix when the model ties them).
    fn estimate_for(&self, t: &PlannedTensor) -> Option<&[f32]> {
        let m = self.estimate?;
        let row = t.row_len() as usize;
        let fits = |v: &&[f32]| v.len() == row && t.dims.len() == 2;
        m.get(&t.name).filter(fits).or_else(|| {
            (t.name == "token_embd.weight")
                .then(|| m.get("output.weight"))
                .flatten()
                .filter(fits)
        })
    }
}

/// Values per row group: small enough that a group's f32 copy stays in a
/// core's L2 cache, large enough to amortize a task.
const GROUP_VALUES: usize = 32 * 1024;

/// Decodes `src` (rows of `t.from`) and encodes it as `t.to`, with the
/// importance weights of each expert matrix (and searched scales when
/// `search` asks for them and `t.to` has them). Rows are independent, so the
/// bytes are the same on any thread count.
fn convert_tensor(
    t: &PlannedTensor,
    src: &[u8],
    weights: Option<&[f32]>,
    search: bool,
    release: &(dyn Fn(&[u8]) + Sync),
) -> std::result::Result<Vec<u8>, KernelError> {
    let row_len = t.row_len() as usize;
    let n_rows = t.n_rows() as usize;
    let src_row = ggml::row_size(t.from, row_len)?;
    let dst_row = ggml::row_size(t.to, row_len)?;
    let mut out = vec![0u8; dst_row * n_rows];
    if n_rows == 0 || row_len == 0 {
        return Ok(out);
    }
    // Importance weights change with every expert matrix of ne1 rows.
    let rows_per_matrix = if weights.is_some() {
        t.rows_per_matrix() as usize
    } else {
        n_rows
    };
    let group_rows = (GROUP_VALUES / row_len).clamp(1, rows_per_matrix);
    let mut jobs = Vec::with_capacity(n_rows.div_ceil(group_rows));
    for (m, (s, d)) in src
        .chunks(src_row * rows_per_matrix)
        .zip(out.chunks_mut(dst_row * rows_per_matrix))
        .enumerate()
    {
        let w = weights.map(|w| &w[m * row_len..(m + 1) * row_len]);
        for (g, (s, d)) in s
            .chunks(src_row * group_rows)
            .zip(d.chunks_mut(dst_row * group_rows))
            .enumerate()
        {
            jobs.push((m * rows_per_matrix + g * group_rows, s, d, w));
        }
    }
    let first_error = jobs
        .into_par_iter()
        .map_init(Vec::new, |scratch: &mut Vec<f32>, (row0, s, d, w)| {
            scratch.resize(s.len() / src_row * row_len, 0.0);
            let decoded = ggml::dequantize(t.from, s, scratch);
            release(s);
            decoded
                .and_then(|()| {
                    if search {
                        ggml::quantize_search(t.to, scratch, row_len, w, d)
                    } else {
                        ggml::quantize(t.to, scratch, row_len, w, d)
                    }
                })
                .map_err(|e| match e {
                    KernelError::NonFinite { index, value } => KernelError::NonFinite {
                        index: row0 * row_len + index,
                        value,
                    },
                    e => e,
                })
        })
        .find_first(Result::is_err);
    match first_error {
        Some(Err(e)) => Err(e),
        _ => Ok(out),
    }
}
