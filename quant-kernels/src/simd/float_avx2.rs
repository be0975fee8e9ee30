//! F16, F32 and BF16 weights on CPUs with AVX2 but no AVX-512.
//!
//! The reference dot products ([`vec_dot_f16`], [`vec_dot_f32`],
//! [`vec_dot_bf16`]) keep 16-lane accumulators, as ggml's AVX-512 build
//! does. Lane-wise arithmetic does not care how wide the register is, so
//! here each 16-lane accumulator is two 8-lane ones: a *stream* is one
//! 8-lane accumulator and the values it takes in every 64-value step (F16
//! and F32: 8 streams of 8 values; BF16: 4 streams of 8 pairs). The
//! streams are folded into the reference's 16 lanes at the end and
//! reduced in its order, so every output is the reference's, bit for bit.
//!
//! Eight accumulators per (row, token) pair leave no registers for a
//! tile, so batches run one stream at a time over a tile of rows and
//! tokens (the tile's rows stay in L1 between the passes), and single
//! pairs run every stream in one pass.
//!
//! [`vec_dot_f16`]: crate::ggml::reference::vec_dot_f16
//! [`vec_dot_f32`]: crate::ggml::reference::vec_dot_f32
//! [`vec_dot_bf16`]: crate::ggml::reference::vec_dot_bf16

// Kernels index rows, tokens and streams in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::bf16::{bf16_row_in_range, BF16_A_MIN, BF16_W_MIN};
use crate::ggml::reference::{
    reduce_add_16, vec_dot_bf16, vec_dot_bf16_tail, vec_dot_f16_tail, vec_dot_f32_tail,
};
use crate::GgmlType;

/// A float element type of weights or activations: 8 values at a time
/// widened to f32.
trait Elem {
    const BYTES: usize;
    /// The 8 values at `p`.
    unsafe fn load8(p: *const u8) -> __m256;
}

struct F16;
struct F32;

impl Elem for F16 {
    const BYTES: usize = 2;

    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: 16 readable bytes at `p`; F16C in every caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

impl Elem for F32 {
    const BYTES: usize = 4;

    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: 32 readable bytes at `p`; AVX in every caller.
        unsafe { _mm256_loadu_ps(p as *const f32) }
    }
}

/// Streams `s0..s0 + S` of the F16/F32 main loop over the first `np`
/// values (a multiple of 64) of `R` weight rows of `W` and `T` activation
/// rows of `X`: stream `s` takes values `64 i + 8 s .. 64 i + 8 s + 8`.
/// Writes each pair's streams to `out[r][t][s]`.
#[inline(always)]
unsafe fn float_streams<W: Elem, X: Elem, const R: usize, const T: usize, const S: usize>(
    np: usize,
    s0: usize,
    w: &[*const u8; R],
    x: &[*const u8; T],
    out: &mut [[[[f32; 8]; 8]; T]; R],
) {
    // SAFETY: the caller's contract: `np` values behind every pointer;
    // AVX2, FMA and F16C.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); S]; T]; R];
        for step in 0..np / 64 {
            for q in 0..S {
                let k = 64 * step + 8 * (s0 + q);
                let mut wv = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    wv[r] = W::load8(w[r].add(k * W::BYTES));
                }
                for t in 0..T {
                    let xv = X::load8(x[t].add(k * X::BYTES));
                    for r in 0..R {
                        acc[r][t][q] = _mm256_fmadd_ps(wv[r], xv, acc[r][t][q]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                for q in 0..S {
                    _mm256_storeu_ps(out[r][t][s0 + q].as_mut_ptr(), acc[r][t][q]);
                }
            }
        }
    }
}

/// The reference's fold of its four 16-lane accumulators (`(s0 + s2) +
/// (s1 + s3)`, then `_mm512_reduce_add_ps`) from the 8 streams:
/// accumulator `j` is streams `2j` (lanes 0-7) and `2j + 1` (lanes 8-15).
fn fold_float(st: &[[f32; 8]; 8]) -> f32 {
    let mut lanes = [0f32; 16];
    for h in 0..2 {
        for l in 0..8 {
            lanes[8 * h + l] = (st[h][l] + st[4 + h][l]) + (st[2 + h][l] + st[6 + h][l]);
        }
    }
    reduce_add_16(&lanes)
}

/// `vec_dot_f16` / `vec_dot_f32` of one pair.
#[inline(always)]
unsafe fn dot_float<E: Elem>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() >= E::BYTES * n && a.len() >= E::BYTES * n);
    let np = n & !63;
    let mut st = [[[[0f32; 8]; 8]; 1]; 1];
    // SAFETY: `np <= n` values in both rows (asserted); the features per
    // the caller.
    unsafe { float_streams::<E, E, 1, 1, 8>(np, 0, &[w.as_ptr()], &[a.as_ptr()], &mut st) };
    float_tail::<E>(fold_float(&st[0][0]), np, n, w, a)
}

