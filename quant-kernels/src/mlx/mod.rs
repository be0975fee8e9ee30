//! MLX quantization: the affine mode of `mx.quantize` (bits 1–6 and 8,
//! groups of 32, 64 or 128) and its floating-point block modes (`mxfp4`,
//! `mxfp8`, `nvfp4`), bit-exact with mlx 0.32.4's CPU backend.
//!
//! # Layout (mlx-lm's, row-major)
//!
//! A matrix of `rows x cols` quantizes to
//! - `weight`: `rows x cols*bits/32` u32 words. Each row is an LSB-first bit
//!   stream: element 0 in bits `0..bits` of word 0, element 1 next, values
//!   crossing word edges for 3, 5 and 6 bits.
//! - `scales`: `rows x cols/group_size`. Affine: the input's dtype.
//!   `mxfp4`/`mxfp8`: u8 E8M0 exponents (`2^(e-127)`). `nvfp4`: u8 E4M3.
//! - `biases` (affine only): like `scales`.
//!
//! Dequantized, affine is `w = scale*q + bias` with q unsigned.
//!
//! # Which mlx this is
//!
//! [`MlxVariant::Cpu`] is the definition: it reproduces what `mx.quantize`
//! computes on mlx's CPU backend (`backend/cpu/quantized.cpp` for affine,
//! the op-graph fallback of `fp_quantize` in `ops.cpp` for the fp modes),
//! checked bit for bit against mlx 0.32.4 by golden vectors and the interop
//! suite. [`MlxVariant::Gpu`] follows the Metal and CUDA affine kernels'
//! source (`affine_quantize` in `metal/kernels/quantized.h` and
//! `cuda/quantized/affine_quantize.cu`); it has never been compared with a
//! Mac or an NVIDIA GPU — see [`MlxVariant::Gpu`] for what differs.
//!
//! Rows are independent and processed in parallel with rayon; the output
//! does not depend on the thread count. [`quantize_ref`] and
//! [`dequantize_ref`] are the scalar single-threaded definitions the fast
//! path is tested against.
//!
//! [`transcode`] converts GGML Q4_0/Q4_1/Q8_0 blocks to MLX affine groups
//! and back without requantizing.
//!
//! # Example
//!
//! ```
//! use quant_kernels::mlx::{self, DequantPrecision, MlxInput, MlxParams, ScaleBuf};
//!
//! let (rows, cols) = (2, 128);
//! let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 128.0) / 64.0).collect();
//! let params = MlxParams::affine(4, 64);
//! let q = mlx::quantize(MlxInput::F32(&w), cols, &params)?;
//! assert_eq!(q.weight.len(), rows * params.words_per_row(cols)); // [2, 16] u32
//! assert_eq!(q.scales.len(), rows * params.groups_per_row(cols)); // [2, 2] f32
//! let back = mlx::dequantize(
//!     &q.weight,
//!     q.scales.as_scales(),
//!     q.biases.as_ref().map(ScaleBuf::as_scales),
//!     cols,
//!     &params,
//!     DequantPrecision::F32,
//! )?;
//! assert!(back.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.04));
//! # Ok::<(), quant_kernels::KernelError>(())
//! ```

mod affine;
mod fp;
mod numeric;
mod rows;
pub(crate) mod search;
pub mod transcode;

use half::{bf16, f16};

use crate::KernelError;

#[cfg(feature = "gpu")]
pub(crate) use rows::{check_cols, check_quantized};
pub use rows::{
    dequantize, dequantize_into, dequantize_ref, quantize, quantize_ref, quantize_search,
    quantize_search_ref,
};

/// A floating dtype of MLX arrays (inputs, affine scales and biases,
/// dequantized outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlxDtype {
    /// `mx.float32`.
    F32,
    /// `mx.float16`.
    F16,
    /// `mx.bfloat16`.
    BF16,
}

impl MlxDtype {
    /// mlx's name of the dtype (`float32`, `float16`, `bfloat16`).
    pub fn name(self) -> &'static str {
        match self {
            MlxDtype::F32 => "float32",
            MlxDtype::F16 => "float16",
            MlxDtype::BF16 => "bfloat16",
        }
    }

    /// Rounds `x` to this dtype the way mlx's CPU casts do (round to
    /// nearest even; overflow to infinity) and returns it widened to f32.
    pub fn round(self, x: f32) -> f32 {
        numeric::round_to(self, x)
    }
}

