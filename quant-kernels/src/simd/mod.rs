//! SIMD: the only module with `unsafe` and `std::arch`.
//!
//! Two kinds of kernels live here:
//! - `portable`: safe, lane-wise Rust that LLVM vectorizes. Each is
//!   compiled once per instruction-set level by [`versions!`] (x86-64:
//!   baseline SSE2, AVX2+FMA+F16C, AVX-512; aarch64: NEON is baseline) and
//!   picked at run time.
//! - `x86` / `neon`: explicit intrinsics where the vectorizer cannot help
//!   (f16 conversions, integer dot products).
//!
//! The level is detected once; `QFORGE_SIMD=scalar|avx2|avx512` caps it
//! (for benchmarks and for bisecting a suspected SIMD bug).

use std::sync::OnceLock;

use crate::ggml::reference;
use crate::GgmlType;

#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
mod dot_iq_x86;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
#[cfg(target_arch = "x86_64")]
mod float_avx2;
#[cfg(target_arch = "x86_64")]
mod gemm_x86;
#[cfg(target_arch = "x86_64")]
mod iq4;
mod kquants;
pub(crate) mod lanes;
pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Instruction-set levels the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Baseline of the target (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// AVX2 + FMA + F16C (+ BMI1/2).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512 F/BW/VL/DQ on top of AVX2.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2");
        let avx512 = avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq");
        if avx512 {
            Level::Avx512
        } else if avx2 {
            Level::Avx2
        } else {
            Level::Baseline
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Level::Baseline
    }
}

/// The level in use: the CPU's, capped by `QFORGE_SIMD`.
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cpu = detect();
        let cap = match std::env::var("QFORGE_SIMD").as_deref() {
            Ok("scalar") | Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        cpu.min(cap)
    })
}

/// Whether the CPU has AVX-512 VNNI (the integer products of the tile
/// kernels use it at [`Level::Avx512`]).
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni"))
}

/// `vector::dot_tile` at `level`: explicit AVX-512 tiles there, the
/// portable tiles (auto-vectorized per level) elsewhere.
pub(crate) fn dot_tile_at(level: Level, w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx512 {
        // SAFETY: AVX-512F is present at this level (see `detect`).
        return unsafe { gemm_x86::dot_tile_f32_avx512(w, x, cols, out) };
    }
    dot_tile_f32::run(level, w, x, cols, out);
}

/// Whether the CPU has AVX512-BF16 (`vdpbf16ps`, which the BF16 tiles
/// use at [`Level::Avx512`]).
#[cfg(target_arch = "x86_64")]
fn has_bf16() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16"))
}

/// BF16 tile products at `level` (at least [`Level::Avx2`]), with
/// `vdpbf16ps` where the CPU has it.
///
/// # Safety
/// The features of `level`, which must be at least AVX2; `w` holds
/// `n_rows` rows of `n` bf16 values, `a` `n_tok` rows, `out` `n_rows *
/// n_tok` values.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_bf16(
    level: Level,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) {
    if n == 0 {
        // Rows of no values (the reference's empty sums).
        out.fill(0.0);
        return;
    }
    // SAFETY: the caller's contract, plus AVX512-BF16 where detected.
    unsafe {
        if level < Level::Avx512 {
            float_avx2::gemm_bf16(n, w, n_rows, a, n_tok, out)
        } else if has_bf16() {
            gemm_x86::gemm_bf16_native(n, w, n_rows, a, n_tok, out)
        } else {
            gemm_x86::gemm_bf16_avx512(n, w, n_rows, a, n_tok, out)
        }
    }
}

/// Levels this CPU can run (for tests that compare every level).
#[cfg(test)]
pub(crate) fn available_levels() -> Vec<Level> {
    let top = detect();
    [Level::Baseline, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|l| *l <= top)
        .collect()
}

/// Generates, for each listed portable kernel `name(args)`, a module
/// `name` with a `run(level, args)` that calls the kernel compiled for
/// `level`.
macro_rules! versions {
    ($($kmod:ident :: $name:ident ( $($a:ident : $t:ty),* );)*) => {$(
        #[allow(non_snake_case)]
        pub(crate) mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($a: $t),*) {
                $kmod::$name($($a),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($a: $t),*) {
                $kmod::$name($($a),*)
            }

            #[inline]
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn run(level: Level, $($a: $t),*) {
                match level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `level` never exceeds what `detect` found on
                    // this CPU (callers pass `level()` or a level from
                    // `available_levels`), so AVX-512 F/BW/VL/DQ, AVX2, FMA,
                    // F16C and BMI are present.
                    Level::Avx512 => unsafe { avx512($($a),*) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, AVX2, FMA, F16C and BMI are present.
                    Level::Avx2 => unsafe { avx2($($a),*) },
                    _ => $kmod::$name($($a),*),
                }
            }
        }
    )*};
}

