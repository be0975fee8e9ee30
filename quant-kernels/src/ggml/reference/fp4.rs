//! The FP4 types: MXFP4 (blocks of 32 E2M1 values with a shared E8M0
//! power-of-two scale, as in gpt-oss) and NVFP4 (blocks of 64 in four
//! sub-blocks of 16, each with a UE4M3 scale). Both dot with Q8_0
//! activations.
//!
//! ggml keeps the E2M1 values doubled (`kvalues_fp4`, integers -12..=12)
//! and halves the scales to match, so every value is `level * scale` with
//! both factors exact in f32.

use super::check_lengths;
use super::dot::{fma_lanes, hsum8, q8};
use crate::float::read_f16;

const QK_MXFP4: usize = 32;
const MXFP4: usize = 17;
const QK_NVFP4: usize = 64;
const QK_NVFP4_SUB: usize = 16;
const NVFP4: usize = 36;

/// Twice the E2M1 value of a 4-bit code (sign, 2 exponent bits with bias 1,
/// 1 mantissa bit): ggml's `kvalues_fp4`.
const fn e2m1_doubled(code: u8) -> i8 {
    let (e, m) = ((code >> 1) & 3, (code & 1) as i8);
    let v = if e == 0 { m } else { (2 + m) << (e - 1) };
    if code & 8 != 0 {
        -v
    } else {
        v
    }
}

/// ggml's `kvalues_fp4`: `0, 1, 2, 3, 4, 6, 8, 12` and their negatives.
pub const KVALUES_FP4: [i8; 16] = {
    let mut t = [0i8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = e2m1_doubled(i as u8);
        i += 1;
    }
    t
};

/// `ggml_e8m0_to_fp32_half`: half the power of two `2^(x-127)`, built from
/// its bits (subnormal for `x < 2`).
#[inline(always)]
pub fn e8m0_to_f32_half(x: u8) -> f32 {
    if x < 2 {
        f32::from_bits(0x0020_0000 << x)
    } else {
        f32::from_bits(u32::from(x - 1) << 23)
    }
}

/// `ggml_ue4m3_to_fp32`: half the value of an unsigned E4M3 scale (bias 7,
/// subnormals for exponent 0). Bit 7 is ignored, and only `0x7F` (E4M3's
/// NaN) reads as 0; `0xFF` reads as 240.
#[inline(always)]
pub fn ue4m3_to_f32(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = i32::from((x >> 3) & 0xF);
    let man = f32::from(x & 7);
    let raw = if exp == 0 {
        man * pow2(-9)
    } else {
        (1.0 + man / 8.0) * pow2(exp - 7)
    };
    raw * 0.5
}

/// `2^e` for a normal exponent.
#[inline(always)]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// One byte product of the x86 kernels' `mul_add_epi8(x, y)`, which is
/// `maddubs(sign(x, x), sign(y, x))`: `x * y`, except that `y = -128`
/// against a negative `x` gives `-128 * |x|` (`_mm256_sign_epi8` negates
/// -128 to itself). For weights of magnitude at most 12 the pair sums stay
/// inside i16, so `maddubs` never saturates and lanes are plain sums.
#[inline(always)]
pub(super) fn mul_sign_i8(x: i8, y: i8) -> i32 {
    let sy = match x.signum() {
        1 => y,
        -1 => y.wrapping_neg(),
        _ => 0,
    };
    i32::from(x.unsigned_abs()) * i32::from(sy)
}

/// The 32 doubled levels of an MXFP4 block's (or NVFP4 half-block pair's)
/// 16 code bytes, in value order: low nibbles first, then high ones.
#[inline(always)]
fn fp4_levels(qs: &[u8]) -> [i8; 32] {
    let mut v = [0i8; 32];
    for j in 0..16 {
        v[j] = KVALUES_FP4[usize::from(qs[j] & 0xF)];
        v[j + 16] = KVALUES_FP4[usize::from(qs[j] >> 4)];
    }
    v
}

/// `dequantize_row_mxfp4`.
pub fn dequantize_row_mxfp4(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_MXFP4, MXFP4);
    for (xb, yb) in x.chunks_exact(MXFP4).zip(y.chunks_exact_mut(QK_MXFP4)) {
        let d = e8m0_to_f32_half(xb[0]);
        for (v, &l) in yb.iter_mut().zip(fp4_levels(&xb[1..17]).iter()) {
            *v = f32::from(l) * d;
        }
    }
}

/// `dequantize_row_nvfp4`: each sub-block of 16 stores its values as 8
/// bytes, the first 8 values in the low nibbles.
pub fn dequantize_row_nvfp4(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_NVFP4, NVFP4);
    for (xb, yb) in x.chunks_exact(NVFP4).zip(y.chunks_exact_mut(QK_NVFP4)) {
        for (s, ys) in yb.chunks_exact_mut(QK_NVFP4_SUB).enumerate() {
            let d = ue4m3_to_f32(xb[s]);
            for (v, l) in ys.iter_mut().zip(nvfp4_sub_levels(&xb[4..36], s)) {
                *v = f32::from(l) * d;
            }
        }
    }
}

