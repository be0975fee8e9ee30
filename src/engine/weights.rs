//! Weight matrices read straight from their stored bytes, one storage kind
//! per [`Weight`] implementation, and the one matrix-multiply driver they
//! all share (rayon across output rows, rows decoded a tile at a time).
//!
//! A weight of `rows x cols` maps `cols` inputs to `rows` outputs (the
//! layout of transformers' `Linear.weight`, GGUF's `ne = [cols, rows]`).

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::error::{EngineError, Result};
use super::ops::dot;

/// How a weight's dot product wants its activations rounded, as ggml's
/// CPU backend converts them (`vec_dot_type`) before multiplying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// f32 as computed.
    F32,
    /// Rounded to f16 (ggml, F16 weights).
    F16,
    /// Rounded to bf16 (ggml, BF16 weights).
    BF16,
}

/// A batch of activations prepared for one [`ActFormat`]: `n_tok` rows of
/// `cols` values.
pub struct PreparedActs {
    /// Token rows.
    pub n_tok: usize,
    /// Values per row.
    pub cols: usize,
    /// The rounded values, row-major.
    pub values: Vec<f32>,
}

impl PreparedActs {
    /// Rounds `x` (`n_tok` rows of `cols`) for `format`.
    pub fn new(format: ActFormat, x: &[f32], cols: usize) -> PreparedActs {
        let values = match format {
            ActFormat::F32 => x.to_vec(),
            ActFormat::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            ActFormat::BF16 => x
                .iter()
                .map(|&v| quant_kernels::float::bf16_to_f32(quant_kernels::float::f32_to_bf16(v)))
                .collect(),
        };
        PreparedActs {
            n_tok: x.len() / cols,
            cols,
            values,
        }
    }

    /// Token `t`'s row.
    pub fn row(&self, t: usize) -> &[f32] {
        &self.values[t * self.cols..(t + 1) * self.cols]
    }
}

/// A weight matrix in its stored form.
pub trait Weight: Send + Sync {
    /// Output rows.
    fn rows(&self) -> usize;
    /// Input columns.
    fn cols(&self) -> usize;
    /// Storage type, for messages (`F16`, `Q4_K`, `mlx 4-bit g64`).
    fn type_name(&self) -> String;
    /// How activations are rounded before the dot products.
    fn act_format(&self) -> ActFormat;
    /// Decodes row `row` into `out` (`cols` values).
    fn row_to_f32(&self, row: usize, out: &mut [f32]);
    /// Dot products of rows `rows` with every activation row:
    /// `out[t * rows.len() + i] = W[rows.start + i] . acts[t]`.
    /// `scratch` is the caller's reusable buffer.
    fn tile(
        &self,
        rows: Range<usize>,
        acts: &PreparedActs,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let n = rows.len();
        let cols = self.cols();
        if acts.n_tok <= 2 {
            // Generation: each row is used once or twice; decode it into a
            // buffer that stays in L1 and use it at once.
            scratch.resize(cols, 0.0);
            for (i, r) in rows.enumerate() {
                self.row_to_f32(r, scratch);
                for t in 0..acts.n_tok {
                    out[t * n + i] = dot(scratch, acts.row(t));
                }
            }
            return;
        }
        scratch.resize(n * cols, 0.0);
        for (i, r) in rows.clone().enumerate() {
            self.row_to_f32(r, &mut scratch[i * cols..(i + 1) * cols]);
        }
        for t in 0..acts.n_tok {
            let x = acts.row(t);
            for i in 0..n {
                out[t * n + i] = dot(&scratch[i * cols..(i + 1) * cols], x);
            }
        }
    }
}

/// Rows per parallel task: enough work to amortize the task, enough tasks
/// to balance the threads. Fixed by the shape only, so that results do not
/// depend on the thread count.
fn rows_per_task(rows: usize, n_tok: usize) -> usize {
    let per = if n_tok == 1 { 64 } else { 16 };
    per.min(rows.max(1))
}

/// `y = x W^T`: `x` is `n_tok` rows of `w.cols()`, `y` gets `n_tok` rows
/// of `w.rows()`. Runs on the current rayon pool.
pub fn matmul(w: &dyn Weight, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    let n_tok = x.len() / cols;
    debug_assert_eq!(x.len(), n_tok * cols);
    debug_assert_eq!(y.len(), n_tok * rows);
    let acts = PreparedActs::new(w.act_format(), x, cols);
    let chunk = rows_per_task(rows, n_tok);
    if n_tok == 1 {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (c, out)| {
                let r0 = c * chunk;
                w.tile(r0..r0 + out.len(), &acts, out, scratch);
            });
        return;
    }
    let tiles: Vec<Vec<f32>> = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map_init(Vec::new, |scratch, c| {
            let r = c * chunk..((c + 1) * chunk).min(rows);
            let mut out = vec![0.0; r.len() * n_tok];
            w.tile(r, &acts, &mut out, scratch);
            out
        })
        .collect();
    for (c, tile) in tiles.iter().enumerate() {
        let r0 = c * chunk;
        let n = tile.len() / n_tok;
        for t in 0..n_tok {
            y[t * rows + r0..t * rows + r0 + n].copy_from_slice(&tile[t * n..(t + 1) * n]);
        }
    }
}

/// Plain float storage types.
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
    fn size(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
        }
    }
}

