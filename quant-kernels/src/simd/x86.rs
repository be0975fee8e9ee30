//! x86-64 kernels written with intrinsics.

use std::arch::x86_64::*;

/// F16 bytes to f32 (exact), 8 at a time with F16C.
///
/// # Safety
/// The CPU must support AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn f16_to_f32_row(x: &[u8], y: &mut [f32]) {
    assert_eq!(x.len(), 2 * y.len());
    let n = y.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, so bytes [2i, 2i + 16) of x and values
        // [i, i + 8) of y are in bounds; loads and stores are unaligned.
        unsafe {
            let h = _mm_loadu_si128(x.as_ptr().add(2 * i) as *const __m128i);
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        y[j] = crate::float::read_f16(&x[2 * j..2 * j + 2]);
    }
}

/// F16 or F32 activation rows (`ty`, raw bytes) as f32, exactly: what
/// the float tiles read. None for other types.
///
/// # Safety
/// The CPU must support AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn float_rows_f32(ty: crate::GgmlType, a: &[u8]) -> Option<Vec<f32>> {
    match ty {
        crate::GgmlType::F16 => {
            let mut x = vec![0f32; a.len() / 2];
            // SAFETY: the features are enabled here; 2 bytes per value.
            unsafe { f16_to_f32_row(a, &mut x) };
            Some(x)
        }
        crate::GgmlType::F32 => Some(
            a.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        _ => None,
    }
}

/// Runs `tile` over the product of `n_rows` weight rows (`row_bytes`
/// each, in `w`) and `n_tok` f32 activation rows (`n` values each, in
/// `x`), `R` rows and `T` tokens at a time, and writes the result of row
/// `r` and token `t` to `out[t * n_rows + r]`. A partial tile repeats
/// the last row or token, whose results it drops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn float_tiles<const R: usize, const T: usize>(
    w: &[u8],
    row_bytes: usize,
    n_rows: usize,
    x: &[f32],
    n: usize,
    n_tok: usize,
    out: &mut [f32],
    mut tile: impl FnMut(&[*const u8; R], &[*const f32; T], &mut [[f32; T]; R]),
) {
    for r0 in (0..n_rows).step_by(R) {
        let rows: [*const u8; R] =
            std::array::from_fn(|i| w[(r0 + i).min(n_rows - 1) * row_bytes..].as_ptr());
        for t0 in (0..n_tok).step_by(T) {
            let toks: [*const f32; T] =
                std::array::from_fn(|j| x[(t0 + j).min(n_tok - 1) * n..].as_ptr());
            let mut out_tile = [[0f32; T]; R];
            tile(&rows, &toks, &mut out_tile);
            for (i, row) in out_tile.iter().enumerate().take(n_rows - r0) {
                for (j, &v) in row.iter().enumerate().take(n_tok - t0) {
                    out[(t0 + j) * n_rows + r0 + i] = v;
                }
            }
        }
    }
}

/// f32 to F16 bytes, round to nearest even (what ggml's
/// `GGML_FP32_TO_FP16` computes), 8 at a time with F16C.
///
/// # Safety
/// The CPU must support AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn f32_to_f16_row(x: &[f32], y: &mut [u8]) {
    assert_eq!(y.len(), 2 * x.len());
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, so values [i, i + 8) of x and bytes
        // [2i, 2i + 16) of y are in bounds; loads and stores are unaligned.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(y.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        }
        i += 8;
    }
    for j in i..n {
        crate::float::write_f16(&mut y[2 * j..2 * j + 2], x[j]);
    }
}

