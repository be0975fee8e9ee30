//! Scalar reference kernels: one function per ggml type and path, each a
//! transcription of the ggml C function of the same name (ggml-quants.c as
//! built into libggml-base), byte for byte. They are the definition every
//! fast path is tested against.
//!
//! Functions take whole rows (a multiple of the block size) of `f32` and
//! the matching bytes, and panic when the lengths do not fit; the checked
//! entry points are [`crate::ggml::quantize`] and [`crate::ggml::dequantize`].
//!
//! Float evaluation follows the binary: libggml-base is compiled without
//! `-march=native`, so its x86-64 code has no FMA (checked: no `vfmadd` in
//! libggml-base.so) and every expression rounds as written. Float-to-int
//! conversions use x86's `cvttss2si` semantics (see `cvtt`), which decide
//! the bytes for overflowing inputs (a subnormal block maximum makes
//! `1/d` infinite).

// Kernels index blocks the way the C they transcribe does.
#![allow(clippy::needless_range_loop)]

#[cfg(test)]
mod decode_tests;
mod dot;
mod fp4;
mod helpers;
mod iq1;
pub(crate) mod iq1_tables;
mod iq23;
pub(crate) mod iq23_tables;
mod iq4;
mod kquants;
mod legacy;
mod ternary;

pub use dot::{
    quantize_row_q8_0_act, quantize_row_q8_1_act, sgemm_dot, vec_dot_bf16, vec_dot_f16,
    vec_dot_f32, vec_dot_iq4_nl_q8_0, vec_dot_iq4_xs_q8_k, vec_dot_q2_k_q8_k, vec_dot_q3_k_q8_k,
    vec_dot_q4_0_q8_0, vec_dot_q4_1_q8_1, vec_dot_q4_k_q8_k, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1,
    vec_dot_q5_k_q8_k, vec_dot_q6_k_q8_k, vec_dot_q8_0_q8_0,
};
pub(crate) use fp4::mxfp4_last_block;
pub use fp4::{
    dequantize_row_mxfp4, dequantize_row_nvfp4, e8m0_to_f32_half, ue4m3_to_f32, vec_dot_mxfp4_q8_0,
    vec_dot_nvfp4_q8_0, KVALUES_FP4,
};
pub use iq1::{dequantize_row_iq1_m, dequantize_row_iq1_s, vec_dot_iq1_m_q8_k, vec_dot_iq1_s_q8_k};
pub use iq23::{
    dequantize_row_iq2_s, dequantize_row_iq2_xs, dequantize_row_iq2_xxs, dequantize_row_iq3_s,
    dequantize_row_iq3_xxs, vec_dot_iq2_s_q8_k, vec_dot_iq2_xs_q8_k, vec_dot_iq2_xxs_q8_k,
    vec_dot_iq3_s_q8_k, vec_dot_iq3_xxs_q8_k,
};
pub use iq4::{
    dequantize_row_iq4_nl, dequantize_row_iq4_xs, quantize_row_iq4_nl_impl,
    quantize_row_iq4_nl_ref, quantize_row_iq4_xs_impl, KVALUES_IQ4NL,
};
pub use kquants::{
    dequantize_row_q2_k, dequantize_row_q3_k, dequantize_row_q4_k, dequantize_row_q5_k,
    dequantize_row_q6_k, dequantize_row_q8_k, quantize_row_q2_k_impl, quantize_row_q2_k_ref,
    quantize_row_q3_k_impl, quantize_row_q3_k_ref, quantize_row_q4_k_impl, quantize_row_q4_k_ref,
    quantize_row_q5_k_impl, quantize_row_q5_k_ref, quantize_row_q6_k_impl, quantize_row_q6_k_ref,
    quantize_row_q8_k_ref,
};
pub use legacy::{
    dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q5_0, dequantize_row_q5_1,
    dequantize_row_q8_0, dequantize_row_q8_1, quantize_row_q4_0_impl, quantize_row_q4_0_ref,
    quantize_row_q4_1_impl, quantize_row_q4_1_ref, quantize_row_q5_0_impl, quantize_row_q5_0_ref,
    quantize_row_q5_1_impl, quantize_row_q5_1_ref, quantize_row_q8_0_ref, quantize_row_q8_1_ref,
};
pub use ternary::{
    dequantize_row_tq1_0, dequantize_row_tq2_0, vec_dot_tq1_0_q8_k, vec_dot_tq2_0_q8_k,
};

