//! Whole matrices: validation, the row loop (sequential for the reference,
//! rayon for the fast path) and the dtype plumbing.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::search;
use super::{
    affine, fp, DequantPrecision, MlxDtype, MlxInput, MlxMode, MlxParams, MlxQuantized, MlxVariant,
    ScaleBuf, Scales,
};
use crate::KernelError;

/// Enough elements per rayon task that scheduling costs stay small.
const MIN_ELEMS_PER_TASK: usize = 1 << 15;

/// The largest group any mode uses.
const MAX_GROUP: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// Scalar reference, one thread: the definition.
    Reference,
    /// Fast group kernels, rows in parallel.
    Fast,
}

/// A float element type of MLX arrays.
trait Elem: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
    /// Widens a slice (exact).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
    /// From an f32 that is already representable in `Self`.
    fn narrow(x: f32) -> Self;
}

impl Elem for f32 {
    #[inline]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn narrow(x: f32) -> Self {
        x
    }
}

impl Elem for f16 {
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    #[inline]
    fn narrow(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Elem for bf16 {
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    #[inline]
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Quantizes a row-major `rows x cols` matrix exactly as `mx.quantize` does
/// on mlx's CPU backend (or the selected [`MlxVariant`]), rows in parallel.
///
/// `src.len()` must be a multiple of `cols`, and `cols` a multiple of the
/// group size. NaN and infinities are rejected with
/// [`KernelError::NonFinite`] naming the first one.
pub fn quantize(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
) -> Result<MlxQuantized, KernelError> {
    quantize_with(src, cols, params, Engine::Fast)
}

/// The scalar, single-threaded reference of [`quantize`]: the definition
/// the fast path is tested against. Same arguments, same result.
pub fn quantize_ref(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
) -> Result<MlxQuantized, KernelError> {
    quantize_with(src, cols, params, Engine::Reference)
}

/// Quantizes a row-major `rows x cols` matrix into the same tensors as
/// [`quantize`] (affine mode only), with each group's scale and bias
/// searched rather than derived from its min and max: the stored pair
/// (rounded to the input's dtype) that minimizes the weighted squared error
/// of `scale*q + bias`, never worse by that measure than [`quantize`]'s own
/// pair for the group. Each value's weight is `sqrt(sigma2 + x^2)`
/// (`sigma2` the row's mean square) times `importance[column]` when an
/// importance vector (one non-negative weight per column, e.g. an
/// imatrix's mean squared activations) is given. Rows run in parallel; the
/// result does not depend on the thread count.
pub fn quantize_search(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
    importance: Option<&[f32]>,
) -> Result<MlxQuantized, KernelError> {
    check_search(params, cols, importance)?;
    quantize_with_method(src, cols, params, Engine::Fast, Method::Search(importance))
}

/// The single-threaded reference of [`quantize_search`]: same arguments,
/// same result.
pub fn quantize_search_ref(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
    importance: Option<&[f32]>,
) -> Result<MlxQuantized, KernelError> {
    check_search(params, cols, importance)?;
    quantize_with_method(
        src,
        cols,
        params,
        Engine::Reference,
        Method::Search(importance),
    )
}

fn check_search(
    params: &MlxParams,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<(), KernelError> {
    if params.mode != MlxMode::Affine {
        return Err(KernelError::Unsupported(format!(
            "searched scales for MLX {} (only affine mode has a scale and bias to search)",
            params.mode.name()
        )));
    }
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(KernelError::BadLength(format!(
                "the importance vector has {} entries, the rows {cols} values",
                imp.len()
            )));
        }
        if let Some(i) = imp.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(KernelError::BadLength(format!(
                "importance weight {i} is {}, not a finite non-negative number",
                imp[i]
            )));
        }
    }
    Ok(())
}

/// Dequantizes mlx-lm's tensors of a `rows x cols` matrix to f32, rounding
/// as `precision` says. `weight` holds `rows x cols*bits/32` words,
/// `scales` (and `biases`, affine only, same dtype as `scales`)
/// `rows x cols/group_size`; for the fp modes `scales` are the u8 codes.
/// Rows run in parallel. Any finite or non-finite stored values are
/// accepted: the result is what mlx computes from them.
pub fn dequantize(
    weight: &[u32],
    scales: Scales<'_>,
    biases: Option<Scales<'_>>,
    cols: usize,
    params: &MlxParams,
    precision: DequantPrecision,
) -> Result<Vec<f32>, KernelError> {
    dequantize_with(
        weight,
        scales,
        biases,
        cols,
        params,
        precision,
        Engine::Fast,
    )
}

/// [`dequantize`] into a caller's buffer of `rows x cols` f32 (reusing one
/// buffer across tensors saves the page faults of a fresh allocation,
/// which otherwise cost more than the dequantization).
pub fn dequantize_into(
    weight: &[u32],
    scales: Scales<'_>,
    biases: Option<Scales<'_>>,
    cols: usize,
    params: &MlxParams,
    precision: DequantPrecision,
    out: &mut [f32],
) -> Result<(), KernelError> {
    dequantize_rows(
        weight,
        scales,
        biases,
        cols,
        params,
        precision,
        Engine::Fast,
        out,
    )
}

/// The scalar, single-threaded reference of [`dequantize`].
pub fn dequantize_ref(
    weight: &[u32],
    scales: Scales<'_>,
    biases: Option<Scales<'_>>,
    cols: usize,
    params: &MlxParams,
    precision: DequantPrecision,
) -> Result<Vec<f32>, KernelError> {
    dequantize_with(
        weight,
        scales,
        biases,
        cols,
        params,
        precision,
        Engine::Reference,
    )
}

fn check_row_length(cols: usize, params: &MlxParams) -> Result<(), KernelError> {
    params.validate()?;
    if cols == 0 || !cols.is_multiple_of(params.group_size) {
        return Err(KernelError::BadLength(format!(
            "MLX {} needs a row length that is a positive multiple of the group size {}, got {cols}",
            params.mode.name(),
            params.group_size
        )));
    }
    Ok(())
}

pub(crate) fn check_cols(
    len: usize,
    cols: usize,
    params: &MlxParams,
) -> Result<usize, KernelError> {
    check_row_length(cols, params)?;
    if !len.is_multiple_of(cols) {
        return Err(KernelError::BadLength(format!(
            "{len} values do not form rows of {cols}: the input length must be a multiple of the row length"
        )));
    }
    Ok(len / cols)
}

/// How affine groups get their scale and bias.
#[derive(Clone, Copy)]
enum Method<'a> {
    /// mlx's round to nearest.
    Rtn,
    /// The search, with optional per-column importance.
    Search(Option<&'a [f32]>),
}

fn quantize_with(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
    engine: Engine,
) -> Result<MlxQuantized, KernelError> {
    quantize_with_method(src, cols, params, engine, Method::Rtn)
}

fn quantize_with_method(
    src: MlxInput<'_>,
    cols: usize,
    params: &MlxParams,
    engine: Engine,
    method: Method<'_>,
) -> Result<MlxQuantized, KernelError> {
    let rows = check_cols(src.len(), cols, params)?;
    let dtype = src.dtype();
    match src {
        MlxInput::F32(v) => quantize_typed(v, rows, cols, params, dtype, engine, method),
        MlxInput::F16(v) => quantize_typed(v, rows, cols, params, dtype, engine, method),
        MlxInput::BF16(v) => quantize_typed(v, rows, cols, params, dtype, engine, method),
    }
}

/// Either a scale buffer of the input's dtype or u8 codes.
trait IntoScaleBuf: Sized {
    fn into_buf(v: Vec<Self>) -> ScaleBuf;
}

impl IntoScaleBuf for f32 {
    fn into_buf(v: Vec<Self>) -> ScaleBuf {
        ScaleBuf::F32(v)
    }
}

impl IntoScaleBuf for f16 {
    fn into_buf(v: Vec<Self>) -> ScaleBuf {
        ScaleBuf::F16(v)
    }
}

impl IntoScaleBuf for bf16 {
    fn into_buf(v: Vec<Self>) -> ScaleBuf {
        ScaleBuf::BF16(v)
    }
}

fn quantize_typed<T: Elem + IntoScaleBuf + Default>(
    src: &[T],
    rows: usize,
    cols: usize,
    params: &MlxParams,
    dtype: MlxDtype,
    engine: Engine,
    method: Method<'_>,
) -> Result<MlxQuantized, KernelError> {
    let wpr = params.words_per_row(cols);
    let gpr = params.groups_per_row(cols);
    let mut weight = vec![0u32; rows * wpr];
    if params.mode == MlxMode::Affine {
        let mut scales = vec![T::default(); rows * gpr];
        let mut biases = vec![T::default(); rows * gpr];
        let row_fn = |row: &[T], w: &mut [u32], s: &mut [T], b: &mut [T]| match method {
            Method::Rtn => affine_row(row, params, dtype, engine, w, s, b),
            Method::Search(imp) => search_row(row, params, dtype, imp, engine, w, s, b),
        };
        let bad = run_rows(
            engine,
            cols,
            src.par_chunks(cols)
                .zip(weight.par_chunks_mut(wpr))
                .zip(scales.par_chunks_mut(gpr).zip(biases.par_chunks_mut(gpr))),
            |((row, w), (s, b))| row_fn(row, w, s, b),
        );
        non_finite(bad, src, cols)?;
        Ok(MlxQuantized {
            weight,
            scales: T::into_buf(scales),
            biases: Some(T::into_buf(biases)),
        })
    } else {
        let mut scales = vec![0u8; rows * gpr];
        let bad = run_rows(
            engine,
            cols,
            src.par_chunks(cols)
                .zip(weight.par_chunks_mut(wpr))
                .zip(scales.par_chunks_mut(gpr)),
            |((row, w), s)| fp_row(row, params, dtype, w, s),
        );
        non_finite(bad, src, cols)?;
        Ok(MlxQuantized {
            weight,
            scales: ScaleBuf::U8(scales),
            biases: None,
        })
    }
}

/// Rows per rayon task: the reference runs as one task (one thread, rows
/// in order), the fast path in tasks of at least `MIN_ELEMS_PER_TASK`.
fn rows_per_task(engine: Engine, cols: usize) -> usize {
    match engine {
        Engine::Reference => usize::MAX,
        Engine::Fast => (MIN_ELEMS_PER_TASK / cols).max(1),
    }
}

/// Runs `f` on every row and returns the smallest (row, column) it
/// reported: the same on any thread count.
fn run_rows<P, F>(engine: Engine, cols: usize, rows: P, f: F) -> Option<(usize, usize)>
where
    P: IndexedParallelIterator,
    F: Fn(P::Item) -> Option<usize> + Sync + Send,
{
    rows.with_min_len(rows_per_task(engine, cols))
        .enumerate()
        .filter_map(|(r, item)| f(item).map(|c| (r, c)))
        .min()
}

fn non_finite<T: Elem>(
    bad: Option<(usize, usize)>,
    src: &[T],
    cols: usize,
) -> Result<(), KernelError> {
    match bad {
        None => Ok(()),
        Some((r, c)) => {
            let index = r * cols + c;
            Err(KernelError::NonFinite {
                index,
                value: src[index].widen(),
            })
        }
    }
}

/// Widens one group into `buf`; the column of the first non-finite value
/// (relative to the group) if any.
#[inline(always)]
fn widen_group<T: Elem>(group: &[T], buf: &mut [f32]) -> Option<usize> {
    T::widen_slice(group, buf);
    // An all-ones exponent plus one carries into the sign bit: NaN or inf.
    let non_finite = buf.iter().fold(0u32, |acc, x| {
        acc | (x.to_bits() & 0x7f80_0000).wrapping_add(0x0080_0000)
    });
    if non_finite & 0x8000_0000 == 0 {
        None
    } else {
        buf.iter().position(|x| !x.is_finite())
    }
}

fn affine_row<T: Elem>(
    row: &[T],
    params: &MlxParams,
    dtype: MlxDtype,
    engine: Engine,
    words: &mut [u32],
    scales: &mut [T],
    biases: &mut [T],
) -> Option<usize> {
    let gs = params.group_size;
    let bits = params.bits;
    let wpg = gs * bits as usize / 32;
    let mut buf = [0f32; MAX_GROUP];
    let mut q = [0u8; MAX_GROUP];
    for (g, group) in row.chunks_exact(gs).enumerate() {
        let buf = &mut buf[..gs];
        let q = &mut q[..gs];
        if let Some(c) = widen_group(group, buf) {
            return Some(g * gs + c);
        }
        let out = &mut words[g * wpg..(g + 1) * wpg];
        let (s, b) = if engine == Engine::Fast && params.variant == MlxVariant::Cpu {
            match bits {
                1 => fast_group::<1>(buf, dtype, q, out),
                2 => fast_group::<2>(buf, dtype, q, out),
                3 => fast_group::<3>(buf, dtype, q, out),
                4 => fast_group::<4>(buf, dtype, q, out),
                5 => fast_group::<5>(buf, dtype, q, out),
                6 => fast_group::<6>(buf, dtype, q, out),
                _ => fast_group::<8>(buf, dtype, q, out),
            }
        } else {
            let sb = affine::quantize_group_ref(buf, bits, params.variant, dtype, q);
            affine::pack_ref(q, bits, out);
            sb
        };
        scales[g] = T::narrow(s);
        biases[g] = T::narrow(b);
    }
    None
}

/// One row of [`quantize_search`]: widened and checked, then
/// [`search::search_row`] (the scalar definition for the reference, the
/// CPU's SIMD level for the fast path: the same bits), then packed.
#[allow(clippy::too_many_arguments)]
fn search_row<T: Elem>(
    row: &[T],
    params: &MlxParams,
    dtype: MlxDtype,
    importance: Option<&[f32]>,
    engine: Engine,
    words: &mut [u32],
    scales: &mut [T],
    biases: &mut [T],
) -> Option<usize> {
    let gs = params.group_size;
    let bits = params.bits;
    let wpg = gs * bits as usize / 32;
    let mut x = vec![0f32; row.len()];
    for (g, (group, buf)) in row.chunks_exact(gs).zip(x.chunks_exact_mut(gs)).enumerate() {
        if let Some(c) = widen_group(group, buf) {
            return Some(g * gs + c);
        }
    }
    let mut codes = vec![0u8; row.len()];
    let mut pairs = vec![(0f32, 0f32); row.len() / gs];
    match engine {
        Engine::Reference => {
            search::search_row::<[f32; 8]>(&x, importance, gs, bits, dtype, &mut codes, &mut pairs)
        }
        Engine::Fast => crate::simd::mlx_search_row::run(
            crate::simd::level(),
            &x,
            importance,
            gs,
            bits,
            dtype,
            &mut codes,
            &mut pairs,
        ),
    }
    for (g, (q, &(s, b))) in codes.chunks_exact(gs).zip(&pairs).enumerate() {
        let out = &mut words[g * wpg..(g + 1) * wpg];
        match (engine, bits) {
            (Engine::Fast, 2) => affine::pack_fast::<2>(q, out),
            (Engine::Fast, 3) => affine::pack_fast::<3>(q, out),
            (Engine::Fast, 4) => affine::pack_fast::<4>(q, out),
            (Engine::Fast, 5) => affine::pack_fast::<5>(q, out),
            (Engine::Fast, 6) => affine::pack_fast::<6>(q, out),
            (Engine::Fast, 8) => affine::pack_fast::<8>(q, out),
            _ => affine::pack_ref(q, bits, out),
        }
        scales[g] = T::narrow(s);
        biases[g] = T::narrow(b);
    }
    None
}

#[inline(always)]
fn fast_group<const BITS: u32>(
    w: &[f32],
    dtype: MlxDtype,
    q: &mut [u8],
    out: &mut [u32],
) -> (f32, f32) {
    let sb = affine::quantize_group_fast::<BITS>(w, dtype, q);
    affine::pack_fast::<BITS>(q, out);
    sb
}

fn fp_row<T: Elem>(
    row: &[T],
    params: &MlxParams,
    dtype: MlxDtype,
    words: &mut [u32],
    scales: &mut [u8],
) -> Option<usize> {
    let gs = params.group_size;
    let wpg = gs * params.bits as usize / 32;
    let mut buf = [0f32; MAX_GROUP];
    let mut codes = [0u8; MAX_GROUP];
    for (g, group) in row.chunks_exact(gs).enumerate() {
        let buf = &mut buf[..gs];
        let codes = &mut codes[..gs];
        if let Some(c) = widen_group(group, buf) {
            return Some(g * gs + c);
        }
        scales[g] = fp::quantize_group_ref(buf, params.mode, dtype, params.global_scale, codes);
        affine::pack_ref(codes, params.bits, &mut words[g * wpg..(g + 1) * wpg]);
    }
    None
}

fn dequantize_with(
    weight: &[u32],
    scales: Scales<'_>,
    biases: Option<Scales<'_>>,
    cols: usize,
    params: &MlxParams,
    precision: DequantPrecision,
    engine: Engine,
) -> Result<Vec<f32>, KernelError> {
    let rows = check_quantized(weight, &scales, biases.as_ref(), cols, params)?;
    let mut out = vec![0f32; rows * cols];
    dequantize_rows(
        weight, scales, biases, cols, params, precision, engine, &mut out,
    )?;
    Ok(out)
}

/// Validates quantized tensors against the settings; returns the rows.
pub(crate) fn check_quantized(
    weight: &[u32],
    scales: &Scales<'_>,
    biases: Option<&Scales<'_>>,
    cols: usize,
    params: &MlxParams,
) -> Result<usize, KernelError> {
    check_row_length(cols, params)?;
    let wpr = params.words_per_row(cols);
    let gpr = params.groups_per_row(cols);
    if !scales.len().is_multiple_of(gpr) {
        return Err(KernelError::BadLength(format!(
            "{} scales do not form rows of {gpr} (row length {cols}, group size {})",
            scales.len(),
            params.group_size
        )));
    }
    let rows = scales.len() / gpr;
    if weight.len() != rows * wpr {
        return Err(KernelError::BadLength(format!(
            "MLX {} {}-bit weight of {rows} rows x {cols} columns needs {} u32 words, got {}",
            params.mode.name(),
            params.bits,
            rows * wpr,
            weight.len()
        )));
    }
    match (params.mode, biases) {
        (MlxMode::Affine, None) => Err(KernelError::BadLength(
            "MLX affine dequantization needs biases".to_string(),
        )),
        (MlxMode::Affine, Some(b)) => {
            if scales.dtype().is_none() || b.dtype() != scales.dtype() {
                return Err(KernelError::Unsupported(format!(
                    "affine scales of dtype {:?} with biases of dtype {:?} (both must be the same float dtype)",
                    scales.dtype().map(MlxDtype::name),
                    b.dtype().map(MlxDtype::name)
                )));
            }
            if b.len() != scales.len() {
                return Err(KernelError::BadLength(format!(
                    "{} biases for {} scales: there must be one bias per scale",
                    b.len(),
                    scales.len()
                )));
            }
            Ok(rows)
        }
        (mode, Some(_)) => Err(KernelError::Unsupported(format!(
            "biases with MLX {} (it has none)",
            mode.name()
        ))),
        (mode, None) => {
            if scales.dtype().is_some() {
                return Err(KernelError::Unsupported(format!(
                    "float scales with MLX {} (its scales are u8 codes)",
                    mode.name()
                )));
            }
            Ok(rows)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn dequantize_rows(
    weight: &[u32],
    scales: Scales<'_>,
    biases: Option<Scales<'_>>,
    cols: usize,
    params: &MlxParams,
    precision: DequantPrecision,
    engine: Engine,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let rows = check_quantized(weight, &scales, biases.as_ref(), cols, params)?;
    if out.len() != rows * cols {
        return Err(KernelError::BadLength(format!(
            "the output holds {} values, the dequantized {rows} x {cols} matrix needs {}",
            out.len(),
            rows * cols
        )));
    }
    let wpr = params.words_per_row(cols);
    let gpr = params.groups_per_row(cols);
    weight
        .par_chunks(wpr)
        .zip(out.par_chunks_mut(cols))
        .with_min_len(rows_per_task(engine, cols))
        .enumerate()
        .for_each(|(r, (w, o))| {
            dequantize_row(
                w,
                &scales,
                biases.as_ref(),
                r * gpr,
                params,
                precision,
                engine,
                o,
            )
        });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn dequantize_row(
    words: &[u32],
    scales: &Scales<'_>,
    biases: Option<&Scales<'_>>,
    first_group: usize,
    params: &MlxParams,
    precision: DequantPrecision,
    engine: Engine,
    out: &mut [f32],
) {
    let gs = params.group_size;
    let bits = params.bits;
    let wpg = gs * bits as usize / 32;
    let mut q = [0u8; MAX_GROUP];
    for (g, (ws, o)) in words
        .chunks_exact(wpg)
        .zip(out.chunks_exact_mut(gs))
        .enumerate()
    {
        let q = &mut q[..gs];
        let gi = first_group + g;
        match (params.mode, biases) {
            (MlxMode::Affine, Some(b)) => {
                let (s, b) = (scales.get_f32(gi), b.get_f32(gi));
                if engine == Engine::Fast && precision == DequantPrecision::F32 {
                    match bits {
                        1 => affine::unpack_fast::<1>(ws, q),
                        2 => affine::unpack_fast::<2>(ws, q),
                        3 => affine::unpack_fast::<3>(ws, q),
                        4 => affine::unpack_fast::<4>(ws, q),
                        5 => affine::unpack_fast::<5>(ws, q),
                        6 => affine::unpack_fast::<6>(ws, q),
                        _ => affine::unpack_fast::<8>(ws, q),
                    }
                    for (o, &qi) in o.iter_mut().zip(q.iter()) {
                        *o = f32::from(qi) * s + b;
                    }
                } else {
                    affine::unpack_ref(ws, bits, q);
                    let sdtype = scales.dtype().unwrap_or(MlxDtype::F32);
                    affine::dequantize_group_ref(q, s, b, sdtype, precision, o);
                }
            }
            (mode, _) => {
                affine::unpack_ref(ws, bits, q);
                let code = match scales {
                    Scales::U8(v) => v[gi],
                    _ => unreachable!("validated: fp modes have u8 scales"),
                };
                fp::dequantize_group_ref(q, code, mode, params.global_scale, precision, o);
            }
        }
    }
}
