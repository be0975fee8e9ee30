//! mlx's floating-point block modes on the CPU backend: `mxfp4`, `mxfp8`
//! (E8M0 scale per 32) and `nvfp4` (E4M3 scale per 16).
//!
//! On CPU, `mx.quantize` runs these as a graph of ordinary array ops (the
//! `fallback` of `fp_quantize` in `ops.cpp`), each op rounding its result
//! to the array's dtype. The reference below performs the same ops in the
//! same dtypes:
//!
//! - mx modes: `s = D(amax / maxval)` (maxval 6 or 448, D the input dtype);
//!   the E8M0 exponent is `n = ceil(log2(s))` computed exactly (0 when
//!   s = 0), stored as `(n + 127) mod 256`; elements are `D(w / D(2^n))`.
//!   mlx 0.32.4 rounds the exponent up (mlx PR #4353; older releases
//!   rounded to nearest) — established against the installed mlx, whose
//!   exact source was not available: the mirror reached 0.32.2.
//! - nvfp4: `s = D(amax / 6)`, times the f32 `2688 / global_scale` (1
//!   without one), to E4M3; elements `f32(D(w / e4m3) * encode)`.
//! - E2M1 elements (mxfp4, nvfp4) are the `argmin` over mlx's 16-entry
//!   table of `|D(x - lut[i])|` (f32 for nvfp4), the first index on ties:
//!   exact halfway values go toward zero and small negatives to +0
//!   (code 0, never 8). E4M3 elements (mxfp8) use `ToFP8`.

use super::numeric::{ceil_log2, from_fp8_e4m3, pow2, round_to, to_fp8_e4m3, FP4_LUT};
use super::{DequantPrecision, MlxDtype, MlxMode};

/// `argmin(abs(x - lut))` over mlx's E2M1 table with each difference
/// rounded to `dtype`; the first minimum wins and NaN never replaces a
/// number (mlx's `ArgMin` compares with `<`).
#[inline]
fn e2m1_code(x: f32, dtype: MlxDtype) -> u8 {
    let mut best = round_to(dtype, x - FP4_LUT[0]).abs();
    let mut code = 0u8;
    for (i, &v) in FP4_LUT.iter().enumerate().skip(1) {
        let d = round_to(dtype, x - v).abs();
        if d < best {
            best = d;
            code = i as u8;
        }
    }
    code
}

fn amax(w: &[f32]) -> f32 {
    w.iter()
        .fold(0.0f32, |m, &x| if x.abs() > m { x.abs() } else { m })
}

/// Quantizes one group of f32 values (widened from `dtype`): element codes
/// into `codes` (4-bit codes one per byte, or E4M3 bytes) and returns the
/// encoded scale.
pub(crate) fn quantize_group_ref(
    w: &[f32],
    mode: MlxMode,
    dtype: MlxDtype,
    global_scale: Option<f32>,
    codes: &mut [u8],
) -> u8 {
    let a = amax(w);
    match mode {
        MlxMode::Mxfp4 | MlxMode::Mxfp8 => {
            let maxval = if mode == MlxMode::Mxfp8 { 448.0 } else { 6.0 };
            let s = round_to(dtype, a / maxval);
            let n = if s == 0.0 { 0 } else { ceil_log2(s) };
            let p = round_to(dtype, pow2(n));
            for (c, &x) in codes.iter_mut().zip(w) {
                let e = round_to(dtype, x / p);
                *c = if mode == MlxMode::Mxfp8 {
                    to_fp8_e4m3(e)
                } else {
                    e2m1_code(e, dtype)
                };
            }
            (n + 127) as u8
        }
        MlxMode::Nvfp4 => {
            let encode = global_scale.map_or(1.0, |g| 2688.0 / g);
            let s = round_to(dtype, a / 6.0) * encode;
            let code = to_fp8_e4m3(s);
            let sv = from_fp8_e4m3(code);
            for (c, &x) in codes.iter_mut().zip(w) {
                let e = round_to(dtype, x / sv) * encode;
                *c = e2m1_code(e, MlxDtype::F32);
            }
            code
        }
        MlxMode::Affine => unreachable!("affine groups go through mlx::affine"),
    }
}

/// Dequantizes one group from its element codes and encoded scale.
pub(crate) fn dequantize_group_ref(
    codes: &[u8],
    scale_code: u8,
    mode: MlxMode,
    global_scale: Option<f32>,
    precision: DequantPrecision,
    out: &mut [f32],
) {
    let elem = |c: u8| match mode {
        MlxMode::Mxfp8 => from_fp8_e4m3(c),
        _ => FP4_LUT[usize::from(c & 15)],
    };
    match (mode, global_scale) {
        (MlxMode::Nvfp4, Some(g)) => {
            // mlx multiplies by the f32 `global_scale / 2688` and so computes
            // (and returns) f32 whatever the requested dtype.
            let scale = from_fp8_e4m3(scale_code) * (g / 2688.0);
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = elem(c) * scale;
            }
        }
        _ => {
            let dtype = match precision {
                DequantPrecision::F32 => MlxDtype::F32,
                DequantPrecision::Mlx(d) => d,
            };
            let scale = match mode {
                MlxMode::Nvfp4 => round_to(dtype, from_fp8_e4m3(scale_code)),
                _ => round_to(dtype, pow2(i32::from(scale_code) - 127)),
            };
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = round_to(dtype, round_to(dtype, elem(c)) * scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_ties_go_toward_zero_and_negative_zero_is_never_chosen() {
        assert_eq!(e2m1_code(0.25, MlxDtype::F32), 0);
        assert_eq!(e2m1_code(0.75, MlxDtype::F32), 1);
        assert_eq!(e2m1_code(5.0, MlxDtype::F32), 6);
        assert_eq!(e2m1_code(-5.0, MlxDtype::F32), 14);
        assert_eq!(e2m1_code(-0.1, MlxDtype::F32), 0);
        assert_eq!(e2m1_code(-0.0, MlxDtype::F32), 0);
        assert_eq!(e2m1_code(100.0, MlxDtype::F32), 7);
        assert_eq!(e2m1_code(f32::INFINITY, MlxDtype::F32), 0);
        assert_eq!(e2m1_code(f32::NAN, MlxDtype::F32), 0);
    }

    #[test]
    fn mxfp4_scale_rounds_up() {
        // amax 6.5 -> s = 1.083 -> n = 1: elements halve, nothing saturates.
        let mut w = [0.0f32; 32];
        w[0] = 6.5;
        w[1] = -3.0;
        let mut codes = [0u8; 32];
        let e = quantize_group_ref(&w, MlxMode::Mxfp4, MlxDtype::F32, None, &mut codes);
        assert_eq!(e, 128);
        assert_eq!(FP4_LUT[usize::from(codes[0])], 3.0);
        assert_eq!(FP4_LUT[usize::from(codes[1])], -1.5);
    }
}
