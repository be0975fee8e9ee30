//! Executing one [`TensorPlan`]: the bytes of one output tensor.
//!
//! When the source encoding is the target's and no value changes, rows are
//! moved as byte ranges (a quantized row moves whole, losslessly).
//! Otherwise the rows are decoded to f32 in the target's order, shifted,
//! and encoded, with rayon over chunks of whole blocks. Arithmetic follows
//! convert_hf_to_gguf.py: BF16 sources are widened to F32 first, F16 ones
//! stay F16 through the value shift (torch's f16 add rounds to f16).

use half::f16;
use quant_kernels::float::{f32_to_bf16, f32_to_f16};
use quant_kernels::{ggml, GgmlType};
use rayon::prelude::*;

use super::error::{ConvertError, Result};
use super::mlx_exec::{self, MlxParts, MlxRows};
use super::plan::{PlanSource, TensorPlan};
use super::view::{Encoding, FloatType, ModelView, TensorBytes, ViewTensor};
use crate::device::{Device, Target, Work};
use crate::formats::mmap::ReleasePages;

/// How far an output's values are from the values it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Root mean square difference.
    pub rms: f64,
}

/// One output tensor's bytes, and its error when it was measured.
#[derive(Debug)]
pub struct Materialized {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Error against the exact (f32) values, for lossy steps when asked,
    /// and always for a transcoding that turned out inexact.
    pub error: Option<ErrorStats>,
    /// Blocks (or MLX groups) whose scale or bias a lossless transcoding
    /// could not store exactly: 0 for every other step.
    pub inexact: usize,
}

/// One MLX affine output tensor: its three parts, and its error when it
/// was measured.
#[derive(Debug)]
pub struct MlxMaterialized {
    /// `P.weight`, `P.scales`, `P.biases`.
    pub parts: MlxParts,
    /// Error against the exact (f32) values, for lossy steps when asked,
    /// and always for a transcoding that turned out inexact.
    pub error: Option<ErrorStats>,
    /// Groups whose scale or bias a lossless transcoding could not store
    /// exactly: 0 for every other step.
    pub inexact: usize,
}

/// Elements per parallel work item (rounded to whole blocks).
const CHUNK: usize = 1 << 16;

/// Elements per GPU submission: the f32 slab decoded for it is 64 MiB.
const GPU_SLAB: usize = 1 << 24;

