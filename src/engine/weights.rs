//! Weight matrices read straight from their stored bytes, one storage kind
//! per [`Weight`] implementation, and the one matrix-multiply driver they
//! all share (rayon across output rows).
//!
//! GGUF matrices of every type go through quant-kernels' GGML dot products
//! on the stored blocks, with activations quantized to the type's
//! `vec_dot_type` as ggml's CPU backend does. Safetensors and MLX matrices
//! are decoded a tile of rows at a time by quant-kernels' dequantizers and
//! multiplied in f32, as their references compute.
//!
//! A weight of `rows x cols` maps `cols` inputs to `rows` outputs (the
//! layout of transformers' `Linear.weight`, GGUF's `ne = [cols, rows]`).

use std::ops::Range;

use quant_kernels::ggml;
use quant_kernels::mlx::{MlxDtype, MlxParams};
use quant_kernels::GgmlType;
use rayon::prelude::*;

use super::error::{EngineError, Result};

/// How a weight's dot product wants its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// f32 as computed (safetensors and MLX weights).
    F32,
    /// Converted to this GGML type (ggml's `vec_dot_type` of the weight:
    /// Q8_0, Q8_1, Q8_K, or F32/F16/BF16 for float weights).
    Ggml(GgmlType),
}

/// A batch of activations prepared for one [`ActFormat`]: `n_tok` rows of
/// `cols` values.
pub struct PreparedActs<'x> {
    /// Token rows.
    pub n_tok: usize,
    /// Values per row.
    pub cols: usize,
    format: ActFormat,
    /// f32 rows ([`ActFormat::F32`]).
    values: &'x [f32],
    /// Encoded rows ([`ActFormat::Ggml`]), `row_bytes` each.
    bytes: Vec<u8>,
    row_bytes: usize,
}

impl<'x> PreparedActs<'x> {
    /// Prepares `x` (`n_tok` rows of `cols`) for `format`. Fails on a NaN
    /// or infinite activation, which no GGML activation type can hold.
    pub fn new(format: ActFormat, x: &'x [f32], cols: usize) -> Result<PreparedActs<'x>> {
        let n_tok = x.len() / cols;
        match format {
            ActFormat::F32 => Ok(PreparedActs {
                n_tok,
                cols,
                format,
                values: x,
                bytes: Vec::new(),
                row_bytes: 0,
            }),
            ActFormat::Ggml(vdt) => {
                let row_bytes = ggml::row_size(vdt, cols).map_err(EngineError::kernel)?;
                let mut bytes = vec![0u8; n_tok * row_bytes];
                let encode = |(dst, src): (&mut [u8], &[f32])| {
                    ggml::quantize_activations(vdt, src, dst).map_err(EngineError::kernel)
                };
                if n_tok >= 16 {
                    bytes
                        .par_chunks_exact_mut(row_bytes)
                        .zip(x.par_chunks_exact(cols))
                        .with_min_len(8)
                        .try_for_each(encode)?;
                } else {
                    bytes
                        .chunks_exact_mut(row_bytes)
                        .zip(x.chunks_exact(cols))
                        .try_for_each(encode)?;
                }
                Ok(PreparedActs {
                    n_tok,
                    cols,
                    format,
                    values: &[],
                    bytes,
                    row_bytes,
                })
            }
        }
    }

    /// Token `t`'s f32 row.
    pub fn row(&self, t: usize) -> &[f32] {
        &self.values[t * self.cols..(t + 1) * self.cols]
    }

    /// The encoded rows of tokens `toks`.
    pub fn encoded_rows(&self, toks: Range<usize>) -> &[u8] {
        &self.bytes[toks.start * self.row_bytes..toks.end * self.row_bytes]
    }
}

/// f32 values a generating tile decodes at a time (32 KiB, within L1;
/// at least 4 rows).
const GEN_DECODE_VALUES: usize = 8192;
/// Most rows of one such block.
const GEN_DECODE_MAX_ROWS: usize = 64;

/// A weight matrix in its stored form.
pub trait Weight: Send + Sync {
    /// Output rows.
    fn rows(&self) -> usize;
    /// Input columns.
    fn cols(&self) -> usize;
    /// Storage type, for messages (`F16`, `Q4_K`, `mlx 4-bit g64`).
    fn type_name(&self) -> String;
    /// How activations are prepared before the dot products.
    fn act_format(&self) -> ActFormat;
    /// Decodes rows `rows` into `out` (`rows.len() * cols` values).
    fn rows_to_f32(&self, rows: Range<usize>, out: &mut [f32]);
    /// Decodes row `row` into `out` (`cols` values).
    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        self.rows_to_f32(row..row + 1, out);
    }
    /// Whether a batch is best split across threads by tokens (each task
    /// takes every row) rather than by rows: true where [`Weight::tile`]
    /// reads the stored rows without decoding them first, so a task costs
    /// the same whatever its rows.
    fn split_by_tokens(&self) -> bool {
        false
    }
    /// Dot products of rows `rows` with activation rows `toks`:
    /// `out[(t - toks.start) * rows.len() + i] = W[rows.start + i] .
    /// acts[t]`. `scratch` is the caller's reusable buffer. The default
    /// decodes the tile to f32 once and multiplies it with f32 activations.
    fn tile(
        &self,
        rows: Range<usize>,
        acts: &PreparedActs,
        toks: Range<usize>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let n = rows.len();
        let cols = self.cols();
        if toks.len() <= 2 {
            // Generation: each row is used once or twice; decode a few
            // rows (whole tiles of 4 where the rows allow) into a buffer
            // that stays in L1 and use them at once, side by side (one dot
            // product at a time waits on its own additions).
            let block = (GEN_DECODE_VALUES / cols.max(1) / 4 * 4)
                .clamp(4, GEN_DECODE_MAX_ROWS)
                .min(n.max(1));
            scratch.resize(block * cols, 0.0);
            let x = &acts.values[toks.start * cols..toks.end * cols];
            let mut part = [0f32; 2 * GEN_DECODE_MAX_ROWS];
            for r0 in (0..n).step_by(block) {
                let m = block.min(n - r0);
                let w = &mut scratch[..m * cols];
                self.rows_to_f32(rows.start + r0..rows.start + r0 + m, w);
                let part = &mut part[..m * toks.len()];
                quant_kernels::vector::dot_tile(w, x, cols, part);
                for j in 0..toks.len() {
                    out[j * n + r0..j * n + r0 + m].copy_from_slice(&part[j * m..(j + 1) * m]);
                }
            }
            return;
        }
        scratch.resize(n * cols, 0.0);
        self.rows_to_f32(rows, scratch);
        // The same dot products, several side by side.
        let x = &acts.values[toks.start * cols..toks.end * cols];
        quant_kernels::vector::dot_tile(scratch, x, cols, out);
    }
}

