//! Activation quantizers and quantized dot products as ggml's x86-64 CPU
//! backend computes them (ggml-cpu/arch/x86/quants.c, AVX2 paths, built
//! with `-march=native`).
//!
//! The activation quantizers are the backend's SIMD `from_float`, which
//! differ from the `_ref` ones: Q8_0/Q8_1 scale by `127/amax` and round
//! half to even (`_mm256_round_ps`), saturate through `packs`; Q8_K is the
//! reference quantizer.
//!
//! The dot products follow the AVX2 kernels' arithmetic exactly: the
//! integer products are summed per 32-bit lane (lane k of a 32-value chunk
//! holds values 4k..4k+3; integers are exact in any order), each block
//! adds `fma(d, lane, acc)` to eight f32 accumulators, and
//! `hsum_float_8` folds them as `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
//! The scalar `summs += m*s` of Q4_1/Q5_1/Q5_K is an FMA in the binary
//! (GCC contracts it under `-march=native`; checked in libggml-cpu.so's
//! disassembly: `vfmadd231ss`), and so it is here.

use super::iq4::KVALUES_IQ4NL;
use crate::float::{read_f16, write_f16};
use crate::GgmlType;

/// x86 `cvtps2dq` after rounding: the nearest integer (ties to even), or
/// `i32::MIN` ("integer indefinite") for NaN and out-of-range values.
#[inline(always)]
fn cvt_rne(v: f32) -> i32 {
    let r = v.round_ties_even();
    if (-2_147_483_648.0..2_147_483_648.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// `packs_epi32` then `packs_epi16`: signed saturation to i8.
#[inline(always)]
fn sat_i8(v: i32) -> i8 {
    v.clamp(-32768, 32767).clamp(-128, 127) as i8
}

/// The x86 backend's `quantize_row_q8_0` (activations for Q4_0, Q5_0,
/// Q8_0 and IQ4_NL weights).
pub fn quantize_row_q8_0_act(x: &[f32], y: &mut [u8]) {
    assert!(x.len().is_multiple_of(32) && y.len() == x.len() / 32 * 34);
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        write_f16(&mut yb[0..2], d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for j in 0..32 {
            yb[2 + j] = sat_i8(cvt_rne(xb[j] * id)) as u8;
        }
    }
}

/// The x86 backend's `quantize_row_q8_1` (activations for Q4_1 and Q5_1):
/// Q8_0's rounding plus `s = d * sum(q)`, the sum taken over the 32-bit
/// values before saturation (wrapping, as `_mm256_add_epi32` does).
pub fn quantize_row_q8_1_act(x: &[f32], y: &mut [u8]) {
    assert!(x.len().is_multiple_of(32) && y.len() == x.len() / 32 * 36);
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(36)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        write_f16(&mut yb[0..2], d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for j in 0..32 {
            let v = cvt_rne(xb[j] * id);
            sum = sum.wrapping_add(v);
            yb[4 + j] = sat_i8(v) as u8;
        }
        write_f16(&mut yb[2..4], d * sum as f32);
    }
}

/// `hsum_float_8`.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Adds `fma(d, lanes[k], acc[k])` for the eight lanes.
#[inline(always)]
pub(super) fn fma_lanes(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for k in 0..8 {
        acc[k] = d.mul_add(lanes[k] as f32, acc[k]);
    }
}

/// Integer products of 32 values summed per lane (value b to lane b/4).
#[inline(always)]
fn lane_dot(a: &[i32; 32], b: &[i8]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for i in 0..32 {
        l[i / 4] += a[i] * i32::from(b[i]);
    }
    l
}

/// The 32 activation values of a Q8_0/Q8_1 block as i8.
#[inline(always)]
pub(super) fn q8(b: &[u8]) -> [i8; 32] {
    let mut q = [0i8; 32];
    for i in 0..32 {
        q[i] = b[i] as i8;
    }
    q
}

/// Value `e` of a 32-value block of 4-bit codes stored as Q4_0 stores them.
#[inline(always)]
fn nibble(qs: &[u8], e: usize) -> u8 {
    if e < 16 {
        qs[e] & 0xF
    } else {
        qs[e - 16] >> 4
    }
}

/// `ggml_vec_dot_q4_0_q8_0`, `_q5_0_q8_0`, `_q8_0_q8_0`, `_iq4_nl_q8_0`
/// share this shape: per block `fma(dx*dy, lanes, acc)`.
#[inline(always)]
fn dot_q8_0_family(
    n: usize,
    w: &[u8],
    wb: usize,
    a: &[u8],
    values: impl Fn(&[u8]) -> [i32; 32],
) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(wb).zip(a.chunks_exact(34)).take(n / 32) {
        let d = read_f16(&xb[0..2]) * read_f16(&yb[0..2]);
        let lanes = lane_dot(&values(xb), &q8(&yb[2..34]));
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_q4_0_q8_0`.
#[inline(always)]
pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q8_0_family(n, w, 18, a, |xb| {
        let mut v = [0i32; 32];
        for (e, v) in v.iter_mut().enumerate() {
            *v = i32::from(nibble(&xb[2..18], e)) - 8;
        }
        v
    })
}

/// `ggml_vec_dot_q5_0_q8_0`.
#[inline(always)]
pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q8_0_family(n, w, 22, a, |xb| {
        let qh = u32::from_le_bytes([xb[2], xb[3], xb[4], xb[5]]);
        let mut v = [0i32; 32];
        for (e, v) in v.iter_mut().enumerate() {
            let hi = ((qh >> e) & 1) << 4;
            *v = (u32::from(nibble(&xb[6..22], e)) | hi) as i32 - 16;
        }
        v
    })
}

/// `ggml_vec_dot_q8_0_q8_0`.
#[inline(always)]
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q8_0_family(n, w, 34, a, |xb| {
        let mut v = [0i32; 32];
        for (e, v) in v.iter_mut().enumerate() {
            *v = i32::from(xb[2 + e] as i8);
        }
        v
    })
}

#[inline(always)]
fn iq4nl_values(xb: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    for (e, v) in v.iter_mut().enumerate() {
        *v = i32::from(KVALUES_IQ4NL[usize::from(nibble(&xb[2..18], e))]);
    }
    v
}

/// `ggml_vec_dot_iq4_nl_q8_0`: pairs of blocks into two accumulators,
/// summed lane-wise before the fold; an odd last block is added in scalar
/// (`sumf += d * sumi`, no FMA).
#[inline(always)]
pub fn vec_dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let mut acc1 = [0f32; 8];
    let mut acc2 = [0f32; 8];
    let block = |ib: usize| {
        let xb = &w[18 * ib..18 * ib + 18];
        let yb = &a[34 * ib..34 * ib + 34];
        let d = read_f16(&yb[0..2]) * read_f16(&xb[0..2]);
        (d, lane_dot(&iq4nl_values(xb), &q8(&yb[2..34])))
    };
    let mut ib = 0;
    while ib + 1 < nb {
        let (d1, l1) = block(ib);
        let (d2, l2) = block(ib + 1);
        fma_lanes(&mut acc1, d1, &l1);
        fma_lanes(&mut acc2, d2, &l2);
        ib += 2;
    }
    let mut sum = [0f32; 8];
    for k in 0..8 {
        sum[k] = acc1[k] + acc2[k];
    }
    let mut sumf = hsum8(&sum);
    if ib < nb {
        sumf += iq4_nl_last_block(&w[18 * ib..18 * ib + 18], &a[34 * ib..34 * ib + 34]);
    }
    sumf
}

/// The odd last block of [`vec_dot_iq4_nl_q8_0`] as it is added: `d *
/// sumi`, `d` the activation's scale times the weight's, `sumi` the
/// block's integer dot product (one IQ4_NL and one Q8_0 block).
#[inline(always)]
pub(crate) fn iq4_nl_last_block(xb: &[u8], yb: &[u8]) -> f32 {
    let d = read_f16(&yb[0..2]) * read_f16(&xb[0..2]);
    let sumi: i32 = lane_dot(&iq4nl_values(xb), &q8(&yb[2..34])).iter().sum();
    d * sumi as f32
}

/// `ggml_vec_dot_q4_1_q8_1` and `_q5_1_q8_1`: `fma(dx*dy, lanes, acc)` and
/// `summs = fma(m, s, summs)`.
#[inline(always)]
fn dot_q8_1_family(
    n: usize,
    w: &[u8],
    wb: usize,
    a: &[u8],
    values: impl Fn(&[u8]) -> [i32; 32],
) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (xb, yb) in w.chunks_exact(wb).zip(a.chunks_exact(36)).take(n / 32) {
        let d = read_f16(&xb[0..2]) * read_f16(&yb[0..2]);
        summs = read_f16(&xb[2..4]).mul_add(read_f16(&yb[2..4]), summs);
        let lanes = lane_dot(&values(xb), &q8(&yb[4..36]));
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc) + summs
}

/// `ggml_vec_dot_q4_1_q8_1`.
#[inline(always)]
pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q8_1_family(n, w, 20, a, |xb| {
        let mut v = [0i32; 32];
        for (e, v) in v.iter_mut().enumerate() {
            *v = i32::from(nibble(&xb[4..20], e));
        }
        v
    })
}

/// `ggml_vec_dot_q5_1_q8_1`.
#[inline(always)]
pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q8_1_family(n, w, 24, a, |xb| {
        let qh = u32::from_le_bytes([xb[4], xb[5], xb[6], xb[7]]);
        let mut v = [0i32; 32];
        for (e, v) in v.iter_mut().enumerate() {
            *v = (u32::from(nibble(&xb[8..24], e)) | (((qh >> e) & 1) << 4)) as i32;
        }
        v
    })
}

