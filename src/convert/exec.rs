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
use quant_kernels::GgmlType;
use rayon::prelude::*;

use super::error::{ConvertError, Result};
use super::ggml_fallback;
use super::plan::{PlanSource, TensorPlan};
use super::view::{Encoding, FloatType, ModelView, TensorBytes};

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
    /// Error against the exact (f32) values, for lossy steps when asked.
    pub error: Option<ErrorStats>,
}

/// Elements per parallel work item (rounded to whole blocks).
const CHUNK: usize = 1 << 16;

fn unsupported_decode(enc: Encoding) -> ConvertError {
    match enc {
        Encoding::MlxAffine { .. } => {
            ConvertError::Unsupported("reading MLX affine tensors comes with the MLX converter".into())
        }
        _ => ConvertError::Unsupported(format!(
            "dequantizing {enc} needs quant-kernels' ggml module, which this build does not have yet"
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
        Encoding::Ggml(t) => ggml_fallback::can_dequantize(t),
        Encoding::MlxAffine { .. } => false,
    }
}

/// True when [`encode`] handles `enc`.
pub fn can_encode(enc: Encoding) -> bool {
    match enc {
        Encoding::Float(_) => true,
        Encoding::Ggml(t) => ggml_fallback::can_quantize(t),
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
        Encoding::Ggml(t) if ggml_fallback::can_dequantize(t) => {
            ggml_fallback::dequantize(t, bytes, out)
        }
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
        Encoding::Ggml(GgmlType::Q8_0) => ggml_fallback::quantize_q8_0(vals, out),
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
    materialize_inner(view, plan, measure).map_err(|e| e.for_tensor(&plan.name))
}

fn materialize_inner(
    view: &ModelView<'_>,
    plan: &TensorPlan,
    measure: bool,
) -> Result<Materialized> {
    let n_out = plan.n_elements() as usize;
    let out_len = plan
        .out_bytes()
        .ok_or_else(|| unsupported_encode(plan.to))? as usize;
    let (src, src_shape) = match &plan.source {
        PlanSource::Values(v) => {
            let mut bytes = vec![0u8; out_len];
            encode(plan.to, v, &mut bytes)?;
            return Ok(Materialized { bytes, error: None });
        }
        PlanSource::Tensor(i) => {
            let t = &view.tensors[*i];
            match t.bytes {
                TensorBytes::Plain(b) => (b, &t.shape),
                TensorBytes::MlxAffine { .. } => return Err(unsupported_decode(t.encoding)),
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
        return Ok(Materialized { bytes, error: None });
    }

    let row_out_bytes = plan.to.bytes_for(row_elems as u64);
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
    Ok(Materialized { bytes, error })
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
    Ok(Materialized { bytes, error })
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