/// Rounds f32 values to f16 (nearest even) and back, 8 at a time with F16C.
///
/// # Safety
/// The CPU must support AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn round_to_f16(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: 8 values in `c`; loads and stores are unaligned.
        unsafe {
            let v = _mm256_loadu_ps(c.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for v in chunks.into_remainder() {
        *v = crate::float::f16_to_f32(crate::float::f32_to_f16(*v));
    }
}

// ---------------------------------------------------------------------
// Quantizers with explicit AVX2. Every lane performs the scalar
// reference's operations in its order (no FMA: `_mm256_mul_ps` then
// `_mm256_add_ps` where the C has `a*b + c`).

use crate::ggml::reference::MinSearch;

/// f32 -> f16 bits, round to nearest even (F16C).
#[inline(always)]
unsafe fn f16_bits(v: f32) -> u16 {
    // SAFETY: the callers run with F16C enabled (their target features).
    unsafe {
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
    }
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let m = _mm_max_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

#[inline(always)]
unsafe fn hmin(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let m = _mm_min_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

/// The 32 values of a block.
#[inline(always)]
unsafe fn load32(x: &[f32]) -> [__m256; 4] {
    debug_assert!(x.len() >= 32);
    // SAFETY: x holds at least 32 values (callers pass whole blocks).
    unsafe {
        let p = x.as_ptr();
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

/// Low bytes of 32 i32 (C's truncating int -> uint8_t), in value order.
#[inline(always)]
unsafe fn low_bytes(i: [__m256i; 4]) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let m = _mm256_set1_epi32(0xFF);
        let ab = _mm256_packus_epi32(_mm256_and_si256(i[0], m), _mm256_and_si256(i[1], m));
        let cd = _mm256_packus_epi32(_mm256_and_si256(i[2], m), _mm256_and_si256(i[3], m));
        let b = _mm256_packus_epi16(ab, cd);
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// `roundf` (half away from zero), exact: the fraction `x - trunc(x)` is
/// exact, and |x| >= 2^23 has none.
#[inline(always)]
unsafe fn round_away(v: __m256) -> __m256 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }
}

/// `quantize_row_q8_0_ref`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        // SAFETY: whole blocks: 32 values in, 34 bytes out.
        unsafe {
            let v = load32(xb);
            let sign = _mm256_set1_ps(-0.0);
            let a = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let amax = hmax(a);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            let m = _mm256_set1_ps(id);
            let q = v.map(|v| _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v, m))));
            _mm256_storeu_si256(yb.as_mut_ptr().add(2) as *mut __m256i, low_bytes(q));
        }
    }
}

/// `(int8_t)(v)` then `MIN(limit, ...)` then as `uint8_t`, for 32 values.
#[inline(always)]
unsafe fn trunc_i8_min(v: [__m256; 4], limit: i8) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let b = low_bytes(v.map(|v| _mm256_cvttps_epi32(v)));
        _mm256_min_epi8(b, _mm256_set1_epi8(limit))
    }
}

/// `q[j] | q[j+16] << 4` for 32 level bytes (Q4_0/Q4_1 packing; the low
/// nibble is not masked, as in ggml).
#[inline(always)]
unsafe fn pack_nibbles(q: __m256i, out: &mut [u8]) {
    // SAFETY: AVX2 is enabled in every caller; out has 16 bytes.
    unsafe {
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let hi = _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xF0u8 as i8));
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm_or_si128(lo, hi));
    }
}

/// The first value of largest magnitude, with its sign (+0 if all zero).
#[inline(always)]
unsafe fn signed_absmax(v: &[__m256; 4]) -> f32 {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let amax = hmax(a);
        if amax == 0.0 {
            return 0.0;
        }
        let (pa, na) = (_mm256_set1_ps(amax), _mm256_set1_ps(-amax));
        let mut pos = 0u32;
        let mut neg = 0u32;
        for (i, v) in v.iter().enumerate() {
            pos |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*v, pa)) as u32) << (8 * i);
            neg |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*v, na)) as u32) << (8 * i);
        }
        if pos.trailing_zeros() < neg.trailing_zeros() {
            amax
        } else {
            -amax
        }
    }
}

#[inline(always)]
unsafe fn min_max(v: &[__m256; 4]) -> (f32, f32) {
    // SAFETY: AVX is enabled in every caller.
    unsafe {
        let lo = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
        let hi = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
        (hmin(lo), hmax(hi))
    }
}

/// `quantize_row_q4_0_ref`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        // SAFETY: whole blocks: 32 values in, 18 bytes out.
        unsafe {
            let v = load32(xb);
            let max = signed_absmax(&v);
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            let (m, h) = (_mm256_set1_ps(id), _mm256_set1_ps(8.5));
            let q = trunc_i8_min(v.map(|v| _mm256_add_ps(_mm256_mul_ps(v, m), h)), 15);
            pack_nibbles(q, &mut yb[2..18]);
        }
    }
}

/// `quantize_row_q4_1_ref`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(20)) {
        // SAFETY: whole blocks: 32 values in, 20 bytes out.
        unsafe {
            let v = load32(xb);
            let (min, max) = min_max(&v);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            yb[2..4].copy_from_slice(&f16_bits(min).to_le_bytes());
            let (mn, m, h) = (_mm256_set1_ps(min), _mm256_set1_ps(id), _mm256_set1_ps(0.5));
            let q = trunc_i8_min(
                v.map(|v| _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, mn), m), h)),
                15,
            );
            pack_nibbles(q, &mut yb[4..20]);
        }
    }
}

