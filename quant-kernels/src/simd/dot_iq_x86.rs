//! AVX2 dot products of the types qforge reads but does not write (the
//! IQ2/IQ3 lattices, IQ1_S/IQ1_M, the ternary TQ1_0/TQ2_0, MXFP4 and
//! NVFP4) with their activations, after ggml's AVX2 kernels in
//! ggml-cpu/arch/x86/quants.c.
//!
//! The references (`ggml::reference::iq23`, `iq1`, `ternary`, `fp4`)
//! define the arithmetic; these kernels form the same integer lane sums
//! with vector instructions. For the lattices: grid points gathered into a
//! `__m256i` (value `e` of a 32-value chunk in byte `e`), the activations
//! negated where the weight is negative (`_mm256_sign_epi8` with ±1
//! bytes, or `xor`/`sub` with a 0/-1 mask; both wrap, so -128 stays -128
//! as in the reference), `maddubs` with the unsigned grid values (pair
//! sums of at most 2 * 62 * 128, far from i16 saturation), `madd` by the
//! odd scale `2*ls + 1` (or by 1), which puts value `e` in 32-bit lane
//! `(e % 32) / 4`. Signed weights (IQ1, FP4) go through `mul_add_epi8`
//! (the weight's sign moved onto the activation); the ternary types sum
//! in wrapping i16 lanes as ggml does. Integer sums are exact (or, for
//! the i16 sums, equal modulo 2^16) in any order; the float steps are the
//! reference's, in its order: per block `fma(d, lanes, acc)` into eight
//! f32 lanes, `hsum_float_8`, then the type's factor or scalar part. So
//! every result equals the reference bit for bit; `simd::tests` checks it.

use std::arch::x86_64::*;

use super::dot_x86::{hsum8, lanes_i8, load32, q8k_d, store8};
use crate::float::read_f16;
use crate::ggml::reference::iq23_tables::{
    IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID,
};
use crate::ggml::reference::{e8m0_to_f32_half, ksigns, KVALUES_FP4};

/// Bytes of a Q8_K block (f32 d, 256 values, 16 i16 sums).
const Q8K: usize = 292;

/// ggml's `keven_signs_q2xs` as u64: byte `j` of entry `i` is -1 where
/// bit `j` of `ksigns(i)` is set (the seven stored signs and their
/// parity), else +1; the second operand of `_mm256_sign_epi8`.
static KEVEN_SIGNS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = ksigns(i as u32);
        let mut j = 0;
        while j < 8 {
            let b: u64 = if s & (1 << j) != 0 { 0xff } else { 0x01 };
            t[i] |= b << (8 * j);
            j += 1;
        }
        i += 1;
    }
    t
};

/// Four 7-bit sign fields of `aux` (bits 0..28) as the ±1 bytes of 32
/// values, field `l` for values `8l..8l+8`.
#[inline(always)]
unsafe fn even_signs(aux: u32) -> __m256i {
    let s = |l: u32| KEVEN_SIGNS[((aux >> (7 * l)) & 127) as usize] as i64;
    // SAFETY: AVX is enabled in every caller.
    unsafe { _mm256_set_epi64x(s(3), s(2), s(1), s(0)) }
}

/// Four sign bytes (bit `j` of byte `l` for value `8l + j`) as 32 bytes
/// of -1 (negative) or 0.
#[inline(always)]
unsafe fn sign_bytes(s: &[u8]) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let v = _mm256_set1_epi32(i32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        // Byte l of the word to bytes 8l..8l+8, then one bit per byte.
        let spread = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit), bit)
    }
}

/// `grid * ±q8` pair sums times `2*ls + 1`: lane `k` sums values
/// `4k..4k+4`. `neg` is -1 where the weight is negative, else 0.
#[inline(always)]
unsafe fn masked_lanes(grid: __m256i, q8: __m256i, neg: __m256i, scales: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let q8s = _mm256_sub_epi8(_mm256_xor_si256(neg, q8), neg);
        _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8s), scales)
    }
}