/// One product of a group: `out = x W^T`.
pub struct Product<'a> {
    /// The weight.
    pub w: &'a dyn Weight,
    /// `n_tok` rows of `w.rows()` values.
    pub out: &'a mut [f32],
}

/// A unit of parallel work: rows `rows` of `w` times tokens `toks`, into
/// `out` (laid out as [`Weight::tile`] writes it).
struct Task<'a> {
    w: &'a dyn Weight,
    acts: &'a PreparedActs<'a>,
    rows: Range<usize>,
    toks: Range<usize>,
    out: &'a mut [f32],
}

/// How a product of `rows` rows with `n_tok` tokens is split into tasks:
/// by tokens (`Some(tokens per task)`, each task taking every row) or by
/// rows (`None`; see [`rows_per_task`]). Fixed by the shape only, and
/// every output is one row's dot product with one token whatever the
/// split, so results do not depend on the thread count.
fn tokens_per_task(w: &dyn Weight, n_tok: usize) -> Option<usize> {
    // Enough tokens per task to reuse each unpacked weight block a few
    // times, at least 8 tasks for the threads to balance.
    (w.split_by_tokens() && n_tok >= 8).then(|| n_tok.div_ceil(8).clamp(4, 16))
}

/// Rows per task of a row split: a single token gets 8 tasks of whole
/// 8-row tiles (long runs of weights, which the tile kernels stream with
/// prefetching); batches 16 rows, which fit a decoded tile in L1.
fn rows_per_task(rows: usize, n_tok: usize) -> usize {
    let per = if n_tok == 1 {
        rows.div_ceil(8).next_multiple_of(8)
    } else {
        16
    };
    per.min(rows.max(1))
}

