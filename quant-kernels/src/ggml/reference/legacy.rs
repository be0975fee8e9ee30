//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Each `quantize_row_*_ref` is ggml's function of the same name, each
//! `quantize_row_*_impl` the importance-weighted one that
//! `quantize_*(..., quant_weights)` runs per row, each `dequantize_row_*`
//! ggml's `to_float`.

use super::helpers::{cvtt, make_qkx3_quants, make_qx_quants, MinSearch};
use super::{check_lengths, check_weights};
use crate::float::{read_f16, write_f16};

const QK: usize = 32;

/// Index and value of the element of largest magnitude (first on ties; the
/// running maximum starts at 0 as in ggml).
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Row sum of squares over `n_per_row` and its mean, as the legacy `_impl`
/// functions compute it once per row.
#[inline]
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// `quantize_row_q4_0_ref`.
pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 18);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(18)) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = (cvtt(x0 + 8.5) as i8).min(15) as u8;
            let xi1 = (cvtt(x1 + 8.5) as i8).min(15) as u8;
            yb[2 + j] = xi0 | (xi1 << 4);
        }
    }
}

/// `quantize_row_q4_0_impl` (with importance weights).
pub fn quantize_row_q4_0_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK, 18);
    check_weights(x.len(), quant_weights.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK];
    let mut l = [0i8; QK];
    for ((xb, qw), yb) in x
        .chunks_exact(QK)
        .zip(quant_weights.chunks_exact(QK))
        .zip(y.chunks_exact_mut(18))
    {
        for j in 0..QK {
            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(8, xb, &mut l, 1, Some(&weight));
        write_f16(&mut yb[0..2], d);
        for j in 0..16 {
            yb[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize_row_q4_0(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 18);
    for (xb, yb) in x.chunks_exact(18).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        for j in 0..QK / 2 {
            let q = xb[2 + j];
            yb[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
            yb[j + QK / 2] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// `quantize_row_q4_1_ref`.
pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 20);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(20)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = (cvtt(x0 + 0.5) as i8).min(15) as u8;
            let xi1 = (cvtt(x1 + 0.5) as i8).min(15) as u8;
            yb[4 + j] = xi0 | (xi1 << 4);
        }
    }
}

const QKX3: MinSearch = MinSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// `quantize_row_q4_1_impl` (with importance weights).
pub fn quantize_row_q4_1_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK, 20);
    check_weights(x.len(), quant_weights.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK];
    let mut l = [0u8; QK];
    let mut laux = [0u8; QK];
    for ((xb, qw), yb) in x
        .chunks_exact(QK)
        .zip(quant_weights.chunks_exact(QK))
        .zip(y.chunks_exact_mut(20))
    {
        for j in 0..QK {
            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let (d, min) = make_qkx3_quants(15, xb, &weight, &mut l, &mut laux, QKX3);
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], -min);
        for j in 0..16 {
            yb[4 + j] = l[j] | (l[j + 16] << 4);
        }
    }
}

/// `dequantize_row_q4_1`.
pub fn dequantize_row_q4_1(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 20);
    for (xb, yb) in x.chunks_exact(20).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        let m = read_f16(&xb[2..4]);
        for j in 0..QK / 2 {
            let q = xb[4 + j];
            yb[j] = f32::from(q & 0x0F) * d + m;
            yb[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }
}