/// As [`masked_lanes`] with ±1 sign bytes (`_mm256_sign_epi8`).
#[inline(always)]
unsafe fn signed_lanes(grid: __m256i, q8: __m256i, signs: __m256i, scales: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        _mm256_madd_epi16(
            _mm256_maddubs_epi16(grid, _mm256_sign_epi8(q8, signs)),
            scales,
        )
    }
}

/// The i16 multipliers `2*ls + 1` of a 32-value chunk: `lo` for values
/// 0..16, `hi` for 16..32.
#[inline(always)]
unsafe fn odd_scales(lo: u32, hi: u32) -> __m256i {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        _mm256_set_m128i(
            _mm_set1_epi16((2 * hi + 1) as i16),
            _mm_set1_epi16((2 * lo + 1) as i16),
        )
    }
}

/// One lattice type: its block size and the lane sums of one 32-value
/// chunk. (A trait rather than a closure, so that the chunk is inlined
/// into the caller's `target_feature` context.)
pub(super) trait Lattice {
    const BYTES: usize;
    /// The factor the type's dot product ends with (`None`: none).
    const FACTOR: Option<f32>;
    /// Lane sums of chunk `ib` of block `xb` against activations `q8`.
    ///
    /// # Safety
    /// The CPU must support AVX2; `xb` is a whole block, `ib < 8`.
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i;
    /// The 32 values of chunk `ib` with their signs, as i8 (at most 62
    /// in magnitude), for the tile kernels.
    ///
    /// # Safety
    /// As [`Lattice::chunk`].
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i;
    /// The multipliers `2*ls + 1` of the block's 16 runs of 16 values
    /// (two per chunk, the first for values 0..16).
    fn multipliers(xb: &[u8]) -> [i16; 16];
}

/// The dot product's end: `FACTOR * sum` (or `sum`).
#[inline(always)]
pub(super) fn finish<L: Lattice>(sum: f32) -> f32 {
    match L::FACTOR {
        Some(f) => f * sum,
        None => sum,
    }
}

/// Multipliers of chunks whose two halves share one 4-bit scale.
#[inline(always)]
fn shared_multipliers(ls: impl Fn(usize) -> u32) -> [i16; 16] {
    std::array::from_fn(|j| (2 * ls(j / 2) + 1) as i16)
}

/// Multipliers of chunks with one scale byte each, the low nibble for
/// the first half.
#[inline(always)]
fn nibble_multipliers(sc: &[u8]) -> [i16; 16] {
    std::array::from_fn(|j| (2 * ((sc[j / 2] >> (4 * (j % 2))) & 0xf) + 1) as i16)
}

/// `grid` negated where `neg` is -1 (0 elsewhere).
#[inline(always)]
unsafe fn apply_neg(grid: __m256i, neg: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe { _mm256_sub_epi8(_mm256_xor_si256(grid, neg), neg) }
}

/// The shared loop of the lattice kernels: per super-block,
/// `fma(dx * dy, lanes, acc)` with `lanes` the sum of the eight chunks'
/// lanes (in two accumulators, as ggml keeps them); at the end
/// `hsum_float_8`.
#[inline(always)]
unsafe fn dot_lattice<L: Lattice>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: AVX2, FMA and F16C are enabled in every caller; blocks are
    // whole (chunks_exact), so every 32-byte load of activations is in
    // the block's 256 values.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in w
            .chunks_exact(L::BYTES)
            .zip(a.chunks_exact(Q8K))
            .take(n / 256)
        {
            let d = read_f16(&xb[0..2]) * q8k_d(yb);
            let q8 = &yb[4..260];
            let mut sumi1 = _mm256_setzero_si256();
            let mut sumi2 = _mm256_setzero_si256();
            for ib in (0..8).step_by(2) {
                sumi1 = _mm256_add_epi32(sumi1, L::chunk(xb, ib, load32(&q8[32 * ib..])));
                sumi2 = _mm256_add_epi32(sumi2, L::chunk(xb, ib + 1, load32(&q8[32 * ib + 32..])));
            }
            let lanes = _mm256_add_epi32(sumi1, sumi2);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
        }
        hsum8(&store8(acc))
    }
}