/// A Q8_K block: d, the 256 values, the 16 sums.
pub(super) struct Q8K<'a>(pub(super) &'a [u8]);

impl Q8K<'_> {
    pub(super) fn d(&self) -> f32 {
        f32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
    pub(super) fn qs(&self) -> &[u8] {
        &self.0[4..260]
    }
    pub(super) fn bsum(&self, j: usize) -> i32 {
        i32::from(i16::from_le_bytes([
            self.0[260 + 2 * j],
            self.0[261 + 2 * j],
        ]))
    }
}

/// Lane sums over a super-block: `scaled[e]` is the weight's integer
/// value times its integer sub-block scale.
#[inline(always)]
pub(super) fn lanes_256(scaled: &[i32; 256], q8: &[u8]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for e in 0..256 {
        l[(e % 32) / 4] += scaled[e] * i32::from(q8[e] as i8);
    }
    l
}

/// `ggml_vec_dot_q2_K_q8_K`.
#[inline(always)]
pub fn vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(84).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = y.d() * read_f16(&xb[80..82]);
        let dmin = -y.d() * read_f16(&xb[82..84]);
        let sc = &xb[0..16];
        let mut prod = [0i32; 8];
        for k in 0..8 {
            prod[k] = i32::from(sc[2 * k] >> 4) * y.bsum(2 * k)
                + i32::from(sc[2 * k + 1] >> 4) * y.bsum(2 * k + 1);
        }
        fma_lanes(&mut acc, dmin, &prod);
        let mut scaled = [0i32; 256];
        for (e, s) in scaled.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let (shift, b) = (2 * (r / 32), r % 32);
            let q = (xb[16 + 32 * half + b] >> shift) & 3;
            *s = i32::from(q) * i32::from(sc[e / 16] & 0xF);
        }
        fma_lanes(&mut acc, d, &lanes_256(&scaled, y.qs()));
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_q3_K_q8_K`.
#[inline(always)]
pub fn vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(110).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = y.d() * read_f16(&xb[108..110]);
        let s = &xb[96..108];
        let mut scaled = [0i32; 256];
        for (e, v) in scaled.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let (shift, b) = (2 * (r / 32), r % 32);
            let lo = i32::from((xb[32 + 32 * half + b] >> shift) & 3);
            let hbit = xb[b] & (1 << (4 * half + r / 32)) != 0;
            let j = e / 16;
            let code = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
            let sc = i32::from(code | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            *v = (lo - if hbit { 0 } else { 4 }) * sc;
        }
        fma_lanes(&mut acc, d, &lanes_256(&scaled, y.qs()));
    }
    hsum8(&acc)
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block.
#[inline(always)]
fn k4_scales_mins(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let mut sc = [0i32; 8];
    let mut m = [0i32; 8];
    for j in 0..8 {
        let (a, b) = super::helpers::get_scale_min_k4(j, s);
        sc[j] = i32::from(a);
        m[j] = i32::from(b);
    }
    (sc, m)
}

/// The four 32-bit lanes of the Q4_K/Q5_K min correction:
/// `madd(mins, hadd(bsums))`.
#[inline(always)]
fn k4_min_lanes(m: &[i32; 8], y: &Q8K) -> [i32; 4] {
    let mut q8s = [0i32; 8];
    for (i, s) in q8s.iter_mut().enumerate() {
        *s = y.bsum(2 * i) + y.bsum(2 * i + 1);
    }
    let mut p = [0i32; 4];
    for (k, p) in p.iter_mut().enumerate() {
        *p = m[2 * k] * q8s[2 * k] + m[2 * k + 1] * q8s[2 * k + 1];
    }
    p
}

/// `ggml_vec_dot_q4_K_q8_K`: mins in a 4-lane accumulator folded as
/// `(m0+m2)+(m1+m3)`, added after the 8-lane fold.
#[inline(always)]
pub fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (xb, yb) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = y.d() * read_f16(&xb[0..2]);
        let dmin = -y.d() * read_f16(&xb[2..4]);
        let (sc, m) = k4_scales_mins(&xb[4..16]);
        let prod = k4_min_lanes(&m, &y);
        for k in 0..4 {
            acc_m[k] = dmin.mul_add(prod[k] as f32, acc_m[k]);
        }
        let mut scaled = [0i32; 256];
        for (e, v) in scaled.iter_mut().enumerate() {
            let (chunk, b) = (e / 64, e % 64);
            let q = xb[16 + 32 * chunk + b % 32];
            let q = if b < 32 { q & 0xF } else { q >> 4 };
            *v = i32::from(q) * sc[e / 32];
        }
        fma_lanes(&mut acc, d, &lanes_256(&scaled, y.qs()));
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `ggml_vec_dot_q5_K_q8_K`: the mins summed in integers per block and
/// added to a scalar with an FMA.
#[inline(always)]
pub fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (xb, yb) in w.chunks_exact(176).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = y.d() * read_f16(&xb[0..2]);
        let dmin = -y.d() * read_f16(&xb[2..4]);
        let (sc, m) = k4_scales_mins(&xb[4..16]);
        let p = k4_min_lanes(&m, &y);
        summs = dmin.mul_add(((p[0] + p[1]) + (p[2] + p[3])) as f32, summs);
        let qh = &xb[16..48];
        let mut scaled = [0i32; 256];
        for (e, v) in scaled.iter_mut().enumerate() {
            let (chunk, b) = (e / 64, e % 64);
            let q = xb[48 + 32 * chunk + b % 32];
            let lo = if b < 32 { q & 0xF } else { q >> 4 };
            let hi = (qh[b % 32] >> (2 * chunk + b / 32)) & 1;
            *v = i32::from(lo | (hi << 4)) * sc[e / 32];
        }
        fma_lanes(&mut acc, d, &lanes_256(&scaled, y.qs()));
    }
    hsum8(&acc) + summs
}

/// `ggml_vec_dot_q6_K_q8_K`: unsigned 6-bit values, the -32 offset taken
/// off per lane as `32 * (sc[2k]*bsum[2k] + sc[2k+1]*bsum[2k+1])`.
#[inline(always)]
pub fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = y.d() * read_f16(&xb[208..210]);
        let sc = |j: usize| i32::from(xb[192 + j] as i8);
        let mut scaled = [0i32; 256];
        for (e, v) in scaled.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let (quarter, l) = (r / 32, r % 32);
            let ql = xb[64 * half + l + 32 * (quarter % 2)];
            let lo = if quarter < 2 { ql & 0xF } else { ql >> 4 };
            let hi = (xb[128 + 32 * half + l] >> (2 * quarter)) & 3;
            *v = i32::from(lo | (hi << 4)) * sc(e / 16);
        }
        let mut lanes = lanes_256(&scaled, y.qs());
        for (k, l) in lanes.iter_mut().enumerate() {
            *l -= (sc(2 * k) * y.bsum(2 * k) + sc(2 * k + 1) * y.bsum(2 * k + 1)) << 5;
        }
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_iq4_xs_q8_K`.
#[inline(always)]
pub fn vec_dot_iq4_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(136).zip(a.chunks_exact(292)).take(n / 256) {
        let y = Q8K(yb);
        let d = read_f16(&xb[0..2]) * y.d();
        let sh = u16::from_le_bytes([xb[2], xb[3]]);
        let mut scaled = [0i32; 256];
        for (e, v) in scaled.iter_mut().enumerate() {
            let ib = e / 32;
            let ls = i32::from((xb[4 + ib / 2] >> (4 * (ib % 2))) & 0xF)
                | (i32::from((sh >> (2 * ib)) & 3) << 4);
            let q = nibble(&xb[8 + 16 * ib..24 + 16 * ib], e % 32);
            *v = i32::from(KVALUES_IQ4NL[usize::from(q)]) * (ls - 32);
        }
        fma_lanes(&mut acc, d, &lanes_256(&scaled, y.qs()));
    }
    hsum8(&acc)
}