versions! {
    portable::dequantize_q4_0(x: &[u8], y: &mut [f32]);
    portable::dequantize_q4_1(x: &[u8], y: &mut [f32]);
    portable::dequantize_q5_0(x: &[u8], y: &mut [f32]);
    portable::dequantize_q5_1(x: &[u8], y: &mut [f32]);
    portable::dequantize_q8_0(x: &[u8], y: &mut [f32]);
    portable::dequantize_q2_k(x: &[u8], y: &mut [f32]);
    portable::dequantize_q3_k(x: &[u8], y: &mut [f32]);
    portable::dequantize_q4_k(x: &[u8], y: &mut [f32]);
    portable::dequantize_q5_k(x: &[u8], y: &mut [f32]);
    portable::dequantize_q6_k(x: &[u8], y: &mut [f32]);
    portable::dequantize_iq4_nl(x: &[u8], y: &mut [f32]);
    portable::dequantize_iq4_xs(x: &[u8], y: &mut [f32]);
    portable::dequantize_bf16(x: &[u8], y: &mut [f32]);
    portable::mlx_affine_rows(packed: &[u8], scales: &[u8], biases: &[u8], dtype: crate::mlx::MlxDtype, bits: u32, group: usize, out: &mut [f32]);
    portable::quantize_bf16(x: &[f32], y: &mut [u8]);
    portable::dot_f32(a: &[f32], b: &[f32], out: &mut f32);
    portable::axpy_f32(a: f32, x: &[f32], y: &mut [f32]);
    portable::softmax_f32(x: &mut [f32]);
    portable::silu_mul_f32(gate: &mut [f32], up: &[f32]);
    portable::dot_tile_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]);
    portable::dots_f32(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]);
    portable::weighted_sum_f32(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]);
    portable::matmul_f32(a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, k: usize, n: usize, out: &mut [f32], ldo: usize);
}