/// The little-endian u32 at `xb[at..at + 4]`.
#[inline(always)]
fn u32_at(xb: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([xb[at], xb[at + 1], xb[at + 2], xb[at + 3]])
}

/// Chunk `ib` of an IQ2_XXS block: four 8-bit grid indices, then a u32 of
/// four 7-bit sign fields and the scale in its top 4 bits.
pub(super) struct Iq2Xxs;

impl Iq2Xxs {
    /// The chunk's grid points and its signs and scale word.
    #[inline(always)]
    unsafe fn parts(xb: &[u8], ib: usize) -> (__m256i, u32) {
        let q = &xb[2 + 8 * ib..10 + 8 * ib];
        let g = |l: usize| IQ2XXS_GRID[usize::from(q[l])] as i64;
        // SAFETY: AVX is enabled in every caller.
        let grid = unsafe { _mm256_set_epi64x(g(3), g(2), g(1), g(0)) };
        (grid, u32_at(q, 4))
    }
}

impl Lattice for Iq2Xxs {
    const BYTES: usize = 66;
    const FACTOR: Option<f32> = Some(0.125);

    #[inline(always)]
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, aux) = Self::parts(xb, ib);
            let ls = aux >> 28;
            signed_lanes(grid, q8, even_signs(aux), odd_scales(ls, ls))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, aux) = Self::parts(xb, ib);
            _mm256_sign_epi8(grid, even_signs(aux))
        }
    }

    fn multipliers(xb: &[u8]) -> [i16; 16] {
        shared_multipliers(|ib| u32_at(xb, 6 + 8 * ib) >> 28)
    }
}

/// Chunk `ib` of an IQ2_XS block: four u16 of a 9-bit grid index and a
/// 7-bit sign field; the scale byte holds the codes of both halves.
pub(super) struct Iq2Xs;

impl Iq2Xs {
    /// The chunk's grid points and their ±1 sign bytes.
    #[inline(always)]
    unsafe fn parts(xb: &[u8], ib: usize) -> (__m256i, __m256i) {
        let q = |l: usize| u16::from_le_bytes([xb[2 + 8 * ib + 2 * l], xb[3 + 8 * ib + 2 * l]]);
        let g = |l: usize| IQ2XS_GRID[usize::from(q(l) & 511)] as i64;
        let s = |l: usize| KEVEN_SIGNS[usize::from(q(l) >> 9)] as i64;
        // SAFETY: AVX is enabled in every caller.
        unsafe {
            (
                _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
            )
        }
    }
}

impl Lattice for Iq2Xs {
    const BYTES: usize = 74;
    const FACTOR: Option<f32> = Some(0.125);

    #[inline(always)]
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i {
        let sc = u32::from(xb[66 + ib]);
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, signs) = Self::parts(xb, ib);
            signed_lanes(grid, q8, signs, odd_scales(sc & 0xf, sc >> 4))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, signs) = Self::parts(xb, ib);
            _mm256_sign_epi8(grid, signs)
        }
    }

    fn multipliers(xb: &[u8]) -> [i16; 16] {
        nibble_multipliers(&xb[66..74])
    }
}

/// Chunk `ib` of an IQ2_S block: four 10-bit grid indices (the high bits
/// in `qh[ib]`), four bytes of explicit signs, the scale byte of both
/// halves.
pub(super) struct Iq2S;

impl Iq2S {
    /// The chunk's grid points and its negative mask.
    #[inline(always)]
    unsafe fn parts(xb: &[u8], ib: usize) -> (__m256i, __m256i) {
        let (qs, qh) = (&xb[2 + 4 * ib..6 + 4 * ib], usize::from(xb[66 + ib]));
        let g = |l: usize| IQ2S_GRID[usize::from(qs[l]) | ((qh << (8 - 2 * l)) & 0x300)] as i64;
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            (
                _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                sign_bytes(&xb[34 + 4 * ib..38 + 4 * ib]),
            )
        }
    }
}