/// GCC's `_mm512_reduce_add_ps`: halves of 8, then of 4, then pairs.
#[inline(always)]
pub(crate) fn reduce_add_16(a: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = a[8 + i] + a[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[4 + i] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// The AVX-512 main loop of `ggml_vec_dot_f32` / `ggml_vec_dot_f16`: four
/// 16-lane FMA accumulators over steps of 64 values, folded `(s0+s2) +
/// (s1+s3)` then `_mm512_reduce_add_ps`. Returns the sum and the count
/// of values it covered.
#[inline(always)]
fn dot_main_avx512(n: usize, x: &impl Fn(usize) -> f32, y: &impl Fn(usize) -> f32) -> (f32, usize) {
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a.iter_mut().enumerate() {
                let k = i + 16 * j + l;
                *a = x(k).mul_add(y(k), *a);
            }
        }
    }
    let mut s = [0f32; 16];
    for l in 0..16 {
        s[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    (reduce_add_16(&s), np)
}

/// `ggml_vec_dot_f32` as this build computes it: the AVX-512 main loop,
/// then the leftover (< 64) values into an f32 sum. GCC vectorized that
/// tail loop and the binary's arithmetic depends on where a value falls:
/// in runs of 16, then of 8, the products are rounded (`vmulps`) and added
/// in order; the last < 8 values are contracted into FMAs (`vfmadd231ss`).
/// Another compiler or flag set gives other low bits.
#[inline(always)]
pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (main, np) = dot_main_avx512(n, &|k| f32_at(w, k), &|k| f32_at(a, k));
    vec_dot_f32_tail(main, np, n, w, a)
}

/// The little-endian f32 number `k` of `b`.
#[inline(always)]
fn f32_at(b: &[u8], k: usize) -> f32 {
    f32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]])
}

