//! The 1-bit grid types IQ1_S and IQ1_M: super-blocks of 256 values in
//! groups of 8, each group a point of `iq1s_grid` (8 values in -1..=1)
//! shifted by ±`IQ1S_DELTA` (1/8) and scaled per sub-block by an odd
//! integer `2s+1` times the super-block scale. Both dot with Q8_K.
//!
//! IQ1_S: `d: f16 | qs[32] | qh: u16[8]`; `qh[ib]` holds the high 3 bits of
//! the sub-block's four grid indices (bits 0-11), its scale (12-14) and the
//! delta's sign (15).
//!
//! IQ1_M: `qs[32] | qh[16] | scales[8]`; each `qh` byte holds the high 3
//! bits of two grid indices and their deltas' signs (bits 3 and 7); the
//! four u16 scale words hold 3-bit scales for every 16 values (bits 0-11)
//! and the f16 super-block scale in their top nibbles.

use super::check_lengths;
use super::dot::{fma_lanes, hsum8, Q8K};
use super::fp4::mul_sign_i8;
use super::iq1_tables::IQ1S_GRID;
use crate::float::read_f16;

const QK_K: usize = 256;
const IQ1S: usize = 50;
const IQ1M: usize = 56;
/// ggml's `IQ1S_DELTA` (and `IQ1M_DELTA`, equal to it).
const IQ1_DELTA: f32 = 0.125;

/// Value `j` (0..8) of grid point `idx`.
#[inline(always)]
fn grid(idx: usize, j: usize) -> i8 {
    (IQ1S_GRID[idx] >> (8 * j)) as u8 as i8
}

#[inline(always)]
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}

/// IQ1_S: grid index of group `l` (0..4) of sub-block `ib`.
#[inline(always)]
fn iq1s_index(xb: &[u8], ib: usize, l: usize) -> usize {
    let qh = u16_at(&xb[34..50], ib);
    usize::from(xb[2 + 4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8)
}

/// IQ1_S: the odd integer scale of sub-block `ib`.
#[inline(always)]
fn iq1s_scale(xb: &[u8], ib: usize) -> i32 {
    2 * i32::from((u16_at(&xb[34..50], ib) >> 12) & 7) + 1
}

/// IQ1_S: whether sub-block `ib`'s delta is negative.
#[inline(always)]
fn iq1s_delta_negative(xb: &[u8], ib: usize) -> bool {
    u16_at(&xb[34..50], ib) & 0x8000 != 0
}

/// `dequantize_row_iq1_s`: `dl * (grid + delta)` with `dl = d * (2s+1)`.
pub fn dequantize_row_iq1_s(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ1S);
    for (xb, yb) in x.chunks_exact(IQ1S).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[0..2]);
        for (ib, ys) in yb.chunks_exact_mut(32).enumerate() {
            let dl = d * iq1s_scale(xb, ib) as f32;
            let delta = if iq1s_delta_negative(xb, ib) {
                -IQ1_DELTA
            } else {
                IQ1_DELTA
            };
            for (e, v) in ys.iter_mut().enumerate() {
                let g = grid(iq1s_index(xb, ib, e / 8), e % 8);
                *v = dl * (f32::from(g) + delta);
            }
        }
    }
}

/// `ggml_vec_dot_iq1_s_q8_K`: the grid part in eight lanes (value `e` of a
/// sub-block to lane `e / 4`, times the sub-block scale; products as
/// `mul_add_epi8` forms them), `fma(d, lanes, acc)` per block; the deltas
/// through the activation block sums, `sum(bsums) * ±(2s+1)` per
/// sub-block, into a scalar with an FMA (`vfmadd231ss` in the binary).
/// Result: `hsum(acc) + 1/8 * acc_delta` (multiply, then add).
#[inline(always)]
pub fn vec_dot_iq1_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_delta = 0f32;
    for (xb, yb) in w.chunks_exact(IQ1S).zip(a.chunks_exact(292)).take(n / QK_K) {
        let y = Q8K(yb);
        let q8 = y.qs();
        let mut lanes = [0i32; 8];
        let mut sumi_delta = 0i32;
        for ib in 0..8 {
            let ls = iq1s_scale(xb, ib);
            for e in 0..32 {
                let g = grid(iq1s_index(xb, ib, e / 8), e % 8);
                lanes[e / 4] += ls * mul_sign_i8(g, q8[32 * ib + e] as i8);
            }
            let sign = if iq1s_delta_negative(xb, ib) { -1 } else { 1 };
            sumi_delta += (y.bsum(2 * ib) + y.bsum(2 * ib + 1)) * sign * ls;
        }
        let d = y.d() * read_f16(&xb[0..2]);
        fma_lanes(&mut acc, d, &lanes);
        acc_delta = d.mul_add(sumi_delta as f32, acc_delta);
    }
    hsum8(&acc) + IQ1_DELTA * acc_delta
}