fn unsupported_decode(enc: Encoding) -> ConvertError {
    match enc {
        Encoding::MlxAffine { .. } => ConvertError::Unsupported(
            "MLX affine tensors are decoded row by row (materialize), not as one buffer".into(),
        ),
        _ => ConvertError::Unsupported(format!(
            "qforge cannot dequantize {enc} tensors (quant-kernels reads: {})",
            ggml::QUANTIZABLE
                .iter()
                .chain(ggml::DECODE_ONLY)
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn unsupported_encode(enc: Encoding) -> ConvertError {
    ConvertError::Unsupported(format!(
        "converting to {enc} is not available here (quantize with `qforge quantize`)"
    ))
}

/// True when [`decode`] handles `enc`.
pub fn can_decode(enc: Encoding) -> bool {
    match enc {
        Encoding::Float(_) => true,
        Encoding::Ggml(t) => ggml::can_dequantize(t),
        Encoding::MlxAffine { .. } => false,
    }
}

/// True when [`encode`] handles `enc`.
pub fn can_encode(enc: Encoding) -> bool {
    match enc {
        Encoding::Float(_) => true,
        Encoding::Ggml(t) => ggml::can_quantize(t),
        Encoding::MlxAffine { .. } => false,
    }
}

fn decode_seq(enc: Encoding, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    match enc {
        Encoding::Float(FloatType::F32) => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Encoding::Float(FloatType::F16) => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Encoding::Float(FloatType::BF16) => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        Encoding::Float(FloatType::F64) => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
            }
        }
        Encoding::Ggml(t) => ggml::dequantize(t, bytes, out)?,
        e => return Err(unsupported_decode(e)),
    }
    Ok(())
}

fn encode_seq(enc: Encoding, vals: &[f32], out: &mut [u8]) -> Result<()> {
    match enc {
        Encoding::Float(FloatType::F32) => {
            for (o, v) in out.chunks_exact_mut(4).zip(vals) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Encoding::Float(FloatType::F16) => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                o.copy_from_slice(&f32_to_f16(*v).to_bits().to_le_bytes());
            }
        }
        Encoding::Float(FloatType::BF16) => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                o.copy_from_slice(&f32_to_bf16(*v).to_bits().to_le_bytes());
            }
        }
        Encoding::Float(FloatType::F64) => {
            for (o, v) in out.chunks_exact_mut(8).zip(vals) {
                o.copy_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        // ggml's quantizers work block by block (no importance matrix
        // here), so a run of whole blocks is quantized as one row.
        Encoding::Ggml(t) if !vals.is_empty() => ggml::quantize(t, vals, vals.len(), None, out)?,
        Encoding::Ggml(_) => {}
        e => return Err(unsupported_encode(e)),
    }
    Ok(())
}

/// (elements, bytes) of one parallel chunk of `enc`.
fn chunk_geometry(enc: Encoding) -> Result<(usize, usize)> {
    let block = enc.block_size() as usize;
    let elems = (CHUNK / block).max(1) * block;
    let bytes = enc
        .bytes_for(elems as u64)
        .ok_or_else(|| unsupported_decode(enc))? as usize;
    Ok((elems, bytes))
}

/// Decodes `out.len()` values (whole blocks) from `bytes`.
pub fn decode(enc: Encoding, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !can_decode(enc) {
        return Err(unsupported_decode(enc));
    }
    check_len(enc, bytes.len(), out.len())?;
    let (elems, nbytes) = chunk_geometry(enc)?;
    bytes
        .par_chunks(nbytes)
        .zip(out.par_chunks_mut(elems))
        .try_for_each(|(b, o)| decode_seq(enc, b, o))
}

/// Encodes `vals` (whole blocks) into `out`.
pub fn encode(enc: Encoding, vals: &[f32], out: &mut [u8]) -> Result<()> {
    if !can_encode(enc) {
        return Err(unsupported_encode(enc));
    }
    check_len(enc, out.len(), vals.len())?;
    let (elems, nbytes) = chunk_geometry(enc)?;
    vals.par_chunks(elems)
        .zip(out.par_chunks_mut(nbytes))
        .try_for_each(|(v, o)| encode_seq(enc, v, o))
}

fn check_len(enc: Encoding, bytes: usize, elems: usize) -> Result<()> {
    if !(elems as u64).is_multiple_of(enc.block_size())
        || enc.bytes_for(elems as u64) != Some(bytes as u64)
    {
        return Err(ConvertError::Unsupported(format!(
            "{bytes} bytes of {enc} do not hold {elems} values in whole blocks"
        )));
    }
    Ok(())
}

/// Produces the bytes of one planned tensor; with `measure`, also the error
/// of a lossy step against the exact values.
pub fn materialize(view: &ModelView<'_>, plan: &TensorPlan, measure: bool) -> Result<Materialized> {
    materialize_on(view, plan, measure, &Device::cpu())
}

/// [`materialize`] with the quantizing step on `device` where the device's
/// rule sends it (the bytes are the same either way).
pub fn materialize_on(
    view: &ModelView<'_>,
    plan: &TensorPlan,
    measure: bool,
    device: &Device,
) -> Result<Materialized> {
    materialize_inner(view, plan, measure, device).map_err(|e| e.for_tensor(&plan.name))
}

/// The device work of a plan step: quantizing to a GGML block type from
/// another encoding. Commands list it for [`Device::select`].
pub fn device_work(plan: &TensorPlan) -> Option<Work> {
    match plan.to {
        Encoding::Ggml(ty) if plan.from != plan.to || plan.shift != 0.0 => {
            Some(Work::QuantizeGgml {
                ty,
                values: plan.n_elements(),
            })
        }
        _ => None,
    }
}

fn materialize_inner(
    view: &ModelView<'_>,
    plan: &TensorPlan,
    measure: bool,
    device: &Device,
) -> Result<Materialized> {
    let n_out = plan.n_elements() as usize;
    let out_len = plan
        .out_bytes()
        .ok_or_else(|| unsupported_encode(plan.to))? as usize;
    let (src, src_shape) = match &plan.source {
        PlanSource::Values(v) => {
            let mut bytes = vec![0u8; out_len];
            encode(plan.to, v, &mut bytes)?;
            return Ok(Materialized {
                bytes,
                error: None,
                inexact: 0,
            });
        }
        PlanSource::Tensor(i) => {
            let t = &view.tensors[*i];
            match t.bytes {
                TensorBytes::Plain(b) => (b, &t.shape),
                TensorBytes::MlxAffine { .. } => return materialize_from_mlx(plan, t, measure),
            }
        }
    };
    let rows_src = src_shape.first().copied().unwrap_or(1) as usize;
    let rows_out = plan.rows() as usize;
    let n_src: usize = src_shape.iter().product::<u64>() as usize;
    let row_elems = n_src.checked_div(rows_src).unwrap_or(0);
    let row_aligned = (row_elems as u64).is_multiple_of(plan.from.block_size());
    let src_row = |r: usize| -> usize {
        let c = plan.rows_to.canonical_row(r as u64, rows_out as u64);
        plan.rows_from.stored_row(c, rows_src as u64) as usize
    };

    if plan.is_byte_copy() && row_aligned {
        let slice = src.len().checked_div(rows_src).unwrap_or(0);
        let bytes = if plan.permutes() {
            let mut out = vec![0u8; out_len];
            out.par_chunks_mut(slice.max(1))
                .enumerate()
                .for_each(|(r, o)| {
                    let s = src_row(r);
                    o.copy_from_slice(&src[s * slice..(s + 1) * slice]);
                });
            out
        } else {
            src[..out_len].to_vec()
        };
        return Ok(Materialized {
            bytes,
            error: None,
            inexact: 0,
        });
    }

    let row_out_bytes = plan.to.bytes_for(row_elems as u64);
    if let (Some(work), Encoding::Ggml(ty)) = (device_work(plan), plan.to) {
        let target = device.target(work);
        if target.is_gpu()
            && row_aligned
            && row_elems > 0
            && (row_elems as u64).is_multiple_of(plan.to.block_size())
            && can_decode(plan.from)
        {
            let rows = RowSource {
                plan,
                src,
                src_slice: src.len() / rows_src,
                row_elems,
                src_row: &src_row,
            };
            return quantize_rows_on(target, ty, &rows, rows_out, out_len, measure);
        }
    }
    let fused = row_aligned
        && row_elems > 0
        && (row_elems as u64).is_multiple_of(plan.to.block_size())
        && can_decode(plan.from)
        && can_encode(plan.to);
    if !fused {
        return materialize_whole(
            plan, src, n_src, rows_out, row_elems, &src_row, out_len, measure,
        );
    }
    // Rows are decoded, shifted and encoded in groups of about CHUNK
    // values, so no f32 copy of the whole tensor is ever made.
    let src_slice = src.len() / rows_src;
    let out_slice = row_out_bytes.ok_or_else(|| unsupported_encode(plan.to))? as usize;
    let group_rows = (CHUNK / row_elems).max(1);
    let mut bytes = vec![0u8; out_len];
    let stats = bytes
        .par_chunks_mut(group_rows * out_slice)
        .enumerate()
        .map(|(g, out)| -> Result<(f64, f64)> {
            let first = g * group_rows;
            let n_rows = out.len() / out_slice;
            let mut vals = vec![0f32; n_rows * row_elems];
            for (k, v) in vals.chunks_exact_mut(row_elems).enumerate() {
                let s = src_row(first + k);
                decode_seq(plan.from, &src[s * src_slice..(s + 1) * src_slice], v)?;
            }
            // Rows in stored order were read once: hand their pages back
            // now, so a large tensor's source and output are not resident
            // in full at the same time.
            if let (false, Some(pages)) = (plan.permutes(), view.pages) {
                pages.release(&src[first * src_slice..(first + n_rows) * src_slice]);
            }
            apply_shift(plan, &mut vals);
            encode_seq(plan.to, &vals, out)?;
            if measure && !plan.lossless {
                let mut back = vec![0f32; vals.len()];
                decode_seq(plan.to, out, &mut back)?;
                Ok(diff_sums(&vals, &back))
            } else {
                Ok((0.0, 0.0))
            }
        })
        .try_reduce(|| (0.0, 0.0), |a, b| Ok((a.0.max(b.0), a.1 + b.1)))?;
    let error = (measure && !plan.lossless).then(|| ErrorStats {
        max_abs: stats.0,
        rms: (stats.1 / n_out.max(1) as f64).sqrt(),
    });
    Ok(Materialized {
        bytes,
        error,
        inexact: 0,
    })
}

/// The rows of one planned tensor, as the executor reads them.
struct RowSource<'a> {
    plan: &'a TensorPlan,
    src: &'a [u8],
    /// Source bytes per row.
    src_slice: usize,
    row_elems: usize,
    /// Output row -> source row.
    src_row: &'a (dyn Fn(usize) -> usize + Sync),
}

