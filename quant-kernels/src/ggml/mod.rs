//! GGML block formats: quantize, dequantize and dot products, bit-exact with
//! ggml (llama.cpp's `ggml_quantize_chunk`, `to_float`, and the CPU
//! backend's `from_float` and `vec_dot`).
//!
//! ```
//! use quant_kernels::{ggml, GgmlType};
//! let w: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut q = vec![0u8; ggml::row_size(GgmlType::Q4K, 256).unwrap() * 2];
//! ggml::quantize(GgmlType::Q4K, &w, 256, None, &mut q).unwrap();
//! let mut back = vec![0f32; 512];
//! ggml::dequantize(GgmlType::Q4K, &q, &mut back).unwrap();
//! assert!((back[3] - w[3]).abs() < 0.1);
//! ```
//!
//! Every type has a scalar definition in [`reference`]; the entry points
//! here add rayon across rows and SIMD, and give the same bytes on every
//! thread count and CPU.

use rayon::prelude::*;

use crate::{simd, GgmlType, KernelError};

pub mod reference;
pub mod requant;
mod search;

pub use search::{quantize_row_search_ref, quantize_search, SEARCHABLE};

/// The types [`quantize`] and [`dequantize`] handle (model-file types;
/// [`dequantize`] also reads the activation types Q8_1 and Q8_K).
pub const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::IQ4XS,
];

/// How a type's quantizer uses an importance matrix (imatrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImatrixUse {
    /// The bytes do not depend on it (F32, F16, BF16, Q8_0).
    Ignored,
    /// Without one ggml runs the type's `_ref` quantizer (for IQ4_NL and
    /// IQ4_XS: the unweighted search); with one, the weighted search.
    Optional,
    /// ggml refuses to quantize without one (IQ2_XXS, IQ2_XS, IQ1_S; none
    /// of them is implemented here).
    Required,
}

/// Whether [`quantize`] can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    QUANTIZABLE.contains(&ty)
}

/// Types [`dequantize`] and [`vec_dot`] read that are not [`QUANTIZABLE`]:
/// llama.cpp's formats of downloaded models that are not produced here.
pub const DECODE_ONLY: &[GgmlType] = &[
    GgmlType::IQ1S,
    GgmlType::IQ1M,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
];

/// Whether [`dequantize`] can read `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    can_quantize(ty) || DECODE_ONLY.contains(&ty) || matches!(ty, GgmlType::Q8_1 | GgmlType::Q8K)
}

/// How `ty`'s quantizer uses an importance matrix, as
/// `ggml_quantize_chunk` dispatches it.
pub fn imatrix_use(ty: GgmlType) -> ImatrixUse {
    use GgmlType as T;
    match ty {
        T::F32 | T::F16 | T::BF16 | T::Q8_0 | T::Q8_1 | T::Q8K | T::I8 | T::I16 | T::I32 => {
            ImatrixUse::Ignored
        }
        T::IQ2XXS | T::IQ2XS | T::IQ1S => ImatrixUse::Required,
        _ => ImatrixUse::Optional,
    }
}

/// Bytes taken by `n` values of `ty`, or `BadLength` when `n` is not a
/// multiple of the block size.
pub fn row_size(ty: GgmlType, n: usize) -> Result<usize, KernelError> {
    ty.row_size(n as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| {
            KernelError::BadLength(format!(
                "{n} values do not fill whole {ty} blocks of {}",
                ty.block_size()
            ))
        })
}

/// Rows smaller than this many values are batched so a rayon task has
/// enough work to pay for itself.
const MIN_VALUES_PER_TASK: usize = 16 * 1024;

fn rows_per_task(n_per_row: usize) -> usize {
    MIN_VALUES_PER_TASK.div_ceil(n_per_row.max(1)).max(1)
}

/// Index of the first NaN or infinity in `x`, if any.
fn first_non_finite(x: &[f32]) -> Option<usize> {
    // A vectorized check first; locate the offender only when there is one.
    if simd::all_finite(x) {
        None
    } else {
        x.iter().position(|v| !v.is_finite())
    }
}

