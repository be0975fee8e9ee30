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