/// Q5 packing: bit 4 of each level into `qh` (bit j for value j), both
/// nibbles masked into `qs`.
#[inline(always)]
unsafe fn pack_q5(q: __m256i, qh: &mut [u8], qs: &mut [u8]) {
    // SAFETY: AVX2 is enabled in every caller; qh has 4 bytes, qs 16.
    unsafe {
        let bits = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(q)) as u32;
        qh[..4].copy_from_slice(&bits.to_le_bytes());
        let lo = _mm_and_si128(_mm256_castsi256_si128(q), _mm_set1_epi8(0x0F));
        let hi = _mm_and_si128(
            _mm_slli_epi16::<4>(_mm256_extracti128_si256::<1>(q)),
            _mm_set1_epi8(0xF0u8 as i8),
        );
        _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm_or_si128(lo, hi));
    }
}

/// `quantize_row_q5_0_ref`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(22)) {
        // SAFETY: whole blocks: 32 values in, 22 bytes out.
        unsafe {
            let v = load32(xb);
            let max = signed_absmax(&v);
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            let (m, h) = (_mm256_set1_ps(id), _mm256_set1_ps(16.5));
            let q = trunc_i8_min(v.map(|v| _mm256_add_ps(_mm256_mul_ps(v, m), h)), 31);
            let (qh, qs) = yb[2..].split_at_mut(4);
            pack_q5(q, qh, qs);
        }
    }
}

/// `quantize_row_q5_1_ref` (no upper clamp on the levels, as in ggml).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(24)) {
        // SAFETY: whole blocks: 32 values in, 24 bytes out.
        unsafe {
            let v = load32(xb);
            let (min, max) = min_max(&v);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            yb[2..4].copy_from_slice(&f16_bits(min).to_le_bytes());
            let (mn, m, h) = (_mm256_set1_ps(min), _mm256_set1_ps(id), _mm256_set1_ps(0.5));
            let q = low_bytes(v.map(|v| {
                _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, mn), m), h))
            }));
            let (qh, qs) = yb[4..].split_at_mut(4);
            pack_q5(q, qh, qs);
        }
    }
}

/// Whether every value is finite: the largest `bits & 0x7fffffff` is
/// below the infinity pattern.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn all_finite(x: &[f32]) -> bool {
    let mut chunks = x.chunks_exact(32);
    let mut m = _mm256_setzero_si256();
    for c in &mut chunks {
        // SAFETY: as above.
        unsafe {
            let mask = _mm256_set1_epi32(0x7fff_ffff);
            for v in load32(c) {
                m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_castps_si256(v), mask));
            }
        }
    }
    let mut lanes = [0i32; 8];
    // SAFETY: lanes has room for 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, m) };
    lanes.iter().all(|&b| b < 0x7f80_0000) && chunks.remainder().iter().all(|v| v.is_finite())
}

// ---------------------------------------------------------------------
// K-quant searches across 8 sub-blocks (lane k = sub-block k).

#[inline(always)]
unsafe fn nearest(v: __m256) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        _mm256_sub_epi32(
            _mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }
}

#[inline(always)]
unsafe fn clamp_i(v: __m256i, lo: i32, hi: i32) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        _mm256_max_epi32(
            _mm256_min_epi32(v, _mm256_set1_epi32(hi)),
            _mm256_set1_epi32(lo),
        )
    }
}

#[inline(always)]
unsafe fn ld(r: &[f32; 8]) -> __m256 {
    // SAFETY: 8 values; AVX is enabled in every caller.
    unsafe { _mm256_loadu_ps(r.as_ptr()) }
}

#[inline(always)]
unsafe fn st(v: __m256) -> [f32; 8] {
    let mut r = [0f32; 8];
    // SAFETY: 8 values; AVX is enabled in every caller.
    unsafe { _mm256_storeu_ps(r.as_mut_ptr(), v) };
    r
}