impl Lattice for Iq2S {
    const BYTES: usize = 82;
    const FACTOR: Option<f32> = Some(0.125);

    #[inline(always)]
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i {
        let sc = u32::from(xb[74 + ib]);
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, neg) = Self::parts(xb, ib);
            masked_lanes(grid, q8, neg, odd_scales(sc & 0xf, sc >> 4))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, neg) = Self::parts(xb, ib);
            apply_neg(grid, neg)
        }
    }

    fn multipliers(xb: &[u8]) -> [i16; 16] {
        nibble_multipliers(&xb[74..82])
    }
}

/// Chunk `ib` of an IQ3_XXS block: eight 8-bit indices of 4-value grid
/// points, then (after all 64 indices) a u32 of four 7-bit sign fields and
/// the scale.
pub(super) struct Iq3Xxs;

impl Iq3Xxs {
    /// The chunk's grid points and its signs and scale word.
    #[inline(always)]
    unsafe fn parts(xb: &[u8], ib: usize) -> (__m256i, u32) {
        let qs = &xb[2 + 8 * ib..10 + 8 * ib];
        let g = |k: usize| IQ3XXS_GRID[usize::from(qs[k])] as i32;
        // SAFETY: AVX is enabled in every caller.
        let grid = unsafe { _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0)) };
        (grid, u32_at(xb, 66 + 4 * ib))
    }
}

impl Lattice for Iq3Xxs {
    const BYTES: usize = 98;
    const FACTOR: Option<f32> = Some(0.25);

    #[inline(always)]
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, aux) = Self::parts(xb, ib);
            let ls = aux >> 28;
            signed_lanes(grid, q8, even_signs(aux), odd_scales(ls, ls))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, aux) = Self::parts(xb, ib);
            _mm256_sign_epi8(grid, even_signs(aux))
        }
    }

    fn multipliers(xb: &[u8]) -> [i16; 16] {
        shared_multipliers(|ib| u32_at(xb, 66 + 4 * ib) >> 28)
    }
}

/// Chunk `ib` of an IQ3_S block: eight 9-bit indices of 4-value grid
/// points (the ninth bits in `qh[ib]`, bit `k` for index `k`), four bytes
/// of explicit signs, a 4-bit scale (two chunks per byte).
pub(super) struct Iq3S;

impl Iq3S {
    /// The chunk's grid points and its negative mask.
    #[inline(always)]
    unsafe fn parts(xb: &[u8], ib: usize) -> (__m256i, __m256i) {
        let (qs, qh) = (&xb[2 + 8 * ib..10 + 8 * ib], usize::from(xb[66 + ib]));
        let g = |k: usize| IQ3S_GRID[usize::from(qs[k]) | ((qh << (8 - k)) & 256)] as i32;
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            (
                _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0)),
                sign_bytes(&xb[74 + 4 * ib..78 + 4 * ib]),
            )
        }
    }

    /// The 4-bit scale of chunk `ib`.
    #[inline(always)]
    fn ls(xb: &[u8], ib: usize) -> u32 {
        u32::from(xb[106 + ib / 2] >> (4 * (ib % 2))) & 0xf
    }
}

impl Lattice for Iq3S {
    const BYTES: usize = 110;
    const FACTOR: Option<f32> = None;

    #[inline(always)]
    unsafe fn chunk(xb: &[u8], ib: usize, q8: __m256i) -> __m256i {
        let ls = Self::ls(xb, ib);
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, neg) = Self::parts(xb, ib);
            masked_lanes(grid, q8, neg, odd_scales(ls, ls))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: &[u8], ib: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe {
            let (grid, neg) = Self::parts(xb, ib);
            apply_neg(grid, neg)
        }
    }

    fn multipliers(xb: &[u8]) -> [i16; 16] {
        shared_multipliers(|ib| Self::ls(xb, ib))
    }
}