/// `out = x W^T` for every product of the group, all sharing the input `x`
/// (`n_tok` rows of `cols`, the weights' column count): activations are
/// prepared once per format and every product's tasks run in one parallel
/// region of the current rayon pool.
pub fn matmul_group(x: &[f32], cols: usize, products: &mut [Product]) -> Result<()> {
    let n_tok = x.len() / cols;
    debug_assert_eq!(x.len(), n_tok * cols);
    let mut acts: Vec<PreparedActs> = Vec::new();
    for p in products.iter() {
        debug_assert_eq!(p.w.cols(), cols);
        debug_assert_eq!(p.out.len(), n_tok * p.w.rows());
        let format = p.w.act_format();
        if !acts.iter().any(|a| a.format == format) {
            acts.push(PreparedActs::new(format, x, cols)?);
        }
    }
    // Row splits of a batch write rows.len() x n_tok blocks, scattered
    // into place afterwards.
    let mut staging: Vec<Vec<f32>> = products
        .iter()
        .map(|p| {
            if n_tok > 1 && tokens_per_task(p.w, n_tok).is_none() {
                vec![0f32; p.out.len()]
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut tasks: Vec<Task> = Vec::new();
    for (p, stage) in products.iter_mut().zip(staging.iter_mut()) {
        let a = acts
            .iter()
            .find(|a| a.format == p.w.act_format())
            .expect("prepared above");
        let rows = p.w.rows();
        if let Some(per) = tokens_per_task(p.w, n_tok) {
            for (c, out) in p.out.chunks_mut(per * rows).enumerate() {
                let t0 = c * per;
                tasks.push(Task {
                    w: p.w,
                    acts: a,
                    rows: 0..rows,
                    toks: t0..t0 + out.len() / rows,
                    out,
                });
            }
        } else {
            let per = rows_per_task(rows, n_tok);
            let dest: &mut [f32] = if n_tok == 1 { &mut *p.out } else { stage };
            for (c, out) in dest.chunks_mut(per * n_tok).enumerate() {
                let r0 = c * per;
                tasks.push(Task {
                    w: p.w,
                    acts: a,
                    rows: r0..r0 + out.len() / n_tok,
                    toks: 0..n_tok,
                    out,
                });
            }
        }
    }
    tasks.into_par_iter().for_each_init(Vec::new, |scratch, t| {
        t.w.tile(t.rows, t.acts, t.toks, t.out, scratch)
    });
    for (p, stage) in products.iter_mut().zip(&staging) {
        if stage.is_empty() {
            continue;
        }
        let rows = p.w.rows();
        let per = rows_per_task(rows, n_tok);
        for (c, block) in stage.chunks(per * n_tok).enumerate() {
            let (r0, n) = (c * per, block.len() / n_tok);
            for t in 0..n_tok {
                p.out[t * rows + r0..t * rows + r0 + n].copy_from_slice(&block[t * n..(t + 1) * n]);
            }
        }
    }
    Ok(())
}

/// `y = x W^T`: `x` is `n_tok` rows of `w.cols()`, `y` gets `n_tok` rows
/// of `w.rows()`. Runs on the current rayon pool.
pub fn matmul(w: &dyn Weight, x: &[f32], y: &mut [f32]) -> Result<()> {
    matmul_group(x, w.cols(), &mut [Product { w, out: y }])
}

/// Plain float storage types of safetensors weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseType {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl DenseType {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            DenseType::F32 => GgmlType::F32,
            DenseType::F16 => GgmlType::F16,
            DenseType::BF16 => GgmlType::BF16,
        }
    }
}

/// Decodes little-endian f32/f16/bf16 bytes into f32 (quant-kernels'
/// GGML float "dequantizers", which are exact).
pub fn decode_dense(ty: DenseType, bytes: &[u8], out: &mut [f32]) {
    ggml::dequantize(ty.ggml(), bytes, out).expect("callers pass whole values");
}

/// A row-major f32/f16/bf16 safetensors matrix, multiplied in f32.
pub struct DenseWeight<'a> {
    data: &'a [u8],
    ty: DenseType,
    rows: usize,
    cols: usize,
}

impl<'a> DenseWeight<'a> {
    /// Wraps `data` (exactly `rows * cols` values of `ty`).
    pub fn new(
        name: &str,
        data: &'a [u8],
        ty: DenseType,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let need = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(ty.size()));
        if need != Some(data.len()) {
            return Err(EngineError::BadTensor {
                name: name.to_string(),
                why: format!(
                    "{} bytes do not hold {rows} x {cols} values of {ty:?}",
                    data.len()
                ),
            });
        }
        Ok(DenseWeight {
            data,
            ty,
            rows,
            cols,
        })
    }
}

impl Weight for DenseWeight<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn type_name(&self) -> String {
        format!("{:?}", self.ty)
    }

    fn act_format(&self) -> ActFormat {
        ActFormat::F32
    }

    fn rows_to_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        let row_bytes = self.cols * self.ty.size();
        let bytes = &self.data[rows.start * row_bytes..rows.end * row_bytes];
        decode_dense(self.ty, bytes, out);
    }
}

