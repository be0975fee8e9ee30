//! Register-blocked dot products of several quantized weight rows with
//! several quantized activation rows (a tile of `R` rows x `T` tokens per
//! call), the hot loop of prompt processing.
//!
//! Each output equals `ggml::reference::vec_dot` of its (row, token) pair
//! bit for bit: the kernels form the same exact integer lane sums (lane k
//! of a 32-value chunk holds the products of values 4k..4k+3; integers are
//! exact in any order) and then do the reference's float arithmetic per
//! pair in its order (`fma(d, lane, acc)` per block into eight lanes,
//! `hsum_float_8` at the end). What the tile saves is everything around
//! that: a weight block is unpacked once for `T` tokens, an activation
//! block loaded once for `R` rows, the block scales converted for the
//! whole tile at once.
//!
//! Integer products come from one of two strategies ([`IntDot`]): AVX2
//! (`maddubs` + `madd`, as ggml's kernels) or AVX-512 VNNI (`vpdpbusd`,
//! `vpdpwssd` on 256-bit registers; the Q8_0 family runs two tokens per
//! 512-bit register instead, [`q0_batch_pairs`]). `vpdpbusd` multiplies
//! unsigned by signed bytes; signed weights `w` are fed as `u = w + OFF`
//! and the offset taken back through the activations' own lane sums:
//! `sum(w*y) = sum(u*y) - OFF*sum(y)`, all exact in i32.

// Kernels index rows, tokens and lanes in lockstep, as the reference does.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dot_iq_x86::{finish, Iq2S, Iq2Xs, Iq2Xxs, Iq3S, Iq3Xxs, Lattice};

/// 32 bytes at `p`.
#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the callers pass pointers with 32 readable bytes; the load
    // is unaligned.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// The little-endian u16 at `p`.
#[inline(always)]
unsafe fn read_u16(p: *const u8) -> u16 {
    // SAFETY: the callers pass pointers with 2 readable bytes.
    u16::from_le(unsafe { (p as *const u16).read_unaligned() })
}

/// The little-endian f32 at `p`.
#[inline(always)]
unsafe fn read_f32(p: *const u8) -> f32 {
    // SAFETY: the callers pass pointers with 4 readable bytes.
    f32::from_bits(u32::from_le(unsafe { (p as *const u32).read_unaligned() }))
}

/// Eight f16 values (as bits) widened to f32.
#[inline(always)]
unsafe fn f16x8v(h: &[u16; 8]) -> __m256 {
    // SAFETY: F16C is enabled in every caller; `h` holds 8 u16, read
    // unaligned.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)) }
}

/// [`f16x8v`] as an array.
#[inline(always)]
unsafe fn f16x8(h: &[u16; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: F16C is enabled in every caller; `out` holds 8 f32, written
    // unaligned.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), f16x8v(h)) };
    out
}

/// `hsum_float_8`: `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
#[inline(always)]
unsafe fn hsum8(v: __m256) -> f32 {
    let mut a = [0f32; 8];
    // SAFETY: `a` holds 8 f32; the store is unaligned.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The four lanes of an xmm register.
#[inline(always)]
unsafe fn lanes4(v: __m128) -> [f32; 4] {
    let mut a = [0f32; 4];
    // SAFETY: `a` holds 4 f32; the store is unaligned.
    unsafe { _mm_storeu_ps(a.as_mut_ptr(), v) };
    a
}

/// 16 packed bytes of 4-bit codes to 32 bytes: low nibbles (values 0..15)
/// then high nibbles (values 16..31), as Q4_0/Q4_1/Q5_0/Q5_1 store them.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes at `p` (the callers' block layouts); AVX2
    // is enabled in every caller.
    unsafe {
        let lo = _mm_loadu_si128(p as *const __m128i);
        let hi = _mm_srli_epi16::<4>(lo);
        _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
    }
}

/// 0x10 in byte e where bit e of the little-endian u32 at `p` is set
/// (the fifth bit of Q5_0/Q5_1 values).
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    // SAFETY: 4 readable bytes at `p`; AVX2 is enabled in every caller.
    unsafe {
        let qh = (p as *const i32).read_unaligned();
        // Byte e gets byte e/8 of qh, then its bit e%8 is tested.
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(i32::from_le(qh)), shuf);
        let bits = _mm256_cmpeq_epi8(
            _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
            _mm256_set1_epi64x(-1),
        );
        _mm256_and_si256(bits, _mm256_set1_epi8(0x10))
    }
}

/// How far past the end of a single-token tile its weights are
/// prefetched.
///
/// A tile of several rows reads several short runs of memory at once
/// (rows are a few hundred bytes), which the hardware prefetchers do not
/// follow: measured on a Zen 4 EPYC, an 8-row tile over a 30 MB Q8_0
/// matrix ran at a quarter of one-row `vec_dot`'s speed without this, and
/// 1.6x faster with it.
const PREFETCH_AHEAD: usize = 4096;

/// Prefetches step `step` of the bytes [`PREFETCH_AHEAD`] past the end of
/// a tile (`pf` points there): each block step of the tile covers `span` bytes of
/// weights (its blocks of every row), so prefetching `span` bytes per step
/// keeps pace with the tile and covers memory without gaps. `pf` is null
/// when there is nothing to prefetch.
#[inline(always)]
unsafe fn prefetch_ahead(pf: *const u8, step: usize, span: usize) {
    if pf.is_null() {
        return;
    }
    let p = pf.wrapping_add(step * span);
    let mut off = 0;
    while off < span {
        // SAFETY: a prefetch is a hint and never faults, whatever the
        // address; SSE is implied by every caller's features.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8) };
        off += 64;
    }
}

/// How integer lane sums are formed.
pub(super) trait IntDot {
    /// Whether this is the VNNI strategy (unsigned x signed bytes of any
    /// magnitude; AVX2's `maddubs` saturates beyond 2 * 127 * 128).
    const VNNI: bool;
    /// `acc` plus, per i32 lane, the sum of 4 products of unsigned bytes
    /// `u` and signed bytes `y`. AVX2 needs `u <= 127`.
    unsafe fn dot_u8(acc: __m256i, u: __m256i, y: __m256i) -> __m256i;
    /// `acc` plus, per i32 lane, the sum of 2 products of i16 values.
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// `maddubs` + `madd` (AVX2).
pub(super) struct Avx2;

/// `vpdpbusd` / `vpdpwssd` (AVX-512 VNNI + VL).
pub(super) struct Vnni;

impl IntDot for Avx2 {
    const VNNI: bool = false;

    #[inline(always)]
    unsafe fn dot_u8(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller. The callers keep u <=
        // 127, so maddubs' pair sums stay inside i16.
        unsafe {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, p)
        }
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
}

impl IntDot for Vnni {
    const VNNI: bool = true;

    #[inline(always)]
    unsafe fn dot_u8(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL are enabled in every caller.
        unsafe { _mm256_dpbusd_epi32(acc, u, y) }
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL are enabled in every caller.
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }
}

/// One tile: `R` weight rows (pointers to their first block) times `T`
/// activation rows, `n` values each; `out[r][t]` gets the dot product.
pub(super) trait TileKernel {
    /// Whether blocks hold 256 values (K-quants): single tokens then get
    /// fewer rows per tile, as there is little to share between rows.
    const SUPER_BLOCKS: bool = false;
    /// Bytes of a weight row of `n` values.
    fn row_bytes(n: usize) -> usize;
    /// Computes the tile.
    ///
    /// # Safety
    /// The pointers must address whole rows of `n` values (of the weight
    /// type and of its activation type), `n` a multiple of the block size,
    /// and the CPU must support the features of `D` (plus AVX2, FMA, F16C).
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    );
}

// ---------------------------------------------------------------------
// Q4_0, Q5_0, Q8_0 with Q8_0 activations.

/// A weight type of the Q8_0 family: blocks of 32, f16 scale first.
trait Q0Block {
    /// Bytes per block.
    const BYTES: usize;
    /// log2 of the offset that makes the values unsigned.
    const SHIFT: i64;
    /// Whether the values are full signed bytes (Q8_0): AVX2 then uses
    /// ggml's sign trick instead of the offset.
    const FULL_BYTES: bool;
    /// The block's 32 values plus the offset, as unsigned bytes.
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i;
    /// The block's 32 values as signed bytes (types with `FULL_BYTES`).
    unsafe fn signed(_xb: *const u8) -> __m256i {
        unreachable!("only types with FULL_BYTES take the sign trick")
    }
    /// Whether the reference alternates blocks between two accumulators,
    /// adds them lane-wise before the fold and adds an odd last block in
    /// scalar (IQ4_NL, MXFP4).
    const ALTERNATE: bool = false;
    /// The scalar part of an odd last block (types with `ALTERNATE`): the
    /// weight block `xb` against the activation block `yb`.
    fn last_block(_xb: &[u8], _yb: &[u8]) -> f32 {
        unreachable!("only types with ALTERNATE add a last block")
    }
    /// Whether the block opens with an E8M0 exponent (MXFP4) instead of
    /// an f16 scale.
    const E8M0: bool = false;
}

pub(super) struct Q4_0;
pub(super) struct Q5_0;
pub(super) struct Q8_0;

impl Q0Block for Q4_0 {
    const BYTES: usize = 18;
    const SHIFT: i64 = 3;
    const FULL_BYTES: bool = false;

    #[inline(always)]
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i {
        // SAFETY: an 18-byte block: codes at 2..18.
        unsafe { nibbles32(xb.add(2)) }
    }
}

impl Q0Block for Q5_0 {
    const BYTES: usize = 22;
    const SHIFT: i64 = 4;
    const FULL_BYTES: bool = false;

    #[inline(always)]
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i {
        // SAFETY: a 22-byte block: high bits at 2..6, codes at 6..22. The
        // VNNI strategy runs with AVX-512BW/VL: the high bits are a byte
        // mask as they are stored.
        unsafe {
            let hi = if D::VNNI {
                let qh = u32::from_le((xb.add(2) as *const u32).read_unaligned());
                _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10))
            } else {
                fifth_bits(xb.add(2))
            };
            _mm256_or_si256(nibbles32(xb.add(6)), hi)
        }
    }
}

impl Q0Block for Q8_0 {
    const BYTES: usize = 34;
    const SHIFT: i64 = 7;
    const FULL_BYTES: bool = true;

    #[inline(always)]
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i {
        // SAFETY: a 34-byte block: values at 2..34. XOR 0x80 adds 128.
        unsafe { _mm256_xor_si256(load32(xb.add(2)), _mm256_set1_epi8(-128)) }
    }

    #[inline(always)]
    unsafe fn signed(xb: *const u8) -> __m256i {
        // SAFETY: a 34-byte block: values at 2..34.
        unsafe { load32(xb.add(2)) }
    }
}

/// IQ4_NL: Q4_0's layout, the codes looked up in the non-linear table.
pub(super) struct Iq4Nl;

impl Q0Block for Iq4Nl {
    const BYTES: usize = 18;
    const SHIFT: i64 = 7;
    const FULL_BYTES: bool = true;
    const ALTERNATE: bool = true;

    #[inline(always)]
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i {
        use crate::ggml::reference::KVALUES_IQ4NL;
        // SAFETY: an 18-byte block: codes at 2..18. The table's values
        // plus 128 (XOR 0x80) are unsigned bytes.
        unsafe {
            let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            let t = _mm_xor_si128(t, _mm_set1_epi8(-128));
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(xb.add(2)))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: *const u8) -> __m256i {
        use crate::ggml::reference::KVALUES_IQ4NL;
        // SAFETY: an 18-byte block: codes at 2..18.
        unsafe {
            let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(xb.add(2)))
        }
    }

    fn last_block(xb: &[u8], yb: &[u8]) -> f32 {
        crate::ggml::reference::iq4_nl_last_block(xb, yb)
    }
}

/// MXFP4: an E8M0 exponent, then IQ4_NL's layout of 4-bit codes, looked
/// up in the doubled E2M1 levels. The reference's products of paired
/// blocks take ggml's sign trick (`mul_add_epi8`), which differs from the
/// exact products of the offset only for activations of -128, which the
/// Q8_0 quantizer never writes.
pub(super) struct Mxfp4;

impl Q0Block for Mxfp4 {
    const BYTES: usize = 17;
    const SHIFT: i64 = 7;
    const FULL_BYTES: bool = true;
    const ALTERNATE: bool = true;
    const E8M0: bool = true;

    #[inline(always)]
    unsafe fn unsigned<D: IntDot>(xb: *const u8) -> __m256i {
        use crate::ggml::reference::KVALUES_FP4;
        // SAFETY: a 17-byte block: codes at 1..17. The levels plus 128
        // (XOR 0x80) are unsigned bytes.
        unsafe {
            let t = _mm_loadu_si128(KVALUES_FP4.as_ptr() as *const __m128i);
            let t = _mm_xor_si128(t, _mm_set1_epi8(-128));
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(xb.add(1)))
        }
    }

    #[inline(always)]
    unsafe fn signed(xb: *const u8) -> __m256i {
        use crate::ggml::reference::KVALUES_FP4;
        // SAFETY: a 17-byte block: codes at 1..17.
        unsafe {
            let t = _mm_loadu_si128(KVALUES_FP4.as_ptr() as *const __m128i);
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(xb.add(1)))
        }
    }

    fn last_block(xb: &[u8], yb: &[u8]) -> f32 {
        crate::ggml::reference::mxfp4_last_block(xb, yb)
    }
}

impl<B: Q0Block> TileKernel for B {
    fn row_bytes(n: usize) -> usize {
        n / 32 * B::BYTES
    }