pub(crate) use dot::{
    iq4_nl_last_block, reduce_add_16, vec_dot_bf16_tail, vec_dot_f16_tail, vec_dot_f32_tail,
};
pub(crate) use helpers::{
    cvtt, get_scale_min_k4, make_q3_quants, nearest_int, put_scale_min_k4, MinSearch, GROUP_MAX_EPS,
};
pub(crate) use iq1::iq1m_d;
pub(crate) use iq23::ksigns;
pub(crate) use kquants::q3k_put_scale;

use crate::float::{bf16_to_f32, f32_to_bf16, f32_to_f16, read_f16};
use crate::{GgmlType, KernelError};

/// Panics unless `n_values` values of a type with `block` values per
/// `block_bytes` bytes fill exactly `n_bytes`.
#[track_caller]
fn check_lengths(n_values: usize, n_bytes: usize, block: usize, block_bytes: usize) {
    assert!(
        n_values.is_multiple_of(block) && n_values / block * block_bytes == n_bytes,
        "{n_values} values in blocks of {block} need {} bytes, got {n_bytes}",
        n_values / block * block_bytes
    );
}

#[track_caller]
fn check_weights(n_values: usize, n_weights: usize) {
    assert_eq!(
        n_values, n_weights,
        "importance weights must have one entry per value"
    );
}

/// F32 "quantization": the little-endian bytes.
pub fn quantize_row_f32(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), 1, 4);
    for (v, b) in x.iter().zip(y.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// F32 from its little-endian bytes.
pub fn dequantize_row_f32(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), 1, 4);
    for (b, v) in x.chunks_exact(4).zip(y.iter_mut()) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// `ggml_fp32_to_fp16_row`: round to nearest even.
pub fn quantize_row_f16(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), 1, 2);
    for (v, b) in x.iter().zip(y.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_f16(*v).to_bits().to_le_bytes());
    }
}

/// `ggml_fp16_to_fp32_row`.
pub fn dequantize_row_f16(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), 1, 2);
    for (b, v) in x.chunks_exact(2).zip(y.iter_mut()) {
        *v = read_f16(b);
    }
}

/// `ggml_fp32_to_bf16_row_ref` (what `ggml_quantize_chunk` runs; the CPU
/// backend's AVX512-BF16 row converter flushes subnormals instead).
pub fn quantize_row_bf16(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), 1, 2);
    for (v, b) in x.iter().zip(y.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(*v).to_bits().to_le_bytes());
    }
}

/// `ggml_bf16_to_fp32_row`.
pub fn dequantize_row_bf16(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), 1, 2);
    for (b, v) in x.chunks_exact(2).zip(y.iter_mut()) {
        *v = bf16_to_f32(half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])));
    }
}