/// `ggml_vec_dot_iq2_xxs_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq2_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 66 bytes.
    finish::<Iq2Xxs>(unsafe { dot_lattice::<Iq2Xxs>(n, w, a) })
}

/// `ggml_vec_dot_iq2_xs_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq2_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 74 bytes.
    finish::<Iq2Xs>(unsafe { dot_lattice::<Iq2Xs>(n, w, a) })
}

/// `ggml_vec_dot_iq2_s_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq2_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 82 bytes.
    finish::<Iq2S>(unsafe { dot_lattice::<Iq2S>(n, w, a) })
}

/// `ggml_vec_dot_iq3_xxs_q8_K`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq3_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 98 bytes.
    finish::<Iq3Xxs>(unsafe { dot_lattice::<Iq3Xxs>(n, w, a) })
}

/// `ggml_vec_dot_iq3_s_q8_K` (no final factor).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq3_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are 110 bytes.
    finish::<Iq3S>(unsafe { dot_lattice::<Iq3S>(n, w, a) })
}

/// The 32 doubled E2M1 levels of 16 MXFP4 code bytes: low nibbles, then
/// high ones.
#[inline(always)]
unsafe fn fp4_values(b: &[u8]) -> __m256i {
    debug_assert!(b.len() >= 16);
    // SAFETY: the table and `b` hold 16 bytes; AVX2 is enabled in every
    // caller.
    unsafe {
        let t = _mm_loadu_si128(KVALUES_FP4.as_ptr() as *const __m128i);
        let q = _mm_loadu_si128(b.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0x0f);
        let lo = _mm_shuffle_epi8(t, _mm_and_si128(q, m4));
        let hi = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16::<4>(q), m4));
        _mm256_set_m128i(hi, lo)
    }
}

/// `ggml_vec_dot_mxfp4_q8_0`: pairs of blocks into two accumulators
/// (`fma(d, lanes, acc)`), added lane-wise before the fold; an odd last
/// block added as `sumf += d * sumi` with exact products.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (w, a) = (&w[..17 * nb], &a[..34 * nb]);
    let scale = |xb: &[u8], yb: &[u8]| read_f16(&yb[0..2]) * e8m0_to_f32_half(xb[0]);
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 17 bytes of weights, 34 of activations).
    let mut sumf = unsafe {
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        for (xp, yp) in w.chunks_exact(34).zip(a.chunks_exact(68)) {
            let (x1, x2) = xp.split_at(17);
            let (y1, y2) = yp.split_at(34);
            let l1 = lanes_i8(fp4_values(&x1[1..17]), load32(&y1[2..34]));
            let l2 = lanes_i8(fp4_values(&x2[1..17]), load32(&y2[2..34]));
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale(x1, y1)), _mm256_cvtepi32_ps(l1), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_set1_ps(scale(x2, y2)), _mm256_cvtepi32_ps(l2), acc2);
        }
        hsum8(&store8(_mm256_add_ps(acc1, acc2)))
    };
    if nb % 2 == 1 {
        let (xb, yb) = (&w[17 * (nb - 1)..], &a[34 * (nb - 1)..]);
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(KVALUES_FP4[usize::from(xb[1 + j] & 0xf)]);
            let hi = i32::from(KVALUES_FP4[usize::from(xb[1 + j] >> 4)]);
            sumi += lo * i32::from(yb[2 + j] as i8) + hi * i32::from(yb[18 + j] as i8);
        }
        sumf += scale(xb, yb) * sumi as f32;
    }
    sumf
}

/// Signed weights times activations as `mul_add_epi8` forms them (`x`'s
/// sign moved onto `y`, which keeps -128), pair sums times `scales`.
#[inline(always)]
unsafe fn scaled_sign_lanes(x: __m256i, y: __m256i, scales: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        _mm256_madd_epi16(p, scales)
    }
}