    #[inline(always)]
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    ) {
        const { assert!(R <= 8 && T <= 8) };
        let sign_trick = B::FULL_BYTES && !D::VNNI;
        let nb = n / 32;
        // SAFETY: the caller's contract: n / 32 whole blocks behind every
        // pointer, the CPU features of D plus AVX2, FMA and F16C.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            // A second accumulator per pair for the odd blocks when B
            // alternates blocks (unused otherwise); both blocks of a pair
            // in one iteration, as `q0_batch` takes them.
            let mut acc_odd = [[_mm256_setzero_ps(); T]; R];
            let nb_tile = if B::ALTERNATE { nb & !1 } else { nb };
            let step = if B::ALTERNATE { 2 } else { 1 };
            let shift = _mm_set_epi64x(0, B::SHIFT);
            for b0 in (0..nb_tile).step_by(step) {
                for h in 0..step {
                    let b = b0 + h;
                    let odd = B::ALTERNATE && h == 1;
                    prefetch_ahead(pf, b, R * B::BYTES);
                    let mut v = [_mm256_setzero_si256(); R];
                    let dx = block_scales8::<B, R>(w, b);
                    for r in 0..R {
                        let xb = w[r].add(b * B::BYTES);
                        v[r] = if sign_trick {
                            B::signed(xb)
                        } else {
                            B::unsigned::<D>(xb)
                        };
                    }
                    let mut dyh = [0u16; 8];
                    for t in 0..T {
                        dyh[t] = read_u16(a[t].add(b * 34));
                    }
                    let dy = f16x8(&dyh);
                    for t in 0..T {
                        let y = load32(a[t].add(b * 34 + 2));
                        let mut d = [0f32; 8];
                        _mm256_storeu_ps(d.as_mut_ptr(), _mm256_mul_ps(dx, _mm256_set1_ps(dy[t])));
                        let zero = _mm256_setzero_si256();
                        let init = if sign_trick {
                            zero
                        } else {
                            let s = D::dot_u8(zero, _mm256_set1_epi8(1), y);
                            _mm256_sub_epi32(zero, _mm256_sll_epi32(s, shift))
                        };
                        for r in 0..R {
                            let lanes = if sign_trick {
                                let x = v[r];
                                let p = _mm256_maddubs_epi16(
                                    _mm256_sign_epi8(x, x),
                                    _mm256_sign_epi8(y, x),
                                );
                                _mm256_madd_epi16(p, _mm256_set1_epi16(1))
                            } else {
                                D::dot_u8(init, v[r], y)
                            };
                            let dl = _mm256_set1_ps(d[r]);
                            let l = _mm256_cvtepi32_ps(lanes);
                            if odd {
                                acc_odd[r][t] = _mm256_fmadd_ps(dl, l, acc_odd[r][t]);
                            } else {
                                acc[r][t] = _mm256_fmadd_ps(dl, l, acc[r][t]);
                            }
                        }
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = if B::ALTERNATE {
                        let mut v = hsum8(_mm256_add_ps(acc[r][t], acc_odd[r][t]));
                        if nb % 2 == 1 {
                            let y = std::slice::from_raw_parts(a[t], 34 * nb);
                            v += alternate_last::<B>(w[r], nb, y);
                        }
                        v
                    } else {
                        hsum8(acc[r][t])
                    };
                }
            }
        }
    }
}

/// `lo` and `hi` as the halves of one 512-bit register (a pair of
/// tokens); AVX-512F in every caller.
#[inline(always)]
unsafe fn join_i(lo: __m256i, hi: __m256i) -> __m512i {
    // SAFETY: AVX-512F per the callers.
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
}

/// [`join_i`] for f32 lanes.
#[inline(always)]
unsafe fn join_ps(lo: __m256, hi: __m256) -> __m512 {
    // SAFETY: AVX-512F per the callers.
    unsafe {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)),
            _mm256_castps_pd(hi),
        ))
    }
}

/// The halves of a pair register, low first.
#[inline(always)]
unsafe fn split_i(v: __m512i) -> (__m256i, __m256i) {
    // SAFETY: AVX-512F per the callers.
    unsafe { (_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)) }
}

/// [`split_i`] for f32 lanes.
#[inline(always)]
unsafe fn split_ps(v: __m512) -> (__m256, __m256) {
    // SAFETY: AVX-512F per the callers.
    unsafe {
        let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
        (_mm512_castps512_ps256(v), _mm256_castpd_ps(hi))
    }
}

/// The f16 scales that open each `bytes`-byte block of `R <= 8` rows,
/// widened to f32: `dx[8 * b + r]` for block `b` of row `r`.
///
/// # Safety
/// `nb` whole blocks behind every row pointer, `dx` at least `8 * nb`
/// values; F16C (every caller's features).
#[inline(always)]
unsafe fn row_scales<const R: usize>(
    rows: &[*const u8; R],
    nb: usize,
    bytes: usize,
    dx: &mut [f32],
) {
    debug_assert!(R <= 8 && dx.len() >= 8 * nb);
    for b in 0..nb {
        let mut h = [0u16; 8];
        for r in 0..R {
            // SAFETY: block b of row r is in bounds (the contract).
            h[r] = unsafe { read_u16(rows[r].add(b * bytes)) };
        }
        // SAFETY: 8 values at 8 * b fit in `dx`; F16C per the contract.
        unsafe { _mm256_storeu_ps(dx.as_mut_ptr().add(8 * b), f16x8v(&h)) };
    }
}

/// The scales of block `b` of `R <= 8` rows of `B` (f16, or E8M0
/// exponents) as f32 lanes, row `r` in lane `r`.
///
/// # Safety
/// Block `b` whole behind every row pointer; F16C (every caller's
/// features).
#[inline(always)]
unsafe fn block_scales8<B: Q0Block, const R: usize>(rows: &[*const u8; R], b: usize) -> __m256 {
    // SAFETY: the contract above.
    unsafe {
        if B::E8M0 {
            let mut e = [0f32; 8];
            for r in 0..R {
                e[r] = crate::ggml::reference::e8m0_to_f32_half(*rows[r].add(b * B::BYTES));
            }
            _mm256_loadu_ps(e.as_ptr())
        } else {
            let mut h = [0u16; 8];
            for r in 0..R {
                h[r] = read_u16(rows[r].add(b * B::BYTES));
            }
            f16x8v(&h)
        }
    }
}

/// [`row_scales`] for blocks of `B` ([`block_scales8`] per block).
///
/// # Safety
/// As [`row_scales`].
#[inline(always)]
unsafe fn block_scales<B: Q0Block, const R: usize>(
    rows: &[*const u8; R],
    nb: usize,
    dx: &mut [f32],
) {
    debug_assert!(R <= 8 && dx.len() >= 8 * nb);
    for b in 0..nb {
        // SAFETY: forwarded contract; 8 values at 8 * b fit in `dx`.
        unsafe { _mm256_storeu_ps(dx.as_mut_ptr().add(8 * b), block_scales8::<B, R>(rows, b)) };
    }
}

/// Batches of tokens for the Q8_0 family and IQ4_NL (its alternating
/// accumulators as [`q0_batch_pairs`] keeps them) with AVX2 (VNNI takes
/// [`q0_batch_pairs`]), in two passes per tile so that
/// the per-pair work of a block is one integer dot product, one
/// conversion and one FMA: what depends on a token alone (its block
/// scales as f32, the offset's lane bias) is computed once per call, what
/// depends on a row alone (its block scales) once per group of rows, and
/// the `R x T` scale products of every block in a first pass over the
/// tile, read back by the second as broadcasts from memory.
///
/// # Safety
/// As [`drive`], with `B`'s row size.
#[inline(always)]
unsafe fn q0_batch<B: Q0Block, D: IntDot, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    const { assert!(R <= 8 && T <= 8) };
    let nb = n / 32;
    let wrb = nb * B::BYTES;
    let sign_trick = B::FULL_BYTES && !D::VNNI;
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    // SAFETY: the caller's contract: whole rows of n / 32 blocks behind
    // every row and token index below n_rows / n_tok, the CPU features.
    unsafe {
        let zero = _mm256_setzero_si256();
        let shift = _mm_set_epi64x(0, B::SHIFT);
        let mut dy = vec![0f32; n_tok * nb];
        let mut bias = vec![zero; if sign_trick { 0 } else { n_tok * nb }];
        for t in 0..n_tok {
            let at = a.as_ptr().add(t * arb);
            for b0 in (0..nb).step_by(8) {
                let mut h = [0u16; 8];
                for (i, h) in h.iter_mut().enumerate().take(nb - b0) {
                    *h = read_u16(at.add(34 * (b0 + i)));
                }
                let v = f16x8(&h);
                dy[t * nb + b0..t * nb + nb.min(b0 + 8)].copy_from_slice(&v[..nb.min(b0 + 8) - b0]);
            }
            if !sign_trick {
                for b in 0..nb {
                    let y = load32(at.add(34 * b + 2));
                    let s = D::dot_u8(zero, _mm256_set1_epi8(1), y);
                    bias[t * nb + b] = _mm256_sub_epi32(zero, _mm256_sll_epi32(s, shift));
                }
            }
        }
        let mut dx = vec![0f32; nb * 8];
        let mut dprod = vec![0f32; nb * T * 8];
        for r0 in (0..n_rows).step_by(R) {
            let rows: [*const u8; R] =
                std::array::from_fn(|i| w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb));
            block_scales::<B, R>(&rows, nb, &mut dx);
            for t0 in (0..n_tok).step_by(T) {
                let tk: [usize; T] = std::array::from_fn(|j| (t0 + j).min(n_tok - 1));
                let toks: [*const u8; T] = std::array::from_fn(|j| a.as_ptr().add(tk[j] * arb));
                for b in 0..nb {
                    let dxv = _mm256_loadu_ps(dx.as_ptr().add(8 * b));
                    for j in 0..T {
                        let d =
                            _mm256_mul_ps(dxv, _mm256_set1_ps(*dy.get_unchecked(tk[j] * nb + b)));
                        _mm256_storeu_ps(dprod.as_mut_ptr().add(8 * (b * T + j)), d);
                    }
                }
                // A second accumulator per pair for the odd blocks when B
                // alternates blocks (unused otherwise).
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut acc_odd = [[_mm256_setzero_ps(); T]; R];
                let nb_tile = if B::ALTERNATE { nb & !1 } else { nb };
                // Even and odd blocks in one iteration when B alternates
                // (as in `q0_batch_pairs`).
                let step = if B::ALTERNATE { 2 } else { 1 };
                for b0 in (0..nb_tile).step_by(step) {
                    for h in 0..step {
                        let b = b0 + h;
                        let odd = B::ALTERNATE && h == 1;
                        // Loops, not closures, around intrinsics: a closure
                        // does not inherit the caller's target features.
                        let mut v = [zero; R];
                        for r in 0..R {
                            let xb = rows[r].add(b * B::BYTES);
                            v[r] = if sign_trick {
                                B::signed(xb)
                            } else {
                                B::unsigned::<D>(xb)
                            };
                        }
                        for j in 0..T {
                            let y = load32(toks[j].add(34 * b + 2));
                            for r in 0..R {
                                let lanes = if sign_trick {
                                    let x = v[r];
                                    let p = _mm256_maddubs_epi16(
                                        _mm256_sign_epi8(x, x),
                                        _mm256_sign_epi8(y, x),
                                    );
                                    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
                                } else {
                                    D::dot_u8(*bias.get_unchecked(tk[j] * nb + b), v[r], y)
                                };
                                let d = _mm256_set1_ps(*dprod.get_unchecked(8 * (b * T + j) + r));
                                let l = _mm256_cvtepi32_ps(lanes);
                                if odd {
                                    acc_odd[r][j] = _mm256_fmadd_ps(d, l, acc_odd[r][j]);
                                } else {
                                    acc[r][j] = _mm256_fmadd_ps(d, l, acc[r][j]);
                                }
                            }
                        }
                    }
                }
                for r in 0..R.min(n_rows - r0) {
                    for j in 0..T.min(n_tok - t0) {
                        let t = t0 + j;
                        let mut v = if B::ALTERNATE {
                            hsum8(_mm256_add_ps(acc[r][j], acc_odd[r][j]))
                        } else {
                            hsum8(acc[r][j])
                        };
                        if B::ALTERNATE && nb % 2 == 1 {
                            v += alternate_last::<B>(rows[r], nb, &a[t * arb..(t + 1) * arb]);
                        }
                        *out.get_unchecked_mut(t * n_rows + r0 + r) = v;
                    }
                }
            }
        }
    }
}

/// The last block of an odd count for types that alternate accumulators
/// (IQ4_NL, MXFP4), which the reference adds in scalar after the fold: of
/// the row at `row` (`nb` blocks) against the token's Q8_0 row `y`.
///
/// # Safety
/// `row` must address the row's `nb` whole blocks.
#[inline(always)]
unsafe fn alternate_last<B: Q0Block>(row: *const u8, nb: usize, y: &[u8]) -> f32 {
    // SAFETY: block nb - 1 lies inside the row (the contract).
    let xb = unsafe { std::slice::from_raw_parts(row.add((nb - 1) * B::BYTES), B::BYTES) };
    B::last_block(xb, &y[34 * (nb - 1)..][..34])
}

/// The activation scales of token pairs for the pair tiles: per pair
/// and block, both tokens' f16 scales (at the start of each
/// `block_bytes`-byte block) as 8 lanes each; an odd last token pairs
/// with itself.
///
/// # Safety
/// `nb` whole blocks in each of the `n_tok` rows of `arb` bytes of `a`;
/// AVX-512F.
#[inline(always)]
unsafe fn pair_scales(
    a: &[u8],
    arb: usize,
    n_tok: usize,
    nb: usize,
    block_bytes: usize,
) -> Vec<__m512> {
    let n_pairs = n_tok.div_ceil(2);
    let mut dy = vec![_mm512_setzero_ps(); n_pairs * nb];
    for p in 0..n_pairs {
        let t = [2 * p, (2 * p + 1).min(n_tok - 1)];
        // SAFETY: the contract above.
        unsafe {
            let at = t.map(|t| a.as_ptr().add(t * arb));
            for b in 0..nb {
                let mut d = [_mm256_setzero_ps(); 2];
                for i in 0..2 {
                    let h = half::f16::from_bits(read_u16(at[i].add(block_bytes * b)));
                    d[i] = _mm256_set1_ps(h.to_f32());
                }
                dy[p * nb + b] = join_ps(d[0], d[1]);
            }
        }
    }
    dy
}