/// A row-major f32/f16/bf16 matrix over stored little-endian bytes.
pub struct DenseWeight<'a> {
    data: &'a [u8],
    ty: DenseType,
    rows: usize,
    cols: usize,
    act: ActFormat,
}

impl<'a> DenseWeight<'a> {
    /// Wraps `data` (exactly `rows * cols` values of `ty`).
    pub fn new(
        name: &str,
        data: &'a [u8],
        ty: DenseType,
        rows: usize,
        cols: usize,
        act: ActFormat,
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
            act,
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
        self.act
    }

    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        let size = self.ty.size();
        let bytes = &self.data[row * self.cols * size..(row + 1) * self.cols * size];
        decode_dense(self.ty, bytes, out);
    }
}

/// Decodes little-endian f32/f16/bf16 bytes into f32.
pub fn decode_dense(ty: DenseType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        DenseType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DenseType::F16 => decode_16bit(bytes, out, f16_bits_to_f32),
        DenseType::BF16 => decode_16bit(bytes, out, |h| f32::from_bits(u32::from(h) << 16)),
    }
}

/// Decodes little-endian 16-bit values 16 at a time (fixed-size blocks
/// let the compiler load and widen them as vectors).
#[inline(always)]
fn decode_16bit(bytes: &[u8], out: &mut [f32], f: impl Fn(u16) -> f32) {
    let blocks = out.len() / 16;
    let (head, tail) = out.split_at_mut(blocks * 16);
    for (o, b) in head.chunks_exact_mut(16).zip(bytes.chunks_exact(32)) {
        let b: &[u8; 32] = b.try_into().expect("32-byte chunk");
        let mut words = [0u32; 8];
        for (w, c) in words.iter_mut().zip(b.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let o: &mut [f32; 16] = o.try_into().expect("16-value chunk");
        for i in 0..8 {
            o[2 * i] = f(words[i] as u16);
            o[2 * i + 1] = f((words[i] >> 16) as u16);
        }
    }
    for (o, b) in tail.iter_mut().zip(bytes[blocks * 32..].chunks_exact(2)) {
        *o = f(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// f16 bits to f32 without branches or tables, so that loops over it
/// vectorize at the target's baseline: the exponent is rebased by a float
/// multiply by 2^112 (which also normalizes subnormals), infinities and
/// NaNs get an all-ones exponent, the sign is put back.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let magnitude = u32::from(h & 0x7fff) << 13;
    let scaled = f32::from_bits(magnitude) * f32::from_bits(0x7780_0000);
    let bits = if magnitude >= 0x7c00 << 13 {
        magnitude | 0x7f80_0000
    } else {
        scaled.to_bits()
    };
    f32::from_bits(bits | (u32::from(h & 0x8000) << 16))
}

/// An MLX affine-quantized matrix: packed unsigned `bits`-bit values (an
/// LSB-first bit stream per row), one scale and bias per `group` values,
/// `w = scale * q + bias` in f32 (mlx-lm's evaluation after
/// `set_dtype(float32)`, which holds f16/bf16 scales exactly).
pub struct MlxAffineWeight<'a> {
    packed: &'a [u8],
    scales: &'a [u8],
    biases: &'a [u8],
    sb_type: DenseType,
    bits: u32,
    group: usize,
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
        if !(1..=8).contains(&bits)
            || group == 0
            || cols % group != 0
            || (cols * bits as usize) % 32 != 0
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
            bits,
            group,
            rows,
            cols,
        })
    }

    fn scale_bias(&self, bytes: &[u8], idx: usize) -> f32 {
        let s = self.sb_type.size();
        let mut v = [0f32];
        decode_dense(self.sb_type, &bytes[idx * s..(idx + 1) * s], &mut v);
        v[0]
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
        format!("mlx {}-bit g{}", self.bits, self.group)
    }

    fn act_format(&self) -> ActFormat {
        ActFormat::F32
    }

    fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        let bits = self.bits as usize;
        let row_bytes = self.cols * bits / 8;
        let packed = &self.packed[row * row_bytes..(row + 1) * row_bytes];
        let groups = self.cols / self.group;
        let mask = (1u32 << bits) - 1;
        for g in 0..groups {
            let scale = self.scale_bias(self.scales, row * groups + g);
            let bias = self.scale_bias(self.biases, row * groups + g);
            let out = &mut out[g * self.group..(g + 1) * self.group];
            match bits {
                4 => {
                    let b = &packed[g * self.group / 2..(g + 1) * self.group / 2];
                    for (pair, byte) in out.chunks_exact_mut(2).zip(b) {
                        pair[0] = scale * f32::from(byte & 15) + bias;
                        pair[1] = scale * f32::from(byte >> 4) + bias;
                    }
                }
                8 => {
                    let b = &packed[g * self.group..(g + 1) * self.group];
                    for (o, &q) in out.iter_mut().zip(b) {
                        *o = scale * f32::from(q) + bias;
                    }
                }
                _ => {
                    for (j, o) in out.iter_mut().enumerate() {
                        let pos = (g * self.group + j) * bits;
                        let (byte, shift) = (pos / 8, pos % 8);
                        let lo = u32::from(packed[byte]);
                        let hi = packed.get(byte + 1).map_or(0, |&b| u32::from(b));
                        let q = ((lo | hi << 8) >> shift) & mask;
                        *o = scale * q as f32 + bias;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decode_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }
}