/// Quantizes rows of `n_per_row` values from `src` into `dst`, exactly as
/// `ggml_quantize_chunk(ty, src, dst, 0, nrows, n_per_row, imatrix)` does.
///
/// `src.len()` must be a multiple of `n_per_row`, `n_per_row` a multiple of
/// the block size, `dst.len()` the rows' byte size, and `imatrix` (one
/// weight per column, shared by all rows) `n_per_row` long. Rows run in
/// parallel on the current rayon pool; the bytes do not depend on the
/// thread count. NaN and infinite inputs are refused with
/// [`KernelError::NonFinite`] naming the first one; `dst` is then
/// unspecified.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    if !can_quantize(ty) {
        return Err(KernelError::Unsupported(format!("quantizing to {ty}")));
    }
    let row_bytes = check_rows(ty, src.len(), n_per_row, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(KernelError::BadLength(format!(
                "the importance matrix has {} entries, the rows {n_per_row} values",
                w.len()
            )));
        }
        if let Some(i) = first_non_finite(w) {
            return Err(KernelError::BadLength(format!(
                "importance weight {i} is {}, not a finite number",
                w[i]
            )));
        }
    }
    if n_per_row == 0 {
        return Ok(());
    }
    let imatrix = match imatrix_use(ty) {
        ImatrixUse::Ignored => None,
        _ => imatrix,
    };
    let per_task = rows_per_task(n_per_row);
    let bad_row = src
        .par_chunks(n_per_row * per_task)
        .zip(dst.par_chunks_mut(row_bytes * per_task))
        .enumerate()
        .map(|(task, (x, y))| {
            for (r, (xr, yr)) in x
                .chunks_exact(n_per_row)
                .zip(y.chunks_exact_mut(row_bytes))
                .enumerate()
            {
                let bad = if ty == GgmlType::F32 {
                    // One pass: the copy checks as it goes.
                    (!simd::copy_f32_checked(xr, yr))
                        .then(|| first_non_finite(xr))
                        .flatten()
                } else {
                    let bad = first_non_finite(xr);
                    if bad.is_none() {
                        quantize_row_fast(ty, xr, yr, imatrix);
                    }
                    bad
                };
                if let Some(i) = bad {
                    return Some((task * per_task + r) * n_per_row + i);
                }
            }
            None
        })
        .min()
        .flatten();
    match bad_row {
        Some(index) => Err(KernelError::NonFinite {
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`, exactly as ggml's
/// `to_float` does. `dst.len()` must be the number of values `src` holds.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    if !can_dequantize(ty) {
        return Err(KernelError::Unsupported(format!("dequantizing {ty}")));
    }
    let block = ty.block_size() as usize;
    let block_bytes = ty.type_size() as usize;
    if !dst.len().is_multiple_of(block) || dst.len() / block * block_bytes != src.len() {
        return Err(KernelError::BadLength(format!(
            "{} bytes of {ty} hold {} values, the output has room for {}",
            src.len(),
            src.len() / block_bytes * block,
            dst.len()
        )));
    }
    // Split into tasks of whole blocks; the kernels are per block, so the
    // split does not change the output.
    let blocks_per_task = MIN_VALUES_PER_TASK.div_ceil(block);
    src.par_chunks(blocks_per_task * block_bytes)
        .zip(dst.par_chunks_mut(blocks_per_task * block))
        .for_each(|(x, y)| dequantize_row_fast(ty, x, y));
    Ok(())
}

/// Checks row geometry; returns the bytes per row.
pub(crate) fn check_rows(
    ty: GgmlType,
    n_values: usize,
    n_per_row: usize,
    n_bytes: usize,
) -> Result<usize, KernelError> {
    let row_bytes = row_size(ty, n_per_row)?;
    if n_per_row == 0 {
        if n_values != 0 || n_bytes != 0 {
            return Err(KernelError::BadLength(
                "rows of 0 values cannot hold any data".into(),
            ));
        }
        return Ok(0);
    }
    if !n_values.is_multiple_of(n_per_row) {
        return Err(KernelError::BadLength(format!(
            "{n_values} values are not whole rows of {n_per_row}"
        )));
    }
    let want = n_values / n_per_row * row_bytes;
    if n_bytes != want {
        return Err(KernelError::BadLength(format!(
            "{} rows of {n_per_row} values as {ty} take {want} bytes, the output has {n_bytes}",
            n_values / n_per_row
        )));
    }
    Ok(row_bytes)
}

/// One row, fastest path available; same bytes as [`reference::quantize_row`].
fn quantize_row_fast(ty: GgmlType, x: &[f32], y: &mut [u8], imatrix: Option<&[f32]>) {
    let level = simd::level();
    if imatrix.is_none() && simd::quantize_at(level, ty, x, y) {
        return;
    }
    if simd::quantize_iq4_at(level, ty, x, y, imatrix) {
        return;
    }
    reference::quantize_row(ty, x, y, imatrix).expect("type checked by the caller");
}

/// Whole blocks, fastest path available; same values as
/// [`reference::dequantize_row`].
fn dequantize_row_fast(ty: GgmlType, x: &[u8], y: &mut [f32]) {
    if simd::dequantize_at(simd::level(), ty, x, y) {
        return;
    }
    reference::dequantize_row(ty, x, y).expect("type checked by the caller");
}

/// The activation type ggml's CPU backend quantizes activations to for dot
/// products with weights of `ty` (its `vec_dot_type`): Q8_0 for Q4_0, Q5_0,
/// Q8_0, IQ4_NL, MXFP4 and NVFP4; Q8_1 for Q4_1 and Q5_1; Q8_K for the
/// K-quants, IQ4_XS, the IQ1/IQ2/IQ3 types, TQ1_0 and TQ2_0; the type
/// itself for F32, F16 and BF16. `None` for types without a dot product
/// here.
pub fn vec_dot_type(ty: GgmlType) -> Option<GgmlType> {
    reference::vec_dot_type(ty)
}

/// Quantizes activations `x` to `vec_dot_type` (a value returned by
/// [`vec_dot_type`]) exactly as ggml's x86-64 CPU backend does (its SIMD
/// `from_float`, which rounds Q8_0/Q8_1 half to even with scale `127/amax`,
/// unlike the `_ref` quantizer). `x.len()` must be a multiple of the block
/// size and `dst` the matching byte size. NaN and infinities are refused.
pub fn quantize_activations(
    vec_dot_type: GgmlType,
    x: &[f32],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    use GgmlType as T;
    if !matches!(
        vec_dot_type,
        T::Q8_0 | T::Q8_1 | T::Q8K | T::F16 | T::BF16 | T::F32
    ) {
        return Err(KernelError::Unsupported(format!(
            "{vec_dot_type} is not an activation type"
        )));
    }
    let want = row_size(vec_dot_type, x.len())?;
    if dst.len() != want {
        return Err(KernelError::BadLength(format!(
            "{} values as {vec_dot_type} take {want} bytes, the output has {}",
            x.len(),
            dst.len()
        )));
    }
    if let Some(index) = first_non_finite(x) {
        return Err(KernelError::NonFinite {
            index,
            value: x[index],
        });
    }
    if simd::quantize_activations_at(simd::level(), vec_dot_type, x, dst) {
        return Ok(());
    }
    reference::quantize_activations_row(vec_dot_type, x, dst)
}

/// Dot product of `n` values: one row of weights of type `ty` and one row
/// of activations quantized with [`quantize_activations`] to
/// `vec_dot_type(ty)`, computed as ggml's CPU backend computes it on
/// x86-64 with AVX2 (quantized types) and AVX-512 (F32, F16: four 16-lane
/// accumulators; BF16: AVX512-BF16), so that results equal ggml's bit for
/// bit on such a CPU. Both rows must hold exactly `n` values.
pub fn vec_dot(
    ty: GgmlType,
    weights: &[u8],
    activations: &[u8],
    n: usize,
) -> Result<f32, KernelError> {
    let vdt = vec_dot_type(ty)
        .ok_or_else(|| KernelError::Unsupported(format!("dot products of {ty}")))?;
    let (wb, ab) = (row_size(ty, n)?, row_size(vdt, n)?);
    if weights.len() != wb || activations.len() != ab {
        return Err(KernelError::BadLength(format!(
            "{n} values take {wb} bytes of {ty} and {ab} bytes of {vdt}; got {} and {}",
            weights.len(),
            activations.len()
        )));
    }
    match simd::vec_dot_at(simd::level(), ty, n, weights, activations) {
        Some(v) => Ok(v),
        None => reference::vec_dot(ty, n, weights, activations),
    }
}

/// Whether ggml's CPU `mul_mat` (an x86 build with llamafile, llama.cpp's
/// default) multiplies a matrix of `matrix_rows` rows of `n` values of
/// `ty` by a batch of `batch_tokens` activation rows through llamafile's
/// `tinyBLAS` rather than per-pair `vec_dot`: F16 and F32 weights, at
/// least two tokens, `n` a multiple of 16 and the rows a multiple of 4.
/// Its order of additions differs from `vec_dot`'s
/// ([`reference::sgemm_dot`]).
pub fn sgemm_applies(ty: GgmlType, n: usize, matrix_rows: usize, batch_tokens: usize) -> bool {
    matches!(ty, GgmlType::F16 | GgmlType::F32)
        && batch_tokens >= 2
        && n > 0
        && n.is_multiple_of(16)
        && matrix_rows.is_multiple_of(4)
}

/// [`gemm`] for part of a product of a whole matrix (`matrix_rows` rows)
/// by a batch of `batch_tokens` activation rows, bit for bit what ggml's
/// CPU `mul_mat` computes for each pair of it: [`reference::sgemm_dot`]
/// where [`sgemm_applies`], [`vec_dot`] elsewhere. `weights` and
/// `activations` may be any rows and tokens of the two: a pair's result
/// does not depend on the others.
///
/// ```
/// use quant_kernels::{ggml, GgmlType};
/// let (n, ty) = (32, GgmlType::F32);
/// let w: Vec<u8> = (0..4 * n).flat_map(|i| (i as f32 * 0.1).sin().to_le_bytes()).collect();
/// let x: Vec<u8> = (0..2 * n).flat_map(|i| (i as f32 * 0.3).cos().to_le_bytes()).collect();
/// let mut out = vec![0f32; 4 * 2];
/// ggml::gemm_batch(ty, n, &w, &x, &mut out, 4, 2).unwrap();
/// let one = ggml::reference::sgemm_dot(ty, n, &w[4 * n..8 * n], &x[4 * n..]);
/// assert_eq!(out[4 + 1].to_bits(), one.to_bits()); // token 1, row 1
/// ```
pub fn gemm_batch(
    ty: GgmlType,
    n: usize,
    weights: &[u8],
    activations: &[u8],
    out: &mut [f32],
    matrix_rows: usize,
    batch_tokens: usize,
) -> Result<(), KernelError> {
    if !sgemm_applies(ty, n, matrix_rows, batch_tokens) {
        return gemm(ty, n, weights, activations, out);
    }
    let rb = row_size(ty, n)?;
    let (n_rows, n_tok) = (weights.len() / rb, activations.len() / rb);
    if weights.len() != n_rows * rb
        || activations.len() != n_tok * rb
        || out.len() != n_rows * n_tok
    {
        return Err(KernelError::BadLength(format!(
            "{} bytes of {ty} weight rows and {} bytes of activation rows ({rb} bytes each) \
             do not give {} dot products",
            weights.len(),
            activations.len(),
            out.len()
        )));
    }
    if simd::sgemm_at(
        simd::level(),
        ty,
        n,
        weights,
        n_rows,
        activations,
        n_tok,
        out,
    ) {
        return Ok(());
    }
    for (t, a) in activations.chunks_exact(rb).enumerate() {
        for (r, w) in weights.chunks_exact(rb).enumerate() {
            out[t * n_rows + r] = reference::sgemm_dot(ty, n, w, a);
        }
    }
    Ok(())
}

/// Dot products of every weight row with every activation row: `weights`
/// holds rows of `n` values of `ty`, `activations` rows of `n` values
/// quantized with [`quantize_activations`] to `vec_dot_type(ty)`, and
/// `out[t * n_rows + r]` gets [`vec_dot`] of row `r` and activation row
/// `t`, bit for bit, so the result of a pair does not depend on the other
/// rows and tokens of the call. Where the CPU has a tile kernel for `ty`
/// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K on AVX2 or AVX-512
/// VNNI; batches of F16 and F32 on AVX-512) each weight block is unpacked
/// once for several tokens and each activation block loaded once for
/// several rows; other types loop over the pairs. Runs on the calling
/// thread. ggml's `mul_mat` adds batches of F16 and F32 weights in
/// another order: [`gemm_batch`] follows it.
///
/// ```
/// use quant_kernels::{ggml, GgmlType};
/// let (n, ty) = (64, GgmlType::Q8_0);
/// let w: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.1).sin()).collect();
/// let x: Vec<f32> = (0..2 * n).map(|i| (i as f32 * 0.3).cos()).collect();
/// let mut wq = vec![0u8; 3 * ggml::row_size(ty, n).unwrap()];
/// ggml::quantize(ty, &w, n, None, &mut wq).unwrap();
/// let vdt = ggml::vec_dot_type(ty).unwrap();
/// let ab = ggml::row_size(vdt, n).unwrap();
/// let mut xq = vec![0u8; 2 * ab];
/// for (src, dst) in x.chunks(n).zip(xq.chunks_mut(ab)) {
///     ggml::quantize_activations(vdt, src, dst).unwrap();
/// }
/// let mut out = vec![0f32; 3 * 2];
/// ggml::gemm(ty, n, &wq, &xq, &mut out).unwrap();
/// let one = ggml::vec_dot(ty, &wq[34 * 2..34 * 4], &xq[ab..], n).unwrap();
/// assert_eq!(out[3 + 1].to_bits(), one.to_bits()); // token 1, row 1
/// ```
pub fn gemm(
    ty: GgmlType,
    n: usize,
    weights: &[u8],
    activations: &[u8],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let vdt = vec_dot_type(ty)
        .ok_or_else(|| KernelError::Unsupported(format!("dot products of {ty}")))?;
    let (wb, ab) = (row_size(ty, n)?, row_size(vdt, n)?);
    if wb == 0 || ab == 0 {
        return if out.is_empty() {
            Ok(())
        } else {
            Err(KernelError::BadLength(
                "rows of 0 values give no dot products".into(),
            ))
        };
    }
    let (n_rows, n_tok) = (weights.len() / wb, activations.len() / ab);
    if weights.len() != n_rows * wb
        || activations.len() != n_tok * ab
        || out.len() != n_rows * n_tok
    {
        return Err(KernelError::BadLength(format!(
            "{} bytes of {ty} rows ({wb} each) and {} bytes of {vdt} rows ({ab} each) \
             do not give {} dot products",
            weights.len(),
            activations.len(),
            out.len()
        )));
    }
    let level = simd::level();
    if simd::gemm_at(level, ty, n, weights, n_rows, activations, ab, n_tok, out) {
        return Ok(());
    }
    for (t, a) in activations.chunks_exact(ab).enumerate() {
        for (r, w) in weights.chunks_exact(wb).enumerate() {
            out[t * n_rows + r] = match simd::vec_dot_at(level, ty, n, w, a) {
                Some(v) => v,
                None => reference::vec_dot(ty, n, w, a)?,
            };
        }
    }
    Ok(())
}