/// `ggml_vec_dot_iq1_s_q8_K`: the grid part in eight lanes times each
/// sub-block's odd scale, `fma(d, lanes, acc)` per block; the deltas
/// through the activations' block sums into a scalar `fma`; at the end
/// `hsum_float_8(acc) + 1/8 * acc_delta`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq1_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    use crate::ggml::reference::iq1_tables::IQ1S_GRID;
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 50 bytes of weights, 292 of activations).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut acc_delta = 0f32;
        for (xb, yb) in w.chunks_exact(50).zip(a.chunks_exact(Q8K)).take(n / 256) {
            let q8 = &yb[4..260];
            let bsum = |j: usize| i32::from(i16::from_le_bytes([yb[260 + 2 * j], yb[261 + 2 * j]]));
            let mut sumi = _mm256_setzero_si256();
            let mut sumi_delta = 0i32;
            for ib in 0..8 {
                let qh = u16::from_le_bytes([xb[34 + 2 * ib], xb[35 + 2 * ib]]);
                let qs = &xb[2 + 4 * ib..6 + 4 * ib];
                let g = |l: usize| {
                    IQ1S_GRID[usize::from(qs[l]) | (usize::from((qh >> (3 * l)) & 7) << 8)] as i64
                };
                let ls = 2 * i32::from((qh >> 12) & 7) + 1;
                let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
                let scales = _mm256_set1_epi16(ls as i16);
                let p = scaled_sign_lanes(grid, load32(&q8[32 * ib..]), scales);
                sumi = _mm256_add_epi32(sumi, p);
                let sign = if qh & 0x8000 != 0 { -1 } else { 1 };
                sumi_delta += (bsum(2 * ib) + bsum(2 * ib + 1)) * sign * ls;
            }
            let d = q8k_d(yb) * read_f16(&xb[0..2]);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            acc_delta = d.mul_add(sumi_delta as f32, acc_delta);
        }
        hsum8(&store8(acc)) + 0.125 * acc_delta
    }
}

/// `ggml_vec_dot_iq1_m_q8_K`: two sets of eight lanes, the grid part and
/// the delta part (the activations with each 8 values' delta sign applied
/// by `_mm256_sign_epi8`), both times the 16-value odd scales, each with
/// `fma(d, lanes, acc)` per block; at the end `fma(hsum(acc_delta), 1/8,
/// hsum(acc))`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq1_m_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    use crate::ggml::reference::iq1_tables::IQ1S_GRID;
    use crate::ggml::reference::iq1m_d;
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 56 bytes of weights, 292 of activations).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut acc_delta = _mm256_setzero_ps();
        let ones = _mm256_set1_epi8(1);
        for (xb, yb) in w.chunks_exact(56).zip(a.chunks_exact(Q8K)).take(n / 256) {
            let q8 = &yb[4..260];
            let mut sumi = _mm256_setzero_si256();
            let mut sumi_delta = _mm256_setzero_si256();
            for ib in 0..8 {
                let qs = &xb[4 * ib..4 * ib + 4];
                let qh = &xb[32 + 2 * ib..34 + 2 * ib];
                // Even groups take bits 0-3 of their qh byte (3 index bits
                // and the delta sign), odd groups bits 4-7.
                let g = |l: usize| {
                    let h = usize::from(qh[l / 2]) << (8 - 4 * (l % 2));
                    IQ1S_GRID[usize::from(qs[l]) | (h & 0x700)] as i64
                };
                let delta = |l: usize| {
                    let negative = qh[l / 2] & (0x08 << (4 * (l % 2))) != 0;
                    if negative {
                        -1i64
                    } else {
                        0x0101_0101_0101_0101
                    }
                };
                let word = u16::from_le_bytes([xb[48 + 2 * (ib / 2)], xb[49 + 2 * (ib / 2)]]);
                let shift = 6 * (ib % 2);
                let scales = odd_scales(
                    u32::from((word >> shift) & 7),
                    u32::from((word >> (shift + 3)) & 7),
                );
                let y = load32(&q8[32 * ib..]);
                let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
                sumi = _mm256_add_epi32(sumi, scaled_sign_lanes(grid, y, scales));
                let deltas = _mm256_set_epi64x(delta(3), delta(2), delta(1), delta(0));
                let p = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(y, deltas));
                sumi_delta = _mm256_add_epi32(sumi_delta, _mm256_madd_epi16(p, scales));
            }
            let d = _mm256_set1_ps(q8k_d(yb) * iq1m_d(xb));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
            acc_delta = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi_delta), acc_delta);
        }
        hsum8(&store8(acc_delta)).mul_add(0.125, hsum8(&store8(acc)))
    }
}

