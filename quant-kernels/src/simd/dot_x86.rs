//! AVX2 dot products of quantized weights with quantized activations, the
//! hot loop of inference.
//!
//! Each kernel forms the same integer lane sums as its reference in
//! `ggml::reference::dot` (lane k of a 32-value chunk holds the products
//! of values 4k..4k+3; integers are exact in any order) with
//! `maddubs`/`madd`, as ggml's AVX2 kernels do, then does the reference's
//! float arithmetic in its order: `fma(d, lane, acc)` per block into eight
//! f32 accumulators, `hsum_float_8` at the end. So the result equals the
//! reference bit for bit; `simd::tests` checks it.
//!
//! `maddubs` adds two u8 x i8 products into an i16 with saturation; every
//! use below stays inside i16 for values the quantizers produce (weights
//! of at most 6 bits unsigned, or |w| <= 127 signed; activations in
//! [-128, 127]).

use std::arch::x86_64::*;

use crate::float::read_f16;
use crate::ggml::reference::{get_scale_min_k4, reduce_add_16};

/// `hsum_float_8`: `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[inline(always)]
pub(super) unsafe fn store8(v: __m256) -> [f32; 8] {
    let mut a = [0f32; 8];
    // SAFETY: `a` holds 8 f32; the store is unaligned.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

#[inline(always)]
unsafe fn store8i(v: __m256i) -> [i32; 8] {
    let mut a = [0i32; 8];
    // SAFETY: `a` holds 8 i32; the store is unaligned.
    unsafe { _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, v) };
    a
}

/// 32 bytes from `b` (which holds at least 32).
#[inline(always)]
pub(super) unsafe fn load32(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 32);
    // SAFETY: the caller passes at least 32 bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
}

/// 16 packed bytes of 4-bit codes to 32 bytes: low nibbles (values 0..15)
/// then high nibbles (values 16..31), as Q4_0/Q4_1/Q5_0 store them.
#[inline(always)]
unsafe fn nibbles32(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 16);
    // SAFETY: 16 bytes in bounds (checked by the callers' block sizes);
    // AVX2 is enabled in every caller.
    unsafe {
        let lo = _mm_loadu_si128(b.as_ptr() as *const __m128i);
        let hi = _mm_srli_epi16::<4>(lo);
        _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
    }
}

/// i32 lanes of unsigned x signed byte products: lane k sums bytes
/// 4k..4k+3.
#[inline(always)]
unsafe fn lanes_u8(x: __m256i, y: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)) }
}

/// i32 lanes of signed x signed byte products (`x` never -128).
#[inline(always)]
pub(super) unsafe fn lanes_i8(x: __m256i, y: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe { lanes_u8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
}

/// Per-16-value scales times the unsigned x signed products: i16 pair
/// sums of bytes 0..15 times `s0`, of bytes 16..31 times `s1`.
#[inline(always)]
unsafe fn scaled_lanes_u8(x: __m256i, y: __m256i, s0: i32, s1: i32) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let s = _mm256_set_m128i(_mm_set1_epi16(s1 as i16), _mm_set1_epi16(s0 as i16));
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), s)
    }
}

/// Signed variant of [`scaled_lanes_u8`] (`x` never -128).
#[inline(always)]
unsafe fn scaled_lanes_i8(x: __m256i, y: __m256i, s0: i32, s1: i32) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe { scaled_lanes_u8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x), s0, s1) }
}

/// Q4_0/Q5_0/Q8_0 with Q8_0 activations: per block `fma(dx*dy, lanes,
/// acc)`. `values` gives a block's 32 signed weight values.
#[inline(always)]
unsafe fn dot_q8_0_family(
    n: usize,
    w: &[u8],
    wb: usize,
    a: &[u8],
    values: impl Fn(&[u8]) -> __m256i,
) -> f32 {
    // SAFETY: AVX2, FMA and F16C are enabled in every caller; blocks are
    // whole (chunks_exact).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in w.chunks_exact(wb).zip(a.chunks_exact(34)).take(n / 32) {
            let d = read_f16(&xb[0..2]) * read_f16(&yb[0..2]);
            let lanes = lanes_i8(values(xb), load32(&yb[2..34]));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        }
        hsum8(&store8(acc))
    }
}