/// The 16 doubled levels of NVFP4 sub-block `s` in value order.
#[inline(always)]
fn nvfp4_sub_levels(qs: &[u8], s: usize) -> [i8; 16] {
    let b = &qs[8 * s..8 * s + 8];
    let mut v = [0i8; 16];
    for j in 0..8 {
        v[j] = KVALUES_FP4[usize::from(b[j] & 0xF)];
        v[j + 8] = KVALUES_FP4[usize::from(b[j] >> 4)];
    }
    v
}

/// Lane sums of 32 weights against 32 Q8_0 activations as `mul_add_epi8`
/// then `madd(.., 1)` form them: value `e` into lane `e / 4`.
#[inline(always)]
fn sign_lanes(x: &[i8], y: &[i8; 32]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for e in 0..32 {
        l[e / 4] += mul_sign_i8(x[e], y[e]);
    }
    l
}

/// `ggml_vec_dot_mxfp4_q8_0`: pairs of blocks into two accumulators
/// (`fma(d, lanes, acc)`, `d` the activation's scale times the weight's),
/// summed lane-wise before the fold; an odd last block is added in scalar
/// as `sumf += d * sumi` with exact integer products (no FMA: checked in
/// libggml-cpu.so, `vmulss` then `vaddss`).
#[inline(always)]
pub fn vec_dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_MXFP4;
    let scale = |ib: usize| read_f16(&a[34 * ib..34 * ib + 2]) * e8m0_to_f32_half(w[MXFP4 * ib]);
    let levels = |ib: usize| fp4_levels(&w[MXFP4 * ib + 1..MXFP4 * ib + MXFP4]);
    let acts = |ib: usize| q8(&a[34 * ib + 2..34 * ib + 34]);
    let mut acc1 = [0f32; 8];
    let mut acc2 = [0f32; 8];
    let mut ib = 0;
    while ib + 1 < nb {
        fma_lanes(&mut acc1, scale(ib), &sign_lanes(&levels(ib), &acts(ib)));
        fma_lanes(
            &mut acc2,
            scale(ib + 1),
            &sign_lanes(&levels(ib + 1), &acts(ib + 1)),
        );
        ib += 2;
    }
    let mut sum = [0f32; 8];
    for k in 0..8 {
        sum[k] = acc1[k] + acc2[k];
    }
    let mut sumf = hsum8(&sum);
    if ib < nb {
        sumf += mxfp4_last_block(&w[MXFP4 * ib..MXFP4 * (ib + 1)], &a[34 * ib..34 * (ib + 1)]);
    }
    sumf
}

/// The term [`vec_dot_mxfp4_q8_0`] adds for the last block of an odd
/// count: weight block `xb` against activation block `yb`, exact integer
/// products, `d * sumi`.
pub(crate) fn mxfp4_last_block(xb: &[u8], yb: &[u8]) -> f32 {
    let (x, y) = (fp4_levels(&xb[1..MXFP4]), q8(&yb[2..34]));
    let sumi: i32 = (0..32).map(|e| i32::from(x[e]) * i32::from(y[e])).sum();
    read_f16(&yb[0..2]) * e8m0_to_f32_half(xb[0]) * sumi as f32
}

/// `ggml_vec_dot_nvfp4_q8_0`: one NVFP4 block against two Q8_0 blocks;
/// lanes 0-3 of each Q8_0 block take one sub-block, lanes 4-7 the next,
/// each with its own scale (`ue4m3 * d_act`), two FMAs per block into one
/// accumulator.
#[inline(always)]
pub fn vec_dot_nvfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w
        .chunks_exact(NVFP4)
        .zip(a.chunks_exact(68))
        .take(n / QK_NVFP4)
    {
        for h in 0..2 {
            let ya = &yb[34 * h..34 * h + 34];
            let dy = read_f16(&ya[0..2]);
            let mut x = [0i8; 32];
            x[..16].copy_from_slice(&nvfp4_sub_levels(&xb[4..36], 2 * h));
            x[16..].copy_from_slice(&nvfp4_sub_levels(&xb[4..36], 2 * h + 1));
            let lanes = sign_lanes(&x, &q8(&ya[2..34]));
            let (s0, s1) = (
                ue4m3_to_f32(xb[2 * h]) * dy,
                ue4m3_to_f32(xb[2 * h + 1]) * dy,
            );
            for k in 0..8 {
                let s = if k < 4 { s0 } else { s1 };
                acc[k] = s.mul_add(lanes[k] as f32, acc[k]);
            }
        }
    }
    hsum8(&acc)
}