/// The part of [`vec_dot_f32`] after the main loop: `main` is that loop's
/// sum over the first `np = n & !63` values.
#[inline(always)]
pub(crate) fn vec_dot_f32_tail(main: f32, np: usize, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (|k| f32_at(w, k), |k| f32_at(a, k));
    let (mut sumf, mut k) = (main, np);
    let rem = n - k;
    let by16 = if rem >= 16 { rem / 16 * 16 } else { 0 };
    let by8 = if rem - by16 >= 8 { 8 } else { 0 };
    for _ in 0..by16 + by8 {
        sumf += x(k) * y(k);
        k += 1;
    }
    for k in k..n {
        sumf = x(k).mul_add(y(k), sumf);
    }
    sumf
}

/// `ggml_vec_dot_f16`: the AVX-512 main loop (values widened with F16C),
/// the tail summed in f64 (`ggml_float`; products of two f16 are exact in
/// f32, so contraction cannot change them).
#[inline(always)]
pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let x = |k: usize| read_f16(&w[2 * k..]);
    let y = |k: usize| read_f16(&a[2 * k..]);
    let (main, np) = dot_main_avx512(n, &x, &y);
    vec_dot_f16_tail(main, np, n, w, a)
}

/// The part of [`vec_dot_f16`] after the main loop (see
/// [`vec_dot_f32_tail`]).
#[inline(always)]
pub(crate) fn vec_dot_f16_tail(main: f32, np: usize, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = f64::from(main);
    for k in np..n {
        sumf += f64::from(read_f16(&w[2 * k..]) * read_f16(&a[2 * k..]));
    }
    sumf as f32
}