/// A GGUF matrix of any GGML type with a dot product in quant-kernels:
/// each output is `ggml::vec_dot` of a stored row with the activations
/// quantized to the type's `vec_dot_type`, as ggml's CPU backend computes
/// it; for batches of F16 and F32 weights, llamafile's `tinyBLAS` order
/// where ggml takes it (`ggml::gemm_batch`).
pub struct GgmlWeight<'a> {
    data: &'a [u8],
    ty: GgmlType,
    vec_dot_type: GgmlType,
    row_bytes: usize,
    rows: usize,
    cols: usize,
}

impl<'a> GgmlWeight<'a> {
    /// Wraps `data` (exactly `rows` rows of `cols` values of `ty`).
    pub fn new(name: &str, data: &'a [u8], ty: GgmlType, rows: usize, cols: usize) -> Result<Self> {
        let bad = |why: String| EngineError::BadTensor {
            name: name.to_string(),
            why,
        };
        let vec_dot_type = ggml::vec_dot_type(ty).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "tensor '{name}' is {ty}, a type without a dot product in quant-kernels"
            ))
        })?;
        let row_bytes = ggml::row_size(ty, cols)
            .map_err(|e| bad(format!("rows of {cols} values as {ty}: {e}")))?;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(bad(format!(
                "{} bytes do not hold {rows} rows of {cols} values of {ty}",
                data.len()
            )));
        }
        Ok(GgmlWeight {
            data,
            ty,
            vec_dot_type,
            row_bytes,
            rows,
            cols,
        })
    }
}

impl Weight for GgmlWeight<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn type_name(&self) -> String {
        self.ty.to_string()
    }

    fn act_format(&self) -> ActFormat {
        ActFormat::Ggml(self.vec_dot_type)
    }

    fn rows_to_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        let bytes = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        ggml::dequantize(self.ty, bytes, out).expect("sizes checked when the weight was built");
    }

    fn split_by_tokens(&self) -> bool {
        true
    }

    fn tile(
        &self,
        rows: Range<usize>,
        acts: &PreparedActs,
        toks: Range<usize>,
        out: &mut [f32],
        _scratch: &mut Vec<f32>,
    ) {
        let bytes = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        // The whole matrix and batch decide ggml's order (tinyBLAS for
        // batches of F16 and F32), not the part this tile covers.
        ggml::gemm_batch(
            self.ty,
            self.cols,
            bytes,
            acts.encoded_rows(toks),
            out,
            self.rows,
            acts.n_tok,
        )
        .expect("sizes checked when the weight was built");
    }
}

/// An MLX affine-quantized matrix: packed unsigned `bits`-bit values, one
/// scale and bias per `group` values, decoded a tile at a time by
/// quant-kernels' MLX dequantizer in f32 (mlx-lm's evaluation after
/// `set_dtype(float32)`, which holds f16/bf16 scales exactly).
pub struct MlxAffineWeight<'a> {
    packed: &'a [u8],
    scales: &'a [u8],
    biases: &'a [u8],
    sb_type: DenseType,
    params: MlxParams,
    rows: usize,
    cols: usize,
}

impl<'a> MlxAffineWeight<'a> {
    /// Wraps the three tensors of a quantized module.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        packed: &'a [u8],
        scales: &'a [u8],
        biases: &'a [u8],
        sb_type: DenseType,
        bits: u32,
        group: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let bad = |why: String| EngineError::BadTensor {
            name: name.to_string(),
            why,
        };
        let params = MlxParams::affine(bits, group);
        if params.validate().is_err()
            || !cols.is_multiple_of(group)
            || !(cols * bits as usize).is_multiple_of(32)
        {
            return Err(bad(format!(
                "{cols} columns do not fit {bits}-bit groups of {group}"
            )));
        }
        let row_bytes = cols * bits as usize / 8;
        let groups = rows * (cols / group) * sb_type.size();
        if packed.len() != rows * row_bytes || scales.len() != groups || biases.len() != groups {
            return Err(bad(format!(
                "sizes do not fit {rows} x {cols} at {bits} bits, group {group}: packed {}, scales {}, biases {} bytes",
                packed.len(),
                scales.len(),
                biases.len()
            )));
        }
        Ok(MlxAffineWeight {
            packed,
            scales,
            biases,
            sb_type,
            params,
            rows,
            cols,
        })
    }
}

