//! Lossless transcoding between GGML blocks and MLX affine groups, on raw
//! bytes (no requantization, so no rounding of the weights themselves).
//!
//! GGML block layouts (little endian):
//! - Q4_0, 18 bytes: f16 `d`, 16 bytes; byte j holds element j in its low
//!   nibble and element j+16 in its high nibble. `x = d*(q - 8)`.
//! - Q4_1, 20 bytes: f16 `d`, f16 `m`, 16 bytes as Q4_0. `x = d*q + m`.
//! - Q8_0, 34 bytes: f16 `d`, 32 i8. `x = d*q`.
//!
//! As MLX affine with groups of 32 (what `mx.load` makes of a GGUF):
//! Q4_0 is 4-bit with `scale = d, bias = -8d`; Q4_1 4-bit with
//! `scale = d, bias = m`; Q8_0 8-bit with `scale = d, bias = -128d` and
//! `q = i8 + 128` (the sign bit flipped). The q values carry over
//! unchanged, and in f32 `q*scale + bias` equals GGML's value exactly:
//! every product of an f16 scale and a q of at most 8 bits is exact in
//! f32, and so is the sum here (it is `d*(q-8)` or `d*(q-128)`). The one
//! difference is the sign of zero: for a negative `d`, GGML's `d*0` is
//! -0.0 where MLX's `8d + -8d` is +0.0.
//!
//! What can be inexact is only the dtype of the stored scales and biases:
//! - GGML -> MLX: in f16 (mlx's choice), `-8d` or `-128d` overflows when
//!   |d| > 8188 or |d| > 511.75; in bf16 most f16 `d` lose bits; f32 is
//!   always exact.
//! - MLX 4-bit (any group) -> Q4_1: scales and biases must be exact f16
//!   values. f16 ones always are. bf16 ones are whenever they lie in f16's
//!   normal range (6.1e-5 ..= 65504; bf16's 8 significant bits fit f16's
//!   11) — all of them on SmolLM2, per the interop suite. f32 ones rarely
//!   are. Groups of 64 and 128 repeat their scale and bias in each block
//!   of 32.
//! - MLX -> Q4_0 / Q8_0: also needs `bias == -8*scale` (`-128*scale`),
//!   true of tensors that came from those types.
//!
//! Inexact groups are not an error: the result holds the nearest values
//! (round to nearest even) and counts them, and the caller decides
//! ([`Transcoded::exact`] turns any inexactness into an error).

use half::{bf16, f16};

use super::numeric::round_to;
use super::{MlxDtype, MlxParams, MlxQuantized, ScaleBuf, Scales};
use crate::KernelError;

/// The GGML block types with a lossless MLX equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlBlock {
    /// Q4_0: 18-byte blocks of 32.
    Q4_0,
    /// Q4_1: 20-byte blocks of 32.
    Q4_1,
    /// Q8_0: 34-byte blocks of 32.
    Q8_0,
}

impl GgmlBlock {
    /// Bytes per block of 32 elements.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlBlock::Q4_0 => 18,
            GgmlBlock::Q4_1 => 20,
            GgmlBlock::Q8_0 => 34,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlBlock::Q4_0 => "Q4_0",
            GgmlBlock::Q4_1 => "Q4_1",
            GgmlBlock::Q8_0 => "Q8_0",
        }
    }

    /// The MLX affine setting it maps to (group 32; 4 or 8 bits).
    pub fn mlx_params(self) -> MlxParams {
        match self {
            GgmlBlock::Q8_0 => MlxParams::affine(8, 32),
            _ => MlxParams::affine(4, 32),
        }
    }

    fn header_bytes(self) -> usize {
        match self {
            GgmlBlock::Q4_1 => 4,
            _ => 2,
        }
    }
}

/// A transcoding result and how exact it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcoded<T> {
    /// The converted tensor(s).
    pub value: T,
    /// Groups (MLX groups, or GGML blocks when converting to GGML) whose
    /// scale or bias could not be stored exactly; 0 means lossless.
    pub inexact_groups: usize,
    /// The first of them, if any.
    pub first_inexact: Option<usize>,
}

impl<T> Transcoded<T> {
    /// True when every value dequantizes exactly as the source does.
    pub fn is_exact(&self) -> bool {
        self.inexact_groups == 0
    }