/// `ggml_vec_dot_q4_0_q8_0`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 18 bytes.
    unsafe {
        dot_q8_0_family(n, w, 18, a, |xb| {
            _mm256_sub_epi8(nibbles32(&xb[2..18]), _mm256_set1_epi8(8))
        })
    }
}

/// `ggml_vec_dot_q5_0_q8_0`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 22 bytes.
    unsafe {
        dot_q8_0_family(n, w, 22, a, |xb| {
            let qh = i32::from_le_bytes([xb[2], xb[3], xb[4], xb[5]]);
            // Byte e gets bit e of qh (ggml's bytes_from_bits_32).
            let shuf = _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), shuf);
            let bits = _mm256_cmpeq_epi8(
                _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
                _mm256_set1_epi64x(-1),
            );
            let hi = _mm256_and_si256(bits, _mm256_set1_epi8(0x10));
            _mm256_sub_epi8(
                _mm256_or_si256(nibbles32(&xb[6..22]), hi),
                _mm256_set1_epi8(16),
            )
        })
    }
}

/// `ggml_vec_dot_q8_0_q8_0`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 34 bytes.
    unsafe { dot_q8_0_family(n, w, 34, a, |xb| load32(&xb[2..34])) }
}

/// `ggml_vec_dot_q4_1_q8_1`: `fma(dx*dy, lanes, acc)` and `summs =
/// fma(m, s, summs)`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are whole.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (xb, yb) in w.chunks_exact(20).zip(a.chunks_exact(36)).take(n / 32) {
            let d = read_f16(&xb[0..2]) * read_f16(&yb[0..2]);
            summs = read_f16(&xb[2..4]).mul_add(read_f16(&yb[2..4]), summs);
            let lanes = lanes_u8(nibbles32(&xb[4..20]), load32(&yb[4..36]));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        }
        hsum8(&store8(acc)) + summs
    }
}

/// A Q8_K block: f32 d, 256 values, 16 i16 sums.
#[inline(always)]
pub(super) fn q8k_d(yb: &[u8]) -> f32 {
    f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]])
}

#[inline(always)]
fn q8k_bsum(yb: &[u8], j: usize) -> i32 {
    i32::from(i16::from_le_bytes([yb[260 + 2 * j], yb[261 + 2 * j]]))
}

/// Adds `fma(d, lanes[k], acc[k])` for the eight lanes.
#[inline(always)]
fn fma_lanes(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for k in 0..8 {
        acc[k] = d.mul_add(lanes[k] as f32, acc[k]);
    }
}