/// [`q0_batch`] for VNNI with two tokens per 512-bit register: lanes 0..8
/// hold a pair's first token and lanes 8..16 its second, each half the
/// very arithmetic [`q0_batch`] does in a 256-bit register (the same
/// integer lane sums, the same scale products, `fma` per lane into its
/// own accumulator), so the bits are the same; a weight block, unpacked
/// once, serves both halves. `P` pairs (`2 * P` tokens) per tile. The
/// scale products are formed in the loop, one multiply each: stored in a
/// first pass and read back, as `q0_batch` does, they took a third of
/// the time (measured on a Zen 5 EPYC: 80 against 120 GMAC/s per core).
///
/// # Safety
/// As [`drive`], with `B`'s row size; AVX-512 F/BW/VL and VNNI.
// A function of its own per type and shape, not inlined into
// `gemm_types`: inlined there, its rates moved by up to 25% with edits
// to other kernels of that function (measured on a Zen 5 EPYC: Q4_0
// 91-125, MXFP4 83-106 GMAC/s across builds that did not touch them).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q0_batch_pairs<B: Q0Block, const R: usize, const P: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    const { assert!(R <= 8 && P <= 8) };
    let nb = n / 32;
    let wrb = nb * B::BYTES;
    let n_pairs = n_tok.div_ceil(2);
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    // SAFETY: the caller's contract: whole rows of n / 32 blocks behind
    // every row and token index below n_rows / n_tok, the CPU features.
    unsafe {
        let zero = _mm256_setzero_si256();
        let shift = _mm_set_epi64x(0, B::SHIFT);
        // Per pair and block: both tokens' scales (8 lanes each) and
        // offset lane biases. An odd last token pairs with itself.
        let dy = pair_scales(a, arb, n_tok, nb, 34);
        let mut bias = vec![_mm512_setzero_si512(); n_pairs * nb];
        for p in 0..n_pairs {
            let t = [2 * p, (2 * p + 1).min(n_tok - 1)];
            let at = t.map(|t| a.as_ptr().add(t * arb));
            for b in 0..nb {
                // Loops, not closures, around intrinsics: a closure does
                // not inherit the caller's target features.
                let mut s = [zero; 2];
                for i in 0..2 {
                    let y = load32(at[i].add(34 * b + 2));
                    let sum = Vnni::dot_u8(zero, _mm256_set1_epi8(1), y);
                    s[i] = _mm256_sub_epi32(zero, _mm256_sll_epi32(sum, shift));
                }
                bias[p * nb + b] = join_i(s[0], s[1]);
            }
        }
        let mut dx = vec![0f32; nb * 8];
        for r0 in (0..n_rows).step_by(R) {
            let rows: [*const u8; R] =
                std::array::from_fn(|i| w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb));
            block_scales::<B, R>(&rows, nb, &mut dx);
            for p0 in (0..n_pairs).step_by(P) {
                let pk: [usize; P] = std::array::from_fn(|j| (p0 + j).min(n_pairs - 1));
                // The pair's two token rows.
                let toks: [[*const u8; 2]; P] = std::array::from_fn(|j| {
                    [2 * pk[j], (2 * pk[j] + 1).min(n_tok - 1)].map(|t| a.as_ptr().add(t * arb))
                });
                // A second accumulator per pair for the odd blocks when B
                // alternates blocks (unused otherwise).
                let mut acc = [[_mm512_setzero_ps(); P]; R];
                let mut acc_odd = [[_mm512_setzero_ps(); P]; R];
                let nb_tile = if B::ALTERNATE { nb & !1 } else { nb };
                // Even and odd blocks in one iteration when B alternates:
                // which accumulator a block takes is then known at
                // compile time.
                let step = if B::ALTERNATE { 2 } else { 1 };
                for b0 in (0..nb_tile).step_by(step) {
                    for h in 0..step {
                        let b = b0 + h;
                        let odd = B::ALTERNATE && h == 1;
                        let mut v = [_mm512_setzero_si512(); R];
                        for r in 0..R {
                            v[r] = _mm512_broadcast_i64x4(B::unsigned::<Vnni>(
                                rows[r].add(b * B::BYTES),
                            ));
                        }
                        for j in 0..P {
                            let y = join_i(
                                load32(toks[j][0].add(34 * b + 2)),
                                load32(toks[j][1].add(34 * b + 2)),
                            );
                            let init = *bias.get_unchecked(pk[j] * nb + b);
                            let dyv = *dy.get_unchecked(pk[j] * nb + b);
                            for r in 0..R {
                                let lanes = _mm512_dpbusd_epi32(init, v[r], y);
                                let d = _mm512_mul_ps(
                                    _mm512_set1_ps(*dx.get_unchecked(8 * b + r)),
                                    dyv,
                                );
                                let l = _mm512_cvtepi32_ps(lanes);
                                if odd {
                                    acc_odd[r][j] = _mm512_fmadd_ps(d, l, acc_odd[r][j]);
                                } else {
                                    acc[r][j] = _mm512_fmadd_ps(d, l, acc[r][j]);
                                }
                            }
                        }
                    }
                }
                for r in 0..R.min(n_rows - r0) {
                    for j in 0..P.min(n_pairs - p0) {
                        let sum = if B::ALTERNATE {
                            _mm512_add_ps(acc[r][j], acc_odd[r][j])
                        } else {
                            acc[r][j]
                        };
                        let (lo, hi) = split_ps(sum);
                        let t = 2 * (p0 + j);
                        for (t, half) in [(t, lo), (t + 1, hi)] {
                            if t >= n_tok {
                                break;
                            }
                            let mut v = hsum8(half);
                            if B::ALTERNATE && nb % 2 == 1 {
                                v += alternate_last::<B>(rows[r], nb, &a[t * arb..][..arb]);
                            }
                            *out.get_unchecked_mut(t * n_rows + r0 + r) = v;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// Q4_1, Q5_1 with Q8_1 activations.

/// Q4_1 tiles (values 0..15, no offset).
pub(super) struct Q4_1;
/// Q5_1 tiles (values 0..31).
pub(super) struct Q5_1;

/// A weight type of the Q8_1 family: f16 scale and min, 32 values.
trait Q1Block {
    const BYTES: usize;
    unsafe fn values(xb: *const u8) -> __m256i;
}

impl Q1Block for Q4_1 {
    const BYTES: usize = 20;

    #[inline(always)]
    unsafe fn values(xb: *const u8) -> __m256i {
        // SAFETY: a 20-byte block: codes at 4..20.
        unsafe { nibbles32(xb.add(4)) }
    }
}

impl Q1Block for Q5_1 {
    const BYTES: usize = 24;

    #[inline(always)]
    unsafe fn values(xb: *const u8) -> __m256i {
        // SAFETY: a 24-byte block: high bits at 4..8, codes at 8..24.
        unsafe { _mm256_or_si256(nibbles32(xb.add(8)), fifth_bits(xb.add(4))) }
    }
}

/// Wraps a [`Q1Block`] as a tile kernel (a second blanket impl would
/// overlap the Q8_0 family's).
pub(super) struct Q1<B>(std::marker::PhantomData<B>);

impl<B: Q1Block> TileKernel for Q1<B> {
    fn row_bytes(n: usize) -> usize {
        n / 32 * B::BYTES
    }

    #[inline(always)]
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    ) {
        const { assert!(R <= 8 && T <= 8) };
        // SAFETY: the caller's contract (whole blocks, CPU features).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut summs = [[0f32; T]; R];
            for b in 0..n / 32 {
                prefetch_ahead(pf, b, R * B::BYTES);
                let (mut dxh, mut mxh) = ([0u16; 8], [0u16; 8]);
                let mut v = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let xb = w[r].add(b * B::BYTES);
                    dxh[r] = read_u16(xb);
                    mxh[r] = read_u16(xb.add(2));
                    v[r] = B::values(xb);
                }
                let dx = f16x8v(&dxh);
                let mx = f16x8(&mxh);
                let (mut dyh, mut syh) = ([0u16; 8], [0u16; 8]);
                for t in 0..T {
                    dyh[t] = read_u16(a[t].add(b * 36));
                    syh[t] = read_u16(a[t].add(b * 36 + 2));
                }
                let (dy, sy) = (f16x8(&dyh), f16x8(&syh));
                for t in 0..T {
                    let y = load32(a[t].add(b * 36 + 4));
                    let mut d = [0f32; 8];
                    _mm256_storeu_ps(d.as_mut_ptr(), _mm256_mul_ps(dx, _mm256_set1_ps(dy[t])));
                    for r in 0..R {
                        summs[r][t] = mx[r].mul_add(sy[t], summs[r][t]);
                        let lanes = D::dot_u8(_mm256_setzero_si256(), v[r], y);
                        acc[r][t] = _mm256_fmadd_ps(
                            _mm256_set1_ps(d[r]),
                            _mm256_cvtepi32_ps(lanes),
                            acc[r][t],
                        );
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = hsum8(acc[r][t]) + summs[r][t];
                }
            }
        }
    }
}

/// The Q8_1 family in batches with AVX2 (VNNI takes [`q1_batch_pairs`]),
/// as [`q1_batch_pairs`] without the pairing: the rows' scales and mins
/// converted once per row block and the tokens' scales and sums once per
/// call; per (row, token) pair and block one integer dot product, one
/// scale product, one conversion and one FMA, the reference's scalar
/// `summs = fma(m, s, summs)` chains for the tile's `T` tokens of a row
/// in one 4-lane FMA.
///
/// # Safety
/// As [`drive`], with `B`'s row size and Q8_1 activations of `arb` bytes.
#[inline(always)]
unsafe fn q1_batch<B: Q1Block, D: IntDot, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    const { assert!(R <= 8 && T == 4) };
    let nb = n / 32;
    let wrb = nb * B::BYTES;
    // Token groups of T, the last one padded with its last token.
    let n_groups = n_tok.div_ceil(T);
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    // SAFETY: the caller's contract: whole rows of n / 32 blocks behind
    // every row and token index below n_rows / n_tok, the CPU features.
    unsafe {
        let zero = _mm256_setzero_si256();
        // Per group of T tokens and block: their scales `d` and sums `s`,
        // one lane each.
        let mut dy = vec![0f32; n_groups * nb * T];
        let mut sy = vec![0f32; n_groups * nb * T];
        for t in 0..n_groups * T {
            let at = a.as_ptr().add(t.min(n_tok - 1) * arb);
            for b in 0..nb {
                let i = ((t / T) * nb + b) * T + t % T;
                dy[i] = half::f16::from_bits(read_u16(at.add(36 * b))).to_f32();
                sy[i] = half::f16::from_bits(read_u16(at.add(36 * b + 2))).to_f32();
            }
        }
        let mut dx = vec![0f32; nb * 8];
        let mut mx = vec![0f32; nb * 8];
        for r0 in (0..n_rows).step_by(R) {
            let rows: [*const u8; R] =
                std::array::from_fn(|i| w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb));
            row_scales(&rows, nb, B::BYTES, &mut dx);
            row_scales(&rows.map(|p| p.add(2)), nb, B::BYTES, &mut mx);
            for g in 0..n_groups {
                let toks: [*const u8; T] =
                    std::array::from_fn(|j| a.as_ptr().add((g * T + j).min(n_tok - 1) * arb));
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut summs = [_mm_setzero_ps(); R];
                for b in 0..nb {
                    let at = (g * nb + b) * T;
                    let syv = _mm_loadu_ps(sy.as_ptr().add(at));
                    let mut v = [zero; R];
                    for r in 0..R {
                        v[r] = B::values(rows[r].add(b * B::BYTES));
                        let m = _mm_set1_ps(*mx.get_unchecked(8 * b + r));
                        summs[r] = _mm_fmadd_ps(m, syv, summs[r]);
                    }
                    for j in 0..T {
                        let y = load32(toks[j].add(36 * b + 4));
                        let dyj = *dy.get_unchecked(at + j);
                        for r in 0..R {
                            let lanes = D::dot_u8(zero, v[r], y);
                            let d = _mm256_set1_ps(*dx.get_unchecked(8 * b + r) * dyj);
                            acc[r][j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[r][j]);
                        }
                    }
                }
                for r in 0..R.min(n_rows - r0) {
                    let mut sm = [0f32; 4];
                    _mm_storeu_ps(sm.as_mut_ptr(), summs[r]);
                    for j in 0..T.min(n_tok - g * T) {
                        *out.get_unchecked_mut((g * T + j) * n_rows + r0 + r) =
                            hsum8(acc[r][j]) + sm[j];
                    }
                }
            }
        }
    }
}

/// The Q8_1 family in tiles of `R` rows x `P` pairs of tokens (AVX-512
/// VNNI), as [`q0_batch_pairs`] runs the Q8_0 family: two tokens per
/// 512-bit register for the lanes (`vpdpbusd` of the unsigned values, no
/// offset), their scale products formed in the loop; the reference's
/// scalar `summs = fma(m, s, summs)` runs for the tile's `2 * P` tokens
/// of a row in one 8-lane FMA (each lane its own token's chain, in block
/// order), then `hsum_float_8(acc) + summs` per pair.
///
/// # Safety
/// As [`drive`], with `B`'s row size and Q8_1 activations of `arb` bytes;
/// AVX-512 F/BW/VL and VNNI.
// Not inlined, as `q0_batch_pairs`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q1_batch_pairs<B: Q1Block, const R: usize, const P: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    const { assert!(R <= 8 && P == 4) };
    let nb = n / 32;
    let wrb = nb * B::BYTES;
    let n_pairs = n_tok.div_ceil(2);
    // Token groups of 2 * P, the last one padded with its last token.
    let n_groups = n_tok.div_ceil(2 * P);
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    // SAFETY: the caller's contract: whole rows of n / 32 blocks behind
    // every row and token index below n_rows / n_tok, the CPU features.
    unsafe {
        // Per pair and block: both tokens' scales (8 lanes each); per
        // group of 2P tokens and block: their sums `s`, one lane each.
        let dy = pair_scales(a, arb, n_tok, nb, 36);
        let mut sy = vec![0f32; n_groups * nb * 2 * P];
        for t in 0..n_groups * 2 * P {
            let at = a.as_ptr().add(t.min(n_tok - 1) * arb);
            for b in 0..nb {
                let s = half::f16::from_bits(read_u16(at.add(36 * b + 2)));
                sy[((t / (2 * P)) * nb + b) * 2 * P + t % (2 * P)] = s.to_f32();
            }
        }
        let mut dx = vec![0f32; nb * 8];
        let mut mx = vec![0f32; nb * 8];
        for r0 in (0..n_rows).step_by(R) {
            let rows: [*const u8; R] =
                std::array::from_fn(|i| w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb));
            row_scales(&rows, nb, B::BYTES, &mut dx);
            row_scales(&rows.map(|p| p.add(2)), nb, B::BYTES, &mut mx);
            for g in 0..n_groups {
                let p0 = g * P;
                let pk: [usize; P] = std::array::from_fn(|j| (p0 + j).min(n_pairs - 1));
                let toks: [[*const u8; 2]; P] = std::array::from_fn(|j| {
                    [2 * pk[j], (2 * pk[j] + 1).min(n_tok - 1)].map(|t| a.as_ptr().add(t * arb))
                });
                let mut acc = [[_mm512_setzero_ps(); P]; R];
                let mut summs = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    let syv = _mm256_loadu_ps(sy.as_ptr().add((g * nb + b) * 2 * P));
                    let mut v = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        let xb = rows[r].add(b * B::BYTES);
                        v[r] = _mm512_broadcast_i64x4(B::values(xb));
                        summs[r] = _mm256_fmadd_ps(
                            _mm256_set1_ps(*mx.get_unchecked(8 * b + r)),
                            syv,
                            summs[r],
                        );
                    }
                    for j in 0..P {
                        let y = join_i(
                            load32(toks[j][0].add(36 * b + 4)),
                            load32(toks[j][1].add(36 * b + 4)),
                        );
                        let dyv = *dy.get_unchecked(pk[j] * nb + b);
                        for r in 0..R {
                            let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[r], y);
                            let d =
                                _mm512_mul_ps(_mm512_set1_ps(*dx.get_unchecked(8 * b + r)), dyv);
                            acc[r][j] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lanes), acc[r][j]);
                        }
                    }
                }
                for r in 0..R.min(n_rows - r0) {
                    let mut sm = [0f32; 8];
                    _mm256_storeu_ps(sm.as_mut_ptr(), summs[r]);
                    for j in 0..P.min(n_pairs - p0) {
                        let (lo, hi) = split_ps(acc[r][j]);
                        let t = 2 * (p0 + j);
                        *out.get_unchecked_mut(t * n_rows + r0 + r) = hsum8(lo) + sm[2 * j];
                        if t + 1 < n_tok {
                            *out.get_unchecked_mut((t + 1) * n_rows + r0 + r) =
                                hsum8(hi) + sm[2 * j + 1];
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// Q4_K, Q5_K, Q6_K with Q8_K activations (blocks of 256).

/// Q4_K tiles.
pub(super) struct Q4K;
/// Q5_K tiles.
pub(super) struct Q5K;
/// Q6_K tiles.
pub(super) struct Q6K;

/// Per activation super-block: f32 d at 0, values at 4, 16 i16 sums at 260.
const Q8K_BYTES: usize = 292;

/// The sums of adjacent pairs of a Q8_K block's 16 i16 sums (8 i16), as
/// ggml's `hadd_epi16`: the inputs of the Q4_K/Q5_K min correction.
#[inline(always)]
unsafe fn q8k_pair_sums(yb: *const u8) -> __m128i {
    // SAFETY: a whole Q8_K block; SSSE3 is implied by AVX2.
    unsafe {
        let lo = _mm_loadu_si128(yb.add(260) as *const __m128i);
        let hi = _mm_loadu_si128(yb.add(276) as *const __m128i);
        _mm_hadd_epi16(lo, hi)
    }
}

/// Whether a K-quant tile of `T` tokens accumulates its integer products
/// two tokens per 512-bit register (VNNI, an even token count).
const fn k_pairs<D: IntDot, const T: usize>() -> bool {
    D::VNNI && T.is_multiple_of(2)
}

/// The 512-bit accumulators of [`k_products`]: tokens `2p` and `2p + 1`
/// of `lanes` in the halves of entry `p` (`T / 2` entries used).
#[inline(always)]
unsafe fn k_pairs_begin<D: IntDot, const R: usize, const T: usize>(
    lanes: &[[__m256i; T]; R],
) -> [[__m512i; T]; R] {
    // SAFETY: AVX-512F whenever `k_pairs` holds (VNNI callers).
    unsafe {
        let mut wide = [[_mm512_setzero_si512(); T]; R];
        if k_pairs::<D, T>() {
            for r in 0..R {
                for p in 0..T / 2 {
                    wide[r][p] = join_i(lanes[r][2 * p], lanes[r][2 * p + 1]);
                }
            }
        }
        wide
    }
}

/// Splits [`k_pairs_begin`]'s accumulators back into `lanes`.
#[inline(always)]
unsafe fn k_pairs_end<D: IntDot, const R: usize, const T: usize>(
    wide: &[[__m512i; T]; R],
    lanes: &mut [[__m256i; T]; R],
) {
    // SAFETY: AVX-512F whenever `k_pairs` holds (VNNI callers).
    unsafe {
        if k_pairs::<D, T>() {
            for r in 0..R {
                for p in 0..T / 2 {
                    (lanes[r][2 * p], lanes[r][2 * p + 1]) = split_i(wide[r][p]);
                }
            }
        }
    }
}

/// One 32-value step of a K-quant tile: `lanes[r][t] += dot_i16(
/// maddubs(v[r], y_t), sc[r])`, `y_t` the 32 bytes at `off` in token `t`'s
/// block. When [`k_pairs`] holds, into `wide` instead, a pair of tokens
/// per register: `maddubs` and `vpdpwssd` are lane-wise, so each half
/// gets the very integer sums of its token.
///
/// # Safety
/// 32 readable bytes at `off` in every token's block; the features of
/// `D` (AVX-512 F/BW and VNNI when [`k_pairs`] holds).
#[inline(always)]
unsafe fn k_products<D: IntDot, const R: usize, const T: usize>(
    v: &[__m256i; R],
    sc: &[__m256i; R],
    yb: &[*const u8; T],
    off: usize,
    lanes: &mut [[__m256i; T]; R],
    wide: &mut [[__m512i; T]; R],
) {
    // SAFETY: the contract above.
    unsafe {
        if k_pairs::<D, T>() {
            let mut vw = [_mm512_setzero_si512(); R];
            let mut sw = [_mm512_setzero_si512(); R];
            for r in 0..R {
                vw[r] = _mm512_broadcast_i64x4(v[r]);
                sw[r] = _mm512_broadcast_i64x4(sc[r]);
            }
            for p in 0..T / 2 {
                let y = join_i(load32(yb[2 * p].add(off)), load32(yb[2 * p + 1].add(off)));
                for r in 0..R {
                    let q = _mm512_maddubs_epi16(vw[r], y);
                    wide[r][p] = _mm512_dpwssd_epi32(wide[r][p], q, sw[r]);
                }
            }
        } else {
            for t in 0..T {
                let y = load32(yb[t].add(off));
                for r in 0..R {
                    let q = _mm256_maddubs_epi16(v[r], y);
                    lanes[r][t] = D::dot_i16(lanes[r][t], q, sc[r]);
                }
            }
        }
    }
}

/// Scales, mins and the two f16 factors of a Q4_K/Q5_K block.
#[derive(Clone, Copy)]
struct K4Header {
    d: f32,
    dmin: f32,
    scales: [i16; 8],
    mins: [i16; 8],
}

impl Default for K4Header {
    fn default() -> Self {
        K4Header {
            d: 0.0,
            dmin: 0.0,
            scales: [0; 8],
            mins: [0; 8],
        }
    }
}

#[inline(always)]
unsafe fn k4_header(xb: *const u8) -> K4Header {
    // SAFETY: a whole Q4_K/Q5_K block: d, dmin, 12 scale bytes; SSE4.1
    // is implied by AVX2.
    unsafe {
        // The 6-bit scales and mins of `get_scale_min_k4`, rearranged as
        // whole words: scales 0..7 in u[0..2], mins 0..7 in u[2..4].
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        let word = |i: usize| u32::from_le((xb.add(4 + 4 * i) as *const u32).read_unaligned());
        let (q0, q1, q2) = (word(0), word(1), word(2));
        let u = [
            q0 & LOW6,
            (q2 & LOW4) | (((q0 >> 6) & LOW2) << 4),
            q1 & LOW6,
            ((q2 >> 4) & LOW4) | (((q1 >> 6) & LOW2) << 4),
        ];
        let wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(u.as_ptr() as *const __m128i));
        let mut scales = [0i16; 8];
        let mut mins = [0i16; 8];
        _mm_storeu_si128(
            scales.as_mut_ptr() as *mut __m128i,
            _mm256_castsi256_si128(wide),
        );
        _mm_storeu_si128(
            mins.as_mut_ptr() as *mut __m128i,
            _mm256_extracti128_si256::<1>(wide),
        );
        let h = f16x8(&[read_u16(xb), read_u16(xb.add(2)), 0, 0, 0, 0, 0, 0]);
        K4Header {
            d: h[0],
            dmin: h[1],
            scales,
            mins,
        }
    }
}

/// The shared body of Q4_K and Q5_K: `HIGH` adds Q5_K's fifth bits (32
/// bytes after the scales, codes 32 bytes later); Q4_K's mins go to a
/// 4-lane accumulator, Q5_K's to a scalar, as their references do.
#[inline(always)]
unsafe fn k45_tile<D: IntDot, const HIGH: bool, const R: usize, const T: usize>(
    n: usize,
    w: &[*const u8; R],
    a: &[*const u8; T],
    pf: *const u8,
    out: &mut [[f32; T]; R],
) {
    let (bytes, codes) = if HIGH { (176, 48) } else { (144, 16) };
    // SAFETY: the caller's contract: n / 256 whole blocks behind every
    // pointer and the CPU features.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut acc_m = [[_mm_setzero_ps(); T]; R];
        let mut summs = [[0f32; T]; R];
        for sb in 0..n / 256 {
            prefetch_ahead(pf, sb, R * bytes);
            let xb: [*const u8; R] = std::array::from_fn(|r| w[r].add(sb * bytes));
            let yb: [*const u8; T] = std::array::from_fn(|t| a[t].add(sb * Q8K_BYTES));
            let mut hdr = [K4Header::default(); R];
            for r in 0..R {
                hdr[r] = k4_header(xb[r]);
            }
            let mut lanes = [[_mm256_setzero_si256(); T]; R];
            let mut wide = k_pairs_begin::<D, R, T>(&lanes);
            for j in 0..8 {
                let mut v = [_mm256_setzero_si256(); R];
                let mut sc = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let q = load32(xb[r].add(codes + 32 * (j / 2)));
                    let q = if j % 2 == 0 {
                        q
                    } else {
                        _mm256_srli_epi16::<4>(q)
                    };
                    let mut q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
                    if HIGH {
                        let h =
                            _mm256_srl_epi16(load32(xb[r].add(16)), _mm_set_epi64x(0, j as i64));
                        let h = _mm256_and_si256(h, _mm256_set1_epi8(1));
                        q = _mm256_or_si256(q, _mm256_slli_epi16::<4>(h));
                    }
                    v[r] = q;
                    sc[r] = _mm256_set1_epi16(hdr[r].scales[j]);
                }
                k_products::<D, R, T>(&v, &sc, &yb, 4 + 32 * j, &mut lanes, &mut wide);
            }
            k_pairs_end::<D, R, T>(&wide, &mut lanes);
            for t in 0..T {
                let yd = read_f32(yb[t]);
                let q8s = q8k_pair_sums(yb[t]);
                for r in 0..R {
                    let d = yd * hdr[r].d;
                    let dmin = -yd * hdr[r].dmin;
                    acc[r][t] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d),
                        _mm256_cvtepi32_ps(lanes[r][t]),
                        acc[r][t],
                    );
                    let p = _mm_madd_epi16(
                        _mm_loadu_si128(hdr[r].mins.as_ptr() as *const __m128i),
                        q8s,
                    );
                    if HIGH {
                        let mut pi = [0i32; 4];
                        _mm_storeu_si128(pi.as_mut_ptr() as *mut __m128i, p);
                        let sum = (pi[0] + pi[1]) + (pi[2] + pi[3]);
                        summs[r][t] = dmin.mul_add(sum as f32, summs[r][t]);
                    } else {
                        acc_m[r][t] =
                            _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(p), acc_m[r][t]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = if HIGH {
                    hsum8(acc[r][t]) + summs[r][t]
                } else {
                    let m = lanes4(acc_m[r][t]);
                    hsum8(acc[r][t]) + ((m[0] + m[2]) + (m[1] + m[3]))
                };
            }
        }
    }
}