/// The matrix to quantize, row-major, in its own dtype.
#[derive(Debug, Clone, Copy)]
pub enum MlxInput<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values.
    F16(&'a [f16]),
    /// bf16 values.
    BF16(&'a [bf16]),
}

impl MlxInput<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MlxInput::F32(v) => v.len(),
            MlxInput::F16(v) => v.len(),
            MlxInput::BF16(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> MlxDtype {
        match self {
            MlxInput::F32(_) => MlxDtype::F32,
            MlxInput::F16(_) => MlxDtype::F16,
            MlxInput::BF16(_) => MlxDtype::BF16,
        }
    }
}

/// The quantization mode, as `mx.quantize(..., mode=...)` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlxMode {
    /// `"affine"`: `w = scale*q + bias` per group, q unsigned.
    Affine,
    /// `"mxfp4"`: E2M1 elements, one E8M0 scale per 32.
    Mxfp4,
    /// `"mxfp8"`: E4M3 elements, one E8M0 scale per 32.
    Mxfp8,
    /// `"nvfp4"`: E2M1 elements, one E4M3 scale per 16, optional global
    /// f32 scale.
    Nvfp4,
}

impl MlxMode {
    /// The mode's name in mlx (`affine`, `mxfp4`, `mxfp8`, `nvfp4`).
    pub fn name(self) -> &'static str {
        match self {
            MlxMode::Affine => "affine",
            MlxMode::Mxfp4 => "mxfp4",
            MlxMode::Mxfp8 => "mxfp8",
            MlxMode::Nvfp4 => "nvfp4",
        }
    }
}

/// Which of mlx's affine quantizers to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MlxVariant {
    /// mlx's CPU backend (the definition; tested bit for bit): running min
    /// and max start at +inf and -inf, ties round to even (`std::rint`),
    /// `q` is clamped to `[0, 2^bits-1]`.
    #[default]
    Cpu,
    /// mlx's Metal and CUDA kernels, implemented from their source and
    /// **never checked against a Mac or an NVIDIA GPU**: the running max
    /// starts at 0 (so an all-negative group gets another scale and bias
    /// than on CPU), ties round half away from zero (`round`), and `q` is
    /// clamped only from above; the float-to-u8 conversion of a negative
    /// value is taken to saturate to 0 (what the hardware conversions do;
    /// C++ leaves it undefined). Division is assumed correctly rounded
    /// (mlx builds Metal with `-fno-fast-math`). Affine mode, bits >= 2
    /// only. `mlx_lm.convert` on a Mac runs this kernel.
    Gpu,
}

/// Settings of one quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlxParams {
    /// The mode.
    pub mode: MlxMode,
    /// Bits per element: affine 1, 2, 3, 4, 5, 6 or 8; mxfp4 and nvfp4 4;
    /// mxfp8 8.
    pub bits: u32,
    /// Elements per scale: affine 32, 64 or 128; mxfp4/mxfp8 32; nvfp4 16.
    pub group_size: usize,
    /// Which backend's quantizer to reproduce (affine only).
    pub variant: MlxVariant,
    /// nvfp4 only: the per-tensor f32 `global_scale` of `mx.quantize`.
    pub global_scale: Option<f32>,
}

impl MlxParams {
    /// Affine quantization with `bits` per element and `group_size`
    /// elements per scale/bias, CPU variant.
    pub fn affine(bits: u32, group_size: usize) -> Self {
        MlxParams {
            mode: MlxMode::Affine,
            bits,
            group_size,
            variant: MlxVariant::Cpu,
            global_scale: None,
        }
    }

    /// `mxfp4` (4 bits, group 32).
    pub fn mxfp4() -> Self {
        MlxParams {
            mode: MlxMode::Mxfp4,
            bits: 4,
            group_size: 32,
            variant: MlxVariant::Cpu,
            global_scale: None,
        }
    }

    /// `mxfp8` (8 bits, group 32).
    pub fn mxfp8() -> Self {
        MlxParams {
            mode: MlxMode::Mxfp8,
            bits: 8,
            group_size: 32,
            variant: MlxVariant::Cpu,
            global_scale: None,
        }
    }

    /// `nvfp4` (4 bits, group 16) with an optional global scale.
    pub fn nvfp4(global_scale: Option<f32>) -> Self {
        MlxParams {
            mode: MlxMode::Nvfp4,
            bits: 4,
            group_size: 16,
            variant: MlxVariant::Cpu,
            global_scale,
        }
    }