/// The reference's tail of the F16 or F32 dot product after the main loop.
#[inline(always)]
fn float_tail<E: Elem>(main: f32, np: usize, n: usize, w: &[u8], a: &[u8]) -> f32 {
    if E::BYTES == 2 {
        vec_dot_f16_tail(main, np, n, w, a)
    } else {
        vec_dot_f32_tail(main, np, n, w, a)
    }
}

/// `ggml_vec_dot_f16` (as `ggml::reference::vec_dot_f16` defines it) with
/// AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here.
    unsafe { dot_float::<F16>(n, w, a) }
}

/// `ggml_vec_dot_f32` (as `ggml::reference::vec_dot_f32` defines it) with
/// AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: the features are enabled here.
    unsafe { dot_float::<F32>(n, w, a) }
}

/// Rows `r0..` and every token, `R` rows and `T` tokens at a time, one
/// stream per pass (`x`: the tokens as f32, `n` values each).
#[inline(always)]
unsafe fn drive_float<E: Elem, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    x: &[f32],
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    let (wrb, np) = (n * E::BYTES, n & !63);
    for r0 in (0..n_rows).step_by(R) {
        let mut rows = [w.as_ptr(); R];
        for i in 0..R {
            // SAFETY: min(r0 + i, n_rows - 1) < n_rows rows fit in `w`.
            rows[i] = unsafe { w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb) };
        }
        for t0 in (0..n_tok).step_by(T) {
            let mut toks = [x.as_ptr() as *const u8; T];
            for j in 0..T {
                // SAFETY: as above for the tokens in `x`.
                toks[j] = unsafe { x.as_ptr().add((t0 + j).min(n_tok - 1) * n) as *const u8 };
            }
            let mut st = [[[[0f32; 8]; 8]; T]; R];
            for s in 0..8 {
                // SAFETY: whole rows (above); the features per the caller.
                unsafe { float_streams::<E, F32, R, T, 1>(np, s, &rows, &toks, &mut st) };
            }
            for i in 0..R.min(n_rows - r0) {
                let wr = &w[(r0 + i) * wrb..(r0 + i + 1) * wrb];
                for j in 0..T.min(n_tok - t0) {
                    let t = t0 + j;
                    let at = &a[t * wrb..(t + 1) * wrb];
                    out[t * n_rows + r0 + i] =
                        float_tail::<E>(fold_float(&st[i][j]), np, n, wr, at);
                }
            }
        }
    }
}

/// F16 or F32 weights (`ty`) times activations of the same type, as
/// `gemm_at` documents; false for other types and for one token (the
/// caller's loop of [`vec_dot_f16`] per row does the same work).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the sizes as `gemm_at` checks
/// them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_float(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    if n_tok < 2 || !matches!(ty, GgmlType::F16 | GgmlType::F32) {
        return false;
    }
    // The tokens as f32 once (exact for F16), read by every row block.
    // SAFETY: F16C and AVX are enabled here.
    let Some(x) = (unsafe { super::x86::float_rows_f32(ty, a) }) else {
        return false;
    };
    // SAFETY: the sizes are the caller's contract; the features are
    // enabled here.
    unsafe {
        if ty == GgmlType::F16 {
            drive_float::<F16, 3, 4>(n, w, n_rows, &x, a, n_tok, out);
        } else {
            drive_float::<F32, 3, 4>(n, w, n_rows, &x, a, n_tok, out);
        }
    }
    true
}