impl TileKernel for Q4K {
    const SUPER_BLOCKS: bool = true;

    fn row_bytes(n: usize) -> usize {
        n / 256 * 144
    }

    #[inline(always)]
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    ) {
        // SAFETY: forwarded contract.
        unsafe { k45_tile::<D, false, R, T>(n, w, a, pf, out) }
    }
}

impl TileKernel for Q5K {
    const SUPER_BLOCKS: bool = true;

    fn row_bytes(n: usize) -> usize {
        n / 256 * 176
    }

    #[inline(always)]
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    ) {
        // SAFETY: forwarded contract.
        unsafe { k45_tile::<D, true, R, T>(n, w, a, pf, out) }
    }
}

impl TileKernel for Q6K {
    const SUPER_BLOCKS: bool = true;

    fn row_bytes(n: usize) -> usize {
        n / 256 * 210
    }

    #[inline(always)]
    unsafe fn tile<D: IntDot, const R: usize, const T: usize>(
        n: usize,
        w: &[*const u8; R],
        a: &[*const u8; T],
        pf: *const u8,
        out: &mut [[f32; T]; R],
    ) {
        // SAFETY: the caller's contract: n / 256 whole blocks (210 bytes
        // of weights, 292 of activations) and the CPU features.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for sb in 0..n / 256 {
                prefetch_ahead(pf, sb, R * 210);
                let xb: [*const u8; R] = std::array::from_fn(|r| w[r].add(sb * 210));
                let yb: [*const u8; T] = std::array::from_fn(|t| a[t].add(sb * Q8K_BYTES));
                // The -32 offset, per lane: -32 * (sc[2k]*bsum[2k] +
                // sc[2k+1]*bsum[2k+1]), from the 16 scales times -32 (i16).
                let mut lanes = [[_mm256_setzero_si256(); T]; R];
                let mut neg32 = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let s = _mm_loadu_si128(xb[r].add(192) as *const __m128i);
                    neg32[r] = _mm256_slli_epi16::<5>(_mm256_sub_epi16(
                        _mm256_setzero_si256(),
                        _mm256_cvtepi8_epi16(s),
                    ));
                }
                for t in 0..T {
                    let bsums = load32(yb[t].add(260));
                    for r in 0..R {
                        lanes[r][t] = D::dot_i16(lanes[r][t], neg32[r], bsums);
                    }
                }
                let mut wide = k_pairs_begin::<D, R, T>(&lanes);
                for j in 0..8 {
                    let (half, quarter) = (j / 4, j % 4);
                    let mut v = [_mm256_setzero_si256(); R];
                    let mut sc = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        let ql = load32(xb[r].add(64 * half + 32 * (quarter % 2)));
                        let lo = if quarter < 2 {
                            ql
                        } else {
                            _mm256_srli_epi16::<4>(ql)
                        };
                        let lo = _mm256_and_si256(lo, _mm256_set1_epi8(0x0F));
                        let qh = load32(xb[r].add(128 + 32 * half));
                        let hi = _mm256_srl_epi16(qh, _mm_set_epi64x(0, 2 * quarter as i64));
                        let hi = _mm256_and_si256(hi, _mm256_set1_epi8(3));
                        v[r] = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                        let s0 = i16::from(*xb[r].add(192 + 2 * j) as i8);
                        let s1 = i16::from(*xb[r].add(193 + 2 * j) as i8);
                        sc[r] = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                    }
                    k_products::<D, R, T>(&v, &sc, &yb, 4 + 32 * j, &mut lanes, &mut wide);
                }
                k_pairs_end::<D, R, T>(&wide, &mut lanes);
                let dx: [f32; 8] = {
                    let mut h = [0u16; 8];
                    for r in 0..R {
                        h[r] = read_u16(xb[r].add(208));
                    }
                    f16x8(&h)
                };
                for t in 0..T {
                    let yd = read_f32(yb[t]);
                    for r in 0..R {
                        let d = yd * dx[r];
                        acc[r][t] = _mm256_fmadd_ps(
                            _mm256_set1_ps(d),
                            _mm256_cvtepi32_ps(lanes[r][t]),
                            acc[r][t],
                        );
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = hsum8(acc[r][t]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// The driver: tiles over the whole product.

/// Runs kernel `K` over `n_rows` weight rows (`w`) and `n_tok` activation
/// rows (`a`, `arb` bytes each) in tiles of `R x T`, writing
/// `out[t * n_rows + r]`. A partial tile repeats its last row or token
/// and drops the repeats.
///
/// # Safety
/// `w` must hold `n_rows` rows of `K::row_bytes(n)`, `a` `n_tok` rows of
/// `arb` bytes (the activation type's size of `n` values), `out`
/// `n_rows * n_tok` values, and the CPU must support what `D` needs.
#[inline(always)]
unsafe fn drive<K: TileKernel, D: IntDot, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    let wrb = K::row_bytes(n);
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    for r0 in (0..n_rows).step_by(R) {
        // Single tokens stream the weights once: prefetch ahead of the
        // tile (see `prefetch_ahead`).
        let pf = if T == 1 {
            w.as_ptr().wrapping_add((r0 + R) * wrb + PREFETCH_AHEAD)
        } else {
            std::ptr::null()
        };
        // SAFETY: min(r0 + i, n_rows - 1) < n_rows rows fit in `w`.
        let rows: [*const u8; R] =
            std::array::from_fn(|i| unsafe { w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb) });
        for t0 in (0..n_tok).step_by(T) {
            // SAFETY: as above for the tokens in `a`.
            let toks: [*const u8; T] =
                std::array::from_fn(|j| unsafe { a.as_ptr().add((t0 + j).min(n_tok - 1) * arb) });
            let mut tile = [[0f32; T]; R];
            // SAFETY: the pointers address whole rows (above); the caller
            // vouches for the CPU features.
            unsafe { K::tile::<D, R, T>(n, &rows, &toks, pf, &mut tile) };
            for (i, row) in tile.iter().enumerate().take(n_rows - r0) {
                for (j, &v) in row.iter().enumerate().take(n_tok - t0) {
                    out[(t0 + j) * n_rows + r0 + i] = v;
                }
            }
        }
    }
}

/// Picks the tile shape for the batch: single tokens (generation) get
/// more rows per call.
#[inline(always)]
unsafe fn drive_shapes<K: TileKernel, D: IntDot>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        if D::VNNI {
            if n_tok == 1 && K::SUPER_BLOCKS {
                drive::<K, D, 4, 1>(n, w, n_rows, a, arb, n_tok, out)
            } else if n_tok == 1 {
                drive::<K, D, 8, 1>(n, w, n_rows, a, arb, n_tok, out)
            } else if K::SUPER_BLOCKS {
                drive::<K, D, 3, 8>(n, w, n_rows, a, arb, n_tok, out)
            } else {
                drive::<K, D, 4, 4>(n, w, n_rows, a, arb, n_tok, out)
            }
        } else if n_tok == 1 && K::SUPER_BLOCKS {
            drive::<K, D, 2, 1>(n, w, n_rows, a, arb, n_tok, out)
        } else if n_tok == 1 {
            drive::<K, D, 4, 1>(n, w, n_rows, a, arb, n_tok, out)
        } else {
            drive::<K, D, 2, 4>(n, w, n_rows, a, arb, n_tok, out)
        }
    }
}