/// Quantizes a tensor to `ty` on `target` (the GPU), in slabs of whole
/// rows: each slab is decoded and shifted on the CPU, as the fused path
/// does, then quantized in one submission.
fn quantize_rows_on(
    target: Target<'_>,
    ty: GgmlType,
    rows: &RowSource<'_>,
    rows_out: usize,
    out_len: usize,
    measure: bool,
) -> Result<Materialized> {
    let RowSource {
        plan,
        src,
        src_slice,
        row_elems,
        src_row,
    } = *rows;
    let out_slice = out_len / rows_out.max(1);
    let slab_rows = (GPU_SLAB / row_elems).max(1);
    let mut bytes = vec![0u8; out_len];
    let (mut max_abs, mut sum_sq) = (0f64, 0f64);
    let slab_len = slab_rows.min(rows_out) * row_elems;
    target.with_slab(slab_len, |slab| {
        for (g, out) in bytes.chunks_mut(slab_rows * out_slice).enumerate() {
            let first = g * slab_rows;
            let vals = &mut slab[..out.len() / out_slice * row_elems];
            vals.par_chunks_mut(row_elems)
                .enumerate()
                .try_for_each(|(k, v)| {
                    let s = src_row(first + k);
                    decode_seq(plan.from, &src[s * src_slice..(s + 1) * src_slice], v)
                })?;
            apply_shift(plan, vals);
            target.quantize_ggml(ty, vals, row_elems, out)?;
            if measure && !plan.lossless {
                let mut back = vec![0f32; vals.len()];
                quant_kernels::ggml::dequantize(ty, out, &mut back)?;
                let e = error_stats(vals, &back);
                max_abs = max_abs.max(e.max_abs);
                sum_sq += e.rms * e.rms * vals.len() as f64;
            }
        }
        Ok::<(), ConvertError>(())
    })?;
    let error = (measure && !plan.lossless).then(|| ErrorStats {
        max_abs,
        rms: (sum_sq / plan.n_elements().max(1) as f64).sqrt(),
    });
    Ok(Materialized {
        bytes,
        error,
        inexact: 0,
    })
}