    /// The value when lossless, else an error naming the first inexact
    /// group.
    pub fn exact(self) -> Result<T, KernelError> {
        match self.first_inexact {
            None => Ok(self.value),
            Some(g) => Err(KernelError::Unsupported(format!(
                "an exact transcoding of {} groups (the first is group {g}), whose scale or bias the target cannot hold exactly,",
                self.inexact_groups
            ))),
        }
    }
}

struct InexactCounter {
    count: usize,
    first: Option<usize>,
}

impl InexactCounter {
    fn new() -> Self {
        InexactCounter {
            count: 0,
            first: None,
        }
    }

    fn note(&mut self, group: usize, exact: bool) {
        if !exact {
            self.count += 1;
            self.first.get_or_insert(group);
        }
    }

    fn finish<T>(self, value: T) -> Transcoded<T> {
        Transcoded {
            value,
            inexact_groups: self.count,
            first_inexact: self.first,
        }
    }
}

fn read_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Converts rows of GGML blocks to MLX affine group 32 (`mx.load`'s
/// mapping, see the module docs), storing scales and biases in
/// `scale_dtype` (f16 is what `mx.load` produces; f32 is always exact).
///
/// `blocks` holds `rows x cols/32` blocks; `cols` must be a multiple of 32.
/// Non-finite `d` or `m` are rejected (GGML cannot produce them).
pub fn ggml_to_mlx(
    kind: GgmlBlock,
    blocks: &[u8],
    cols: usize,
    scale_dtype: MlxDtype,
) -> Result<Transcoded<MlxQuantized>, KernelError> {
    if cols == 0 || !cols.is_multiple_of(32) {
        return Err(KernelError::BadLength(format!(
            "{} rows must hold whole blocks of 32, got a row length of {cols}",
            kind.name()
        )));
    }
    let bb = kind.block_bytes();
    if !blocks.len().is_multiple_of(bb) || !(blocks.len() / bb).is_multiple_of(cols / 32) {
        return Err(KernelError::BadLength(format!(
            "{} bytes are not whole rows of {} blocks of {bb} bytes ({} with rows of {cols})",
            blocks.len(),
            cols / 32,
            kind.name()
        )));
    }
    let n = blocks.len() / bb;
    let words_per_block = if kind == GgmlBlock::Q8_0 { 8 } else { 4 };
    let mut weight = vec![0u32; n * words_per_block];
    let mut scales = Vec::with_capacity(n);
    let mut biases = Vec::with_capacity(n);
    let mut inexact = InexactCounter::new();
    for (i, (block, words)) in blocks
        .chunks_exact(bb)
        .zip(weight.chunks_exact_mut(words_per_block))
        .enumerate()
    {
        let d = read_f16(block);
        let (scale, bias) = match kind {
            GgmlBlock::Q4_0 => (d, -8.0 * d),
            GgmlBlock::Q4_1 => (d, read_f16(&block[2..])),
            GgmlBlock::Q8_0 => (d, -128.0 * d),
        };
        if !d.is_finite() || !bias.is_finite() {
            return Err(KernelError::NonFinite {
                index: i * 32,
                value: if d.is_finite() { bias } else { d },
            });
        }
        let qs = &block[kind.header_bytes()..];
        match kind {
            GgmlBlock::Q8_0 => {
                for (w, q) in words.iter_mut().zip(qs.chunks_exact(4)) {
                    *w = u32::from_le_bytes([q[0], q[1], q[2], q[3]]) ^ 0x8080_8080;
                }
            }
            _ => {
                // Elements 0..16 are the low nibbles, 16..32 the high ones.
                for (half_idx, w4) in words.chunks_exact_mut(2).enumerate() {
                    let shift = 4 * half_idx as u32;
                    for (k, w) in w4.iter_mut().enumerate() {
                        let mut acc = 0u32;
                        for (j, &byte) in qs[8 * k..8 * k + 8].iter().enumerate() {
                            acc |= u32::from((byte >> shift) & 15) << (4 * j);
                        }
                        *w = acc;
                    }
                }
            }
        }
        let (s, b) = (round_to(scale_dtype, scale), round_to(scale_dtype, bias));
        inexact.note(i, s == scale && b == bias);
        scales.push(s);
        biases.push(b);
    }
    let buf = |v: Vec<f32>| match scale_dtype {
        MlxDtype::F32 => ScaleBuf::F32(v),
        MlxDtype::F16 => ScaleBuf::F16(v.into_iter().map(f16::from_f32).collect()),
        MlxDtype::BF16 => ScaleBuf::BF16(v.into_iter().map(bf16::from_f32).collect()),
    };
    Ok(inexact.finish(MlxQuantized {
        weight,
        scales: buf(scales),
        biases: Some(buf(biases)),
    }))
}

/// Converts MLX affine tensors to GGML blocks: 4-bit to Q4_1 or Q4_0,
/// 8-bit to Q8_0, any group size of 32, 64 or 128 (a group's scale and
/// bias repeat in each of its blocks). Returns `rows x cols/32` blocks.
///
/// Inexact blocks (see the module docs) hold the nearest f16 `d` (and
/// `m`) and are counted.
pub fn mlx_to_ggml(
    kind: GgmlBlock,
    weight: &[u32],
    scales: Scales<'_>,
    biases: Scales<'_>,
    cols: usize,
    group_size: usize,
) -> Result<Transcoded<Vec<u8>>, KernelError> {
    let bits = if kind == GgmlBlock::Q8_0 { 8 } else { 4 };
    let params = MlxParams::affine(bits, group_size);
    params.validate()?;
    if cols == 0 || !cols.is_multiple_of(group_size) {
        return Err(KernelError::BadLength(format!(
            "MLX rows of {cols} do not hold whole groups of {group_size}"
        )));
    }
    if scales.dtype().is_none() || scales.dtype() != biases.dtype() {
        return Err(KernelError::Unsupported(
            "MLX affine scales and biases of different or non-float dtypes".to_string(),
        ));
    }
    let groups = scales.len();
    let rows = groups / params.groups_per_row(cols);
    if biases.len() != groups
        || !groups.is_multiple_of(params.groups_per_row(cols))
        || weight.len() != rows * params.words_per_row(cols)
    {
        return Err(KernelError::BadLength(format!(
            "{} weight words, {} scales and {} biases are not a {bits}-bit MLX tensor with rows of {cols} and groups of {group_size}",
            weight.len(),
            scales.len(),
            biases.len()
        )));
    }
    let bb = kind.block_bytes();
    let blocks_per_group = group_size / 32;
    let words_per_block = bits as usize;
    let mut out = vec![0u8; groups * blocks_per_group * bb];
    let mut inexact = InexactCounter::new();
    for (i, (block, words)) in out
        .chunks_exact_mut(bb)
        .zip(weight.chunks_exact(words_per_block))
        .enumerate()
    {
        let g = i / blocks_per_group;
        let (s, b) = (scales.get_f32(g), biases.get_f32(g));
        let d = f16::from_f32(s);
        let exact = d.to_f32() == s
            && match kind {
                GgmlBlock::Q4_1 => f16::from_f32(b).to_f32() == b,
                GgmlBlock::Q4_0 => b == -8.0 * s,
                GgmlBlock::Q8_0 => b == -128.0 * s,
            };
        inexact.note(i, exact);
        block[..2].copy_from_slice(&d.to_le_bytes());
        if kind == GgmlBlock::Q4_1 {
            block[2..4].copy_from_slice(&f16::from_f32(b).to_le_bytes());
        }
        let qs = &mut block[kind.header_bytes()..];
        match kind {
            GgmlBlock::Q8_0 => {
                for (q, w) in qs.chunks_exact_mut(4).zip(words) {
                    q.copy_from_slice(&(w ^ 0x8080_8080).to_le_bytes());
                }
            }
            _ => {
                for (j, q) in qs.iter_mut().enumerate() {
                    let lo = (words[j / 8] >> (4 * (j % 8))) & 15;
                    let hi = (words[2 + j / 8] >> (4 * (j % 8))) & 15;
                    *q = (lo | (hi << 4)) as u8;
                }
            }
        }
    }
    Ok(inexact.finish(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_block(kind: GgmlBlock, d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
        let mut b = f16::from_f32(d).to_le_bytes().to_vec();
        if kind == GgmlBlock::Q4_1 {
            b.extend(f16::from_f32(m).to_le_bytes());
        }
        b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        b
    }

    #[test]
    fn q4_0_nibbles_map_to_mlx_order_and_back() {
        let q: [u8; 32] = core::array::from_fn(|i| (i * 7 % 16) as u8);
        let block = q4_block(GgmlBlock::Q4_0, 0.5, 0.0, &q);
        let t = ggml_to_mlx(GgmlBlock::Q4_0, &block, 32, MlxDtype::F16).unwrap();
        assert!(t.is_exact());
        let m = t.value;
        for (k, &qk) in q.iter().enumerate() {
            assert_eq!((m.weight[k / 8] >> (4 * (k % 8))) & 15, u32::from(qk));
        }
        assert_eq!(m.biases, Some(ScaleBuf::F16(vec![f16::from_f32(-4.0)])));
        let back = mlx_to_ggml(
            GgmlBlock::Q4_0,
            &m.weight,
            m.scales.as_scales(),
            m.biases.as_ref().unwrap().as_scales(),
            32,
            32,
        )
        .unwrap();
        assert_eq!(back.exact().unwrap(), block);
    }

    #[test]
    fn overflowing_bias_and_bf16_scales_are_reported() {
        let q = [3u8; 32];
        let block = q4_block(GgmlBlock::Q4_0, 9000.0, 0.0, &q);
        let t = ggml_to_mlx(GgmlBlock::Q4_0, &block, 32, MlxDtype::F16).unwrap();
        assert_eq!((t.inexact_groups, t.first_inexact), (1, Some(0)));
        assert!(ggml_to_mlx(GgmlBlock::Q4_0, &block, 32, MlxDtype::F32)
            .unwrap()
            .is_exact());
        let block = q4_block(GgmlBlock::Q4_1, 0.1, -0.3, &q);
        let t = ggml_to_mlx(GgmlBlock::Q4_1, &block, 32, MlxDtype::BF16).unwrap();
        assert!(!t.is_exact());
        assert!(t.exact().is_err());
    }

    #[test]
    fn mlx_group_128_repeats_scale_in_q4_1_blocks() {
        let weight: Vec<u32> = (0..16).map(|i| 0x7654_3210 ^ (i * 0x1111_1111)).collect();
        let scales = [f16::from_f32(0.25)];
        let biases = [f16::from_f32(-1.5)];
        let t = mlx_to_ggml(
            GgmlBlock::Q4_1,
            &weight,
            Scales::F16(&scales),
            Scales::F16(&biases),
            128,
            128,
        )
        .unwrap();
        assert!(t.is_exact());
        assert_eq!(t.value.len(), 4 * 20);
        for block in t.value.chunks_exact(20) {
            assert_eq!(read_f16(block), 0.25);
            assert_eq!(read_f16(&block[2..]), -1.5);
        }
        // Not exact in f16: a bf16 scale below f16's subnormal range.
        let s = [bf16::from_f32(1e-9)];
        let b = [bf16::from_f32(0.0)];
        let t = mlx_to_ggml(
            GgmlBlock::Q4_1,
            &weight,
            Scales::BF16(&s),
            Scales::BF16(&b),
            128,
            128,
        )
        .unwrap();
        assert_eq!(t.inexact_groups, 4);
    }

    #[test]
    fn q8_0_sign_bit_flips() {
        let mut block = f16::from_f32(0.01).to_le_bytes().to_vec();
        block.extend((0..32).map(|i: i32| ((i * 9 - 128) as i8) as u8));
        let t = ggml_to_mlx(GgmlBlock::Q8_0, &block, 32, MlxDtype::F16).unwrap();
        assert!(t.is_exact());
        let m = t.value;
        for k in 0..32 {
            let q = (m.weight[k / 4] >> (8 * (k % 4))) & 0xff;
            assert_eq!(q as i32 - 128, i32::from(block[2 + k] as i8));
        }
        let back = mlx_to_ggml(
            GgmlBlock::Q8_0,
            &m.weight,
            m.scales.as_scales(),
            m.biases.as_ref().unwrap().as_scales(),
            32,
            32,
        )
        .unwrap();
        assert_eq!(back.exact().unwrap(), block);
    }
}