/// [`crate::mlx::search::search_row`] per level: on the baseline with
/// [`lanes::F32x8`]'s scalar definition (`[f32; 8]`), with AVX2 and
/// AVX-512 in AVX registers ([`lanes::Avx`]; the search's loops keep
/// several sums per lane, which the vectorizer packs the wrong way). The
/// same bits at every level.
pub(crate) mod mlx_search_row {
    #[allow(unused_imports)]
    use super::*;
    use crate::mlx::search::search_row;
    use crate::mlx::MlxDtype;

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2(
        x: &[f32],
        importance: Option<&[f32]>,
        group: usize,
        bits: u32,
        dtype: MlxDtype,
        codes: &mut [u8],
        pairs: &mut [(f32, f32)],
    ) {
        search_row::<lanes::Avx>(x, importance, group, bits, dtype, codes, pairs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512(
        x: &[f32],
        importance: Option<&[f32]>,
        group: usize,
        bits: u32,
        dtype: MlxDtype,
        codes: &mut [u8],
        pairs: &mut [(f32, f32)],
    ) {
        search_row::<lanes::Avx>(x, importance, group, bits, dtype, codes, pairs)
    }

    /// One row of the MLX search compiled for `level`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        level: Level,
        x: &[f32],
        importance: Option<&[f32]>,
        group: usize,
        bits: u32,
        dtype: MlxDtype,
        codes: &mut [u8],
        pairs: &mut [(f32, f32)],
    ) {
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level` never exceeds what `detect` found on this
            // CPU, so AVX-512 F/BW/VL/DQ, AVX2, FMA, F16C and BMI are
            // present.
            Level::Avx512 => unsafe { avx512(x, importance, group, bits, dtype, codes, pairs) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2, FMA, F16C and BMI are present.
            Level::Avx2 => unsafe { avx2(x, importance, group, bits, dtype, codes, pairs) },
            _ => search_row::<[f32; 8]>(x, importance, group, bits, dtype, codes, pairs),
        }
    }
}

/// Like `versions!` for the dot products, which return their value.
macro_rules! dot_versions {
    ($($name:ident;)*) => {$(
        #[allow(non_snake_case)]
        pub(crate) mod $name {
            use super::*;

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
            unsafe fn avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
                reference::$name(n, w, a)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
            unsafe fn avx512(n: usize, w: &[u8], a: &[u8]) -> f32 {
                reference::$name(n, w, a)
            }

            #[inline]
            pub(crate) fn run(level: Level, n: usize, w: &[u8], a: &[u8]) -> f32 {
                match level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `level` never exceeds what `detect` found on
                    // this CPU, so AVX-512 F/BW/VL/DQ, AVX2, FMA, F16C and
                    // BMI are present.
                    Level::Avx512 => unsafe { avx512(n, w, a) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, AVX2, FMA, F16C and BMI are present.
                    Level::Avx2 => unsafe { avx2(n, w, a) },
                    _ => reference::$name(n, w, a),
                }
            }
        }
    )*};
}

dot_versions! {
    vec_dot_f32;
    vec_dot_f16;
    vec_dot_bf16;
    vec_dot_q4_0_q8_0;
    vec_dot_q4_1_q8_1;
    vec_dot_q5_0_q8_0;
    vec_dot_q5_1_q8_1;
    vec_dot_q8_0_q8_0;
    vec_dot_q2_k_q8_k;
    vec_dot_q3_k_q8_k;
    vec_dot_q4_k_q8_k;
    vec_dot_q5_k_q8_k;
    vec_dot_q6_k_q8_k;
    vec_dot_iq4_nl_q8_0;
    vec_dot_iq4_xs_q8_k;
}

/// The dot product of `ggml::reference::vec_dot` for `ty`, compiled for
/// `level` (the same arithmetic: lane-wise FMAs and integer sums cannot
/// change under vectorization). `None` for types without one.
pub(crate) fn vec_dot_at(level: Level, ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Option<f32> {
    use GgmlType as T;
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        // SAFETY: `level` never exceeds what `detect` found, so AVX2, FMA
        // and F16C (and at Avx512, AVX-512F) are present; the kernels read whole blocks of `w` and
        // `a` (`chunks_exact`), whose sizes `ggml::vec_dot` checked.
        let fast = unsafe {
            match ty {
                T::Q4_0 => Some(dot_x86::vec_dot_q4_0_q8_0(n, w, a)),
                T::Q4_1 => Some(dot_x86::vec_dot_q4_1_q8_1(n, w, a)),
                T::Q5_0 => Some(dot_x86::vec_dot_q5_0_q8_0(n, w, a)),
                T::Q8_0 => Some(dot_x86::vec_dot_q8_0_q8_0(n, w, a)),
                T::Q2K => Some(dot_x86::vec_dot_q2_k_q8_k(n, w, a)),
                T::Q3K => Some(dot_x86::vec_dot_q3_k_q8_k(n, w, a)),
                T::Q4K => Some(dot_x86::vec_dot_q4_k_q8_k(n, w, a)),
                T::Q6K => Some(dot_x86::vec_dot_q6_k_q8_k(n, w, a)),
                T::IQ4NL => Some(dot_x86::vec_dot_iq4_nl_q8_0(n, w, a)),
                T::IQ4XS => Some(dot_x86::vec_dot_iq4_xs_q8_k(n, w, a)),
                T::IQ2XXS => Some(dot_iq_x86::vec_dot_iq2_xxs_q8_k(n, w, a)),
                T::IQ2XS => Some(dot_iq_x86::vec_dot_iq2_xs_q8_k(n, w, a)),
                T::IQ2S => Some(dot_iq_x86::vec_dot_iq2_s_q8_k(n, w, a)),
                T::IQ3XXS => Some(dot_iq_x86::vec_dot_iq3_xxs_q8_k(n, w, a)),
                T::IQ3S => Some(dot_iq_x86::vec_dot_iq3_s_q8_k(n, w, a)),
                T::MXFP4 => Some(dot_iq_x86::vec_dot_mxfp4_q8_0(n, w, a)),
                T::IQ1M => Some(dot_iq_x86::vec_dot_iq1_m_q8_k(n, w, a)),
                T::IQ1S => Some(dot_iq_x86::vec_dot_iq1_s_q8_k(n, w, a)),
                T::TQ2_0 => Some(dot_iq_x86::vec_dot_tq2_0_q8_k(n, w, a)),
                T::TQ1_0 => Some(dot_iq_x86::vec_dot_tq1_0_q8_k(n, w, a)),
                T::NVFP4 => Some(dot_iq_x86::vec_dot_nvfp4_q8_0(n, w, a)),
                // SAFETY (as above): AVX-512F is present at this level.
                T::F16 if level >= Level::Avx512 => Some(dot_x86::vec_dot_f16(n, w, a)),
                T::F16 => Some(float_avx2::vec_dot_f16(n, w, a)),
                T::F32 => Some(float_avx2::vec_dot_f32(n, w, a)),
                T::BF16 => {
                    let mut out = [0f32];
                    gemm_bf16(level, n, w, 1, a, 1, &mut out);
                    Some(out[0])
                }
                _ => None,
            }
        };
        if fast.is_some() {
            return fast;
        }
    }
    Some(match ty {
        T::F32 => vec_dot_f32::run(level, n, w, a),
        T::F16 => vec_dot_f16::run(level, n, w, a),
        T::BF16 => vec_dot_bf16::run(level, n, w, a),
        T::Q4_0 => vec_dot_q4_0_q8_0::run(level, n, w, a),
        T::Q4_1 => vec_dot_q4_1_q8_1::run(level, n, w, a),
        T::Q5_0 => vec_dot_q5_0_q8_0::run(level, n, w, a),
        T::Q5_1 => vec_dot_q5_1_q8_1::run(level, n, w, a),
        T::Q8_0 => vec_dot_q8_0_q8_0::run(level, n, w, a),
        T::Q2K => vec_dot_q2_k_q8_k::run(level, n, w, a),
        T::Q3K => vec_dot_q3_k_q8_k::run(level, n, w, a),
        T::Q4K => vec_dot_q4_k_q8_k::run(level, n, w, a),
        T::Q5K => vec_dot_q5_k_q8_k::run(level, n, w, a),
        T::Q6K => vec_dot_q6_k_q8_k::run(level, n, w, a),
        T::IQ4NL => vec_dot_iq4_nl_q8_0::run(level, n, w, a),
        T::IQ4XS => vec_dot_iq4_xs_q8_k::run(level, n, w, a),
        T::IQ2XXS => reference::vec_dot_iq2_xxs_q8_k(n, w, a),
        T::IQ2XS => reference::vec_dot_iq2_xs_q8_k(n, w, a),
        T::IQ2S => reference::vec_dot_iq2_s_q8_k(n, w, a),
        T::IQ3XXS => reference::vec_dot_iq3_xxs_q8_k(n, w, a),
        T::IQ3S => reference::vec_dot_iq3_s_q8_k(n, w, a),
        T::IQ1S => reference::vec_dot_iq1_s_q8_k(n, w, a),
        T::IQ1M => reference::vec_dot_iq1_m_q8_k(n, w, a),
        T::TQ1_0 => reference::vec_dot_tq1_0_q8_k(n, w, a),
        T::TQ2_0 => reference::vec_dot_tq2_0_q8_k(n, w, a),
        T::MXFP4 => reference::vec_dot_mxfp4_q8_0(n, w, a),
        T::NVFP4 => reference::vec_dot_nvfp4_q8_0(n, w, a),
        _ => return None,
    })
}

/// Tile products of `n_rows` weight rows of `ty` (`w`) with `n_tok`
/// activation rows of `arb` bytes (`a`, `ty`'s `vec_dot_type`), written
/// to `out[t * n_rows + r]`, each equal to [`vec_dot_at`] of its pair.
/// False when `level` has no tile kernel for `ty` (the caller then loops
/// over pairs). The sizes must have been checked (`ggml::gemm`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_at(
    level: Level,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let size = |t: GgmlType| t.row_size(n as u64).and_then(|b| usize::try_from(b).ok());
        let wrb = size(ty);
        let sizes_ok = wrb.is_some_and(|b| w.len() == n_rows * b)
            && reference::vec_dot_type(ty).and_then(size) == Some(arb)
            && a.len() == n_tok * arb
            && out.len() == n_rows * n_tok;
        assert!(sizes_ok, "gemm_at: sizes not checked by the caller");
        if n_rows == 0 || n_tok == 0 {
            return true;
        }
        if level >= Level::Avx512 && matches!(ty, GgmlType::F16 | GgmlType::F32) {
            // SAFETY: AVX-512F, FMA and F16C are present at this level;
            // the sizes are asserted above.
            return unsafe { gemm_x86::gemm_float_avx512(ty, n, w, n_rows, a, arb, n_tok, out) };
        }
        if ty == GgmlType::BF16 && level >= Level::Avx2 {
            // SAFETY: AVX2 and FMA (and at Avx512, AVX-512 F/BW) are
            // present at this level; the sizes are asserted above (BF16
            // rows of `n` values each).
            unsafe { gemm_bf16(level, n, w, n_rows, a, n_tok, out) };
            return true;
        }
        if level >= Level::Avx512 && has_vnni() {
            // SAFETY: AVX-512 F/BW/VL (the level, see `detect`) and VNNI
            // (`has_vnni`) are present; the sizes are asserted above.
            return unsafe { gemm_x86::gemm_vnni(ty, n, w, n_rows, a, arb, n_tok, out) };
        }
        if level >= Level::Avx2 && matches!(ty, GgmlType::F16 | GgmlType::F32) {
            // SAFETY: AVX2, FMA and F16C are present at this level; the
            // sizes are asserted above.
            return unsafe { float_avx2::gemm_float(ty, n, w, n_rows, a, n_tok, out) };
        }
        if level >= Level::Avx2 {
            // SAFETY: AVX2, FMA and F16C are present at this level; the
            // sizes are asserted above.
            return unsafe { gemm_x86::gemm_avx2(ty, n, w, n_rows, a, arb, n_tok, out) };
        }
    }
    let _ = (level, ty, n, w, n_rows, a, arb, n_tok, out);
    false
}

/// [`reference::sgemm_dot`] of every pair of `n_rows` F16 or F32 weight
/// rows (`w`) and `n_tok` activation rows of the same type (`a`), written
/// to `out[t * n_rows + r]`; `n` a multiple of 16. False when `level` has
/// no kernel for it (the caller then runs the reference per pair). The
/// sizes must have been checked (`ggml::gemm_batch`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_at(
    level: Level,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    n_rows: usize,
    a: &[u8],
    n_tok: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let elem = match ty {
            GgmlType::F16 => 2,
            GgmlType::F32 => 4,
            _ => return false,
        };
        let sizes_ok = n.is_multiple_of(16)
            && w.len() == n_rows * n * elem
            && a.len() == n_tok * n * elem
            && out.len() == n_rows * n_tok;
        assert!(sizes_ok, "sgemm_at: sizes not checked by the caller");
        if n_rows == 0 || n_tok == 0 {
            return true;
        }
        if level >= Level::Avx512 {
            // SAFETY: AVX-512F, FMA and F16C are present at this level;
            // the sizes are asserted above.
            return unsafe { gemm_x86::sgemm_float_avx512(ty, n, w, n_rows, a, n_tok, out) };
        }
        if level >= Level::Avx2 {
            // SAFETY: AVX2, FMA and F16C are present at this level; the
            // sizes are asserted above.
            return unsafe { float_avx2::sgemm_float(ty, n, w, n_rows, a, n_tok, out) };
        }
    }
    let _ = (level, ty, n, w, n_rows, a, n_tok, out);
    false
}

/// Dequantizes whole blocks of `ty` at `level`; false when there is no
/// fast kernel for `ty` (the caller then runs the reference).
pub(crate) fn dequantize_at(level: Level, ty: GgmlType, x: &[u8], y: &mut [f32]) -> bool {
    use GgmlType as T;
    match ty {
        T::Q4_0 => dequantize_q4_0::run(level, x, y),
        T::Q4_1 => dequantize_q4_1::run(level, x, y),
        T::Q5_0 => dequantize_q5_0::run(level, x, y),
        T::Q5_1 => dequantize_q5_1::run(level, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and F16C are present at this level (see `detect`);
        // whole blocks, which the callers pass.
        T::Q8_0 if level >= Level::Avx2 => unsafe { x86::dequantize_q8_0(x, y) },
        T::Q8_0 => dequantize_q8_0::run(level, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and F16C are present at this level (see `detect`);
        // whole blocks, which the callers pass.
        T::Q2K if level >= Level::Avx2 => unsafe { x86::dequantize_q2_k(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        T::Q4K if level >= Level::Avx2 => unsafe { x86::dequantize_q45_k::<false>(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        T::Q5K if level >= Level::Avx2 => unsafe { x86::dequantize_q45_k::<true>(x, y) },
        T::Q2K => dequantize_q2_k::run(level, x, y),
        T::Q3K => dequantize_q3_k::run(level, x, y),
        T::Q4K => dequantize_q4_k::run(level, x, y),
        T::Q5K => dequantize_q5_k::run(level, x, y),
        T::Q6K => dequantize_q6_k::run(level, x, y),
        T::IQ4NL => dequantize_iq4_nl::run(level, x, y),
        T::IQ4XS => dequantize_iq4_xs::run(level, x, y),
        T::BF16 => dequantize_bf16::run(level, x, y),
        T::F32 => copy_to_f32(x, y),
        T::F16 => return f16_to_f32_row(level, x, y),
        _ => return false,
    }
    true
}

/// Quantizes rows to `ty` at `level` without importance weights; false
/// when there is no fast kernel for `ty`.
pub(crate) fn quantize_at(level: Level, ty: GgmlType, x: &[f32], y: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        use GgmlType as T;
        // SAFETY: `level` never exceeds what `detect` found, so AVX2, FMA,
        // F16C and BMI are present; the kernels take whole blocks, which
        // the callers pass.
        unsafe {
            match ty {
                T::Q8_0 => x86::quantize_q8_0(x, y),
                T::Q4_0 => x86::quantize_q4_0(x, y),
                T::Q4_1 => x86::quantize_q4_1(x, y),
                T::Q5_0 => x86::quantize_q5_0(x, y),
                T::Q5_1 => x86::quantize_q5_1(x, y),
                T::Q2K => kq_x86::quantize_q2_k(x, y),
                T::Q3K => kq_x86::quantize_q3_k(x, y),
                T::Q4K => kq_x86::quantize_q4_k(x, y),
                T::Q5K => kq_x86::quantize_q5_k(x, y),
                T::Q6K => kq_x86::quantize_q6_k(x, y),
                T::F16 => x86::f32_to_f16_row(x, y),
                _ => return quantize_portable(level, ty, x, y),
            }
        }
        return true;
    }
    quantize_portable(level, ty, x, y)
}

/// Activations to `vdt` as `reference::quantize_activations_row` at
/// `level`; false when there is no fast kernel for `vdt`.
pub(crate) fn quantize_activations_at(
    level: Level,
    vdt: GgmlType,
    x: &[f32],
    y: &mut [u8],
) -> bool {
    use GgmlType as T;
    match vdt {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and F16C are present at this level (see `detect`);
        // whole blocks, which `ggml::quantize_activations` checked.
        T::Q8_0 if level >= Level::Avx2 => unsafe { x86::quantize_q8_0_act(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        T::Q8_1 if level >= Level::Avx2 => unsafe { x86::quantize_q8_1_act(x, y) },
        // Float activations are the weights' conversions.
        T::F16 | T::BF16 | T::F32 => return quantize_at(level, vdt, x, y),
        _ => return false,
    }
    true
}

/// The portable quantizers (NEON is the aarch64 baseline; on x86-64 the
/// SSE2 fallback).
fn quantize_portable(level: Level, ty: GgmlType, x: &[f32], y: &mut [u8]) -> bool {
    use kquants::Portable;
    use GgmlType as T;
    match ty {
        T::Q8_0 => portable::quantize_q8_0(x, y),
        T::Q4_0 => portable::quantize_q4_0(x, y),
        T::Q4_1 => portable::quantize_q4_1(x, y),
        T::Q5_0 => portable::quantize_q5_0(x, y),
        T::Q5_1 => portable::quantize_q5_1(x, y),
        T::BF16 => quantize_bf16::run(level, x, y),
        T::F32 => copy_from_f32(x, y),
        T::Q2K => kquants::quantize_q2_k::<Portable>(x, y),
        T::Q3K => kquants::quantize_q3_k::<Portable>(x, y),
        T::Q4K => kquants::quantize_q4_k::<Portable>(x, y),
        T::Q5K => kquants::quantize_q5_k::<Portable>(x, y),
        T::Q6K => kquants::quantize_q6_k::<Portable>(x, y),
        _ => return false,
    }
    true
}

/// The K-quant quantizers with the AVX2 searches, compiled for AVX2.
#[cfg(target_arch = "x86_64")]
mod kq_x86 {
    use super::kquants::{self, Avx2};

    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and BMI1/2.
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn quantize_q2_k(x: &[f32], y: &mut [u8]) {
        kquants::quantize_q2_k::<Avx2>(x, y)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and BMI1/2.
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn quantize_q3_k(x: &[f32], y: &mut [u8]) {
        kquants::quantize_q3_k::<Avx2>(x, y)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and BMI1/2.
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn quantize_q4_k(x: &[f32], y: &mut [u8]) {
        kquants::quantize_q4_k::<Avx2>(x, y)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and BMI1/2.
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn quantize_q5_k(x: &[f32], y: &mut [u8]) {
        kquants::quantize_q5_k::<Avx2>(x, y)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and BMI1/2.
    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn quantize_q6_k(x: &[f32], y: &mut [u8]) {
        kquants::quantize_q6_k::<Avx2>(x, y)
    }
}

/// IQ4_NL / IQ4_XS rows (with or without importance weights) at `level`;
/// false when there is no fast kernel.
pub(crate) fn quantize_iq4_at(
    level: Level,
    ty: GgmlType,
    x: &[f32],
    y: &mut [u8],
    imatrix: Option<&[f32]>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        // SAFETY: AVX2, FMA, F16C and BMI are present at this level (see
        // `detect`); rows of whole blocks with matching imatrix, which
        // `ggml::quantize` checked.
        match ty {
            GgmlType::IQ4NL => unsafe { iq4::quantize_iq4_nl(x, y, imatrix) },
            GgmlType::IQ4XS => unsafe { iq4::quantize_iq4_xs(x, y, imatrix) },
            _ => return false,
        }
        return true;
    }
    let _ = (level, ty, x, y, imatrix);
    false
}

/// F32 rows: copies `x` into `y` and returns whether every value was
/// finite, in one pass where the CPU allows.
pub(crate) fn copy_f32_checked(x: &[f32], y: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: AVX2 is present at this level (see `detect`).
        return unsafe { x86::copy_f32_checked(x, y) };
    }
    copy_from_f32(x, y);
    x.iter().all(|v| v.is_finite())
}

/// Whether every value of `x` is finite.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: AVX2 is present at this level (see `detect`).
        return unsafe { x86::all_finite(x) };
    }
    x.iter().all(|v| v.is_finite())
}

/// F32 values from their little-endian bytes: a memcpy on little-endian
/// targets.
fn copy_to_f32(x: &[u8], y: &mut [f32]) {
    assert_eq!(x.len(), 4 * y.len());
    #[cfg(target_endian = "little")]
    // SAFETY: y is y.len() * 4 = x.len() writable bytes, f32 has no invalid
    // bit patterns, the buffers are distinct borrows so they cannot
    // overlap, and on a little-endian target the bytes are the values.
    unsafe {
        std::ptr::copy_nonoverlapping(x.as_ptr(), y.as_mut_ptr() as *mut u8, x.len())
    };
    #[cfg(not(target_endian = "little"))]
    portable::dequantize_f32(x, y);
}

/// F32 values to their little-endian bytes: a memcpy on little-endian
/// targets.
fn copy_from_f32(x: &[f32], y: &mut [u8]) {
    assert_eq!(y.len(), 4 * x.len());
    #[cfg(target_endian = "little")]
    // SAFETY: x is x.len() * 4 = y.len() readable bytes, the buffers are
    // distinct borrows so they cannot overlap, and on a little-endian
    // target the values' bytes are what F32 stores.
    unsafe {
        std::ptr::copy_nonoverlapping(x.as_ptr() as *const u8, y.as_mut_ptr(), y.len())
    };
    #[cfg(not(target_endian = "little"))]
    portable::quantize_f32(x, y);
}

/// Rounds values to f16 and back in place (see `float::round_to_f16`).
pub(crate) fn round_to_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: F16C and AVX are present at this level (see `detect`).
        unsafe { x86::round_to_f16(x) };
        return;
    }
    for v in x {
        *v = crate::float::f16_to_f32(crate::float::f32_to_f16(*v));
    }
}

/// F16 bytes to f32 with the CPU's conversion instructions.
fn f16_to_f32_row(level: Level, x: &[u8], y: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        // SAFETY: F16C and AVX are present at this level (see `detect`).
        unsafe { x86::f16_to_f32_row(x, y) };
        return true;
    }
    let _ = (level, x, y);
    false
}

#[cfg(test)]
mod tests;