// ---------------------------------------------------------------------
// Super-block types whose reference forms `value * scale` per value in
// integers (Q2_K, Q3_K, IQ4_XS). Each 32-value chunk's weights are
// widened to i16 and multiplied by their scales once for all tokens of
// the tile (at most 128 in magnitude for Q2_K/Q3_K, 127 * 32 for
// IQ4_XS); `vpdpwssd` (AVX-512 VNNI) or `madd` + `add` (AVX2, [`Wide`])
// with the activations widened to i16 (once per call) gives 16 lanes of
// two products, and adjacent lanes
// added at the end of the super-block are the reference's eight lanes of
// four (integers, exact in any order). Then the reference's float steps
// per super-block (Q2_K's `fma(dmin, mins, acc)` first, then
// `fma(d, lanes, acc)`) and `hsum_float_8`. The IQ1 types' deltas take a
// path of their own ([`Delta`]).

/// A super-block type for [`scaled_batch`].
trait ScaledSuper {
    /// Bytes per super-block.
    const BYTES: usize;
    /// Whether the type has Q2_K's mins (`fma(dmin, madd(mins, bsums))`).
    const MINS: bool;
    /// The 16 scales of a super-block, one per 16 values, as the products
    /// use them.
    unsafe fn scales(xb: *const u8) -> [i16; 16];
    /// The 32 values of chunk `c` (0..8) as i8, unscaled.
    unsafe fn values(xb: *const u8, c: usize) -> __m256i;
    /// The weight's scale factor `d` (f16 in the block).
    unsafe fn d(xb: *const u8) -> f32;
    /// Q2_K: the 16 four-bit mins as i16, and `dmin`.
    unsafe fn mins(_xb: *const u8) -> (__m256i, f32) {
        unreachable!("only types with MINS have mins")
    }
    /// The IQ1 types' delta part (see [`Delta`]).
    const DELTA: Delta = Delta::None;
    /// IQ1_S: the multiplier of each of the 16 activation block sums
    /// (its sub-block's odd scale with the delta's sign).
    unsafe fn bsum_multipliers(_xb: *const u8) -> __m256i {
        unreachable!("only Delta::Bsums types have bsum multipliers")
    }
    /// IQ1_M: the delta weights (i8) of half `v` (0, 1) of
    /// [`Delta::Lanes`]' layout, from the block and its `scales`.
    unsafe fn delta_weights(_xb: *const u8, _sc: &[i16; 16], _v: usize) -> __m256i {
        unreachable!("only Delta::Lanes types have delta weights")
    }
    /// The dot product from the folded sum and the delta part (the
    /// IQ2/IQ3 types' final factor; the IQ1 types' `1/8 * delta`).
    fn finish(sum: f32, _delta: f32) -> f32 {
        sum
    }
}

/// The second part of the IQ1 types' dot products, the deltas `±1/8`
/// times the scales, which the references sum apart from the grid part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delta {
    None,
    /// IQ1_S: per super-block `sumi = sum(bsums * multipliers)` (exact
    /// integers), `acc = fma(d, sumi, acc)` in a scalar.
    Bsums,
    /// IQ1_M: a second set of eight lanes, `fma(d, lanes, acc)` per
    /// super-block. Lane k holds the activations `4k..4k+3` of every
    /// chunk times their sign and scale; the tile takes them as two
    /// dots of 32 i16 against the sums of four activations: position
    /// `32v + 4k + i` pairs chunk `4v + i`'s weight for lane k with its
    /// four activations' sum, so [`Wide::lanes8`] folds each lane's
    /// chunks together.
    Lanes,
}

/// The IQ2/IQ3 lattice types ([`Lattice`]): each chunk's grid points with
/// their signs (the reference moves the signs onto the activations with
/// `_mm256_sign_epi8`; the products are the same for every activation
/// but -128, which the Q8_K quantizer never writes) times the odd scales
/// `2*ls + 1` (at most 62 * 31 in magnitude).
pub(super) struct LatticeSuper<L>(std::marker::PhantomData<L>);

impl<L: Lattice> ScaledSuper for LatticeSuper<L> {
    const BYTES: usize = L::BYTES;
    const MINS: bool = false;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        // SAFETY: a whole block.
        L::multipliers(unsafe { std::slice::from_raw_parts(xb, L::BYTES) })
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        // SAFETY: a whole block; AVX2 in every caller.
        unsafe { L::signed(std::slice::from_raw_parts(xb, L::BYTES), c) }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        half::f16::from_bits(unsafe { read_u16(xb) }).to_f32()
    }

    #[inline(always)]
    fn finish(sum: f32, _delta: f32) -> f32 {
        finish::<L>(sum)
    }
}

pub(super) struct Iq4Xs;
pub(super) struct Q3K;
pub(super) struct Q2K;

impl ScaledSuper for Iq4Xs {
    const BYTES: usize = 136;
    const MINS: bool = false;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        // SAFETY: a whole 136-byte block.
        unsafe {
            let sh = read_u16(xb.add(2));
            std::array::from_fn(|j| {
                let c = j / 2;
                let ls = i16::from((*xb.add(4 + c / 2) >> (4 * (c % 2))) & 0xF)
                    | (((sh >> (2 * c)) & 3) as i16) << 4;
                ls - 32
            })
        }
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        use crate::ggml::reference::KVALUES_IQ4NL;
        // SAFETY: a whole block; AVX2 in every caller.
        unsafe {
            let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(xb.add(8 + 16 * c)))
        }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        half::f16::from_bits(unsafe { read_u16(xb) }).to_f32()
    }
}

impl ScaledSuper for Q3K {
    const BYTES: usize = 110;
    const MINS: bool = false;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        // SAFETY: a whole 110-byte block: scales at 96..108.
        unsafe {
            let s = |i: usize| *xb.add(96 + i);
            std::array::from_fn(|j| {
                let code = if j < 8 { s(j) & 0xF } else { s(j - 8) >> 4 };
                i16::from(code | (((s(8 + j % 4) >> (2 * (j / 4))) & 3) << 4)) - 32
            })
        }
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        // SAFETY: a whole block: high-bit masks at 0..32, low bits at
        // 32..96; AVX2 in every caller.
        unsafe {
            let (half, quarter) = (c / 4, c % 4);
            let q = _mm256_srl_epi16(
                load32(xb.add(32 + 32 * half)),
                _mm_set_epi64x(0, 2 * quarter as i64),
            );
            let q = _mm256_and_si256(q, _mm256_set1_epi8(3));
            let bit = _mm256_set1_epi8((1u8 << (4 * half + quarter)) as i8);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(load32(xb), bit), bit);
            // lo - 4 where the high bit is clear.
            _mm256_sub_epi8(q, _mm256_andnot_si256(set, _mm256_set1_epi8(4)))
        }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        half::f16::from_bits(unsafe { read_u16(xb.add(108)) }).to_f32()
    }
}

impl ScaledSuper for Q2K {
    const BYTES: usize = 84;
    const MINS: bool = true;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        // SAFETY: a whole 84-byte block: scales and mins at 0..16.
        std::array::from_fn(|j| i16::from(unsafe { *xb.add(j) } & 0xF))
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        // SAFETY: a whole block: codes at 16..80; AVX2 in every caller.
        unsafe {
            let (half, quarter) = (c / 4, c % 4);
            let q = _mm256_srl_epi16(
                load32(xb.add(16 + 32 * half)),
                _mm_set_epi64x(0, 2 * quarter as i64),
            );
            _mm256_and_si256(q, _mm256_set1_epi8(3))
        }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        half::f16::from_bits(unsafe { read_u16(xb.add(80)) }).to_f32()
    }

    #[inline(always)]
    unsafe fn mins(xb: *const u8) -> (__m256i, f32) {
        // SAFETY: a whole block; AVX2 in every caller.
        unsafe {
            let m =
                _mm256_cvtepu8_epi16(_mm_srli_epi16::<4>(_mm_loadu_si128(xb as *const __m128i)));
            let m = _mm256_and_si256(m, _mm256_set1_epi16(0xF));
            (m, half::f16::from_bits(read_u16(xb.add(82))).to_f32())
        }
    }
}

/// IQ1_S and IQ1_M: each chunk's grid points (-1..=1) times the odd
/// scales `2s+1` (the references move the grid's signs onto the
/// activations, as the IQ2/IQ3 types do: the products are the same for
/// every activation but -128, which the Q8_K quantizer never writes; so
/// is IQ1_M's delta sign), and the deltas apart ([`Delta`]).
pub(super) struct Iq1S;
pub(super) struct Iq1M;

/// Chunk `c`'s four grid points, group `l` at index `idx(l)`.
#[inline(always)]
unsafe fn iq1_grid(idx: impl Fn(usize) -> usize) -> __m256i {
    use crate::ggml::reference::iq1_tables::IQ1S_GRID;
    let g = |l: usize| IQ1S_GRID[idx(l)] as i64;
    // SAFETY: AVX is enabled in every caller.
    unsafe { _mm256_set_epi64x(g(3), g(2), g(1), g(0)) }
}

