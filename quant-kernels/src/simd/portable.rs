//! Kernels written for the auto-vectorizer: fixed-size blocks, lane-wise
//! arithmetic, reductions that are exact in any order (max, min). The
//! multiversioning in `simd::mod` compiles each of them once per instruction
//! set level (baseline, AVX2, AVX-512, NEON), so one source gives every
//! SIMD width. They are safe code and must give the scalar reference's
//! bits: Rust never contracts `a*b + c` into an FMA nor reorders float
//! sums, so vectorizing lane-wise code cannot change a value.

// Kernels index blocks the way the C they transcribe does.
#![allow(clippy::needless_range_loop)]

use crate::float::{bf16_to_f32, f32_to_bf16, read_f16, write_f16};
use crate::ggml::reference::{cvtt, KVALUES_IQ4NL};

/// Blocks of `B` bytes and `N` values, as fixed-size arrays.
#[inline(always)]
fn blocks<'a, const B: usize, const N: usize>(
    x: &'a [u8],
    y: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8; B], &'a mut [f32; N])> {
    x.chunks_exact(B)
        .map(|b| b.try_into().unwrap())
        .zip(y.chunks_exact_mut(N).map(|b| b.try_into().unwrap()))
}

#[inline(always)]
fn qblocks<'a, const N: usize, const B: usize>(
    x: &'a [f32],
    y: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32; N], &'a mut [u8; B])> {
    x.chunks_exact(N)
        .map(|b| b.try_into().unwrap())
        .zip(y.chunks_exact_mut(B).map(|b| b.try_into().unwrap()))
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    read_f16(&b[i..i + 2])
}

// ------------------------------------------------------------ dequantize