/// `ggml_vec_dot_q2_K_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(84).zip(a.chunks_exact(292)).take(n / 256) {
        let yd = q8k_d(yb);
        let d = yd * read_f16(&xb[80..82]);
        let dmin = -yd * read_f16(&xb[82..84]);
        let sc = &xb[0..16];
        let mut prod = [0i32; 8];
        for k in 0..8 {
            prod[k] = i32::from(sc[2 * k] >> 4) * q8k_bsum(yb, 2 * k)
                + i32::from(sc[2 * k + 1] >> 4) * q8k_bsum(yb, 2 * k + 1);
        }
        fma_lanes(&mut acc, dmin, &prod);
        // SAFETY: the features are enabled here; the block holds 84
        // bytes and the activations 292.
        let lanes = unsafe {
            let mut sum = _mm256_setzero_si256();
            for half in 0..2 {
                let q = load32(&xb[16 + 32 * half..]);
                for quarter in 0..4 {
                    let j = 4 * half + quarter;
                    let v = _mm256_and_si256(
                        _mm256_srlv_epi32(q, _mm256_set1_epi32(2 * quarter as i32)),
                        _mm256_set1_epi8(3),
                    );
                    let y = load32(&yb[4 + 32 * j..]);
                    let s0 = i32::from(sc[2 * j] & 0xF);
                    let s1 = i32::from(sc[2 * j + 1] & 0xF);
                    sum = _mm256_add_epi32(sum, scaled_lanes_u8(v, y, s0, s1));
                }
            }
            store8i(sum)
        };
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_q3_K_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(110).zip(a.chunks_exact(292)).take(n / 256) {
        let d = q8k_d(yb) * read_f16(&xb[108..110]);
        let s = &xb[96..108];
        let mut sc = [0i32; 16];
        for (j, v) in sc.iter_mut().enumerate() {
            let code = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
            *v = i32::from(code | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        }
        // SAFETY: the features are enabled here; the block holds 110
        // bytes and the activations 292.
        let lanes = unsafe {
            let hmask = load32(xb);
            let mut sum = _mm256_setzero_si256();
            for half in 0..2 {
                let q = load32(&xb[32 + 32 * half..]);
                for quarter in 0..4 {
                    let j = 4 * half + quarter;
                    let lo = _mm256_and_si256(
                        _mm256_srlv_epi32(q, _mm256_set1_epi32(2 * quarter as i32)),
                        _mm256_set1_epi8(3),
                    );
                    // 4 where the high bit is clear.
                    let bit = _mm256_set1_epi8((1u8 << j) as i8);
                    let clear =
                        _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), _mm256_setzero_si256());
                    let v = _mm256_sub_epi8(lo, _mm256_and_si256(clear, _mm256_set1_epi8(4)));
                    let y = load32(&yb[4 + 32 * j..]);
                    sum = _mm256_add_epi32(sum, scaled_lanes_i8(v, y, sc[2 * j], sc[2 * j + 1]));
                }
            }
            store8i(sum)
        };
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_q4_K_q8_K`: mins in a 4-lane accumulator folded as
/// `(m0+m2)+(m1+m3)`, added after the 8-lane fold.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (xb, yb) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(n / 256) {
        let yd = q8k_d(yb);
        let d = yd * read_f16(&xb[0..2]);
        let dmin = -yd * read_f16(&xb[2..4]);
        let mut sc = [0i32; 8];
        let mut m = [0i32; 8];
        for j in 0..8 {
            let (a, b) = get_scale_min_k4(j, &xb[4..16]);
            sc[j] = i32::from(a);
            m[j] = i32::from(b);
        }
        for k in 0..4 {
            let q8s0 = q8k_bsum(yb, 4 * k) + q8k_bsum(yb, 4 * k + 1);
            let q8s1 = q8k_bsum(yb, 4 * k + 2) + q8k_bsum(yb, 4 * k + 3);
            let p = m[2 * k] * q8s0 + m[2 * k + 1] * q8s1;
            acc_m[k] = dmin.mul_add(p as f32, acc_m[k]);
        }
        // SAFETY: the features are enabled here; the block holds 144
        // bytes and the activations 292.
        let lanes = unsafe {
            let mut sum = _mm256_setzero_si256();
            for chunk in 0..4 {
                let q = load32(&xb[16 + 32 * chunk..]);
                let lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), _mm256_set1_epi8(0x0F));
                let (j0, j1) = (2 * chunk, 2 * chunk + 1);
                let y0 = load32(&yb[4 + 32 * j0..]);
                let y1 = load32(&yb[4 + 32 * j1..]);
                sum = _mm256_add_epi32(sum, scaled_lanes_u8(lo, y0, sc[j0], sc[j0]));
                sum = _mm256_add_epi32(sum, scaled_lanes_u8(hi, y1, sc[j1], sc[j1]));
            }
            store8i(sum)
        };
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `ggml_vec_dot_q6_K_q8_K`: unsigned 6-bit values, the -32 offset taken
/// off per lane as `32 * (sc[2k]*bsum[2k] + sc[2k+1]*bsum[2k+1])`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(n / 256) {
        let d = q8k_d(yb) * read_f16(&xb[208..210]);
        let sc = |j: usize| i32::from(xb[192 + j] as i8);
        // SAFETY: the features are enabled here; the block holds 210
        // bytes and the activations 292.
        let mut lanes = unsafe {
            let mut sum = _mm256_setzero_si256();
            for half in 0..2 {
                let ql0 = load32(&xb[64 * half..]);
                let ql1 = load32(&xb[64 * half + 32..]);
                let qh = load32(&xb[128 + 32 * half..]);
                for quarter in 0..4 {
                    let ql = if quarter % 2 == 0 { ql0 } else { ql1 };
                    let lo = if quarter < 2 {
                        _mm256_and_si256(ql, _mm256_set1_epi8(0x0F))
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), _mm256_set1_epi8(0x0F))
                    };
                    let hi = _mm256_and_si256(
                        _mm256_srlv_epi32(qh, _mm256_set1_epi32(2 * quarter as i32)),
                        _mm256_set1_epi8(3),
                    );
                    let v = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                    let j = 4 * half + quarter;
                    let y = load32(&yb[4 + 32 * j..]);
                    sum = _mm256_add_epi32(sum, scaled_lanes_u8(v, y, sc(2 * j), sc(2 * j + 1)));
                }
            }
            store8i(sum)
        };
        for (k, l) in lanes.iter_mut().enumerate() {
            *l -= (sc(2 * k) * q8k_bsum(yb, 2 * k) + sc(2 * k + 1) * q8k_bsum(yb, 2 * k + 1)) << 5;
        }
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc)
}

/// 32 IQ4 codes (16 bytes in Q4_0's order) as their signed values.
#[inline(always)]
unsafe fn iq4_values(b: &[u8]) -> __m256i {
    use crate::ggml::reference::KVALUES_IQ4NL;
    // SAFETY: the table holds 16 bytes; AVX2 is enabled in every caller.
    unsafe {
        let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(b))
    }
}

/// `ggml_vec_dot_iq4_nl_q8_0` (see the reference): pairs of blocks into
/// two accumulators, added lane-wise before the fold, an odd last block
/// added in scalar.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    // SAFETY: AVX2 is enabled here; whole blocks (ib < nb).
    let block = |ib: usize| unsafe {
        let (xb, yb) = (&w[18 * ib..18 * ib + 18], &a[34 * ib..34 * ib + 34]);
        let d = read_f16(&yb[0..2]) * read_f16(&xb[0..2]);
        (d, lanes_i8(iq4_values(&xb[2..18]), load32(&yb[2..34])))
    };
    // SAFETY: AVX2, FMA and F16C are enabled here.
    unsafe {
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let mut ib = 0;
        while ib + 1 < nb {
            let (d1, l1) = block(ib);
            let (d2, l2) = block(ib + 1);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(l1), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_set1_ps(d2), _mm256_cvtepi32_ps(l2), acc2);
            ib += 2;
        }
        let mut sumf = hsum8(&store8(_mm256_add_ps(acc1, acc2)));
        if ib < nb {
            let last = &w[18 * ib..18 * ib + 18];
            sumf += crate::ggml::reference::iq4_nl_last_block(last, &a[34 * ib..34 * ib + 34]);
        }
        sumf
    }
}

/// `ggml_vec_dot_iq4_xs_q8_K`: per super-block, each 32-value chunk's
/// lane sums times its 6-bit scale minus 32, then `fma(d, lanes, acc)`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: AVX2, FMA and F16C are enabled here; blocks are whole
    // (chunks_exact), 136 bytes of weights and 292 of activations.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in w.chunks_exact(136).zip(a.chunks_exact(292)).take(n / 256) {
            let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
            let d = read_f16(&xb[0..2]) * dy;
            let sh = u16::from_le_bytes([xb[2], xb[3]]);
            let mut lanes = _mm256_setzero_si256();
            for ib in 0..8 {
                let ls = i32::from((xb[4 + ib / 2] >> (4 * (ib % 2))) & 0xF)
                    | (i32::from((sh >> (2 * ib)) & 3) << 4);
                let x = iq4_values(&xb[8 + 16 * ib..24 + 16 * ib]);
                let y = load32(&yb[4 + 32 * ib..36 + 32 * ib]);
                lanes = _mm256_add_epi32(lanes, scaled_lanes_i8(x, y, ls - 32, ls - 32));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        }
        hsum8(&store8(acc))
    }
}

/// `ggml_vec_dot_f16` on an AVX-512 CPU: four 16-lane FMA accumulators
/// over steps of 64 values (widened with F16C), folded `(s0+s2) +
/// (s1+s3)`, then `_mm512_reduce_add_ps`; the tail summed in f64.
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() >= 2 * n && a.len() >= 2 * n);
    let np = n & !63;
    // SAFETY: the features are enabled here; every load reads 16 values
    // (32 bytes) at k + 16 <= np <= n, inside both rows (asserted above).
    let main = unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, acc) in acc.iter_mut().enumerate() {
                let k = i + 16 * j;
                let x =
                    _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().add(2 * k) as *const __m256i));
                let y =
                    _mm512_cvtph_ps(_mm256_loadu_si256(a.as_ptr().add(2 * k) as *const __m256i));
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            i += 64;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), s);
        reduce_add_16(&lanes)
    };
    let mut sumf = f64::from(main);
    for k in np..n {
        sumf += f64::from(read_f16(&w[2 * k..]) * read_f16(&a[2 * k..]));
    }
    sumf as f32
}
