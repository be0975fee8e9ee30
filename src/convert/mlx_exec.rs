//! The MLX affine arms of plan execution: reading rows of an MLX tensor
//! (`P.weight` words, `P.scales`, `P.biases`), writing one, and the
//! lossless transcodings between GGML Q4_0/Q4_1/Q8_0 blocks and MLX groups
//! that need no requantization.
//!
//! Everything works on groups of whole rows, in the output's row order, so
//! a tensor whose rows llama.cpp stores permuted is reordered on the way
//! and no copy of a whole tensor in f32 is ever made. Safetensors data may
//! start at any byte offset (mlx writes unpadded headers), so words and
//! scales are read from bytes, never reinterpreted in place.

use half::{bf16, f16};
use quant_kernels::mlx::{
    self, transcode, DequantPrecision, MlxDtype, MlxInput, MlxParams, MlxQuantized, ScaleBuf,
};
use quant_kernels::GgmlType;
use rayon::prelude::*;

use super::error::{ConvertError, Result};
use super::exec::MlxQuantizer;
use super::to_mlx::MlxMethod;
use super::view::{Encoding, FloatType, TensorBytes, ViewTensor};

/// The three tensors of one MLX affine matrix, as little-endian bytes.
#[derive(Debug, Default)]
pub struct MlxParts {
    /// `P.weight`: packed u32 words.
    pub weight: Vec<u8>,
    /// `P.scales`.
    pub scales: Vec<u8>,
    /// `P.biases`.
    pub biases: Vec<u8>,
}

impl MlxParts {
    fn append(&mut self, q: &MlxQuantized) {
        self.weight
            .extend(q.weight.iter().flat_map(|w| w.to_le_bytes()));
        self.scales.extend(q.scales.to_le_bytes());
        if let Some(b) = &q.biases {
            self.biases.extend(b.to_le_bytes());
        }
    }
}

/// mlx's dtype for a float type (None for F64, which MLX has no scales of).
pub fn mlx_dtype(f: FloatType) -> Option<MlxDtype> {
    match f {
        FloatType::F32 => Some(MlxDtype::F32),
        FloatType::F16 => Some(MlxDtype::F16),
        FloatType::BF16 => Some(MlxDtype::BF16),
        FloatType::F64 => None,
    }
}

/// The GGML block type with a lossless MLX counterpart, if `t` has one.
pub fn transcodable(t: GgmlType) -> Option<transcode::GgmlBlock> {
    match t {
        GgmlType::Q4_0 => Some(transcode::GgmlBlock::Q4_0),
        GgmlType::Q4_1 => Some(transcode::GgmlBlock::Q4_1),
        GgmlType::Q8_0 => Some(transcode::GgmlBlock::Q8_0),
        _ => None,
    }
}

/// Bits of the MLX groups a GGML block type maps to.
pub fn block_bits(b: transcode::GgmlBlock) -> u32 {
    match b {
        transcode::GgmlBlock::Q8_0 => 8,
        _ => 4,
    }
}

/// Geometry and parameters of an MLX affine encoding of rows of `cols`.
pub fn params_for(enc: Encoding, cols: usize) -> Result<(MlxParams, MlxDtype)> {
    let Encoding::MlxAffine {
        bits,
        group_size,
        scales,
    } = enc
    else {
        return Err(ConvertError::Unsupported(format!(
            "{enc} is not an MLX encoding"
        )));
    };
    let params = MlxParams::affine(bits, group_size as usize);
    params.validate()?;
    let dtype = mlx_dtype(scales)
        .ok_or_else(|| ConvertError::Unsupported("MLX scales cannot be stored as F64".into()))?;
    if cols == 0 || !cols.is_multiple_of(group_size as usize) {
        return Err(ConvertError::Unsupported(format!(
            "rows of {cols} do not hold whole MLX groups of {group_size}"
        )));
    }
    Ok((params, dtype))
}

/// The stored rows of an MLX tensor.
pub struct MlxRows<'a> {
    weight: &'a [u8],
    scales: &'a [u8],
    biases: &'a [u8],
    params: MlxParams,
    dtype: MlxDtype,
    cols: usize,
    rows: usize,
}