/// llamafile's `tinyBLAS` order ([`crate::ggml::reference::sgemm_dot`])
/// over `n` (a multiple of 16) values of `R` weight rows and `T` f32
/// activation rows: each pair's 16-lane accumulator as two 8-lane ones.
#[inline(always)]
unsafe fn sgemm_tile<E: Elem, const R: usize, const T: usize>(
    n: usize,
    w: &[*const u8; R],
    x: &[*const f32; T],
    out: &mut [[f32; T]; R],
) {
    // SAFETY: the caller's contract: n values behind every pointer; AVX2,
    // FMA and F16C.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
        for k in (0..n).step_by(16) {
            let mut wv = [[_mm256_setzero_ps(); 2]; R];
            for r in 0..R {
                for h in 0..2 {
                    wv[r][h] = E::load8(w[r].add((k + 8 * h) * E::BYTES));
                }
            }
            for t in 0..T {
                for h in 0..2 {
                    let xv = _mm256_loadu_ps(x[t].add(k + 8 * h));
                    for r in 0..R {
                        acc[r][t][h] = _mm256_fmadd_ps(wv[r][h], xv, acc[r][t][h]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                let mut lanes = [0f32; 16];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][t][0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[r][t][1]);
                out[r][t] = reduce_add_16(&lanes);
            }
        }
    }
}

/// F16 or F32 weights (`ty`) times activations of the same type in
/// llamafile's `tinyBLAS` order ([`crate::ggml::reference::sgemm_dot`]),
/// `n` a multiple of 16; false for other types.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the sizes as `gemm_at` checks
/// them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn sgemm_float(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    const R: usize = 2;
    const T: usize = 2;
    // SAFETY: F16C and AVX are enabled here.
    let Some(x) = (unsafe { super::x86::float_rows_f32(ty, a) }) else {
        return false;
    };
    let wrb = n * if ty == GgmlType::F16 { 2 } else { 4 };
    super::x86::float_tiles::<R, T>(w, wrb, n_rows, &x, n, n_tok, out, |rows, toks, tile| {
        // SAFETY: whole rows behind every pointer (the caller's sizes); the
        // features are enabled here.
        unsafe {
            if ty == GgmlType::F16 {
                sgemm_tile::<F16, R, T>(n, rows, toks, tile);
            } else {
                sgemm_tile::<F32, R, T>(n, rows, toks, tile);
            }
        }
    });
    true
}

// ---------------------------------------------------------------------
// BF16: the reference emulates `vdpbf16ps` (see `gemm_x86`'s BF16 section
// for why two FMAs give its bits where no value is out of range). Stream
// `s` (0..4) takes the 8 pairs of values `64 i + 16 s .. 64 i + 16 s +
// 16`; accumulator `h` of the reference is streams `2h` and `2h + 1`.

/// Streams `s0..s0 + S` of the BF16 main loop over the first `np` values
/// of `R` bf16 weight rows and `T` activation rows split by
/// [`bf16_split`]. Writes each pair's streams to `out[r][t][s]`.
#[inline(always)]
unsafe fn bf16_streams<const R: usize, const T: usize, const S: usize>(
    np: usize,
    s0: usize,
    w: &[*const u8; R],
    x: &[*const f32; T],
    out: &mut [[[[f32; 8]; 4]; T]; R],
) {
    // SAFETY: the caller's contract: `np` values behind every pointer (2
    // bytes each, 4 for the split activations); AVX2 and FMA.
    unsafe {
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[[_mm256_setzero_ps(); S]; T]; R];
        for step in 0..np / 64 {
            for q in 0..S {
                let k = 64 * step + 16 * (s0 + q);
                let mut odd = [_mm256_setzero_ps(); R];
                let mut even = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let v = _mm256_loadu_si256(w[r].add(2 * k) as *const __m256i);
                    odd[r] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                    even[r] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                }
                for t in 0..T {
                    let xo = _mm256_loadu_ps(x[t].add(k));
                    let xe = _mm256_loadu_ps(x[t].add(k + 8));
                    for r in 0..R {
                        let c = _mm256_fmadd_ps(odd[r], xo, acc[r][t][q]);
                        acc[r][t][q] = _mm256_fmadd_ps(even[r], xe, c);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                for q in 0..S {
                    _mm256_storeu_ps(out[r][t][s0 + q].as_mut_ptr(), acc[r][t][q]);
                }
            }
        }
    }
}