impl ScaledSuper for Iq1S {
    const BYTES: usize = 50;
    const MINS: bool = false;
    const DELTA: Delta = Delta::Bsums;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        std::array::from_fn(|j| {
            // SAFETY: a whole 50-byte block: qh at 34..50.
            let qh = unsafe { read_u16(xb.add(34 + 2 * (j / 2))) };
            2 * ((qh >> 12) & 7) as i16 + 1
        })
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        // SAFETY: a whole block: qs at 2..34, qh at 34..50; AVX in every
        // caller.
        unsafe {
            let qh = usize::from(read_u16(xb.add(34 + 2 * c)));
            iq1_grid(|l| usize::from(*xb.add(2 + 4 * c + l)) | ((qh >> (3 * l)) & 7) << 8)
        }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        half::f16::from_bits(unsafe { read_u16(xb) }).to_f32()
    }

    #[inline(always)]
    unsafe fn bsum_multipliers(xb: *const u8) -> __m256i {
        // SAFETY: a whole block: qh at 34..50; AVX in every caller.
        unsafe {
            let ls = Self::scales(xb);
            let m: [i16; 16] = std::array::from_fn(|j| {
                let negative = read_u16(xb.add(34 + 2 * (j / 2))) & 0x8000 != 0;
                if negative {
                    -ls[j]
                } else {
                    ls[j]
                }
            });
            _mm256_loadu_si256(m.as_ptr() as *const __m256i)
        }
    }

    #[inline(always)]
    fn finish(sum: f32, delta: f32) -> f32 {
        sum + 0.125 * delta
    }
}

impl ScaledSuper for Iq1M {
    const BYTES: usize = 56;
    const MINS: bool = false;
    const DELTA: Delta = Delta::Lanes;

    #[inline(always)]
    unsafe fn scales(xb: *const u8) -> [i16; 16] {
        std::array::from_fn(|j| {
            // SAFETY: a whole 56-byte block: scale words at 48..56.
            let word = unsafe { read_u16(xb.add(48 + 2 * (j / 4))) };
            2 * ((word >> (3 * (j % 4))) & 7) as i16 + 1
        })
    }

    #[inline(always)]
    unsafe fn values(xb: *const u8, c: usize) -> __m256i {
        // SAFETY: a whole block: qs at 0..32, qh at 32..48; AVX in every
        // caller. Even groups take bits 0-2 of their qh byte, odd ones
        // bits 4-6.
        unsafe {
            iq1_grid(|l| {
                let h = usize::from(*xb.add(32 + 2 * c + l / 2)) << (8 - 4 * (l % 2));
                usize::from(*xb.add(4 * c + l)) | (h & 0x700)
            })
        }
    }

    #[inline(always)]
    unsafe fn d(xb: *const u8) -> f32 {
        // SAFETY: a whole block.
        crate::ggml::reference::iq1m_d(unsafe { std::slice::from_raw_parts(xb, 56) })
    }

    #[inline(always)]
    unsafe fn delta_weights(xb: *const u8, sc: &[i16; 16], v: usize) -> __m256i {
        // SAFETY: a whole block: qh at 32..48; AVX2 in every caller.
        // Position p (byte) takes chunk 4v + p % 4 and lane p / 4: the
        // scale and the qh byte of that chunk's half p / 16 (index
        // 8v + 2 * (p % 4) + p / 16), the delta's sign at bit 3 for lanes
        // 0, 1, 4, 5 (groups 0 and 2) and at bit 7 for the others.
        unsafe {
            let s = _mm256_loadu_si256(sc.as_ptr() as *const __m256i);
            let s8 = _mm_packs_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let qh = _mm_loadu_si128(xb.add(32) as *const __m128i);
            let idx = _mm256_add_epi8(
                _mm256_set_epi64x(
                    0x0705_0301_0705_0301,
                    0x0705_0301_0705_0301,
                    0x0604_0200_0604_0200,
                    0x0604_0200_0604_0200,
                ),
                _mm256_set1_epi8(8 * v as i8),
            );
            let bit = _mm256_set_epi64x(
                0x8080_8080_8080_8080u64 as i64,
                0x0808_0808_0808_0808,
                0x8080_8080_8080_8080u64 as i64,
                0x0808_0808_0808_0808,
            );
            let h = _mm256_shuffle_epi8(_mm256_set_m128i(qh, qh), idx);
            let neg = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
            let ls = _mm256_shuffle_epi8(_mm256_set_m128i(s8, s8), idx);
            _mm256_sub_epi8(_mm256_xor_si256(ls, neg), neg)
        }
    }

    #[inline(always)]
    fn finish(sum: f32, delta: f32) -> f32 {
        delta.mul_add(0.125, sum)
    }
}

/// 32 i16 values of a chunk and 16 i32 lane sums of two products each,
/// in one register ([`Wide512`]) or two ([`Wide256`]).
trait Wide {
    /// 32 i16 values, or 16 i32 lanes.
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// 32 i8 values widened.
    unsafe fn widen(v: __m256i) -> Self::V;
    /// The first 16 values times `s0`, the last 16 times `s1` (low 16
    /// bits of each product; the callers' products fit).
    unsafe fn scale(v: Self::V, s0: i16, s1: i16) -> Self::V;
    unsafe fn load(p: *const i16) -> Self::V;
    unsafe fn store(p: *mut i16, v: Self::V);
    /// `acc` plus, per i32 lane, the sum of 2 products of i16 values.
    unsafe fn dot(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Adjacent lanes added: lane `k` of 8 then holds values `4k..4k+3`.
    unsafe fn lanes8(acc: Self::V) -> __m256i;
}

/// One 512-bit register, `vpdpwssd` (AVX-512 BW and VNNI).
struct Wide512;

/// Two 256-bit registers (values 0..16 and 16..32), `madd` + `add` (AVX2).
struct Wide256;

impl Wide for Wide512 {
    type V = __m512i;

    #[inline(always)]
    unsafe fn zero() -> __m512i {
        // SAFETY: AVX-512F in every caller.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    unsafe fn widen(v: __m256i) -> __m512i {
        // SAFETY: AVX-512BW in every caller.
        unsafe { _mm512_cvtepi8_epi16(v) }
    }

    #[inline(always)]
    unsafe fn scale(v: __m512i, s0: i16, s1: i16) -> __m512i {
        // SAFETY: AVX-512 F/BW in every caller.
        unsafe {
            let s = _mm512_inserti64x4::<1>(_mm512_set1_epi16(s0), _mm256_set1_epi16(s1));
            _mm512_mullo_epi16(v, s)
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const i16) -> __m512i {
        // SAFETY: 64 readable bytes at `p`; AVX-512F in every caller.
        unsafe { _mm512_loadu_si512(p as *const _) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut i16, v: __m512i) {
        // SAFETY: 64 writable bytes at `p`; AVX-512F in every caller.
        unsafe { _mm512_storeu_si512(p as *mut _, v) }
    }

    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512 VNNI in every caller.
        unsafe { _mm512_dpwssd_epi32(acc, a, b) }
    }

    #[inline(always)]
    unsafe fn lanes8(acc: __m512i) -> __m256i {
        // SAFETY: AVX-512F in every caller.
        unsafe { _mm512_cvtepi64_epi32(_mm512_add_epi32(acc, _mm512_srli_epi64::<32>(acc))) }
    }
}

impl Wide for Wide256 {
    type V = [__m256i; 2];

    #[inline(always)]
    unsafe fn zero() -> [__m256i; 2] {
        // SAFETY: AVX in every caller.
        unsafe { [_mm256_setzero_si256(); 2] }
    }

    #[inline(always)]
    unsafe fn widen(v: __m256i) -> [__m256i; 2] {
        // SAFETY: AVX2 in every caller.
        unsafe {
            [
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
            ]
        }
    }

    #[inline(always)]
    unsafe fn scale(v: [__m256i; 2], s0: i16, s1: i16) -> [__m256i; 2] {
        // SAFETY: AVX2 in every caller.
        unsafe {
            [
                _mm256_mullo_epi16(v[0], _mm256_set1_epi16(s0)),
                _mm256_mullo_epi16(v[1], _mm256_set1_epi16(s1)),
            ]
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const i16) -> [__m256i; 2] {
        // SAFETY: 64 readable bytes at `p`; AVX in every caller.
        unsafe { [load32(p as *const u8), load32(p.add(16) as *const u8)] }
    }

    #[inline(always)]
    unsafe fn store(p: *mut i16, v: [__m256i; 2]) {
        // SAFETY: 64 writable bytes at `p`; AVX in every caller.
        unsafe {
            _mm256_storeu_si256(p as *mut __m256i, v[0]);
            _mm256_storeu_si256(p.add(16) as *mut __m256i, v[1]);
        }
    }

    #[inline(always)]
    unsafe fn dot(acc: [__m256i; 2], a: [__m256i; 2], b: [__m256i; 2]) -> [__m256i; 2] {
        // SAFETY: AVX2 in every caller.
        unsafe {
            [
                _mm256_add_epi32(acc[0], _mm256_madd_epi16(a[0], b[0])),
                _mm256_add_epi32(acc[1], _mm256_madd_epi16(a[1], b[1])),
            ]
        }
    }

    #[inline(always)]
    unsafe fn lanes8(acc: [__m256i; 2]) -> __m256i {
        // SAFETY: AVX2 in every caller. `hadd` pairs within 128-bit
        // halves ([a01 a23 b01 b23 | a45 a67 b45 b67]); the permute puts
        // the first register's four sums before the second's.
        unsafe {
            let h = _mm256_hadd_epi32(acc[0], acc[1]);
            _mm256_permute4x64_epi64::<0b11_01_10_00>(h)
        }
    }
}

/// The sum of eight i32 lanes (exact).
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: AVX2 in every caller.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
    }
}

/// Tiles of `R` rows x `T` tokens of a [`ScaledSuper`] type (see above).
///
/// # Safety
/// As [`drive`], with rows of `K` (`n` a multiple of 256) and Q8_K
/// activations of `arb` bytes; the features of `W` (and AVX2, FMA).
#[inline(always)]
unsafe fn scaled_batch<K: ScaledSuper, W: Wide, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    let nsb = n / 256;
    let wrb = nsb * K::BYTES;
    debug_assert!(w.len() >= n_rows * wrb && a.len() >= n_tok * arb);
    debug_assert!(out.len() >= n_rows * n_tok);
    // SAFETY: the caller's contract: whole rows of n / 256 super-blocks
    // behind every row and token index below n_rows / n_tok, the CPU
    // features.
    unsafe {
        // The activations as i16 and their scales, once per call.
        let mut y16 = vec![0i16; n_tok * nsb * 256];
        let mut dy = vec![0f32; n_tok * nsb];
        for t in 0..n_tok {
            for sb in 0..nsb {
                let yb = a.as_ptr().add(t * arb + sb * Q8K_BYTES);
                dy[t * nsb + sb] = read_f32(yb);
                for c in 0..8 {
                    let v = W::widen(load32(yb.add(4 + 32 * c)));
                    W::store(y16.as_mut_ptr().add((t * nsb + sb) * 256 + 32 * c), v);
                }
            }
        }
        // IQ1_M: the sums of each four activations in the delta layout.
        let lanes_delta = K::DELTA == Delta::Lanes;
        let mut y4 = vec![0i16; if lanes_delta { n_tok * nsb * 64 } else { 0 }];
        if lanes_delta {
            for (ts, q) in y4.chunks_exact_mut(64).zip(y16.chunks_exact(256)) {
                for (p, v) in ts.iter_mut().enumerate() {
                    let (ib, k) = (4 * (p / 32) + p % 4, (p % 32) / 4);
                    *v = q[32 * ib + 4 * k..][..4].iter().sum();
                }
            }
        }
        for r0 in (0..n_rows).step_by(R) {
            let rows: [*const u8; R] =
                std::array::from_fn(|i| w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb));
            // Single tokens stream the weights once: prefetch ahead of
            // the tile (see `prefetch_ahead`).
            let pf = if T == 1 {
                w.as_ptr().wrapping_add((r0 + R) * wrb + PREFETCH_AHEAD)
            } else {
                std::ptr::null()
            };
            for t0 in (0..n_tok).step_by(T) {
                let tk: [usize; T] = std::array::from_fn(|j| (t0 + j).min(n_tok - 1));
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut acc_delta = [[_mm256_setzero_ps(); T]; R];
                let mut acc_bsums = [[0f32; T]; R];
                for sb in 0..nsb {
                    prefetch_ahead(pf, sb, R * K::BYTES);
                    let xb: [*const u8; R] = std::array::from_fn(|r| rows[r].add(sb * K::BYTES));
                    let mut sc = [[0i16; 16]; R];
                    for r in 0..R {
                        sc[r] = K::scales(xb[r]);
                    }
                    let mut lanes = [[W::zero(); T]; R];
                    for c in 0..8 {
                        let mut wv = [W::zero(); R];
                        for r in 0..R {
                            let v = W::widen(K::values(xb[r], c));
                            wv[r] = W::scale(v, sc[r][2 * c], sc[r][2 * c + 1]);
                        }
                        for j in 0..T {
                            let yv = W::load(y16.as_ptr().add((tk[j] * nsb + sb) * 256 + 32 * c));
                            for r in 0..R {
                                lanes[r][j] = W::dot(lanes[r][j], wv[r], yv);
                            }
                        }
                    }
                    for r in 0..R {
                        let dx = K::d(xb[r]);
                        let (mins, dmin_x) = if K::MINS {
                            K::mins(xb[r])
                        } else {
                            (_mm256_setzero_si256(), 0.0)
                        };
                        for j in 0..T {
                            let yd = *dy.get_unchecked(tk[j] * nsb + sb);
                            if K::MINS {
                                let ya = a.as_ptr().add(tk[j] * arb + sb * Q8K_BYTES);
                                let bsums = _mm256_loadu_si256(ya.add(260) as *const __m256i);
                                let prod = _mm256_madd_epi16(mins, bsums);
                                acc[r][j] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(-yd * dmin_x),
                                    _mm256_cvtepi32_ps(prod),
                                    acc[r][j],
                                );
                            }
                            let l8 = W::lanes8(lanes[r][j]);
                            acc[r][j] = _mm256_fmadd_ps(
                                _mm256_set1_ps(yd * dx),
                                _mm256_cvtepi32_ps(l8),
                                acc[r][j],
                            );
                        }
                        if K::DELTA == Delta::Bsums {
                            let m = K::bsum_multipliers(xb[r]);
                            for j in 0..T {
                                let yd = *dy.get_unchecked(tk[j] * nsb + sb);
                                let ya = a.as_ptr().add(tk[j] * arb + sb * Q8K_BYTES);
                                let bsums = _mm256_loadu_si256(ya.add(260) as *const __m256i);
                                let sumi = hsum_i32(_mm256_madd_epi16(m, bsums));
                                acc_bsums[r][j] = (yd * dx).mul_add(sumi as f32, acc_bsums[r][j]);
                            }
                        }
                        if lanes_delta {
                            let dw = [
                                W::widen(K::delta_weights(xb[r], &sc[r], 0)),
                                W::widen(K::delta_weights(xb[r], &sc[r], 1)),
                            ];
                            for j in 0..T {
                                let yd = *dy.get_unchecked(tk[j] * nsb + sb);
                                let y4p = y4.as_ptr().add((tk[j] * nsb + sb) * 64);
                                let l = W::dot(W::zero(), dw[0], W::load(y4p));
                                let l = W::dot(l, dw[1], W::load(y4p.add(32)));
                                acc_delta[r][j] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(yd * dx),
                                    _mm256_cvtepi32_ps(W::lanes8(l)),
                                    acc_delta[r][j],
                                );
                            }
                        }
                    }
                }
                for r in 0..R.min(n_rows - r0) {
                    for j in 0..T.min(n_tok - t0) {
                        let delta = match K::DELTA {
                            Delta::None => 0.0,
                            Delta::Bsums => acc_bsums[r][j],
                            Delta::Lanes => hsum8(acc_delta[r][j]),
                        };
                        *out.get_unchecked_mut((t0 + j) * n_rows + r0 + r) =
                            K::finish(hsum8(acc[r][j]), delta);
                    }
                }
            }
        }
    }
}