/// Adds the plan's shift; an F16 source stays F16 through the add, as
/// torch's f16 arithmetic rounds it.
fn apply_shift(plan: &TensorPlan, vals: &mut [f32]) {
    if plan.shift == 0.0 {
        return;
    }
    let shift = plan.shift;
    if plan.from == Encoding::Float(FloatType::F16) {
        vals.iter_mut()
            .for_each(|v| *v = f16::from_f32(*v + shift).to_f32());
    } else {
        vals.iter_mut().for_each(|v| *v += shift);
    }
}

/// The slow path for tensors whose rows do not hold whole blocks: decode
/// everything, reorder, encode.
#[allow(clippy::too_many_arguments)]
fn materialize_whole(
    plan: &TensorPlan,
    src: &[u8],
    n_src: usize,
    rows_out: usize,
    row_elems: usize,
    src_row: &(dyn Fn(usize) -> usize + Sync),
    out_len: usize,
    measure: bool,
) -> Result<Materialized> {
    let n_out = plan.n_elements() as usize;
    let mut all = vec![0f32; n_src];
    decode(plan.from, src, &mut all)?;
    let mut vals = vec![0f32; n_out];
    for r in 0..rows_out {
        let s = src_row(r);
        vals[r * row_elems..(r + 1) * row_elems]
            .copy_from_slice(&all[s * row_elems..(s + 1) * row_elems]);
    }
    drop(all);
    apply_shift(plan, &mut vals);
    let mut bytes = vec![0u8; out_len];
    encode(plan.to, &vals, &mut bytes)?;
    let error = if measure && !plan.lossless {
        let mut back = vec![0f32; n_out];
        decode(plan.to, &bytes, &mut back)?;
        Some(error_stats(&vals, &back))
    } else {
        None
    };
    Ok(Materialized {
        bytes,
        error,
        inexact: 0,
    })
}