/// The ternary kernels' end of block: the i16 code-times-activation sums
/// `sumi` (wrapping, as ggml's 16-bit sums) less the block sums, widened
/// in pairs by `madd(.., 1)`, then `acc = fma(lanes, d, acc)` with `d =
/// d_act * d_w` (GCC contracts ggml's `add(mul(..))` into one FMA).
#[inline(always)]
unsafe fn ternary_block(sumi: __m256i, yb: &[u8], dw: f32, acc: __m256) -> __m256 {
    // SAFETY: AVX2 and FMA are enabled in every caller; `yb` is a whole
    // Q8_K block, whose 16 i16 sums are its last 32 bytes.
    unsafe {
        let s = _mm256_sub_epi16(sumi, load32(&yb[260..292]));
        let lanes = _mm256_madd_epi16(s, _mm256_set1_epi16(1));
        let d = _mm256_set1_ps(q8k_d(yb) * dw);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), d, acc)
    }
}

/// `ggml_vec_dot_tq2_0_q8_K`: the 2-bit codes (value + 1) times the
/// activations by `maddubs` into sixteen wrapping i16 lanes, then
/// [`ternary_block`]; at the end `hsum_float_8`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_tq2_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 66 bytes of weights, 292 of activations).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let m3 = _mm256_set1_epi8(3);
        for (xb, yb) in w.chunks_exact(66).zip(a.chunks_exact(Q8K)).take(n / 256) {
            let q8 = &yb[4..260];
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                // Byte m of half j holds values 128j + 32l + m at bits 2l.
                let q = load32(&xb[32 * j..]);
                let codes = [
                    _mm256_and_si256(q, m3),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                ];
                for (l, c) in codes.into_iter().enumerate() {
                    let y = load32(&q8[128 * j + 32 * l..]);
                    sumi = _mm256_add_epi16(sumi, _mm256_maddubs_epi16(c, y));
                }
            }
            acc = ternary_block(sumi, yb, read_f16(&xb[64..66]), acc);
        }
        hsum8(&store8(acc))
    }
}

/// Bytes times 9 modulo 256 (`(b << 3) + b` per byte).
#[inline(always)]
unsafe fn times9(b: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let b8 = _mm256_and_si256(_mm256_slli_epi16::<3>(b), _mm256_set1_epi8(-8));
        _mm256_add_epi8(b8, b)
    }
}

/// The trits of shifted TQ1_0 bytes `q = b * 3^n mod 256`, as ggml's
/// AVX2 kernel takes them: `subs_epu8(q, 1)`, `avg(q', avg(q', 0))`
/// (about `1.5 q'`), the top two bits.
#[inline(always)]
unsafe fn trits(q: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let q = _mm256_subs_epu8(q, _mm256_set1_epi8(1));
        let q = _mm256_avg_epu8(q, _mm256_avg_epu8(q, _mm256_setzero_si256()));
        _mm256_and_si256(_mm256_srli_epi16::<6>(q), _mm256_set1_epi8(3))
    }
}