/// Packs 32 five-bit values: low nibbles as Q4_0 does, bit 4 of element j
/// into bit j of `qh`.
#[inline]
fn pack_q5(l: &[u8; QK], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = l[j];
        let xi1 = l[j + 16];
        qs_out[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
    }
    qh_out[..4].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_0_ref`.
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 22);
    let mut l = [0u8; QK];
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(22)) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        for j in 0..QK {
            l[j] = (cvtt(xb[j] * id + 16.5) as i8).min(31) as u8;
        }
        let (qh, qs) = yb[2..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

/// `quantize_row_q5_0_impl` (with importance weights).
pub fn quantize_row_q5_0_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK, 22);
    check_weights(x.len(), quant_weights.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK];
    let mut l = [0i8; QK];
    let mut lu = [0u8; QK];
    for ((xb, qw), yb) in x
        .chunks_exact(QK)
        .zip(quant_weights.chunks_exact(QK))
        .zip(y.chunks_exact_mut(22))
    {
        for j in 0..QK {
            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(16, xb, &mut l, 1, Some(&weight));
        write_f16(&mut yb[0..2], d);
        for j in 0..QK {
            lu[j] = l[j] as u8;
        }
        let (qh, qs) = yb[2..].split_at_mut(4);
        pack_q5(&lu, qh, qs);
    }
}

/// `dequantize_row_q5_0`.
pub fn dequantize_row_q5_0(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 22);
    for (xb, yb) in x.chunks_exact(22).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        let qh = u32::from_le_bytes([xb[2], xb[3], xb[4], xb[5]]);
        for j in 0..QK / 2 {
            let xh_0 = ((qh >> j) << 4) as u8 & 0x10;
            let xh_1 = (qh >> (j + 12)) as u8 & 0x10;
            let q = xb[6 + j];
            yb[j] = (i32::from((q & 0x0F) | xh_0) - 16) as f32 * d;
            yb[j + QK / 2] = (i32::from((q >> 4) | xh_1) - 16) as f32 * d;
        }
    }
}

/// `quantize_row_q5_1_ref`.
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 24);
    let mut l = [0u8; QK];
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(24)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], min);
        for j in 0..QK {
            // `(uint8_t)(x0 + 0.5f)`: no clamp in ggml.
            l[j] = cvtt((xb[j] - min) * id + 0.5) as u8;
        }
        let (qh, qs) = yb[4..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

/// `quantize_row_q5_1_impl` (with importance weights).
pub fn quantize_row_q5_1_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK, 24);
    check_weights(x.len(), quant_weights.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK];
    let mut l = [0u8; QK];
    let mut laux = [0u8; QK];
    for ((xb, qw), yb) in x
        .chunks_exact(QK)
        .zip(quant_weights.chunks_exact(QK))
        .zip(y.chunks_exact_mut(24))
    {
        for j in 0..QK {
            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let (d, min) = make_qkx3_quants(31, xb, &weight, &mut l, &mut laux, QKX3);
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], -min);
        let (qh, qs) = yb[4..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

/// `dequantize_row_q5_1`.
pub fn dequantize_row_q5_1(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 24);
    for (xb, yb) in x.chunks_exact(24).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        let m = read_f16(&xb[2..4]);
        let qh = u32::from_le_bytes([xb[4], xb[5], xb[6], xb[7]]);
        for j in 0..QK / 2 {
            let xh_0 = ((qh >> j) << 4) as u8 & 0x10;
            let xh_1 = (qh >> (j + 12)) as u8 & 0x10;
            let q = xb[8 + j];
            yb[j] = f32::from((q & 0x0F) | xh_0) * d + m;
            yb[j + QK / 2] = f32::from((q >> 4) | xh_1) * d + m;
        }
    }
}

/// `quantize_row_q8_0_ref` (Q8_0 ignores importance weights).
pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 34);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(34)) {
        let mut amax = 0.0f32;
        for &v in xb {
            // MAX(a, b) is `a > b ? a : b`.
            let av = v.abs();
            amax = if amax > av { amax } else { av };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        for j in 0..QK {
            yb[2 + j] = cvtt((xb[j] * id).round()) as u8;
        }
    }
}

/// `dequantize_row_q8_0`.
pub fn dequantize_row_q8_0(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 34);
    for (xb, yb) in x.chunks_exact(34).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        for j in 0..QK {
            yb[j] = f32::from(xb[2 + j] as i8) * d;
        }
    }
}

/// `quantize_row_q8_1_ref`: Q8_0 plus `s = d * sum(q)` as f16.
pub fn quantize_row_q8_1_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK, 36);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(36)) {
        let mut amax = 0.0f32;
        for &v in xb {
            let av = v.abs();
            amax = if amax > av { amax } else { av };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            let q0 = cvtt((xb[j] * id).round()) as i8;
            let q1 = cvtt((xb[QK / 2 + j] * id).round()) as i8;
            yb[4 + j] = q0 as u8;
            yb[4 + QK / 2 + j] = q1 as u8;
            sum += i32::from(q0) + i32::from(q1);
        }
        write_f16(&mut yb[2..4], sum as f32 * d);
    }
}

/// `dequantize_row_q8_1` (ggml has none; `d * q`, the sum is ignored).
pub fn dequantize_row_q8_1(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK, 36);
    for (xb, yb) in x.chunks_exact(36).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&xb[0..2]);
        for j in 0..QK {
            yb[j] = f32::from(xb[4 + j] as i8) * d;
        }
    }
}