fn diff_sums(exact: &[f32], got: &[f32]) -> (f64, f64) {
    exact
        .iter()
        .zip(got)
        .fold((0.0f64, 0.0f64), |(m, s), (a, b)| {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            (m.max(d), s + d * d)
        })
}

/// Max and RMS difference of two equally long value lists.
pub fn error_stats(exact: &[f32], got: &[f32]) -> ErrorStats {
    let (max_abs, sum_sq) = exact
        .par_iter()
        .zip(got.par_iter())
        .map(|(a, b)| {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            (d, d * d)
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0.max(y.0), x.1 + y.1));
    let n = exact.len().max(1) as f64;
    ErrorStats {
        max_abs,
        rms: (sum_sq / n).sqrt(),
    }
}

/// The stored rows of a source tensor, decoded to f32 on demand.
enum SourceRows<'a> {
    Plain {
        enc: Encoding,
        bytes: &'a [u8],
        row_bytes: usize,
        rows: usize,
    },
    Mlx(MlxRows<'a>),
}

impl<'a> SourceRows<'a> {
    fn of(t: &ViewTensor<'a>, cols: usize) -> Result<SourceRows<'a>> {
        match t.bytes {
            TensorBytes::MlxAffine { .. } => Ok(SourceRows::Mlx(MlxRows::of(t)?)),
            TensorBytes::Plain(bytes) => {
                let enc = t.encoding;
                let row_bytes = (cols as u64)
                    .is_multiple_of(enc.block_size())
                    .then(|| enc.bytes_for(cols as u64))
                    .flatten()
                    .ok_or_else(|| {
                        ConvertError::Unsupported(format!(
                            "rows of {cols} values do not hold whole {enc} blocks"
                        ))
                    })? as usize;
                let rows = bytes.len().checked_div(row_bytes).unwrap_or(0);
                if rows * row_bytes != bytes.len() || !can_decode(enc) {
                    return Err(unsupported_decode(enc));
                }
                Ok(SourceRows::Plain {
                    enc,
                    bytes,
                    row_bytes,
                    rows,
                })
            }
        }
    }

    fn rows(&self) -> usize {
        match self {
            SourceRows::Plain { rows, .. } => *rows,
            SourceRows::Mlx(m) => m.rows(),
        }
    }

    /// The stored bytes of rows `idx`, one after the other (plain sources).
    fn gather_bytes(&self, idx: &[usize]) -> Vec<u8> {
        match self {
            SourceRows::Plain {
                bytes, row_bytes, ..
            } => idx
                .iter()
                .flat_map(|&r| &bytes[r * row_bytes..(r + 1) * row_bytes])
                .copied()
                .collect(),
            SourceRows::Mlx(_) => Vec::new(),
        }
    }

    /// Hands the mapped pages of stored rows `rows` back (plain sources;
    /// MLX sources are released whole by the writer).
    fn release_rows(&self, rows: std::ops::Range<usize>, pages: Option<&dyn ReleasePages>) {
        if let (
            SourceRows::Plain {
                bytes, row_bytes, ..
            },
            Some(p),
        ) = (self, pages)
        {
            p.release(&bytes[rows.start * row_bytes..rows.end * row_bytes]);
        }
    }

    /// Decodes stored rows `idx` into `out`, in that order.
    fn decode(&self, idx: &[usize], out: &mut [f32]) -> Result<()> {
        match self {
            SourceRows::Plain {
                enc,
                bytes,
                row_bytes,
                ..
            } => {
                let cols = out.len() / idx.len().max(1);
                for (k, &r) in idx.iter().enumerate() {
                    decode_seq(
                        *enc,
                        &bytes[r * row_bytes..(r + 1) * row_bytes],
                        &mut out[k * cols..(k + 1) * cols],
                    )?;
                }
                Ok(())
            }
            SourceRows::Mlx(m) => m.decode(idx, out),
        }
    }
}

/// Output row `r`'s stored row in the source.
fn source_row(plan: &TensorPlan, rows_src: usize, rows_out: usize, r: usize) -> usize {
    let c = plan.rows_to.canonical_row(r as u64, rows_out as u64);
    plan.rows_from.stored_row(c, rows_src as u64) as usize
}

/// Output rows and row length of a plan step (a 1-D tensor is one row).
fn out_geometry(plan: &TensorPlan) -> (usize, usize) {
    let cols = plan.shape.last().copied().unwrap_or(1) as usize;
    let rows = (plan.n_elements() as usize).checked_div(cols).unwrap_or(0);
    (rows, cols)
}

/// A plain (float or ggml) output from an MLX affine source: the GGML
/// blocks carried over when the plan asks for a type that holds the
/// groups exactly (4-bit to Q4_0/Q4_1, 8-bit to Q8_0), dequantized and
/// encoded otherwise.
fn materialize_from_mlx(
    plan: &TensorPlan,
    t: &ViewTensor<'_>,
    measure: bool,
) -> Result<Materialized> {
    let (rows_out, cols) = out_geometry(plan);
    let src = SourceRows::of(t, cols)?;
    let rows_src = src.rows();
    if !can_encode(plan.to) || !(cols as u64).is_multiple_of(plan.to.block_size()) {
        return Err(unsupported_encode(plan.to));
    }
    let out_row = plan
        .to
        .bytes_for(cols as u64)
        .ok_or_else(|| unsupported_encode(plan.to))? as usize;
    let source_bits = match t.encoding {
        Encoding::MlxAffine { bits, .. } => bits,
        _ => 0,
    };
    let kind = match (plan.to, &src) {
        (Encoding::Ggml(g), SourceRows::Mlx(_)) if plan.shift == 0.0 => {
            mlx_exec::transcodable(g).filter(|k| mlx_exec::block_bits(*k) == source_bits)
        }
        _ => None,
    };
    let group_rows = (CHUNK / cols.max(1)).max(1);
    let mut bytes = vec![0u8; rows_out * out_row];
    let (max, sum, inexact) = bytes
        .par_chunks_mut((group_rows * out_row).max(1))
        .enumerate()
        .map(|(g, out)| -> Result<(f64, f64, usize)> {
            let first = g * group_rows;
            let idx: Vec<usize> = (first..first + out.len() / out_row)
                .map(|r| source_row(plan, rows_src, rows_out, r))
                .collect();
            let mut vals = vec![0f32; idx.len() * cols];
            let inexact = match (kind, &src) {
                (Some(k), SourceRows::Mlx(m)) => {
                    let (blocks, inexact) = m.to_ggml(k, &idx)?;
                    out.copy_from_slice(&blocks);
                    if (!measure || plan.lossless) && inexact == 0 {
                        return Ok((0.0, 0.0, 0));
                    }
                    src.decode(&idx, &mut vals)?;
                    inexact
                }
                _ => {
                    src.decode(&idx, &mut vals)?;
                    apply_shift(plan, &mut vals);
                    encode_seq(plan.to, &vals, out)?;
                    if !measure || plan.lossless {
                        return Ok((0.0, 0.0, 0));
                    }
                    0
                }
            };
            let mut back = vec![0f32; vals.len()];
            decode_seq(plan.to, out, &mut back)?;
            let (m, s) = diff_sums(&vals, &back);
            Ok((m, s, inexact))
        })
        .try_reduce(
            || (0.0, 0.0, 0),
            |a, b| Ok((a.0.max(b.0), a.1 + b.1, a.2 + b.2)),
        )?;
    let error = ((measure && !plan.lossless) || inexact > 0).then(|| ErrorStats {
        max_abs: max,
        rms: (sum / (rows_out * cols).max(1) as f64).sqrt(),
    });
    Ok(Materialized {
        bytes,
        error,
        inexact,
    })
}

/// How [`materialize_mlx`] quantizes values (tensors carried over without
/// requantizing ignore it).
#[derive(Debug, Clone, Copy)]
pub struct MlxQuantizer<'a> {
    /// Round to nearest or the search.
    pub method: super::to_mlx::MlxMethod,
    /// Per-column importance for the search.
    pub importance: Option<&'a [f32]>,
}