/// One (row, token) product of a batch as llama.cpp's CPU `mul_mat`
/// computes it through llamafile's `tinyBLAS` on an AVX-512 build: F16 or
/// F32 weights `w`, activations `a` of the same type (F16 ones are the f32
/// activations rounded to f16 first, as ggml converts them), `n` a
/// multiple of 16. One 16-lane FMA accumulator runs over the row in steps
/// of 16 values, then `_mm512_reduce_add_ps` folds it. ggml takes this
/// path for batches of at least two tokens when `n % 16 == 0` and the
/// matrix has a multiple of 4 rows (`ggml::sgemm_applies`); otherwise
/// [`vec_dot_f16`] / [`vec_dot_f32`].
///
/// # Panics
/// If `ty` is not F16 or F32, or `n` is not a multiple of 16.
pub fn sgemm_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(
        n.is_multiple_of(16),
        "sgemm_dot: {n} values are not a multiple of 16"
    );
    let at: fn(&[u8], usize) -> f32 = match ty {
        GgmlType::F16 => |b, k| read_f16(&b[2 * k..]),
        GgmlType::F32 => f32_at,
        _ => panic!("sgemm_dot: {ty} is not F16 or F32"),
    };
    let mut acc = [0f32; 16];
    for k0 in (0..n).step_by(16) {
        for (l, c) in acc.iter_mut().enumerate() {
            *c = at(w, k0 + l).mul_add(at(a, k0 + l), *c);
        }
    }
    reduce_add_16(&acc)
}