/// The first `np` (a multiple of 16) bf16 values of `row` as f32, each
/// run of 16 as its 8 odd-numbered values, then its 8 even-numbered ones.
#[inline(always)]
fn bf16_split(row: &[u8], np: usize, out: &mut [f32]) {
    for (c, o) in row[..2 * np]
        .chunks_exact(32)
        .zip(out[..np].chunks_exact_mut(16))
    {
        let p = c.as_ptr() as *const u32;
        for j in 0..8 {
            // SAFETY: pair j's four bytes are inside the chunk; an
            // unaligned read (byte-wise assembly would not vectorize).
            let v = u32::from_le(unsafe { p.add(j).read_unaligned() });
            o[j] = f32::from_bits(v & 0xffff_0000);
            o[8 + j] = f32::from_bits(v << 16);
        }
    }
}

/// Rows `r0..` and every token of the BF16 product, `R` rows and `T`
/// tokens at a time, `S` streams per pass (4: one pass).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn drive_bf16<const R: usize, const T: usize, const S: usize>(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    x: &[f32],
    tok_ok: &[bool],
    out: &mut [f32],
) {
    let (wrb, np) = (2 * n, n & !63);
    let n_tok = tok_ok.len();
    for r0 in (0..n_rows).step_by(R) {
        let mut rows = [w.as_ptr(); R];
        let mut row_ok = [false; R];
        for i in 0..R {
            // SAFETY: min(r0 + i, n_rows - 1) < n_rows rows fit in `w`.
            rows[i] = unsafe { w.as_ptr().add((r0 + i).min(n_rows - 1) * wrb) };
            if r0 + i < n_rows {
                row_ok[i] = bf16_row_in_range(&w[(r0 + i) * wrb..(r0 + i + 1) * wrb], BF16_W_MIN);
            }
        }
        for t0 in (0..n_tok).step_by(T) {
            let mut toks = [x.as_ptr(); T];
            for j in 0..T {
                // SAFETY: as above for the tokens in `x` (`np` each).
                toks[j] = unsafe { x.as_ptr().add((t0 + j).min(n_tok - 1) * np) };
            }
            let mut st = [[[[0f32; 8]; 4]; T]; R];
            for s in (0..4).step_by(S) {
                // SAFETY: whole rows (above); the features per the caller.
                unsafe { bf16_streams::<R, T, S>(np, s, &rows, &toks, &mut st) };
            }
            for i in 0..R.min(n_rows - r0) {
                let wr = &w[(r0 + i) * wrb..(r0 + i + 1) * wrb];
                for j in 0..T.min(n_tok - t0) {
                    let t = t0 + j;
                    let at = &a[t * wrb..(t + 1) * wrb];
                    out[t * n_rows + r0 + i] = if row_ok[i] && tok_ok[t] {
                        let st = &st[i][j];
                        let half = |h: usize| {
                            let mut lanes = [0f32; 16];
                            lanes[..8].copy_from_slice(&st[2 * h]);
                            lanes[8..].copy_from_slice(&st[2 * h + 1]);
                            reduce_add_16(&lanes)
                        };
                        vec_dot_bf16_tail(half(0), half(1), np, n, wr, at)
                    } else {
                        vec_dot_bf16(n, wr, at)
                    };
                }
            }
        }
    }
}

/// BF16 weights times BF16 activations, as `gemm_at` documents, with
/// `vdpbf16ps`'s arithmetic emulated by FMAs where the values allow (the
/// reference elsewhere).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `n` must be nonzero, `w` hold
/// `n_rows` rows of `n` bf16 values, `a` `n_tok` rows of `n` bf16 values,
/// `out` `n_rows * n_tok` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_bf16(
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    let np = n & !63;
    let mut tok_ok = vec![false; n_tok];
    let mut x = vec![0f32; n_tok * np];
    for (t, at) in a.chunks_exact(2 * n).enumerate() {
        tok_ok[t] = bf16_row_in_range(at, BF16_A_MIN);
        bf16_split(at, np, &mut x[t * np..(t + 1) * np]);
    }
    // SAFETY: the sizes are the caller's contract; the features are
    // enabled here.
    unsafe {
        if n_tok == 1 {
            drive_bf16::<1, 1, 4>(n, w, n_rows, a, &x, &tok_ok, out);
        } else {
            drive_bf16::<2, 4, 1>(n, w, n_rows, a, &x, &tok_ok, out);
        }
    }
}