/// Produces the three tensors of one planned MLX affine output (`to` is
/// [`Encoding::MlxAffine`]); with `measure`, also the error of a lossy
/// step.
///
/// GGML Q4_0/Q4_1/Q8_0 rows going to the matching bits with groups of 32
/// carry their blocks over without requantizing; an MLX source already in
/// the target encoding is copied; everything else is decoded to f32, rounded
/// to the scales' dtype and quantized as `how` says: exactly as
/// `mx.quantize` does on mlx's CPU backend, or with searched scales.
pub fn materialize_mlx(
    view: &ModelView<'_>,
    plan: &TensorPlan,
    measure: bool,
    how: MlxQuantizer<'_>,
) -> Result<MlxMaterialized> {
    materialize_mlx_inner(view, plan, measure, how).map_err(|e| e.for_tensor(&plan.name))
}

fn materialize_mlx_inner(
    view: &ModelView<'_>,
    plan: &TensorPlan,
    measure: bool,
    how: MlxQuantizer<'_>,
) -> Result<MlxMaterialized> {
    let PlanSource::Tensor(i) = plan.source else {
        return Err(ConvertError::Unsupported(
            "computed tensors are never MLX-quantized".into(),
        ));
    };
    let t = &view.tensors[i];
    let (rows_out, cols) = out_geometry(plan);
    let (params, dtype) = mlx_exec::params_for(plan.to, cols)?;
    let src = SourceRows::of(t, cols)?;
    let rows_src = src.rows();

    if plan.is_byte_copy() && !plan.permutes() && rows_out == rows_src {
        if let TensorBytes::MlxAffine {
            weight,
            scales,
            biases,
        } = t.bytes
        {
            return Ok(MlxMaterialized {
                parts: MlxParts {
                    weight: weight.to_vec(),
                    scales: scales.to_vec(),
                    biases: biases.to_vec(),
                },
                error: None,
                inexact: 0,
            });
        }
    }
    let transcode = match t.encoding {
        Encoding::Ggml(g) if plan.shift == 0.0 && params.group_size == 32 => {
            mlx_exec::transcodable(g).filter(|k| mlx_exec::block_bits(*k) == params.bits)
        }
        _ => None,
    };
    let lossy = !plan.lossless;
    let (parts, (max, sum), inexact) = mlx_exec::by_row_groups(rows_out, cols, CHUNK, |range| {
        let idx: Vec<usize> = range
            .map(|r| source_row(plan, rows_src, rows_out, r))
            .collect();
        let mut vals = vec![0f32; idx.len() * cols];
        let (q, inexact) = match (transcode, t.encoding) {
            (Some(kind), Encoding::Ggml(g)) => {
                let blocks = src.gather_bytes(&idx);
                let (q, inexact) = mlx_exec::ggml_rows_to_mlx(kind, &blocks, cols, dtype)?;
                if !(measure && lossy) && inexact == 0 {
                    return Ok((q, (0.0, 0.0), 0));
                }
                ggml::dequantize(g, &blocks, &mut vals)?;
                (q, inexact)
            }
            _ => {
                src.decode(&idx, &mut vals)?;
                if let (false, Some(&a), Some(&b)) = (plan.permutes(), idx.first(), idx.last()) {
                    src.release_rows(a..b + 1, view.pages);
                }
                apply_shift(plan, &mut vals);
                let q = mlx_exec::quantize_rows(&vals, cols, &params, dtype, how)?;
                if !(measure && lossy) {
                    return Ok((q, (0.0, 0.0), 0));
                }
                (q, 0)
            }
        };
        let back = quant_kernels::mlx::dequantize(
            &q.weight,
            q.scales.as_scales(),
            q.biases.as_ref().map(|b| b.as_scales()),
            cols,
            &params,
            quant_kernels::mlx::DequantPrecision::F32,
        )?;
        Ok((q, diff_sums(&vals, &back), inexact))
    })?;
    let error = ((measure && lossy) || inexact > 0).then(|| ErrorStats {
        max_abs: max,
        rms: (sum / (rows_out * cols).max(1) as f64).sqrt(),
    });
    Ok(MlxMaterialized {
        parts,
        error,
        inexact,
    })
}