/// bf16 -> f32 with denormals treated as zero (AVX512-BF16's DAZ).
#[inline(always)]
fn bf16_daz(b: &[u8], k: usize) -> f32 {
    let v = u16::from_le_bytes([b[2 * k], b[2 * k + 1]]);
    let v = if v & 0x7f80 == 0 { v & 0x8000 } else { v };
    f32::from_bits(u32::from(v) << 16)
}

/// Flushes a subnormal result to zero (AVX512-BF16's FTZ).
#[inline(always)]
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        f32::from_bits(v.to_bits() & 0x8000_0000)
    } else {
        v
    }
}

/// `ggml_vec_dot_bf16` as a CPU with AVX512-BF16 computes it: two 16-lane
/// `vdpbf16ps` accumulators over steps of 64 (lane j of each takes the
/// pair 2j, 2j+1 of its 32 values: odd product first, then even, each
/// addition rounded, denormals flushed), each folded with
/// `_mm512_reduce_add_ps` and added in f64 with the tail.
#[inline(always)]
pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let np = n & !63;
    let mut c = [[0f32; 16]; 2];
    for i in (0..np).step_by(64) {
        for (h, c) in c.iter_mut().enumerate() {
            for (j, c) in c.iter_mut().enumerate() {
                let k = i + 32 * h + 2 * j;
                let odd = bf16_daz(w, k + 1) * bf16_daz(a, k + 1);
                let even = bf16_daz(w, k) * bf16_daz(a, k);
                *c = ftz(ftz(*c + odd) + even);
            }
        }
    }
    vec_dot_bf16_tail(reduce_add_16(&c[0]), reduce_add_16(&c[1]), np, n, w, a)
}

/// The part of [`vec_dot_bf16`] after the main loop: the two folded
/// accumulators and the leftover values' products (no denormal
/// flushing there) summed in f64.
#[inline(always)]
pub(crate) fn vec_dot_bf16_tail(c0: f32, c1: f32, np: usize, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = f64::from(c0);
    sumf += f64::from(c1);
    let plain = |b: &[u8], k: usize| {
        f32::from_bits(u32::from(u16::from_le_bytes([b[2 * k], b[2 * k + 1]])) << 16)
    };
    for k in np..n {
        sumf += f64::from(plain(w, k) * plain(a, k));
    }
    sumf as f32
}
