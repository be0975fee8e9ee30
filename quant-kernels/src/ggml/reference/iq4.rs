//! The non-linear 4-bit types IQ4_NL (blocks of 32) and IQ4_XS (super-blocks
//! of 256 with 6-bit sub-block scales), both over ggml's `kvalues_iq4nl`.

use super::helpers::{best_index_int8, nearest_int, GROUP_MAX_EPS};
use super::{check_lengths, check_weights};
use crate::float::{read_f16, write_f16};

/// ggml's `kvalues_iq4nl`: the 16 levels of both IQ4 types.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const QK4_NL: usize = 32;
const QK_K: usize = 256;
const IQ4NL: usize = 18;
const IQ4XS: usize = 136;

/// `quantize_row_iq4_nl_impl` for one super-block of `x.len()` (32 for
/// IQ4_NL, 256 for IQ4_XS) values. `y` is the whole block: for IQ4_NL
/// `d | qs[16]`, for IQ4_XS `d | scales_h u16 | scales_l[4] | qs[128]`.
/// `l` carries the levels between calls, as the C caller's stack array does.
fn iq4_impl(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, ntry: i32, l: &mut [u8; QK_K]) {
    let sbs = x.len();
    let nblocks = sbs / 32;
    let values = &KVALUES_IQ4NL;
    let v0 = i32::from(values[0]);
    let mut scales = [0.0f32; QK_K / 32];
    let mut weight = [0.0f32; 32];

    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / sbs as f32;

    let (head, q4) = y.split_at_mut(if nblocks > 1 { 8 } else { 2 });
    q4.fill(0);
    write_f16(&mut head[0..2], 0.0);

    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..nblocks {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l[32 * ib..32 * ib + 32];
        match qw {
            Some(qw) => {
                let qw = &qw[32 * ib..32 * ib + 32];
                for j in 0..32 {
                    weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = if ntry > 0 {
            -max / v0 as f32
        } else {
            max / v0 as f32
        };
        let mut id = 1.0 / d;
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for j in 0..32 {
            let al = id * xb[j];
            let li = best_index_int8(values, al);
            lb[j] = li as u8;
            let q = f32::from(values[li]);
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + v0) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let al = id * xb[j];
                let li = best_index_int8(values, al);
                let q = f32::from(values[li]);
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if nblocks > 1 {
        let mut scales_h = 0u16;
        let d = -max_scale / 32.0;
        write_f16(&mut head[0..2], d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nblocks {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[32 * ib..32 * ib + 32];
            for j in 0..32 {
                l[32 * ib + j] = best_index_int8(values, idl * xb[j]) as u8;
            }
            let ls = (ls + 32) as u8;
            let l_l = ls & 0xf;
            let l_h = ls >> 4;
            if ib % 2 == 0 {
                head[4 + ib / 2] = l_l;
            } else {
                head[4 + ib / 2] |= l_l << 4;
            }
            scales_h |= u16::from(l_h) << (2 * (ib % 8));
        }
        head[2..4].copy_from_slice(&scales_h.to_le_bytes());
    } else {
        write_f16(&mut head[0..2], scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for j in 0..sbs {
                l[j] = best_index_int8(values, id * x[j]) as u8;
            }
        }
    }

    for i in 0..sbs / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// `quantize_iq4_nl` for one row: what `ggml_quantize_chunk` runs for
/// IQ4_NL, with or without importance weights (the search with ntry = 7).
pub fn quantize_row_iq4_nl_impl(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    check_lengths(x.len(), y.len(), QK4_NL, IQ4NL);
    if let Some(qw) = quant_weights {
        check_weights(x.len(), qw.len());
    }
    let mut l = [0u8; QK_K];
    for (ib, (xb, yb)) in x
        .chunks_exact(QK4_NL)
        .zip(y.chunks_exact_mut(IQ4NL))
        .enumerate()
    {
        let qw = quant_weights.map(|qw| &qw[QK4_NL * ib..QK4_NL * ib + QK4_NL]);
        iq4_impl(xb, yb, qw, 7, &mut l);
    }
}

/// `quantize_row_iq4_nl_ref`: the search with ntry = -1, which no ggml
/// quantizer of model files calls (`ggml_quantize_chunk` runs
/// [`quantize_row_iq4_nl_impl`]). For an all-zero block ggml leaves the
/// nibbles at whatever the previous block (or the uninitialized stack) left;
/// here they are the previous block's, or 0 for the first: d is 0 either
/// way, so the values are the same.
pub fn quantize_row_iq4_nl_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK4_NL, IQ4NL);
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK4_NL).zip(y.chunks_exact_mut(IQ4NL)) {
        iq4_impl(xb, yb, None, -1, &mut l);
    }
}

/// `dequantize_row_iq4_nl`.
pub fn dequantize_row_iq4_nl(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK4_NL, IQ4NL);
    for (xb, yb) in x.chunks_exact(IQ4NL).zip(y.chunks_exact_mut(QK4_NL)) {
        let d = read_f16(&xb[0..2]);
        for j in 0..16 {
            let q = xb[2 + j];
            yb[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xf)]);
            yb[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

/// `quantize_iq4_xs` for one row (ntry = 7, with or without importance
/// weights); `quantize_row_iq4_xs_ref` is the same function without them.
pub fn quantize_row_iq4_xs_impl(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    check_lengths(x.len(), y.len(), QK_K, IQ4XS);
    if let Some(qw) = quant_weights {
        check_weights(x.len(), qw.len());
    }
    let mut l = [0u8; QK_K];
    for (ib, (xb, yb)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(IQ4XS))
        .enumerate()
    {
        let qw = quant_weights.map(|qw| &qw[QK_K * ib..QK_K * ib + QK_K]);
        iq4_impl(xb, yb, qw, 7, &mut l);
    }
}

/// `dequantize_row_iq4_xs`.
pub fn dequantize_row_iq4_xs(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ4XS);
    for (xb, yb) in x.chunks_exact(IQ4XS).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[0..2]);
        let scales_h = u16::from_le_bytes([xb[2], xb[3]]);
        for ib in 0..8 {
            let ls = i32::from((xb[4 + ib / 2] >> (4 * (ib % 2))) & 0xf)
                | (i32::from((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &xb[8 + 16 * ib..8 + 16 * ib + 16];
            let out = &mut yb[32 * ib..32 * ib + 32];
            for j in 0..16 {
                out[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xf)]);
                out[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
            }
        }
    }
}