/// IQ1_M: the f16 super-block scale from the top nibbles of the four
/// scale words.
#[inline(always)]
pub(crate) fn iq1m_d(xb: &[u8]) -> f32 {
    let sc = &xb[48..56];
    let bits = (u16_at(sc, 0) >> 12)
        | ((u16_at(sc, 1) >> 8) & 0x00f0)
        | ((u16_at(sc, 2) >> 4) & 0x0f00)
        | (u16_at(sc, 3) & 0xf000);
    read_f16(&bits.to_le_bytes())
}

/// IQ1_M: the odd integer scale of half `h` (16 values) of sub-block `ib`.
#[inline(always)]
fn iq1m_scale(xb: &[u8], ib: usize, h: usize) -> i32 {
    let word = u16_at(&xb[48..56], ib / 2);
    2 * i32::from((word >> (6 * (ib % 2) + 3 * h)) & 7) + 1
}

/// IQ1_M: grid index of group `l` (0..4) of sub-block `ib`.
#[inline(always)]
fn iq1m_index(xb: &[u8], ib: usize, l: usize) -> usize {
    // Even groups take the byte's bits 0-2, odd ones bits 4-6.
    let qh = u16::from(xb[32 + 2 * ib + l / 2]);
    usize::from(xb[4 * ib + l]) | usize::from((qh << (8 - 4 * (l % 2))) & 0x700)
}

/// IQ1_M: whether group `l` of sub-block `ib` has a negative delta.
#[inline(always)]
fn iq1m_delta_negative(xb: &[u8], ib: usize, l: usize) -> bool {
    xb[32 + 2 * ib + l / 2] & (0x08 << (4 * (l % 2))) != 0
}

/// `dequantize_row_iq1_m`: `dl * (grid + delta)`, `dl = d * (2s+1)` per
/// 16 values, a delta sign per 8.
pub fn dequantize_row_iq1_m(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ1M);
    for (xb, yb) in x.chunks_exact(IQ1M).zip(y.chunks_exact_mut(QK_K)) {
        let d = iq1m_d(xb);
        for (ib, ys) in yb.chunks_exact_mut(32).enumerate() {
            let dl = [
                d * iq1m_scale(xb, ib, 0) as f32,
                d * iq1m_scale(xb, ib, 1) as f32,
            ];
            for (e, v) in ys.iter_mut().enumerate() {
                let l = e / 8;
                let delta = if iq1m_delta_negative(xb, ib, l) {
                    -IQ1_DELTA
                } else {
                    IQ1_DELTA
                };
                let g = grid(iq1m_index(xb, ib, l), e % 8);
                *v = dl[e / 16] * (f32::from(g) + delta);
            }
        }
    }
}

/// `ggml_vec_dot_iq1_m_q8_K`: two sets of eight lanes, the grid part
/// (`mul_add_epi8` products) and the delta part (the activations with the
/// delta's sign applied by `_mm256_sign_epi8`, which keeps -128), both
/// times the 16-value scales; `fma(d, lanes, acc)` per block for each.
/// Result: `fma(hsum(acc_delta), 1/8, hsum(acc))` (one `vfmadd132ss` in the
/// binary).
#[inline(always)]
pub fn vec_dot_iq1_m_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_delta = [0f32; 8];
    for (xb, yb) in w.chunks_exact(IQ1M).zip(a.chunks_exact(292)).take(n / QK_K) {
        let y = Q8K(yb);
        let q8 = y.qs();
        let mut lanes = [0i32; 8];
        let mut lanes_delta = [0i32; 8];
        for ib in 0..8 {
            let ls = [iq1m_scale(xb, ib, 0), iq1m_scale(xb, ib, 1)];
            for e in 0..32 {
                let (l, q) = (e / 8, q8[32 * ib + e] as i8);
                let g = grid(iq1m_index(xb, ib, l), e % 8);
                lanes[e / 4] += ls[e / 16] * mul_sign_i8(g, q);
                let signed = if iq1m_delta_negative(xb, ib, l) {
                    q.wrapping_neg()
                } else {
                    q
                };
                lanes_delta[e / 4] += ls[e / 16] * i32::from(signed);
            }
        }
        let d = y.d() * iq1m_d(xb);
        fma_lanes(&mut acc, d, &lanes);
        fma_lanes(&mut acc_delta, d, &lanes_delta);
    }
    hsum8(&acc_delta).mul_add(IQ1_DELTA, hsum8(&acc))
}