/// [`scaled_batch`] for `ty` (IQ4_XS, Q3_K or Q2_K): tiles of `R` rows x
/// `T` tokens, or of `R1` rows for one token (Q3_K and Q2_K; IQ4_XS's
/// single tokens gain nothing from the tile and take `vec_dot`).
///
/// # Safety
/// As [`scaled_batch`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scaled_shapes<W: Wide, const R: usize, const T: usize, const R1: usize>(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    use crate::GgmlType as G;
    // SAFETY: forwarded contract.
    unsafe {
        match (ty, n_tok > 1) {
            (G::IQ4XS, true) => scaled_batch::<Iq4Xs, W, R, T>(n, w, n_rows, a, arb, n_tok, out),
            (G::Q3K, true) => scaled_batch::<Q3K, W, R, T>(n, w, n_rows, a, arb, n_tok, out),
            (G::Q3K, false) => scaled_batch::<Q3K, W, R1, 1>(n, w, n_rows, a, arb, n_tok, out),
            (G::Q2K, true) => scaled_batch::<Q2K, W, R, T>(n, w, n_rows, a, arb, n_tok, out),
            (G::Q2K, false) => scaled_batch::<Q2K, W, R1, 1>(n, w, n_rows, a, arb, n_tok, out),
            (G::IQ2XXS, true) => {
                scaled_batch::<LatticeSuper<Iq2Xxs>, W, R, T>(n, w, n_rows, a, arb, n_tok, out)
            }
            (G::IQ2XS, true) => {
                scaled_batch::<LatticeSuper<Iq2Xs>, W, R, T>(n, w, n_rows, a, arb, n_tok, out)
            }
            (G::IQ2S, true) => {
                scaled_batch::<LatticeSuper<Iq2S>, W, R, T>(n, w, n_rows, a, arb, n_tok, out)
            }
            (G::IQ3XXS, true) => {
                scaled_batch::<LatticeSuper<Iq3Xxs>, W, R, T>(n, w, n_rows, a, arb, n_tok, out)
            }
            (G::IQ3S, true) => {
                scaled_batch::<LatticeSuper<Iq3S>, W, R, T>(n, w, n_rows, a, arb, n_tok, out)
            }
            (G::IQ1S, true) => scaled_batch::<Iq1S, W, R, T>(n, w, n_rows, a, arb, n_tok, out),
            (G::IQ1M, true) => scaled_batch::<Iq1M, W, R, T>(n, w, n_rows, a, arb, n_tok, out),
            _ => return false,
        }
    }
    true
}

/// [`q0_batch`] in the shape for `D`.
#[inline(always)]
unsafe fn q0_batch_shapes<B: Q0Block, D: IntDot>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        if D::VNNI {
            q0_batch_pairs::<B, 3, 4>(n, w, n_rows, a, arb, n_tok, out)
        } else {
            q0_batch::<B, D, 2, 4>(n, w, n_rows, a, arb, n_tok, out)
        }
    }
}

/// Tile products for the types with a kernel here; false for the others.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_types<D: IntDot>(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    use crate::GgmlType as G;
    // SAFETY: forwarded contract.
    unsafe {
        match ty {
            G::Q4_0 if n_tok > 1 => q0_batch_shapes::<Q4_0, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q5_0 if n_tok > 1 => q0_batch_shapes::<Q5_0, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q8_0 if n_tok > 1 => q0_batch_shapes::<Q8_0, D>(n, w, n_rows, a, arb, n_tok, out),
            // The lattices' chunks take longer to unpack: more tokens
            // per unpacked chunk (measured on a Zen 5 EPYC, 16 tokens:
            // 2 x 8 at 49-75 GMAC/s per core, 3 x 4 at 32-53).
            G::IQ2XXS | G::IQ2XS | G::IQ2S | G::IQ3XXS | G::IQ3S | G::IQ1S if D::VNNI => {
                return scaled_shapes::<Wide512, 2, 8, 4>(ty, n, w, n_rows, a, arb, n_tok, out);
            }
            // IQ1_M's second set of float lanes wants smaller tiles (the
            // same machine: 2 x 4 at 39 GMAC/s, 4 x 4 at 37, 3 x 4 at 35,
            // 2 x 8 at 29; IQ1_S 2 x 8 at 53, 4 x 4 at 51, 3 x 4 at 48).
            G::IQ1M if D::VNNI => {
                return scaled_shapes::<Wide512, 2, 4, 4>(ty, n, w, n_rows, a, arb, n_tok, out);
            }
            G::IQ4XS | G::Q3K | G::Q2K if D::VNNI => {
                return scaled_shapes::<Wide512, 3, 4, 4>(ty, n, w, n_rows, a, arb, n_tok, out);
            }
            G::IQ4XS
            | G::Q3K
            | G::Q2K
            | G::IQ2XXS
            | G::IQ2XS
            | G::IQ2S
            | G::IQ3XXS
            | G::IQ3S
            | G::IQ1S
            | G::IQ1M => {
                return scaled_shapes::<Wide256, 1, 4, 3>(ty, n, w, n_rows, a, arb, n_tok, out);
            }
            G::IQ4NL if n_tok > 1 && D::VNNI => {
                q0_batch_pairs::<Iq4Nl, 4, 2>(n, w, n_rows, a, arb, n_tok, out)
            }
            G::IQ4NL if n_tok > 1 => q0_batch::<Iq4Nl, D, 1, 4>(n, w, n_rows, a, arb, n_tok, out),
            G::MXFP4 if n_tok > 1 && D::VNNI => {
                q0_batch_pairs::<Mxfp4, 4, 2>(n, w, n_rows, a, arb, n_tok, out)
            }
            G::MXFP4 if n_tok > 1 => q0_batch::<Mxfp4, D, 1, 4>(n, w, n_rows, a, arb, n_tok, out),
            G::IQ4NL => drive_shapes::<Iq4Nl, D>(n, w, n_rows, a, arb, n_tok, out),
            G::MXFP4 => drive_shapes::<Mxfp4, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q4_0 => drive_shapes::<Q4_0, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q5_0 => drive_shapes::<Q5_0, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q8_0 => drive_shapes::<Q8_0, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q4_1 if n_tok > 1 && D::VNNI => {
                q1_batch_pairs::<Q4_1, 3, 4>(n, w, n_rows, a, arb, n_tok, out)
            }
            G::Q5_1 if n_tok > 1 && D::VNNI => {
                q1_batch_pairs::<Q5_1, 3, 4>(n, w, n_rows, a, arb, n_tok, out)
            }
            G::Q4_1 if n_tok > 1 => q1_batch::<Q4_1, D, 1, 4>(n, w, n_rows, a, arb, n_tok, out),
            G::Q5_1 if n_tok > 1 => q1_batch::<Q5_1, D, 1, 4>(n, w, n_rows, a, arb, n_tok, out),
            G::Q4_1 => drive_shapes::<Q1<Q4_1>, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q5_1 => drive_shapes::<Q1<Q5_1>, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q4K => drive_shapes::<Q4K, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q5K => drive_shapes::<Q5K, D>(n, w, n_rows, a, arb, n_tok, out),
            G::Q6K => drive_shapes::<Q6K, D>(n, w, n_rows, a, arb, n_tok, out),
            _ => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------
// F16 and F32 weights (AVX-512): ggml's `vec_dot_f16` / `vec_dot_f32`
// main loop per pair (four 16-lane FMA accumulators over steps of 64,
// folded `(s0+s2) + (s1+s3)`, then `_mm512_reduce_add_ps`), the tail
// after it per pair as the reference computes it.

/// A float weight type: 16 values from `p` widened to f32.
trait FloatElem {
    const BYTES: usize;
    unsafe fn load16(p: *const u8) -> __m512;
}

struct F16Elem;
struct F32Elem;

impl FloatElem for F16Elem {
    const BYTES: usize = 2;

    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        // SAFETY: 32 readable bytes at `p`; AVX-512F in every caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

impl FloatElem for F32Elem {
    const BYTES: usize = 4;

    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        // SAFETY: 64 readable bytes at `p`; AVX-512F in every caller.
        unsafe { _mm512_loadu_ps(p as *const f32) }
    }
}

/// GCC's `_mm512_reduce_add_ps`: halves of 8, then of 4, then pairs.
#[inline(always)]
unsafe fn reduce_add_16(v: __m512) -> f32 {
    // SAFETY: AVX-512F in every caller.
    unsafe {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let t3 = _mm256_add_ps(hi, _mm512_castps512_ps256(v));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        // Lanes 0 and 1 of t8: t6[0] + t6[2] and t6[1] + t6[3].
        let t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)))
    }
}

/// The main loop over the first `np` (a multiple of 64) values of `R`
/// weight rows and `T` f32 activation rows.
#[inline(always)]
unsafe fn float_tile<E: FloatElem, const R: usize, const T: usize>(
    np: usize,
    w: &[*const u8; R],
    x: &[*const f32; T],
    out: &mut [[f32; T]; R],
) {
    // SAFETY: the caller's contract: np values behind every pointer,
    // AVX-512F.
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); 4]; T]; R];
        for step in 0..np / 64 {
            for j in 0..4 {
                let k = 64 * step + 16 * j;
                let mut wv = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    wv[r] = E::load16(w[r].add(k * E::BYTES));
                }
                for t in 0..T {
                    let xv = _mm512_loadu_ps(x[t].add(k));
                    for r in 0..R {
                        acc[r][t][j] = _mm512_fmadd_ps(wv[r], xv, acc[r][t][j]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                let a = &acc[r][t];
                let s = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
                out[r][t] = reduce_add_16(s);
            }
        }
    }
}

/// llamafile's `tinyBLAS` order ([`crate::ggml::reference::sgemm_dot`])
/// over `n` (a multiple of 16) values of `R` weight rows and `T` f32
/// activation rows: one 16-lane accumulator per pair.
#[inline(always)]
unsafe fn sgemm_tile<E: FloatElem, const R: usize, const T: usize>(
    n: usize,
    w: &[*const u8; R],
    x: &[*const f32; T],
    out: &mut [[f32; T]; R],
) {
    // SAFETY: the caller's contract: n values behind every pointer,
    // AVX-512F.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for k in (0..n).step_by(16) {
            let mut wv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                wv[r] = E::load16(w[r].add(k * E::BYTES));
            }
            for t in 0..T {
                let xv = _mm512_loadu_ps(x[t].add(k));
                for r in 0..R {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] = reduce_add_16(acc[r][t]);
            }
        }
    }
}

/// Tiles of [`float_tile`] (or, `SGEMM`, of [`sgemm_tile`] over all `n`
/// values) over the whole product; `float_tile` leaves the tails.
///
/// # Safety
/// `w` must hold `n_rows` rows of `n` values of `E`, `x` `n_tok` rows of
/// `n` f32 values, `out` `n_rows * n_tok` values; AVX-512F.
#[inline(always)]
unsafe fn drive_float<E: FloatElem, const R: usize, const T: usize, const SGEMM: bool>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
) {
    let np = n & !63;
    super::x86::float_tiles::<R, T>(
        w,
        n * E::BYTES,
        n_rows,
        x,
        n,
        n_tok,
        out,
        |rows, toks, tile| {
            // SAFETY: whole rows behind every pointer (the caller's sizes);
            // AVX-512F per the caller.
            unsafe {
                if SGEMM {
                    sgemm_tile::<E, R, T>(n, rows, toks, tile);
                } else {
                    float_tile::<E, R, T>(np, rows, toks, tile);
                }
            }
        },
    );
}

/// F16 or F32 weights (`ty`) times activations of the same type, as
/// `gemm_at` documents; false for other types.
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C; the sizes as `gemm_avx2`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_float_avx512(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    use crate::ggml::reference::{vec_dot_f16_tail, vec_dot_f32_tail};
    use crate::GgmlType as G;
    if n_tok < 2 {
        // One row at a time streams memory best, and a tile of one token
        // saves no work: `vec_dot` per row does the same arithmetic.
        return false;
    }
    // Activations as f32 (exact for F16).
    // SAFETY: F16C and AVX are enabled here.
    let Some(x) = (unsafe { super::x86::float_rows_f32(ty, a) }) else {
        return false;
    };
    // SAFETY: the sizes are the caller's contract; AVX-512F is enabled.
    unsafe {
        match (ty, n_tok) {
            (G::F16, _) => drive_float::<F16Elem, 2, 3, false>(n, w, n_rows, &x, n_tok, out),
            _ => drive_float::<F32Elem, 2, 3, false>(n, w, n_rows, &x, n_tok, out),
        }
    }
    let np = n & !63;
    if np < n {
        let wrb = w.len() / n_rows;
        for t in 0..n_tok {
            let at = &a[t * arb..(t + 1) * arb];
            for r in 0..n_rows {
                let wr = &w[r * wrb..(r + 1) * wrb];
                let o = &mut out[t * n_rows + r];
                *o = if ty == G::F16 {
                    vec_dot_f16_tail(*o, np, n, wr, at)
                } else {
                    vec_dot_f32_tail(*o, np, n, wr, at)
                };
            }
        }
    }
    true
}