/// `make_qkx2_quants` (or, with `le_degenerate`, `make_qkx3_quants`) on 8
/// groups of N values, value i of group k at `x[i][k]`; per group
/// (scale, the_min), levels into `lq`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn make_qkx_8<const N: usize>(
    nmax: i32,
    x: &[[f32; 8]; N],
    w: &[[f32; 8]; N],
    lq: &mut [[u8; 8]; N],
    p: MinSearch,
    le_degenerate: bool,
) -> ([f32; 8], [f32; 8]) {
    // SAFETY: AVX2 is enabled; all loads and stores go through `ld`/`st`
    // on 8-value arrays.
    unsafe {
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let mut min = ld(&x[0]);
        let mut max = min;
        let mut sum_w = ld(&w[0]);
        let mut sum_x = _mm256_mul_ps(sum_w, min);
        for i in 1..N {
            let (xi, wi) = (ld(&x[i]), ld(&w[i]));
            min = _mm256_blendv_ps(min, xi, _mm256_cmp_ps::<_CMP_LT_OQ>(xi, min));
            max = _mm256_blendv_ps(max, xi, _mm256_cmp_ps::<_CMP_GT_OQ>(xi, max));
            sum_w = _mm256_add_ps(sum_w, wi);
            sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wi, xi));
        }
        min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min, zero));
        let degenerate = if le_degenerate {
            _mm256_cmp_ps::<_CMP_LE_OQ>(max, min)
        } else {
            _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min)
        };
        let min0 = min;
        let nmaxf = nmax as f32;
        let iscale = _mm256_div_ps(_mm256_set1_ps(nmaxf), _mm256_sub_ps(max, min));
        let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
        let err_of = |d: __m256| {
            if p.use_mad {
                _mm256_andnot_ps(sign, d)
            } else {
                _mm256_mul_ps(d, d)
            }
        };
        let mut lbest = [zero; N];
        let mut best = zero;
        for i in 0..N {
            let (xi, wi) = (ld(&x[i]), ld(&w[i]));
            let l = clamp_i(
                nearest(_mm256_mul_ps(iscale, _mm256_sub_ps(xi, min))),
                0,
                nmax,
            );
            let lf = _mm256_cvtepi32_ps(l);
            lbest[i] = lf;
            let d = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, lf), min), xi);
            best = _mm256_add_ps(best, _mm256_mul_ps(wi, err_of(d)));
        }
        if p.nstep >= 1 {
            let mut laux = [zero; N];
            for is in 0..=p.nstep {
                // `min` may have moved in an earlier step, as in ggml.
                let iscale = _mm256_div_ps(
                    _mm256_set1_ps(p.rmin + p.rdelta * is as f32 + nmaxf),
                    _mm256_sub_ps(max, min),
                );
                let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
                for i in 0..N {
                    let (xi, wi) = (ld(&x[i]), ld(&w[i]));
                    let l = clamp_i(
                        nearest(_mm256_mul_ps(iscale, _mm256_sub_ps(xi, min))),
                        0,
                        nmax,
                    );
                    let lf = _mm256_cvtepi32_ps(l);
                    laux[i] = lf;
                    let wl = _mm256_mul_ps(wi, lf);
                    sum_l = _mm256_add_ps(sum_l, wl);
                    sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
                    sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xi));
                }
                let det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
                let mut this_scale = _mm256_div_ps(
                    _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
                    det,
                );
                let mut this_min = _mm256_div_ps(
                    _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
                    det,
                );
                let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, zero);
                this_min = _mm256_blendv_ps(this_min, zero, pos);
                this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), pos);
                let mut err = zero;
                for i in 0..N {
                    let (xi, wi) = (ld(&x[i]), ld(&w[i]));
                    let d = _mm256_sub_ps(
                        _mm256_add_ps(_mm256_mul_ps(this_scale, laux[i]), this_min),
                        xi,
                    );
                    err = _mm256_add_ps(err, _mm256_mul_ps(wi, err_of(d)));
                }
                let take = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(det, zero),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(err, best),
                );
                if _mm256_movemask_ps(take) != 0 {
                    best = _mm256_blendv_ps(best, err, take);
                    scale = _mm256_blendv_ps(scale, this_scale, take);
                    min = _mm256_blendv_ps(min, this_min, take);
                    for i in 0..N {
                        lbest[i] = _mm256_blendv_ps(lbest[i], laux[i], take);
                    }
                }
            }
        }
        scale = _mm256_blendv_ps(scale, zero, degenerate);
        min = _mm256_blendv_ps(min, min0, degenerate);
        for i in 0..N {
            let l = st(_mm256_andnot_ps(degenerate, lbest[i]));
            for k in 0..8 {
                lq[i][k] = l[k] as u8;
            }
        }
        (st(scale), st(_mm256_xor_ps(min, sign)))
    }
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, NULL)` on 8 groups of N
/// values (weights x^2); levels offset by `nmax` into `lq`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn make_qx_8<const N: usize>(
    nmax: i32,
    x: &[[f32; 8]; N],
    lq: &mut [[i8; 8]; N],
) -> [f32; 8] {
    // SAFETY: AVX2 is enabled; all loads and stores go through `ld`/`st`
    // on 8-value arrays.
    unsafe {
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let mut amax = zero;
        let mut max = zero;
        for row in x {
            let xi = ld(row);
            let ax = _mm256_andnot_ps(sign, xi);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = _mm256_blendv_ps(amax, ax, gt);
            max = _mm256_blendv_ps(max, xi, gt);
        }
        let sums = |iscale: __m256, levels: &mut [__m256i; N]| {
            let (mut sumlx, mut suml2) = (zero, zero);
            for i in 0..N {
                let xi = ld(&x[i]);
                let l = clamp_i(nearest(_mm256_mul_ps(iscale, xi)), -nmax, nmax - 1);
                levels[i] = l;
                let lf = _mm256_cvtepi32_ps(l);
                let w = _mm256_mul_ps(xi, xi);
                sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, xi), lf));
                suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, lf), lf));
            }
            (sumlx, suml2)
        };
        let mut lbest = [_mm256_setzero_si256(); N];
        let (sumlx, suml2) = sums(
            _mm256_div_ps(_mm256_set1_ps((-nmax) as f32), max),
            &mut lbest,
        );
        let nz = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
        let mut scale = _mm256_and_ps(nz, _mm256_div_ps(sumlx, suml2));
        let mut best = _mm256_mul_ps(scale, sumlx);
        let mut cand = [_mm256_setzero_si256(); N];
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32 + 0.1 * is as f32)), max);
            let (sumlx, suml2) = sums(iscale, &mut cand);
            let take = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumlx, sumlx),
                    _mm256_mul_ps(best, suml2),
                ),
            );
            if _mm256_movemask_ps(take) != 0 {
                let s = _mm256_div_ps(sumlx, suml2);
                scale = _mm256_blendv_ps(scale, s, take);
                best = _mm256_blendv_ps(best, _mm256_mul_ps(s, sumlx), take);
                let t = _mm256_castps_si256(take);
                for i in 0..N {
                    lbest[i] = _mm256_blendv_epi8(lbest[i], cand[i], t);
                }
            }
        }
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(
            amax,
            _mm256_set1_ps(crate::ggml::reference::GROUP_MAX_EPS),
        );
        scale = _mm256_andnot_ps(small, scale);
        let off = _mm256_set1_epi32(nmax);
        for i in 0..N {
            let l =
                _mm256_andnot_si256(_mm256_castps_si256(small), _mm256_add_epi32(lbest[i], off));
            let mut v = [0i32; 8];
            _mm256_storeu_si256(v.as_mut_ptr() as *mut __m256i, l);
            for k in 0..8 {
                lq[i][k] = v[k] as i8;
            }
        }
        st(scale)
    }
}

/// `dequantize_row_q2_K` (the vectorizer makes scatters of the portable
/// version).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in x.chunks_exact(84).zip(y.chunks_exact_mut(256)) {
        let d = crate::float::read_f16(&xb[80..82]);
        let min = crate::float::read_f16(&xb[82..84]);
        for n in 0..2 {
            for half in 0..2 {
                // SAFETY: 16 bytes at 16 + 32n + 16half < 80 are in the block.
                let q = unsafe {
                    _mm_loadu_si128(xb.as_ptr().add(16 + 32 * n + 16 * half) as *const __m128i)
                };
                for s in 0..4 {
                    let sc = xb[8 * n + 2 * s + half];
                    let dl = _mm256_set1_ps(d * f32::from(sc & 0xF));
                    let ml = _mm256_set1_ps(min * f32::from(sc >> 4));
                    let v = _mm_and_si128(
                        _mm_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)),
                        _mm_set1_epi8(3),
                    );
                    let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                    let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v)));
                    let at = 128 * n + 32 * s + 16 * half;
                    // SAFETY: values [at, at + 16) are in the 256 of this block.
                    unsafe {
                        let p = yb.as_mut_ptr().add(at);
                        _mm256_storeu_ps(p, _mm256_sub_ps(_mm256_mul_ps(dl, lo), ml));
                        _mm256_storeu_ps(p.add(8), _mm256_sub_ps(_mm256_mul_ps(dl, hi), ml));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// IQ4 searches across 8 groups of 32 (IQ4_XS: the sub-blocks of a
// super-block; IQ4_NL: 8 consecutive blocks).

const IQ4_VALUES: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// ggml's `best_index_int8` over `kvalues_iq4nl` for 8 values at once:
/// (index, value). The bisection ends at the largest j with
/// `values[j] <= x`; then the nearer neighbour, ties to the upper one; x
/// below the first value gives 0, at or above the last 15, NaN 15.
#[inline(always)]
unsafe fn best_index_iq4(x: __m256) -> (__m256i, __m256) {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let mut count = _mm256_setzero_si256();
        for v in &IQ4_VALUES[1..] {
            let le = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_set1_ps(*v), x));
            count = _mm256_sub_epi32(count, le);
        }
        let tlo = _mm256_loadu_ps(IQ4_VALUES.as_ptr());
        let thi = _mm256_loadu_ps(IQ4_VALUES.as_ptr().add(8));
        let lookup = |i: __m256i| {
            let lo = _mm256_permutevar8x32_ps(tlo, i);
            let hi = _mm256_permutevar8x32_ps(thi, i);
            let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7)));
            _mm256_blendv_ps(lo, hi, upper)
        };
        let ml = count;
        let mu = _mm256_min_epi32(
            _mm256_add_epi32(ml, _mm256_set1_epi32(1)),
            _mm256_set1_epi32(15),
        );
        let (vl, vu) = (lookup(ml), lookup(mu));
        let take_lo = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(x, vl), _mm256_sub_ps(vu, x));
        // count == 15 (x at or above the last value) and NaN give 15.
        let top = _mm256_or_si256(
            _mm256_cmpeq_epi32(ml, _mm256_set1_epi32(15)),
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)),
        );
        let take_lo = _mm256_andnot_ps(_mm256_castsi256_ps(top), take_lo);
        let idx = _mm256_blendv_epi8(mu, ml, _mm256_castps_si256(take_lo));
        let idx = _mm256_blendv_epi8(idx, _mm256_set1_epi32(15), top);
        (idx, _mm256_blendv_ps(vu, vl, take_lo))
    }
}

/// The scale search of `quantize_row_iq4_nl_impl` with ntry > 0 on 8
/// groups of 32 values (`x[j][k]`, weights `w[j][k]`): the scale d of
/// each group, 0 for an all-(near-)zero one. (With ntry > 0 ggml
/// recomputes the levels from the final scales, so only d matters.)
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn iq4_scales_8(x: &[[f32; 8]; 32], w: &[[f32; 8]; 32], ntry: i32) -> [f32; 8] {
    // SAFETY: AVX2 is enabled; loads and stores through `ld`/`st`.
    unsafe {
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let mut amax = zero;
        let mut max = zero;
        for row in x {
            let xi = ld(row);
            let ax = _mm256_andnot_ps(sign, xi);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = _mm256_blendv_ps(amax, ax, gt);
            max = _mm256_blendv_ps(max, xi, gt);
        }
        let sums = |id: __m256| {
            let (mut sumqx, mut sumq2) = (zero, zero);
            for j in 0..32 {
                let (xj, wj) = (ld(&x[j]), ld(&w[j]));
                let (_, q) = best_index_iq4(_mm256_mul_ps(id, xj));
                let wq = _mm256_mul_ps(wj, q);
                sumqx = _mm256_add_ps(sumqx, _mm256_mul_ps(wq, xj));
                sumq2 = _mm256_add_ps(sumq2, _mm256_mul_ps(wq, q));
            }
            (sumqx, sumq2)
        };
        let v0 = IQ4_VALUES[0];
        let d = _mm256_div_ps(_mm256_xor_ps(max, sign), _mm256_set1_ps(v0));
        let (sumqx, sumq2) = sums(_mm256_div_ps(_mm256_set1_ps(1.0), d));
        let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero);
        let mut d = _mm256_and_ps(pos, _mm256_div_ps(sumqx, sumq2));
        let mut best = _mm256_mul_ps(d, sumqx);
        for itry in -ntry..=ntry {
            let id = _mm256_div_ps(_mm256_set1_ps((itry + v0 as i32) as f32), max);
            let (sumqx, sumq2) = sums(id);
            let take = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumqx, sumqx),
                    _mm256_mul_ps(best, sumq2),
                ),
            );
            let nd = _mm256_div_ps(sumqx, sumq2);
            d = _mm256_blendv_ps(d, nd, take);
            best = _mm256_blendv_ps(best, _mm256_mul_ps(nd, sumqx), take);
        }
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(
            amax,
            _mm256_set1_ps(crate::ggml::reference::GROUP_MAX_EPS),
        );
        st(_mm256_andnot_ps(small, d))
    }
}

/// `best_index_int8(16, kvalues_iq4nl, id * x[j])` for 32 values, the
/// levels packed as IQ4 stores them (`L[j] | L[j + 16] << 4`).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn iq4_levels_32(x: &[f32], id: f32, qs: &mut [u8]) {
    // SAFETY: AVX2 is enabled; x has 32 values, qs 16 bytes.
    unsafe {
        let v = load32(x);
        let m = _mm256_set1_ps(id);
        let i = v.map(|v| best_index_iq4(_mm256_mul_ps(m, v)).0);
        let b = low_bytes(i);
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm_slli_epi16::<4>(_mm256_extracti128_si256::<1>(b));
        _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm_or_si128(lo, hi));
    }
}

/// `make_q3_quants(16, 4, x, L, do_rmse = true)` on 8 groups of 16 values
/// (value i of group k at `x[i][k]`); levels offset by 4 into `lq`. A
/// group whose refinement pass changed nothing would change nothing in
/// the next pass either, so running the passes until no group changes
/// gives each group ggml's result.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn make_q3_8(x: &[[f32; 8]; 16], lq: &mut [[i8; 8]; 16]) -> [f32; 8] {
    const NMAX: i32 = 4;
    // SAFETY: AVX2 is enabled; loads and stores through `ld`/`st`.
    unsafe {
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let mut amax = zero;
        let mut max = zero;
        for row in x {
            let xi = ld(row);
            let ax = _mm256_andnot_ps(sign, xi);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = _mm256_blendv_ps(amax, ax, gt);
            max = _mm256_blendv_ps(max, xi, gt);
        }
        let iscale = _mm256_div_ps(_mm256_set1_ps(-NMAX as f32), max);
        let mut l = [zero; 16];
        let (mut sumlx, mut suml2) = (zero, zero);
        for i in 0..16 {
            let xi = ld(&x[i]);
            let li =
                _mm256_cvtepi32_ps(clamp_i(nearest(_mm256_mul_ps(iscale, xi)), -NMAX, NMAX - 1));
            l[i] = li;
            let w = _mm256_mul_ps(xi, xi);
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, xi), li));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, li), li));
        }
        for _ in 0..5 {
            let mut changed = _mm256_setzero_ps();
            for i in 0..16 {
                let xi = ld(&x[i]);
                let w = _mm256_mul_ps(xi, xi);
                let wx = _mm256_mul_ps(w, xi);
                let slx = _mm256_sub_ps(sumlx, _mm256_mul_ps(wx, l[i]));
                let sl2 = _mm256_sub_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, l[i]), l[i]));
                let new_l = _mm256_cvtepi32_ps(clamp_i(
                    nearest(_mm256_div_ps(_mm256_mul_ps(xi, sl2), slx)),
                    -NMAX,
                    NMAX - 1,
                ));
                let slx2 = _mm256_add_ps(slx, _mm256_mul_ps(wx, new_l));
                let sl22 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, new_l), new_l));
                let better = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(_mm256_mul_ps(slx2, slx2), suml2),
                    _mm256_mul_ps(_mm256_mul_ps(sumlx, sumlx), sl22),
                );
                let accept = _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero),
                        _mm256_cmp_ps::<_CMP_NEQ_UQ>(new_l, l[i]),
                    ),
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sl22, zero), better),
                );
                l[i] = _mm256_blendv_ps(l[i], new_l, accept);
                sumlx = _mm256_blendv_ps(sumlx, slx2, accept);
                suml2 = _mm256_blendv_ps(suml2, sl22, accept);
                changed = _mm256_or_ps(changed, accept);
            }
            if _mm256_movemask_ps(changed) == 0 {
                break;
            }
        }
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(
            amax,
            _mm256_set1_ps(crate::ggml::reference::GROUP_MAX_EPS),
        );
        for i in 0..16 {
            // Zero groups keep level 0 (not offset), as ggml returns early.
            let v = st(_mm256_andnot_ps(
                small,
                _mm256_add_ps(l[i], _mm256_set1_ps(NMAX as f32)),
            ));
            for k in 0..8 {
                lq[i][k] = v[k] as i8;
            }
        }
        let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero);
        st(_mm256_andnot_ps(
            small,
            _mm256_and_ps(pos, _mm256_div_ps(sumlx, suml2)),
        ))
    }
}

/// `dequantize_row_q8_0`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in x.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(crate::float::read_f16(&xb[0..2]));
        for c in 0..4 {
            // SAFETY: bytes [2 + 8c, 10 + 8c) are in the 34-byte block and
            // values [8c, 8c + 8) in the 32 of this block.
            unsafe {
                let q = _mm_loadl_epi64(xb.as_ptr().add(2 + 8 * c) as *const __m128i);
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(yb.as_mut_ptr().add(8 * c), _mm256_mul_ps(v, d));
            }
        }
    }
}

/// 32 unsigned levels (bytes) times `d` minus `m`, stored at `out`.
#[inline(always)]
unsafe fn scale_32(q: __m256i, d: f32, m: f32, out: &mut [f32]) {
    debug_assert!(out.len() >= 32);
    // SAFETY: AVX2 is enabled in every caller; out has 32 values.
    unsafe {
        let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        for (c, p) in parts.into_iter().enumerate() {
            let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(p));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(8 * c),
                _mm256_sub_ps(_mm256_mul_ps(d, v), m),
            );
        }
    }
}

/// `dequantize_row_q4_K` and `dequantize_row_q5_K` (`HIGH`: the fifth bit
/// from `qh`).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dequantize_q45_k<const HIGH: bool>(x: &[u8], y: &mut [f32]) {
    let bb = if HIGH { 176 } else { 144 };
    for (xb, yb) in x.chunks_exact(bb).zip(y.chunks_exact_mut(256)) {
        let d = crate::float::read_f16(&xb[0..2]);
        let min = crate::float::read_f16(&xb[2..4]);
        let qs_at = if HIGH { 48 } else { 16 };
        for n in 0..4 {
            let (sc1, m1) = crate::ggml::reference::get_scale_min_k4(2 * n, &xb[4..16]);
            let (sc2, m2) = crate::ggml::reference::get_scale_min_k4(2 * n + 1, &xb[4..16]);
            // SAFETY: the 32 bytes at qs_at + 32n (and the 32 of qh) are in
            // the block.
            unsafe {
                let q = _mm256_loadu_si256(xb.as_ptr().add(qs_at + 32 * n) as *const __m256i);
                let mask = _mm256_set1_epi8(0x0F);
                let mut lo = _mm256_and_si256(q, mask);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
                if HIGH {
                    let qh = _mm256_loadu_si256(xb.as_ptr().add(16) as *const __m256i);
                    let one = _mm256_set1_epi8(1);
                    let b1 = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * n as i32)),
                        one,
                    );
                    let b2 = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * n as i32 + 1)),
                        one,
                    );
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(b1));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(b2));
                }
                let out = &mut yb[64 * n..64 * n + 64];
                scale_32(lo, d * f32::from(sc1), min * f32::from(m1), &mut out[..32]);
                scale_32(hi, d * f32::from(sc2), min * f32::from(m2), &mut out[32..]);
            }
        }
    }
}

/// Copies f32 values into their little-endian bytes and reports whether
/// all were finite, in one pass (F32 "quantization").
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn copy_f32_checked(x: &[f32], y: &mut [u8]) -> bool {
    assert_eq!(y.len(), 4 * x.len());
    let mask = _mm256_set1_epi32(0x7fff_ffff);
    let mut m = _mm256_setzero_si256();
    let n8 = x.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: values [i, i + 8) of x and bytes [4i, 4i + 32) of y are in
        // bounds (i + 8 <= n8 <= x.len(), y.len() == 4 * x.len()).
        unsafe {
            let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            m = _mm256_max_epi32(m, _mm256_and_si256(v, mask));
            _mm256_storeu_si256(y.as_mut_ptr().add(4 * i) as *mut __m256i, v);
        }
    }
    let mut lanes = [0i32; 8];
    // SAFETY: lanes has room for 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, m) };
    let mut finite = lanes.iter().all(|&b| b < 0x7f80_0000);
    for i in n8..x.len() {
        y[4 * i..4 * i + 4].copy_from_slice(&x[i].to_le_bytes());
        finite &= x[i].is_finite();
    }
    finite
}

/// `packs_epi32` then `packs_epi16` of 32 i32 (signed saturation to i8),
/// in value order.
#[inline(always)]
unsafe fn saturated_bytes(i: [__m256i; 4]) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller.
    unsafe {
        let ab = _mm256_packs_epi32(i[0], i[1]);
        let cd = _mm256_packs_epi32(i[2], i[3]);
        let b = _mm256_packs_epi16(ab, cd);
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The CPU backend's `quantize_row_q8_0` / `_q8_1` (activations): scale
/// `amax/127`, values `x * (127/amax)` rounded half to even (`cvtps2dq`,
/// which gives `i32::MIN` out of range as the reference's `cvt_rne`),
/// saturated to i8; Q8_1 adds `d * sum` of the unsaturated values.
#[inline(always)]
unsafe fn quantize_q8_act<const Q8_1: bool>(x: &[f32], y: &mut [u8]) {
    let bytes = if Q8_1 { 36 } else { 34 };
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(bytes)) {
        // SAFETY: whole blocks: 32 values in, `bytes` out; AVX2 and F16C
        // are enabled in every caller.
        unsafe {
            let v = load32(xb);
            let sign = _mm256_set1_ps(-0.0);
            let a = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let amax = hmax(a);
            let d = amax / 127.0;
            yb[0..2].copy_from_slice(&f16_bits(d).to_le_bytes());
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let m = _mm256_set1_ps(id);
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], m));
            }
            let at = if Q8_1 { 4 } else { 2 };
            _mm256_storeu_si256(yb.as_mut_ptr().add(at) as *mut __m256i, saturated_bytes(q));
            if Q8_1 {
                let s =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let mut l = [0i32; 8];
                _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s);
                let sum = l.iter().fold(0i32, |acc, v| acc.wrapping_add(*v));
                yb[2..4].copy_from_slice(&f16_bits(d * sum as f32).to_le_bytes());
            }
        }
    }
}

/// [`quantize_q8_act`] for Q8_0.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q8_0_act(x: &[f32], y: &mut [u8]) {
    // SAFETY: the features are enabled here.
    unsafe { quantize_q8_act::<false>(x, y) }
}

/// [`quantize_q8_act`] for Q8_1.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn quantize_q8_1_act(x: &[f32], y: &mut [u8]) {
    // SAFETY: the features are enabled here.
    unsafe { quantize_q8_act::<true>(x, y) }
}