#[inline(always)]
pub(crate) fn dequantize_q4_0(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<18, 32>(x, y) {
        let d = f16_at(xb, 0);
        let (lo, hi) = yb.split_at_mut(16);
        for j in 0..16 {
            let q = xb[2 + j];
            lo[j] = (i32::from(q & 0xF) - 8) as f32 * d;
            hi[j] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q4_1(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<20, 32>(x, y) {
        let d = f16_at(xb, 0);
        let m = f16_at(xb, 2);
        let (lo, hi) = yb.split_at_mut(16);
        for j in 0..16 {
            let q = xb[4 + j];
            lo[j] = f32::from(q & 0xF) * d + m;
            hi[j] = f32::from(q >> 4) * d + m;
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q5_0(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<22, 32>(x, y) {
        let d = f16_at(xb, 0);
        let qh = u32::from_le_bytes([xb[2], xb[3], xb[4], xb[5]]);
        let (lo, hi) = yb.split_at_mut(16);
        for j in 0..16 {
            let q = xb[6 + j];
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            lo[j] = ((u32::from(q & 0xF) | h0) as i32 - 16) as f32 * d;
            hi[j] = ((u32::from(q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q5_1(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<24, 32>(x, y) {
        let d = f16_at(xb, 0);
        let m = f16_at(xb, 2);
        let qh = u32::from_le_bytes([xb[4], xb[5], xb[6], xb[7]]);
        let (lo, hi) = yb.split_at_mut(16);
        for j in 0..16 {
            let q = xb[8 + j];
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            lo[j] = (u32::from(q & 0xF) | h0) as f32 * d + m;
            hi[j] = (u32::from(q >> 4) | h1) as f32 * d + m;
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<34, 32>(x, y) {
        let d = f16_at(xb, 0);
        for j in 0..32 {
            yb[j] = f32::from(xb[2 + j] as i8) * d;
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<84, 256>(x, y) {
        let d = f16_at(xb, 80);
        let min = f16_at(xb, 82);
        // The 2-bit levels in value order: value 128n + 32s + k is bits
        // 2s..2s+1 of qs[32n + k].
        let mut l = [0u8; 256];
        for n in 0..2 {
            let q: &[u8; 32] = xb[16 + 32 * n..48 + 32 * n].try_into().unwrap();
            for k in 0..32 {
                l[128 * n + k] = q[k] & 3;
                l[128 * n + 32 + k] = (q[k] >> 2) & 3;
                l[128 * n + 64 + k] = (q[k] >> 4) & 3;
                l[128 * n + 96 + k] = q[k] >> 6;
            }
        }
        let mut dl = [0f32; 16];
        let mut ml = [0f32; 16];
        for j in 0..16 {
            dl[j] = d * f32::from(xb[j] & 0xF);
            ml[j] = min * f32::from(xb[j] >> 4);
        }
        for j in 0..16 {
            let (dl, ml) = (dl[j], ml[j]);
            let lv: &[u8; 16] = l[16 * j..16 * j + 16].try_into().unwrap();
            let out: &mut [f32; 16] = (&mut yb[16 * j..16 * j + 16]).try_into().unwrap();
            for k in 0..16 {
                out[k] = dl * f32::from(lv[k]) - ml;
            }
        }
    }
}

#[inline(always)]
fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        *o = ((lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8).wrapping_sub(32);
    }
    out
}

#[inline(always)]
pub(crate) fn dequantize_q3_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<110, 256>(x, y) {
        let hm: &[u8; 32] = xb[0..32].try_into().unwrap();
        let d_all = f16_at(xb, 108);
        let scales = q3k_scales(&xb[96..108]);
        for (n, out) in yb.chunks_exact_mut(128).enumerate() {
            let q: &[u8; 32] = xb[32 + 32 * n..64 + 32 * n].try_into().unwrap();
            for (s, out) in out.chunks_exact_mut(32).enumerate() {
                let shift = 2 * s;
                let m = 1u8 << (4 * n + s);
                for half in 0..2 {
                    let dl = d_all * f32::from(scales[8 * n + 2 * s + half]);
                    for k in 0..16 {
                        let i = 16 * half + k;
                        let lo = i32::from((q[i] >> shift) & 3);
                        let hi = if hm[i] & m != 0 { 0 } else { 4 };
                        out[i] = dl * (lo - hi) as f32;
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

#[inline(always)]
pub(crate) fn dequantize_q4_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<144, 256>(x, y) {
        let d = f16_at(xb, 0);
        let min = f16_at(xb, 2);
        let (sc, m) = k4_scales(&xb[4..16]);
        for (n, out) in yb.chunks_exact_mut(64).enumerate() {
            let q: &[u8; 32] = xb[16 + 32 * n..48 + 32 * n].try_into().unwrap();
            let d1 = d * f32::from(sc[2 * n]);
            let m1 = min * f32::from(m[2 * n]);
            let d2 = d * f32::from(sc[2 * n + 1]);
            let m2 = min * f32::from(m[2 * n + 1]);
            let (lo, hi) = out.split_at_mut(32);
            for k in 0..32 {
                lo[k] = d1 * f32::from(q[k] & 0xF) - m1;
                hi[k] = d2 * f32::from(q[k] >> 4) - m2;
            }
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q5_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<176, 256>(x, y) {
        let d = f16_at(xb, 0);
        let min = f16_at(xb, 2);
        let (sc, m) = k4_scales(&xb[4..16]);
        let qh: &[u8; 32] = xb[16..48].try_into().unwrap();
        for (n, out) in yb.chunks_exact_mut(64).enumerate() {
            let ql: &[u8; 32] = xb[48 + 32 * n..80 + 32 * n].try_into().unwrap();
            let d1 = d * f32::from(sc[2 * n]);
            let m1 = min * f32::from(m[2 * n]);
            let d2 = d * f32::from(sc[2 * n + 1]);
            let m2 = min * f32::from(m[2 * n + 1]);
            let (lo, hi) = out.split_at_mut(32);
            for k in 0..32 {
                let h1 = ((qh[k] >> (2 * n)) & 1) << 4;
                let h2 = ((qh[k] >> (2 * n + 1)) & 1) << 4;
                lo[k] = d1 * f32::from((ql[k] & 0xF) | h1) - m1;
                hi[k] = d2 * f32::from((ql[k] >> 4) | h2) - m2;
            }
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_q6_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<210, 256>(x, y) {
        let d = f16_at(xb, 208);
        let mut ds = [0f32; 16];
        for (i, v) in ds.iter_mut().enumerate() {
            *v = d * f32::from(xb[192 + i] as i8);
        }
        for (half, out) in yb.chunks_exact_mut(128).enumerate() {
            let ql: &[u8; 64] = xb[64 * half..64 * half + 64].try_into().unwrap();
            let qh: &[u8; 32] = xb[128 + 32 * half..160 + 32 * half].try_into().unwrap();
            let ds = &ds[8 * half..8 * half + 8];
            let (o12, o34) = out.split_at_mut(64);
            let (o1, o2) = o12.split_at_mut(32);
            let (o3, o4) = o34.split_at_mut(32);
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o1[l] = ds[is] * q1 as f32;
                o2[l] = ds[is + 2] * q2 as f32;
                o3[l] = ds[is + 4] * q3 as f32;
                o4[l] = ds[is + 6] * q4 as f32;
            }
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_iq4_nl(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<18, 32>(x, y) {
        let d = f16_at(xb, 0);
        let (lo, hi) = yb.split_at_mut(16);
        for j in 0..16 {
            let q = xb[2 + j];
            lo[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            hi[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_iq4_xs(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in blocks::<136, 256>(x, y) {
        let d = f16_at(xb, 0);
        let scales_h = u16::from_le_bytes([xb[2], xb[3]]);
        let mut dl = [0f32; 8];
        for (ib, dl) in dl.iter_mut().enumerate() {
            let ls = i32::from((xb[4 + ib / 2] >> (4 * (ib % 2))) & 0xF)
                | (i32::from((scales_h >> (2 * ib)) & 3) << 4);
            *dl = d * (ls - 32) as f32;
        }
        let qs: &[u8; 128] = xb[8..136].try_into().unwrap();
        for (ib, out) in yb.chunks_exact_mut(32).enumerate() {
            let (lo, hi) = out.split_at_mut(16);
            let dl = dl[ib];
            for j in 0..16 {
                let q = qs[16 * ib + j];
                lo[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
                hi[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn dequantize_bf16(x: &[u8], y: &mut [f32]) {
    for (b, v) in x.chunks_exact(2).zip(y.iter_mut()) {
        *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

#[cfg_attr(target_endian = "little", allow(dead_code))]
#[inline(always)]
pub(crate) fn dequantize_f32(x: &[u8], y: &mut [f32]) {
    for (b, v) in x.chunks_exact(4).zip(y.iter_mut()) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

// ------------------------------------------------------------ quantize

/// Largest |x| of a block: max is exact in any order, so 8 lanes then a
/// tree give the sequential loop's value.
#[inline(always)]
fn amax<const N: usize>(x: &[f32; N]) -> f32 {
    let mut m = [0f32; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            let a = c[l].abs();
            m[l] = if m[l] > a { m[l] } else { a };
        }
    }
    m.into_iter().fold(0.0, |a, b| if a > b { a } else { b })
}

#[inline(always)]
fn min_max<const N: usize>(x: &[f32; N]) -> (f32, f32) {
    let mut mn = [f32::MAX; 8];
    let mut mx = [-f32::MAX; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            mn[l] = if c[l] < mn[l] { c[l] } else { mn[l] };
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    let mut lo = f32::MAX;
    let mut hi = -f32::MAX;
    for l in 0..8 {
        lo = if mn[l] < lo { mn[l] } else { lo };
        hi = if mx[l] > hi { mx[l] } else { hi };
    }
    (lo, hi)
}

/// The first element whose magnitude is the block's largest (ggml's
/// "max with its sign, first on ties"), or +0 for an all-zero block.
/// Branch-free: the value is +amax or -amax, whichever occurs first.
#[inline(always)]
fn signed_absmax<const N: usize>(x: &[f32; N]) -> f32 {
    let a = amax(x);
    if a == 0.0 {
        return 0.0;
    }
    let mut first_pos = [N as u32; 8];
    let mut first_neg = [N as u32; 8];
    for (c, chunk) in x.chunks_exact(8).enumerate() {
        for l in 0..8 {
            let i = (8 * c + l) as u32;
            let p = if chunk[l] == a { i } else { N as u32 };
            let q = if chunk[l] == -a { i } else { N as u32 };
            first_pos[l] = first_pos[l].min(p);
            first_neg[l] = first_neg[l].min(q);
        }
    }
    let p = first_pos.into_iter().min().unwrap_or(N as u32);
    let q = first_neg.into_iter().min().unwrap_or(N as u32);
    if p < q {
        a
    } else {
        -a
    }
}

/// `roundf`: half away from zero, exact for every float (the fraction
/// `x - trunc(x)` is exact), written so it vectorizes.
#[inline(always)]
fn round_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + 1.0f32.copysign(x)
    } else {
        t
    }
}

#[inline(always)]
pub(crate) fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in qblocks::<32, 34>(x, y) {
        let amax = amax(xb);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        let q: &mut [u8; 32] = (&mut yb[2..34]).try_into().unwrap();
        for j in 0..32 {
            q[j] = cvtt(round_away(xb[j] * id)) as u8;
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in qblocks::<32, 18>(x, y) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        let q: &mut [u8; 16] = (&mut yb[2..18]).try_into().unwrap();
        for j in 0..16 {
            let xi0 = (cvtt(xb[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = (cvtt(xb[16 + j] * id + 8.5) as i8).min(15) as u8;
            q[j] = xi0 | (xi1 << 4);
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in qblocks::<32, 20>(x, y) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], min);
        let q: &mut [u8; 16] = (&mut yb[4..20]).try_into().unwrap();
        for j in 0..16 {
            let xi0 = (cvtt((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (cvtt((xb[16 + j] - min) * id + 0.5) as i8).min(15) as u8;
            q[j] = xi0 | (xi1 << 4);
        }
    }
}

#[inline(always)]
fn pack_q5(l: &[u8; 32], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..32 {
        qh |= u32::from((l[j] >> 4) & 1) << j;
    }
    for j in 0..16 {
        qs_out[j] = (l[j] & 0xF) | ((l[j + 16] & 0xF) << 4);
    }
    qh_out[..4].copy_from_slice(&qh.to_le_bytes());
}

#[inline(always)]
pub(crate) fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 32];
    for (xb, yb) in qblocks::<32, 22>(x, y) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        for j in 0..32 {
            l[j] = (cvtt(xb[j] * id + 16.5) as i8).min(31) as u8;
        }
        let (qh, qs) = yb[2..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

#[inline(always)]
pub(crate) fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 32];
    for (xb, yb) in qblocks::<32, 24>(x, y) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[0..2], d);
        write_f16(&mut yb[2..4], min);
        for j in 0..32 {
            l[j] = cvtt((xb[j] - min) * id + 0.5) as u8;
        }
        let (qh, qs) = yb[4..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

#[inline(always)]
pub(crate) fn quantize_bf16(x: &[f32], y: &mut [u8]) {
    for (v, b) in x.iter().zip(y.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(*v).to_bits().to_le_bytes());
    }
}

#[cfg_attr(target_endian = "little", allow(dead_code))]
#[inline(always)]
pub(crate) fn quantize_f32(x: &[f32], y: &mut [u8]) {
    for (v, b) in x.iter().zip(y.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Dot product with 16 independent accumulators, folded pairwise (halves
/// of 8, then 4, 2 and 1), the tail (< 16 values) added last: the order
/// depends on the length only.
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32], out: &mut f32) {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    *out = acc[0] + tail;
}

/// `acc[i] += a[i] * b[i]` (a product, then a sum).
#[inline(always)]
fn mac16(acc: &mut [f32; 16], a: &[f32; 16], b: &[f32; 16]) {
    for i in 0..16 {
        acc[i] += a[i] * b[i];
    }
}

/// [`dot_f32`]'s end: the accumulators folded pairwise, the tail added.
#[inline(always)]
fn fold16(mut acc: [f32; 16], tail: f32) -> f32 {
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0] + tail
}

/// The 16 values at `k` of a row.
#[inline(always)]
fn at16(row: &[f32], k: usize) -> &[f32; 16] {
    row[k..k + 16].try_into().unwrap()
}

/// [`dot_f32`] of 2 rows `w0`, `w1` with 4 rows `x0..x3` (all `cols`
/// long): the 8 chains are independent, each exactly [`dot_f32`]'s, so
/// running them side by side hides the latency of each one's adds.
/// `out[t * ldo + r]`.
#[inline(always)]
fn dot_block_2x4(w: [&[f32]; 2], x: [&[f32]; 4], out: &mut [f32], ldo: usize) {
    let cols = w[0].len();
    let n16 = cols / 16 * 16;
    let mut a = [[0f32; 16]; 8];
    let mut k = 0;
    while k < n16 {
        let (w0, w1) = (at16(w[0], k), at16(w[1], k));
        let (x0, x1, x2, x3) = (at16(x[0], k), at16(x[1], k), at16(x[2], k), at16(x[3], k));
        mac16(&mut a[0], w0, x0);
        mac16(&mut a[1], w0, x1);
        mac16(&mut a[2], w0, x2);
        mac16(&mut a[3], w0, x3);
        mac16(&mut a[4], w1, x0);
        mac16(&mut a[5], w1, x1);
        mac16(&mut a[6], w1, x2);
        mac16(&mut a[7], w1, x3);
        k += 16;
    }
    for (c, acc) in a.into_iter().enumerate() {
        let (r, t) = (c / 4, c % 4);
        let mut tail = 0f32;
        for d in n16..cols {
            tail += w[r][d] * x[t][d];
        }
        out[t * ldo + r] = fold16(acc, tail);
    }
}

/// [`dot_f32`] of 4 rows `w0..w3` with one row `x` (a generated token's
/// product), as [`dot_block_2x4`] runs its 8: 4 independent chains.
/// `out[r]`.
#[inline(always)]
fn dot_block_4x1(w: [&[f32]; 4], x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    let n16 = cols / 16 * 16;
    let mut a = [[0f32; 16]; 4];
    let mut k = 0;
    while k < n16 {
        let xv = at16(x, k);
        mac16(&mut a[0], at16(w[0], k), xv);
        mac16(&mut a[1], at16(w[1], k), xv);
        mac16(&mut a[2], at16(w[2], k), xv);
        mac16(&mut a[3], at16(w[3], k), xv);
        k += 16;
    }
    for (r, acc) in a.into_iter().enumerate() {
        let mut tail = 0f32;
        for d in n16..cols {
            tail += w[r][d] * x[d];
        }
        out[r] = fold16(acc, tail);
    }
}

/// `out[t * rows + r] = dot_f32(w row r, x row t)` for the `rows` rows of
/// `w` and the `x.len() / cols` rows of `x` (a tile of a matrix product
/// with decoded weights), every value [`dot_f32`]'s bits.
#[inline(always)]
pub(crate) fn dot_tile_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let rows = w.len() / cols;
    let toks = x.len() / cols;
    assert!(out.len() >= rows * toks);
    let wr = |r: usize| &w[r * cols..(r + 1) * cols];
    let xr = |t: usize| &x[t * cols..(t + 1) * cols];
    let (rows2, toks4) = (rows / 2 * 2, toks / 4 * 4);
    for t in (0..toks4).step_by(4) {
        for r in (0..rows2).step_by(2) {
            dot_block_2x4(
                [wr(r), wr(r + 1)],
                [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)],
                &mut out[t * rows + r..],
                rows,
            );
        }
    }
    // Tokens left over: 4 rows at a time.
    let rows4 = rows / 4 * 4;
    for t in toks4..toks {
        for r in (0..rows4).step_by(4) {
            let o = &mut out[t * rows + r..];
            dot_block_4x1([wr(r), wr(r + 1), wr(r + 2), wr(r + 3)], xr(t), o);
        }
    }
    // The edges one product at a time.
    for t in 0..toks {
        let r0 = if t < toks4 { rows2 } else { rows4 };
        for r in r0..rows {
            dot_f32(wr(r), xr(t), &mut out[t * rows + r]);
        }
    }
}

/// `e^x` as a fixed sequence of f32 roundings (no FMA, no table), so
/// every SIMD level gives the same bits: `x = n ln2 + r` with `n` the
/// nearest integer to `x log2(e)` (Cody and Waite's two-part `ln2`, whose
/// high part times any `n` here is exact), `e^r` by its Taylor series to
/// `r^7 / 7!` (below 2^-27 relative for `|r| <= ln2 / 2`), times `2^n`
/// built in the exponent field. Within 2 ulp of `e^x` for `x` in [-86,
/// 88]; 0 below (`e^-86` is 4e-38), infinity above, NaN for NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 0x3f317200: ln 2 to 15 bits; times |n| <= 127 it is exact.
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-86.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // n in [-124, 127]: a normal power of two.
    let e = (t.to_bits() as i32).wrapping_sub(0x4b40_0000) + 127;
    let y = p * f32::from_bits((e << 23) as u32);
    if x < -86.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// Softmax in place: the maximum subtracted, [`exp_f32`] of each value,
/// the sum in f64 over 16 lanes (value `k` into lane `k % 16`, the lanes
/// folded pairwise, the tail of `len % 16` values added in order last),
/// then each value times the f32 reciprocal of the sum.
#[inline(always)]
pub(crate) fn softmax_f32(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = chunks.remainder().iter().fold(
        m.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        |a, &b| a.max(b),
    );
    let mut acc = [0f64; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for i in 0..16 {
            c[i] = exp_f32(c[i] - max);
            acc[i] += f64::from(c[i]);
        }
    }
    let mut tail = 0f64;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - max);
        tail += f64::from(*v);
    }
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    let inv = (1.0 / (acc[0] + tail)) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `gate = gate / (1 + e^-gate) * up` (SiLU-gated), with [`exp_f32`].
#[inline(always)]
pub(crate) fn silu_mul_f32(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

/// `y += a * x` (a product then a sum per value, no FMA).
#[inline(always)]
pub(crate) fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out[j] = dot(q, rows[j * stride..][..q.len()])` for every `j`.
#[inline(always)]
pub(crate) fn dots_f32(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        dot_f32(q, &rows[j * stride..j * stride + n], o);
    }
}

/// `out = 0`, then `out += p[j] * rows[j * stride..][..out.len()]` for
/// every `j` in order.
#[inline(always)]
pub(crate) fn weighted_sum_f32(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = out.len();
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        axpy_f32(pj, &rows[j * stride..j * stride + n], out);
    }
}

/// One `MB x NB` block of [`matmul_f32`] at rows `i`, columns `j`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_block<const MB: usize, const NB: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
    out: &mut [f32],
    ldo: usize,
    i: usize,
    j: usize,
) {
    let mut acc = [[0f32; NB]; MB];
    for d in 0..k {
        let brow: &[f32; NB] = b[d * ldb + j..d * ldb + j + NB].try_into().unwrap();
        let mut av = [0f32; MB];
        for ii in 0..MB {
            av[ii] = a[(i + ii) * lda + d];
        }
        for ii in 0..MB {
            for jj in 0..NB {
                acc[ii][jj] = av[ii].mul_add(brow[jj], acc[ii][jj]);
            }
        }
    }
    for ii in 0..MB {
        out[(i + ii) * ldo + j..(i + ii) * ldo + j + NB].copy_from_slice(&acc[ii]);
    }
}

/// Rows `i..i + MB` (`MB <= 4`) of [`matmul_f32`]: blocks of 32 columns, then 8, then
/// the last < 8 columns through a zero-padded copy.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_rows<const MB: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    i: usize,
) {
    let mut j = 0;
    while j + 32 <= n {
        matmul_block::<MB, 32>(a, lda, b, ldb, k, out, ldo, i, j);
        j += 32;
    }
    while j + 8 <= n {
        matmul_block::<MB, 8>(a, lda, b, ldb, k, out, ldo, i, j);
        j += 8;
    }
    if j < n {
        let w = n - j;
        let mut bt = vec![0f32; k * 8];
        for d in 0..k {
            bt[d * 8..d * 8 + w].copy_from_slice(&b[d * ldb + j..d * ldb + n]);
        }
        let mut ot = [0f32; 32];
        matmul_block::<MB, 8>(&a[i * lda..], lda, &bt, 8, k, &mut ot, 8, 0, 0);
        for ii in 0..MB {
            out[(i + ii) * ldo + j..(i + ii) * ldo + n].copy_from_slice(&ot[ii * 8..ii * 8 + w]);
        }
    }
}

/// `out[i * ldo + j] = sum_d a[i * lda + d] * b[d * ldb + j]` for `i <
/// m`, `j < n`, `d < k`: per output an FMA chain over `d` in order from
/// zero, whatever the blocking.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_f32(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let mut i = 0;
    while i + 4 <= m {
        matmul_rows::<4>(a, lda, b, ldb, k, n, out, ldo, i);
        i += 4;
    }
    match m - i {
        3 => matmul_rows::<3>(a, lda, b, ldb, k, n, out, ldo, i),
        2 => matmul_rows::<2>(a, lda, b, ldb, k, n, out, ldo, i),
        1 => matmul_rows::<1>(a, lda, b, ldb, k, n, out, ldo, i),
        _ => {}
    }
}

/// Scale or bias `i` of an MLX matrix, stored little-endian as `dtype`
/// (exact in f32).
#[inline(always)]
fn mlx_param_at(dtype: crate::mlx::MlxDtype, bytes: &[u8], i: usize) -> f32 {
    use crate::mlx::MlxDtype as D;
    match dtype {
        D::F32 => f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]),
        D::F16 => read_f16(&bytes[2 * i..]),
        D::BF16 => bf16_to_f32(half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])),
    }
}

/// `crate::mlx::affine_rows_to_f32` (checked there): each group's values
/// `q * scale + bias` in f32, the product rounded, then the sum.
#[inline(always)]
pub(crate) fn mlx_affine_rows(
    packed: &[u8],
    scales: &[u8],
    biases: &[u8],
    dtype: crate::mlx::MlxDtype,
    bits: u32,
    group: usize,
    out: &mut [f32],
) {
    let group_bytes = group * bits as usize / 8;
    let mut q = [0u8; 128];
    for (g, (p, o)) in packed
        .chunks_exact(group_bytes)
        .zip(out.chunks_exact_mut(group))
        .enumerate()
    {
        let (s, b) = (
            mlx_param_at(dtype, scales, g),
            mlx_param_at(dtype, biases, g),
        );
        match bits {
            8 => {
                for (o, &v) in o.iter_mut().zip(p) {
                    *o = f32::from(v) * s + b;
                }
            }
            4 => {
                for (o, &v) in o.chunks_exact_mut(2).zip(p) {
                    o[0] = f32::from(v & 15) * s + b;
                    o[1] = f32::from(v >> 4) * s + b;
                }
            }
            _ => {
                // Value i at bit i * bits of the little-endian stream.
                let mask = (1u32 << bits) - 1;
                for (i, v) in q[..group].iter_mut().enumerate() {
                    let (byte, shift) = (i * bits as usize / 8, i * bits as usize % 8);
                    let lo = u32::from(p[byte]);
                    let hi = p.get(byte + 1).map_or(0, |&b| u32::from(b));
                    *v = (((lo | (hi << 8)) >> shift) & mask) as u8;
                }
                for (o, &v) in o.iter_mut().zip(&q[..group]) {
                    *o = f32::from(v) * s + b;
                }
            }
        }
    }
}