/// `ggml_vec_dot_tq1_0_q8_K`: five trits per byte (values `b * 3^n`,
/// `n = 0..5`, read by [`trits`]) from 32 + 16 bytes, four per byte from
/// the last 4, then as TQ2_0.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_tq1_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 54 bytes of weights, 292 of activations).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in w.chunks_exact(54).zip(a.chunks_exact(Q8K)).take(n / 256) {
            let q8 = &yb[4..260];
            let mut sumi = _mm256_setzero_si256();
            // Values 32n + m (n < 5) from byte m of the first 32.
            let b = load32(xb);
            let b3 = _mm256_add_epi8(b, _mm256_add_epi8(b, b));
            let b9 = times9(b);
            let pows = [b, b3, b9, times9(b3), times9(b9)];
            for (k, q) in pows.into_iter().enumerate() {
                let y = load32(&q8[32 * k..]);
                sumi = _mm256_add_epi16(sumi, _mm256_maddubs_epi16(trits(q), y));
            }
            // Values 160 + 16n + m from byte 32 + m, and 240 + 4n + m from
            // byte 48 + m (n < 4).
            let b = _mm256_castsi128_si256(_mm_loadu_si128(xb[32..48].as_ptr() as *const __m128i));
            let b3 = _mm256_add_epi8(b, _mm256_add_epi8(b, b));
            let b9 = times9(b);
            let b27 = times9(b3);
            let b81 = times9(b9);
            let qh = i32::from_le_bytes([xb[48], xb[49], xb[50], xb[51]]);
            let h = _mm256_mullo_epi16(
                _mm256_cvtepu8_epi16(_mm_set1_epi32(qh)),
                _mm256_set_epi16(27, 27, 27, 27, 9, 9, 9, 9, 3, 3, 3, 3, 1, 1, 1, 1),
            );
            let h = _mm256_and_si256(h, _mm256_set1_epi16(0xff));
            let h = _mm_packus_epi16(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let pairs = [
                _mm256_inserti128_si256::<1>(b, _mm256_castsi256_si128(b3)),
                _mm256_inserti128_si256::<1>(b9, _mm256_castsi256_si128(b27)),
                _mm256_inserti128_si256::<1>(b81, h),
            ];
            for (k, q) in pairs.into_iter().enumerate() {
                let y = load32(&q8[160 + 32 * k..]);
                sumi = _mm256_add_epi16(sumi, _mm256_maddubs_epi16(trits(q), y));
            }
            acc = ternary_block(sumi, yb, read_f16(&xb[52..54]), acc);
        }
        hsum8(&store8(acc))
    }
}

/// `ggml_vec_dot_nvfp4_q8_0`: one NVFP4 block (four sub-blocks of 16)
/// against two Q8_0 blocks; lanes 0-3 of each Q8_0 block take one
/// sub-block, lanes 4-7 the next, each with its own scale `ue4m3 * d_act`;
/// two FMAs per block into one accumulator, then `hsum_float_8`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_nvfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    use crate::ggml::reference::ue4m3_to_f32;
    // SAFETY: the features are enabled here; blocks are whole
    // (chunks_exact: 36 bytes of weights, two 34-byte Q8_0 blocks).
    unsafe {
        let t = _mm_loadu_si128(KVALUES_FP4.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in w.chunks_exact(36).zip(a.chunks_exact(68)).take(n / 64) {
            for h in 0..2 {
                let ya = &yb[34 * h..34 * h + 34];
                // Sub-blocks 2h and 2h+1: 8 bytes each, the first 8 values
                // in the low nibbles.
                let q = _mm_loadu_si128(xb[4 + 16 * h..20 + 16 * h].as_ptr() as *const __m128i);
                let lo = _mm_shuffle_epi8(t, _mm_and_si128(q, m4));
                let hi = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16::<4>(q), m4));
                let x = _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
                let lanes = lanes_i8(x, load32(&ya[2..34]));
                let dy = read_f16(&ya[0..2]);
                let s0 = ue4m3_to_f32(xb[2 * h]) * dy;
                let s1 = ue4m3_to_f32(xb[2 * h + 1]) * dy;
                let scales = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
                acc = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(lanes), acc);
            }
        }
        hsum8(&store8(acc))
    }
}