    /// The same settings with another variant.
    pub fn with_variant(self, variant: MlxVariant) -> Self {
        MlxParams { variant, ..self }
    }

    /// u32 words of one packed row of `cols` elements.
    pub fn words_per_row(&self, cols: usize) -> usize {
        cols * self.bits as usize / 32
    }

    /// Scales (and biases) of one row of `cols` elements.
    pub fn groups_per_row(&self, cols: usize) -> usize {
        cols / self.group_size
    }

    /// Checks the combination of mode, bits, group size, variant and global
    /// scale against what mlx 0.32.4 accepts.
    pub fn validate(&self) -> Result<(), KernelError> {
        let unsupported = |what: String| Err(KernelError::Unsupported(what));
        match self.mode {
            MlxMode::Affine => {
                if !matches!(self.bits, 1..=6 | 8) {
                    return unsupported(format!(
                        "MLX affine quantization with {} bits (mlx accepts 1, 2, 3, 4, 5, 6 and 8)",
                        self.bits
                    ));
                }
                if !matches!(self.group_size, 32 | 64 | 128) {
                    return unsupported(format!(
                        "MLX affine quantization with group size {} (mlx accepts 32, 64 and 128)",
                        self.group_size
                    ));
                }
                if self.variant == MlxVariant::Gpu && self.bits == 1 {
                    return unsupported(
                        "the Metal/CUDA variant of 1-bit affine quantization (its kernel source was not available to implement)"
                            .to_string(),
                    );
                }
            }
            mode => {
                let (bits, group) = match mode {
                    MlxMode::Mxfp4 => (4, 32),
                    MlxMode::Mxfp8 => (8, 32),
                    _ => (4, 16),
                };
                if self.bits != bits || self.group_size != group {
                    return unsupported(format!(
                        "MLX {} with {} bits and group size {} (it requires {bits} bits and group size {group})",
                        mode.name(),
                        self.bits,
                        self.group_size
                    ));
                }
                if self.variant == MlxVariant::Gpu {
                    return unsupported(format!(
                        "the Metal/CUDA variant of MLX {} (only the CPU backend is reproduced)",
                        mode.name()
                    ));
                }
            }
        }
        match self.global_scale {
            Some(_) if self.mode != MlxMode::Nvfp4 => unsupported(format!(
                "a global scale with MLX {} (mlx accepts it only for nvfp4)",
                self.mode.name()
            )),
            Some(g) if !g.is_finite() || g == 0.0 => Err(KernelError::BadLength(format!(
                "the nvfp4 global scale must be a finite non-zero number, got {g}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Owned scales or biases.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleBuf {
    /// f32 (affine, f32 input).
    F32(Vec<f32>),
    /// f16 (affine, f16 input).
    F16(Vec<f16>),
    /// bf16 (affine, bf16 input).
    BF16(Vec<bf16>),
    /// Encoded 8-bit scales: E8M0 for mxfp4/mxfp8, E4M3 for nvfp4.
    U8(Vec<u8>),
}

impl ScaleBuf {
    /// A borrowed view.
    pub fn as_scales(&self) -> Scales<'_> {
        match self {
            ScaleBuf::F32(v) => Scales::F32(v),
            ScaleBuf::F16(v) => Scales::F16(v),
            ScaleBuf::BF16(v) => Scales::BF16(v),
            ScaleBuf::U8(v) => Scales::U8(v),
        }
    }

    /// Number of scales.
    pub fn len(&self) -> usize {
        self.as_scales().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The little-endian bytes, as safetensors stores them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.as_scales().to_le_bytes()
    }
}

/// Borrowed scales or biases (see [`ScaleBuf`]).
#[derive(Debug, Clone, Copy)]
pub enum Scales<'a> {
    /// f32.
    F32(&'a [f32]),
    /// f16.
    F16(&'a [f16]),
    /// bf16.
    BF16(&'a [bf16]),
    /// Encoded 8-bit scales (E8M0 or E4M3).
    U8(&'a [u8]),
}

impl Scales<'_> {
    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Scales::F32(v) => v.len(),
            Scales::F16(v) => v.len(),
            Scales::BF16(v) => v.len(),
            Scales::U8(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The float dtype, or `None` for encoded u8 scales.
    pub fn dtype(&self) -> Option<MlxDtype> {
        match self {
            Scales::F32(_) => Some(MlxDtype::F32),
            Scales::F16(_) => Some(MlxDtype::F16),
            Scales::BF16(_) => Some(MlxDtype::BF16),
            Scales::U8(_) => None,
        }
    }

    /// Scale `i` widened to f32 (exact); the raw code for u8 scales.
    #[inline]
    pub(crate) fn get_f32(&self, i: usize) -> f32 {
        match self {
            Scales::F32(v) => v[i],
            Scales::F16(v) => v[i].to_f32(),
            Scales::BF16(v) => v[i].to_f32(),
            Scales::U8(v) => f32::from(v[i]),
        }
    }

    /// The little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Scales::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Scales::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Scales::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Scales::U8(v) => v.to_vec(),
        }
    }
}

/// The result of [`quantize`]: mlx-lm's three tensors, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct MlxQuantized {
    /// `rows x cols*bits/32` packed words.
    pub weight: Vec<u32>,
    /// `rows x cols/group_size` scales.
    pub scales: ScaleBuf,
    /// `rows x cols/group_size` biases (affine only).
    pub biases: Option<ScaleBuf>,
}

/// How [`dequantize`] rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DequantPrecision {
    /// Everything in f32: affine `f32(f32(q*scale) + bias)` (no fused
    /// multiply-add), fp modes `element * scale` in f32. Equal to
    /// `mx.dequantize` when the scales are f32, and the values the
    /// quantization means: use it to compare and to convert.
    #[default]
    F32,
    /// What `mx.dequantize(..., dtype=D)` returns on mlx's CPU backend,
    /// widened to f32. Affine computes in the scales' dtype, rounding twice
    /// (`S(S(q*scale) + bias)`), then casts to D; the fp modes compute in D
    /// (nvfp4 with a global scale computes in f32 and mlx returns f32
    /// whatever D is; so does this).
    Mlx(MlxDtype),
}

/// Dequantizes whole rows of an MLX affine matrix straight from its stored
/// bytes, as [`dequantize`] does with [`DequantPrecision::F32`] (each value
/// `q * scale + bias`, the product rounded, then the sum), at the CPU's
/// SIMD level and on the caller's thread: for an engine that decodes a
/// few rows at a time from a memory-mapped file, whose bytes need not be
/// aligned for `u32` words or f16 scales.
///
/// `packed` holds the rows (`cols * bits / 8` bytes each, mlx's
/// little-endian bit stream), `scales` and `biases` their groups'
/// values stored little-endian as `dtype`, and `out` receives `rows x
/// cols` values. Errors when the parameters are not an affine mode, `cols`
/// is not a whole number of groups and 32-bit words, or a length does not
/// fit.
#[allow(clippy::too_many_arguments)]
pub fn affine_rows_to_f32(
    packed: &[u8],
    scales: &[u8],
    biases: &[u8],
    dtype: MlxDtype,
    params: &MlxParams,
    cols: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    params.validate()?;
    let (bits, group) = (params.bits, params.group_size);
    if params.mode != MlxMode::Affine
        || cols == 0
        || !cols.is_multiple_of(group)
        || !(cols * bits as usize).is_multiple_of(32)
    {
        return Err(KernelError::BadLength(format!(
            "{cols} columns are not whole {bits}-bit affine groups of {group} in 32-bit words"
        )));
    }
    let rows = out.len() / cols;
    let groups = rows * (cols / group);
    let size = match dtype {
        MlxDtype::F32 => 4,
        MlxDtype::F16 | MlxDtype::BF16 => 2,
    };
    if out.len() != rows * cols
        || packed.len() != rows * cols * bits as usize / 8
        || scales.len() != groups * size
        || biases.len() != groups * size
    {
        return Err(KernelError::BadLength(format!(
            "{rows} rows of {cols} values at {bits} bits, group {group}, need {} packed bytes and {} of scales and of biases, got {}, {} and {} (output {})",
            rows * cols * bits as usize / 8,
            groups * size,
            packed.len(),
            scales.len(),
            biases.len(),
            out.len()
        )));
    }
    crate::simd::mlx_affine_rows::run(
        crate::simd::level(),
        packed,
        scales,
        biases,
        dtype,
        bits,
        group,
        out,
    );
    Ok(())
}