/// F16 or F32 weights (`ty`) times activations of the same type in
/// llamafile's `tinyBLAS` order ([`crate::ggml::reference::sgemm_dot`]),
/// `n` a multiple of 16; false for other types.
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C; the sizes as `gemm_avx2`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn sgemm_float_avx512(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    use crate::GgmlType as G;
    // SAFETY: F16C and AVX are enabled here.
    let Some(x) = (unsafe { super::x86::float_rows_f32(ty, a) }) else {
        return false;
    };
    // SAFETY: the sizes are the caller's contract; AVX-512F is enabled.
    // Tiles of 3 x 4 pairs (F16) and 4 x 4 (F32): the fastest shapes on
    // Zen 5 of those tried (4 x 6, 3 x 6, 2 x 6, 4 x 4, 3 x 4; BENCH-engine.md).
    unsafe {
        if ty == G::F16 {
            drive_float::<F16Elem, 3, 4, true>(n, w, n_rows, &x, n_tok, out);
        } else {
            drive_float::<F32Elem, 4, 4, true>(n, w, n_rows, &x, n_tok, out);
        }
    }
    true
}

// ---------------------------------------------------------------------
// BF16 weights (AVX-512): `vec_dot_bf16` emulates `vdpbf16ps`, whose
// every addition flushes a denormal result to zero and which treats
// denormal inputs as zero. Where no product can be denormal and none
// overflows, those flushes never fire and every product is exact, so
// `fma(w, a, c)` rounds exactly as the reference's `c + w * a` does; the
// tile runs there, and a (row, token) pair outside it goes to the
// reference (the proof and the bounds: `super::bf16`).

use super::bf16::{bf16_row_in_range, BF16_A_MIN, BF16_W_MIN};

/// The main loop over the first `np` (a multiple of 64) values of `R`
/// bf16 weight rows and `T` activation rows: the two folded `vdpbf16ps`
/// accumulators of each pair. `NATIVE` runs `vdpbf16ps` itself on the
/// activations' bf16 bytes; otherwise two FMAs per lane (odd product,
/// then even) on activations split by [`bf16_split`].
#[inline(always)]
unsafe fn bf16_tile<const NATIVE: bool, const R: usize, const T: usize>(
    np: usize,
    w: &[*const u8; R],
    x: &[*const u8; T],
    out: &mut [[[f32; 2]; T]; R],
) {
    // SAFETY: the caller's contract: np values behind every pointer (2
    // bytes each, or 4 for split activations), AVX-512F, and AVX512-BF16
    // when NATIVE.
    unsafe {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[[_mm512_setzero_ps(); 2]; T]; R];
        for step in 0..np / 64 {
            for h in 0..2 {
                let k = 64 * step + 32 * h;
                if NATIVE {
                    let mut wv = [_mm512_setzero_si512(); R];
                    for r in 0..R {
                        wv[r] = _mm512_loadu_si512(w[r].add(2 * k) as *const _);
                    }
                    for t in 0..T {
                        let xv = _mm512_loadu_si512(x[t].add(2 * k) as *const _);
                        for r in 0..R {
                            acc[r][t][h] = _mm512_dpbf16_ps(
                                acc[r][t][h],
                                std::mem::transmute::<__m512i, __m512bh>(wv[r]),
                                std::mem::transmute::<__m512i, __m512bh>(xv),
                            );
                        }
                    }
                    continue;
                }
                let mut odd = [_mm512_setzero_ps(); R];
                let mut even = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let v = _mm512_loadu_si512(w[r].add(2 * k) as *const _);
                    odd[r] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                    even[r] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                }
                for t in 0..T {
                    let xo = _mm512_loadu_ps(x[t].add(4 * k) as *const f32);
                    let xe = _mm512_loadu_ps(x[t].add(4 * k + 64) as *const f32);
                    for r in 0..R {
                        let a = _mm512_fmadd_ps(odd[r], xo, acc[r][t][h]);
                        acc[r][t][h] = _mm512_fmadd_ps(even[r], xe, a);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                for h in 0..2 {
                    out[r][t][h] = reduce_add_16(acc[r][t][h]);
                }
            }
        }
    }
}

/// The first `np` bf16 values of an activation row as f32, each chunk of
/// 32 as its 16 odd-numbered values, then its 16 even-numbered ones (the
/// two products of `vdpbf16ps`'s lanes, in its order).
///
/// # Safety
/// AVX-512F.
#[inline(always)]
unsafe fn bf16_split(row: &[u8], np: usize, out: &mut [f32]) {
    for (c, o) in row[..2 * np]
        .chunks_exact(64)
        .zip(out[..np].chunks_exact_mut(32))
    {
        // SAFETY: 64 bytes in, 32 f32 out; AVX-512F per the contract.
        unsafe {
            let v = _mm512_loadu_si512(c.as_ptr() as *const _);
            let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xffff_0000u32 as i32));
            _mm512_storeu_si512(o.as_mut_ptr() as *mut _, odd);
            _mm512_storeu_si512(o.as_mut_ptr().add(16) as *mut _, _mm512_slli_epi32::<16>(v));
        }
    }
}

/// Tiles of [`bf16_tile`] over one block of `R` rows and every token;
/// `x` points to the tokens as the tile reads them (`stride` bytes each,
/// `tok_ok.len()` of them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn drive_bf16<const NATIVE: bool, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    r0: usize,
    n_rows: usize,
    a: &[u8],
    x: *const u8,
    stride: usize,
    tok_ok: &[bool],
    out: &mut [f32],
) {
    use crate::ggml::reference::{vec_dot_bf16, vec_dot_bf16_tail};
    let (wrb, np) = (2 * n, n & !63);
    let n_tok = tok_ok.len();
    let row = |i: usize| &w[i * wrb..(i + 1) * wrb];
    // A plain loop: a closure would not inherit the caller's features.
    let mut row_ok = [true; R];
    for i in 0..R.min(n_rows - r0) {
        row_ok[i] = bf16_row_in_range(row(r0 + i), BF16_W_MIN);
    }
    // SAFETY: min(r0 + i, n_rows - 1) < n_rows rows fit in `w`.
    let rows: [*const u8; R] =
        std::array::from_fn(|i| unsafe { w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb) });
    for t0 in (0..n_tok).step_by(T) {
        // SAFETY: as above for the tokens in `x`.
        let toks: [*const u8; T] =
            std::array::from_fn(|j| unsafe { x.add((t0 + j).min(n_tok - 1) * stride) });
        let mut tile = [[[0f32; 2]; T]; R];
        // SAFETY: whole rows (above); the features per the caller.
        unsafe { bf16_tile::<NATIVE, R, T>(np, &rows, &toks, &mut tile) };
        for (i, row_tile) in tile.iter().enumerate().take(n_rows - r0) {
            let wr = row(r0 + i);
            for (j, c) in row_tile.iter().enumerate().take(n_tok - t0) {
                let (r, t) = (r0 + i, t0 + j);
                let at = &a[t * wrb..(t + 1) * wrb];
                out[t * n_rows + r] = if row_ok[i] && tok_ok[t] {
                    vec_dot_bf16_tail(c[0], c[1], np, n, wr, at)
                } else {
                    vec_dot_bf16(n, wr, at)
                };
            }
        }
    }
}

/// [`gemm_bf16_avx512`] or [`gemm_bf16_native`].
#[inline(always)]
unsafe fn gemm_bf16<const NATIVE: bool>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    let np = n & !63;
    let mut tok_ok = vec![false; n_tok];
    for (t, at) in a.chunks_exact(2 * n).enumerate() {
        tok_ok[t] = bf16_row_in_range(at, BF16_A_MIN);
    }
    // The tokens as the tile reads them: the bf16 bytes themselves, or
    // split into f32 (`stride` bytes per token either way).
    let mut split = vec![0f32; if NATIVE { 0 } else { n_tok * np }];
    if !NATIVE {
        for (t, at) in a.chunks_exact(2 * n).enumerate() {
            // SAFETY: AVX-512F per the caller.
            unsafe { bf16_split(at, np, &mut split[t * np..(t + 1) * np]) };
        }
    }
    let (x, stride) = if NATIVE {
        (a.as_ptr(), 2 * n)
    } else {
        (split.as_ptr() as *const u8, 4 * np)
    };
    for r0 in (0..n_rows).step_by(if n_tok == 1 { 2 } else { 3 }) {
        // SAFETY: the sizes are the caller's contract; the features per
        // the caller.
        unsafe {
            if n_tok == 1 {
                // One token streams the rows from memory: ask for them
                // ahead of the scan.
                let ahead = (r0 + 2) * 2 * n + PREFETCH_AHEAD;
                if ahead < w.len() {
                    prefetch_ahead(w.as_ptr().add(ahead), 0, 4 * n);
                }
                drive_bf16::<NATIVE, 2, 1>(n, w, r0, n_rows, a, x, stride, &tok_ok, out);
            } else {
                drive_bf16::<NATIVE, 3, 4>(n, w, r0, n_rows, a, x, stride, &tok_ok, out);
            }
        }
    }
}

/// BF16 weights times BF16 activations, as `gemm_at` documents, with
/// `vdpbf16ps`'s arithmetic emulated by FMAs.
///
/// # Safety
/// The CPU must support AVX-512F/BW and FMA; `w` must hold `n_rows` rows
/// of `n` bf16 values, `a` `n_tok` rows of `n` bf16 values, `out`
/// `n_rows * n_tok` values.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
pub(super) unsafe fn gemm_bf16_avx512(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { gemm_bf16::<false>(n, w, n_rows, a, n_tok, out) }
}

/// [`gemm_bf16_avx512`] with `vdpbf16ps` itself (the same bits: in the
/// tile's exact case its two roundings are those the FMAs make).
///
/// # Safety
/// As [`gemm_bf16_avx512`], and the CPU must support AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
pub(super) unsafe fn gemm_bf16_native(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { gemm_bf16::<true>(n, w, n_rows, a, n_tok, out) }
}

// ---------------------------------------------------------------------
// Decoded f32 weights (safetensors, MLX): `vector::dot`'s order per pair
// (16 lanes of `acc += w * x`, the product rounded, then the sum; folded
// by halves; the leftover values summed in order and added last), in
// tiles of `DENSE_R` rows x `DENSE_T` tokens.

/// `out[t * ldo + r] = dot(w[r], x[t])` for `R` rows and `T` tokens of
/// `cols` values.
#[inline(always)]
unsafe fn dense_tile<const R: usize, const T: usize>(
    w: [&[f32]; R],
    x: [&[f32]; T],
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let n16 = cols / 16 * 16;
    // SAFETY: every row holds `cols` values (the caller's slices);
    // AVX-512F per the caller.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut k = 0;
        while k < n16 {
            let mut xv = [_mm512_setzero_ps(); T];
            for t in 0..T {
                xv[t] = _mm512_loadu_ps(x[t].as_ptr().add(k));
            }
            for r in 0..R {
                let wv = _mm512_loadu_ps(w[r].as_ptr().add(k));
                for t in 0..T {
                    acc[r][t] = _mm512_add_ps(acc[r][t], _mm512_mul_ps(wv, xv[t]));
                }
            }
            k += 16;
        }
        for r in 0..R {
            for t in 0..T {
                let mut tail = 0f32;
                for d in n16..cols {
                    tail += w[r][d] * x[t][d];
                }
                // The fold by halves is `_mm512_reduce_add_ps`'s order.
                out[t * ldo + r] = reduce_add_16(acc[r][t]) + tail;
            }
        }
    }
}

/// `vector::dot_tile` on AVX-512: tiles of [`DENSE_R`] rows x
/// [`DENSE_T`] tokens, the edges through the level's `dot`.
///
/// # Safety
/// The CPU must support AVX-512F; `out` must hold `rows * toks` values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn dot_tile_f32_avx512(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    const R: usize = DENSE_R;
    const T: usize = DENSE_T;
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let (rows, toks) = (w.len() / cols, x.len() / cols);
    assert!(out.len() >= rows * toks);
    let (rows_t, toks_t) = (rows / R * R, toks / T * T);
    let wr = |r: usize| -> [&[f32]; R] { std::array::from_fn(|i| &w[(r + i) * cols..][..cols]) };
    for t in (0..toks_t).step_by(T) {
        let xr: [&[f32]; T] = std::array::from_fn(|j| &x[(t + j) * cols..][..cols]);
        for r in (0..rows_t).step_by(R) {
            // SAFETY: whole rows; AVX-512F is enabled here.
            unsafe { dense_tile::<R, T>(wr(r), xr, cols, &mut out[t * rows + r..], rows) };
        }
    }
    // Leftover tokens one at a time against the same row blocks.
    for t in toks_t..toks {
        let xr = [&x[t * cols..][..cols]];
        for r in (0..rows_t).step_by(R) {
            // SAFETY: whole rows; AVX-512F is enabled here.
            unsafe { dense_tile::<R, 1>(wr(r), xr, cols, &mut out[t * rows + r..], rows) };
        }
    }
    // Leftover rows.
    for t in 0..toks {
        for r in rows_t..rows {
            let (wr, xr) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
            super::dot_f32::run(super::Level::Avx512, wr, xr, &mut out[t * rows + r]);
        }
    }
}

/// Rows per dense tile (the engine's tasks hold 16 rows).
const DENSE_R: usize = 4;
/// Tokens per dense tile.
const DENSE_T: usize = 6;

/// [`gemm_types`] with AVX2 integer products.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold `n_rows` rows of
/// `n` values of `ty`, `a` `n_tok` rows of `arb` bytes (`n` values of
/// `ty`'s activation type), `out` `n_rows * n_tok` values.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_avx2(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { gemm_types::<Avx2>(ty, n, w, n_rows, a, arb, n_tok, out) }
}

/// [`gemm_types`] with AVX-512 VNNI integer products.
///
/// # Safety
/// As [`gemm_avx2`], and the CPU must support AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_vnni(
    ty: crate::GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { gemm_types::<Vnni>(ty, n, w, n_rows, a, arb, n_tok, out) }
}