/// One row through the path `ggml_quantize_chunk` takes for `ty`: the
/// `_ref` function without importance weights, the `_impl` one with them
/// (IQ4_NL and IQ4_XS always run the `_impl` search with ntry = 7; Q8_0,
/// F32, F16 and BF16 ignore the weights).
///
/// `imatrix` has one weight per value of the row. Panics on lengths that do
/// not fit; returns `Unsupported` for types without a quantizer here.
pub fn quantize_row(
    ty: GgmlType,
    x: &[f32],
    y: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), KernelError> {
    use GgmlType as T;
    match (ty, imatrix) {
        (T::F32, _) => quantize_row_f32(x, y),
        (T::F16, _) => quantize_row_f16(x, y),
        (T::BF16, _) => quantize_row_bf16(x, y),
        (T::Q8_0, _) => quantize_row_q8_0_ref(x, y),
        (T::IQ4NL, w) => quantize_row_iq4_nl_impl(x, y, w),
        (T::IQ4XS, w) => quantize_row_iq4_xs_impl(x, y, w),
        (T::Q4_0, None) => quantize_row_q4_0_ref(x, y),
        (T::Q4_0, Some(w)) => quantize_row_q4_0_impl(x, y, w),
        (T::Q4_1, None) => quantize_row_q4_1_ref(x, y),
        (T::Q4_1, Some(w)) => quantize_row_q4_1_impl(x, y, w),
        (T::Q5_0, None) => quantize_row_q5_0_ref(x, y),
        (T::Q5_0, Some(w)) => quantize_row_q5_0_impl(x, y, w),
        (T::Q5_1, None) => quantize_row_q5_1_ref(x, y),
        (T::Q5_1, Some(w)) => quantize_row_q5_1_impl(x, y, w),
        (T::Q2K, None) => quantize_row_q2_k_ref(x, y),
        (T::Q2K, Some(w)) => quantize_row_q2_k_impl(x, y, w),
        (T::Q3K, None) => quantize_row_q3_k_ref(x, y),
        (T::Q3K, Some(w)) => quantize_row_q3_k_impl(x, y, w),
        (T::Q4K, None) => quantize_row_q4_k_ref(x, y),
        (T::Q4K, Some(w)) => quantize_row_q4_k_impl(x, y, w),
        (T::Q5K, None) => quantize_row_q5_k_ref(x, y),
        (T::Q5K, Some(w)) => quantize_row_q5_k_impl(x, y, w),
        (T::Q6K, None) => quantize_row_q6_k_ref(x, y),
        (T::Q6K, Some(w)) => quantize_row_q6_k_impl(x, y, w),
        // Activation types: ggml's reference quantizers (no imatrix path).
        (T::Q8_1, _) => quantize_row_q8_1_ref(x, y),
        (T::Q8K, _) => quantize_row_q8_k_ref(x, y),
        _ => return Err(KernelError::Unsupported(format!("quantizing to {ty}"))),
    }
    Ok(())
}

/// One row through ggml's `to_float` for `ty`. Panics on lengths that do
/// not fit; returns `Unsupported` for types without a kernel here.
pub fn dequantize_row(ty: GgmlType, x: &[u8], y: &mut [f32]) -> Result<(), KernelError> {
    use GgmlType as T;
    match ty {
        T::F32 => dequantize_row_f32(x, y),
        T::F16 => dequantize_row_f16(x, y),
        T::BF16 => dequantize_row_bf16(x, y),
        T::Q4_0 => dequantize_row_q4_0(x, y),
        T::Q4_1 => dequantize_row_q4_1(x, y),
        T::Q5_0 => dequantize_row_q5_0(x, y),
        T::Q5_1 => dequantize_row_q5_1(x, y),
        T::Q8_0 => dequantize_row_q8_0(x, y),
        T::Q8_1 => dequantize_row_q8_1(x, y),
        T::Q2K => dequantize_row_q2_k(x, y),
        T::Q3K => dequantize_row_q3_k(x, y),
        T::Q4K => dequantize_row_q4_k(x, y),
        T::Q5K => dequantize_row_q5_k(x, y),
        T::Q6K => dequantize_row_q6_k(x, y),
        T::Q8K => dequantize_row_q8_k(x, y),
        T::IQ4NL => dequantize_row_iq4_nl(x, y),
        T::IQ4XS => dequantize_row_iq4_xs(x, y),
        T::IQ2XXS => dequantize_row_iq2_xxs(x, y),
        T::IQ2XS => dequantize_row_iq2_xs(x, y),
        T::IQ2S => dequantize_row_iq2_s(x, y),
        T::IQ3XXS => dequantize_row_iq3_xxs(x, y),
        T::IQ3S => dequantize_row_iq3_s(x, y),
        T::MXFP4 => dequantize_row_mxfp4(x, y),
        T::NVFP4 => dequantize_row_nvfp4(x, y),
        T::IQ1S => dequantize_row_iq1_s(x, y),
        T::IQ1M => dequantize_row_iq1_m(x, y),
        T::TQ1_0 => dequantize_row_tq1_0(x, y),
        T::TQ2_0 => dequantize_row_tq2_0(x, y),
        _ => return Err(KernelError::Unsupported(format!("dequantizing {ty}"))),
    }
    Ok(())
}

