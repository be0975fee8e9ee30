//! The ternary types TQ1_0 and TQ2_0 (BitNet b1.58 style): super-blocks of
//! 256 values in {-1, 0, 1} times an f16 scale. Both dot with Q8_K.
//!
//! TQ1_0: `qs[48] | qh[4] | d: f16`. Each `qs` byte packs 5 trits and each
//! `qh` byte 4, as a fixed-point fraction: trit `n` of byte `b` is the top
//! of `3 * (b * 3^n mod 256)`. Values 0-159 are trits 0-4 of `qs[0..32]`
//! (trit-major), 160-239 trits 0-4 of `qs[32..48]`, 240-255 trits 0-3 of
//! `qh`.
//!
//! TQ2_0: `qs[64] | d: f16`, 2 bits per value: value `128j + 32l + m` is
//! bits `2l..2l+2` of `qs[32j + m]`, stored as value + 1.

use super::check_lengths;
use super::dot::{hsum8, Q8K};
use crate::float::read_f16;

const QK_K: usize = 256;
const TQ1_0: usize = 54;
const TQ2_0: usize = 66;

/// TQ1_0: the byte holding value `e` and that byte's multiplier `3^n`.
#[inline(always)]
fn tq1_byte(xb: &[u8], e: usize) -> (u8, u8) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let (byte, n) = match e {
        0..160 => (xb[e % 32], e / 32),
        160..240 => (xb[32 + (e - 160) % 16], (e - 160) / 16),
        _ => (xb[48 + (e - 240) % 4], (e - 240) / 4),
    };
    (byte, POW3[n])
}

/// The trit of a shifted byte `q = b * 3^n mod 256` as
/// `dequantize_row_tq1_0` takes it: `(3q) >> 8`.
#[inline(always)]
pub(super) fn trit_dequant(q: u8) -> u8 {
    ((u16::from(q) * 3) >> 8) as u8
}

/// The trit as the AVX2 kernel takes it: `subs_epu8(q, 1)`, then
/// `avg(q', avg(q', 0))` (about `1.5 q'`), then the top two bits. Equal to
/// [`trit_dequant`] for every byte (a unit test checks all 256).
#[inline(always)]
pub(super) fn trit_avx2(q: u8) -> u8 {
    let q = u16::from(q.saturating_sub(1));
    let half = (q + 1) >> 1;
    (((q + half + 1) >> 1) >> 6) as u8
}

/// `dequantize_row_tq1_0`.
pub fn dequantize_row_tq1_0(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, TQ1_0);
    for (xb, yb) in x.chunks_exact(TQ1_0).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[52..54]);
        for (e, v) in yb.iter_mut().enumerate() {
            let (b, p) = tq1_byte(xb, e);
            *v = f32::from(i16::from(trit_dequant(b.wrapping_mul(p))) - 1) * d;
        }
    }
}

/// TQ2_0: the stored 2-bit code (0..=3, 3 unused) of value `e`.
#[inline(always)]
fn tq2_code(xb: &[u8], e: usize) -> u8 {
    let (j, l, m) = (e / 128, (e % 128) / 32, e % 32);
    (xb[32 * j + m] >> (2 * l)) & 3
}

/// `dequantize_row_tq2_0`.
pub fn dequantize_row_tq2_0(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, TQ2_0);
    for (xb, yb) in x.chunks_exact(TQ2_0).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[64..66]);
        for (e, v) in yb.iter_mut().enumerate() {
            *v = f32::from(i16::from(tq2_code(xb, e)) - 1) * d;
        }
    }
}

/// The AVX2 ternary kernels' integer part: the unsigned codes (value + 1)
/// times the activations, pairs summed by `maddubs` (codes of at most 3
/// never saturate) into sixteen i16 lanes (positions `2l, 2l+1` of every
/// 32-value chunk to lane `l`), the block sums subtracted (`bsums[l]` from
/// lane `l`), all in wrapping i16 arithmetic; then `madd(.., 1)` widens
/// pairs of i16 lanes to eight i32 lanes.
#[inline(always)]
fn ternary_lanes(codes: &[u8; QK_K], y: &Q8K) -> [i32; 8] {
    let q8 = y.qs();
    let mut s16 = [0i16; 16];
    for (e, &c) in codes.iter().enumerate() {
        let l = (e % 32) / 2;
        s16[l] = s16[l].wrapping_add((i32::from(c) * i32::from(q8[e] as i8)) as i16);
    }
    for (l, s) in s16.iter_mut().enumerate() {
        *s = s.wrapping_sub(y.bsum(l) as i16);
    }
    let mut lanes = [0i32; 8];
    for (k, v) in lanes.iter_mut().enumerate() {
        *v = i32::from(s16[2 * k]) + i32::from(s16[2 * k + 1]);
    }
    lanes
}

/// Shared float part of the ternary dot products: per block
/// `acc = fma(lanes, d, acc)` (`_mm256_add_ps(_mm256_mul_ps(..))`, which
/// GCC contracts: `vfmadd231ps` in libggml-cpu.so), `d = d_act * d_w`.
#[inline(always)]
fn ternary_dot(
    n: usize,
    w: &[u8],
    wb: usize,
    a: &[u8],
    codes: impl Fn(&[u8]) -> [u8; QK_K],
) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(wb).zip(a.chunks_exact(292)).take(n / QK_K) {
        let y = Q8K(yb);
        let lanes = ternary_lanes(&codes(xb), &y);
        let d = y.d() * read_f16(&xb[wb - 2..wb]);
        for k in 0..8 {
            acc[k] = (lanes[k] as f32).mul_add(d, acc[k]);
        }
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_tq1_0_q8_K`.
#[inline(always)]
pub fn vec_dot_tq1_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    ternary_dot(n, w, TQ1_0, a, |xb| {
        let mut c = [0u8; QK_K];
        for (e, c) in c.iter_mut().enumerate() {
            let (b, p) = tq1_byte(xb, e);
            *c = trit_avx2(b.wrapping_mul(p));
        }
        c
    })
}

/// `ggml_vec_dot_tq2_0_q8_K`.
#[inline(always)]
pub fn vec_dot_tq2_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    ternary_dot(n, w, TQ2_0, a, |xb| {
        let mut c = [0u8; QK_K];
        for (e, c) in c.iter_mut().enumerate() {
            *c = tq2_code(xb, e);
        }
        c
    })
}