impl Weight for MlxAffineWeight<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn type_name(&self) -> String {
        format!("mlx {}-bit g{}", self.params.bits, self.params.group_size)
    }

    fn act_format(&self) -> ActFormat {
        ActFormat::F32
    }

    /// Each value is `q * scale + bias` in f32, as quant-kernels'
    /// dequantizer and mlx-lm in float32 compute it, a few rows at a time
    /// without allocating (the engine calls this per row block while
    /// generating), at the CPU's SIMD level.
    fn rows_to_f32(&self, rows: Range<usize>, out: &mut [f32]) {
        let row_bytes = self.cols * self.params.bits as usize / 8;
        let gpr = self.params.groups_per_row(self.cols);
        let size = self.sb_type.size();
        let groups = rows.start * gpr * size..rows.end * gpr * size;
        let dtype = match self.sb_type {
            DenseType::F32 => MlxDtype::F32,
            DenseType::F16 => MlxDtype::F16,
            DenseType::BF16 => MlxDtype::BF16,
        };
        quant_kernels::mlx::affine_rows_to_f32(
            &self.packed[rows.start * row_bytes..rows.end * row_bytes],
            &self.scales[groups.clone()],
            &self.biases[groups],
            dtype,
            &self.params,
            self.cols,
            &mut out[..rows.len() * self.cols],
        )
        .expect("sizes checked when the weight was built");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use quant_kernels::mlx::{self as qmlx, DequantPrecision, Scales};

    /// Scale or bias `i` of an MLX matrix, stored as `ty` (exact in f32).
    fn mlx_scale_at(ty: DenseType, bytes: &[u8], i: usize) -> f32 {
        match ty {
            DenseType::F32 => {
                let b = &bytes[i * 4..i * 4 + 4];
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            DenseType::F16 => f16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]]).to_f32(),
            DenseType::BF16 => bf16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]]).to_f32(),
        }
    }

    /// The engine's row decoder gives quant-kernels' dequantized values bit
    /// for bit, for every bit width, group size and scale dtype.
    #[test]
    fn mlx_rows_match_quant_kernels_dequantizer() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (rows, cols) = (3, 256);
        for bits in [2u32, 3, 4, 5, 6, 8] {
            for group in [32usize, 64, 128] {
                for sb in [DenseType::F32, DenseType::F16, DenseType::BF16] {
                    let packed: Vec<u8> = (0..rows * cols * bits as usize / 8)
                        .map(|_| next() as u8)
                        .collect();
                    let n_groups = rows * cols / group;
                    let vals: Vec<f32> = (0..2 * n_groups)
                        .map(|_| (next() % 2000) as f32 / 997.0 - 1.0)
                        .collect();
                    let enc = |v: &[f32]| -> Vec<u8> {
                        v.iter()
                            .flat_map(|&x| match sb {
                                DenseType::F32 => x.to_le_bytes().to_vec(),
                                DenseType::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
                                DenseType::BF16 => bf16::from_f32(x).to_le_bytes().to_vec(),
                            })
                            .collect()
                    };
                    let (sbytes, bbytes) = (enc(&vals[..n_groups]), enc(&vals[n_groups..]));
                    let w = MlxAffineWeight::new(
                        "t", &packed, &sbytes, &bbytes, sb, bits, group, rows, cols,
                    )
                    .unwrap();
                    let mut ours = vec![f32::NAN; rows * cols];
                    w.rows_to_f32(0..rows, &mut ours);
                    let words: Vec<u32> = packed
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let (sv, bv): (Vec<f32>, Vec<f32>) = (
                        (0..n_groups)
                            .map(|i| mlx_scale_at(sb, &sbytes, i))
                            .collect(),
                        (0..n_groups)
                            .map(|i| mlx_scale_at(sb, &bbytes, i))
                            .collect(),
                    );
                    let (s16, b16): (Vec<f16>, Vec<f16>) = (
                        sv.iter().map(|&x| f16::from_f32(x)).collect(),
                        bv.iter().map(|&x| f16::from_f32(x)).collect(),
                    );
                    let (s_bf, b_bf): (Vec<bf16>, Vec<bf16>) = (
                        sv.iter().map(|&x| bf16::from_f32(x)).collect(),
                        bv.iter().map(|&x| bf16::from_f32(x)).collect(),
                    );
                    let (scales, biases) = match sb {
                        DenseType::F32 => (Scales::F32(&sv), Scales::F32(&bv)),
                        DenseType::F16 => (Scales::F16(&s16), Scales::F16(&b16)),
                        DenseType::BF16 => (Scales::BF16(&s_bf), Scales::BF16(&b_bf)),
                    };
                    let want = qmlx::dequantize_ref(
                        &words,
                        scales,
                        Some(biases),
                        cols,
                        &MlxParams::affine(bits, group),
                        DequantPrecision::F32,
                    )
                    .unwrap();
                    let same = ours
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{bits}-bit g{group} {sb:?}");
                }
            }
        }
    }
}