/// The activation type ggml's CPU backend pairs with weights of `ty` in
/// dot products (`type_traits_cpu[ty].vec_dot_type`).
pub fn vec_dot_type(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => T::F32,
        T::F16 => T::F16,
        T::BF16 => T::BF16,
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4NL => T::Q8_0,
        T::MXFP4 | T::NVFP4 => T::Q8_0,
        T::IQ1S | T::IQ1M | T::TQ1_0 | T::TQ2_0 => T::Q8K,
        T::Q4_1 | T::Q5_1 => T::Q8_1,
        T::Q2K | T::Q3K | T::Q4K | T::Q5K | T::Q6K | T::IQ4XS => T::Q8K,
        T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ3XXS | T::IQ3S => T::Q8K,
        _ => return None,
    })
}

/// One row of activations quantized to `vdt` as the CPU backend's
/// `from_float` does (the x86 SIMD rounding for Q8_0/Q8_1, the reference
/// for Q8_K, F16 and BF16 round to nearest even, F32 copies).
pub fn quantize_activations_row(vdt: GgmlType, x: &[f32], y: &mut [u8]) -> Result<(), KernelError> {
    use GgmlType as T;
    match vdt {
        T::Q8_0 => quantize_row_q8_0_act(x, y),
        T::Q8_1 => quantize_row_q8_1_act(x, y),
        T::Q8K => quantize_row_q8_k_ref(x, y),
        T::F16 => quantize_row_f16(x, y),
        T::BF16 => quantize_row_bf16(x, y),
        T::F32 => quantize_row_f32(x, y),
        _ => return Err(KernelError::Unsupported(format!("{vdt} activations"))),
    }
    Ok(())
}

/// ggml's CPU `vec_dot` for weights of `ty` against activations of
/// `vec_dot_type(ty)`, both `n` values long (see `dot` for the arithmetic).
/// Panics if the rows are shorter than `n` values.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Result<f32, KernelError> {
    use GgmlType as T;
    Ok(match ty {
        T::F32 => vec_dot_f32(n, w, a),
        T::F16 => vec_dot_f16(n, w, a),
        T::BF16 => vec_dot_bf16(n, w, a),
        T::Q4_0 => vec_dot_q4_0_q8_0(n, w, a),
        T::Q4_1 => vec_dot_q4_1_q8_1(n, w, a),
        T::Q5_0 => vec_dot_q5_0_q8_0(n, w, a),
        T::Q5_1 => vec_dot_q5_1_q8_1(n, w, a),
        T::Q8_0 => vec_dot_q8_0_q8_0(n, w, a),
        T::Q2K => vec_dot_q2_k_q8_k(n, w, a),
        T::Q3K => vec_dot_q3_k_q8_k(n, w, a),
        T::Q4K => vec_dot_q4_k_q8_k(n, w, a),
        T::Q5K => vec_dot_q5_k_q8_k(n, w, a),
        T::Q6K => vec_dot_q6_k_q8_k(n, w, a),
        T::IQ4NL => vec_dot_iq4_nl_q8_0(n, w, a),
        T::IQ4XS => vec_dot_iq4_xs_q8_k(n, w, a),
        T::IQ2XXS => vec_dot_iq2_xxs_q8_k(n, w, a),
        T::IQ2XS => vec_dot_iq2_xs_q8_k(n, w, a),
        T::IQ2S => vec_dot_iq2_s_q8_k(n, w, a),
        T::IQ3XXS => vec_dot_iq3_xxs_q8_k(n, w, a),
        T::IQ3S => vec_dot_iq3_s_q8_k(n, w, a),
        T::MXFP4 => vec_dot_mxfp4_q8_0(n, w, a),
        T::NVFP4 => vec_dot_nvfp4_q8_0(n, w, a),
        T::IQ1S => vec_dot_iq1_s_q8_k(n, w, a),
        T::IQ1M => vec_dot_iq1_m_q8_k(n, w, a),
        T::TQ1_0 => vec_dot_tq1_0_q8_k(n, w, a),
        T::TQ2_0 => vec_dot_tq2_0_q8_k(n, w, a),
        _ => return Err(KernelError::Unsupported(format!("dot products of {ty}"))),
    })
}