impl<'a> MlxRows<'a> {
    /// The rows of view tensor `t`, checked against its shape.
    pub fn of(t: &ViewTensor<'a>) -> Result<MlxRows<'a>> {
        let TensorBytes::MlxAffine {
            weight,
            scales,
            biases,
        } = t.bytes
        else {
            return Err(ConvertError::Unsupported(format!(
                "{} is not stored as MLX affine",
                t.name
            )));
        };
        let cols = t.shape.last().copied().unwrap_or(0) as usize;
        let rows = (t.n_elements() as usize).checked_div(cols).unwrap_or(0);
        let (params, dtype) = params_for(t.encoding, cols)?;
        let ssize = scale_size(dtype);
        let want_w = rows * params.words_per_row(cols) * 4;
        let want_s = rows * params.groups_per_row(cols) * ssize;
        if weight.len() != want_w || scales.len() != want_s || biases.len() != want_s {
            return Err(ConvertError::Unsupported(format!(
                "{} weight, {} scale and {} bias bytes do not fit {rows} rows of {cols} at {} bits, group {}",
                weight.len(),
                scales.len(),
                biases.len(),
                params.bits,
                params.group_size
            )));
        }
        Ok(MlxRows {
            weight,
            scales,
            biases,
            params,
            dtype,
            cols,
            rows,
        })
    }

    /// Number of stored rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The words, scales and biases of stored rows `idx`, in that order.
    fn gather(&self, idx: &[usize]) -> (Vec<u32>, ScaleBuf, ScaleBuf) {
        let wpr = self.params.words_per_row(self.cols) * 4;
        let gpr = self.params.groups_per_row(self.cols) * scale_size(self.dtype);
        let mut words = Vec::with_capacity(idx.len() * wpr / 4);
        let mut s = Vec::with_capacity(idx.len() * gpr);
        let mut b = Vec::with_capacity(idx.len() * gpr);
        for &r in idx {
            words.extend(
                self.weight[r * wpr..(r + 1) * wpr]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            s.extend_from_slice(&self.scales[r * gpr..(r + 1) * gpr]);
            b.extend_from_slice(&self.biases[r * gpr..(r + 1) * gpr]);
        }
        (words, scale_buf(self.dtype, &s), scale_buf(self.dtype, &b))
    }

    /// Dequantizes stored rows `idx` into `out` (f32 throughout:
    /// `q*scale + bias`, the values the quantization means).
    pub fn decode(&self, idx: &[usize], out: &mut [f32]) -> Result<()> {
        let (words, s, b) = self.gather(idx);
        mlx::dequantize_into(
            &words,
            s.as_scales(),
            Some(b.as_scales()),
            self.cols,
            &self.params,
            DequantPrecision::F32,
            out,
        )?;
        Ok(())
    }

    /// Stored rows `idx` as GGML blocks of `kind` without requantizing;
    /// also the number of blocks whose scale or bias the block cannot hold
    /// exactly.
    pub fn to_ggml(&self, kind: transcode::GgmlBlock, idx: &[usize]) -> Result<(Vec<u8>, usize)> {
        let (words, s, b) = self.gather(idx);
        let t = transcode::mlx_to_ggml(
            kind,
            &words,
            s.as_scales(),
            b.as_scales(),
            self.cols,
            self.params.group_size,
        )?;
        Ok((t.value, t.inexact_groups))
    }

    /// The GGML type these rows convert to without loss, if any: Q4_0 when
    /// every bias is `-8*scale` (a tensor that came from Q4_0), else Q4_1,
    /// for 4 bits; Q8_0 for 8 bits with every bias `-128*scale`. Scales and
    /// biases must be exact f16 values. Reads only the scales and biases.
    pub fn lossless_ggml(&self) -> Option<GgmlType> {
        let s = scale_buf(self.dtype, self.scales);
        let b = scale_buf(self.dtype, self.biases);
        let (s, b) = (to_f32(&s), to_f32(&b));
        let f16_exact = |x: f32| f16::from_f32(x).to_f32() == x;
        if !s.iter().all(|&x| f16_exact(x)) {
            return None;
        }
        match self.params.bits {
            4 if s.iter().zip(&b).all(|(&s, &b)| b == -8.0 * s) => Some(GgmlType::Q4_0),
            4 if b.iter().all(|&x| f16_exact(x)) => Some(GgmlType::Q4_1),
            8 if s.iter().zip(&b).all(|(&s, &b)| b == -128.0 * s) => Some(GgmlType::Q8_0),
            _ => None,
        }
    }
}

fn to_f32(b: &ScaleBuf) -> Vec<f32> {
    match b {
        ScaleBuf::F32(v) => v.clone(),
        ScaleBuf::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        ScaleBuf::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        ScaleBuf::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
    }
}

fn scale_size(d: MlxDtype) -> usize {
    match d {
        MlxDtype::F32 => 4,
        MlxDtype::F16 | MlxDtype::BF16 => 2,
    }
}

fn scale_buf(d: MlxDtype, bytes: &[u8]) -> ScaleBuf {
    match d {
        MlxDtype::F32 => ScaleBuf::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        MlxDtype::F16 => ScaleBuf::F16(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        MlxDtype::BF16 => ScaleBuf::BF16(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
    }
}

/// Quantizes rows of `cols` values as `mx.quantize` does for an array of
/// dtype `dtype` (or with searched scales, as `how` says): the values are
/// first rounded to it (mlx's `astype`), so scales and biases come out in
/// it too.
pub fn quantize_rows(
    vals: &[f32],
    cols: usize,
    params: &MlxParams,
    dtype: MlxDtype,
    how: MlxQuantizer<'_>,
) -> Result<MlxQuantized> {
    let run = |input: MlxInput<'_>| match how.method {
        MlxMethod::Rtn => mlx::quantize(input, cols, params),
        MlxMethod::Search => mlx::quantize_search(input, cols, params, how.importance),
    };
    Ok(match dtype {
        MlxDtype::F32 => run(MlxInput::F32(vals))?,
        MlxDtype::F16 => {
            let v: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            run(MlxInput::F16(&v))?
        }
        MlxDtype::BF16 => {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            run(MlxInput::BF16(&v))?
        }
    })
}

/// Converts GGML rows (whole blocks of `kind`, in output order) to MLX
/// group-32 tensors with scales in `dtype`; also the number of groups whose
/// scale or bias `dtype` cannot hold exactly.
pub fn ggml_rows_to_mlx(
    kind: transcode::GgmlBlock,
    blocks: &[u8],
    cols: usize,
    dtype: MlxDtype,
) -> Result<(MlxQuantized, usize)> {
    let t = transcode::ggml_to_mlx(kind, blocks, cols, dtype)?;
    Ok((t.value, t.inexact_groups))
}

/// Runs `work` over groups of about `chunk` values of whole output rows in
/// parallel and concatenates the parts in row order; the statistics of the
/// groups are summed (max, sum of squares, inexact count).
pub fn by_row_groups<F>(
    rows: usize,
    cols: usize,
    chunk: usize,
    work: F,
) -> Result<(MlxParts, (f64, f64), usize)>
where
    F: Fn(std::ops::Range<usize>) -> Result<(MlxQuantized, (f64, f64), usize)> + Sync,
{
    let per = (chunk / cols.max(1)).max(1);
    let groups: Vec<std::ops::Range<usize>> = (0..rows)
        .step_by(per)
        .map(|r| r..(r + per).min(rows))
        .collect();
    let done: Vec<(MlxQuantized, (f64, f64), usize)> =
        groups.into_par_iter().map(&work).collect::<Result<_>>()?;
    let mut parts = MlxParts::default();
    let mut stats = (0.0f64, 0.0f64);
    let mut inexact = 0;
    for (q, s, n) in &done {
        parts.append(q);
        stats = (stats.0.max(s.0), stats.1 + s.1);
        inexact += n;
    }
    Ok((parts, stats, inexact))
}
